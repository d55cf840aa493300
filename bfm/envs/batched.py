"""Batched evaluation environment: N independent episodes stepped together.

Each episode is a dm_control environment from ``make_env`` with its own seed, so its
trajectory equals stepping that environment alone. The hot loop bypasses dm_control's
per-step Python (task callbacks, named indexing, observation dicts): for each episode it sets
the control and calls ``physics.step`` (dm_control's own stepping, with its invalid-state
check), then copies the observation and the reward features out of MuJoCo's arrays with
indices precomputed at construction. Rewards of all episodes are then computed in one
vectorised call per task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mujoco
import numpy as np
from dm_control.mujoco.wrapper.mjbindings import enums

from bfm.envs.dmc import flat_obs, make_env
from bfm.envs.physics import make_physics
from bfm.envs.pomdp import ObsTransform
from bfm.envs.rewards import FEATURES, FeatureReader, rewards_from_features
from bfm.envs.specs import check_domain, check_multiplier, check_task

logger = logging.getLogger(__name__)


def episode_seed(seed: int, index: int) -> int:
    """Seed of episode ``index`` of a BatchedEvalEnv built with ``seed`` (for one-by-one replays)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _sensor_indices(model: mujoco.MjModel, *sensor_types: int) -> np.ndarray:
    """Flat sensordata indices of every sensor of the given types, in declaration order."""
    ids = np.flatnonzero(np.isin(model.sensor_type, sensor_types))
    return np.concatenate(
        [np.arange(model.sensor_adr[i], model.sensor_adr[i] + model.sensor_dim[i]) for i in ids]
    )


def _observation_segments(domain: str, model: mujoco.MjModel) -> list[tuple[str, np.ndarray, bool]]:
    """(data field, flat indices, apply arcsinh) per observation block, in dm_control dict order."""
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    if domain == "walker":
        bodies = np.arange(1, model.nbody)
        orientations = np.stack([9 * bodies, 9 * bodies + 2], axis=1).ravel()  # xmat[1:, [xx, xz]]
        return [
            ("xmat", orientations, False),
            ("xpos", np.array([3 * torso + 2]), False),
            ("qvel", np.arange(model.nv), False),
        ]
    if domain == "cheetah":
        return [("qpos", np.arange(1, model.nq), False), ("qvel", np.arange(model.nv), False)]
    hinges = np.flatnonzero(model.jnt_type == enums.mjtJoint.mjJNT_HINGE)
    velocimeter = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SENSOR, "velocimeter")
    adr = model.sensor_adr[velocimeter]
    return [
        ("qpos", model.jnt_qposadr[hinges], False),
        ("qvel", model.jnt_dofadr[hinges], False),
        ("act", np.arange(model.na), False),
        ("sensordata", np.arange(adr, adr + 3), False),
        ("xmat", np.array([9 * torso + 8]), False),
        (
            "sensordata",
            _sensor_indices(model, enums.mjtSensor.mjSENS_GYRO, enums.mjtSensor.mjSENS_ACCELEROMETER),
            False,
        ),
        (
            "sensordata",
            _sensor_indices(model, enums.mjtSensor.mjSENS_FORCE, enums.mjtSensor.mjSENS_TORQUE),
            True,
        ),
    ]


class BatchedEvalEnv:
    """N = len(tasks) * len(multipliers) * rollouts episodes stepped together.

    Episode i has key ``episode_keys[i] = (task, multiplier, rollout)`` (task-major order) and
    seed ``episode_seeds[i] = episode_seed(seed, i)``: it reproduces
    ``make_env(domain, task, episode_seeds[i], multiplier)`` stepped alone with the same actions
    (after the same number of resets). Returned observations go through ``transform`` with a
    generator seeded from ``seed``, freshly at every step; rewards are the true task rewards of
    the physics after each step.

    Args:
        domain: walker, cheetah or quadruped.
        tasks: task names (each from ``DOMAINS[domain].reward_tasks``) or prompts
            (``envs.prompts``: objects with a ``name`` and ``__call__(features [n, k], observation
            [n, obs_dim]) -> rewards [n]``, given the reward features and uncorrupted observations).
        multipliers: mass/damping multipliers (each > 0).
        rollouts: episodes per (task, multiplier).
        transform: observation transform of the obs stream; None = identity.
        seed: run seed for the episode seeds and the transform's randomness.
    """

    def __init__(
        self,
        domain: str,
        tasks: Sequence[str],
        multipliers: Sequence[float],
        rollouts: int,
        transform: ObsTransform | None = None,
        seed: int = 0,
    ):
        info = check_domain(domain)
        multipliers = [check_multiplier(m) for m in multipliers]
        self.prompts = {t.name: t for t in tasks if not isinstance(t, str)}  # name -> reward function
        tasks = [t if isinstance(t, str) else t.name for t in tasks]
        if not tasks or not multipliers:
            raise ValueError("BatchedEvalEnv needs at least one task and one multiplier")
        if len(set(tasks)) < len(tasks):
            raise ValueError(f"task and prompt names must differ, got {tasks}")
        for task in tasks:
            if task not in self.prompts:
                check_task(domain, task)
        if int(rollouts) < 1:
            raise ValueError(f"rollouts must be an integer >= 1, got {rollouts!r}")
        self.domain, self.info = domain, info
        self.transform = transform if transform is not None else ObsTransform(domain)
        if self.transform.obs_dim != info.obs_dim:
            raise ValueError(f"transform is for {self.transform.domain!r}, not {domain!r}")
        self.episode_keys = [(t, m, r) for t in tasks for m in multipliers for r in range(int(rollouts))]
        self.episode_seeds = [episode_seed(seed, i) for i in range(len(self.episode_keys))]
        self.num_envs = len(self.episode_keys)
        self.obs_dim, self.action_dim = self.transform.out_dim, info.action_dim
        self._rng = np.random.default_rng(seed)
        self._build()
        self._t = 0
        self._done = True

    def _build(self) -> None:
        models = {m: make_physics(self.domain, m) for _, m, _ in self.episode_keys}
        # A prompt's episodes start like the domain's first task (its initial-state distribution).
        start_task = {t: self.info.tasks[0] if t in self.prompts else t for t, _, _ in self.episode_keys}
        self.envs = [
            make_env(self.domain, start_task[task], s, m, physics=models[m].copy(share_model=True))
            for (task, m, _), s in zip(self.episode_keys, self.episode_seeds, strict=True)
        ]
        self.physics = [env.physics for env in self.envs]
        model = self.physics[0].model.ptr
        spec = self.envs[0]._env.action_spec()  # the unscaled actuator ranges
        self._ctrl_min, self._ctrl_scale = spec.minimum, (spec.maximum - spec.minimum) / 2.0
        self._n_sub_steps = self.envs[0]._env._n_sub_steps
        segments = _observation_segments(self.domain, model)
        self._arcsinh = [asinh for _, _, asinh in segments]
        bounds = np.cumsum([0] + [len(idx) for _, idx, _ in segments])
        self._slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._obs_views = [
            [(getattr(p.data.ptr, field).reshape(-1), idx) for field, idx, _ in segments]
            for p in self.physics
        ]
        readers = {id(p.model.ptr): FeatureReader(self.domain, p.model.ptr) for p in self.physics}
        self._feature_reads = [readers[id(p.model.ptr)].bind(p.data.ptr) for p in self.physics]
        self._task_rows = {
            t: np.array([i for i, k in enumerate(self.episode_keys) if k[0] == t])
            for t in dict.fromkeys(k[0] for k in self.episode_keys)
        }
        self._raw = np.empty((self.num_envs, self.info.obs_dim), dtype=np.float32)
        self._features = np.empty((self.num_envs, len(FEATURES[self.domain])), dtype=np.float64)

    def reset(self) -> np.ndarray:
        """Start new episodes (each env draws its next initial state). Returns obs [N, obs_dim]."""
        for i, env in enumerate(self.envs):
            self._raw[i] = flat_obs(env.reset())
        self._t, self._done = 0, False
        return self.transform(self._raw, self._rng)

    @property
    def control_timestep(self) -> float:
        """Seconds of simulated time per environment step."""
        return float(self.physics[0].timestep() * self._n_sub_steps)

    @property
    def raw_observation(self) -> np.ndarray:
        """The uncorrupted observations [N, obs_dim] of the last reset or step (a view: copy to keep)."""
        return self._raw

    def physics_states(self, episodes: Sequence[int]) -> np.ndarray:
        """Physics states [n, P] ([qpos, qvel, act], the dataset layout) of the given episodes, for replays."""
        return np.stack([self.physics[i].get_state() for i in episodes])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Apply actions [N, action_dim] in [-1, 1] to every episode.

        Returns:
            obs [N, obs_dim] float32 (transformed), reward [N] float32 (true task reward of the
            new state), done (True once the episodes have run ``episode_length`` steps).
        """
        if self._done:
            raise RuntimeError("episodes are over (or never started): call reset() first")
        action = np.asarray(action)
        if action.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"action must have shape {(self.num_envs, self.action_dim)}, got {action.shape}")
        # Same arithmetic as dm_control's action-scale wrapper, for all rows at once.
        ctrl = self._ctrl_min + self._ctrl_scale * (action - np.array(-1.0))  # [N, act]
        raw, features, slices, asinh = self._raw, self._features, self._slices, self._arcsinh
        n_sub = self._n_sub_steps
        for i, physics in enumerate(self.physics):
            physics.set_control(ctrl[i])
            physics.step(n_sub)
            row = raw[i]
            for (view, idx), sl, a in zip(self._obs_views[i], slices, asinh, strict=True):
                row[sl] = np.arcsinh(view[idx]) if a else view[idx]
            features[i] = self._feature_reads[i]()
        reward = np.empty(self.num_envs, dtype=np.float32)
        for task, rows in self._task_rows.items():
            if task in self.prompts:
                reward[rows] = self.prompts[task](features[rows], raw[rows])
            else:
                reward[rows] = rewards_from_features(self.domain, (task,), features[rows])[task]
        self._t += 1
        self._done = self._t >= self.info.episode_length
        return self.transform(raw, self._rng), reward, self._done

    def close(self) -> None:
        """Release the environments."""
        self.envs, self.physics = [], []
