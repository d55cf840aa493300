"""Metric logging: CSV files in the run directory always, Weights & Biases when asked.

Training metrics arrive every step as 0-d tensors (possibly on the GPU) and are only stacked,
averaged and copied to the host once per log interval, so the training loop never waits on a
device sync. Sections follow the metamotivo/ogbench convention: ``train/...``, ``eval/<task>/...``,
``time/...``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import secrets
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from bfm.files import replacing, writing
from bfm.training.config import LoggerSettings

log = logging.getLogger(__name__)


class CSVWriter:
    """Appends rows to a CSV file whose columns may grow (the file is rewritten when they do).

    Args:
        path: the CSV file; an existing file is continued (its header is read back).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.columns: list[str] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                self.columns = next(csv.reader(f), [])

    def write(self, row: dict[str, Any]) -> None:
        """Appends one row; new keys become new columns (earlier rows get empty cells)."""
        new = [k for k in row if k not in self.columns]
        if new:
            rows = self.read()
            self.columns += new
            self._rewrite(rows)
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=self.columns).writerow(row)
        size = self.path.stat().st_size
        try:
            with writing(self.path), self.path.open("a", newline="") as f:
                f.write(line.getvalue())
        except BaseException:  # a full disk or Ctrl-C: no partial row stays behind
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            raise

    def read(self) -> list[dict[str, str]]:
        """Every row written so far."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after ``step`` (used when resuming from a checkpoint at ``step``)."""
        rows = self.read()
        kept = [r for r in rows if int(float(r.get("step", 0) or 0)) <= step]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with replacing(self.path, self.path.with_suffix(".tmp")) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)


class MetricLogger:
    """Accumulates training metrics as tensors and writes train.csv / eval.csv (and wandb).

    Args:
        run_dir: run directory (train.csv and eval.csv are written there).
        settings: logger settings (wandb on/off, project, mode).
        config: resolved run config, stored with the wandb run.
        run_name: wandb run name.
    """

    def __init__(
        self, run_dir: Path, settings: LoggerSettings, config: dict[str, Any], run_name: str
    ) -> None:
        self.run_dir = Path(run_dir)
        self.train_csv = CSVWriter(self.run_dir / "train.csv")
        self.eval_csv = CSVWriter(self.run_dir / "eval.csv")
        self._pending: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._wandb = _start_wandb(self.run_dir, settings, config, run_name) if settings.wandb else None

    def accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Stores one step's metrics (0-d tensors; no host sync)."""
        for name, value in metrics.items():
            self._pending[name].append(
                value.detach() if torch.is_tensor(value) else torch.tensor(float(value))
            )

    def has_pending(self) -> bool:
        """Whether training metrics wait to be written."""
        return bool(self._pending)

    def first_nonfinite(self) -> tuple[int, str, float] | None:
        """The first pending step with a NaN/inf metric: (offset in the interval, name, value), or None."""
        if not self._pending:
            return None
        names = list(self._pending)
        values = torch.stack([torch.stack(self._pending[n]).float().cpu() for n in names])  # [metrics, steps]
        bad = ~torch.isfinite(values)
        if not bool(bad.any()):
            return None
        offset = int(bad.any(dim=0).nonzero()[0])
        metric = int(bad[:, offset].nonzero()[0])
        return offset, names[metric], float(values[metric, offset])

    def flush_train(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Averages the accumulated metrics (one host sync) and writes a train.csv row.

        Returns:
            The row written, ``train/<name>`` means plus ``extra`` (e.g. ``time/...``).
        """
        names = list(self._pending)
        means = (
            torch.stack([torch.stack(self._pending[n]).float().mean() for n in names]).cpu().tolist()
            if names
            else []
        )
        row: dict[str, float] = {"step": step}
        row.update({f"train/{n}": v for n, v in zip(names, means, strict=True)})
        row.update(extra or {})
        self._pending.clear()
        self.train_csv.write(row)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        return row

    def log_eval(self, step: int, rows: list[dict[str, Any]], summary: dict[str, float]) -> None:
        """Writes one eval.csv row per (task, multiplier) and the summary to wandb."""
        for row in rows:
            self.eval_csv.write({"step": step, **row})
        if self._wandb is not None:
            self._wandb.log(summary, step=step)

    def rewind(self, step: int) -> None:
        """Forgets rows logged after ``step`` (resume from a checkpoint written at ``step``)."""
        self._pending.clear()
        self.train_csv.truncate_after(step)
        self.eval_csv.truncate_after(step)

    def close(self) -> None:
        """Finishes the wandb run, if any."""
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, settings: LoggerSettings, config: dict[str, Any], run_name: str) -> Any:
    """Starts (or resumes) a wandb run whose files live in the run directory."""
    import wandb  # lazy: an optional dependency (the [wandb] extra), and 1-2 s to import

    os.environ.setdefault("WANDB_SILENT", "true")
    run_id_file = run_dir / "wandb_run_id.txt"
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else secrets.token_hex(4)
    run_id_file.write_text(run_id)
    run = wandb.init(
        project=settings.project,
        entity=settings.entity,
        mode=settings.mode,
        dir=str(run_dir),
        name=run_name,
        id=run_id,
        resume="allow",
        config=config,
        tags=list(settings.tags),
        reinit="create_new",  # the seeds of a seeds=K run log to K runs at once
    )
    log.info("wandb run %s (%s mode) in %s", run_id, settings.mode, run_dir)
    return run
