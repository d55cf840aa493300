"""Task rewards as pure functions of physics, and batch relabelling of stored states.

Every reward here is a function of a few kinematic quantities ("features") of the state:
positions, orientations, subtree centre-of-mass velocity and angular momentum, the torso
velocimeter. ``FeatureReader`` reads them from MuJoCo data with precomputed flat indices, and
``rewards_from_features`` evaluates any set of tasks on a whole [N, k] feature array at once with
dm_control's own ``tolerance`` function, so the standard tasks give dm_control's reward.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Sequence

import mujoco
import numpy as np
from dm_control.utils.rewards import tolerance

from bfm.envs.physics import make_physics
from bfm.envs.specs import DOMAINS, check_domain, check_multiplier, check_task

logger = logging.getLogger(__name__)

INF = float("inf")
WALKER_STAND_HEIGHT = 1.2
WALKER_SPEEDS = {"walk": 1.0, "run": 8.0}
WALKER_SPIN_SPEED = 5.0
CHEETAH_SPEEDS = {"run": 10.0, "walk": 2.0}
QUADRUPED_SPEEDS = {"walk": 0.5, "run": 5.0, "roll": 0.5, "roll_fast": 5.0}
QUADRUPED_JUMP_HEIGHT = 1.0
QUADRUPED_ESCAPE_ANGLE = 20.0

# Feature names per domain, in column order of the feature arrays.
FEATURES: dict[str, tuple[str, ...]] = {
    "walker": ("torso_height", "torso_upright", "horizontal_velocity", "angmomentum"),
    "cheetah": ("speed",),
    "quadruped": (
        "torso_upright",
        "velocity_x",
        "velocity_y",
        "velocity_z",
        "com_height",
        "workspace_x",
        "workspace_y",
        "workspace_z",
        "terrain_size",
    ),
}


def _sensor_index(model: mujoco.MjModel, name: str, offset: int = 0) -> int:
    return int(model.sensor_adr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SENSOR, name)]) + offset


def _feature_spec(domain: str, model: mujoco.MjModel) -> list[tuple[str, int]]:
    """(data field, flat index) of every feature of ``domain``, in FEATURES order."""
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    if domain == "walker":
        return [
            ("xpos", 3 * torso + 2),
            ("xmat", 9 * torso + 8),
            ("sensordata", _sensor_index(model, "torso_subtreelinvel", 0)),
            ("subtree_angmom", 3 * torso + 1),
        ]
    if domain == "cheetah":
        return [("sensordata", _sensor_index(model, "torso_subtreelinvel", 0))]
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "workspace")
    return [
        ("xmat", 9 * torso + 8),
        *[("sensordata", _sensor_index(model, "velocimeter", k)) for k in range(3)],
        ("sensordata", _sensor_index(model, "center_of_mass", 2)),
        *[("site_xpos", 3 * site + k) for k in range(3)],
    ]


class FeatureReader:
    """Reads a domain's reward features from MuJoCo data with precomputed indices.

    Args:
        domain: walker, cheetah or quadruped.
        model: the compiled MjModel (``physics.model.ptr``) the data belongs to.
    """

    def __init__(self, domain: str, model: mujoco.MjModel):
        check_domain(domain)
        self.domain = domain
        self.spec = _feature_spec(domain, model)
        # Constant features (read from the model, not the state) appended after the state ones.
        self.constants = [float(model.hfield_size[0, 0])] if domain == "quadruped" else []
        self.dim = len(FEATURES[domain])

    def bind(self, data: mujoco.MjData) -> Callable[[], list[float]]:
        """Return a no-argument function that reads the current features of ``data``.

        The views are taken once, so each call costs only a few scalar reads.
        """
        views = [(getattr(data, field).reshape(-1), index) for field, index in self.spec]
        constants = self.constants
        return lambda: [view[index] for view, index in views] + constants


def rewards_from_features(domain: str, tasks: Sequence[str], features: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluate task rewards on a batch of feature rows.

    Args:
        domain: walker, cheetah or quadruped.
        tasks: task names of the domain.
        features: float64 [N, k] in ``FEATURES[domain]`` column order.

    Returns:
        task -> float64 rewards [N].
    """
    for task in tasks:
        check_task(domain, task)
    f = np.asarray(features, dtype=np.float64)
    columns = dict(zip(FEATURES[domain], f.T, strict=True))
    reward_fn = {"walker": _walker_rewards, "cheetah": _cheetah_rewards, "quadruped": _quadruped_rewards}
    return {task: reward_fn[domain](task, columns) for task in tasks}


def _linear_ramp(
    x: np.ndarray, target: float, value_at_margin: float, margin: float | None = None
) -> np.ndarray:
    margin = target if margin is None else margin
    return tolerance(
        x, bounds=(target, INF), margin=margin, value_at_margin=value_at_margin, sigmoid="linear"
    )


def _walker_rewards(task: str, c: dict[str, np.ndarray]) -> np.ndarray:
    standing = tolerance(c["torso_height"], bounds=(WALKER_STAND_HEIGHT, INF), margin=WALKER_STAND_HEIGHT / 2)
    upright = (1 + c["torso_upright"]) / 2
    stand_reward = (3 * standing + upright) / 4
    if task == "stand":
        return stand_reward
    if task == "flip":
        move_reward = _linear_ramp(c["angmomentum"], WALKER_SPIN_SPEED, 0.0)
    else:
        speed = WALKER_SPEEDS[task]
        move_reward = _linear_ramp(c["horizontal_velocity"], speed, 0.5, margin=speed / 2)
    return stand_reward * (5 * move_reward + 1) / 6


def _cheetah_rewards(task: str, c: dict[str, np.ndarray]) -> np.ndarray:
    base, _, direction = task.partition("_")
    speed = c["speed"] if direction == "" else -c["speed"]
    return _linear_ramp(speed, CHEETAH_SPEEDS[base], 0.0)


def _quadruped_upright(upright: np.ndarray, deviation_angle: float) -> np.ndarray:
    deviation = np.cos(np.deg2rad(deviation_angle))
    return tolerance(
        upright, bounds=(deviation, INF), sigmoid="linear", margin=1 + deviation, value_at_margin=0
    )


def _quadruped_rewards(task: str, c: dict[str, np.ndarray]) -> np.ndarray:
    if task == "escape":
        workspace = np.stack([c["workspace_x"], c["workspace_y"], c["workspace_z"]], axis=-1)
        distance = np.linalg.norm(workspace, axis=-1)
        size = c["terrain_size"]
        escape = tolerance(
            distance, bounds=(size[0], INF), margin=size[0], value_at_margin=0, sigmoid="linear"
        )
        return _quadruped_upright(c["torso_upright"], QUADRUPED_ESCAPE_ANGLE) * escape
    upright = _quadruped_upright(c["torso_upright"], 0)
    if task == "stand":
        return upright
    if task in ("walk", "run"):
        move = _linear_ramp(c["velocity_x"], QUADRUPED_SPEEDS[task], 0.5)
    elif task == "jump":
        move = _linear_ramp(c["com_height"], QUADRUPED_JUMP_HEIGHT, 0.5)
    else:
        velocity = np.stack([c["velocity_x"], c["velocity_y"], c["velocity_z"]], axis=-1)
        move = _linear_ramp(np.linalg.norm(velocity, axis=-1), QUADRUPED_SPEEDS[task], 0.5)
    return upright * move


def task_reward(domain: str, task: str, physics) -> float:
    """Reward of ``task`` in the current state of a dm_control ``physics`` of ``domain``.

    A pure function of the physics state (kinematics must be up to date, as after a step or
    a reset context).
    """
    check_task(domain, task)
    reader = FeatureReader(domain, physics.model.ptr)
    features = np.asarray([reader.bind(physics.data.ptr)()], dtype=np.float64)
    return float(rewards_from_features(domain, (task,), features)[task][0])


def state_features(domain: str, states: np.ndarray, multiplier: float = 1.0) -> np.ndarray:
    """Reward features of stored states, one MuJoCo state write and forward pass per row.

    Equivalent to writing each row inside ``physics.reset_context()``: the rewards depend only
    on position- and velocity-stage quantities, which ``mj_forward`` recomputes from
    (qpos, qvel) alone, so the reset and the disabled actuation change nothing they read.

    Args:
        domain: walker, cheetah or quadruped.
        states: float [N, physics_dim], the ExORL ``physics`` layout [qpos, qvel, act].
        multiplier: mass/damping multiplier of the model the states come from.

    Returns:
        float64 [N, k] features in ``FEATURES[domain]`` order.
    """
    physics = make_physics(domain, multiplier)
    model, data = physics.model.ptr, physics.data.ptr
    nq, nv, na = model.nq, model.nv, model.na
    qpos, qvel, act = data.qpos, data.qvel, data.act
    read = FeatureReader(domain, model).bind(data)
    out = np.empty((len(states), len(FEATURES[domain])), dtype=np.float64)
    for i, state in enumerate(np.asarray(states, dtype=np.float64)):
        qpos[:] = state[:nq]
        qvel[:] = state[nq : nq + nv]
        if na:
            act[:] = state[nq + nv :]
        mujoco.mj_forward(model, data)
        out[i] = read()
    return out


def _features_chunk(args: tuple[str, np.ndarray, float]) -> np.ndarray:
    return state_features(*args)


def relabel(
    domain: str,
    physics: np.ndarray,
    tasks: Sequence[str] | None = None,
    multiplier: float = 1.0,
    workers: int = 1,
    chunk_size: int = 50_000,
) -> dict[str, np.ndarray]:
    """Relabel stored physics states with task rewards.

    One state write serves every task. With ``workers > 1`` the rows are split into chunks
    evaluated by a spawned process pool (worth it from roughly 10^5 rows: each worker pays
    about a second to import dm_control).

    Args:
        domain: walker, cheetah or quadruped.
        physics: float [N, physics_dim] states [qpos, qvel, act] (ExORL layout); any leading
            shape is accepted and flattened, e.g. [E, T+1, P].
        tasks: task names (default: the domain's evaluation tasks).
        multiplier: mass/damping multiplier of the model that produced the states.
        workers: processes to use (1: in this process).
        chunk_size: rows per pool task.

    Returns:
        task -> float32 rewards with the leading shape of ``physics`` ([N] for [N, P] input).
    """
    info = check_domain(domain)
    tasks = tuple(info.tasks if tasks is None else tasks)
    for task in tasks:
        check_task(domain, task)
    check_multiplier(multiplier)
    if int(workers) < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    states = np.asarray(physics, dtype=np.float64)
    if states.ndim < 1 or states.shape[-1] != info.physics_dim:
        raise ValueError(
            f"{domain} physics states must have last dimension {info.physics_dim}, got shape {states.shape}"
        )
    lead = states.shape[:-1]
    flat = states.reshape(-1, info.physics_dim)
    if workers > 1 and len(flat) > chunk_size:
        chunks = [(domain, flat[i : i + chunk_size], multiplier) for i in range(0, len(flat), chunk_size)]
        logger.info("relabelling %d %s states with %d workers", len(flat), domain, workers)
        with mp.get_context("spawn").Pool(int(workers)) as pool:
            features = np.concatenate(pool.map(_features_chunk, chunks))
    else:
        features = state_features(domain, flat, multiplier)
    rewards = rewards_from_features(domain, tasks, features)
    return {task: r.astype(np.float32).reshape(lead) for task, r in rewards.items()}


__all__ = [
    "DOMAINS",
    "FEATURES",
    "FeatureReader",
    "relabel",
    "rewards_from_features",
    "state_features",
    "task_reward",
]
