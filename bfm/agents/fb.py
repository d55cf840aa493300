"""Forward-Backward representations, with or without memory (FB, FB-M; docs/algorithms.md).

``FBModel`` holds the online networks F, B, pi and the no-grad inference API (``act``,
``act_step``, ``backward``, ``infer_z``); ``FBAgent`` owns the targets, optimizers and ``update``.

Window slices of a ``data.batch.Batch`` used here (see that module):

- F(h_t, a_t):       obs_window[:, :-1], prev_action_window[:, 1:]
- pi(h_{t+1}):       obs_window[:, 1:],  prev_action_window[:, 1:]
- F(h_{t+1}, a'):    obs_window[:, 1:],  cat(prev_action_window[:, 2:], a')
- B(g_{t+1}):        goal_window[:, 1:], goal_action_window[:, 1:]
- B(g_t) (z mix):    goal_window[:, :-1], goal_action_window[:, :-1] (``z_mix_goal="current"`` only)

z mixing (``FBConfig.z_mix_goal``): by default the mixed-in rows are the online B(g_{t+1}) of a
permuted batch, i.e. rows of the very B that the measure loss uses, computed once per step with
gradient and detached for z. The paper mixes in B of a randomly permuted batch's goal histories; the
official code used g_t windows, which costs one more B pass per step for a distribution of goals
that differs from g_{t+1} only by one step of time (docs/algorithms.md, "Choices and deviations").
``z_mix_goal="current"`` restores that pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bfm.agents.base import AgentBase, Draws, Handoff, InferenceMixin, Metrics, Stage, ZDraws, inference
from bfm.agents.config import RepresentationConfig, check_settings
from bfm.agents.networks import build_actor, build_backward, build_forward, project_to_sphere
from bfm.agents.optim import (
    last_rows,
    offdiag_mean,
)
from bfm.data.batch import Batch, BatchSpec


@dataclass
class FBConfig(RepresentationConfig):
    """FB settings: the shared fields (``RepresentationConfig``) plus

    Attributes:
        lr_b: Adam learning rate of B (a second parameter group of the F optimizer); None (the
            default) uses ``lr_f``, the paper's 1e-4 for both.
        ortho_coef: weight of the orthonormality regulariser on B (1).
        z_mix_goal: goals whose B replaces a ``z_mix_ratio`` fraction of the sampled z: "next"
            (g_{t+1}: the rows of the measure loss's online B, detached; no extra B pass) or
            "current" (g_t windows, one more online B pass, as in the reference code).
    """

    name: Literal["fb", "fb_m"] = "fb_m"
    lr_b: float | None = None
    ortho_coef: float = 1.0
    z_mix_goal: Literal["next", "current"] = "next"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_settings(self, positive=("lr_b",), non_negative=("ortho_coef",))

    def batch_spec(self) -> BatchSpec:
        """FB needs the windows every batch has, nothing more."""
        return BatchSpec()


def fb_measure_loss(
    F: torch.Tensor, B: torch.Tensor, target_M: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, Metrics]:
    """The FB measure loss, summed over heads.

    L = sum_k [ 1/2 mean_{i != j} (M_k[i,j] - gamma target_M[i,j])^2 - mean_i M_k[i,i] ],
    M_k = F_k B^T. The diagonal term is the density of the observed s_{t+1} itself; the
    off-diagonal term the bootstrapped TD error against the other goals of the batch.

    Args:
        F: [K, n, d] online F heads at (h_t, a_t, z).
        B: [n, d] online B at g_{t+1}.
        target_M: [n, n] target measure, min over target heads of Fbar(h_{t+1}, a', z) Bbar^T.
        gamma: discount.

    Returns:
        (scalar loss, metrics).
    """
    M = torch.matmul(F.float(), B.float().T)  # [K, n, n]
    diff = M - gamma * target_M.float()  # [K, n, n]
    offdiag = 0.5 * offdiag_mean(diff.square())  # [K]
    diag = M.diagonal(dim1=-2, dim2=-1).mean(-1)  # [K]
    loss = (offdiag - diag).sum()
    return loss, {"offdiag": offdiag.sum().detach(), "diag": diag.mean().detach(), "loss": loss.detach()}


def ortho_loss(B: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Orthonormality regulariser mean_{i != j} (B_i . B_j)^2 - 2 mean_i |B_i|^2.

    Computed without the n x n Gram matrix: sum_{ij} (B_i . B_j)^2 = ||B^T B||_F^2 (d x d).

    Args:
        B: [n, d].
    """
    B = B.float()
    n = B.shape[0]
    sq_norms = B.square().sum(-1)  # [n] = diag(B B^T)
    gram = B.T @ B  # [d, d]
    offdiag = (gram.square().sum() - sq_norms.square().sum()) / (n * (n - 1))
    diag = sq_norms.mean()
    loss = offdiag - 2 * diag
    return loss, {"ortho_offdiag": offdiag.detach(), "ortho_diag": diag.detach(), "ortho_loss": loss.detach()}


class FBModel(nn.Module, InferenceMixin):
    """The online FB networks and their inference API.

    Args:
        obs_dim: obs-stream observation width.
        goal_dim: goal-stream observation width.
        action_dim: action width.
        config: ``FBConfig``.
    """

    def __init__(self, obs_dim: int, goal_dim: int, action_dim: int, config: FBConfig) -> None:
        super().__init__()
        self.config = config
        self.forward_map = build_forward(obs_dim, action_dim, config)
        self.backward_map = build_backward(goal_dim, action_dim, config)
        self.actor = build_actor(obs_dim, action_dim, config)

    @inference
    def backward(self, goal_window: torch.Tensor, goal_action_window: torch.Tensor) -> torch.Tensor:
        """B of windows, in chunks of ``config.inference_chunk``.

        Args:
            goal_window: [N, L, g] goal-stream windows ending at the represented state (only the
                last row is read when B has no memory).
            goal_action_window: [N, L, a] action taken at each row.

        Returns:
            [N, d] on the sphere of radius sqrt(d).
        """
        return self._goal_windows_in_chunks(
            self.backward_map, self.backward_map.recurrent, goal_window, goal_action_window
        )

    @inference
    def infer_z(
        self, goal_window: torch.Tensor, goal_action_window: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Zero-shot task inference z = sqrt(d) normalise(mean_i r_i B(window_i)).

        Args:
            goal_window: [N, L_B, g] labelled goal-stream windows (training order, last row the
                labelled state).
            goal_action_window: [N, L_B, a] action taken at each row.
            reward: [N] reward of each labelled state, or [N, K] for K tasks at once.

        Returns:
            z [d] (or [K, d] for [N, K] rewards), norm sqrt(d).
        """
        B = self.backward(goal_window, goal_action_window)  # [N, d]
        r = reward.to(B.device, B.dtype).reshape(B.shape[0], -1)  # [N, K]
        z = project_to_sphere(r.T @ B / B.shape[0])  # [K, d]
        return z[0] if reward.dim() == 1 else z


class FBAgent(AgentBase):
    """FB / FB-M training: F/B step on the measure loss, then the actor step, then Polyak targets
    (constructor: ``AgentBase``)."""

    model_class = FBModel
    targets = {"target_forward": ("forward_map", "tau"), "target_backward": ("backward_map", "tau")}
    compiled = {"_fb_loss_fn": "fb_loss", "_actor_loss_fn": "actor_loss"}
    config: FBConfig

    def optimizer_groups(self) -> dict[str, tuple[list[Any], float]]:
        """F and B in one Adam (B at ``lr_b`` when set), the actor in another."""
        config, model = self.config, self.model
        backward_lr = config.lr_f if config.lr_b is None else config.lr_b
        return {
            "fb": (
                [
                    {"params": list(model.forward_map.parameters()), "lr": config.lr_f},
                    {"params": list(model.backward_map.parameters()), "lr": backward_lr},
                ],
                config.lr_f,
            ),
            "actor": (list(model.actor.parameters()), config.lr_actor),
        }

    def stages(self) -> list[Stage]:
        """The F/B step on the measure loss, then the actor step."""
        return [Stage("fb", self._fb_stage), Stage("actor", self._actor_stage)]

    goal_needs_state = False  # z of a goal does not depend on the current state

    def goal_z(
        self,
        goal_window: torch.Tensor,
        goal_action_window: torch.Tensor,
        window: torch.Tensor | None = None,
        action_window: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z = B(goal window) [n, d] (goal reaching in the FB papers); the current windows are unused.

        Args:
            goal_window: [n, L_B, g] goal-stream windows ending at the goal; goal_action_window:
                [n, L_B, a] actions taken at those rows.
        """
        return self.model.backward(goal_window, goal_action_window)  # [n, d], norm sqrt(d)

    @torch.no_grad()
    def sample_z(
        self, batch: Batch, goal_b: torch.Tensor | None = None, draws: Draws | ZDraws | None = None
    ) -> torch.Tensor:
        """z per row: sphere Gaussian, a ``z_mix_ratio`` fraction replaced by online B of permuted goals.

        Args:
            batch: training windows.
            goal_b: [n, d] online B of the batch's g_{t+1} windows (``z_mix_goal="next"``); when
                None, B is computed here (of g_{t+1} or, with ``z_mix_goal="current"``, g_t).
            draws: the update's ``draws`` (z, perm, mix); drawn here when None.

        Returns:
            z [n, d], every row of norm sqrt(d).
        """
        draws = self._z_draws(batch.batch_size) if draws is None else draws
        z, perm, mix = draws.z, draws.perm, draws.mix  # [n, d], [n], [n, 1]
        if goal_b is None:
            rec = self.model.backward_map.recurrent
            window = slice(None, -1) if self.config.z_mix_goal == "current" else slice(1, None)
            goal = last_rows(batch.goal_window[:, window], rec)  # [n, L_B or 1, g]
            goal_action = last_rows(batch.goal_action_window[:, window], rec)
            with self._autocast():
                goal_b = self.model.backward_map(goal, goal_action).float()  # [n, d]
        return torch.where(mix, goal_b.detach().float()[perm], z)

    def online_backward(self, batch: Batch) -> torch.Tensor:
        """Online B(g_{t+1}) [n, d] with gradient (the measure loss's B; its detached rows mix z)."""
        rec = self.model.backward_map.recurrent
        goal_next = last_rows(batch.goal_window[:, 1:], rec)  # [n, L_B, g]
        goal_act_next = last_rows(batch.goal_action_window[:, 1:], rec)  # [n, L_B, a]
        with self._autocast():
            return self.model.backward_map(goal_next, goal_act_next)  # [n, d]

    def fb_loss(
        self,
        batch: Batch,
        z: torch.Tensor,
        next_mu: torch.Tensor,
        noise: torch.Tensor,
        B: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Metrics]:
        """Measure loss + ortho regulariser for one F/B step.

        Args:
            batch: training windows.
            z: [n, d].
            next_mu: [n, A] pi(h_{t+1}, z), detached.
            noise: [n, A] standard normal for the target action.
            B: [n, d] online B(g_{t+1}) with gradient (``online_backward``), or None to compute it here.

        Returns:
            (loss, metrics).
        """
        cfg = self.config
        recF, recB = self.model.forward_map.recurrent, self.model.backward_map.recurrent
        obs_t = last_rows(batch.obs_window[:, :-1], recF)  # [n, L_F, o]
        act_t = last_rows(batch.prev_action_window[:, 1:], recF)  # [n, L_F, a]
        goal_next = last_rows(batch.goal_window[:, 1:], recB)  # [n, L_B, g]
        goal_act_next = last_rows(batch.goal_action_window[:, 1:], recB)  # [n, L_B, a]
        with torch.no_grad(), self._autocast():
            F_next = self.target_forward_next(batch, z, next_mu, noise)  # [2, n, d]
            B_next = self.target_backward(goal_next, goal_act_next).float()  # [n, d]
            target_M = torch.minimum(F_next[0] @ B_next.T, F_next[1] @ B_next.T)  # [n, n]
        with self._autocast():
            F = self.model.forward_map(obs_t, act_t, z)  # [2, n, d]
        if B is None:
            B = self.online_backward(batch)  # [n, d]
        measure, metrics = fb_measure_loss(F, B, target_M, cfg.gamma)
        ortho, ortho_metrics = ortho_loss(B)
        metrics.update(ortho_metrics)
        metrics["F_norm"] = F.detach().float().norm(dim=-1).mean()
        return measure + cfg.ortho_coef * ortho, metrics

    def actor_loss(
        self, batch: Batch, z: torch.Tensor, next_mu: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, Metrics]:
        """-mean_i min_k F_k(h_{t+1}, a_i, z_i) . z_i with a ~ pi(h_{t+1}, z) reparameterised
        (``policy_q``: the prefix of F's window is encoded without gradient).

        Args:
            batch: training windows.
            z: [n, d].
            next_mu: [n, A] pi(h_{t+1}, z) with gradient.
            noise: [n, A] standard normal.
        """
        q = self.policy_q(batch, z, next_mu, noise)  # [n]
        loss = -q.mean()
        return loss, {
            "loss": loss.detach(),
            "q": q.mean().detach(),
            "action_abs": next_mu.detach().abs().mean(),
        }

    def _fb_stage(
        self, batch: Batch, draws: Draws, handoff: Handoff | None
    ) -> tuple[torch.Tensor, Metrics, Handoff]:
        """Online B(g_{t+1}), z, pi(h_{t+1}, z) and the F/B loss; hands z and pi(h_{t+1}, z) on."""
        cfg = self.config
        B = self.online_backward(batch) if cfg.z_mix_goal == "next" else None  # [n, d], with grad
        z = self.sample_z(batch, B, draws)  # [n, d]
        with self._autocast():
            next_mu = self.next_policy(batch, z).float()  # [n, A]
        fb, fb_metrics = self._fb_loss_fn(batch, z, next_mu.detach(), draws.target_noise, B)
        metrics = {f"fb/{k}": v for k, v in fb_metrics.items()}
        metrics["fb/total_loss"] = fb.detach()
        metrics["z/mix_norm"] = z.norm(dim=-1).mean() / math.sqrt(cfg.z_dim)
        return fb, metrics, Handoff(z, next_mu)

    def _actor_stage(
        self, batch: Batch, draws: Draws, handoff: Handoff | None
    ) -> tuple[torch.Tensor, Metrics, Handoff]:
        actor, metrics = self._actor_loss_fn(batch, handoff.z, handoff.next_mu, draws.actor_noise)
        return actor, {f"actor/{k}": v for k, v in metrics.items()}, handoff
