"""Ground-truth checks of FB and HILP on tiny finite MDPs (docs/algorithms.md, "Ground-truth tests").

- the project's FB measure loss recovers the closed-form successor measure of a fixed policy;
- a memory-free FB agent trained offline on uniform grid data, given rewards only through its
  task inference, reaches at least 90 % of the optimal (value iteration) return on every goal;
- HILP's learned temporal distances rank like shortest-path distances on a grid.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from bfm.agents import make_agent
from bfm.agents.base import optimizer_params
from bfm.agents.fb import fb_measure_loss
from bfm.agents.optim import optimizer_step, polyak_update
from bfm.data.batch import Batch

SIDE = 5
STATES = SIDE * SIDE


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only add synchronisation (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MOVES = torch.tensor([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])  # stay, right, left, down, up


def test_fb_measure_loss_recovers_successor_measure() -> None:
    """Linear F, B on one-hot inputs: F B^T diag(rho) -> P (I - gamma P_pi)^-1 (relative error < 5 %)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    S, A, d, n, gamma, tau, steps = 10, 3, 16, 256, 0.9, 0.01, 8000
    P = torch.distributions.Dirichlet(torch.ones(S)).sample((S, A))  # [S, A, S]
    pi = torch.distributions.Dirichlet(torch.ones(A)).sample((S,))  # [S, A]
    F = torch.nn.Embedding(S * A, d)  # linear in the one-hot (s, a)
    B = torch.nn.Embedding(S, d)  # linear in the one-hot s'
    F_bar, B_bar = torch.nn.Embedding(S * A, d), torch.nn.Embedding(S, d)
    F_bar.load_state_dict(F.state_dict())
    B_bar.load_state_dict(B.state_dict())
    params = list(F.parameters()) + list(B.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        sa = torch.randint(S * A, (n,), generator=g)  # uniform (s, a)
        s_next = torch.multinomial(P.view(S * A, S)[sa], 1, generator=g)[:, 0]  # [n]
        a_next = torch.multinomial(pi[s_next], 1, generator=g)[:, 0]  # a' ~ pi(s')
        with torch.no_grad():
            target_M = F_bar(s_next * A + a_next) @ B_bar(s_next).T  # [n, n]
        loss, _ = fb_measure_loss(F(sa)[None], B(s_next), target_M, gamma)
        optimizer_step(opt, loss, params, None)
        sched.step()
        polyak_update(F_bar, F, tau)
        polyak_update(B_bar, B, tau)
    rho = P.view(S * A, S).mean(0)  # [S] distribution of s'
    P_pi = torch.einsum("sa,sat->st", pi, P)  # [S, S]
    truth = P.view(S * A, S) @ torch.linalg.inv(torch.eye(S) - gamma * P_pi)  # [SA, S]
    with torch.no_grad():
        estimate = F.weight @ B.weight.T * rho  # [SA, S]
    error = (torch.linalg.norm(estimate - truth) / torch.linalg.norm(truth)).item()
    assert error < 0.05, f"relative Frobenius error {error:.4f}"


def grid_move(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Continuous action [n, 2] -> one of five moves (stay when both |a| < 1/3); next state [n]."""
    ax, ay = action[:, 0], action[:, 1]
    horizontal = ax.abs() >= ay.abs()
    big = torch.maximum(ax.abs(), ay.abs()) > 1 / 3
    dx = torch.where(horizontal & big, torch.sign(ax), torch.zeros_like(ax)).long()
    dy = torch.where(~horizontal & big, torch.sign(ay), torch.zeros_like(ay)).long()
    x, y = state % SIDE, state // SIDE
    return (x + dx).clamp(0, SIDE - 1) + SIDE * (y + dy).clamp(0, SIDE - 1)


def value_iteration(goal: int, gamma: float) -> torch.Tensor:
    """V*(s) [S] for reward 1[s' == goal] with the five grid moves."""
    x, y = torch.arange(STATES) % SIDE, torch.arange(STATES) // SIDE
    nxt = torch.stack(
        [(x + dx).clamp(0, SIDE - 1) + SIDE * (y + dy).clamp(0, SIDE - 1) for dx, dy in MOVES.tolist()]
    )  # [5, S]
    reward = (nxt == goal).float()  # [5, S]
    V = torch.zeros(STATES)
    for _ in range(500):
        V = (reward + gamma * V[nxt]).max(0).values
    return V


def grid_batch(n: int, g: torch.Generator) -> Batch:
    s = torch.randint(STATES, (n,), generator=g)
    a = torch.rand(n, 2, generator=g) * 2 - 1
    s_next = grid_move(s, a)
    eye = torch.eye(STATES)
    obs = torch.stack([eye[s], eye[s_next]], dim=1)  # [n, 2, S]
    actions = torch.stack([torch.zeros(n, 2), a], dim=1)  # [n, 2, 2]: row 1 = a_t
    return Batch(obs, actions, obs, torch.stack([a, torch.zeros(n, 2)], dim=1))


def test_fb_zero_shot_control_on_grid() -> None:
    """Memory-free FB on uniform 5x5 grid data reaches >= 90 % of the optimal return for 6 goals."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gamma = 0.9
    config = {
        "z_dim": 16,
        "hidden_dim": 64,
        "head_hidden_dim": 128,
        "gamma": gamma,
        "lr_f": 1e-3,
        "lr_b": 1e-3,
        "lr_actor": 1e-3,
    }
    agent = make_agent("fb", STATES, STATES, 2, config)
    for step in range(2500):
        agent.update(grid_batch(256, g), step)
    eye = torch.eye(STATES)
    labelled = eye[:, None]  # [S, 1, S]: every state once (uniform labelled data)
    horizon = 60
    for goal in (0, 4, 12, 17, 20, 24):
        z = agent.infer_z(labelled, torch.zeros(STATES, 1, 2), (torch.arange(STATES) == goal).float())
        assert math.isclose(z.norm().item(), 4.0, rel_tol=1e-5)
        state, ret = torch.arange(STATES), torch.zeros(STATES)
        for t in range(horizon):
            action = agent.act(eye[state][:, None], torch.zeros(STATES, 1, 2), z)
            state = grid_move(state, action)
            ret += gamma**t * (state == goal).float()
        optimal = value_iteration(goal, gamma)
        ratio = (ret.sum() / optimal.sum()).item()
        assert ratio >= 0.9, f"goal {goal}: {ratio:.3f} of the optimal return"


def random_walks(episodes: int, length: int, g: torch.Generator) -> torch.Tensor:
    """States [episodes, length + 1] of uniform random walks over the five grid moves."""
    states = [torch.randint(STATES, (episodes,), generator=g)]
    for _ in range(length):
        move = MOVES[torch.randint(5, (episodes,), generator=g)].float()  # [E, 2]
        states.append(grid_move(states[-1], move))
    return torch.stack(states, dim=1)


def hilp_batch(walks: torch.Tensor, n: int, g: torch.Generator) -> Batch:
    """HILP goals: 0.625 future (geometric, p = 1 - 0.99, possibly the current state), 0.375 random."""
    E, T1 = walks.shape
    ep = torch.randint(E, (n,), generator=g)
    t = torch.randint(T1 - 1, (n,), generator=g)
    offset = torch.distributions.Geometric(probs=torch.tensor(0.01)).sample((n,)).long()  # >= 0
    future = walks[ep, (t + offset).clamp(max=T1 - 1)]
    random_goal = walks[torch.randint(E, (n,), generator=g), torch.randint(T1, (n,), generator=g)]
    goal = torch.where(torch.rand(n, generator=g) < 0.625, future, random_goal)
    eye = torch.eye(STATES)
    s, s_next = walks[ep, t], walks[ep, t + 1]
    obs = torch.stack([eye[s], eye[s_next]], dim=1)  # [n, 2, S]
    zeros = torch.zeros(n, 2, 2)
    return Batch(obs, zeros, obs, zeros, eye[goal][:, None], torch.zeros(n, 1, 2), (goal == s).float())


def test_hilp_distances_rank_like_shortest_paths() -> None:
    """||phi(s) - phi(g)|| on a 5x5 grid vs Manhattan distance: Spearman >= 0.9."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    config = {
        "z_dim": 16,
        "hidden_dim": 64,
        "head_hidden_dim": 64,
        "gamma_phi": 0.99,
        "expectile": 0.95,
        "lr_phi": 1e-3,
    }
    agent = make_agent("hilp", STATES, STATES, 2, config)
    walks = random_walks(200, 50, g)
    for _ in range(1200):
        loss, _ = agent.phi_loss(hilp_batch(walks, 256, g))
        optimizer_step(
            agent.optimizers()["phi"],
            loss,
            optimizer_params(agent.optimizers()["phi"]),
            agent.config.grad_clamp,
        )
        polyak_update(agent.target_phi, agent.model.phi, agent.config.tau_phi)
    eye = torch.eye(STATES)
    with torch.no_grad():
        phi = agent.model.phi[0](eye[:, None], torch.zeros(STATES, 1, 2))  # [S, d]
    learned = torch.cdist(phi, phi)  # [S, S]
    xy = torch.stack([torch.arange(STATES) % SIDE, torch.arange(STATES) // SIDE], dim=1).float()
    truth = torch.cdist(xy, xy, p=1)  # Manhattan = shortest path on the open grid
    off = ~torch.eye(STATES, dtype=torch.bool)
    rho = spearmanr(learned[off].numpy(), truth[off].numpy()).statistic
    assert rho >= 0.9, f"Spearman {rho:.3f}"
