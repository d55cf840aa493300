"""Reformat a folder of raw ExORL episode files into one ``dataset.npz`` with relabelled rewards."""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bfm.data.coverage import coverage, format_coverage
from bfm.data.exorl import (
    DATASET_FILE,
    DatasetError,
    list_episode_files,
    parse_episode_name,
    read_episode,
    read_manifest,
    reward_key,
    select_episodes,
    write_dataset,
)
from bfm.data.progress import progress
from bfm.envs import DOMAINS, relabel
from bfm.envs.specs import check_domain

logger = logging.getLogger(__name__)

COLLECTION_FILE = "collection.json"  # settings of a local collection, written by collection/collect.py
DOWNLOAD_FILE = "download.json"  # where the raw episodes were downloaded from, written by the CLI


def _up_to_date(out: Path, names: list[str], domain: str, multiplier: float) -> dict | None:
    """The manifest of ``out`` when it already holds exactly these episodes, else None."""
    if not out.is_file():
        return None
    try:
        manifest = read_manifest(out)
    except DatasetError as e:
        logger.warning("existing %s is unusable (%s); rebuilding it", out, e)
        return None
    current = (
        manifest.get("episode_files") == names
        and manifest.get("domain") == domain
        and manifest.get("multiplier") == multiplier
    )
    return manifest if current else None


def _load_episodes(
    files: list[Path], dims: tuple[int, int, int], length: int, workers: int
) -> dict[str, np.ndarray]:
    """Preallocate [E, T+1, .] arrays and fill them episode by episode (threads: zlib releases the GIL)."""
    rows = length + 1
    arrays = {
        "observation": np.empty((len(files), rows, dims[0]), np.float32),
        "action": np.empty((len(files), rows, dims[1]), np.float32),
        "physics": np.empty((len(files), rows, dims[2]), np.float64),
    }

    def fill(i: int) -> None:
        episode = read_episode(files[i], dims)
        if len(episode["observation"]) != rows:
            raise DatasetError(
                f"{files[i]}: {len(episode['observation']) - 1} transitions, but the first episode has "
                f"{length}; every episode of a dataset must have the same length"
            )
        for key, array in arrays.items():
            array[i] = episode[key]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in progress(
            pool.map(fill, range(len(files))), total=len(files), desc="read episodes", unit="ep"
        ):
            pass
    return arrays


def reformat(
    folder: str | os.PathLike,
    domain: str,
    algo: str,
    *,
    multiplier: float = 1.0,
    episodes: int | None = None,
    selection: str = "spread",
    source: dict | None = None,
    workers: int | None = None,
    delete_raw: bool = False,
) -> Path:
    """Pack the raw episode files of ``folder`` into ``folder/dataset.npz`` with relabelled rewards.

    Every task of ``DOMAINS[domain].reward_tasks`` is relabelled (the paper's evaluation tasks and,
    for quadruped, walk and run).

    Episodes are taken in numeric index order; ``episodes`` keeps N of them, spread evenly over the
    whole collection (``selection="spread"``) or the first N (``"first"``). Nothing happens when
    ``dataset.npz`` already holds exactly these episodes (idempotent). Peak memory is the packed
    arrays plus one episode per worker; the file is written atomically.

    Args:
        folder: the ``buffer`` folder with ``<prefix>_<index>_<length>.npz`` files.
        domain: walker, cheetah or quadruped (shapes are checked against it).
        algo: exploration algorithm name, recorded in the manifest.
        multiplier: mass/damping multiplier the data was collected at (relabelling uses it).
        episodes: keep N episodes; None keeps all.
        selection: which N (``data.exorl.select_episodes``): ``spread`` or ``first``.
        source: provenance for the manifest (e.g. the download URL); ``collection.json`` in the
            folder, written by local collection, is added to it.
        workers: processes for relabelling and threads for reading; default all cores.
        delete_raw: delete every raw episode file of the folder after a successful write (refused
            when ``episodes`` leaves some of them out of the dataset).

    Returns:
        Path of ``dataset.npz``.

    Raises:
        DatasetError: no episode files, or a file that is corrupt, of the wrong shape or length;
            ``delete_raw`` with ``episodes`` fewer than the raw files (it would delete episodes
            that are in no dataset).
        ValueError: unknown domain.
    """

    folder, multiplier = Path(folder), float(multiplier)
    check_domain(domain)
    workers = workers or os.cpu_count() or 1
    all_files = list_episode_files(folder)
    files = [all_files[i] for i in select_episodes(len(all_files), episodes, selection)]
    if episodes is not None and episodes > len(all_files) and all_files:
        logger.warning("%s: %d episodes asked for, %d raw episodes exist: the dataset holds %d",
                       folder, episodes, len(all_files), len(files))  # fmt: skip
    out = folder / DATASET_FILE
    if not files:
        raise DatasetError(
            f"{folder}: no raw episode files (<prefix>_<index>_<length>.npz) to reformat; put ExORL episode files "
            "there, or run exorl_reformatter.py to download or --collect them"
        )
    if delete_raw and len(files) < len(all_files):
        raise DatasetError(
            f"{folder}: delete_raw would delete {len(all_files) - len(files)} raw episodes that the "
            f"dataset of {len(files)} would not hold; reformat every episode (no --episodes) "
            "or keep the raw files (no --delete_raw)"
        )
    manifest = _up_to_date(out, [f.name for f in files], domain, multiplier)
    if manifest is not None:
        logger.info("%s is up to date (%d episodes); nothing to do", out, len(files))
        stats = manifest.get("coverage")
        if stats:
            logger.info("coverage of %s:\n%s", out, format_coverage(stats))
    else:
        settings = {
            "episodes_requested": episodes,
            "episode_selection": selection,
            "raw_episodes_available": len(all_files),
        }
        _pack(out, files, domain, algo, multiplier, workers, settings, _source(folder, source))
    if delete_raw:
        for f in all_files:
            f.unlink()
        logger.info("deleted %d raw episode files from %s", len(all_files), folder)
    return out


def _pack(
    out: Path,
    files: list[Path],
    domain: str,
    algo: str,
    multiplier: float,
    workers: int,
    settings: dict,
    source: dict,
) -> None:
    """Read ``files``, relabel every reward task of ``domain`` and write ``out`` with its manifest."""

    info = DOMAINS[domain]
    start = time.perf_counter()
    length = len(read_episode(files[0])["observation"]) - 1
    arrays = _load_episodes(files, (info.obs_dim, info.action_dim, info.physics_dim), length, workers)
    read_s = time.perf_counter() - start
    physics = arrays["physics"].reshape(-1, info.physics_dim)  # [E * (T+1), phys]
    rewards = relabel(domain, physics, tasks=info.reward_tasks, multiplier=multiplier, workers=workers)
    for task in info.reward_tasks:
        arrays[reward_key(task)] = np.asarray(rewards[task], np.float32).reshape(len(files), length + 1)
    relabel_s = time.perf_counter() - start - read_s
    stats = coverage(domain, {t: arrays[reward_key(t)] for t in info.reward_tasks}, arrays["observation"])
    manifest = {
        "domain": domain,
        "algo": algo,
        "multiplier": multiplier,
        "episodes": len(files),
        "episode_length": length,
        "tasks": list(info.reward_tasks),
        "episode_files": [f.name for f in files],
        "episode_indices": [parse_episode_name(f)[0] for f in files],
        "settings": settings,
        "source": source,
        "coverage": stats,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_dataset(out, arrays, manifest)
    total = time.perf_counter() - start
    logger.info(
        "wrote %s: %d episodes x %d steps in %.1f s (read %.1f s, relabel %.1f s, %.0f transitions/s)",
        out, len(files), length, total, read_s, relabel_s, len(files) * length / total,
    )  # fmt: skip
    logger.info("coverage of %s:\n%s", out, format_coverage(stats))


def _source(folder: Path, source: dict | None) -> dict:
    merged = {"kind": "raw-folder", "raw_folder": str(folder)}
    download = folder / DOWNLOAD_FILE
    if download.is_file():
        merged.update(json.loads(download.read_text()))
    merged.update(source or {})
    collection = folder / COLLECTION_FILE
    if collection.is_file():
        merged["collection"] = json.loads(collection.read_text())
        if merged["kind"] == "raw-folder":
            merged["kind"] = "collected"
    return merged
