"""BatchedEvalEnv: equal to stepping the environments one by one with the same seeds."""

import numpy as np
import pytest

from bfm.envs import DOMAINS, BatchedEvalEnv, flat_obs, make_env, make_transform

STEPS = 25


def _replay(domain, env, actions, resets=1):
    """Step every episode alone in its own make_env; returns obs [T, N, o] and rewards [T, N]."""
    obs, rewards = (
        np.zeros((*actions.shape[:2], DOMAINS[domain].obs_dim), np.float32),
        np.zeros(actions.shape[:2]),
    )
    for i, (task, m, _) in enumerate(env.episode_keys):
        single = make_env(domain, task, env.episode_seeds[i], m)
        for _ in range(resets):
            single.reset()
        for t in range(len(actions)):
            ts = single.step(actions[t, i])
            obs[t, i], rewards[t, i] = flat_obs(ts), ts.reward
    return obs, rewards


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_batched_equals_one_by_one(domain):
    tasks = DOMAINS[domain].tasks[:3]
    env = BatchedEvalEnv(domain, tasks, [1.0, 1.5], 2, None, seed=11)
    assert env.num_envs == len(tasks) * 2 * 2
    assert env.episode_keys[:3] == [(tasks[0], 1.0, 0), (tasks[0], 1.0, 1), (tasks[0], 1.5, 0)]
    actions = (
        np.random.default_rng(0).uniform(-1, 1, (STEPS, env.num_envs, env.action_dim)).astype(np.float32)
    )
    first = env.reset()
    assert first.shape == (env.num_envs, DOMAINS[domain].obs_dim) and first.dtype == np.float32
    steps = [env.step(a) for a in actions]
    obs = np.stack([s[0] for s in steps])
    rewards = np.stack([s[1] for s in steps])
    assert rewards.dtype == np.float32 and not any(s[2] for s in steps)
    want_obs, want_rewards = _replay(domain, env, actions)
    np.testing.assert_array_equal(obs, want_obs)
    np.testing.assert_array_equal(rewards, want_rewards.astype(np.float32))


def test_second_reset_draws_new_episodes_like_single_envs():
    env = BatchedEvalEnv("cheetah", ["run", "walk_backward"], [1.0], 2, None, seed=4)
    a = env.reset()
    b = env.reset()
    assert not np.array_equal(a, b)
    actions = np.random.default_rng(1).uniform(-1, 1, (5, env.num_envs, 6))
    obs = np.stack([env.step(x)[0] for x in actions])
    np.testing.assert_array_equal(obs, _replay("cheetah", env, actions, resets=2)[0])


def test_transform_applied_with_seeded_rng():
    transform = make_transform("noise", "walker", noise_std=0.3)
    raw_env = BatchedEvalEnv("walker", ["stand"], [1.0], 3, None, seed=2)
    env = BatchedEvalEnv("walker", ["stand"], [1.0], 3, transform, seed=2)
    rng = np.random.default_rng(2)
    np.testing.assert_array_equal(env.reset(), transform(raw_env.reset(), rng))
    action = np.zeros((3, 6), np.float32)
    np.testing.assert_array_equal(env.step(action)[0], transform(raw_env.step(action)[0], rng))
    occluded = BatchedEvalEnv("walker", ["stand"], [1.0], 1, make_transform("occluded", "walker"), seed=0)
    assert occluded.reset().shape == (1, 15) and occluded.obs_dim == 15


def test_done_after_episode_length():
    env = BatchedEvalEnv("cheetah", ["run"], [1.0], 1, None, seed=0)
    env.reset()
    action = np.zeros((1, 6), np.float32)
    dones = [env.step(action)[2] for _ in range(1000)]
    assert dones[-1] and not any(dones[:-1])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(action)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"domain": "hopper"}, "valid domains"),
        ({"tasks": ["fly"]}, "valid tasks: stand, walk, run, flip"),
        ({"multipliers": [1.0, 0.0]}, "multiplier must be a finite number > 0"),
        ({"rollouts": 0}, "rollouts must be an integer >= 1"),
        ({"transform": make_transform(None, "cheetah")}, "transform is for 'cheetah'"),
    ],
)
def test_bad_input(kwargs, match):
    args = {
        "domain": "walker",
        "tasks": ["stand"],
        "multipliers": [1.0],
        "rollouts": 1,
        "transform": None,
        "seed": 0,
    }
    with pytest.raises(ValueError, match=match):
        BatchedEvalEnv(**{**args, **kwargs})


def test_bad_action_shape():
    env = BatchedEvalEnv("walker", ["stand"], [1.0], 2, None, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="action must have shape \\(2, 6\\)"):
        env.step(np.zeros((2, 5)))
