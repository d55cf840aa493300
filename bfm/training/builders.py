"""Builders that turn a RunConfig into the objects of a run: transforms, buffer, agent, evaluator.

Each builder is small and has one job, so ``bfm.training.run.train`` reads like a table of contents.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from bfm import agents, envs
from bfm.agents.seeds import SeedBatch, unbatchable_reason
from bfm.data import SequenceBuffer, dataset_path
from bfm.data.exorl import create_command
from bfm.files import file_in_the_way
from bfm.training.config import ConfigError, RunConfig
from bfm.training.evaluation import Evaluator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EnvSetup:
    """The environment side of a run.

    Attributes:
        domain: base domain (walker, cheetah, quadruped).
        variant: POMDP variant or None.
        obs_transform: transform of the obs stream (dataset and evaluation observations).
        goal_transform: transform of the goal stream (dataset goals, task inference).
        tasks: evaluation tasks.
    """

    domain: str
    variant: str | None
    obs_transform: Any
    goal_transform: Any
    tasks: list[str]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda when available, else cpu.

    Raises:
        ConfigError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this machine has no CUDA device; use --device cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s); accepted: cpu, "
            f"cuda, cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; accepted: auto, cpu, cuda, cuda:N")
    return device


def pomdp_settings(cfg: RunConfig) -> dict[str, float]:
    """Every POMDP setting of the run (``env.<key>`` for each key of ``envs.pomdp.SETTINGS``)."""
    return {key: getattr(cfg.env, key) for key in envs.pomdp.SETTINGS}


def make_env(cfg: RunConfig) -> EnvSetup:
    """Parses the domain string and builds the two POMDP stream transforms.

    Raises:
        ConfigError: unknown domain or task.
    """
    try:
        spec = envs.parse_domain(cfg.env.domain)
        dynamics, rewards = envs.make_stream_transforms(cfg.env.domain, **pomdp_settings(cfg))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    info = envs.DOMAINS[spec.domain]
    known = info.reward_tasks  # the paper's tasks (the default) and any other task with a reward
    tasks = list(cfg.env.eval_tasks) or list(info.tasks)
    for task in tasks:
        if task not in known:
            raise ConfigError(f"unknown task {task!r} for domain {spec.domain}; accepted: {', '.join(known)}")
    return EnvSetup(spec.domain, spec.variant, dynamics, rewards, tasks)


def dataset_paths(cfg: RunConfig, domain: str) -> list[Path]:
    """The reformatted dataset file of every training multiplier.

    Raises:
        ConfigError: a dataset file is missing (names the path and how to make it).
    """
    paths = [
        Path(dataset_path(cfg.env.data_dir, domain, cfg.env.dataset, m)) for m in cfg.env.train_multipliers
    ]
    for path, m in zip(paths, cfg.env.train_multipliers, strict=True):
        blocker = None if path.exists() else file_in_the_way(path.parent)
        if blocker is not None:
            raise ConfigError(
                f"--data_dir {cfg.env.data_dir}: {blocker} is a file, not a folder; pass the dataset root, "
                "the folder that holds <domain>/<dataset>/buffer/dataset.npz"
            )
        if not path.exists():
            raise ConfigError(
                f"missing dataset {path} (domain {domain}, dataset {cfg.env.dataset}, multiplier {m:g}); "
                f"create it with `{create_command(path)}` or pass --data_dir"
            )
    return paths


def make_buffer(
    cfg: RunConfig,
    setup: EnvSetup,
    device: torch.device,
    like: SequenceBuffer | None = None,
    keep_states: bool = False,
) -> SequenceBuffer:
    """Loads the dataset(s) into a SequenceBuffer on ``device`` (POMDP corruption applied at load).

    ``like``: the buffer of another seed of the same run; its arrays are shared when they do not
    depend on the seed (``SequenceBuffer.with_seed``), so K seeds hold the data once.
    ``keep_states``: keep the physics states and raw observations too (prompting a trained model).
    """
    if like is not None:
        shared = like.with_seed(cfg.seed)
        if shared is not None:
            return shared
    return SequenceBuffer(
        dataset_paths(cfg, setup.domain),
        setup.domain,
        episodes=cfg.env.episodes,
        history_length=cfg.history_length,
        backward_history_length=cfg.backward_history_length,
        obs_transform=setup.obs_transform,
        goal_transform=setup.goal_transform,
        seed=cfg.seed,
        device=device,
        resample_per_batch=cfg.env.resample_per_batch,
        pad_with_zeros=cfg.env.pad_with_zeros,
        tasks=setup.tasks,
        episode_selection=cfg.env.episode_selection,
        keep_states=keep_states,
        verify_checksums=cfg.env.verify_checksums,
    )


def make_agent(cfg: RunConfig, buffer: Any, device: torch.device) -> Any:
    """Builds the agent for the buffer's observation, goal and action dimensions."""
    return agents.make_agent(
        cfg.agent.name, buffer.obs_dim, buffer.goal_dim, buffer.action_dim, cfg.agent, device, seed=cfg.seed
    )


def make_seed_batch(cfg: RunConfig, agents_: list[Any]) -> SeedBatch | None:
    """The batched update of a multi-seed run (``agents.seeds``), or None: one seed, ``batch_seeds``
    off, or a configuration that cannot be batched (then the seeds are updated one after another,
    with a warning saying why)."""
    if len(agents_) == 1 or not cfg.batch_seeds:
        return None
    reason = unbatchable_reason(agents_[0])
    if reason is not None:
        log.warning("seeds updated one after another, not batched: %s", reason)
        return None
    if cfg.agent.compile:
        log.warning("compile is not applied to the batched update of several seeds (agents.seeds)")
    return SeedBatch(agents_)


def make_evaluator(cfg: RunConfig, setup: EnvSetup, buffer: Any, device: torch.device) -> Evaluator:
    """An Evaluator over one BatchedEvalEnv of every task x multiplier x rollout."""

    def make_eval_env(seed: int) -> Any:
        return envs.BatchedEvalEnv(
            setup.domain,
            setup.tasks,
            cfg.env.eval_multipliers,
            cfg.train.eval_rollouts,
            setup.obs_transform,
            seed,
        )

    return Evaluator(
        make_eval_env,
        buffer,
        setup.tasks,
        history_length=cfg.history_length,
        action_dim=buffer.action_dim,
        z_inference_steps=cfg.train.z_inference_steps,
        rollout_memory=cfg.train.rollout_memory,
        episode_length=cfg.train.eval_episode_length,
        pad_with_zeros=cfg.env.pad_with_zeros,
        seed=cfg.seed,
        device=device,
        backward_history_length=cfg.backward_history_length,
    )


def provenance(cfg: RunConfig, setup: EnvSetup, buffer: Any) -> dict[str, Any]:
    """Where the training data came from: files, episodes used, and the dataset manifest(s)."""
    manifest = getattr(buffer, "manifest", None)
    return {
        "paths": [str(p) for p in dataset_paths(cfg, setup.domain)],
        "dataset": cfg.env.dataset,
        "episodes_requested": cfg.env.episodes,
        "episode_selection": cfg.env.episode_selection,
        "train_multipliers": list(cfg.env.train_multipliers),
        "manifest": _jsonable(manifest),
    }


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of a manifest to JSON types (numpy scalars and arrays, paths).

    Lists longer than 20 items (per-episode file names, checksums) are summarised by their count,
    first and last items, so results.json stays small for 10,000-episode datasets.
    """
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, str | int | float | bool):
        value = value.tolist()
    if isinstance(value, list | tuple):
        if len(value) > 20:
            return {"count": len(value), "first": _jsonable(value[0]), "last": _jsonable(value[-1])}
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
