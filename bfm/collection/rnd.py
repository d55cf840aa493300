"""URLB's RND explorer for state observations: DDPG driven only by the RND intrinsic reward.

Used by local dataset collection (``collection/collect.py``); it never touches files or environments.
Networks, losses and defaults follow URLB (``agent/ddpg.py``, ``agent/rnd.py``):

- actor: obs -> H -> LayerNorm -> tanh -> H -> ReLU -> act -> tanh = mu; acting samples
  mu + N(0, 0.2^2) clamped to [-1, 1]; updates clip the noise to +-0.3.
- twin critic: (obs, act) -> H -> LayerNorm -> tanh, then two heads H -> ReLU -> 1; Polyak 0.01.
- RND: predictor and frozen target obs -> H -> ReLU -> H -> ReLU -> 512 on the input normalised
  by a non-affine BatchNorm (always batch statistics) and clipped to [-5, 5];
  e(s) = mean squared error of the 512 features; r_int(s) = e(s) / (running std of e + 1e-8).
- critic target (URLB's n-step quirk): r_int(s_t) + gamma^n min Q'(s_{t+n}, a'), a' ~ pi(s_{t+n}).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RNDConfig:
    """Settings of the RND explorer (URLB defaults for states).

    Attributes:
        hidden_dim: width H of every hidden layer (actor, critic, RND).
        rnd_rep_dim: output width of the RND predictor and target.
        lr: Adam learning rate of actor, critic and RND predictor.
        batch_size: transitions per update.
        tau: Polyak rate of the critic target.
        stddev: fixed exploration noise standard deviation.
        stddev_clip: clip of the target-policy noise in updates.
        nstep: n of the n-step transitions sampled for the critic.
        gamma: discount; the n-step discount is gamma ** nstep.
        update_every_steps: one update per this many environment steps.
        num_seed_frames: initial environment steps with uniform random actions and no updates.
        rnd_scale: multiplier of the intrinsic reward.
        replay_capacity: FIFO replay size in transitions.
    """

    hidden_dim: int = 1024
    rnd_rep_dim: int = 512
    lr: float = 1e-4
    batch_size: int = 1024
    tau: float = 0.01
    stddev: float = 0.2
    stddev_clip: float = 0.3
    nstep: int = 3
    gamma: float = 0.99
    update_every_steps: int = 2
    num_seed_frames: int = 4000
    rnd_scale: float = 1.0
    replay_capacity: int = 1_000_000


# Named explorer sizes. ``urlb`` is URLB's (the ExORL datasets were collected with it; seconds per
# update on a 2-core CPU, so a GPU job); ``cpu`` is sized so that 2 CPU cores collect a learnable
# walker dataset in well under an hour (measurements: docs/datasets.md, "Collecting on a CPU").
RND_PRESETS: dict[str, dict[str, Any]] = {
    "urlb": {},
    "cpu": {"hidden_dim": 128, "rnd_rep_dim": 128, "batch_size": 128},
}


def rnd_config(preset: str = "urlb", **overrides: Any) -> RNDConfig:
    """``RNDConfig`` of a named preset (``RND_PRESETS``), with the non-None ``overrides`` applied.

    Raises:
        ValueError: unknown preset.
    """
    if preset not in RND_PRESETS:
        raise ValueError(f"unknown explorer preset {preset!r}; accepted: {', '.join(RND_PRESETS)}")
    values = {**RND_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return RNDConfig(**values)


def orthogonal_init(module: nn.Module, generator: torch.Generator) -> None:
    """URLB weight init: orthogonal weights, zero biases, for every Linear of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight.data, generator=generator)
            layer.bias.data.fill_(0.0)


class ExplorerActor(nn.Module):
    """Deterministic DDPG actor: obs [B, obs] -> mu [B, act] in (-1, 1)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.Tanh())
        self.policy = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, action_dim)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.policy(self.trunk(obs)))


class Critic(nn.Module):
    """Twin Q: (obs [B, obs], action [B, act]) -> (Q1 [B, 1], Q2 [B, 1])."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(obs_dim + action_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.Tanh()
        )

        def head() -> nn.Module:
            return nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

        self.q1, self.q2 = head(), head()

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(torch.cat([obs, action], dim=-1))  # [B, H]
        return self.q1(h), self.q2(h)


class RND(nn.Module):
    """Random network distillation: obs [B, obs] -> prediction error e [B, 1]."""

    def __init__(self, obs_dim: int, hidden_dim: int, rep_dim: int, clip_val: float = 5.0) -> None:
        super().__init__()
        self.clip_val = clip_val
        self.normalize_obs = nn.BatchNorm1d(obs_dim, affine=False)

        def mlp() -> nn.Module:
            return nn.Sequential(
                nn.Linear(obs_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, rep_dim),
            )  # fmt: skip

        self.predictor, self.target = mlp(), mlp()
        for param in self.target.parameters():
            param.requires_grad_(False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = self.normalize_obs(obs).clamp(-self.clip_val, self.clip_val)  # [B, obs], batch statistics
        error = (self.target(obs) - self.predictor(obs)).square()  # [B, rep]
        return error.mean(dim=-1, keepdim=True)  # [B, 1]


class RunningMeanStd:
    """URLB's running mean/variance of a batch statistic (parallel merge; count starts at 1e-4)."""

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.zeros(1, device=device)
        self.var = torch.ones(1, device=device)
        self.count = 1e-4

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Merge the batch x [B, 1] and return the running variance [1]."""
        n = x.shape[0]
        delta = x.mean(dim=0) - self.mean  # [1]
        total = self.count + n
        self.var = (
            self.var * self.count + x.var(dim=0) * n + delta.square() * self.count * n / total
        ) / total
        self.mean = self.mean + delta * n / total
        self.count = total
        return self.var


class RNDAgent:
    """DDPG + RND intrinsic reward (URLB). Acting and updating only; replay lives with the collector.

    Args:
        obs_dim: observation size.
        action_dim: action size (actions in [-1, 1]).
        config: ``RNDConfig``.
        device: torch device.
        seed: seeds the network initialisation and the agent's generator (action noise); no global RNG.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, config: RNDConfig, device: str | torch.device, seed: int
    ) -> None:
        self.config, self.device, self.action_dim = config, torch.device(device), action_dim
        h = config.hidden_dim
        init_generator = torch.Generator().manual_seed(seed)
        self.actor = ExplorerActor(obs_dim, action_dim, h)
        self.critic = Critic(obs_dim, action_dim, h)
        self.rnd = RND(obs_dim, h, config.rnd_rep_dim)
        for module in (self.actor, self.critic, self.rnd):
            orthogonal_init(module, init_generator)
        self.actor, self.critic, self.rnd = (m.to(self.device) for m in (self.actor, self.critic, self.rnd))
        self.critic_target = Critic(obs_dim, action_dim, h).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.lr)
        self.rnd_opt = torch.optim.Adam(self.rnd.predictor.parameters(), lr=config.lr)
        self.reward_rms = RunningMeanStd(self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def _noise(self, shape: torch.Size, clip: float | None) -> torch.Tensor:
        eps = torch.randn(shape, generator=self.generator, device=self.device) * self.config.stddev
        return eps if clip is None else eps.clamp(-clip, clip)

    def _sample(self, mu: torch.Tensor, clip: float | None) -> torch.Tensor:
        """mu + noise clamped into [-1, 1] with a straight-through gradient (URLB TruncatedNormal)."""
        x = mu + self._noise(mu.shape, clip)
        clamped = x.clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        return x - x.detach() + clamped.detach()

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int) -> np.ndarray:
        """Exploration action [act] float32 for obs [obs]; uniform random during the seed frames."""
        if step < self.config.num_seed_frames:
            u = torch.rand(self.action_dim, generator=self.generator, device=self.device)
            return (u * 2 - 1).cpu().numpy().astype(np.float32)
        mu = self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None])  # [1, act]
        return self._sample(mu, None)[0].cpu().numpy().astype(np.float32)

    def update_rnd(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = self.rnd(obs).mean()
        self.rnd_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.rnd_opt.step()
        return {"rnd_loss": loss.detach()}

    @torch.no_grad()
    def intrinsic_reward(self, obs: torch.Tensor) -> torch.Tensor:
        """r_int [B, 1] = scale * e(s) / (sqrt(running var of e) + 1e-8); updates the running stats."""
        error = self.rnd(obs)  # [B, 1]
        var = self.reward_rms.update(error)
        return self.config.rnd_scale * error / (var.sqrt() + 1e-8)

    def update_critic(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_obs: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_action = self._sample(self.actor(next_obs), self.config.stddev_clip)  # [B, act]
            target_q = torch.min(*self.critic_target(next_obs, next_action))  # [B, 1]
            target = reward + discount * target_q  # [B, 1]
        q1, q2 = self.critic(obs, action)
        loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.detach(), "critic_q": q1.mean().detach()}

    def update_actor(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        action = self._sample(self.actor(obs), self.config.stddev_clip)  # [B, act]
        loss = -torch.min(*self.critic(obs, action)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {"actor_loss": loss.detach()}

    def update(
        self, obs: torch.Tensor, action: torch.Tensor, discount: torch.Tensor, next_obs: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One URLB RND update on n-step transitions.

        Args:
            obs: [B, obs] s_t.
            action: [B, act] a_t.
            discount: [B, 1] gamma ** n.
            next_obs: [B, obs] s_{t+n}.

        Returns:
            Metrics (tensors, no host sync).
        """
        metrics = self.update_rnd(obs)
        reward = self.intrinsic_reward(obs)  # [B, 1]
        metrics["intrinsic_reward"] = reward.mean()
        metrics.update(self.update_critic(obs, action, reward, discount, next_obs))
        metrics.update(self.update_actor(obs))
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters(), strict=True):
                tp.lerp_(p, self.config.tau)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, networks, optimizers, running stats, generator."""
        modules = ("actor", "critic", "critic_target", "rnd", "actor_opt", "critic_opt", "rnd_opt")
        state = {name: getattr(self, name).state_dict() for name in modules}
        state["config"] = asdict(self.config)
        state["reward_rms"] = (self.reward_rms.mean, self.reward_rms.var, self.reward_rms.count)
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``."""
        for name in ("actor", "critic", "critic_target", "rnd", "actor_opt", "critic_opt", "rnd_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.reward_rms.mean, self.reward_rms.var, self.reward_rms.count = state["reward_rms"]
        self.generator.set_state(state["generator"])
