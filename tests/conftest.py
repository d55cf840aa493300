"""Shared test settings: one torch thread, GPU tests skipped without CUDA."""

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
