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

The agents' own parameters and buffers are views of the stacked tensors, so evaluating or
saving agent k needs no copy; its optimizer state is written into the agent's own optimizers by
``export_optimizer_state`` (before a checkpoint) and read back by ``import_optimizer_state``
(after one is loaded).

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

    def _containers(self) -> list[nn.ModuleDict]:
        """Each agent's modules, named as in ``_Stages`` (``parts.<module>.<parameter>``)."""
        return [nn.ModuleDict({"parts": nn.ModuleDict(agent.modules())}) for agent in self.agents]

    def _stack(self, named: Any) -> dict[str, torch.Tensor]:
        """One [K, ...] tensor per parameter (or buffer) name; each agent's tensor becomes a view of
        its slice, so the agents always hold their seed's current weights."""
        per_agent = [dict(named(container)) for container in self._containers()]
        stacked = {}
        for name, tensor in per_agent[0].items():
            value = torch.stack([tensors[name].detach() for tensors in per_agent])  # [K, ...]
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                value.requires_grad_(True)
            stacked[name] = value
            for k, tensors in enumerate(per_agent):
                tensors[name].data = value.data[k]
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

    def export_optimizer_state(self) -> None:
        """Writes seed k's slice of every stacked optimizer state into agent k's own optimizers
        (before the agents are saved)."""
        for key, stacked in self.optimizers.items():
            params = optimizer_params(stacked)
            for k, agent in enumerate(self.agents):
                own = agent.optimizers()[key]
                for p_stacked, p_own in zip(params, optimizer_params(own), strict=True):
                    state = stacked.state.get(p_stacked)
                    if state:
                        own.state[p_own] = {n: _slice(v, k, p_stacked) for n, v in state.items()}

    def import_optimizer_state(self) -> None:
        """Stacks the agents' optimizer states into the stacked optimizers (after the agents were
        loaded from checkpoints; their weights arrive through the views)."""
        for key, stacked in self.optimizers.items():
            owns = [agent.optimizers()[key] for agent in self.agents]
            for i, p_stacked in enumerate(optimizer_params(stacked)):
                states = [own.state.get(optimizer_params(own)[i]) for own in owns]
                if not all(states):
                    stacked.state.pop(p_stacked, None)
                    continue
                stacked.state[p_stacked] = {
                    n: torch.stack([s[n] for s in states]) if _per_element(v, p_stacked) else v.clone()
                    for n, v in states[0].items()
                }

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


def _per_element(value: Any, param: torch.Tensor) -> bool:
    """An optimizer state entry with one value per parameter element (Adam's moments), as
    opposed to shared scalars (the step count)."""
    return isinstance(value, torch.Tensor) and value.shape == param.shape[1:]


def _slice(value: Any, k: int, stacked_param: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[k].clone() if value.shape == stacked_param.shape else value.clone()
    return value
