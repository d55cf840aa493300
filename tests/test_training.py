"""Unit tests of training/: evaluation windows, trainer stop conditions, CSV logging, results."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bfm.data.batch import BatchSpec, LabelledWindows
from bfm.training import checkpoint as agent_checkpoint
from bfm.training.checkpoint import latest_checkpoint
from bfm.training.config import RunConfig
from bfm.training.evaluation import Evaluator, iqm
from bfm.training.logger import CSVWriter, MetricLogger
from bfm.training.trainer import NonFiniteLossError, Trainer

OBS, ACT, D = 3, 2, 4


class FakeEnv:
    """Episodes whose observation is the step count; reward 1 per step (2 for task 'b')."""

    def __init__(self, tasks: list[str], rollouts: int, length: int = 5) -> None:
        self.episode_keys = [(t, 1.0, r) for t in tasks for r in range(rollouts)]
        self.length, self.t = length, 0

    def reset(self) -> np.ndarray:
        self.t = 0
        return np.zeros((len(self.episode_keys), OBS), np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        assert action.shape == (len(self.episode_keys), ACT)
        self.t += 1
        reward = np.array([2.0 if k[0] == "b" else 1.0 for k in self.episode_keys], np.float32)
        return np.full((len(self.episode_keys), OBS), self.t, np.float32), reward, self.t >= self.length


class FakeBuffer:
    obs_dim = goal_dim = OBS
    action_dim = ACT

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)

    def sample_labelled(self, n: int, tasks: list[str], seed: int | None = None) -> LabelledWindows:
        return LabelledWindows(
            torch.zeros(n, 2, OBS), torch.zeros(n, 2, ACT), {t: torch.ones(n) for t in tasks}
        )

    def sample(self, batch_size: int, hilp: bool = False) -> Any:
        return torch.rand(batch_size, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class FakeAgent:
    """Records what the evaluator feeds it; its loss turns NaN / it raises SIGINT at given steps."""

    def __init__(self, nan_at: int | None = None, sigint_at: int | None = None) -> None:
        self.windows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.nan_at, self.sigint_at = nan_at, sigint_at
        self.device = torch.device("cpu")
        self.batch_spec = BatchSpec()  # windows only

    def infer_z(self, goal: torch.Tensor, goal_action: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        return reward.mean(0)[:, None].expand(-1, D)  # reward [N, K] -> z [K, d]

    def act(
        self, obs_window: torch.Tensor, prev_action_window: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        self.windows.append((obs_window.clone(), prev_action_window.clone()))
        return obs_window[:, -1, :ACT] * 0.1 + 0.01  # action depends on the last obs

    def initial_actor_state(self, n: int) -> torch.Tensor:
        return torch.zeros(n)

    def act_step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.steps.append((obs.clone(), prev_action.clone()))
        return obs[:, :ACT] * 0.1 + 0.01, state + 1

    def update(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        if self.sigint_at == step:
            os.kill(os.getpid(), signal.SIGINT)
        loss = torch.tensor(float("nan") if self.nan_at is not None and step >= self.nan_at else 1.0 / step)
        return {"loss": loss, "other": torch.tensor(0.5)}


def make_evaluator(agent_buffer: FakeBuffer, mode: str = "sliding", length: int | None = None) -> Evaluator:
    return Evaluator(
        lambda seed: FakeEnv(["a", "b"], rollouts=2), agent_buffer, ["a", "b"], 3, ACT, 8, mode, length
    )


def test_sliding_window_rollout_pads_like_training() -> None:
    agent = FakeAgent()
    result = make_evaluator(FakeBuffer()).evaluate(agent, step=0)
    assert len(agent.windows) == 5  # one batched act per environment step
    obs0, act0 = agent.windows[0]
    assert obs0.shape == (4, 3, OBS) and torch.all(obs0 == 0) and torch.all(act0 == 0)
    obs2, act2 = agent.windows[2]
    assert obs2[0, :, 0].tolist() == [0, 1, 2]  # first slot still the padded first observation
    first_action = 0.01
    second_action = 0.1 * 1 + 0.01
    assert act2[0, :, 0].tolist() == pytest.approx([0.0, first_action, second_action])
    assert result.returns == {("a", 1.0): [5.0, 5.0], ("b", 1.0): [10.0, 10.0]}
    assert result.mean_iqm() == 7.5
    assert [row["task"] for row in result.rows()] == ["a", "b"] and result.rows()[1][
        "returns"
    ] == "10.0000 10.0000"


def test_carry_rollout_and_episode_cap() -> None:
    agent = FakeAgent()
    result = make_evaluator(FakeBuffer(), "carry", length=3).evaluate(agent, step=0)
    assert len(agent.steps) == 3 and not agent.windows
    assert torch.all(agent.steps[0][1] == 0) and agent.steps[1][1][0, 0].item() == pytest.approx(0.01)
    assert result.returns[("a", 1.0)] == [3.0, 3.0]


def test_iqm_is_the_25_percent_trimmed_mean() -> None:
    assert iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(np.mean([2, 3, 4, 5]))


@pytest.fixture()
def fake_agent_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    def save_agent(directory: Path, agent: Any, state: Any = None) -> None:
        Path(directory).mkdir(parents=True)
        (Path(directory) / "agent.txt").write_text("fake")

    monkeypatch.setattr(agent_checkpoint, "save_agent", save_agent)
    monkeypatch.setattr(agent_checkpoint, "restore_agent", lambda agent, directory, **_: agent)
    monkeypatch.setattr(agent_checkpoint, "checkpoint_problem", lambda path: None)  # no real agent files


def make_trainer(tmp_path: Path, agent: FakeAgent, steps: int = 20) -> Trainer:
    cfg = RunConfig(run_dir=str(tmp_path))
    cfg.train.learning_steps, cfg.train.eval_frequency, cfg.train.log_interval = steps, 10, 4
    cfg.train.show_progress = False
    logger = MetricLogger(tmp_path, cfg.logger, cfg.to_dict(), "test")
    return Trainer(cfg, agent, FakeBuffer(), make_evaluator(FakeBuffer()), logger)


def test_non_finite_loss_stops_naming_step_and_keeps_last_good_checkpoint(
    tmp_path: Path, fake_agent_checkpoints: None
) -> None:
    trainer = make_trainer(tmp_path, FakeAgent(nan_at=14))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 14: train/loss = nan.*step 10"):
        trainer.run()
    assert latest_checkpoint(tmp_path).name == "step_000000010"


def test_sigint_writes_checkpoint_and_stops(tmp_path: Path, fake_agent_checkpoints: None) -> None:
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in a background job
    trainer = make_trainer(tmp_path, FakeAgent(sigint_at=7))
    with pytest.raises(KeyboardInterrupt, match="SIGINT at step 7"):
        trainer.run()
    assert latest_checkpoint(tmp_path).name == "step_000000007"
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is removed again


def test_full_run_results_and_csvs(tmp_path: Path, fake_agent_checkpoints: None) -> None:
    (results,) = make_trainer(tmp_path, FakeAgent(), steps=20).run()
    assert [p["step"] for p in results["curve"]] == [0, 10, 20]
    assert results["final"]["iqm"] == {"a": {"1.0": 5.0}, "b": {"1.0": 10.0}}
    assert results["best"]["mean_iqm"] == 7.5 and results["best"]["step"] == 0
    train = CSVWriter(tmp_path / "train.csv").read()
    assert [int(r["step"]) for r in train] == [4, 8, 10, 12, 16, 20]
    assert float(train[0]["train/loss"]) == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]))
    assert math.isfinite(float(train[0]["time/updates_per_second"]))


def test_csv_writer_grows_columns_and_truncates(tmp_path: Path) -> None:
    writer = CSVWriter(tmp_path / "x.csv")
    writer.write({"step": 1, "a": 1.0})
    writer.write({"step": 2, "a": 2.0, "b": 3.0})
    writer.write({"step": 3, "b": 4.0})
    assert CSVWriter(tmp_path / "x.csv").columns == ["step", "a", "b"]
    writer.truncate_after(2)
    assert [r["step"] for r in writer.read()] == ["1", "2"] and writer.read()[0]["b"] == ""


def test_sliding_window_zero_padding() -> None:
    class StartAtFive(FakeEnv):
        def reset(self) -> np.ndarray:
            return np.full((len(self.episode_keys), OBS), 5.0, np.float32)

    agent = FakeAgent()
    evaluator = Evaluator(
        lambda seed: StartAtFive(["a"], rollouts=1), FakeBuffer(), ["a"], 3, ACT, 8, pad_with_zeros=True
    )
    evaluator.evaluate(agent, step=0)
    assert agent.windows[0][0][0, :, 0].tolist() == [0.0, 0.0, 5.0]
    assert agent.windows[1][0][0, :, 0].tolist() == [0.0, 5.0, 1.0]


def test_resume_on_another_device_type_reseeds_generators(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint from a GPU run (16-byte CUDA generator states) resumes on the CPU: weights and
    optimizers restored, torch generators reseeded deterministically, a warning logged."""
    from bfm.agents import make_agent
    from bfm.collection import make_synthetic_dataset
    from bfm.data import SequenceBuffer
    from bfm.training.checkpoint import load_checkpoint, save_checkpoint

    path = make_synthetic_dataset(tmp_path / "data", "walker", episodes=2, episode_length=20, seed=0)
    config = {"hidden_dim": 16, "head_hidden_dim": 16, "z_dim": 4,
              "memory": {"name": "mlp", "model_dimension": 16, "history_length": 3, "backward_history_length": 2}}  # fmt: skip

    def build() -> tuple[Any, SequenceBuffer]:
        return make_agent("fb_m", 24, 24, 6, config, "cpu"), SequenceBuffer(
            path, "walker", None, 3, 2, seed=0
        )

    agent, buffer = build()
    agent.update(buffer.sample(8))
    ckpt = save_checkpoint(tmp_path / "run", 1, agent, buffer)
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    cuda_like = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator state has 16 bytes
    state["device_type"] = "cuda"
    state["buffer_rng"]["generator"] = state["buffer_rng"]["labelled_generator"] = cuda_like
    torch.save(state, ckpt / "trainer.pt")
    optimizers = torch.load(ckpt / "agent" / "optimizers.pt", weights_only=True)
    optimizers["generator"] = cuda_like
    torch.save(optimizers, ckpt / "agent" / "optimizers.pt")

    resumed = []
    for _ in range(2):
        fresh_agent, fresh_buffer = build()
        with caplog.at_level("WARNING"):
            assert load_checkpoint(ckpt, fresh_agent, fresh_buffer)["step"] == 1
        for a, b in zip(agent.model.parameters(), fresh_agent.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        resumed.append((fresh_buffer.sample(8).obs_window, fresh_agent.generator.get_state()))
    assert "written on cuda, resuming on cpu" in caplog.text
    torch.testing.assert_close(resumed[0][0], resumed[1][0], rtol=0, atol=0)  # deterministic reseed
    assert torch.equal(resumed[0][1], resumed[1][1])
