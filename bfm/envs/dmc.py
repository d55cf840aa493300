"""dm_control environments of the three domains with the project's custom tasks.

Standard tasks (walker stand/walk/run, cheetah run, quadruped walk/run) are dm_control's own
task classes. Custom tasks subclass them and override only ``get_reward`` with the reward
functions of ``envs.rewards``. Every quadruped task runs in the flat-floor stand model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from dm_control.rl import control
from dm_control.suite import cheetah, quadruped, walker
from dm_control.suite.wrappers import action_scale

from bfm.envs.physics import make_physics
from bfm.envs.rewards import task_reward
from bfm.envs.specs import check_domain, check_multiplier, check_task


class _CustomRewardMixin:
    """Replaces a dm_control task's reward by ``envs.rewards.task_reward(domain, task)``."""

    domain: str = ""
    task_name: str = ""

    def get_reward(self, physics) -> float:
        return task_reward(self.domain, self.task_name, physics)


class WalkerCustomTask(_CustomRewardMixin, walker.PlanarWalker):
    """Walker with a custom reward (flip); initial states as dm_control's PlanarWalker."""

    domain = "walker"


class CheetahCustomTask(_CustomRewardMixin, cheetah.Cheetah):
    """Cheetah with a custom reward (run_backward, walk, walk_backward)."""

    domain = "cheetah"


class QuadrupedCustomTask(_CustomRewardMixin, quadruped.Move):
    """Quadruped with a custom reward (stand, jump, roll, roll_fast, escape); Move's initial states."""

    domain = "quadruped"


def make_task(domain: str, task: str, random: int | np.random.RandomState | None) -> control.Task:
    """The dm_control Task object of ``(domain, task)`` seeded with ``random``."""
    check_task(domain, task)
    if domain == "walker" and task in ("stand", "walk", "run"):
        return walker.PlanarWalker(move_speed={"stand": 0.0, "walk": 1.0, "run": 8.0}[task], random=random)
    if domain == "cheetah" and task == "run":
        return cheetah.Cheetah(random=random)
    if domain == "quadruped" and task in ("walk", "run"):
        return quadruped.Move(desired_speed={"walk": 0.5, "run": 5.0}[task], random=random)
    if domain == "walker":
        custom = WalkerCustomTask(move_speed=0.0, random=random)
    elif domain == "cheetah":
        custom = CheetahCustomTask(random=random)
    else:
        custom = QuadrupedCustomTask(desired_speed=0.0, random=random)
    custom.task_name = task
    return custom


def make_env(
    domain: str, task: str, seed: int | None, multiplier: float = 1.0, physics=None
) -> action_scale.Wrapper:
    """A dm_control environment of 1000 control steps with actions in [-1, 1].

    Actions are mapped linearly from [-1, 1] onto each actuator's control range (dm_control's
    action-scale wrapper, as ExORL collected its data); for walker and cheetah that range is
    already [-1, 1]. Observations are dm_control's OrderedDict (see ``flat_obs``).

    Args:
        domain: walker, cheetah or quadruped.
        task: a task of ``DOMAINS[domain].reward_tasks``.
        seed: seed of the task's RandomState (initial states), or None for a random one.
        multiplier: changed-dynamics factor m > 0 scaling every body mass and dof damping.
        physics: optional prebuilt physics from ``make_physics(domain, multiplier)`` to use
            (saves recompiling the model; it must not be shared between live environments).
    """
    info = check_domain(domain)
    check_task(domain, task)
    m = check_multiplier(multiplier)
    physics = make_physics(domain, m) if physics is None else physics
    env = control.Environment(
        physics,
        make_task(domain, task, seed),
        time_limit=info.episode_length * info.control_timestep,
        control_timestep=info.control_timestep,
    )
    return action_scale.Wrapper(env, minimum=-1.0, maximum=1.0)


def flat_obs(timestep_or_observation) -> np.ndarray:
    """Flatten a dm_control TimeStep's (or an observation dict's) observation, in dict order.

    Returns:
        float32 [obs_dim].
    """
    obs = getattr(timestep_or_observation, "observation", timestep_or_observation)
    if not isinstance(obs, Mapping):
        return np.asarray(obs, dtype=np.float32).ravel()
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in obs.values()])
