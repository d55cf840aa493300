"""HILP with or without memory (HILP, HILP-M; docs/algorithms.md).

Temporal-distance features phi (two copies + targets, IQL-style value loss), successor
features psi over phi, and a policy maximising psi . z. ``HILPModel`` holds the online networks
and the no-grad inference API; ``HILPAgent`` owns targets, optimizers and ``update``.

Choices (and where they differ from the official code; docs/algorithms.md, "Choices and deviations"):

- Goals for the phi loss come from the buffer (``Batch.sampled_goal_window``, asked for by
  ``HILPConfig.batch_spec``): the HILP defaults
  0.625 future state of the same trajectory (geometric offset, p = 1 - 0.99, the current state
  itself possible) and 0.375 random state; the reference wires 0.3 random / 0.2 current / 0.5
  future instead.
- The next-state value uses the *same* goal window as the current one (the reference's recurrent
  variant uses the current goal history there, a bug).
- phi_k is built like B: memory model over (g, a) tokens when ``recurrent_B`` (any memory type;
  the reference only has frame stacking), or the 512-LN-tanh-512-ReLU MLP; sphere-projected
  (``phi_sphere``, the reference's choice). The exposed features are phi_1 minus a running mean
  (EMA 0.005 of the batch mean of phi_1 at g_t).
- phi targets are Polyak-updated after the phi optimiser step (the reference does it just
  before, inside the loss call; the difference is one step of lag).
- Order per step as in the reference: psi step, phi step, actor step, then targets.
- z sampling: sphere, or (``z_mix_ratio``) sqrt(d) normalise(phi(g'_perm) Sigma^+) with
  g' the batch's next goals and Sigma = phi^T phi / n over the batch.
- Task inference: z = sqrt(d) normalise(lstsq(phi(G), r)) via the pseudo-inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bfm.agents.base import AgentBase, Draws, Handoff, InferenceMixin, Metrics, Stage, ZDraws, inference
from bfm.agents.config import RepresentationConfig, check_settings
from bfm.agents.networks import FeatureCentring, build_actor, build_backward, build_forward, project_to_sphere
from bfm.agents.optim import (
    last_rows,
)
from bfm.data.batch import Batch, BatchSpec, GoalSampling


@dataclass
class HILPConfig(RepresentationConfig):
    """HILP settings: the shared fields (``RepresentationConfig``, where ``lr_f`` and ``tau`` apply
    to psi) plus

    Attributes:
        lr_phi: Adam learning rate of the features phi (5e-4).
        gamma_phi: discount of the temporal-distance value (0.98; 0.96 on walker).
        tau_phi: Polyak rate of the phi targets (0.005).
        expectile: expectile of the phi value loss (0.5, the reference value: a symmetric MSE).
        phi_sphere: project phi_k onto the sphere of radius sqrt(d) (the reference's choice).
        feature_momentum: EMA weight of the running mean subtracted from the exposed features.
        sf_loss: "vector" (MSE over the d components of psi) or "scalar" (MSE of psi . z, the
            reference's quadruped choice).
        goal_future_prob: probability that a phi-loss goal is a future state of the same
            episode (0.625, the HILP paper's; the rest are random states of the dataset).
        goal_discount: discount of the geometric offset of future goals (0.99: offsets >= 1 with
            success probability 1 - 0.99).
    """

    name: Literal["hilp", "hilp_m"] = "hilp_m"
    lr_phi: float = 5e-4
    gamma_phi: float = 0.98
    tau_phi: float = 0.005
    expectile: float = 0.5
    phi_sphere: bool = True
    feature_momentum: float = 0.005
    sf_loss: Literal["vector", "scalar"] = "vector"
    goal_future_prob: float = 0.625
    goal_discount: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        check_settings(
            self,
            positive=("lr_phi",),
            unit=("tau_phi", "feature_momentum"),
            discount=("gamma_phi", "goal_discount"),
            fraction=("expectile", "goal_future_prob"),
        )

    def batch_spec(self) -> BatchSpec:
        """Batches with goals for the phi loss (future / random states, see the fields)."""
        return BatchSpec(goals=GoalSampling(self.goal_future_prob, 1.0 - self.goal_discount))


def temporal_distance(phi_s: torch.Tensor, phi_g: torch.Tensor) -> torch.Tensor:
    """||phi_s - phi_g|| [..., n] of features [..., n, d], with the squared distance floored at 1e-6."""
    return (phi_s - phi_g).square().sum(-1).clamp_min(1e-6).sqrt()


class HILPModel(nn.Module, InferenceMixin):
    """The online HILP networks (psi, phi_1, phi_2, pi, feature centring) and inference API.

    Args:
        obs_dim, goal_dim, action_dim: widths.
        config: ``HILPConfig``.
    """

    def __init__(self, obs_dim: int, goal_dim: int, action_dim: int, config: HILPConfig) -> None:
        super().__init__()
        self.config = config
        self.forward_map = build_forward(obs_dim, action_dim, config)  # psi
        self.phi = nn.ModuleList(
            build_backward(goal_dim, action_dim, config, sphere=config.phi_sphere) for _ in range(2)
        )
        self.centring = FeatureCentring(config.z_dim, config.feature_momentum)
        self.actor = build_actor(obs_dim, action_dim, config)

    @property
    def phi_recurrent(self) -> bool:
        return self.phi[0].recurrent

    def raw_features(self, goal_window: torch.Tensor, goal_action_window: torch.Tensor) -> torch.Tensor:
        """Centred phi_1 [N, d] of windows [N, L, .] (with gradient; the last row only without memory)."""
        rec = self.phi_recurrent
        return self.centring(self.phi[0](last_rows(goal_window, rec), last_rows(goal_action_window, rec)))

    @inference
    def backward(self, goal_window: torch.Tensor, goal_action_window: torch.Tensor) -> torch.Tensor:
        """The exposed features phi(window) [N, d] (centred phi_1), in chunks of ``inference_chunk``.

        Args:
            goal_window: [N, L_B, g] goal-stream windows ending at the represented state.
            goal_action_window: [N, L_B, a] action taken at each row.
        """
        return self._goal_windows_in_chunks(
            self.raw_features, self.phi_recurrent, goal_window, goal_action_window
        )

    @inference
    def infer_z(
        self, goal_window: torch.Tensor, goal_action_window: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Zero-shot task inference z = sqrt(d) normalise(argmin_w ||phi w - r||^2).

        Args:
            goal_window: [N, L_B, g] labelled windows; goal_action_window: [N, L_B, a].
            reward: [N] (or [N, K] for K tasks at once).

        Returns:
            z [d] (or [K, d]), norm sqrt(d).
        """
        phi = self.backward(goal_window, goal_action_window).double()  # [N, d]
        r = reward.to(phi.device, phi.dtype).reshape(phi.shape[0], -1)  # [N, K]
        w = torch.linalg.pinv(phi) @ r  # [d, K]
        z = project_to_sphere(w.T.float())  # [K, d]
        return z[0] if reward.dim() == 1 else z


class HILPAgent(AgentBase):
    """HILP / HILP-M training: psi step, phi step, actor step, Polyak targets (constructor:
    ``AgentBase``)."""

    model_class = HILPModel
    targets = {"target_forward": ("forward_map", "tau"), "target_phi": ("phi", "tau_phi")}
    compiled = {"_sf_loss_fn": "sf_loss", "_phi_loss_fn": "phi_loss", "_actor_loss_fn": "actor_loss"}
    config: HILPConfig

    def optimizer_groups(self) -> dict[str, tuple[list[Any], float]]:
        """psi, phi and the actor each in an Adam of their own."""
        config, model = self.config, self.model
        return {
            "psi": (list(model.forward_map.parameters()), config.lr_f),
            "phi": (list(model.phi.parameters()), config.lr_phi),
            "actor": (list(model.actor.parameters()), config.lr_actor),
        }

    def stages(self) -> list[Stage]:
        """The psi step, the phi step, then the actor step."""
        return [
            Stage("psi", self._sf_stage),
            Stage("phi", self._phi_stage),
            Stage("actor", self._actor_stage),
        ]

    goal_needs_state = True  # z of a goal is recomputed from the current state at every step

    def goal_z(
        self,
        goal_window: torch.Tensor,
        goal_action_window: torch.Tensor,
        window: torch.Tensor | None = None,
        action_window: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """HILP's goal-conditioned z = sqrt(d) normalise(phi(g) - phi(s_t)) [n, d] (the HILP paper's
        goal-reaching policy, recomputed at every step).

        Args:
            goal_window: [n, L_B, g] windows ending at the goal; goal_action_window: [n, L_B, a].
            window: [n, L_B, g] the current state's window (its observations as the policy sees
                them); action_window: [n, L_B, a] the action taken at each row (zeros for the
                current row, whose action is not taken yet).
        """
        if window is None or action_window is None:
            raise ValueError("HILP's goal z needs the current state's window")
        phi_goal = self.model.backward(goal_window, goal_action_window)  # [n or 1, d]
        phi_now = self.model.backward(window, action_window)  # [n, d]
        return project_to_sphere(phi_goal - phi_now)  # [n, d]

    @torch.no_grad()
    def sample_z(self, phi_next: torch.Tensor, draws: Draws | ZDraws | None = None) -> torch.Tensor:
        """z per row: sphere Gaussian, a ``z_mix_ratio`` fraction replaced by
        sqrt(d) normalise(phi(g'_perm) Sigma^+), Sigma = phi^T phi / n.

        Args:
            phi_next: [n, d] exposed features of the batch's next goals g_{t+1}.
            draws: the update's ``draws`` (z, perm, mix); drawn here when None.
        """
        n = phi_next.shape[0]
        draws = self._z_draws(n) if draws is None else draws
        z, perm, mix = draws.z, draws.perm, draws.mix  # [n, d], [n], [n, 1]
        sigma = phi_next.T @ phi_next / n  # [d, d]
        z_goal = project_to_sphere(phi_next[perm] @ torch.linalg.pinv(sigma, hermitian=True))  # [n, d]
        return torch.where(mix, z_goal, z)

    def phi_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """Expectile temporal-distance value loss for both phi copies.

        V_k(s, g) = -||phi_k(s) - phi_k(g)||, r = 0 at the goal (s_t = g) else -1, no bootstrap at
        the goal; q = r + gamma_phi min_k Vbar_k(s', g), adv = q - mean_k Vbar_k(s, g),
        L = sum_k mean[ |expectile - 1(adv < 0)| (r + gamma_phi Vbar_k(s', g) - V_k(s, g))^2 ].
        Also moves the feature running mean (phi_1 at s_t).
        """
        cfg, rec = self.config, self.model.phi_recurrent
        if batch.sampled_goal_window is None:
            raise ValueError(
                "HILP needs batches with goals: sample them with buffer.sample(n, agent.batch_spec)"
            )
        s, s_a = last_rows(batch.goal_window[:, :-1], rec), last_rows(batch.goal_action_window[:, :-1], rec)
        s2, s2_a = last_rows(batch.goal_window[:, 1:], rec), last_rows(batch.goal_action_window[:, 1:], rec)
        g, g_a = last_rows(batch.sampled_goal_window, rec), last_rows(batch.sampled_goal_action_window, rec)
        n = s.shape[0]
        at_goal = batch.sampled_goal_is_current.float()  # [n]
        reward, not_done = at_goal - 1.0, 1.0 - at_goal  # [n]
        with torch.no_grad(), self._autocast():
            tgt = [
                p(torch.cat([s, s2, g]), torch.cat([s_a, s2_a, g_a])).float().split(n)
                for p in self.target_phi
            ]
            v_s = torch.stack([-temporal_distance(t[0], t[2]) for t in tgt])  # [2, n]
            v_next = torch.stack([-temporal_distance(t[1], t[2]) for t in tgt])  # [2, n]
            q = reward + cfg.gamma_phi * not_done * v_next.min(0).values  # [n]
            adv = q - v_s.mean(0)  # [n]
            weight = torch.where(adv >= 0, cfg.expectile, 1.0 - cfg.expectile)  # [n]
            target = reward + cfg.gamma_phi * not_done * v_next  # [2, n]
        with self._autocast():
            online = [p(torch.cat([s, g]), torch.cat([s_a, g_a])).float().split(n) for p in self.model.phi]
        v = torch.stack([-temporal_distance(o[0], o[1]) for o in online])  # [2, n]
        loss = (weight * (target - v).square()).mean(-1).sum()
        self.model.centring.update(online[0][0].detach())
        return loss, {"loss": loss.detach(), "v": v.mean().detach(), "adv": adv.mean().detach()}

    def sf_loss(
        self,
        batch: Batch,
        z: torch.Tensor,
        phi_next: torch.Tensor,
        next_mu: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics]:
        """Successor-feature loss: psi_k(h_t, a_t, z) against phi(g_{t+1}) + gamma psibar*(h_{t+1}, a', z),
        psibar* the target head with the lower psibar . z.

        Args:
            batch: training windows.
            z: [n, d].
            phi_next: [n, d] exposed features of g_{t+1} (no gradient).
            next_mu: [n, A] pi(h_{t+1}, z), detached.
            noise: [n, A] standard normal for the target action.
        """
        cfg, rec = self.config, self.model.forward_map.recurrent
        with torch.no_grad(), self._autocast():
            psi_next = self.target_forward_next(batch, z, next_mu, noise)  # [2, n, d]
            q_next = (psi_next * z).sum(-1)  # [2, n]
            lower = (q_next[1] < q_next[0])[:, None]  # [n, 1]
            target = phi_next + cfg.gamma * torch.where(lower, psi_next[1], psi_next[0])  # [n, d]
        with self._autocast():
            psi = self.model.forward_map(
                last_rows(batch.obs_window[:, :-1], rec), last_rows(batch.prev_action_window[:, 1:], rec), z
            ).float()  # [2, n, d]
        if cfg.sf_loss == "vector":
            loss = (psi - target).square().mean(dim=(1, 2)).sum()
        else:
            loss = ((psi * z).sum(-1) - (target * z).sum(-1)).square().mean(-1).sum()
        return loss, {"loss": loss.detach(), "q": (psi.detach() * z).sum(-1).mean()}

    def actor_loss(
        self, batch: Batch, z: torch.Tensor, next_mu: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, Metrics]:
        """-mean min_k psi_k(h_{t+1}, a, z) . z, a ~ pi(h_{t+1}, z); prefix encoded without gradient."""
        q = self.policy_q(batch, z, next_mu, noise)  # [n]
        loss = -q.mean()
        return loss, {"loss": loss.detach(), "q": q.mean().detach()}

    def _sf_stage(
        self, batch: Batch, draws: Draws, handoff: Handoff | None
    ) -> tuple[torch.Tensor, Metrics, Handoff]:
        """phi(g_{t+1}), z, pi(h_{t+1}, z) and the psi loss; hands z and pi(h_{t+1}, z) on."""
        with torch.no_grad(), self._autocast():
            phi_next = self.model.raw_features(
                batch.goal_window[:, 1:], batch.goal_action_window[:, 1:]
            ).float()  # [n, d]
        z = self.sample_z(phi_next, draws)  # [n, d]
        with self._autocast():
            next_mu = self.next_policy(batch, z).float()  # [n, A]
        sf, metrics = self._sf_loss_fn(batch, z, phi_next, next_mu.detach(), draws.target_noise)
        return sf, {f"sf/{k}": v for k, v in metrics.items()}, Handoff(z, next_mu)

    def _phi_stage(
        self, batch: Batch, draws: Draws, handoff: Handoff | None
    ) -> tuple[torch.Tensor, Metrics, Handoff]:
        phi, metrics = self._phi_loss_fn(batch)
        return phi, {f"phi/{k}": v for k, v in metrics.items()}, handoff

    def _actor_stage(
        self, batch: Batch, draws: Draws, handoff: Handoff | None
    ) -> tuple[torch.Tensor, Metrics, Handoff]:
        actor, metrics = self._actor_loss_fn(batch, handoff.z, handoff.next_mu, draws.actor_noise)
        return actor, {f"actor/{k}": v for k, v in metrics.items()}, handoff
