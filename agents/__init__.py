"""Agents: FB and HILP behaviour foundation models, with or without memory.

``make_agent(name, obs_dim, goal_dim, action_dim, config, device)`` builds one by name:

- ``fb``, ``hilp``: no memory anywhere (``recurrent_F`` and ``recurrent_B`` forced off);
- ``fb_m``, ``hilp_m``: memory in F/psi and pi (``recurrent_F``) and in B/phi (``recurrent_B``),
  both on by default and each a config field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from agents.config import SettingError
from agents.fb import FBAgent, FBConfig, FBModel
from agents.hilp import HILPAgent, HILPConfig, HILPModel

AGENTS: dict[str, tuple[type, type]] = {
    "fb": (FBAgent, FBConfig),
    "fb_m": (FBAgent, FBConfig),
    "hilp": (HILPAgent, HILPConfig),
    "hilp_m": (HILPAgent, HILPConfig),
}


def make_config(name: str, config: Any = None) -> FBConfig | HILPConfig:
    """The config dataclass of algorithm ``name`` from None (defaults), a dict or a dataclass.

    Memory-free names force ``recurrent_F = recurrent_B = False``. Unknown dict keys raise.
    """
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
    cls = AGENTS[name][1]
    if config is None:
        config = cls()
    elif isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; accepted: {sorted(known)}")
        config = cls(**config)
    elif not isinstance(config, cls):
        raise TypeError(
            f"{name} needs a {cls.__name__} (or a dict of its fields), got {type(config).__name__}"
        )
    if not name.endswith("_m"):
        config = dataclasses.replace(config, recurrent_F=False, recurrent_B=False)
    return config


def make_agent(
    name: str,
    obs_dim: int,
    goal_dim: int,
    action_dim: int,
    config: Any = None,
    device: torch.device | str = "cpu",
) -> FBAgent | HILPAgent:
    """Builds an agent.

    Args:
        name: fb, fb_m, hilp or hilp_m.
        obs_dim: F/pi-stream observation width.
        goal_dim: B-stream (goal) observation width.
        action_dim: action width.
        config: ``FBConfig`` / ``HILPConfig``, a dict of their fields, or None for the defaults.
        device: training device.
    """
    config = make_config(name, config)
    return AGENTS[name][0](obs_dim, goal_dim, action_dim, config, device=device, name=name)


__all__ = [
    "AGENTS",
    "FBAgent",
    "FBConfig",
    "FBModel",
    "HILPAgent",
    "HILPConfig",
    "HILPModel",
    "SettingError",
    "make_agent",
    "make_config",
]
