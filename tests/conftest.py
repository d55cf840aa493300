"""Shared test settings: one torch thread, GPU tests skipped without CUDA; a small walker dataset."""

from pathlib import Path

import pytest
import torch

# Test tensors are tiny: one thread is faster than two and immune to a loaded machine.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random-action) walker dataset: 4 episodes x 60 steps."""
    from bfm.collection import make_synthetic_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_dataset(root, "walker", "rnd", episodes=4, episode_length=60, seed=0)
    return root
