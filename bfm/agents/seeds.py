"""Several seeds of one configuration updated as one batched computation (docs/training.md, "Several seeds
in one process").

``SeedBatch`` takes K agents built as K single-seed runs would build them (each seeded before its
construction, each with its own generator) and trains them together: every parameter, buffer and
Adam moment gets a leading seed dimension, each stage of the update (``AgentBase.stages``) runs
once under ``torch.func.vmap`` over the seeds, and one optimiser step and one Polyak update serve
all K. The per-element arithmetic of Adam, the gradient clamp and Polyak is the same for a stacked
tensor as for each of its K slices, the gradient of the summed K losses with respect to seed k's
weights is that of seed k's loss, and every random number still comes from seed k's own
generator (``AgentBase.draws``), so seed k follows its single-seed run up to the rounding of
batched matmuls. Small models, whose update is dominated by per-operation overhead, get K updates
for little more than the price of one.

``SeedBatch`` is the one owner of the seeds' training state: the stacked weights, buffers and
optimizer states live only here, and the agents keep their generators (the draws of every update
come from them). ``state_dict(k)`` / ``load_state_dict(k, state)`` read and write seed k's state in
the single-seed agent's format, so a seed's checkpoint is the one its single-seed run would write
and either kind of run resumes from it; ``agent(k)`` copies seed k's current weights into agent k
(for an evaluation) and returns it.

What cannot be batched (``unbatchable_reason``): dropout in training mode (the transformer's, 0.05
by default), whose masks a single-seed run draws from torch's global generator; the trainer then
updates the seeds one after another instead. ``compile`` is not applied to the batched update
(a compiled stage would free the graph that pi(h_{t+1}) shares between two stages); the memory
models run written-out versions of the GRU and of attention, whose fused kernels vmap cannot batch
(``MemoryModel.fused_kernels`` off).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from bfm.agents.base import AgentBase, Metrics, optimizer_params, step_stages
from bfm.agents.optim import polyak_tensors
from bfm.data.batch import Batch


def unbatchable_reason(agent: AgentBase) -> str | None:
    """Why the seeds of ``agent``'s configuration cannot share one batched update, or None."""
    for name, module in agent.model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return (
                f"{name} is a dropout of p={module.p:g}, whose masks come from torch's global generator; "
                "set its memory model's dropout setting to 0 to batch the seeds"
            )
    return None


class _Stages(nn.Module):
    """Holds the template agent's modules so that ``functional_call`` can swap in one seed's slice
    of the stacked tensors, and runs one of its stages."""

    def __init__(self, template: AgentBase) -> None:
        super().__init__()
        self.template = template
        self.parts = nn.ModuleDict(template.modules())

    def forward(self, index: int, batch: dict[str, torch.Tensor], draws: Any, handoff: Any) -> Any:
        return self.template.stages()[index].loss(Batch(**batch), draws, handoff)


class SeedBatch:
    """K agents of one algorithm and configuration, updated together.

    Args:
        agents: the agents, in seed order (same class, config, sizes and device).

    Raises:
        ValueError: the agents differ in class or configuration, or cannot be batched
            (``unbatchable_reason``).
    """

    def __init__(self, agents: list[AgentBase]) -> None:
        first = agents[0]
        for agent in agents[1:]:
            if type(agent) is not type(first) or agent.config != first.config:
                raise ValueError("SeedBatch: every agent must have the same algorithm and configuration")
        reason = unbatchable_reason(first)
        if reason is not None:
            raise ValueError(f"SeedBatch: {reason}")
        self.agents = agents
        self.size = len(agents)
        # The template runs the stages; its own weights are never used (functional_call swaps in
        # the stacked ones). Built under fork_rng: its initialisation must not move the global
        # generator, whose state belongs to the seeds' runs.
        cuda = [first.device.index or 0] if first.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            config = dataclasses.replace(first.config, compile=False)
            self.template = type(first)(
                first.obs_dim, first.goal_dim, first.action_dim, config, device=first.device, seed=first.seed
            )
        for part in self.template.modules().values():  # the targets are copies: their own models
            for module in part.modules():
                if hasattr(type(module), "fused_kernels"):  # memory models and their parts
                    module.fused_kernels = False  # vmap has no batching rule for fused GRU / attention
        self._stages = _Stages(self.template)
        self.params = self._stack(lambda container: container.named_parameters())
        self.buffers = self._stack(lambda container: container.named_buffers())
        self.optimizers = self._stacked_optimizers()
        # The first stage gets no hand-off (None, which vmap takes only with in_dim None).
        self._stage_fns = [
            vmap(self._call_stage, in_dims=(None, 0, 0, 0, 0, handoff_dim), randomness="error")
            for handoff_dim in (None, 0)
        ]

    # ------------------------------------------------------------------------------------------
    # stacking

    def _stack(self, named: Any) -> dict[str, torch.Tensor]:
        """One [K, ...] tensor per parameter (or buffer) name (``parts.<module>.<name>``), a copy of
        the agents' tensors, in seed order."""
        per_agent = [dict(named(_parts(agent))) for agent in self.agents]
        stacked = {}
        for name, tensor in per_agent[0].items():
            value = torch.stack([tensors[name].detach() for tensors in per_agent])  # [K, ...]
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                value.requires_grad_(True)
            stacked[name] = value
        return stacked

    def _stacked_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per template optimizer, over the stacked parameters, same groups and settings."""
        names = {id(p): f"parts.{name}" for name, p in self._stages.parts.named_parameters()}
        stacked = {}
        for key, optimizer in self.template.optimizers().items():
            groups = [
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": [self.params[names[id(p)]] for p in group["params"]],
                }
                for group in optimizer.param_groups
            ]
            stacked[key] = type(optimizer)(groups, **optimizer.defaults)
        return stacked

    # ------------------------------------------------------------------------------------------
    # seed k's state, in the single-seed agent's format

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**self.params, **self.buffers}

    def state_dict(self, k: int) -> dict[str, Any]:
        """Seed k's state as its single-seed agent's ``state_dict`` gives it (copies)."""
        modules: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.template.modules()}
        for name, value in self._tensors().items():
            module, key = name.removeprefix("parts.").split(".", 1)
            modules[module][key] = value.detach()[k].clone()
        optimizers = {}
        for key, stacked in self.optimizers.items():
            state = stacked.state_dict()  # the stacked tensors themselves, not copies
            params = optimizer_params(stacked)
            state["state"] = {
                index: {entry: _slice(value, k, params[index]) for entry, value in entries.items()}
                for index, entries in state["state"].items()
            }
            optimizers[key] = state
        return {
            "modules": modules,
            "optimizers": optimizers,
            "generator": self.agents[k].generator.get_state(),
        }

    def load_state_dict(self, k: int, state: dict[str, Any]) -> None:
        """Writes a single-seed agent state (``AgentBase.state_dict``, a checkpoint's) into seed k.

        The shared entries of the optimizer states (Adam's step count) are the last loaded seed's:
        the seeds of a run are always at one step.

        Raises:
            KeyError: the state's modules name other tensors (strict, as ``AgentBase.load_state_dict``).
        """
        given = {f"parts.{module}.{key}" for module, tensors in state["modules"].items() for key in tensors}
        if given != set(self._tensors()):
            raise KeyError(f"state of other tensors: {sorted(given ^ set(self._tensors()))[:4]}")
        with torch.no_grad():
            for name, value in self._tensors().items():
                module, key = name.removeprefix("parts.").split(".", 1)
                value[k].copy_(state["modules"][module][key])
        for key, stacked in self.optimizers.items():
            if key not in state.get("optimizers", {}):
                continue
            saved = state["optimizers"][key]["state"]
            for index, param in enumerate(optimizer_params(stacked)):
                if index not in saved:
                    continue
                entries = stacked.state.setdefault(param, {})
                for entry, value in saved[index].items():
                    if _per_element(value, param):
                        if entry not in entries:
                            entries[entry] = torch.zeros_like(param, memory_format=torch.preserve_format)
                        entries[entry][k].copy_(value)
                    else:
                        entries[entry] = value.clone() if isinstance(value, torch.Tensor) else value
        if "generator" in state:
            self.agents[k].generator.set_state(state["generator"].cpu())

    def agent(self, k: int) -> AgentBase:
        """Agent k with seed k's current weights and buffers copied in (its optimizers stay empty:
        the batch owns the optimizer state)."""
        agent = self.agents[k]
        tensors = dict(_parts(agent).named_parameters()) | dict(_parts(agent).named_buffers())
        with torch.no_grad():
            for name, value in self._tensors().items():
                tensors[name].copy_(value[k])
        return agent

    # ------------------------------------------------------------------------------------------
    # the update

    def _call_stage(self, index: int, params: Any, buffers: Any, batch: Any, draws: Any, handoff: Any) -> Any:
        return functional_call(self._stages, {**params, **buffers}, (index, batch, draws, handoff))

    def update(self, batches: list[Batch], step: int = 0) -> list[Metrics]:
        """One training step of every seed, seed k on ``batches[k]`` with its own draws.

        Returns:
            Each seed's metrics (detached 0-d tensors), as its single-seed ``update`` names them.
        """
        if len(batches) != self.size:
            raise ValueError(f"SeedBatch.update: {len(batches)} batches for {self.size} seeds")
        fields = [
            {f.name: getattr(b, f.name) for f in dataclasses.fields(b) if getattr(b, f.name) is not None}
            for b in batches
        ]
        batch = {name: torch.stack([f[name] for f in fields]) for name in fields[0]}  # [K, ...]
        draws = _stack_tuples([agent.draws(batches[0].batch_size) for agent in self.agents])
        metrics = step_stages(
            self.template.stages(),
            lambda index, stage, handoff: self._stage_fns[handoff is not None](
                index, self.params, self.buffers, batch, draws, handoff
            ),  # losses [K]
            self.optimizers,
            self.template.config.grad_clamp,
        )
        self._polyak()
        return [{name: value[k] for name, value in metrics.items()} for k in range(self.size)]

    def _polyak(self) -> None:
        """The Polyak step of every target on the stacked tensors (the single-seed one)."""
        for target, online, tau in self.template.target_pairs():
            params = _target_pairs(self.params, f"parts.{target}.", f"parts.model.{online}.")
            buffers = _target_pairs(self.buffers, f"parts.{target}.", f"parts.model.{online}.")
            polyak_tensors(*params, tau, *buffers)


def _target_pairs(
    tensors: dict[str, torch.Tensor], target: str, online: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the tensors named ``target...``, the online tensors of the same names under ``online``)."""
    names = [name for name in tensors if name.startswith(target)]
    return [tensors[n] for n in names], [tensors[online + n[len(target) :]] for n in names]


def _stack_tuples(tuples: list[Any]) -> Any:
    """K NamedTuples of tensors as one of [K, ...] tensors."""
    return type(tuples[0])(*(torch.stack(values) for values in zip(*tuples, strict=True)))


def _parts(agent: AgentBase) -> nn.ModuleDict:
    """An agent's modules, named as in ``_Stages`` (``parts.<module>.<parameter>``)."""
    return nn.ModuleDict({"parts": nn.ModuleDict(agent.modules())})


def _per_element(value: Any, stacked_param: torch.Tensor) -> bool:
    """A single seed's optimizer state entry with one value per parameter element (Adam's
    moments), as opposed to shared scalars (the step count)."""
    return isinstance(value, torch.Tensor) and value.shape == stacked_param.shape[1:]


def _slice(value: Any, k: int, stacked_param: torch.Tensor) -> Any:
    """Seed k's part of a stacked optimizer state entry (a copy)."""
    if isinstance(value, torch.Tensor):
        return value[k].clone() if value.shape == stacked_param.shape else value.clone()
    return value
