"""Builders that turn a RunConfig into the objects of a run: transforms, buffer, agent, evaluator.

Each builder is small and has one job, so ``main_exorl.main`` reads like a table of contents.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from training.evaluation import Evaluator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EnvSetup:
    """The environment side of a run.

    Attributes:
        domain: base domain (walker, cheetah, quadruped).
        variant: POMDP variant or None.
        dynamics_transform: transform of the F/pi stream (dataset and evaluation observations).
        rewards_transform: transform of the B stream (dataset goals, task inference).
        tasks: evaluation tasks.
    """

    domain: str
    variant: str | None
    dynamics_transform: Any
    rewards_transform: Any
    tasks: list[str]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_env(cfg: RunConfig) -> EnvSetup:
    """Parses the domain string and builds the two POMDP stream transforms.

    Raises:
        ConfigError: unknown domain or task.
    """
    import envs

    try:
        spec = envs.parse_domain(cfg.env.domain)
        dynamics, rewards = envs.make_stream_transforms(
            cfg.env.domain,
            flickering_prob=cfg.env.flickering_prob,
            noise_std=cfg.env.noise_std,
            missing_sensor_prob=cfg.env.missing_sensor_prob,
        )
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
    from data import dataset_path
    from data.exorl import create_command

    paths = [
        Path(dataset_path(cfg.env.data_dir, domain, cfg.env.dataset, m)) for m in cfg.env.train_multipliers
    ]
    for path, m in zip(paths, cfg.env.train_multipliers, strict=True):
        if not path.exists():
            raise ConfigError(
                f"missing dataset {path} (domain {domain}, dataset {cfg.env.dataset}, multiplier {m:g}); "
                f"create it with `{create_command(path)}` or pass --data_dir"
            )
    return paths


def make_buffer(cfg: RunConfig, setup: EnvSetup, device: torch.device) -> Any:
    """Loads the dataset(s) into a SequenceBuffer on ``device`` (POMDP corruption applied at load)."""
    from data import SequenceBuffer

    return SequenceBuffer(
        dataset_paths(cfg, setup.domain),
        setup.domain,
        episodes=cfg.env.episodes,
        history_length=cfg.history_length,
        backward_history_length=cfg.backward_history_length,
        dynamics_transform=setup.dynamics_transform,
        rewards_transform=setup.rewards_transform,
        seed=cfg.seed,
        device=device,
        resample_per_batch=cfg.env.resample_per_batch,
        pad_with_zeros=cfg.env.pad_with_zeros,
        tasks=setup.tasks,
        episode_selection=cfg.env.episode_selection,
    )


def agent_config(cfg: RunConfig) -> Any:
    """The agents' config dataclass (FBConfig / HILPConfig) filled from the run config.

    Memory settings map onto the agents' fields; ``agent.overrides`` are applied last.

    Raises:
        ConfigError: an override names a field the agent config does not have.
    """
    import agents

    config_cls = agents.AGENTS[cfg.agent.name][1]
    names = {f.name for f in dataclasses.fields(config_cls)}
    values = {key: value for key, value in _memory_fields(cfg).items() if key in names}
    values.update({k: v for k, v in domain_defaults(cfg).items() if k in names})
    unknown = sorted(set(cfg.agent.overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown agent setting(s) {', '.join('agent.' + k for k in unknown)}; accepted: {', '.join(sorted(names))}"
        )
    # None on a domain-dependent field means "the domain's default" (the CLI schema's default).
    values.update(
        {k: v for k, v in cfg.agent.overrides.items() if not (k in DOMAIN_DEPENDENT_FIELDS and v is None)}
    )
    try:
        return config_cls(**values)
    except agents.SettingError as error:  # "<field> must be ..., got ...": name the key the user sets
        key = RUN_KEYS.get(error.field, "agent." + error.field)
        raise ConfigError(key + str(error).removeprefix(error.field)) from error


def _memory_fields(cfg: RunConfig) -> dict[str, Any]:
    """Run-config values under the names the agents' config uses."""
    return {
        "memory_type": cfg.memory.name,
        "model_dimension": cfg.memory.resolved_model_dimension(),
        "history_length": cfg.history_length,
        "backward_history_length": cfg.backward_history_length,
        "recurrent_F": cfg.agent.recurrent_F,
        "recurrent_B": cfg.agent.recurrent_B,
        "seed": cfg.seed,
        "batch_size": cfg.train.batch_size,
    }


# The agent fields the run config fills from other groups (not set as agent.<field> on the CLI).
MEMORY_FIELD_NAMES: tuple[str, ...] = tuple(_memory_fields(RunConfig()))
# Where the user sets those fields (messages name these keys).
RUN_KEYS: dict[str, str] = {
    "memory_type": "memory.name",
    "model_dimension": "memory.model_dimension",
    "history_length": "memory.history_length",
    "backward_history_length": "memory.backward_history_length",
    "recurrent_F": "agent.recurrent_F",
    "recurrent_B": "agent.recurrent_B",
    "seed": "seed",
    "batch_size": "train.batch_size",
}


DOMAIN_DEPENDENT_FIELDS: tuple[str, ...] = ("gamma_phi", "sf_loss")


def domain_defaults(cfg: RunConfig) -> dict[str, Any]:
    """Per-domain agent settings of the reference code (an explicit ``agent.<field>`` wins).

    HILP: ``gamma_phi`` 0.96 on walker; the scalar successor-feature loss (psi . z) on quadruped.
    """
    domain = cfg.env.domain.split("_")[0]  # fields an algorithm lacks are dropped by agent_config
    return {"walker": {"gamma_phi": 0.96}, "quadruped": {"sf_loss": "scalar"}}.get(domain, {})


def make_agent(cfg: RunConfig, buffer: Any, device: torch.device) -> Any:
    """Builds the agent for the buffer's observation, goal and action dimensions."""
    import agents

    return agents.make_agent(
        cfg.agent.name, buffer.obs_dim, buffer.goal_dim, buffer.action_dim, agent_config(cfg), device
    )


def make_evaluator(cfg: RunConfig, setup: EnvSetup, buffer: Any, device: torch.device) -> Evaluator:
    """An Evaluator over one BatchedEvalEnv of every task x multiplier x rollout."""
    import envs
    from training.evaluation import Evaluator

    def make_eval_env(seed: int) -> Any:
        return envs.BatchedEvalEnv(
            setup.domain,
            setup.tasks,
            cfg.env.eval_multipliers,
            cfg.train.eval_rollouts,
            setup.dynamics_transform,
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
