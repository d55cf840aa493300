"""A tiny real dataset for tests and smoke runs: random actions in the real environment, relabelled."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from bfm.collection.collect import collect
from bfm.data.exorl import DatasetError, buffer_dir, dataset_path, read_manifest
from bfm.data.reformat import reformat

logger = logging.getLogger(__name__)


def make_synthetic_dataset(
    data_dir: str | os.PathLike,
    domain: str,
    algo: str = "rnd",
    episodes: int = 4,
    episode_length: int = 200,
    seed: int = 0,
) -> Path:
    """Write ``dataset_path(data_dir, domain, algo)`` from uniform-random episodes of the real domain.

    The file has the full reformatted layout (observation, action, physics, relabelled rewards of
    every reward task, manifest with ``source.kind == "synthetic"``), so the training CLI reads it
    like a real ExORL dataset. 4 episodes x 200 steps take a few seconds. Calling it again with
    the same arguments returns the existing file; a dataset there that is not synthetic (e.g. a
    downloaded or collected one) is never overwritten.

    Args:
        data_dir: dataset root (e.g. a pytest ``tmp_path``).
        domain: walker, cheetah or quadruped.
        algo: dataset name to write under (``rnd`` by default, what the training CLI asks for).
        episodes: number of episodes E.
        episode_length: transitions T per episode (at most 1000).
        seed: seed of the initial states and actions.

    Returns:
        Path of ``dataset.npz``.

    Raises:
        DatasetError: ``dataset_path(data_dir, domain, algo)`` holds a dataset that is not synthetic.
    """
    path = dataset_path(data_dir, domain, algo)
    wanted = {"episodes": episodes, "episode_length": episode_length, "seed": seed}
    if path.is_file() and _is_built(path, domain, wanted):
        return path
    raw = buffer_dir(data_dir, domain, f".{algo}_synthetic_raw")
    shutil.rmtree(raw.parent, ignore_errors=True)
    try:
        collect(raw, domain, "random", episodes * episode_length, seed, 1.0, episode_length)
        out = reformat(raw, domain, algo, source={"kind": "synthetic", "synthetic": wanted}, workers=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, path)
    finally:
        shutil.rmtree(raw.parent, ignore_errors=True)
    logger.info("wrote synthetic %s dataset (%d x %d) to %s", domain, episodes, episode_length, path)
    return path


def _is_built(path: Path, domain: str, wanted: dict) -> bool:
    """Whether ``path`` already is this synthetic dataset; raises if it is a real (not synthetic) one."""
    try:
        manifest = read_manifest(path)
    except DatasetError:
        return False  # unreadable: rebuilt
    kind = manifest.get("source", {}).get("kind")
    if kind != "synthetic":
        raise DatasetError(
            f"{path} holds a {kind!r} dataset, not a synthetic one; refusing to overwrite it "
            "(pass another data_dir or algo)"
        )
    return manifest["source"].get("synthetic") == wanted and manifest["domain"] == domain
