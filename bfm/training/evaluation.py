"""Zero-shot evaluation (README, "Training and evaluation").

For every task, z is inferred once from reward-labelled B-stream windows of the training
buffer. Then every (task, multiplier, rollout) episode runs in one ``envs.BatchedEvalEnv`` and the
policy acts for all of them with one batched forward per environment step:

- ``sliding`` (default, matches training): the policy re-encodes the last L_F (obs, prev_action)
  tokens each step; slots before the episode start repeat the first observation with a zero
  action, exactly like the training windows.
- ``carry``: the policy's recurrent state is carried over the whole episode (``agent.act_step``).

The return of an episode is the sum of the true task rewards (computed by the environment from
the physics), at most 1000. Per task and multiplier the score is the IQM (25 % trimmed mean) of
the episode returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from scipy.stats import trim_mean

log = logging.getLogger(__name__)


class EvalAgent(Protocol):
    """The part of the agent API evaluation uses (docs/CONTRACTS.md)."""

    def infer_z(
        self, goal_window: torch.Tensor, goal_action_window: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor: ...

    def act(
        self, obs_window: torch.Tensor, prev_action_window: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor: ...

    def initial_actor_state(self, n: int) -> Any: ...

    def act_step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, Any]: ...


def iqm(returns: np.ndarray | list[float]) -> float:
    """Interquartile mean: ``scipy.stats.trim_mean(returns, 0.25)``."""
    return float(trim_mean(np.asarray(returns, dtype=np.float64), 0.25))


@dataclass
class EvalResult:
    """Outcome of one evaluation.

    Attributes:
        step: gradient step at which the agent was evaluated.
        returns: (task, multiplier) -> episode returns, one per rollout.
        seconds: wall time of task inference and rollouts.
        rollout_memory: ``sliding`` or ``carry``.
    """

    step: int
    returns: dict[tuple[str, float], list[float]]
    seconds: float = 0.0
    rollout_memory: str = "sliding"
    task_iqm: dict[tuple[str, float], float] = field(init=False)

    def __post_init__(self) -> None:
        self.task_iqm = {key: iqm(r) for key, r in self.returns.items()}

    def mean_iqm(self, multiplier: float | None = None) -> float:
        """Mean over tasks of the per-task IQM (over every multiplier when ``multiplier`` is None)."""
        values = [v for (_, m), v in self.task_iqm.items() if multiplier is None or m == multiplier]
        return float(np.mean(values))

    def rows(self) -> list[dict[str, Any]]:
        """eval.csv rows: one per (task, multiplier) with the IQM and every episode return."""
        return [
            {
                "task": task,
                "multiplier": m,
                "iqm": self.task_iqm[(task, m)],
                "mean": float(np.mean(r)),
                "returns": " ".join(f"{x:.4f}" for x in r),
            }
            for (task, m), r in self.returns.items()
        ]

    def summary(self) -> dict[str, float]:
        """Flat ``eval/<task>/m=<multiplier>/iqm`` metrics plus ``eval/mean_iqm`` (for wandb)."""
        out = {f"eval/{task}/m={m:g}/iqm": v for (task, m), v in self.task_iqm.items()}
        out["eval/mean_iqm"] = self.mean_iqm()
        out["time/eval_seconds"] = self.seconds
        return out


class Evaluator:
    """Runs zero-shot evaluations of an agent against one batched environment set-up.

    Args:
        make_env: ``seed -> envs.BatchedEvalEnv`` for every task, multiplier and rollout; it must
            expose ``episode_keys`` (list of (task, multiplier, rollout)), ``reset()`` and
            ``step(action)``.
        buffer: the training buffer; ``sample_labelled(n, tasks)`` provides task inference data.
        tasks: evaluation tasks.
        history_length: L_F of the policy's sliding window.
        action_dim: action dimension.
        z_inference_steps: labelled windows per task inference.
        rollout_memory: ``sliding`` or ``carry``.
        episode_length: environment steps per episode (None: until the environment says done).
        pad_with_zeros: pad the sliding window's pre-episode slots with zero observations (as the
            buffer does with ``pad_with_zeros``) instead of repeating the first observation.
        seed: base seed; each evaluation uses ``seed + step`` for its environments, so a resumed
            run evaluates exactly like an uninterrupted one.
        device: device of the agent.
    """

    def __init__(
        self,
        make_env: Any,
        buffer: Any,
        tasks: list[str],
        history_length: int,
        action_dim: int,
        z_inference_steps: int,
        rollout_memory: str = "sliding",
        episode_length: int | None = None,
        pad_with_zeros: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.make_env = make_env
        self.buffer = buffer
        self.tasks = list(tasks)
        self.history_length = history_length
        self.action_dim = action_dim
        self.z_inference_steps = z_inference_steps
        self.rollout_memory = rollout_memory
        self.episode_length = episode_length
        self.pad_with_zeros = pad_with_zeros
        self.seed = seed
        self.device = torch.device(device)

    @torch.no_grad()
    def infer_task_z(self, agent: EvalAgent) -> dict[str, torch.Tensor]:
        """One z per task from ``z_inference_steps`` reward-labelled B-stream windows.

        Returns:
            task -> z [d].
        """
        labelled = self.buffer.sample_labelled(self.z_inference_steps, self.tasks)
        goal = labelled.goal_window.to(self.device)  # [N, L_B, goal_dim]
        goal_action = labelled.goal_action_window.to(self.device)  # [N, L_B, act_dim]
        rewards = torch.stack([labelled.rewards[task] for task in self.tasks], dim=1)  # [N, K]
        z = agent.infer_z(goal, goal_action, rewards.to(self.device))  # [K, d]: one B pass for all tasks
        return {task: z[k] for k, task in enumerate(self.tasks)}

    @torch.no_grad()
    def evaluate(self, agent: EvalAgent, step: int) -> EvalResult:
        """Infers z for every task and rolls out every episode in one batched environment."""
        start = time.perf_counter()
        task_z = self.infer_task_z(agent)
        env = self.make_env(self.seed + step)
        keys = list(env.episode_keys)
        z = torch.stack([task_z[task] for task, _, _ in keys]).to(self.device)  # [N, d]
        totals = self._rollout(agent, env, z)
        returns: dict[tuple[str, float], list[float]] = {}
        for (task, m, _), total in zip(keys, totals, strict=True):
            returns.setdefault((task, float(m)), []).append(float(total))
        if hasattr(env, "close"):
            env.close()
        return EvalResult(step, returns, time.perf_counter() - start, self.rollout_memory)

    def _rollout(self, agent: EvalAgent, env: Any, z: torch.Tensor) -> np.ndarray:
        """Runs all episodes to the end; returns the summed true rewards [N]."""
        obs = self._tensor(env.reset())  # [N, o]
        n = obs.shape[0]
        totals = np.zeros(n, dtype=np.float64)
        prev_action = torch.zeros(n, self.action_dim, device=self.device)  # [N, a]
        if self.rollout_memory == "carry":
            state = agent.initial_actor_state(n)
        else:
            obs_window = obs[:, None].repeat(1, self.history_length, 1)  # [N, L_F, o]
            if self.pad_with_zeros:
                obs_window[:, :-1] = 0.0
            action_window = torch.zeros(
                n, self.history_length, self.action_dim, device=self.device
            )  # [N, L_F, a]
        t = 0
        while self.episode_length is None or t < self.episode_length:
            if self.rollout_memory == "carry":
                action, state = agent.act_step(obs, prev_action, z, state)  # [N, a]
            else:
                action = agent.act(obs_window, action_window, z)  # [N, a]
            next_obs, reward, done = env.step(action.detach().cpu().numpy().astype(np.float32))
            totals += np.asarray(reward, dtype=np.float64)
            t += 1
            if np.all(done):
                break
            obs, prev_action = self._tensor(next_obs), action.to(self.device, torch.float32)
            if self.rollout_memory != "carry":
                obs_window = torch.cat([obs_window[:, 1:], obs[:, None]], dim=1)  # [N, L_F, o]
                action_window = torch.cat([action_window[:, 1:], prev_action[:, None]], dim=1)  # [N, L_F, a]
        return totals

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)
