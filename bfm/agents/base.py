"""What FB and HILP agents share.

- ``AgentBase``: construction from what each algorithm declares (model, targets, optimizers,
  compiled losses), the random draws of one update (``draws``, typed ``Draws``), the update itself
  (``step_stages``: the ``Stage`` optimiser steps in order, shared with ``agents.seeds``; then the
  Polyak targets), the terms both losses use (next policy, target F / psi, the actor's Q), acting
  and task inference through the model, and the state dict a checkpoint holds (networks, targets,
  optimizers, generator);
- ``InferenceMixin``: the models' acting (sliding window and carried state) and goal windows
  encoded in chunks;
- the ``inference`` decorator (no_grad + eval mode) and ``optimizer_params``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from bfm.agents.config import RepresentationConfig
from bfm.agents.networks import Actor, State, project_to_sphere, sample_action
from bfm.agents.optim import (
    configure_device,
    last_rows,
    make_adam,
    make_target,
    maybe_compile,
    optimizer_step,
    polyak_update,
)
from bfm.data.batch import Batch

Metrics = dict[str, torch.Tensor]


class ZDraws(NamedTuple):
    """The random parts of z sampling (``AgentBase._z_draws``)."""

    z: torch.Tensor  # [n, d] on the sphere
    perm: torch.Tensor  # [n] a permutation of the batch
    mix: torch.Tensor  # [n, 1] the rows that take a goal's z


class Draws(NamedTuple):
    """Every random number of one update, drawn before any network runs (``AgentBase.draws``)."""

    z: torch.Tensor  # [n, d]
    perm: torch.Tensor  # [n]
    mix: torch.Tensor  # [n, 1]
    target_noise: torch.Tensor  # [n, A] of the target action
    actor_noise: torch.Tensor  # [n, A] of the actor loss's action


class Handoff(NamedTuple):
    """What the first stage of an update hands to the later ones: z [n, d] and pi(h_{t+1}, z)
    [n, A] with its graph (the actor loss differentiates through it)."""

    z: torch.Tensor
    next_mu: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Stage:
    """One optimiser step of an update.

    Attributes:
        optimizer: key of the optimizer (``AgentBase.optimizers``) that steps on the loss; it
            steps every parameter it holds.
        loss: ``(batch, draws, handoff) -> (loss, metrics, handoff)``, free of random draws and of
            in-place changes to parameters, so that it can run under ``torch.func.vmap`` for
            several seeds at once (``agents.seeds``).
    """

    optimizer: str
    loss: Callable[[Batch, Draws, Handoff | None], tuple[torch.Tensor, Metrics, Handoff | None]]


class AgentBase:
    """An agent: its model, target networks, optimizers, generator and update; FB and HILP declare
    what differs (docs/CONTRACTS.md, "A new algorithm").

    An algorithm declares ``model_class`` (built as ``model_class(obs_dim, goal_dim, action_dim,
    config)``; it has ``forward_map`` (F or psi, a ``ForwardMap``), ``actor`` (an ``Actor``) and
    ``infer_z``), ``targets`` (each target network's attribute: the online submodule of the model
    it follows and the config field of its Polyak rate; one is ``target_forward``), ``compiled``
    (attribute: the loss method ``agent.compile`` compiles into it), ``optimizer_groups`` and
    ``stages``.

    Args:
        obs_dim, goal_dim, action_dim: widths.
        config: the algorithm's config (``FBConfig``, ``HILPConfig``).
        device: training device.
        seed: seed of the agent's own generator (z sampling, action noise, permutations).
    """

    model_class: type[nn.Module]
    targets: dict[str, tuple[str, str]] = {}
    compiled: dict[str, str] = {}

    def __init__(
        self,
        obs_dim: int,
        goal_dim: int,
        action_dim: int,
        config: RepresentationConfig,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.config, self.device, self.seed = config, torch.device(device), seed
        self.name = config.name  # the algorithm, stored for checkpoints
        self.obs_dim, self.goal_dim, self.action_dim = obs_dim, goal_dim, action_dim
        self.model = self.model_class(obs_dim, goal_dim, action_dim, config).to(self.device)
        for target, (online, _) in self.targets.items():
            setattr(self, target, make_target(self.model.get_submodule(online)))
        configure_device(config, self.device)
        self._optimizers = {
            key: make_adam(groups, lr, config, self.device)
            for key, (groups, lr) in self.optimizer_groups().items()
        }
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        for attribute, method in self.compiled.items():
            setattr(self, attribute, maybe_compile(getattr(self, method), config))

    def optimizer_groups(self) -> dict[str, tuple[list[Any], float]]:
        """Each optimizer's key: (its parameters or parameter groups, its learning rate)."""
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """What the agent owns by key: the model and each target network."""
        return {"model": self.model, **{target: getattr(self, target) for target in self.targets}}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by key (the keys of ``optimizer_groups``, which ``Stage.optimizer`` names)."""
        return dict(self._optimizers)

    def target_pairs(self) -> list[tuple[str, str, float]]:
        """(target key in ``modules``, online submodule of ``model``, Polyak tau) per target."""
        return [(target, online, getattr(self.config, tau)) for target, (online, tau) in self.targets.items()]

    @property
    def batch_spec(self) -> Any:
        """What this algorithm's training batches hold (``data.batch.BatchSpec``, from its config)."""
        return self.config.batch_spec()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)

    def _z_draws(self, n: int) -> ZDraws:
        """The random parts of z sampling, in this order: sphere ``z`` [n, d], a batch permutation
        ``perm`` [n], and the rows ``mix`` [n, 1] (a ``z_mix_ratio`` fraction) that take a goal's z."""
        z = project_to_sphere(self._randn(n, self.config.z_dim))  # [n, d]
        perm = torch.randperm(n, generator=self.generator, device=self.device)  # [n]
        mix = (
            torch.rand(n, 1, generator=self.generator, device=self.device) < self.config.z_mix_ratio
        )  # [n, 1]
        return ZDraws(z, perm, mix)

    def draws(self, n: int) -> Draws:
        """Every random number of one update of batch size n, from the agent's generator in a
        fixed order: sphere z [n, d], permutation [n], mix rows [n, 1] (``_z_draws``), then the
        target-action noise and the actor-loss noise [n, A]."""
        z, perm, mix = self._z_draws(n)
        target_noise = self._randn(n, self.action_dim)
        actor_noise = self._randn(n, self.action_dim)
        return Draws(z, perm, mix, target_noise, actor_noise)

    def stages(self) -> list[Stage]:
        """The optimiser steps of one update, in order (subclasses)."""
        raise NotImplementedError

    def update(self, batch: Batch, step: int = 0) -> Metrics:
        """One training step: the draws, each stage's loss and optimiser step, then the Polyak targets.

        Args:
            batch: a ``Batch`` on the agent's device (with goal fields when ``batch_spec`` asks).
            step: the global step (unused; kept for the trainer's interface).

        Returns:
            Metrics as detached 0-d tensors (no host synchronisation), named by stage.
        """
        draws = self.draws(batch.batch_size)
        metrics = step_stages(
            self.stages(),
            lambda index, stage, handoff: stage.loss(batch, draws, handoff),
            self.optimizers(),
            self.config.grad_clamp,
        )
        modules = self.modules()
        for target, online, tau in self.target_pairs():
            polyak_update(modules[target], self.model.get_submodule(online), tau)
        return metrics

    def next_policy(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """mu = pi(h_{t+1}, z) [n, A] with gradient, shared by the target action and the actor loss."""
        rec = self.model.actor.recurrent
        obs = last_rows(batch.obs_window[:, 1:], rec)  # [n, L_F or 1, o]
        prev = last_rows(batch.prev_action_window[:, 1:], rec)  # [n, L_F or 1, a]
        return self.model.actor(obs, prev, z)

    def target_forward_next(
        self, batch: Batch, z: torch.Tensor, next_mu: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Target F / psi heads [2, n, d] (fp32) at (h_{t+1}, a', z), a' = next_mu [n, A] plus clipped noise."""
        cfg, rec = self.config, self.model.forward_map.recurrent
        next_action = sample_action(next_mu, noise, cfg.actor_std, cfg.actor_clip)  # [n, A]
        act_next = torch.cat([batch.prev_action_window[:, 2:], next_action[:, None]], dim=1)  # [n, L_F, a]
        obs_next = last_rows(batch.obs_window[:, 1:], rec)  # [n, L_F or 1, o]
        return self.target_forward(obs_next, last_rows(act_next, rec), z).float()  # [2, n, d]

    def policy_q(
        self, batch: Batch, z: torch.Tensor, next_mu: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """min_k F_k(h_{t+1}, a, z) . z [n], a = next_mu [n, A] plus clipped noise, reparameterised.

        Only the last token of F's window depends on a: with memory, the prefix is encoded
        without gradients (``memory.encode``) and the last token is stepped with gradients,
        which gives the same actor gradient as encoding the whole window.
        """
        cfg, fmap = self.config, self.model.forward_map
        action = sample_action(next_mu, noise, cfg.actor_std, cfg.actor_clip)  # [n, A]
        obs_next = batch.obs_window[:, -1]  # [n, o]
        with self._autocast():
            with torch.no_grad():
                state = fmap.prefix_state(batch.obs_window[:, 1:-1], batch.prev_action_window[:, 2:])
            features, _ = fmap.step_features(obs_next, action, state, need_state=False)  # [n, hidden]
            F = fmap.heads_from_features(features, obs_next, z).float()  # [2, n, d]
        return (F * z[None]).sum(-1).min(dim=0).values  # [n]

    def act(
        self, obs_window: torch.Tensor, prev_action_window: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """Deterministic actions mu (sliding-window mode). See the model's ``act``."""
        return self.model.act(obs_window, prev_action_window, z)

    def initial_actor_state(self, n: int) -> State | None:
        """Carry-mode actor state for n episodes (None without memory)."""
        return self.model.actor.initial_state(n, self.device)

    def act_step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        """Carry mode: one step from a carried state. See the model's ``act_step``."""
        return self.model.act_step(obs, prev_action, z, state)

    def infer_z(
        self, goal_window: torch.Tensor, goal_action_window: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Zero-shot task inference. See the model's ``infer_z``."""
        return self.model.infer_z(goal_window, goal_action_window, reward)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, targets, optimizers, generator state."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned (strict)."""
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())


def step_stages(
    stages: list[Stage],
    run_stage: Callable[[int, Stage, Handoff | None], tuple[torch.Tensor, Metrics, Handoff | None]],
    optimizers: dict[str, torch.optim.Optimizer],
    grad_clamp: float | None,
) -> Metrics:
    """The optimiser steps of one update, for one agent and for several seeds (``agents.seeds``):
    stage by stage, its loss (``run_stage(index, stage, handoff)``), then a step of its optimizer.

    A loss is one number, or one per seed: their sum is differentiated, whose gradient with
    respect to seed k's weights is that of seed k's loss.

    Returns:
        Every stage's metrics.
    """
    handoff, metrics = None, {}
    for index, stage in enumerate(stages):
        loss, stage_metrics, handoff = run_stage(index, stage, handoff)
        optimizer = optimizers[stage.optimizer]
        total = loss if loss.dim() == 0 else loss.sum()
        optimizer_step(optimizer, total, optimizer_params(optimizer), grad_clamp)
        metrics.update(stage_metrics)
    return metrics


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter an optimizer steps, in the order of its groups."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def inference(method: Callable) -> Callable:
    """Decorator for model inference methods: no_grad and eval mode (dropout off), restored after."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


class InferenceMixin:
    """Acting API shared by the FB and HILP models (``self.actor`` is an ``Actor``)."""

    actor: Actor
    config: RepresentationConfig

    def _device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]

    @inference
    def act(
        self, obs_window: torch.Tensor, prev_action_window: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """Deterministic actions from windows (the sliding-window rollout mode, as in training).

        Args:
            obs_window: [N, L_F, o] the last L_F F-stream observations, the last row o_t
                (slots before the episode start padded as in training).
            prev_action_window: [N, L_F, a] the action that led to each row (zeros at the start).
            z: [N, d] or [d].

        Returns:
            mu [N, a].
        """
        dev = self._device()
        n = obs_window.shape[0]
        z = z.to(dev).expand(n, -1) if z.dim() == 1 else z.to(dev)
        recurrent = self.actor.recurrent
        obs = last_rows(obs_window, recurrent).to(dev)
        prev = last_rows(prev_action_window, recurrent).to(dev)
        return self.actor(obs, prev, z)

    @inference
    def act_step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        """Carry mode: feeds obs [N, o] with the action that led to it [N, a] (zeros at the
        first step); returns (mu [N, a], new state). Start from ``actor.initial_state(N)``."""
        dev = self._device()
        z = z.to(dev).expand(obs.shape[0], -1) if z.dim() == 1 else z.to(dev)
        return self.actor.step(obs.to(dev), prev_action.to(dev), z, state)

    def _goal_windows_in_chunks(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        recurrent: bool,
        goal_window: torch.Tensor,
        goal_action_window: torch.Tensor,
    ) -> torch.Tensor:
        """fn over windows [N, L, .] (their last rows when not ``recurrent``), ``config.inference_chunk``
        rows at a time moved to the model's device, concatenated to [N, ...]."""
        g, a = last_rows(goal_window, recurrent), last_rows(goal_action_window, recurrent)
        chunk, device = self.config.inference_chunk, self._device()
        outs = [
            fn(g[i : i + chunk].to(device), a[i : i + chunk].to(device)) for i in range(0, g.shape[0], chunk)
        ]
        return torch.cat(outs, dim=0)
