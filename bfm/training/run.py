"""Training in-process: check a run's config, train it, summarise its results.

    from bfm.training.config import run_config_from_dict
    from bfm.training.run import check, train
    cfg = check(run_config_from_dict(values))   # what main_exorl.py checks before it starts
    results = train(cfg)                        # one dict per seed, as in results.json

``main_exorl.py`` (``bfm.cli.train``) composes the configs with hydra and calls these; nothing here
knows hydra or the command line.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from bfm.training import builders, run_dir
from bfm.training import config as tc
from bfm.training.checkpoint import global_rng_state, resume_point
from bfm.training.config import RunConfig
from bfm.training.logger import MetricLogger
from bfm.training.trainer import SeedRun, Trainer, seed_everything

log = logging.getLogger("main_exorl")


def check(cfg: RunConfig) -> RunConfig:
    """Everything that can be checked before training: names, numbers, device, tasks, dataset, run
    directory.

    Returns:
        ``cfg``.

    Raises:
        training.config.ConfigError: naming the problem and what is accepted.
    """
    tc.validate_names(cfg)
    builders.resolve_device(cfg.device)
    setup = builders.make_env(cfg)
    builders.dataset_paths(cfg, setup.domain)
    run_dir.check_run_dir(cfg)
    return cfg


def train(cfg: RunConfig | list[RunConfig]) -> list[dict[str, Any]]:
    """One training run (one config, or one per seed of a ``seeds=K`` run, trained in step):
    environment, buffer, agent, logger and evaluator of each seed, then the loop. Resumes from
    the run directories' checkpoints; one process per run directory (a second is refused).

    Returns:
        Each seed's results (what its results.json holds).
    """
    cfgs = cfg if isinstance(cfg, list) else [cfg]
    with contextlib.ExitStack() as locks:
        for c in cfgs:
            locks.enter_context(run_dir.locked(Path(c.run_dir)))
        return _train(cfgs)


def _train(cfgs: list[RunConfig]) -> list[dict[str, Any]]:
    first = cfgs[0]
    points = [resume_point(Path(c.run_dir)) for c in cfgs]  # checks every checkpoint's files once
    resume_from = run_dir.common_resume(cfgs, points)
    directories = [run_dir.prepare_run_dir(c, p) for c, p in zip(cfgs, points, strict=True)]
    if first.torch_threads:
        torch.set_num_threads(first.torch_threads)
    device = builders.resolve_device(first.device)
    setup = builders.make_env(first)
    runs, buffer = [], None
    for c, directory in zip(cfgs, directories, strict=True):
        seed_everything(c.seed)
        buffer = builders.make_buffer(c, setup, device, like=buffer)
        agent = builders.make_agent(c, buffer, device)
        logger = MetricLogger(directory, c.logger, c.to_dict(), run_name=str(c.run_dir))
        evaluator = builders.make_evaluator(c, setup, buffer, device)
        provenance = builders.provenance(c, setup, buffer)
        rng = global_rng_state() if len(cfgs) > 1 else None
        runs.append(SeedRun(c, agent, buffer, evaluator, logger, provenance, rng))
    trainer = Trainer.for_seeds(runs, builders.make_seed_batch(first, [r.agent for r in runs]))
    log.info(
        "run %s on %s (resume from %s)",
        ", ".join(map(str, directories)),
        device,
        ", ".join(map(str, resume_from)),
    )
    return trainer.run(resume_from)


def format_summary(results: dict[str, Any]) -> str:
    """The end-of-run table: per task and multiplier, final and best IQM."""
    lines = [
        f"\n{results['algorithm']} {results['domain']} {results['dataset']} memory={results['memory']} "
        f"seed={results['seed']} steps={results['steps']} rollout_memory={results['rollout_memory']}",
        f"{'task':<16}{'mult':>6}{'final IQM':>12}{'best IQM':>12}{'best at':>10}",
    ]
    for task, per_m in results["final"]["iqm"].items():
        for m, value in per_m.items():
            best = results["best"]["iqm"][task][m]
            at = results["best"]["iqm_step"][task][m]
            lines.append(f"{task:<16}{float(m):>6g}{value:>12.1f}{best:>12.1f}{at:>10}")
    lines.append(
        f"{'mean over tasks':<22}{results['final']['mean_iqm']:>12.1f}{results['best']['mean_iqm']:>12.1f}{results['best']['step']:>10}"
    )
    return "\n".join(lines)
