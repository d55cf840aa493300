"""The training loop: sample, update, log, evaluate, checkpoint; resume and interruption.

Evaluations happen at step 0, every ``eval_frequency`` steps and at the last step; a checkpoint
follows every evaluation. SIGINT / SIGTERM finish the current update, write a checkpoint and
raise KeyboardInterrupt. A non-finite training metric (checked once per log interval, without a
per-step host sync) stops the run with :class:`NonFiniteLossError` naming the first bad step; the
last checkpoint written before it is the last good one and is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.data.progress import progress
from bfm.training.checkpoint import load_checkpoint, save_checkpoint
from bfm.training.config import RunConfig
from bfm.training.evaluation import EvalResult, Evaluator
from bfm.training.logger import MetricLogger
from bfm.training.run_dir import RESULTS_FILE

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A training metric became NaN or infinite."""


class Trainer:
    """Runs one training run in its run directory.

    Args:
        cfg: run config.
        agent: agent with ``update(batch, step) -> dict[str, Tensor]``.
        buffer: SequenceBuffer with ``sample(batch_size, spec)`` (spec: ``agent.batch_spec``).
        evaluator: zero-shot evaluator.
        logger: metric logger writing into the run directory.
        provenance: dataset description stored in results.json.
    """

    def __init__(
        self,
        cfg: RunConfig,
        agent: Any,
        buffer: Any,
        evaluator: Evaluator,
        logger: MetricLogger,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.buffer = buffer
        self.evaluator = evaluator
        self.logger = logger
        self.provenance = provenance or {}
        self.run_dir = Path(cfg.run_dir)
        self.batch_spec = agent.batch_spec  # what the algorithm's batches hold; fixed for the run
        self._stop_signal: int | None = None
        self._last_checkpoint: tuple[int, Path] | None = None
        self._tick: tuple[float, int] = (time.perf_counter(), 0)  # (time, step) of the last train.csv row

    def run(self, resume_from: Path | None = None) -> dict[str, Any]:
        """Trains to ``learning_steps`` (from the checkpoint when given) and returns results.json."""
        step = self._start(resume_from)
        total = self.cfg.train.learning_steps
        with self._signal_handlers(), self._progress(step, total) as bar:
            self._tick = (time.perf_counter(), step)
            while step < total:
                step += 1
                self._update(step)
                bar.update(1)
                at_eval = step % self.cfg.train.eval_frequency == 0 or step == total
                if at_eval or step % self.cfg.train.log_interval == 0:
                    self._flush(step)
                if at_eval:
                    self._evaluate(step, bar)
                    if self.cfg.train.checkpoint_every_eval or step == total:
                        self._checkpoint(step)
                    self._tick = (time.perf_counter(), step)  # updates/s excludes evaluation time
                if self._stop_signal is not None:
                    self._interrupt(step)
        results = self.write_results(step)
        self.logger.close()
        return results

    def _start(self, resume_from: Path | None) -> int:
        """Restores a checkpoint, or evaluates and checkpoints the untrained agent (step 0)."""
        if resume_from is not None:
            state = load_checkpoint(resume_from, self.agent, self.buffer)
            self.logger.rewind(state["step"])
            self._last_checkpoint = (state["step"], resume_from)
            return int(state["step"])
        self.logger.rewind(-1)
        self._evaluate(0, None)
        self._checkpoint(0)
        return 0

    def _update(self, step: int) -> None:
        batch = self.buffer.sample(self.cfg.train.batch_size, self.batch_spec)
        metrics = self.agent.update(batch, step)
        self.logger.accumulate(metrics)

    def _flush(self, step: int) -> None:
        """Checks the pending metrics for non-finite values, then writes a train.csv row."""
        bad = self.logger.first_nonfinite()
        if bad is not None:
            offset, name, value = bad
            bad_step = self._tick[1] + 1 + offset
            where = (
                "no checkpoint"
                if self._last_checkpoint is None
                else f"last good checkpoint: {self._last_checkpoint[1]} (step {self._last_checkpoint[0]})"
            )
            raise NonFiniteLossError(
                f"non-finite loss at step {bad_step}: train/{name} = {value}; run stopped; {where}"
            )
        now = time.perf_counter()
        rate = (step - self._tick[1]) / max(now - self._tick[0], 1e-9)
        self.logger.flush_train(step, {"time/updates_per_second": rate})
        self._tick = (now, step)

    def _evaluate(self, step: int, bar: Any) -> None:
        result = self.evaluator.evaluate(self.agent, step)
        self.logger.log_eval(step, result.rows(), result.summary())
        log.info(
            "eval step %d: mean IQM %.2f (%s) in %.1fs",
            step,
            result.mean_iqm(),
            _short(result),
            result.seconds,
        )
        if bar is not None:
            bar.set_postfix(eval_iqm=f"{result.mean_iqm():.1f}")

    def _checkpoint(self, step: int) -> None:
        path = save_checkpoint(self.run_dir, step, self.agent, self.buffer)
        self._last_checkpoint = (step, path)

    def _interrupt(self, step: int) -> None:
        """Saves a checkpoint at ``step`` (unless one was just written) and stops the run."""
        if self._last_checkpoint is None or self._last_checkpoint[0] != step:
            if self.logger.has_pending():
                self._flush(step)
            self._checkpoint(step)
        self.logger.close()
        name = signal.Signals(self._stop_signal).name
        log.warning(
            "%s received: checkpoint at step %d written to %s; rerun the same command to continue",
            name,
            step,
            self.run_dir,
        )
        raise KeyboardInterrupt(f"{name} at step {step}")

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag that the loop turns into checkpoint + stop."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:  # second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a launcher's worker thread)
            pass
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _progress(self, step: int, total: int) -> Any:
        """A tqdm bar on a terminal, one line a minute in a log (``data.progress``)."""
        return progress(
            total=total,
            initial=step,
            unit="upd",
            dynamic_ncols=True,
            disable=not self.cfg.train.show_progress,
            desc=f"{self.cfg.agent.name} {self.cfg.env.domain} {self.cfg.memory_label}",
        )

    def write_results(self, step: int) -> dict[str, Any]:
        """Builds results.json from every evaluation in eval.csv and writes it atomically."""
        results = build_results(self.cfg, self.logger.eval_csv.read(), self.provenance, step)
        path = self.run_dir / RESULTS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, path)
        return results


def _short(result: EvalResult) -> str:
    return ", ".join(f"{task}@{m:g}={v:.1f}" for (task, m), v in result.task_iqm.items())


def build_results(
    cfg: RunConfig, eval_rows: list[dict[str, str]], provenance: dict[str, Any], steps: int
) -> dict[str, Any]:
    """Summarises eval.csv rows into the results.json structure.

    ``final``: the last evaluation; ``best``: per (task, multiplier) the highest IQM of any
    evaluation, and the evaluation with the highest mean over tasks. IQMs are nested as
    ``{task: {multiplier: iqm}}`` with multipliers written as strings (``"1.0"``).
    """
    by_step: dict[int, dict[tuple[str, float], float]] = {}
    returns: dict[int, dict[tuple[str, float], list[float]]] = {}
    for row in eval_rows:
        s, key = int(float(row["step"])), (row["task"], float(row["multiplier"]))
        by_step.setdefault(s, {})[key] = float(row["iqm"])
        returns.setdefault(s, {})[key] = [float(x) for x in row["returns"].split()]
    if not by_step:
        raise RuntimeError("no evaluation recorded in eval.csv")
    means = {s: float(np.mean(list(v.values()))) for s, v in by_step.items()}
    final_step = max(by_step)
    best_mean_step = max(means, key=lambda s: (means[s], -s))
    keys = list(by_step[final_step])
    best_per_task = {k: max((by_step[s][k], s) for s in by_step if k in by_step[s]) for k in keys}
    return {
        "algorithm": cfg.agent.name,
        "domain": cfg.env.domain,
        "dataset": cfg.env.dataset,
        "memory": cfg.memory_label,
        "memory_type": cfg.agent.memory.name,
        "seed": cfg.seed,
        "steps": steps,
        "rollout_memory": cfg.train.rollout_memory,
        "eval_rollouts": cfg.train.eval_rollouts,
        "eval_episode_length": cfg.train.eval_episode_length or 1000,
        "tasks": list(dict.fromkeys(task for task, _ in keys)),
        "multipliers": sorted({k[1] for k in keys}),
        "final": {
            "step": final_step,
            "mean_iqm": means[final_step],
            "iqm": _nest(by_step[final_step]),
            "returns": _nest(returns[final_step]),
        },
        "best": {
            "step": best_mean_step,
            "mean_iqm": means[best_mean_step],
            "iqm": _nest({k: v for k, (v, _) in best_per_task.items()}),
            "iqm_step": _nest({k: s for k, (_, s) in best_per_task.items()}),
        },
        "curve": [{"step": s, "mean_iqm": means[s]} for s in sorted(means)],
        "dataset_provenance": provenance,
        "finite": all(math.isfinite(v) for v in means.values()),
    }


def _nest(values: dict[tuple[str, float], Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (task, m), v in values.items():
        out.setdefault(task, {})[str(float(m))] = v
    return out


def seed_everything(seed: int) -> None:
    """Seeds torch, numpy's legacy global generator and ``random`` (the agent's initial weights)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
