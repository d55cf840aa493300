"""Domain and task tables, and the argument checks shared by the envs package."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainInfo:
    """Static facts about one dm_control domain as the project uses it.

    Attributes:
        obs_dim: length of the flat observation (dm_control dict order).
        action_dim: length of the action vector, every entry in [-1, 1].
        physics_dim: length of the stored state vector [qpos, qvel, act].
        tasks: the evaluation tasks of the paper, in a fixed order.
        collection_task: task whose reward ExORL stored in the raw data (meaningless for us).
        reward_tasks: every task with a reward function (a superset of ``tasks``).
        episode_length: control steps per episode.
        control_timestep: seconds per control step.
    """

    obs_dim: int
    action_dim: int
    physics_dim: int
    tasks: tuple[str, ...]
    collection_task: str
    reward_tasks: tuple[str, ...]
    episode_length: int = 1000
    control_timestep: float = 0.025


DOMAINS: dict[str, DomainInfo] = {
    "walker": DomainInfo(
        obs_dim=24,
        action_dim=6,
        physics_dim=18,
        tasks=("stand", "walk", "run", "flip"),
        collection_task="stand",
        reward_tasks=("stand", "walk", "run", "flip"),
        control_timestep=0.025,
    ),
    "cheetah": DomainInfo(
        obs_dim=17,
        action_dim=6,
        physics_dim=18,
        tasks=("run", "run_backward", "walk", "walk_backward"),
        collection_task="run",
        reward_tasks=("run", "run_backward", "walk", "walk_backward"),
        control_timestep=0.01,
    ),
    "quadruped": DomainInfo(
        obs_dim=78,
        action_dim=12,
        physics_dim=57,
        tasks=("stand", "roll", "roll_fast", "jump", "escape"),
        collection_task="walk",
        reward_tasks=("stand", "walk", "run", "jump", "roll", "roll_fast", "escape"),
        control_timestep=0.02,
    ),
}

# Tasks whose reward (and environment) is dm_control's own, unchanged.
STANDARD_TASKS: dict[str, tuple[str, ...]] = {
    "walker": ("stand", "walk", "run"),
    "cheetah": ("run",),
    "quadruped": ("walk", "run"),
}


def check_domain(domain: str) -> DomainInfo:
    """Return the DomainInfo of ``domain`` or raise ValueError listing the valid names."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return DOMAINS[domain]


def check_task(domain: str, task: str) -> None:
    """Raise ValueError unless ``task`` has a reward function in ``domain``."""
    valid = check_domain(domain).reward_tasks
    if task not in valid:
        raise ValueError(f"unknown task {task!r} for domain {domain!r}; valid tasks: {', '.join(valid)}")


def check_multiplier(multiplier: float) -> float:
    """Return ``multiplier`` as float or raise ValueError unless it is a finite number > 0."""
    m = float(multiplier)
    if not m > 0 or m == float("inf"):
        raise ValueError(f"dynamics multiplier must be a finite number > 0, got {multiplier!r}")
    return m
