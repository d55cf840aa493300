"""Run directories: layout, saved config, and the resume / compatibility rules.

Layout of ``<run_dir>`` (default ``runs/<algorithm>/<domain>/<dataset>/<memory>/seed<seed>``)::

    config.yaml        resolved run config (what the run was started with)
    train.csv          step, train/<metric> means over each log interval, time/...
    eval.csv           step, task, multiplier, iqm, mean, returns (every episode return)
    results.json       final and best per-task IQM, mean over tasks, rollout memory, dataset provenance
    checkpoints/       step_<step>/ (agent + trainer.pt) and ``latest``
    main_exorl.log     log messages (hydra's job log)
    .hydra/            hydra's own record of the composed config and overrides

Rerunning a command into an existing run directory continues from its last checkpoint; the
saved config must then match the new one except for the keys in ``config.RESUMABLE_KEYS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bfm.training.checkpoint import latest_checkpoint
from bfm.training.config import ConfigError, RunConfig, incompatible_keys, run_config_from_dict

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run directory was started with, or None."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    with path.open() as f:
        return yaml.safe_load(f)


def check_run_dir(cfg: RunConfig) -> Path | None:
    """Applies the resume rules without writing anything.

    Returns:
        The checkpoint to resume from, or None for a fresh start.

    Raises:
        ConfigError: the directory holds a run with an incompatible config, or a checkpoint
            while ``resume=false``.
    """
    run_dir = Path(cfg.run_dir)
    checkpoint = latest_checkpoint(run_dir)
    saved = saved_config(run_dir)
    if saved is not None and checkpoint is not None:
        saved = _current_layout(saved)
        differ = incompatible_keys(saved, cfg.to_dict())
        if differ:
            shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(cfg.to_dict(), k)!r})" for k in differ[:4])
            more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
            raise ConfigError(
                f"run directory {run_dir} holds a run with a different config: {shown}{more}; "
                "use another run_dir=..., or delete the directory to start over"
            )
    if checkpoint is not None and not cfg.resume:
        raise ConfigError(
            f"run directory {run_dir} already holds a checkpoint ({checkpoint.name}); pass resume=true to continue it or choose another run_dir=..."
        )
    return checkpoint


def _current_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config as today's code writes it: earlier layouts upgraded, fields added since
    then at their defaults (so they do not count as changes). As saved when it cannot be read."""
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


def prepare_run_dir(cfg: RunConfig) -> Path:
    """Creates the run directory and writes the resolved config (kept from the first start)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    if latest_checkpoint(run_dir) is None or not path.exists():
        with path.open("w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    return run_dir
