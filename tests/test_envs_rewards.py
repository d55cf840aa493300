"""Task rewards, relabelling and changed dynamics."""

import numpy as np
import pytest
from dm_control import suite

from bfm.envs import DOMAINS, STANDARD_TASKS, make_env, make_physics, relabel, state_features, task_reward

STEPS = 60


def _rollout(env, steps, seed):
    """Random-action rollout; returns (stored states [T, P], online rewards [T], physics list)."""
    rng = np.random.default_rng(seed)
    spec = env.action_spec()
    env.reset()
    states, rewards = [], []
    for _ in range(steps):
        ts = env.step(rng.uniform(spec.minimum, spec.maximum))
        states.append(env.physics.get_state())
        rewards.append(ts.reward)
    return np.asarray(states), np.asarray(rewards)


@pytest.mark.parametrize("domain,task", [(d, t) for d, ts in STANDARD_TASKS.items() for t in ts])
def test_standard_rewards_equal_dm_control(domain, task):
    env = suite.load(domain, task, task_kwargs={"random": 3})
    rng = np.random.default_rng(0)
    spec = env.action_spec()
    env.reset()
    for _ in range(STEPS):
        ts = env.step(rng.uniform(spec.minimum, spec.maximum))
        assert task_reward(domain, task, env.physics) == ts.reward
    # Our environment of the same task gives the same rewards too.
    ours = make_env(domain, task, seed=3)
    states, online = _rollout(ours, STEPS, seed=1)
    np.testing.assert_array_equal(relabel(domain, states, [task])[task], online.astype(np.float32))


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_relabel_equals_online_for_every_task(domain):
    tasks = DOMAINS[domain].reward_tasks
    env = make_env(domain, tasks[0], seed=5)
    rng = np.random.default_rng(5)
    env.reset()
    states, online = [], {t: [] for t in tasks}
    for _ in range(STEPS):
        env.step(rng.uniform(-1, 1, DOMAINS[domain].action_dim))
        states.append(env.physics.get_state())
        for t in tasks:
            online[t].append(task_reward(domain, t, env.physics))
    states = np.asarray(states)
    assert states.shape[1] == DOMAINS[domain].physics_dim
    labelled = relabel(domain, states, tasks)
    for t in tasks:
        assert labelled[t].dtype == np.float32 and labelled[t].shape == (STEPS,)
        np.testing.assert_array_equal(labelled[t], np.float32(online[t]), err_msg=f"{domain} {t}")
    # Leading shape is kept, default tasks are the evaluation tasks.
    batched = relabel(domain, states.reshape(3, STEPS // 3, -1))
    assert set(batched) == set(DOMAINS[domain].tasks)
    np.testing.assert_array_equal(batched[tasks[0]].ravel(), labelled[tasks[0]])


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_custom_task_env_reward_is_task_reward(domain):
    for task in DOMAINS[domain].reward_tasks:
        env = make_env(domain, task, seed=2)
        states, online = _rollout(env, 5, seed=2)
        np.testing.assert_array_equal(relabel(domain, states, [task])[task], online.astype(np.float32))


def _state(domain, qpos=None, qvel=None):
    physics = make_physics(domain)
    s = np.zeros(DOMAINS[domain].physics_dim)
    nq = physics.model.nq
    s[:nq] = physics.model.qpos0
    for k, v in (qpos or {}).items():
        s[k] = v
    for k, v in (qvel or {}).items():
        s[nq + k] = v
    return s


def test_cheetah_backward_velocity():
    # qvel[0] = rootx; all joints at rest, so the whole-body velocity is the root's.
    states = np.stack(
        [
            _state("cheetah", qvel={0: -5.0}),
            _state("cheetah", qvel={0: 1.0}),
            _state("cheetah", qvel={0: -20.0}),
        ]
    )
    r = relabel("cheetah", states)
    np.testing.assert_allclose(r["run_backward"], [0.5, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(r["walk_backward"], [1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(r["walk"], [0.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(r["run"], [0.0, 0.1, 0.0], atol=1e-6)


def test_walker_flip_spin_direction():
    # qvel[2] = rooty pitch rate; the standing pose (qpos0) has torso height 1.3 > 1.2.
    states = np.stack([_state("walker"), _state("walker", qvel={2: 50.0}), _state("walker", qvel={2: -50.0})])
    r = relabel("walker", states, ["stand", "flip"])
    np.testing.assert_allclose(r["stand"][0], 1.0, atol=1e-6)
    feats = state_features("walker", states)
    assert feats[1, 3] > 5 and feats[2, 3] < -5  # angular momentum about y follows the spin
    np.testing.assert_allclose(r["flip"], [1 / 6, r["stand"][1], r["stand"][2] / 6], atol=1e-6)


def test_quadruped_constructed_states():
    upright = _state("quadruped", qpos={2: 0.6})
    flipped = _state("quadruped", qpos={2: 0.6, 3: 0.0, 4: 1.0})  # quaternion (0, 1, 0, 0): upside down
    high = _state("quadruped", qpos={2: 3.0})
    rolling = _state("quadruped", qpos={2: 0.6}, qvel={0: 3.0, 1: 4.0})  # speed 5 in the torso frame
    far = _state("quadruped", qpos={0: 40.0, 2: 0.6})
    r = relabel(
        "quadruped", np.stack([upright, flipped, high, rolling, far]), DOMAINS["quadruped"].reward_tasks
    )
    np.testing.assert_allclose(r["stand"], [1, 0, 1, 1, 1], atol=1e-6)
    assert r["jump"][2] == pytest.approx(1.0) and 0.5 < r["jump"][0] < 1.0
    np.testing.assert_allclose(r["roll"][[0, 3]], [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(r["roll_fast"][[0, 3]], [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(r["walk"][3], 1.0, atol=1e-6)
    np.testing.assert_allclose(r["run"][3], 0.5 + 0.1 * 3.0, atol=1e-6)
    assert r["escape"][4] == pytest.approx(1.0) and r["escape"][0] < 0.05 and r["escape"][1] == 0


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_multiplier_scales_masses_and_dampings(domain):
    base, heavy = make_physics(domain), make_physics(domain, 2.5)
    np.testing.assert_allclose(heavy.model.body_mass, 2.5 * base.model.body_mass)
    np.testing.assert_allclose(heavy.model.dof_damping, 2.5 * base.model.dof_damping)
    np.testing.assert_allclose(heavy.model.body_subtreemass, 2.5 * base.model.body_subtreemass)
    assert base.model.body_mass.sum() > 0 and base.model.dof_damping.sum() > 0
    env = make_env(domain, DOMAINS[domain].tasks[0], seed=0, multiplier=0.5)
    np.testing.assert_allclose(env.physics.model.body_mass, 0.5 * base.model.body_mass)
    # Same actions, different dynamics.
    a, _ = _rollout(make_env(domain, DOMAINS[domain].tasks[0], seed=0), 20, seed=0)
    b, _ = _rollout(env, 20, seed=0)
    assert not np.allclose(a[-1], b[-1])


def test_multiplier_keeps_kinematics_consistent():
    env = make_env("walker", "flip", seed=0)
    states, _ = _rollout(env, 20, seed=0)
    f1, f2 = state_features("walker", states), state_features("walker", states, multiplier=2.0)
    np.testing.assert_allclose(f2[:, :3], f1[:, :3], rtol=1e-9, atol=1e-12)  # height, upright, COM velocity
    # Angular momentum grows with the masses (not exactly 2x: inertias are not scaled, as in the reference).
    assert np.abs(f2[:, 3]).sum() > 1.2 * np.abs(f1[:, 3]).sum()


def test_relabel_workers_equal_serial():
    env = make_env("cheetah", "run", seed=0)
    states, _ = _rollout(env, 40, seed=0)
    serial = relabel("cheetah", states)
    pooled = relabel("cheetah", states, workers=2, chunk_size=15)
    for t in serial:
        np.testing.assert_array_equal(serial[t], pooled[t])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: relabel("hopper", np.zeros((2, 18))), "valid domains: walker, cheetah, quadruped"),
        (lambda: relabel("walker", np.zeros((2, 18)), ["dance"]), "valid tasks: stand, walk, run, flip"),
        (lambda: relabel("walker", np.zeros((2, 17))), "last dimension 18"),
        (
            lambda: relabel("walker", np.zeros((2, 18)), multiplier=0.0),
            "multiplier must be a finite number > 0",
        ),
        (lambda: make_env("walker", "run", 0, multiplier=-1.0), "multiplier must be a finite number > 0"),
        (lambda: make_env("cheetah", "flip", 0), "valid tasks: run, run_backward, walk, walk_backward"),
        (lambda: relabel("walker", np.zeros((2, 18)), workers=0), "workers must be an integer >= 1"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
