"""Unit checks of agents/: every algorithm x memory pairing trains, targets, inference, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from bfm.agents import FBConfig, HILPConfig, make_agent
from bfm.agents.fb import fb_measure_loss, ortho_loss
from bfm.agents.optim import offdiag_mean
from bfm.data.batch import Batch
from bfm.memory import REGISTRY
from bfm.training.checkpoint import load_agent, restore_agent, save_agent


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only add synchronisation on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OBS, GOAL, ACT, L_F, L_B, D = 5, 4, 2, 4, 3, 8
MEMORY_TYPES = list(REGISTRY)
SMALL = {
    "z_dim": D,
    "hidden_dim": 32,
    "head_hidden_dim": 32,
    "lr_f": 1e-3,
    "lr_actor": 1e-3,
    "memory": {
        "history_length": L_F,
        "backward_history_length": L_B,
        "settings": {
            "gru": {"token_dim": 16, "model_dimension": 16},
            "transformer": {"token_dim": 16, "model_dimension": 16, "ffn_dim": 32},
            "s4d": {"token_dim": 16, "model_dimension": 8},
            "mlp": {"model_dimension": 16},
        },
    },
}


def small_config(name: str, memory: dict | None = None, **overrides) -> dict:
    """SMALL with ``overrides`` of agent fields and ``memory`` of ``MemoryConfig`` fields."""
    config = dict(SMALL, **overrides)
    config["memory"] = {**SMALL["memory"], **(memory or {})}
    if name.startswith("fb"):
        config.setdefault("lr_b", 1e-3)
    return config


def synthetic_batch(
    n: int = 64,
    seed: int = 0,
    widths: tuple[int, int, int] = (OBS, GOAL, ACT),
    windows: tuple[int, int] = (L_F, L_B),
) -> Batch:
    """A random batch of n windows: widths (obs, goal, action), windows (L_F, L_B)."""
    (obs, goal, act), (lf, lb) = widths, windows
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs_window=torch.randn(n, lf + 1, obs, generator=g),
        prev_action_window=torch.rand(n, lf + 1, act, generator=g) * 2 - 1,
        goal_window=torch.randn(n, lb + 1, goal, generator=g),
        goal_action_window=torch.rand(n, lb + 1, act, generator=g) * 2 - 1,
        sampled_goal_window=torch.randn(n, lb, goal, generator=g),
        sampled_goal_action_window=torch.rand(n, lb, act, generator=g) * 2 - 1,
        sampled_goal_is_current=(torch.rand(n, generator=g) < 0.2).float(),
    )


def combinations() -> list[tuple[str, str, bool, bool]]:
    combos = []
    for algo in ("fb", "hilp"):
        combos.append((algo, "none", False, False))
        for memory in MEMORY_TYPES:
            for rec_f, rec_b in ((True, False), (False, True), (True, True)):
                combos.append((algo + "_m", memory, rec_f, rec_b))
    return combos


def _total_loss(metrics: dict[str, torch.Tensor]) -> float:
    if "fb/total_loss" in metrics:
        return float(metrics["fb/total_loss"])
    return float(metrics["sf/loss"] + metrics["phi/loss"])


@pytest.mark.parametrize(("name", "memory", "rec_f", "rec_b"), combinations())
def test_loss_falls_and_stays_finite(name: str, memory: str, rec_f: bool, rec_b: bool) -> None:
    torch.manual_seed(0)
    overrides = {"recurrent_F": rec_f, "recurrent_B": rec_b}
    if memory != "none":
        overrides["memory"] = {"name": memory}
    agent = make_agent(name, OBS, GOAL, ACT, small_config(name, **overrides))
    assert agent.model.forward_map.recurrent == rec_f and agent.model.actor.recurrent == rec_f
    batch = synthetic_batch()
    losses = []
    for step in range(40):
        metrics = agent.update(batch, step)
        assert all(torch.isfinite(v).all() for v in metrics.values()), metrics
        assert all(not v.requires_grad for v in metrics.values())
        losses.append(_total_loss(metrics))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("name", ["fb", "fb_m", "hilp", "hilp_m"])
def test_targets_move_by_exactly_tau(name: str) -> None:
    agent = make_agent(name, OBS, GOAL, ACT, small_config(name, tau=0.01))
    pairs = [(agent.target_forward, agent.model.forward_map, agent.config.tau)]
    if name.startswith("fb"):
        pairs.append((agent.target_backward, agent.model.backward_map, agent.config.tau))
    else:
        pairs.append((agent.target_phi, agent.model.phi, agent.config.tau_phi))
    batch = synthetic_batch()
    for _ in range(2):  # targets differ from online after the first update
        before = [[p.clone() for p in target.parameters()] for target, _, _ in pairs]
        agent.update(batch)
        for (target, online, tau), old in zip(pairs, before, strict=True):
            for t, o, b in zip(target.parameters(), online.parameters(), old, strict=True):
                torch.testing.assert_close(t, b + tau * (o - b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["fb", "fb_m", "hilp", "hilp_m"])
def test_inferred_z_has_norm_sqrt_d(name: str) -> None:
    agent = make_agent(name, OBS, GOAL, ACT, small_config(name, inference_chunk=7))
    batch = synthetic_batch(50)
    window, actions = batch.goal_window[:, 1:], batch.goal_action_window[:, 1:]  # [N, L_B, .]
    z = agent.infer_z(window, actions, torch.rand(50))
    assert z.shape == (D,)
    torch.testing.assert_close(z.norm(), torch.tensor(math.sqrt(D)))
    zk = agent.infer_z(window, actions, torch.rand(50, 3))
    assert zk.shape == (3, D)
    torch.testing.assert_close(zk.norm(dim=-1), torch.full((3,), math.sqrt(D)))


def test_fb_inference_is_reward_weighted_mean_of_b() -> None:
    agent = make_agent(
        "fb_m", OBS, GOAL, ACT, small_config("fb_m", memory_B_output_relu=False, inference_chunk=16)
    )
    batch = synthetic_batch(40)
    window, actions = batch.goal_window[:, 1:], batch.goal_action_window[:, 1:]
    reward = torch.rand(40)
    with torch.no_grad():
        B = agent.model.backward_map(window, actions)  # [N, d]
    expected = (reward[:, None] * B).mean(0)
    expected = math.sqrt(D) * expected / expected.norm()
    torch.testing.assert_close(agent.infer_z(window, actions, reward), expected)


def test_hilp_inference_solves_least_squares() -> None:
    agent = make_agent("hilp", OBS, GOAL, ACT, small_config("hilp"))
    batch = synthetic_batch(200)
    window, actions = batch.goal_window[:, 1:], batch.goal_action_window[:, 1:]
    phi = agent.model.backward(window, actions)  # [N, d]
    w_true = torch.randn(D)
    z = agent.infer_z(window, actions, phi @ w_true)
    torch.testing.assert_close(z, math.sqrt(D) * w_true / w_true.norm(), rtol=1e-4, atol=1e-4)


def test_offdiag_mean_and_ortho_loss_match_naive() -> None:
    x = torch.randn(3, 6, 6)
    mask = ~torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(offdiag_mean(x), torch.stack([xi[mask].mean() for xi in x]))
    B = torch.randn(6, 4)
    C = B @ B.T
    naive = C[mask].square().mean() - 2 * C.diagonal().mean()
    torch.testing.assert_close(ortho_loss(B)[0], naive)
    F = torch.randn(2, 6, 4)
    target = torch.randn(6, 6)
    M = F @ B.T
    naive_fb = sum(0.5 * (Mk - 0.9 * target)[mask].square().mean() - Mk.diagonal().mean() for Mk in M)
    torch.testing.assert_close(fb_measure_loss(F, B, target, 0.9)[0], naive_fb)


@pytest.mark.parametrize("memory", MEMORY_TYPES)
@pytest.mark.parametrize("name", ["fb_m", "hilp_m"])
def test_actor_loss_prefix_encoding_matches_full_window(name: str, memory: str) -> None:
    """Encoding F's window prefix without gradients and stepping the last token gives the full-window gradient."""
    torch.manual_seed(0)
    agent = make_agent(name, OBS, GOAL, ACT, small_config(name, memory={"name": memory}, recurrent_B=False))
    agent.model.eval()  # no dropout, so both paths are deterministic
    batch = synthetic_batch(16)
    z = torch.nn.functional.normalize(torch.randn(16, D), dim=-1) * math.sqrt(D)
    noise = torch.randn(16, ACT)
    params = list(agent.model.actor.parameters())

    def gradient(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, params, allow_unused=True))

    mu = agent.model.actor(batch.obs_window[:, 1:], batch.prev_action_window[:, 1:], z)
    fast = gradient(agent.actor_loss(batch, z, mu, noise)[0])
    mu = agent.model.actor(batch.obs_window[:, 1:], batch.prev_action_window[:, 1:], z)
    from bfm.agents.networks import sample_action

    action = sample_action(mu, noise, agent.config.actor_std, agent.config.actor_clip)
    actions = torch.cat([batch.prev_action_window[:, 2:], action[:, None]], dim=1)
    F = agent.model.forward_map(batch.obs_window[:, 1:], actions, z)  # [2, n, d]
    slow = gradient(-(F * z).sum(-1).min(0).values.mean())
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("memory", MEMORY_TYPES)
def test_carry_mode_matches_window_mode(memory: str) -> None:
    agent = make_agent("fb_m", OBS, GOAL, ACT, small_config("fb_m", memory={"name": memory}))
    obs, prev = torch.randn(3, L_F, OBS), torch.rand(3, L_F, ACT) * 2 - 1
    z = torch.randn(3, D)
    state = agent.initial_actor_state(3)
    for k in range(L_F):
        action, state = agent.act_step(obs[:, k], prev[:, k], z, state)
    torch.testing.assert_close(action, agent.act(obs, prev, z), rtol=1e-4, atol=1e-5)


def test_make_agent_configs() -> None:
    fb = make_agent("fb", OBS, GOAL, ACT, small_config("fb", recurrent_F=True, recurrent_B=True))
    assert not fb.model.forward_map.recurrent and not fb.model.backward_map.recurrent
    assert isinstance(fb.config, FBConfig)
    mixed = make_agent(
        "hilp_m",
        OBS,
        GOAL,
        ACT,
        small_config("hilp_m", memory={"name": "gru", "name_B": "mlp", "name_actor": "transformer"}),
    )
    assert isinstance(mixed.config, HILPConfig) and mixed.model.phi_recurrent
    assert type(mixed.model.phi[0].net).__name__ == "MLPMemory"
    assert type(mixed.model.actor.history_encoder).__name__ == "TransformerMemory"
    assert type(mixed.model.forward_map.history_encoder).__name__ == "GRUMemory"
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("sac", OBS, GOAL, ACT)
    with pytest.raises(ValueError, match="nope is not a setting; accepted: "):
        make_agent("fb", OBS, GOAL, ACT, {"nope": 1})


@pytest.mark.parametrize("name", ["fb_m", "hilp_m"])
def test_save_load_gives_identical_actions_and_updates(name: str, tmp_path) -> None:
    agent = make_agent(name, OBS, GOAL, ACT, small_config(name, memory={"name": "transformer"}))
    batch = synthetic_batch()
    for step in range(3):
        agent.update(batch, step)
    save_agent(tmp_path / "ckpt", agent)
    loaded = load_agent(tmp_path / "ckpt", "cpu")
    assert loaded.name == name and loaded.config == agent.config
    obs, prev, z = batch.obs_window[:, 1:], batch.prev_action_window[:, 1:], torch.randn(64, D)
    torch.testing.assert_close(loaded.act(obs, prev, z), agent.act(obs, prev, z), rtol=0, atol=0)
    torch.manual_seed(1)  # transformer dropout draws from the global generator
    a = agent.update(batch)
    torch.manual_seed(1)
    b = loaded.update(batch)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_restore_agent_into_an_existing_agent(tmp_path) -> None:
    agent = make_agent("fb", OBS, GOAL, ACT, small_config("fb"))
    agent.update(synthetic_batch())
    save_agent(tmp_path / "ckpt", agent)
    other = make_agent("fb", OBS, GOAL, ACT, small_config("fb"), seed=5)
    assert restore_agent(other, tmp_path / "ckpt") is other
    for a, b in zip(agent.model.parameters(), other.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(agent.generator.get_state(), other.generator.get_state())
    with pytest.raises(FileNotFoundError, match="agent.json"):
        load_agent(tmp_path / "missing")


def test_frame_stacking_depth_follows_the_reference() -> None:
    """The reference's MLP frame stack has 2 layers in F and pi but 1 in B; a setting overrides it."""

    def linears(module: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.Linear) for m in module.modules())

    agent = make_agent("fb_m", OBS, GOAL, ACT, small_config("fb_m", memory={"name": "mlp"}))
    forward_encoder = agent.model.forward_map.history_encoder
    backward_encoder = agent.model.backward_map.net
    assert linears(forward_encoder) == linears(backward_encoder) + 1  # one extra hidden Linear in F
    deeper = small_config(
        "fb_m", memory={"name": "mlp", "settings": {"mlp": {"model_dimension": 16, "num_layers": 2}}}
    )
    agent = make_agent("fb_m", OBS, GOAL, ACT, deeper)
    assert linears(agent.model.backward_map.net) == linears(backward_encoder) + 1


@pytest.mark.parametrize("lr_b, expected", [(None, 3e-4), (2e-5, 2e-5)])
def test_b_learning_rate_follows_f_unless_set(lr_b, expected):
    config = dict(SMALL, lr_f=3e-4, lr_b=lr_b)
    agent = make_agent("fb", OBS, GOAL, ACT, config)
    forward, backward = agent.optimizers()["fb"].param_groups
    assert forward["lr"] == 3e-4 and backward["lr"] == expected
