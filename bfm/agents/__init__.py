"""Agents: FB and HILP behaviour foundation models, with or without memory.

``make_agent(name, obs_dim, goal_dim, action_dim, config, device)`` builds one by name:

- ``fb``, ``hilp``: no memory anywhere (``recurrent_F`` and ``recurrent_B`` forced off);
- ``fb_m``, ``hilp_m``: memory in F/psi and pi (``recurrent_F``) and in B/phi (``recurrent_B``),
  both on by default and each a config field.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import torch

from bfm.agents.config import MEMORY_TYPES, MemoryConfig, SettingError, from_dict
from bfm.agents.fb import FBAgent, FBConfig, FBModel
from bfm.agents.hilp import HILPAgent, HILPConfig, HILPModel

# The algorithms by name: (agent class, config class). A memory-free name and its ``_m`` twin
# share both; a new algorithm is a module with its agent and config, an entry here and its two
# yamls in bfm/configs/agent/ (docs/CONTRACTS.md, "A new algorithm").
AGENTS: dict[str, tuple[type, type]] = {
    "fb": (FBAgent, FBConfig),
    "fb_m": (FBAgent, FBConfig),
    "hilp": (HILPAgent, HILPConfig),
    "hilp_m": (HILPAgent, HILPConfig),
}
# Every algorithm's config class (by its memory-free name) and their union, the type of a run's
# ``agent`` config.
CONFIGS: dict[str, type] = {name: config for name, (_, config) in AGENTS.items() if not name.endswith("_m")}
AgentConfig = functools.reduce(operator.or_, CONFIGS.values())


def make_config(name: str, config: Any = None) -> AgentConfig:
    """The config dataclass of algorithm ``name`` from None (defaults), a dict or a dataclass.

    A dict nests the memory settings (``{"memory": {"name": "gru"}}``). ``name`` is set on the
    config; memory-free names force ``recurrent_F = recurrent_B = False``.

    Raises:
        ValueError: an unknown algorithm, and (``SettingError``) an unknown or out-of-range field.
    """
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
    cls = AGENTS[name][1]
    if config is None:
        config = cls()
    elif isinstance(config, dict):
        config = from_dict(cls, {**config, "name": name})
    elif not isinstance(config, cls):
        raise TypeError(
            f"{name} needs a {cls.__name__} (or a dict of its fields), got {type(config).__name__}"
        )
    config = dataclasses.replace(config, name=name)
    if config.memory_free:
        config = dataclasses.replace(config, recurrent_F=False, recurrent_B=False)
    return config


def make_agent(
    name: str,
    obs_dim: int,
    goal_dim: int,
    action_dim: int,
    config: Any = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> FBAgent | HILPAgent:
    """Builds an agent.

    Args:
        name: fb, fb_m, hilp or hilp_m.
        obs_dim: obs-stream observation width.
        goal_dim: goal-stream observation width.
        action_dim: action width.
        config: ``FBConfig`` / ``HILPConfig``, a dict of their fields, or None for the defaults.
        device: training device.
        seed: seed of the agent's own generator (z sampling, action noise, permutations).
    """
    config = make_config(name, config)
    return AGENTS[name][0](obs_dim, goal_dim, action_dim, config, device=device, seed=seed)


__all__ = [
    "AGENTS",
    "CONFIGS",
    "AgentConfig",
    "FBAgent",
    "FBConfig",
    "FBModel",
    "HILPAgent",
    "HILPConfig",
    "HILPModel",
    "MEMORY_TYPES",
    "MemoryConfig",
    "SettingError",
    "make_agent",
    "make_config",
]
