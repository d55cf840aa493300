"""The ExORL on-disk formats: raw per-episode files, the reformatted ``dataset.npz`` and its manifest.

Raw format (ExORL / URLB): ``<data_dir>/<domain>/<algo>/buffer/<prefix>_<index>_<length>.npz``, one
compressed file per episode with T + 1 rows (row 0 is the reset step, zero action):

    observation [T+1, obs] float32, action [T+1, act] float32, reward [T+1, 1] float32,
    discount [T+1, 1] float32, physics [T+1, phys] float64 ([qpos, qvel, act] after each step).

Reformatted format (this project): ``<data_dir>/<domain>/<algo>/buffer/dataset.npz``, uncompressed,
loadable with ``allow_pickle=False``:

    observation [E, T+1, obs] float32, action [E, T+1, act] float32, physics [E, T+1, phys] float64,
    reward_<task> [E, T+1] float32 for every task of ``DOMAINS[domain].reward_tasks`` (relabelled
    from physics, row 0 included), manifest: 0-d unicode array holding a JSON object (see ``read_manifest``).

Datasets collected under changed dynamics live beside the default one in ``<algo>_m<multiplier>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bfm.files import replacing

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATASET_FILE = "dataset.npz"
EPISODE_KEYS = ("observation", "action", "reward", "discount", "physics")
_EPISODE_NAME = re.compile(r"^(?P<prefix>.*)_(?P<index>\d+)_(?P<length>\d+)\.npz$")


class DatasetError(ValueError):
    """A dataset or episode file is missing, truncated, corrupt or of the wrong shape."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The reformatted dataset does not exist; the message gives the command that creates it."""


def algo_dir_name(algo: str, multiplier: float = 1.0) -> str:
    """Folder name of a dataset: ``algo`` at multiplier 1, else ``<algo>_m<multiplier>`` (e.g. rnd_m1.5)."""
    multiplier = float(multiplier)
    return algo if multiplier == 1.0 else f"{algo}_m{multiplier:g}"


def buffer_dir(data_dir: str | os.PathLike, domain: str, algo: str, multiplier: float = 1.0) -> Path:
    """Folder holding the raw episode files and ``dataset.npz`` of one dataset."""
    return Path(data_dir) / domain / algo_dir_name(algo, multiplier) / "buffer"


def dataset_path(data_dir: str | os.PathLike, domain: str, algo: str, multiplier: float = 1.0) -> Path:
    """Path of the reformatted ``dataset.npz`` of (domain, algo) collected at ``multiplier``."""
    return buffer_dir(data_dir, domain, algo, multiplier) / DATASET_FILE


def parse_dataset_path(path: str | os.PathLike) -> tuple[str, str, str, float]:
    """Inverse of ``dataset_path``: (data_dir, domain, algo, multiplier), best effort."""
    path = Path(path)
    name, domain, data_dir = path.parent.parent.name, path.parent.parent.parent.name, path.parents[3]
    match = re.fullmatch(r"(?P<algo>.+)_m(?P<m>[0-9.eE+-]+)", name)
    if match:
        try:
            return str(data_dir), domain, match["algo"], float(match["m"])
        except ValueError:
            pass
    return str(data_dir), domain, name, 1.0


def remake_advice(path: str | os.PathLike) -> str:
    """What to do about a damaged dataset file: the reformatter keeps an existing ``dataset.npz``,
    so it must be deleted before the command remakes it (from the raw episodes when they are kept)."""
    return f"delete {path} and remake it with: {create_command(path)}"


def create_command(path: str | os.PathLike) -> str:
    """The ``exorl_reformatter.py`` command that creates the dataset at ``path``."""
    data_dir, domain, algo, multiplier = parse_dataset_path(path)
    command = f"python exorl_reformatter.py {domain}_{algo}"
    if data_dir != "datasets":
        command += f" --data_dir {data_dir}"
    if multiplier != 1.0:
        command += f" --collect --collect_steps 1000000 --multiplier {multiplier:g}"
    return command


# ----------------------------------------------------------------------------------------------
# Raw episode files


def parse_episode_name(path: str | os.PathLike) -> tuple[int, int] | None:
    """(index, length) from ``<prefix>_<index>_<length>.npz``, or None if the name does not match."""
    match = _EPISODE_NAME.match(Path(path).name)
    if match is None or Path(path).name == DATASET_FILE or Path(path).name.startswith("."):
        return None
    return int(match["index"]), int(match["length"])


def list_episode_files(folder: str | os.PathLike) -> list[Path]:
    """Raw episode files of ``folder`` sorted by their numeric episode index (not lexicographically).

    Raises:
        DatasetError: two files carry the same episode index.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    indexed = [(parse_episode_name(p), p) for p in folder.iterdir() if p.suffix == ".npz"]
    indexed = sorted((parsed[0], p) for parsed, p in indexed if parsed is not None)
    indices = [i for i, _ in indexed]
    if len(set(indices)) != len(indices):
        duplicates = sorted({i for i in indices if indices.count(i) > 1})[:5]
        raise DatasetError(f"{folder}: several episode files share the index {duplicates}; keep one of each")
    return [p for _, p in indexed]


def episode_file_name(index: int, length: int) -> str:
    """ExORL file name of episode ``index`` with ``length`` transitions."""
    return f"episode_{index:06d}_{length}.npz"


def write_episode(folder: str | os.PathLike, index: int, episode: dict[str, np.ndarray]) -> Path:
    """Write one episode in the ExORL format, atomically (temporary file, then rename).

    Args:
        folder: the ``buffer`` folder.
        index: episode index (0-based, collection order).
        episode: the EPISODE_KEYS arrays, each with T + 1 rows.

    Returns:
        Path of the written file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    length = len(episode["observation"]) - 1
    path = folder / episode_file_name(index, length)
    # interrupted or failed: no half-written file stays behind
    with replacing(path, folder / f".{path.name}.tmp") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(episode[k]) for k in EPISODE_KEYS})
    return path


def _episode_advice(path: str | os.PathLike) -> str:
    folder = Path(path).parent
    return (
        "delete it and rerun to make the dataset from the other episodes, or delete the folder "
        f"{folder} and rerun to download (or --collect) them all again"
    )


def read_episode(path: str | os.PathLike, dims: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
    """Read and check one raw episode file.

    Args:
        path: the ``.npz`` episode file.
        dims: expected (obs_dim, action_dim, physics_dim), or None to skip the check.

    Returns:
        observation [T+1, obs] float32, action [T+1, act] float32, physics [T+1, phys] float64 and,
        when present, reward and discount [T+1, 1].

    Raises:
        DatasetError: unreadable, truncated, pickled or wrongly shaped file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"observation", "action", "physics"} - set(data.files)
            if missing:
                raise DatasetError(
                    f"{path}: missing arrays {sorted(missing)}; found {sorted(data.files)}; {_episode_advice(path)}"
                )
            episode = {k: data[k] for k in data.files if k in EPISODE_KEYS}
    except DatasetError:
        raise
    except ValueError as e:
        raise DatasetError(
            f"{path}: not an .npz episode file (corrupt, or pickled Python objects); {_episode_advice(path)}"
        ) from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{path}: truncated or corrupt episode file ({e}); {_episode_advice(path)}") from e
    rows = len(episode["observation"])
    for key, value in episode.items():
        if value.dtype == object or value.ndim < 1 or len(value) != rows:
            raise DatasetError(
                f"{path}: array {key!r} has shape {value.shape}, expected {rows} rows; {_episode_advice(path)}"
            )
    if dims is not None:
        for key, dim in zip(("observation", "action", "physics"), dims, strict=True):
            if episode[key].ndim != 2 or episode[key].shape[1] != dim:
                raise DatasetError(
                    f"{path}: {key} has shape {episode[key].shape}, expected [T+1, {dim}] (an episode of another "
                    f"domain?); {_episode_advice(path)}"
                )
    return episode


# ----------------------------------------------------------------------------------------------
# Reformatted dataset


def reward_key(task: str) -> str:
    """Array name of a task's relabelled reward inside ``dataset.npz``."""
    return f"reward_{task}"


def array_checksum(array: np.ndarray) -> str:
    """sha256 of an array's bytes (C order), the checksum stored in the manifest."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, 1 << 26):
        digest.update(flat[start : start + (1 << 26)])
    return digest.hexdigest()


def write_dataset(path: str | os.PathLike, arrays: dict[str, np.ndarray], manifest: dict) -> Path:
    """Write ``dataset.npz`` atomically: a temporary file in the same folder, fsync, then rename.

    Args:
        path: destination ``dataset.npz``.
        arrays: observation, action, physics and ``reward_<task>`` arrays.
        manifest: JSON-serialisable provenance; array shapes, dtypes and checksums are added.

    Returns:
        ``path``. Nothing is left at ``path`` if writing fails; temporary files of earlier
        writers that were killed (their process is gone) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["arrays"] = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": array_checksum(v)}
        for k, v in arrays.items()
    }
    _remove_stale_temporaries(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # .<name>.tmp-<pid>: see _remove_stale_temporaries
        np.savez(f, manifest=np.array(json.dumps(manifest, indent=1)), **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def _open_npz(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise DatasetNotFoundError(
            f"dataset not found: {path}\ncreate it with:\n    {create_command(path)}\n"
            "(add --collect to generate it locally when the ExORL archive cannot be downloaded)"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{path}: truncated or corrupt dataset ({e}); {remake_advice(path)}") from e


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a ``dataset.npz`` (reads only that entry).

    Keys: format_version, domain, algo, multiplier, episodes, episode_length, tasks, episode_files,
    source (kind and provenance: url / raw folder / collection settings), created, arrays
    (shape, dtype and sha256 of each array).

    Raises:
        DatasetNotFoundError: no file at ``path``.
        DatasetError: not a dataset of this project (e.g. the upstream pickled format).
    """
    path = Path(path)
    with _open_npz(path) as zf:
        names = zf.namelist()
        if "manifest.npy" not in names:
            raise DatasetError(
                f"{path}: no manifest; this is not a dataset written by exorl_reformatter.py of this "
                f"project (the upstream reformatter's pickled per-episode format is not readable). "
                f"{remake_advice(path)}"
            )
        with zf.open("manifest.npy") as f:
            try:
                text = np.lib.format.read_array(f, allow_pickle=False)
            except ValueError as e:
                raise DatasetError(f"{path}: unreadable manifest ({e}); {remake_advice(path)}") from e
    manifest = json.loads(str(text))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format version {manifest.get('format_version')}, expected {FORMAT_VERSION}; "
            f"{remake_advice(path)}"
        )
    return manifest


EPISODE_SELECTIONS: tuple[str, ...] = ("spread", "first")


def select_episodes(available: int, wanted: int | None, selection: str = "spread") -> list[int]:
    """Positions (0-based, ascending) of the episodes a subset of ``wanted`` out of ``available`` keeps.

    ``spread`` (the default) takes every (available / wanted)-th episode, evenly strided over the
    whole collection; ``first`` takes the first ``wanted``. ExORL numbers episodes in collection order,
    so ``first`` keeps the earliest, least exploratory part of an RND collection.

    Raises:
        ValueError: unknown ``selection``.
    """
    if selection not in EPISODE_SELECTIONS:
        raise ValueError(
            f"unknown episode selection {selection!r}; accepted: {', '.join(EPISODE_SELECTIONS)}"
        )
    if wanted is None or wanted >= available:
        return list(range(available))
    if selection == "first":
        return list(range(wanted))
    return [i * available // wanted for i in range(wanted)]


def read_array_prefix(path: str | os.PathLike, key: str, rows: int | None = None) -> np.ndarray:
    """Read the first ``rows`` entries (along axis 0) of one array of an ``.npz`` without loading the rest.

    Args:
        path: the ``.npz`` file.
        key: array name.
        rows: number of leading entries to read; None reads everything (and verifies the zip CRC).

    Returns:
        The array [rows, ...].

    Raises:
        DatasetError: missing key, pickled array, truncated or corrupt file.
    """
    return read_array_rows(path, key, None if rows is None else range(rows))


def read_array_rows(
    path: str | os.PathLike, key: str, positions: Sequence[int] | None = None, sha256: str | None = None
) -> np.ndarray:
    """Read the entries ``positions`` (along axis 0, ascending) of one array of an ``.npz``.

    Only the chosen entries are kept in memory; the stored file is streamed once. Positions past
    the end of the array are dropped.

    Args:
        path: the ``.npz`` file.
        key: array name.
        positions: ascending entry indices; None reads everything (and verifies the zip CRC).
        sha256: the array's checksum from the manifest: when given, every byte of the array is
            hashed as it streams by (the rows not kept included) and compared at the end.

    Returns:
        The array [len(positions), ...].

    Raises:
        DatasetError: missing key, pickled array, truncated or corrupt file, checksum mismatch.
    """
    path = Path(path)
    if positions is not None and any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
        raise ValueError(f"positions must be strictly ascending, got {list(positions)[:10]}...")
    digest = hashlib.sha256() if sha256 is not None else None
    with _open_npz(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            found = sorted(n.removesuffix(".npy") for n in zf.namelist())
            raise DatasetError(f"{path}: no array {key!r}; found {found}; {remake_advice(path)}")
        try:
            with zf.open(f"{key}.npy") as f:
                shape, dtype = _read_npy_header(path, key, f)

                def take(view: memoryview) -> None:
                    _read_exact(path, key, f, view)
                    if digest is not None:
                        digest.update(view)

                wanted = (
                    list(range(shape[0])) if positions is None else [p for p in positions if p < shape[0]]
                )
                row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                out = np.empty((len(wanted), *shape[1:]), dtype=dtype)
                view = memoryview(out.reshape(-1).view(np.uint8))
                scratch = bytearray(row_bytes)
                at = len(wanted)
                if wanted == list(range(len(wanted))):  # a prefix: one read
                    take(view)
                else:
                    at = 0
                    for i, position in enumerate(wanted):
                        for _ in range(position - at):  # skip rows (ZipExtFile seeks by reading)
                            take(memoryview(scratch))
                        take(view[i * row_bytes : (i + 1) * row_bytes])
                        at = position + 1
                if digest is not None:  # the rows after the last one kept
                    rest = (shape[0] - at) * row_bytes
                    chunk = bytearray(min(rest, 1 << 24))
                    while rest:
                        n = min(rest, len(chunk))
                        take(memoryview(chunk)[:n])
                        rest -= n
                    at = shape[0]
                    if digest.hexdigest() != sha256:
                        raise DatasetError(
                            f"{path}: array {key!r} does not match the sha256 in its manifest (the file changed "
                            f"after it was written); {remake_advice(path)} (or train on it as it is with "
                            "env.verify_checksums=false)"
                        )
                if at == shape[0] and shape[0]:
                    f.read(1)  # reach EOF so the zip CRC is verified
        except DatasetError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise DatasetError(f"{path}: truncated or corrupt dataset ({e}); {remake_advice(path)}") from e
    return out


def _read_npy_header(path: Path, key: str, f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise DatasetError(
            f"{path}: array {key!r} holds pickled objects; not a dataset of this project; {remake_advice(path)}"
        )
    if fortran:
        raise DatasetError(
            f"{path}: array {key!r} is Fortran-ordered; not written by this project; {remake_advice(path)}"
        )
    return shape, dtype


def _read_exact(path: Path, key: str, f, view: memoryview) -> None:
    got = 0
    while got < len(view):
        chunk = f.readinto(view[got:])
        if not chunk:
            raise DatasetError(f"{path}: array {key!r} is truncated; {remake_advice(path)}")
        got += chunk


def verify_dataset(path: str | os.PathLike) -> None:
    """Check every array against the manifest's shapes and sha256 checksums (reads the whole file).

    Raises:
        DatasetError: any mismatch.
    """
    manifest = read_manifest(path)
    for key, info in manifest["arrays"].items():
        array = read_array_prefix(path, key)
        if list(array.shape) != info["shape"] or array_checksum(array) != info["sha256"]:
            raise DatasetError(f"{path}: array {key!r} does not match its manifest checksum")


def _remove_stale_temporaries(path: Path) -> None:
    """Deletes ``.<name>.tmp-<pid>`` files beside ``path`` whose writing process no longer runs
    (a SIGKILL during the final write leaves one that no ``finally`` could remove)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            logger.info("removed %s, left by a killed writer", tmp)
        except PermissionError:  # a live process of another user
            pass
