"""SequenceBuffer: every window pairing, padding and episode isolation, proved on values that encode
(episode, step); loading checks and bad input."""

import numpy as np
import pytest
import torch

from bfm.collection import make_synthetic_dataset
from bfm.data import (
    DatasetError,
    DatasetNotFoundError,
    SequenceBuffer,
    dataset_path,
    read_manifest,
)
from bfm.data.batch import BatchSpec, GoalSampling
from bfm.data.exorl import reward_key, write_dataset
from bfm.envs import DOMAINS, make_transform

DOMAIN = "walker"
INFO = DOMAINS[DOMAIN]
T = 12  # transitions per episode: short, so padding is common
HILP_SPEC = BatchSpec(goals=GoalSampling(future_prob=0.625, geometric_p=1 - 0.99))  # HILPConfig's defaults


def encoded_dataset(path, episodes: int, length: int = T, episode_offset: int = 0):
    """obs[e, t] = (e+1, t+1, ...), action[e, t] = (e+1, t+1, ...), reward_<task>[e, t] = 1000 e + t."""
    e = np.arange(episodes)[:, None] + episode_offset
    t = np.arange(length + 1)[None, :]
    obs = np.zeros((episodes, length + 1, INFO.obs_dim), np.float32)
    obs[..., 0], obs[..., 1], obs[..., 2:] = e + 1, t + 1, (1000 * e + t)[..., None]
    action = np.zeros((episodes, length + 1, INFO.action_dim), np.float32)
    action[..., 0], action[..., 1] = e + 1, t + 1
    arrays = {
        "observation": obs,
        "action": action,
        "physics": np.zeros((episodes, length + 1, INFO.physics_dim)),
    }
    for k, task in enumerate(INFO.tasks):
        arrays[reward_key(task)] = (1000 * e + t + 0.1 * k).astype(np.float32) * np.ones(
            (episodes, 1), np.float32
        )
    manifest = {"domain": DOMAIN, "algo": "rnd", "multiplier": 1.0, "episodes": episodes, "episode_length": length,
                "tasks": list(INFO.tasks), "source": {"kind": "test"}}  # fmt: skip
    return write_dataset(path, arrays, manifest)


@pytest.fixture
def encoded(tmp_path):
    return encoded_dataset(dataset_path(tmp_path, DOMAIN, "rnd"), episodes=40)


def decode(window: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(episode, row) of each slot [B, L]; (-1, -1) for a zero row."""
    w = window.numpy()
    return w[..., 0].astype(int) - 1, w[..., 1].astype(int) - 1


def check_obs(window, episode, rows, zeros: bool):
    ep, row = decode(window)
    valid = rows >= 0
    assert (ep[valid] == np.broadcast_to(episode[:, None], rows.shape)[valid]).all()
    assert (row[valid] == rows[valid]).all()
    if zeros:
        assert (window.numpy()[~valid] == 0).all()
    else:  # padding repeats the episode's first observation
        assert (row[~valid] == 0).all() and (
            ep[~valid] == np.broadcast_to(episode[:, None], rows.shape)[~valid]
        ).all()


def check_actions(window, episode, action_rows, valid):
    ep, row = decode(window)
    assert (ep[valid] == np.broadcast_to(episode[:, None], valid.shape)[valid]).all()
    assert (row[valid] == action_rows[valid]).all()
    assert (window.numpy()[~valid] == 0).all()


@pytest.mark.parametrize("pad_with_zeros", [False, True])
@pytest.mark.parametrize("lengths", [(5, 3), (3, 5), (1, 1)])
def test_every_pairing_and_padding(encoded, pad_with_zeros, lengths):
    L_F, L_B = lengths
    buffer = SequenceBuffer(encoded, DOMAIN, None, L_F, L_B, seed=1, pad_with_zeros=pad_with_zeros)
    batch = buffer.sample(512)
    assert batch.obs_window.shape == (512, L_F + 1, INFO.obs_dim)
    assert batch.prev_action_window.shape == (512, L_F + 1, INFO.action_dim)
    assert batch.goal_window.shape == (512, L_B + 1, INFO.obs_dim)
    assert batch.goal_action_window.shape == (512, L_B + 1, INFO.action_dim)
    episode, s = decode(batch.obs_window[:, -1])  # o_{t+1} = obs[s]
    assert s.min() >= 1 and s.max() <= T - 1 and s.min() == 1 and s.max() == T - 1
    rows_f = s[:, None] - L_F + np.arange(L_F + 1)  # obs_window[:, j] = obs[s - L_F + j]
    rows_b = s[:, None] - L_B + np.arange(L_B + 1)  # goal_window[:, j] = obs[s - L_B + j]
    check_obs(batch.obs_window, episode, rows_f, pad_with_zeros)
    check_obs(batch.goal_window, episode, rows_b, pad_with_zeros)
    check_actions(batch.prev_action_window, episode, rows_f, rows_f >= 0)  # action that led to each obs
    check_actions(batch.goal_action_window, episode, rows_b + 1, rows_b >= 0)  # action taken at each goal obs
    # The network slices of data/batch.py: F pairs (o_k, a taken at o_k), pi pairs (o_k, a_{k-1}).
    _, f_obs_row = decode(batch.obs_window[:, :-1])
    _, f_act_row = decode(batch.prev_action_window[:, 1:])
    valid = rows_f[:, :-1] >= 0
    assert (f_act_row[valid] == f_obs_row[valid] + 1).all()
    _, pi_act_row = decode(batch.prev_action_window[:, :-1])
    assert (pi_act_row[rows_f[:, :-1] >= 1] == f_obs_row[rows_f[:, :-1] >= 1]).all()
    # The last F token is (o_t, a_t) = (obs[s-1], action[s]).
    assert (decode(batch.obs_window[:, -2])[1] == s - 1).all() and (
        decode(batch.prev_action_window[:, -1])[1] == s
    ).all()


def test_hilp_goals(encoded):
    L_B = 3
    buffer = SequenceBuffer(encoded, DOMAIN, None, 4, L_B, seed=2)
    batch = buffer.sample(4096, HILP_SPEC)
    episode, s = decode(batch.obs_window[:, -1])
    goal_ep, goal_row = decode(batch.sampled_goal_window[:, -1])
    rows = goal_row[:, None] - L_B + 1 + np.arange(L_B)
    check_obs(batch.sampled_goal_window, goal_ep, rows, zeros=False)
    check_actions(batch.sampled_goal_action_window, goal_ep, rows + 1, rows >= 0)  # same mask: same episode
    assert goal_row.min() >= 0 and goal_row.max() <= T - 1
    same = goal_ep == episode
    future = same & (goal_row >= s)
    # 0.625 future (plus random goals that land in the same episode, 1/40 of 0.375).
    assert abs(future.mean() - (0.625 + 0.375 / 40 * 0.5)) < 0.04
    assert abs((~same).mean() - 0.375 * 39 / 40) < 0.04
    is_current = same & (goal_row == s - 1)
    assert (batch.sampled_goal_is_current.numpy() == is_current).all()
    # Geometric offset with p = 0.01 is clipped to the episode's last usable row T-1 almost always here.
    assert (goal_row[future] == T - 1).mean() > 0.8


def test_labelled_windows(encoded):
    buffer = SequenceBuffer(encoded, DOMAIN, None, 4, 3, seed=3)
    before = buffer.generator.get_state()
    labelled = buffer.sample_labelled(2000, ["stand", "flip"])
    assert torch.equal(before, buffer.generator.get_state())  # training stream untouched
    assert labelled.goal_window.shape == (2000, 3, INFO.obs_dim) and set(labelled.rewards) == {
        "stand",
        "flip",
    }
    episode, s = decode(labelled.goal_window[:, -1])
    assert s.min() == 1 and s.max() == T - 1
    rows = s[:, None] - 2 + np.arange(3)
    check_obs(labelled.goal_window, episode, rows, zeros=False)
    check_actions(labelled.goal_action_window, episode, rows + 1, rows >= 0)
    np.testing.assert_allclose(labelled.rewards["stand"].numpy(), 1000 * episode + s)
    np.testing.assert_allclose(labelled.rewards["flip"].numpy(), 1000 * episode + s + 0.3, rtol=1e-6)


@pytest.mark.parametrize(
    "selection, expected",
    [("first", {0, 1, 2, 3, 100, 101, 102}), ("spread", {0, 2, 5, 7, 100, 103, 106})],
)
def test_several_datasets_and_episode_subsets(tmp_path, selection, expected):
    a = encoded_dataset(dataset_path(tmp_path, DOMAIN, "rnd"), episodes=10)
    b = encoded_dataset(dataset_path(tmp_path, DOMAIN, "rnd", 1.5), episodes=10, episode_offset=100)
    buffer = SequenceBuffer([a, b], DOMAIN, 7, 2, 2, seed=0, episode_selection=selection)
    assert buffer.num_episodes == 7 and buffer.manifest["episodes"] == [4, 3]
    assert buffer.manifest["episode_selection"] == selection
    assert buffer.manifest["episode_indices"] == [
        sorted(e for e in expected if e < 100),
        sorted(e - 100 for e in expected if e >= 100),
    ]
    episodes = set(decode(buffer.sample(4000).obs_window[:, -1])[0])
    assert episodes == expected


def test_seeded_and_no_global_rng(encoded):
    first = SequenceBuffer(encoded, DOMAIN, None, 4, 2, seed=5)
    second = SequenceBuffer(encoded, DOMAIN, None, 4, 2, seed=5)
    state = torch.random.get_rng_state()
    x, y = first.sample(64, HILP_SPEC), second.sample(64, HILP_SPEC)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(x.obs_window, y.obs_window) and torch.equal(
        x.sampled_goal_window, y.sampled_goal_window
    )
    saved = first.state_dict()
    a = first.sample(64)
    first.load_state_dict(saved)
    assert torch.equal(a.obs_window, first.sample(64).obs_window)


def same_row_same_value(buffer: SequenceBuffer) -> float:
    """Fraction of stored rows sampled in two batches whose goal-stream value was identical."""
    seen, same = {}, []
    for _ in range(2):
        batch = buffer.sample(2000)
        for key, value in zip(
            map(tuple, batch.obs_window[:, -1, :2].numpy()), batch.goal_window[:, -1].numpy(), strict=True
        ):
            if key in seen:
                same.append(np.array_equal(seen[key], value))
            seen[key] = value
    assert len(same) > 100
    return float(np.mean(same))


def test_pomdp_streams_frozen_and_resampled(encoded):
    occluded, noise = make_transform("occluded", DOMAIN), make_transform("noise", DOMAIN)
    frozen = SequenceBuffer(encoded, DOMAIN, None, 4, 2, occluded, noise, seed=0)
    assert (frozen.obs_dim, frozen.goal_dim) == (15, INFO.obs_dim)
    batch = frozen.sample(256)
    assert batch.obs_window.shape[-1] == 15 and batch.goal_window.shape[-1] == INFO.obs_dim
    # Frozen noise: a stored row (identified through the exact occluded F-stream) always carries the
    # same goal-stream noise; resampled noise differs between batches.
    assert same_row_same_value(frozen) == 1.0
    resampled = SequenceBuffer(encoded, DOMAIN, None, 4, 2, occluded, noise, seed=0, resample_per_batch=True)
    assert (resampled.obs_dim, resampled.goal_dim) == (15, INFO.obs_dim)
    batch = resampled.sample(256, HILP_SPEC)
    assert batch.obs_window.shape[-1] == 15 and batch.sampled_goal_window.shape[-1] == INFO.obs_dim
    assert same_row_same_value(resampled) == 0.0
    # Occlusion keeps indices 0..14 exactly, so the F-stream still decodes.
    episode, s = decode(batch.obs_window[:, -1])
    assert s.min() >= 1 and s.max() <= T - 1


def test_bad_input(tmp_path, encoded):
    missing = dataset_path(tmp_path / "nowhere", DOMAIN, "rnd", 1.5)
    with pytest.raises(
        DatasetNotFoundError, match="exorl_reformatter.py walker_rnd .*--collect .*--multiplier 1.5"
    ):
        SequenceBuffer(missing, DOMAIN, None, 4, 2)
    with pytest.raises(DatasetError, match="'walker' data"):
        SequenceBuffer(encoded, "cheetah", None, 4, 2)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(encoded.read_bytes()[: encoded.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        SequenceBuffer(truncated, DOMAIN, None, 4, 2)
    upstream = tmp_path / "upstream.npz"  # the upstream reformatter: one pickled dict per episode
    np.savez(upstream, **{"episode_0_1000": np.array({"observation": np.zeros(3)}, dtype=object)})
    with pytest.raises(DatasetError, match="upstream"):
        SequenceBuffer(upstream, DOMAIN, None, 4, 2)
    wrong = tmp_path / "wrong" / "dataset.npz"
    arrays = dict(np.load(encoded, allow_pickle=False))
    manifest = __import__("json").loads(str(arrays.pop("manifest")))
    arrays["observation"] = arrays["observation"][..., :17]
    write_dataset(wrong, arrays, manifest)
    with pytest.raises(DatasetError, match=r"observation has shape .*expected \[40, T\+1, 24\]"):
        SequenceBuffer(wrong, DOMAIN, None, 4, 2)


def test_synthetic_dataset(tmp_path):
    path = make_synthetic_dataset(tmp_path, "cheetah", episodes=2, episode_length=50, seed=1)
    assert path == dataset_path(tmp_path, "cheetah", "rnd") and [
        p.name for p in path.parent.parent.parent.iterdir()
    ] == ["rnd"]
    manifest = read_manifest(path)
    assert (
        manifest["source"]["kind"] == "synthetic"
        and manifest["episodes"] == 2
        and manifest["episode_length"] == 50
    )
    stamp = path.stat().st_mtime_ns
    assert make_synthetic_dataset(tmp_path, "cheetah", episodes=2, episode_length=50, seed=1) == path
    assert path.stat().st_mtime_ns == stamp
    buffer = SequenceBuffer(path, "cheetah", None, 8, 4, seed=0)
    labelled = buffer.sample_labelled(100)
    assert set(labelled.rewards) == set(DOMAINS["cheetah"].tasks)
    assert all(float(r.min()) >= 0 and float(r.max()) <= 1 for r in labelled.rewards.values())


def test_synthetic_dataset_never_overwrites_a_real_one(tmp_path):
    path = make_synthetic_dataset(tmp_path, "cheetah", episodes=1, episode_length=20, seed=0)
    arrays = dict(np.load(path, allow_pickle=False))
    manifest = __import__("json").loads(str(arrays.pop("manifest")))
    manifest["source"] = {"kind": "collected"}
    write_dataset(path, arrays, manifest)
    stamp = path.stat().st_mtime_ns
    with pytest.raises(DatasetError, match="'collected' dataset, not a synthetic one; refusing"):
        make_synthetic_dataset(tmp_path, "cheetah", episodes=2, episode_length=20, seed=0)
    assert path.stat().st_mtime_ns == stamp


def test_episode_selections_match_the_run_config():
    from bfm.data.exorl import EPISODE_SELECTIONS
    from bfm.training.config import EPISODE_SELECTIONS as CONFIG_SELECTIONS

    assert CONFIG_SELECTIONS == EPISODE_SELECTIONS


def test_a_changed_array_is_caught_by_its_checksum(tmp_path):
    """An array changed after the dataset was written (its manifest kept, the zip intact) stops the
    load naming the array and saying what to do; env.verify_checksums=false loads it anyway."""
    import json

    from bfm.data import DatasetError
    from bfm.data.exorl import read_manifest

    path = make_synthetic_dataset(tmp_path, "walker", "rnd", episodes=3, episode_length=30, seed=0)
    manifest = read_manifest(path)
    arrays = dict(np.load(path))
    arrays.pop("manifest")
    arrays["reward_walk"] = arrays["reward_walk"].copy()
    arrays["reward_walk"][1, 5] += 0.5  # one reward of the middle episode
    np.savez(path, manifest=np.array(json.dumps(manifest)), **arrays)  # the old checksums
    SequenceBuffer(path, "walker", None, 2, 2, verify_checksums=True, tasks=["stand"])  # other arrays intact
    with pytest.raises(DatasetError) as error:
        SequenceBuffer(path, "walker", 1, 2, 2, episode_selection="first")  # the changed row is not even kept
    message = str(error.value)
    assert f"{path}: array 'reward_walk' does not match the sha256 in its manifest" in message
    assert f"delete {path} and remake it with: python exorl_reformatter.py walker_rnd" in message
    assert "env.verify_checksums=false" in message
    buffer = SequenceBuffer(path, "walker", None, 2, 2, verify_checksums=False)
    assert buffer.num_episodes == 3
