"""The training loop: sample, update, log, evaluate, checkpoint; resume and interruption.

Evaluations happen at step 0, every ``eval_frequency`` steps and at the last step; a checkpoint
follows every evaluation. SIGINT / SIGTERM finish the current update, write a checkpoint and
raise KeyboardInterrupt. A non-finite training metric (checked once per log interval, without a
per-step host sync) stops the run with :class:`NonFiniteLossError` naming the first bad step; the
last checkpoint written before it is the last good one and is left untouched.

Several seeds of one configuration (``seeds=K``) train in step: one batch per seed per step, one
update of all (``agents.seeds.SeedBatch``, or each seed in turn), and every evaluation and
checkpoint written into each seed's own run directory as its single-seed run would write it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.agents.seeds import SeedBatch
from bfm.data.progress import progress
from bfm.files import write_text_atomic
from bfm.training.checkpoint import global_rng_state, load_checkpoint, save_checkpoint, set_global_rng_state
from bfm.training.config import RunConfig
from bfm.training.evaluation import EvalResult, Evaluator
from bfm.training.logger import MetricLogger
from bfm.training.run_dir import RESULTS_FILE

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A training metric became NaN or infinite."""


@dataclasses.dataclass
class SeedRun:
    """One seed's share of a training run, in its own run directory.

    Attributes:
        cfg: the seed's run config (its ``seed`` and ``run_dir``; the training settings are those of
            every seed of the run).
        agent: agent with ``update(batch, step) -> dict[str, Tensor]``.
        buffer: SequenceBuffer with ``sample(batch_size, spec)`` (spec: ``agent.batch_spec``).
        evaluator: zero-shot evaluator.
        logger: metric logger writing into the run directory.
        provenance: dataset description stored in results.json.
        rng: this seed's state of torch's, numpy's and python's global generators while another
            seed's code runs (several seeds in one process); None for a single-seed run, which
            owns them.
        last_checkpoint: (step, path) of the checkpoint last written or resumed from.
    """

    cfg: RunConfig
    agent: Any
    buffer: Any
    evaluator: Evaluator
    logger: MetricLogger
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    rng: dict[str, Any] | None = None
    last_checkpoint: tuple[int, Path] | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @contextlib.contextmanager
    def global_rng(self) -> Iterator[None]:
        """Runs the block with this seed's global generator states (and keeps what it leaves)."""
        if self.rng is None:
            yield
            return
        outside = global_rng_state()
        set_global_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = global_rng_state()
            set_global_rng_state(outside)


class Trainer:
    """Runs a training run: one seed, or several seeds of one configuration in step.

    Args:
        cfg: run config.
        agent: agent with ``update(batch, step) -> dict[str, Tensor]``.
        buffer: SequenceBuffer with ``sample(batch_size, spec)`` (spec: ``agent.batch_spec``).
        evaluator: zero-shot evaluator.
        logger: metric logger writing into the run directory.
        provenance: dataset description stored in results.json.

    ``Trainer.for_seeds`` trains several ``SeedRun`` together: every step samples one batch per
    seed and updates all seeds, batched (``agents.seeds.SeedBatch``) or one after another;
    evaluations and checkpoints go to each seed's own run directory, as K single-seed runs write them.
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
        self._setup([SeedRun(cfg, agent, buffer, evaluator, logger, provenance or {})], None)

    @classmethod
    def for_seeds(cls, runs: list[SeedRun], seed_batch: SeedBatch | None = None) -> Trainer:
        """A trainer of several seeds (``seed_batch``: their batched update; None updates them in turn)."""
        trainer = cls.__new__(cls)
        trainer._setup(runs, seed_batch)
        return trainer

    def _setup(self, runs: list[SeedRun], seed_batch: SeedBatch | None) -> None:
        self.runs, self.seed_batch = runs, seed_batch
        self.cfg = runs[0].cfg  # the training settings, shared by the seeds
        self.batch_spec = runs[0].agent.batch_spec  # what the algorithm's batches hold; fixed for the run
        self._stop_signal: int | None = None
        self._tick: tuple[float, int] = (time.perf_counter(), 0)  # (time, step) of the last train.csv row

    def run(self, resume_from: Path | list[Path | None] | None = None) -> list[dict[str, Any]]:
        """Trains to ``learning_steps`` (from the checkpoints when given: one path, or one per
        seed, all at one step) and returns each seed's results.json."""
        paths = resume_from if isinstance(resume_from, list) else [resume_from] * len(self.runs)
        step = self._start(paths)
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
        for run in self.runs:
            run.logger.close()
        return results

    def _start(self, paths: list[Path | None]) -> int:
        """Restores the checkpoints, or evaluates and checkpoints the untrained agents (step 0)."""
        if any(path is None for path in paths) != all(path is None for path in paths):
            raise ValueError("the seeds of a run resume together: every seed needs a checkpoint, or none")
        if paths[0] is None:
            for run in self.runs:
                run.logger.rewind(-1)
            self._evaluate(0, None)
            self._checkpoint(0)
            return 0
        steps = set()
        for k, (run, path) in enumerate(zip(self.runs, paths, strict=True)):
            load = None if self.seed_batch is None else functools.partial(self.seed_batch.load_state_dict, k)
            with run.global_rng():
                state = load_checkpoint(path, run.agent, run.buffer, load)
            run.logger.rewind(state["step"])
            run.last_checkpoint = (state["step"], path)
            steps.add(int(state["step"]))
        if len(steps) > 1:
            raise ValueError(f"the seeds' checkpoints are at different steps {sorted(steps)}")
        return steps.pop()

    def _update(self, step: int) -> None:
        batches = [run.buffer.sample(self.cfg.train.batch_size, self.batch_spec) for run in self.runs]
        if self.seed_batch is not None:
            metrics = self.seed_batch.update(batches, step)
        else:
            metrics = []
            for run, batch in zip(self.runs, batches, strict=True):
                with run.global_rng():  # dropout masks come from the global generator
                    metrics.append(run.agent.update(batch, step))
        for run, seed_metrics in zip(self.runs, metrics, strict=True):
            run.logger.accumulate(seed_metrics)

    def _flush(self, step: int) -> None:
        """Checks the pending metrics for non-finite values, then writes a train.csv row per seed."""
        for run in self.runs:
            bad = run.logger.first_nonfinite()
            if bad is None:
                continue
            offset, name, value = bad
            bad_step = self._tick[1] + 1 + offset
            where = (
                "no checkpoint"
                if run.last_checkpoint is None
                else f"last good checkpoint: {run.last_checkpoint[1]} (step {run.last_checkpoint[0]})"
            )
            seed = f" (seed {run.cfg.seed})" if len(self.runs) > 1 else ""
            raise NonFiniteLossError(
                f"non-finite loss at step {bad_step}{seed}: train/{name} = {value}; run stopped; {where}"
            )
        now = time.perf_counter()
        rate = (step - self._tick[1]) / max(now - self._tick[0], 1e-9)
        for run in self.runs:
            run.logger.flush_train(step, {"time/updates_per_second": rate})
        self._tick = (now, step)

    def _evaluate(self, step: int, bar: Any) -> None:
        means = []
        for k, run in enumerate(self.runs):
            agent = run.agent if self.seed_batch is None else self.seed_batch.agent(k)
            with run.global_rng():
                result = run.evaluator.evaluate(agent, step)
            run.logger.log_eval(step, result.rows(), result.summary())
            seed = f" seed {run.cfg.seed}" if len(self.runs) > 1 else ""
            log.info(
                "eval step %d%s: mean IQM %.2f (%s) in %.1fs",
                step,
                seed,
                result.mean_iqm(),
                _short(result),
                result.seconds,
            )
            means.append(result.mean_iqm())
        if bar is not None:
            bar.set_postfix(eval_iqm=" ".join(f"{m:.1f}" for m in means))

    def _checkpoint(self, step: int) -> None:
        for k, run in enumerate(self.runs):
            state = None if self.seed_batch is None else self.seed_batch.state_dict(k)
            with run.global_rng():
                path = save_checkpoint(run.run_dir, step, run.agent, run.buffer, agent_state=state)
            run.last_checkpoint = (step, path)

    def _interrupt(self, step: int) -> None:
        """Saves a checkpoint at ``step`` (unless one was just written) and stops the run."""
        if self.runs[0].last_checkpoint is None or self.runs[0].last_checkpoint[0] != step:
            if self.runs[0].logger.has_pending():
                self._flush(step)
            self._checkpoint(step)
        for run in self.runs:
            run.logger.close()
        name = signal.Signals(self._stop_signal).name
        log.warning(
            "%s received: checkpoint at step %d written to %s; rerun the same command to continue",
            name,
            step,
            ", ".join(str(run.run_dir) for run in self.runs),
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
        seeds = f" seeds {','.join(str(run.cfg.seed) for run in self.runs)}" if len(self.runs) > 1 else ""
        return progress(
            total=total,
            initial=step,
            unit="upd",
            dynamic_ncols=True,
            disable=not self.cfg.train.show_progress,
            desc=f"{self.cfg.agent.name} {self.cfg.env.domain} {self.cfg.memory_label}{seeds}",
        )

    def write_results(self, step: int) -> list[dict[str, Any]]:
        """Builds each seed's results.json from every evaluation in its eval.csv and writes it atomically."""
        out = []
        for run in self.runs:
            results = build_results(run.cfg, run.logger.eval_csv.read(), run.provenance, step)
            write_text_atomic(run.run_dir / RESULTS_FILE, json.dumps(results, indent=2))
            out.append(results)
        return out


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
