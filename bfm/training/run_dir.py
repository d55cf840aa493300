"""Run directories: layout, saved config, and the resume / compatibility rules.

Layout of ``<run_dir>`` (default ``runs/<algorithm>/<domain>/<dataset>/<memory>/seed<seed>``)::

    config.yaml        resolved run config (what the run was started with)
    train.csv          step, train/<metric> means over each log interval, time/...
    eval.csv           step, task, multiplier, iqm, mean, returns (every episode return)
    results.json       final and best per-task IQM, mean over tasks, rollout memory, dataset provenance
    checkpoints/       step_<step>/ (agent + trainer.pt) and ``latest``
    main_exorl.log     log messages (hydra's job log)
    .hydra/            hydra's own record of the composed config and overrides
    .lock, .lock.json  held while a run uses the directory (``locked``): the lock and its holder

Rerunning a command into an existing run directory continues from its last checkpoint; the
saved config must then match the new one except for the keys in ``config.RESUMABLE_KEYS``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import yaml

from bfm.files import unwritable
from bfm.training.checkpoint import ResumePoint, checkpoint_problem, resume_point, set_aside_damaged
from bfm.training.config import ConfigError, RunConfig, incompatible_keys, run_config_from_dict

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
LOCK_FILE, HOLDER_FILE = ".lock", ".lock.json"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def locked(directory: Path, what: str = "run directory") -> Iterator[None]:
    """Holds ``directory``'s lock (created with the directory if needed) for the duration.

    The lock is an OS file lock (``filelock.FileLock``: ``flock`` on Linux and macOS), which the
    operating system releases when its process ends, however it ends; ``.lock.json`` beside it
    names the holder (pid, host, start time, command). A second process is refused at once with a
    ConfigError naming the holder. A holder file left by a process that ended without removing it
    (killed) is taken over with a warning. On a shared cluster file system the lock holds between
    machines only where the file system supports file locks (NFSv4, Lustre and GPFS do when mounted
    with locking; plain NFSv3 without lockd does not).

    Raises:
        ConfigError: another process holds the lock.
    """
    directory.mkdir(parents=True, exist_ok=True)
    holder_path = directory / HOLDER_FILE
    lock = filelock.FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ConfigError(f"{what} {directory} is in use by {_holder(holder_path)}; wait for that run to end, or "
                          "stop it, or choose another directory") from None  # fmt: skip
    try:
        if holder_path.exists():
            log.warning("%s %s: taking over the lock of %s, which ended without releasing it",
                        what, directory, _holder(holder_path))  # fmt: skip
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
        }
        holder_path.write_text(json.dumps(holder) + "\n")
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()


def _holder(path: Path) -> str:
    """'pid P on host H since T (command)' from a holder file, or what is known."""
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} on host {h['host']} since {h['started']} ({h['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its holder file is missing or unreadable)"


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run directory was started with, or None.

    Raises:
        ConfigError: the file is not a YAML mapping (names it).
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        with path.open() as f:
            values = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        values = error
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} is not a readable run config ({str(values).splitlines()[0][:100] if isinstance(values, Exception) else type(values).__name__}); "
            "restore it, or delete it to resume without the config check"
        )
    return values


def check_run_dir(cfg: RunConfig, point: ResumePoint | None = None) -> Path | None:
    """Applies the resume rules without writing anything (``point``: the run directory's
    ``resume_point``, computed here when not given).

    Returns:
        The checkpoint to resume from (the newest intact one), or None for a fresh start.

    Raises:
        ConfigError: the directory cannot be written, holds a run with an incompatible config,
            checkpoints of which none is intact, or a checkpoint while ``resume=false``.
    """
    run_dir = Path(cfg.run_dir)
    _check_writable(run_dir)
    point = point or resume_point(run_dir)
    if point.any_checkpoint and not cfg.resume:
        name = (point.path or point.damaged[0][0]).name
        raise ConfigError(
            f"run directory {run_dir} already holds a checkpoint ({name}); pass resume=true to continue it or choose another run_dir=..."
        )
    if point.path is None and point.damaged:
        path, problem = point.damaged[0]
        raise ConfigError(
            f"no intact checkpoint to resume in {run_dir}: {path.name}: {problem}"
            + (f" (and {len(point.damaged) - 1} more damaged)" if len(point.damaged) > 1 else "")
            + f"; restore the file, or delete {run_dir / 'checkpoints'} to train from step 0"
        )
    saved = saved_config(run_dir)
    if saved is not None and point.path is not None:
        saved = _with_defaults(saved)
        differ = incompatible_keys(saved, cfg.to_dict())
        if differ:
            shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(cfg.to_dict(), k)!r})" for k in differ[:4])
            more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
            raise ConfigError(
                f"run directory {run_dir} holds a run with a different config: {shown}{more}; "
                "use another run_dir=..., or delete the directory to start over"
            )
    return point.path


def common_resume(cfgs: list[RunConfig], points: list[ResumePoint]) -> list[Path | None]:
    """The resume rules for every seed of a run (``check_run_dir`` each), and the checkpoint each
    seed continues from (None: a fresh start): with several seeds one step for all (they train in
    step), the newest step every seed has an intact checkpoint of.

    Raises:
        ConfigError: a seed's directory breaks a resume rule, or the seeds share no step (some
            have checkpoints and others none, or their kept checkpoints do not meet).
    """
    paths = [check_run_dir(c, p) for c, p in zip(cfgs, points, strict=True)]
    if len(cfgs) == 1 or all(path is None for path in paths):
        return paths
    steps = {c.seed: None if path is None else _step_of(path) for c, path in zip(cfgs, paths, strict=True)}
    shown = ", ".join(
        f"seed {seed}: {'no checkpoint' if step is None else f'step {step}'}" for seed, step in steps.items()
    )
    fix = "resume the seeds one at a time (seeds=1 seed=...), or delete their checkpoints to start them together"
    if any(path is None for path in paths):
        raise ConfigError(
            f"the seeds of a seeds={len(cfgs)} run train in step, but their run directories differ ({shown}); {fix}"
        )
    common = min(step for step in steps.values() if step is not None)
    out: list[Path | None] = []
    for path in paths:
        same = path.parent / f"step_{common:09d}"  # type: ignore[union-attr]
        if not same.is_dir() or checkpoint_problem(same) is not None:
            raise ConfigError(
                f"the seeds of a seeds={len(cfgs)} run train in step, but no step has an intact checkpoint in every "
                f"run directory ({shown}; {same} missing or damaged); {fix}"
            )
        out.append(same)
    return out


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[-1])


def _check_writable(run_dir: Path) -> None:
    """The run directory, or the nearest folder above it that exists, must be writable."""
    reason = unwritable(run_dir)
    if reason is not None:
        raise ConfigError(f"run directory {run_dir}: {reason}; choose another --run_dir (or run_root)")


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields added to the config classes since it was written at their
    defaults, so that they do not count as changes; as saved when it cannot be read."""
    try:
        return run_config_from_dict(saved).to_dict()
    except ConfigError:
        return saved


def _get(values: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def prepare_run_dir(cfg: RunConfig, point: ResumePoint | None = None) -> Path:
    """Creates the run directory, sets damaged checkpoints aside (those of ``point``, the
    directory's ``resume_point``, computed here when not given) (``damaged_step_<step>``, with a
    warning naming the one resumed instead) and writes the resolved config (kept from the first
    start)."""
    run_dir = Path(cfg.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        point = point or resume_point(run_dir)
        set_aside_damaged(point)
        path = run_dir / CONFIG_FILE
        if point.path is None or not path.exists():
            with path.open("w") as f:
                yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    except OSError as error:  # read-only file system, permissions, disk full
        raise ConfigError(
            f"run directory {run_dir} cannot be written ({error}); choose another --run_dir"
        ) from None
    return run_dir
