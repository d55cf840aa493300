"""Checkpoints: the agent (config JSON, safetensors weights, optimizer and generator states) and
the trainer state around it.

An agent directory holds

- ``agent.json``: algorithm name, dimensions, generator seed and the resolved agent config;
- ``weights.safetensors``: every network and target (``<module>.<parameter>`` keys);
- ``optimizers.pt``: optimizer states and the agent generator's state (``torch.save``).

``load_agent(dir, device)`` rebuilds the agent with ``agents.make_agent`` and restores all three,
so a loaded agent acts identically and resumes training where it stopped; ``restore_agent(agent,
dir)`` loads into an existing agent.

A training checkpoint is a directory ``<run_dir>/checkpoints/step_<step>/`` holding the agent
directory and ``trainer.pt`` (step, device type, RNG states of torch / numpy / python and of the
buffer's generators). It is written to a temporary directory first and renamed into place;
``checkpoints/latest`` names the newest complete one and is replaced atomically, so a run killed at
any moment leaves a loadable checkpoint behind.

Resuming (``resume_point``) takes the newest intact checkpoint: every file present and readable.
A damaged newer one is reported by name and set aside (``damaged_step_<step>``), never used and
never counted as a reason to start over. Nothing here loads a pickle: ``torch.load`` always runs
with ``weights_only=True``, and RNG states are stored as tensors and plain Python values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bfm.agents import make_agent
from bfm.files import disk_error
from bfm.training.config import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, OPTIMIZERS_FILE = "agent.json", "weights.safetensors", "optimizers.pt"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


def save_agent(directory: str | Path, agent: Any, state: dict[str, Any] | None = None) -> Path:
    """Writes ``agent`` (an FB or HILP agent) into ``directory`` (created if needed).

    Args:
        directory: where to write.
        agent: the agent (its name, sizes, seed and config).
        state: the state to write, in ``agent.state_dict()``'s format (default: the agent's own;
            a several-seeds run passes its seed's, ``SeedBatch.state_dict(k)``).

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": agent.name,
        "obs_dim": agent.obs_dim,
        "goal_dim": agent.goal_dim,
        "action_dim": agent.action_dim,
        "seed": agent.seed,
        "config": dataclasses.asdict(agent.config),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    state = agent.state_dict() if state is None else state
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


def _read_meta(directory: Path) -> dict[str, Any]:
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory / required} not found: not an agent checkpoint directory")
    return json.loads((directory / CONFIG_FILE).read_text())


def load_agent(directory: str | Path, device: torch.device | str = "cpu") -> Any:
    """Rebuilds the agent saved in ``directory`` on ``device``.

    Optimizer states are restored when ``optimizers.pt`` exists (a weights-only checkpoint still
    loads for evaluation).

    Raises:
        FileNotFoundError: when ``agent.json`` or ``weights.safetensors`` is missing.
    """
    meta = _read_meta(Path(directory))
    sizes = meta["obs_dim"], meta["goal_dim"], meta["action_dim"]
    agent = make_agent(meta["name"], *sizes, meta["config"], device, seed=meta["seed"])
    return restore_agent(agent, directory)


def restore_agent(
    agent: Any,
    directory: str | Path,
    restore_generator: bool = True,
    load: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Restores the checkpoint in ``directory`` into ``agent`` (same algorithm and sizes), on the
    agent's own device, and returns it.

    Args:
        agent: the agent to load into.
        directory: an agent directory written by ``save_agent``.
        restore_generator: also restore the agent's random generator (False when the checkpoint
            comes from another device type, whose generator states do not fit).
        load: what takes the state (default ``agent.load_state_dict``; a several-seeds run passes
            its seed's ``SeedBatch.load_state_dict``).
    """
    directory = Path(directory)
    _read_meta(directory)
    device = agent.device
    flat = load_file(str(directory / WEIGHTS_FILE), device=str(torch.device(device)))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        module, name = key.split(".", 1)
        modules.setdefault(module, {})[name] = tensor
    state: dict[str, Any] = {"modules": modules, "optimizers": {}}
    if (directory / OPTIMIZERS_FILE).is_file():
        state.update(
            torch.load(directory / OPTIMIZERS_FILE, map_location=torch.device(device), weights_only=True)
        )
    if not restore_generator:
        state.pop("generator", None)
    (agent.load_state_dict if load is None else load)(state)
    return agent


def global_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy's legacy global generator and ``random``."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _mt19937_state(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`global_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_mt19937_tuple(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _mt19937_state(state: tuple[Any, ...]) -> dict[str, Any]:
    """numpy's legacy ``get_state()`` tuple with the key as a tensor (loadable without pickle)."""
    name, key, pos, has_gauss, cached = state
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _mt19937_tuple(state: dict[str, Any]) -> tuple[Any, ...]:
    """Back to numpy's ``get_state()`` tuple."""
    key = state["key"].numpy().astype(np.uint32)
    return (state["name"], key, state["pos"], state["has_gauss"], state["cached_gaussian"])


TRAINER_FILE = "trainer.pt"
DAMAGED_PREFIX = "damaged_"


class CheckpointError(ConfigError):
    """No intact checkpoint to resume from although some exist, or one that does not fit the run;
    the message names the files and what to do (the CLI exits with code 2)."""


@dataclasses.dataclass
class ResumePoint:
    """What a run directory offers to resume from.

    Attributes:
        path: the newest intact checkpoint, or None.
        damaged: (checkpoint directory, what is wrong) of every newer one that cannot be used.
        any_checkpoint: some checkpoint directory exists (intact or not).
    """

    path: Path | None
    damaged: list[tuple[Path, str]]
    any_checkpoint: bool


def checkpoint_problem(path: Path) -> str | None:
    """What keeps the training checkpoint ``path`` from being resumed, or None when it is intact.

    Checks that every file exists and that each can be read (JSON parses, the safetensors header
    matches the file, the torch files load without pickle); cheap next to a training step.
    """
    agent = Path(path) / "agent"
    for file in (
        agent / CONFIG_FILE,
        agent / WEIGHTS_FILE,
        agent / OPTIMIZERS_FILE,
        Path(path) / TRAINER_FILE,
    ):
        if not file.is_file():
            return f"{file.relative_to(path)} is missing"
    try:
        json.loads((agent / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        return f"agent/{CONFIG_FILE} is not valid JSON ({error})"
    try:
        with safe_open(str(agent / WEIGHTS_FILE), framework="pt") as weights:
            list(weights.keys())
    except (SafetensorError, OSError, ValueError) as error:
        return f"agent/{WEIGHTS_FILE} is unreadable ({str(error).splitlines()[0]})"
    for name, file in (
        ("agent/" + OPTIMIZERS_FILE, agent / OPTIMIZERS_FILE),
        (TRAINER_FILE, Path(path) / TRAINER_FILE),
    ):
        try:
            # the structure is read, the tensor data only mapped
            torch.load(file, weights_only=True, mmap=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as error:
            return f"{name} is unreadable ({str(error).splitlines()[0][:120]})"
    return None


def resume_point(run_dir: Path) -> ResumePoint:
    """The newest intact checkpoint of a run and the damaged ones newer than it (nothing written).

    The ``step_*`` directories decide; ``checkpoints/latest`` only adds a report when it names a
    directory that is gone (it lags a checkpoint when a kill fell between the rename and its
    update).
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    steps = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    pointer = root / "latest"
    damaged: list[tuple[Path, str]] = []
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if not named.is_dir():
            damaged.append((named, "it does not exist (checkpoints/latest names it)"))
    # A step_* directory in place is complete (renamed into place whole), the pointer may lag it.
    for path in reversed(steps):
        problem = checkpoint_problem(path)
        if problem is None:
            return ResumePoint(path, damaged, True)
        damaged.append((path, problem))
    return ResumePoint(None, damaged, bool(steps) or bool(damaged))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint directory of a run, or None (see ``resume_point``)."""
    return resume_point(run_dir).path


def set_aside_damaged(point: ResumePoint) -> None:
    """Renames each damaged checkpoint directory to ``damaged_<name>`` (kept for inspection, out of
    the way of new checkpoints) and logs which checkpoint the run resumes from instead."""
    for path, problem in point.damaged:
        used = point.path.name if point.path else "none"
        if path.is_dir():
            target = path.with_name(DAMAGED_PREFIX + path.name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
            log.warning(
                "checkpoint %s is damaged (%s): moved to %s; resuming from %s",
                path,
                problem,
                target.name,
                used,
            )
        else:
            log.warning("checkpoint %s: %s; resuming from %s", path, problem, used)


def save_checkpoint(
    run_dir: Path,
    step: int,
    agent: Any,
    buffer: Any,
    extra: dict[str, Any] | None = None,
    agent_state: dict[str, Any] | None = None,
) -> Path:
    """Writes a complete checkpoint atomically and prunes old ones.

    Args:
        run_dir: run directory.
        step: gradient steps done.
        agent: the agent (``save_agent`` writes weights, optimizers and config).
        buffer: the sequence buffer (its ``state_dict()``, the states of its generators, is saved).
        extra: more trainer state to restore on resume (tensors and plain Python values).
        agent_state: the agent's state when the agent does not hold it (``save_agent``'s ``state``).

    Returns:
        The checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:09d}"
    tmp = root / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    pointer_tmp = root / ".latest.tmp"
    final = root / name
    try:
        tmp.mkdir()
        try:
            save_agent(tmp / "agent", agent, agent_state)
        except (RuntimeError, SafetensorError) as error:  # safetensors' "StorageFull" on a full disk
            raise disk_error(error, tmp / "agent") from error
        state = {
            "step": step,
            "device_type": torch.device(agent.device).type,
            "global_rng": global_rng_state(),
            "buffer_rng": buffer.state_dict(),
            "extra": extra or {},
        }
        try:
            torch.save(state, tmp / TRAINER_FILE)
        except RuntimeError as error:  # torch's writer reports a full disk as "file write failed"
            raise disk_error(error, tmp / TRAINER_FILE) from error
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, root / "latest")
    except BaseException:  # a full disk, Ctrl-C: no partial checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        pointer_tmp.unlink(missing_ok=True)
        raise
    _prune(root, keep=name)
    log.info("checkpoint written: %s", final)
    return final


def _prune(root: Path, keep: str) -> None:
    """Keeps the newest ``KEEP_CHECKPOINTS`` checkpoints (always the one just written; set-aside
    damaged ones are not touched)."""
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for path in steps[:-KEEP_CHECKPOINTS]:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def _reseed(generator: torch.Generator, step: int) -> None:
    """Deterministically reseeds ``generator`` from its initial seed and the step."""
    seed = np.random.SeedSequence([generator.initial_seed(), step]).generate_state(1, np.uint64)[0]
    generator.manual_seed(int(seed >> 1))


def load_checkpoint(
    path: Path, agent: Any, buffer: Any, load: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Restores the agent (with its generator), the buffer's generators and the global RNGs
    (``load``: what takes the agent's state, as in ``restore_agent``).

    A checkpoint written on another device type (a GPU run resumed on a CPU, or the reverse) holds
    torch generator states that do not fit this device's generators: the weights, optimizers and
    numpy / python RNGs are restored, the torch generators of the agent and the buffer are
    reseeded from (their seed, step), and a warning says that the batch sequence now differs from
    an uninterrupted run.

    Returns:
        The trainer state (``step``, ``extra``).
    """
    state = torch.load(Path(path) / TRAINER_FILE, weights_only=True)
    here = torch.device(agent.device).type
    same_device = state["device_type"] == here
    try:
        restore_agent(agent, Path(path) / "agent", restore_generator=same_device, load=load)
    except (RuntimeError, KeyError, ValueError) as error:  # another algorithm's or size's weights
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's agent ({str(error).splitlines()[0][:160]}); "
            "use another --run_dir or delete the checkpoints to start over"
        ) from None
    buffer_state = state["buffer_rng"]
    if not same_device:
        log.warning(
            "checkpoint %s was written on %s, resuming on %s: torch generators reseeded, so batches "
            "differ from an uninterrupted run", path, state["device_type"], here,
        )  # fmt: skip
        for generator in (agent.generator, buffer.generator, buffer.labelled_generator):
            _reseed(generator, state["step"])
        buffer_state = {k: v for k, v in buffer_state.items() if k not in ("generator", "labelled_generator")}
    buffer.load_state_dict(buffer_state)  # keeps the generators missing from buffer_state
    global_rng = dict(state["global_rng"])
    if not same_device:
        global_rng.pop("cuda", None)
    set_global_rng_state(global_rng)
    log.info("resumed from %s (step %d)", path, state["step"])
    return state
