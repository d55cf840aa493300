"""dm_control domains and tasks, reward relabelling, POMDP transforms, batched evaluation env.

Needs numpy and dm_control only (no torch). See docs/CONTRACTS.md for the API.

Nothing here renders, so MuJoCo's OpenGL backend defaults to ``disable`` (no display, EGL or
OSMesa library needed); an ``MUJOCO_GL`` already set in the environment is kept.
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")

from bfm.envs.batched import BatchedEvalEnv, episode_seed
from bfm.envs.dmc import flat_obs, make_env, make_task
from bfm.envs.physics import make_physics, scale_dynamics
from bfm.envs.pomdp import (
    OCCLUDED_INDICES,
    VARIANTS,
    DomainSpec,
    ObsTransform,
    make_stream_transforms,
    make_transform,
    parse_domain,
    valid_domain_names,
)
from bfm.envs.rewards import FEATURES, relabel, rewards_from_features, state_features, task_reward
from bfm.envs.specs import DOMAINS, STANDARD_TASKS, DomainInfo

__all__ = [
    "BatchedEvalEnv",
    "episode_seed",
    "DOMAINS",
    "FEATURES",
    "OCCLUDED_INDICES",
    "STANDARD_TASKS",
    "VARIANTS",
    "DomainInfo",
    "DomainSpec",
    "ObsTransform",
    "flat_obs",
    "make_env",
    "make_physics",
    "make_stream_transforms",
    "make_task",
    "make_transform",
    "parse_domain",
    "relabel",
    "rewards_from_features",
    "scale_dynamics",
    "state_features",
    "task_reward",
    "valid_domain_names",
]
