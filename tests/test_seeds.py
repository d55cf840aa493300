"""Several seeds in one process: ``agents.seeds.SeedBatch`` against single-seed agents, and
``seeds=K`` runs of the CLI against K single-seed runs (results, resume, bad input)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bfm.agents import make_agent
from bfm.agents.seeds import SeedBatch, unbatchable_reason
from bfm.data.batch import Batch
from bfm.memory import REGISTRY
from tests import test_agents as agent_tests
from tests.test_cli import kill_when, results_of, run_cli

# Walker's widths, batch 128 > z_dim: HILP's z mixing takes pinv(phi^T phi), which must be well
# conditioned for rounding to stay rounding (in tinier configs phi^T phi is rank-deficient at
# initialisation, and a single-seed run itself moves z by 1e-2 under 1e-7 noise in phi).
OBS, GOAL, ACT, L_F, L_B, N = 24, 24, 6, 4, 3, 128
SEEDS = (3, 4)
SMALL = {
    "z_dim": 8,
    "hidden_dim": 32,
    "head_hidden_dim": 32,
    "lr_f": 1e-4,  # the paper's
    "lr_actor": 1e-4,
    "memory": {
        "history_length": L_F,
        "backward_history_length": L_B,
        "settings": {
            "gru": {"token_dim": 32, "model_dimension": 32},
            "transformer": {"token_dim": 32, "model_dimension": 32, "ffn_dim": 64},
            "s4d": {"token_dim": 32, "model_dimension": 8},
            "mlp": {"model_dimension": 32},
        },
    },
}


def synthetic_batch(seed: int) -> Batch:
    return agent_tests.synthetic_batch(N, seed, widths=(OBS, GOAL, ACT), windows=(L_F, L_B))


def config(name: str, memory: str) -> dict:
    """test_agents' small sizes, no transformer dropout (it cannot be batched)."""
    cfg = {**SMALL, "memory": {**SMALL["memory"], "name": memory}}
    settings = {k: dict(v) for k, v in SMALL["memory"]["settings"].items()}
    settings["transformer"]["dropout"] = 0.0
    cfg["memory"]["settings"] = settings
    return cfg


def agents_of(name: str, memory: str) -> list:
    """One agent per seed, each built right after seeding torch, as a single-seed run builds it."""
    out = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        out.append(make_agent(name, OBS, GOAL, ACT, config(name, memory), seed=seed))
    return out


def pairings() -> list[tuple[str, str]]:
    return [("fb", "gru"), ("hilp", "gru")] + [(a, m) for a in ("fb_m", "hilp_m") for m in REGISTRY]


@pytest.mark.parametrize(("name", "memory"), pairings())
def test_each_seed_of_a_batched_update_follows_its_single_seed_run(name: str, memory: str) -> None:
    singles, batched = agents_of(name, memory), agents_of(name, memory)
    group = SeedBatch(batched)
    for step in range(3):
        batches = [synthetic_batch(10 * k + step) for k in range(len(SEEDS))]
        expected = [agent.update(batch) for agent, batch in zip(singles, batches, strict=True)]
        got = group.update(batches)
        for want, have in zip(expected, got, strict=True):
            assert set(want) == set(have)
            for metric in want:
                torch.testing.assert_close(have[metric], want[metric], rtol=1e-3, atol=1e-4, msg=metric)
    # Adam's first steps are lr * sign(g) wherever |g| >> eps: elements whose gradient is a sum of
    # cancelling terms (|g| near its rounding) may step the other way, by up to 2 lr per update.
    # Every other element agrees to rounding.
    bound = 2 * 3 * SMALL["lr_f"] + 1e-5
    for k, single in enumerate(singles):
        for module in single.modules():
            want = single.modules()[module].state_dict()
            have = group.state_dict(k)["modules"][module]
            diffs = torch.cat([(have[key] - want[key]).abs().flatten() for key in want])
            assert float(diffs.max()) <= bound, module
            assert float((diffs > 1e-5).float().mean()) < 0.01, module


def test_a_seed_state_is_the_single_seed_agents_and_loads_back() -> None:
    singles, batched = agents_of("fb_m", "gru"), agents_of("fb_m", "gru")
    untouched = [agent.state_dict()["modules"] for agent in batched]
    group = SeedBatch(batched)
    for step in range(2):
        batches = [synthetic_batch(10 * k + step) for k in range(len(SEEDS))]
        for agent, batch in zip(singles, batches, strict=True):
            agent.update(batch)
        group.update(batches)
    for k, single in enumerate(singles):
        want, have = single.state_dict(), group.state_dict(k)
        assert set(have) == set(want)
        for module, tensors in want["modules"].items():
            assert set(have["modules"][module]) == set(tensors)
            for key, value in tensors.items():
                torch.testing.assert_close(have["modules"][module][key], value, rtol=1e-3, atol=1e-3)
        for key, optimizer in want["optimizers"].items():
            assert have["optimizers"][key]["param_groups"] == optimizer["param_groups"]
            for index, state in optimizer["state"].items():
                for entry, value in state.items():
                    torch.testing.assert_close(
                        have["optimizers"][key]["state"][index][entry], value, rtol=1e-4, atol=1e-6
                    )
        assert torch.equal(have["generator"], want["generator"])
    # the agents hold copies: the update leaves them alone until agent(k) copies seed k's weights in
    assert all(
        torch.equal(agent.state_dict()["modules"]["model"][key], value)
        for agent, before in zip(batched, untouched, strict=True)
        for key, value in before["model"].items()
    )
    for k in range(len(SEEDS)):
        weights = group.agent(k).state_dict()["modules"]
        for module, tensors in group.state_dict(k)["modules"].items():
            for key, value in tensors.items():
                assert torch.equal(weights[module][key], value), (module, key)
    # a new batch loaded seed by seed from the first one's states continues exactly as it would,
    # and a single-seed agent takes a seed's state as its own
    again = SeedBatch(agents_of("fb_m", "gru"))
    for k in range(len(SEEDS)):
        again.load_state_dict(k, group.state_dict(k))
    other = SeedBatch(agents_of("fb_m", "mlp"))
    with pytest.raises(KeyError, match="state of other tensors"):
        other.load_state_dict(0, group.state_dict(0))
    lone = agents_of("fb_m", "gru")[0]
    lone.load_state_dict(group.state_dict(0))
    batches = [synthetic_batch(99 + k) for k in range(len(SEEDS))]
    got = group.update(batches)
    for a, b in zip(got, again.update(batches), strict=True):
        for metric in a:
            torch.testing.assert_close(b[metric], a[metric], rtol=0, atol=0)
    for metric, value in lone.update(batches[0]).items():
        torch.testing.assert_close(got[0][metric], value, rtol=1e-3, atol=1e-4, msg=metric)


def test_dropout_cannot_be_batched() -> None:
    cfg = {**SMALL, "memory": {**SMALL["memory"], "name": "transformer"}}
    agents = [make_agent("fb_m", OBS, GOAL, ACT, cfg, seed=s) for s in SEEDS]
    assert "dropout" in (unbatchable_reason(agents[0]) or "")
    with pytest.raises(ValueError, match="dropout"):
        SeedBatch(agents)


# ------------------------------------------------------------------------------------------------
# the CLI

SEED_DIRS = ("seed42", "seed43")


def _args(data_dir: Path, root: Path, *extra: str) -> list[str]:
    return [
        "fb_m",
        "walker_flickering",
        "rnd",
        "experiment=smoke",
        f"--data_dir={data_dir}",
        f"run_root={root}",
        *extra,
    ]


def _dir(root: Path, seed_dir: str, memory: str = "gru") -> Path:
    return root / "fb_m" / "walker_flickering" / "rnd" / memory / seed_dir


def _rows(path: Path) -> list[dict[str, float]]:
    """CSV rows as numbers, without the timing columns."""
    with path.open() as f:
        return [
            {
                k: float(v)
                for k, v in row.items()
                if not k.startswith("time/") and k not in ("task", "returns")
            }
            for row in csv.DictReader(f)
        ]


def _assert_close_rows(a: Path, b: Path, rel: float) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) == len(rows_b)
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=rel, abs=rel), (a, key)


@pytest.fixture(scope="module")
def single_runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("single")
    run_cli(*_args(data_dir, root), "-m", "seed=42,43")
    return root


def test_seeds_run_writes_what_single_runs_write(data_dir: Path, single_runs: Path, tmp_path: Path) -> None:
    batched, looped = tmp_path / "batched", tmp_path / "looped"
    run_cli(*_args(data_dir, batched), "--seeds=2")
    run_cli(*_args(data_dir, looped), "seeds=2", "batch_seeds=false")
    for seed_dir in SEED_DIRS:
        one = _dir(single_runs, seed_dir)
        for name in ("train.csv", "eval.csv"):
            _assert_close_rows(one / name, _dir(batched, seed_dir) / name, rel=1e-4)
            assert _rows(one / name) == _rows(_dir(looped, seed_dir) / name)  # one after another: exact
        a, b = results_of(one), results_of(_dir(batched, seed_dir))
        assert a["seed"] == b["seed"] and a["steps"] == b["steps"] == 6
        assert [p["step"] for p in a["curve"]] == [p["step"] for p in b["curve"]]
        assert sorted(p.name for p in (_dir(batched, seed_dir) / "checkpoints").iterdir()) == sorted(
            p.name for p in (one / "checkpoints").iterdir()
        )


@pytest.mark.slow
def test_transformer_seeds_run_one_after_another_exactly(data_dir: Path, tmp_path: Path) -> None:
    run_cli(*_args(data_dir, tmp_path / "single", "memory=transformer"), "-m", "seed=42,43")
    proc = run_cli(*_args(data_dir, tmp_path / "seeds", "memory=transformer", "seeds=2"))
    assert "not batched" in proc.stdout and "dropout" in proc.stdout  # hydra logs to stdout
    for seed_dir in SEED_DIRS:
        for name in ("train.csv", "eval.csv"):
            a = _dir(tmp_path / "single", seed_dir, "transformer") / name
            assert _rows(a) == _rows(_dir(tmp_path / "seeds", seed_dir, "transformer") / name)


def _long(data_dir: Path, root: Path) -> list[str]:
    return [
        *_args(data_dir, root),
        "seeds=2",
        "--learning_steps=40",
        "--eval_frequency=10",
        "train.log_interval=5",
    ]


def test_seeds_run_resumes_after_kill_as_if_uninterrupted(data_dir: Path, tmp_path: Path) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_cli(*_long(data_dir, reference))
    kill_when(_long(data_dir, resumed), _dir(resumed, SEED_DIRS[-1]) / "checkpoints" / "step_000000010")
    run_cli(*_long(data_dir, resumed))
    for seed_dir in SEED_DIRS:
        a, b = results_of(_dir(reference, seed_dir)), results_of(_dir(resumed, seed_dir))
        assert b["final"] == a["final"] and b["curve"] == a["curve"]
        assert (_dir(resumed, seed_dir) / "eval.csv").read_text() == (
            _dir(reference, seed_dir) / "eval.csv"
        ).read_text()


def test_seeds_resume_from_the_newest_step_they_share(data_dir: Path, tmp_path: Path) -> None:
    """A kill between the seeds' checkpoint writes leaves seed 42 a step ahead: both go on from
    the step they share, and the run ends as an uninterrupted one."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_cli(*_args(data_dir, reference), "seeds=2", "--learning_steps=9")
    run_cli(*_args(data_dir, resumed), "seeds=2")  # 6 steps: checkpoints 3 and 6 kept
    behind = _dir(resumed, "seed43") / "checkpoints"
    shutil.rmtree(behind / "step_000000006")
    (behind / "latest").write_text("step_000000003")
    run_cli(*_args(data_dir, resumed), "seeds=2", "--learning_steps=9")
    for seed_dir in SEED_DIRS:
        a, b = results_of(_dir(reference, seed_dir)), results_of(_dir(resumed, seed_dir))
        assert b["final"] == a["final"] and b["curve"] == a["curve"]


def _error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_seeds_bad_input_exits_2(data_dir: Path, tmp_path: Path) -> None:
    fixed = _error(run_cli(*_args(data_dir, tmp_path), "seeds=2", f"run_dir={tmp_path / 'one'}", check=False))
    assert "does not depend on the seed" in fixed and "${seed}" in fixed
    assert "seeds" in _error(run_cli(*_args(data_dir, tmp_path), "--seeds=0", check=False))
    assert "seeds (--seeds) must be an integer >= 1, got 0" in _error(
        run_cli(*_args(data_dir, tmp_path), "seeds=0", check=False)
    )
    assert not any(tmp_path.iterdir())
    # a third seed without a checkpoint next to two that have one
    run_cli(*_args(data_dir, tmp_path), "seeds=2")
    message = _error(run_cli(*_args(data_dir, tmp_path), "seeds=3", check=False))
    assert "train in step" in message and "seed 44: no checkpoint" in message and "seed 42: step 6" in message


@pytest.mark.parametrize(
    ("domain", "resample", "shared"),
    [("walker", False, True), ("walker_flickering", True, True), ("walker_flickering", False, False)],
)
def test_buffer_of_another_seed_shares_the_data_when_it_can(
    data_dir: Path, domain: str, resample: bool, shared: bool
) -> None:
    """``with_seed`` samples what a buffer built with that seed samples, holding the arrays once;
    a corruption frozen at load depends on the seed, so there it declines."""
    from bfm.data import SequenceBuffer, dataset_path
    from bfm.envs import make_stream_transforms

    def build(seed: int) -> SequenceBuffer:
        dynamics, rewards = make_stream_transforms(domain)
        path = dataset_path(data_dir, "walker", "rnd")
        return SequenceBuffer(
            path, "walker", None, 4, 2, dynamics, rewards, seed=seed, resample_per_batch=resample
        )

    first, fresh = build(42), build(43)
    other = first.with_seed(43)
    if not shared:
        assert other is None
        return
    assert other is not None and other._obs_f is first._obs_f
    for _ in range(3):
        a, b = fresh.sample(16), other.sample(16)
        for name in ("obs_window", "prev_action_window", "goal_window", "goal_action_window"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(fresh.sample_labelled(8).goal_window, other.sample_labelled(8).goal_window)
