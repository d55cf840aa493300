"""Agent checkpoints: config as JSON, weights as safetensors, optimizer and generator states.

A checkpoint directory holds

- ``agent.json``: algorithm name, dimensions and the resolved agent config;
- ``weights.safetensors``: every network and target (``<module>.<parameter>`` keys);
- ``optimizers.pt``: optimizer states and the agent generator's state (``torch.save``).

``load_agent(dir, device)`` rebuilds the agent with ``agents.make_agent`` and restores all three,
so a loaded agent acts identically and resumes training where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from agents import make_agent

CONFIG_FILE, WEIGHTS_FILE, OPTIMIZERS_FILE = "agent.json", "weights.safetensors", "optimizers.pt"


def save_agent(directory: str | Path, agent: Any) -> Path:
    """Writes ``agent`` (an FB or HILP agent) into ``directory`` (created if needed).

    ``save_agent(agent, directory)`` (arguments swapped) is accepted too.

    Returns:
        The directory.
    """
    if isinstance(agent, (str, Path)):
        directory, agent = agent, directory
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": agent.name,
        "obs_dim": agent.obs_dim,
        "goal_dim": agent.goal_dim,
        "action_dim": agent.action_dim,
        "config": dataclasses.asdict(agent.config),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    state = agent.state_dict()
    weights = {
        f"{module}.{key}": tensor.detach().cpu().contiguous().clone()
        for module, module_state in state["modules"].items()
        for key, tensor in module_state.items()
    }
    save_file(weights, str(directory / WEIGHTS_FILE))
    torch.save(
        {"optimizers": state["optimizers"], "generator": state["generator"]}, directory / OPTIMIZERS_FILE
    )
    return directory


def load_agent(directory: str | Path, device: torch.device | str = "cpu") -> Any:
    """Rebuilds the agent saved in ``directory`` on ``device``.

    ``load_agent(agent, directory)`` instead restores the checkpoint into an existing agent (of
    the same algorithm and sizes) on its own device, and returns it.

    Optimizer states are restored when ``optimizers.pt`` exists (a weights-only checkpoint still
    loads for evaluation).

    Raises:
        FileNotFoundError: when ``agent.json`` or ``weights.safetensors`` is missing.
    """
    into = None
    if not isinstance(directory, (str, Path)):
        into, directory = directory, device
        device = into.device
    directory = Path(directory)
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory / required} not found: not an agent checkpoint directory")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    agent = into or make_agent(
        meta["name"], meta["obs_dim"], meta["goal_dim"], meta["action_dim"], meta["config"], device
    )
    flat = load_file(str(directory / WEIGHTS_FILE), device=str(torch.device(device)))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        module, name = key.split(".", 1)
        modules.setdefault(module, {})[name] = tensor
    state: dict[str, Any] = {"modules": modules, "optimizers": {}}
    if (directory / OPTIMIZERS_FILE).is_file():
        extra = torch.load(directory / OPTIMIZERS_FILE, map_location=torch.device(device), weights_only=True)
        state.update(extra)
    agent.load_state_dict(state)
    return agent
