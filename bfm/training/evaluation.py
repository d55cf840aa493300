"""Zero-shot evaluation (docs/training.md).

For every task, z is inferred once from reward-labelled goal-stream windows of the training
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

from bfm import envs
from bfm.envs.prompts import GoalReward

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

    # Goal prompts only (``agents.FBAgent.goal_z``, ``agents.HILPAgent.goal_z``).
    goal_needs_state: bool

    def goal_z(
        self,
        goal_window: torch.Tensor,
        goal_action_window: torch.Tensor,
        window: torch.Tensor | None = None,
        action_window: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


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
        details: per (goal prompt, multiplier) more per-episode numbers (``min_distance``,
            ``final_distance``: the posture distance to the goal).
    """

    step: int
    returns: dict[tuple[str, float], list[float]]
    seconds: float = 0.0
    rollout_memory: str = "sliding"
    details: dict[tuple[str, float], dict[str, list[float]]] = field(default_factory=dict)
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


def evaluation_seed(seed: int, step: int) -> int:
    """Seed of every draw of the evaluation at ``step`` of a run with ``seed`` (task inference windows)."""
    return int(np.random.SeedSequence([int(seed), int(step), 7]).generate_state(1, np.uint64)[0] >> 1)


class Recorder(Protocol):
    """Receives the rollout's state every step (``Evaluator.evaluate(..., recorder=)``), e.g. to
    keep physics states for a video."""

    def on_step(self, t: int, env: Any, obs: np.ndarray, totals: np.ndarray) -> None: ...


class Evaluator:
    """Runs zero-shot evaluations of an agent against one batched environment set-up.

    Args:
        make_env: ``seed -> envs.BatchedEvalEnv`` for every task, multiplier and rollout; it must
            expose ``episode_keys`` (list of (task, multiplier, rollout)), ``reset()`` and
            ``step(action)``.
        buffer: the training buffer; ``sample_labelled(n, tasks, seed)`` provides task inference
            data (and ``physics_rows`` the states to label with a prompt's reward).
        tasks: evaluation tasks: names of built-in tasks, or prompts (``envs.prompts``): a
            ``FeatureReward`` is inferred like a task from the windows labelled with its reward; a
            ``GoalReward`` (with its ``window`` / ``action_window``) takes the agent's ``goal_z``.
        history_length: L_F of the policy's sliding window.
        action_dim: action dimension.
        z_inference_steps: labelled windows per task inference.
        rollout_memory: ``sliding`` or ``carry``.
        episode_length: environment steps per episode (None: until the environment says done).
        pad_with_zeros: pad the sliding window's pre-episode slots with zero observations (as the
            buffer does with ``pad_with_zeros``) instead of repeating the first observation.
        seed: base seed; the evaluation at ``step`` draws its environments from ``seed + step``
            and its task inference windows from ``evaluation_seed(seed, step)``, so it is a
            function of the weights, the seed and the step alone (resumed runs, other evaluation
            cadences and later re-evaluations of a checkpoint agree).
        device: device of the agent.
        backward_history_length: L_B (windows of the current state for goal-conditioned z).
    """

    def __init__(
        self,
        make_env: Any,
        buffer: Any,
        tasks: list[Any],
        history_length: int,
        action_dim: int,
        z_inference_steps: int,
        rollout_memory: str = "sliding",
        episode_length: int | None = None,
        pad_with_zeros: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        backward_history_length: int = 1,
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
        self.backward_history_length = backward_history_length

    @staticmethod
    def _name(task: Any) -> str:
        return task if isinstance(task, str) else task.name

    @torch.no_grad()
    def infer_task_z(self, agent: EvalAgent, step: int = 0) -> dict[str, torch.Tensor]:
        """One z per task or reward prompt from ``z_inference_steps`` reward-labelled goal-stream
        windows (drawn from ``evaluation_seed(seed, step)``), and per goal prompt from
        ``agent.goal_z`` (goals whose z follows the state, HILP's, are left out: see ``_rollout``).

        Returns:
            name -> z [d].
        """
        labelled_tasks = [t for t in self.tasks if not isinstance(t, GoalReward)]
        out: dict[str, torch.Tensor] = {}
        if labelled_tasks:
            names = [t for t in labelled_tasks if isinstance(t, str)]
            labelled = self.buffer.sample_labelled(
                self.z_inference_steps, names, evaluation_seed(self.seed, step)
            )
            goal = labelled.goal_window.to(self.device)  # [N, L_B, goal_dim]
            goal_action = labelled.goal_action_window.to(self.device)  # [N, L_B, act_dim]
            columns = [self._labels(task, labelled).to(self.device) for task in labelled_tasks]
            rewards = torch.stack(columns, dim=1)  # [N, K]
            z = agent.infer_z(goal, goal_action, rewards.to(self.device))  # [K, d]: one B pass for all tasks
            out.update({self._name(task): z[k] for k, task in enumerate(labelled_tasks)})
        for task in self.tasks:
            if isinstance(task, GoalReward) and not agent.goal_needs_state:
                window, action_window = self._goal_windows(task)
                out[task.name] = agent.goal_z(window, action_window)[0]
        return out

    def _labels(self, task: Any, labelled: Any) -> torch.Tensor:
        """Rewards [N] of the labelled windows' states: stored for built-in tasks, computed from
        the stored physics states for a prompt."""
        if isinstance(task, str):
            return labelled.rewards[task]
        states, multipliers = self.buffer.physics_rows(labelled.index)  # [N, P], [N]
        features = np.empty((len(states), len(envs.FEATURES[task.domain])))
        for m in np.unique(multipliers):
            rows = multipliers == m
            features[rows] = envs.state_features(task.domain, states[rows], float(m))
        return torch.from_numpy(task(features).astype(np.float32))  # stored rewards are float32 too

    def _goal_windows(self, task: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(task.window, dtype=torch.float32, device=self.device),
            torch.as_tensor(task.action_window, dtype=torch.float32, device=self.device),
        )

    @torch.no_grad()
    def evaluate(self, agent: EvalAgent, step: int, recorder: Recorder | None = None) -> EvalResult:
        """Infers z for every task and rolls out every episode in one batched environment."""
        start = time.perf_counter()
        task_z = self.infer_task_z(agent, step)
        env = self.make_env(self.seed + step)
        keys = list(env.episode_keys)
        width = getattr(getattr(agent, "config", None), "z_dim", None) or agent_z_dim(task_z)
        z = torch.stack(  # [N, d]; rows of state-dependent goals are filled in at every step
            [
                task_z[task] if task in task_z else torch.zeros(width, device=self.device)
                for task, _, _ in keys
            ]
        ).to(self.device)
        goals = self._state_goals(agent, keys)
        totals, details = self._rollout(agent, env, z, goals, recorder)
        returns: dict[tuple[str, float], list[float]] = {}
        for (task, m, _), total in zip(keys, totals, strict=True):
            returns.setdefault((task, float(m)), []).append(float(total))
        if hasattr(env, "close"):
            env.close()
        return EvalResult(step, returns, time.perf_counter() - start, self.rollout_memory, details)

    def _state_goals(self, agent: EvalAgent, keys: list[tuple[str, float, int]]) -> dict[str, Any]:
        """Goal prompts by name whose z depends on the current state (recomputed every step)."""
        if not any(isinstance(t, GoalReward) for t in self.tasks) or not agent.goal_needs_state:
            return {}
        return {t.name: t for t in self.tasks if isinstance(t, GoalReward)}

    def _rollout(
        self,
        agent: EvalAgent,
        env: Any,
        z: torch.Tensor,
        state_goals: dict[str, Any] | None = None,
        recorder: Recorder | None = None,
    ) -> tuple[np.ndarray, dict[tuple[str, float], dict[str, list[float]]]]:
        """Runs all episodes to the end; returns the summed true rewards [N] and goal distances."""
        first = env.reset()
        obs = self._tensor(first)  # [N, o]
        n = obs.shape[0]
        totals = np.zeros(n, dtype=np.float64)
        goal_rows = self._goal_rows(env)
        distances = {name: [] for name in goal_rows}
        goals = {t.name: t for t in self.tasks if isinstance(t, GoalReward)}  # looked up once, not per step
        state_goal_rows = [(goal_rows[name], task) for name, task in (state_goals or {}).items()]
        window_length = self.history_length
        if state_goal_rows:
            window_length = max(window_length, self.backward_history_length)
        prev_action = torch.zeros(n, self.action_dim, device=self.device)  # [N, a]
        state = agent.initial_actor_state(n) if self.rollout_memory == "carry" else None
        obs_window = obs[:, None].repeat(1, window_length, 1)  # [N, W, o]
        if self.pad_with_zeros:
            obs_window[:, :-1] = 0.0
        action_window = torch.zeros(n, window_length, self.action_dim, device=self.device)  # [N, W, a]
        self._observe_goals(env, goal_rows, goals, distances)
        if recorder is not None:
            recorder.on_step(0, env, first, totals)
        t = 0
        while self.episode_length is None or t < self.episode_length:
            if state_goal_rows:
                z = self._update_state_goal_z(agent, z, state_goal_rows, obs_window, action_window)
            if self.rollout_memory == "carry":
                action, state = agent.act_step(obs, prev_action, z, state)  # [N, a]
            else:
                L = self.history_length
                action = agent.act(obs_window[:, -L:], action_window[:, -L:], z)  # [N, a]
            next_obs, reward, done = env.step(action.detach().cpu().numpy().astype(np.float32))
            totals += np.asarray(reward, dtype=np.float64)
            t += 1
            self._observe_goals(env, goal_rows, goals, distances)
            if recorder is not None:
                recorder.on_step(t, env, next_obs, totals)
            if np.all(done):
                break
            obs, prev_action = self._tensor(next_obs), action.to(self.device, torch.float32)
            obs_window = torch.cat([obs_window[:, 1:], obs[:, None]], dim=1)  # [N, W, o]
            action_window = torch.cat([action_window[:, 1:], prev_action[:, None]], dim=1)  # [N, W, a]
        return totals, self._goal_details(env, goal_rows, distances)

    def _goal_rows(self, env: Any) -> dict[str, np.ndarray]:
        """Episode rows [n] of every goal prompt."""
        goals = {t.name for t in self.tasks if isinstance(t, GoalReward)}
        keys = env.episode_keys
        return {name: np.array([i for i, k in enumerate(keys) if k[0] == name]) for name in goals}

    def _observe_goals(
        self,
        env: Any,
        goal_rows: dict[str, np.ndarray],
        goals: dict[str, GoalReward],
        distances: dict[str, list],
    ) -> None:
        for name, rows in goal_rows.items():
            distances[name].append(goals[name].distance(env.raw_observation[rows]))  # [n]

    def _goal_details(
        self, env: Any, goal_rows: dict[str, np.ndarray], distances: dict[str, list]
    ) -> dict[tuple[str, float], dict[str, list[float]]]:
        """Per goal prompt and multiplier: each episode's smallest and final posture distance."""
        details: dict[tuple[str, float], dict[str, list[float]]] = {}
        for name, rows in goal_rows.items():
            d = np.stack(distances[name], axis=1)  # [n, T+1]
            for row, per_step in zip(rows, d, strict=True):
                entry = details.setdefault((name, float(env.episode_keys[row][1])), {})
                entry.setdefault("min_distance", []).append(float(per_step.min()))
                entry.setdefault("final_distance", []).append(float(per_step[-1]))
        return details

    def _update_state_goal_z(
        self,
        agent: EvalAgent,
        z: torch.Tensor,
        state_goal_rows: list[tuple[np.ndarray, Any]],
        obs_window: torch.Tensor,
        action_window: torch.Tensor,
    ) -> torch.Tensor:
        """z of state-dependent goal rows from the current windows (the last L_B rows, with the
        action taken at each row: the next row's previous action, zeros for the current one)."""
        z = z.clone()
        L = self.backward_history_length
        taken = torch.cat([action_window[:, 1:], torch.zeros_like(action_window[:, :1])], dim=1)  # [N, W, a]
        for rows, task in state_goal_rows:
            index = torch.as_tensor(rows, device=self.device)
            goal, goal_action = self._goal_windows(task)
            z[index] = agent.goal_z(goal, goal_action, obs_window[index, -L:], taken[index, -L:])  # [n, d]
        return z

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)


def agent_z_dim(task_z: dict[str, torch.Tensor]) -> int:
    """The width of z (from any inferred z; 1 when only state-dependent goals were asked)."""
    return next(iter(task_z.values())).shape[-1] if task_z else 1
