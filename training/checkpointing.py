"""Checkpoint orchestration: agent weights (``training.checkpoint.save_agent``) plus trainer state.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<step>/`` holding the agent (written by
``save_agent``: weights, optimizers, the agent's generator) and ``trainer.pt`` (step, RNG states
of torch / numpy / python and of the buffer's generators). It is written to a temporary directory first and
renamed into place; ``checkpoints/latest`` names the newest complete one and is replaced
atomically, so a run killed at any moment leaves a loadable checkpoint behind.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


def generator_states(obj: Any, prefix: str = "", depth: int = 2) -> dict[str, Any]:
    """States of every torch / numpy generator reachable from ``obj``'s attributes.

    Walks public and private attributes (and one level of nested plain objects such as
    transforms), so buffers and agents need no special API to have their randomness saved.

    Returns:
        dotted attribute path -> generator state.
    """
    states: dict[str, Any] = {}
    for name, value in vars(obj).items() if hasattr(obj, "__dict__") else []:
        path = f"{prefix}{name}"
        if isinstance(value, torch.Generator):
            states[path] = ("torch", value.get_state())
        elif isinstance(value, np.random.Generator):
            states[path] = ("numpy", value.bit_generator.state)
        elif isinstance(value, np.random.RandomState):
            states[path] = ("numpy_legacy", value.get_state())
        elif (
            depth > 0
            and not isinstance(value, torch.nn.Module | torch.Tensor | np.ndarray)
            and hasattr(value, "__dict__")
        ):
            states.update(generator_states(value, f"{path}.", depth - 1))
    return states


def set_generator_states(obj: Any, states: dict[str, Any]) -> None:
    """Restores what :func:`generator_states` captured."""
    for path, (kind, state) in states.items():
        target = obj
        for name in path.split("."):
            target = getattr(target, name)
        if kind == "torch":
            target.set_state(state)
        elif kind == "numpy":
            target.bit_generator.state = state
        else:
            target.set_state(state)


def global_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy's legacy global generator and ``random``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`global_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _buffer_state(buffer: Any) -> dict[str, Any]:
    """The buffer's generator states (its own ``state_dict`` when it has one)."""
    return buffer.state_dict() if hasattr(buffer, "state_dict") else generator_states(buffer)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / "latest"
    if not pointer.exists():
        return None
    path = Path(run_dir) / CHECKPOINT_DIR / pointer.read_text().strip()
    return path if path.is_dir() else None


def save_checkpoint(
    run_dir: Path, step: int, agent: Any, buffer: Any, extra: dict[str, Any] | None = None
) -> Path:
    """Writes a complete checkpoint atomically and prunes old ones.

    Args:
        run_dir: run directory.
        step: gradient steps done.
        agent: the agent (``save_agent`` writes weights, optimizers and config).
        buffer: the sequence buffer (its generators are saved).
        extra: more trainer state (picklable) to restore on resume.

    Returns:
        The checkpoint directory.
    """
    from training.checkpoint import save_agent

    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:09d}"
    tmp = root / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_agent(agent, tmp / "agent")
    state = {
        "step": step,
        "global_rng": global_rng_state(),
        "buffer_rng": _buffer_state(buffer),
        "extra": extra or {},
    }
    torch.save(state, tmp / "trainer.pt")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, root / "latest")
    _prune(root, keep=name)
    log.info("checkpoint written: %s", final)
    return final


def _prune(root: Path, keep: str) -> None:
    """Keeps the newest ``KEEP_CHECKPOINTS`` checkpoints (always the one just written)."""
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for path in steps[:-KEEP_CHECKPOINTS]:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path, agent: Any, buffer: Any) -> dict[str, Any]:
    """Restores the agent (with its generator), the buffer's generators and the global RNGs.

    Returns:
        The trainer state (``step``, ``extra``).
    """
    from training.checkpoint import load_agent

    load_agent(agent, Path(path) / "agent")
    state = torch.load(Path(path) / "trainer.pt", weights_only=False)
    if hasattr(buffer, "load_state_dict"):
        buffer.load_state_dict(state["buffer_rng"])
    else:
        set_generator_states(buffer, state["buffer_rng"])
    set_global_rng_state(state["global_rng"])
    log.info("resumed from %s (step %d)", path, state["step"])
    return state
