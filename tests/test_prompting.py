"""Using a trained model: re-evaluation, reward and goal prompts, videos, the evaluate.py CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bfm.cli import evaluate as evaluate_cli
from bfm.envs.prompts import (
    FEATURES,
    GoalReward,
    PromptError,
    file_reward,
    formula_reward,
    parse_reward,
    task_reward,
)
from bfm.envs.render import RenderError, check_gl
from bfm.training.prompting import TrainedModel
from tests.test_cli import cli_env, run_cli

ROOT = Path(__file__).resolve().parents[1]
STAND = "(3 * tolerance(torso_height, 1.2, inf, margin=0.6) + (1 + torso_upright) / 2) / 4"
WALK_FILE = """
from bfm.cli import evaluate as evaluate_cli
from bfm.envs.prompts import tolerance

def walk(torso_height, torso_upright, horizontal_velocity):
    stand = (3 * tolerance(torso_height, bounds=(1.2, float("inf")), margin=0.6) + (1 + torso_upright) / 2) / 4
    move = tolerance(horizontal_velocity, bounds=(1.0, float("inf")), margin=0.5, value_at_margin=0.5, sigmoid="linear")
    return stand * (5 * move + 1) / 6
"""


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Smoke runs: FB-M GRU on walker_flickering evaluated every 3 and every 2 steps, HILP-M on walker."""
    root = tmp_path_factory.mktemp("prompt_runs")
    common = ["experiment=smoke", f"--data_dir={data_dir}"]
    out = {"fb_m": root / "fb_m", "fb_m_every2": root / "fb_m_every2", "hilp_m": root / "hilp_m"}
    run_cli("fb_m", "walker_flickering", "rnd", *common, f"--run_dir={out['fb_m']}")
    run_cli(
        "fb_m", "walker_flickering", "rnd", *common, "--eval_frequency=2", f"--run_dir={out['fb_m_every2']}"
    )
    run_cli("hilp_m", "walker", "rnd", *common, f"--run_dir={out['hilp_m']}")
    return out


def eval_rows(run_dir: Path) -> dict[tuple[int, str], list[float]]:
    with (run_dir / "eval.csv").open() as f:
        return {
            (int(float(r["step"])), r["task"]): [float(x) for x in r["returns"].split()]
            for r in csv.DictReader(f)
        }


def test_reevaluation_equals_the_training_evaluation_at_any_cadence(runs: dict[str, Path]) -> None:
    every3, every2 = eval_rows(runs["fb_m"]), eval_rows(runs["fb_m_every2"])
    tasks = sorted({task for _, task in every3})
    for task in tasks:  # the same weights at step 6, evaluated after 2 or 3 earlier evaluations
        assert every3[(6, task)] == every2[(6, task)]
    for step in (3, 6):  # the checkpoints kept
        model = TrainedModel.load(runs["fb_m"], step=step, device="cpu")
        result = model.evaluate().result
        for task in tasks:
            assert result.returns[(task, 1.0)] == pytest.approx(every3[(step, task)], abs=1e-4)


def test_a_formula_or_file_equal_to_a_task_reproduces_its_z_and_returns(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    model = TrainedModel.load(runs["fb_m"], device="cpu")
    buffer, setup = model._buffer(model.cfg.env.domain)
    evaluator = model._evaluator(model.cfg, setup, buffer, ["stand", model.reward(STAND, "stand_formula")])
    z = evaluator.infer_task_z(model.agent, model.step)
    assert torch.equal(z["stand"], z["stand_formula"])
    (tmp_path / "mine.py").write_text(WALK_FILE)
    builtin = model.evaluate(tasks=["walk"], rollouts=2).result.returns[("walk", 1.0)]
    prompted = model.evaluate(rewards=[f"{tmp_path / 'mine.py'}:walk"], rollouts=2).result.returns[
        ("walk", 1.0)
    ]
    assert builtin == prompted
    stand = model.evaluate(tasks=["stand"], rollouts=2).result.returns[("stand", 1.0)]
    assert model.evaluate(rewards=[STAND], rollouts=2).result.returns[("formula", 1.0)] == stand


def test_reward_prompt_is_scored_by_its_own_reward(runs: dict[str, Path]) -> None:
    model = TrainedModel.load(runs["fb_m"], device="cpu")
    result = model.evaluate(rewards=["torso_height > 100"], rollouts=1).result  # never true
    assert result.returns == {("formula", 1.0): [0.0]}
    result = model.evaluate(rewards=["1 + 0 * torso_height"], rollouts=1).result  # 1 per step
    assert result.returns == {("formula", 1.0): [20.0]}  # the smoke preset's 20-step episodes


@pytest.mark.parametrize("run", ["fb_m", "hilp_m"])
def test_goal_prompts(runs: dict[str, Path], run: str, tmp_path: Path) -> None:
    model = TrainedModel.load(runs[run], device="cpu")
    goal = model.goal("1:30")
    assert isinstance(goal, GoalReward) and goal.threshold > 0
    evaluation = model.evaluate(goals=[goal], rollouts=2, out=tmp_path / "goal")
    returns = evaluation.result.returns[("goal_1_30", 1.0)]
    assert all(0 <= r <= 20 for r in returns)
    details = evaluation.result.details[("goal_1_30", 1.0)]
    assert len(details["min_distance"]) == 2 and min(details["min_distance"]) >= 0
    if run == "fb_m":  # z = B(goal window)
        buffer, setup = model._buffer(model.cfg.env.domain)
        evaluator = model._evaluator(model.cfg, setup, buffer, [goal])
        inferred = evaluator.infer_task_z(model.agent, model.step)["goal_1_30"]
        expected = model.agent.model.backward(
            torch.as_tensor(goal.window), torch.as_tensor(goal.action_window)
        )[0]
        assert torch.allclose(inferred, expected)
    rows = list(csv.DictReader((tmp_path / "goal" / "episodes.csv").open()))
    assert [r["prompt"] for r in rows] == ["goal_1_30"] * 2 and rows[0]["min_distance"]
    np.save(tmp_path / "pose.npy", model._buffer(model.cfg.env.domain)[0].raw_observation[30])
    from_file = model.evaluate(goals=[str(tmp_path / "pose.npy")], rollouts=1).result
    assert ("goal_pose", 1.0) in from_file.returns


def _gl_or_skip() -> None:
    try:
        check_gl()
    except RenderError as error:
        pytest.skip(f"no OpenGL backend for MuJoCo's renderer here ({error})")


def test_video_of_a_flickering_rollout(runs: dict[str, Path], tmp_path: Path) -> None:
    _gl_or_skip()
    import imageio.v3 as iio

    model = TrainedModel.load(runs["fb_m"], device="cpu")
    evaluation = model.evaluate(
        tasks=["walk"], rollouts=2, video=1, video_every=5, video_size=(64, 48), out=tmp_path / "ev"
    )
    names = sorted(p.name for p in evaluation.videos)
    assert names == ["walk_m1_ep0.mp4", "walk_m1_ep0.png"]
    frames = iio.imread(tmp_path / "ev" / "videos" / "walk_m1_ep0.mp4")
    assert frames.shape == (5, 48, 64, 3)  # steps 0, 5, 10, 15, 20 of the 20-step smoke episode
    assert len({frame.tobytes() for frame in frames}) == 5
    strip = iio.imread(tmp_path / "ev" / "videos" / "walk_m1_ep0.png")
    assert strip.shape[:2] == (48, 64 * 5)


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *args],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_an_evaluation_folder_and_leaves_training_files(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = runs["hilp_m"]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    proc = run_evaluate(
        str(run_dir),
        "--reward",
        "(torso_height > 0.5) & (abs(horizontal_velocity) < 0.5)",
        "--tasks",
        "stand",
        "--rollouts",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "formula" in proc.stdout and "stand" in proc.stdout
    folder = run_dir / "evaluations" / "step6_walker"
    results = json.loads((folder / "results.json").read_text())
    assert set(results["iqm"]) == {"stand", "formula"} and results["step"] == 6
    assert len(list(csv.DictReader((folder / "episodes.csv").open()))) == 4
    after = {
        p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and "evaluations" not in p.parts
    }
    assert after == before
    assert run_evaluate(str(run_dir), "--rollouts", "1").returncode == 0
    assert (run_dir / "evaluations" / "step6_walker_2").is_dir()  # never replaces an earlier one


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}", "--step", "4"], "no checkpoint at step 4; checkpoints there: 3, 6"),
        (["{run}", "--domain", "cheetah"], "not a variant of the run's domain 'walker'"),
        (["{run}", "--tasks", "jump"], "unknown task 'jump' for domain walker; accepted: stand"),
        (
            ["{run}", "--reward", "torso_height + speed"],
            "unknown name 'speed'; accepted: features torso_height",
        ),
        (
            ["{run}", "--reward", "__import__('os').system('x')"],
            "unknown function \"__import__('os').system\"",
        ),
        (["{run}", "--reward", "torso_height >"], "does not parse"),
        (["{run}", "--reward", "{tmp}/none.py:f"], "does not exist (expected FILE.py:FUNCTION)"),
        (["{run}", "--reward", "{tmp}/bad.py:missing"], "has no function 'missing'; functions in it: raises"),
        (["{run}", "--reward", "{tmp}/bad.py:raises"], "raised ZeroDivisionError"),
        (["{run}", "--reward", "{tmp}/bad.py:shape"], "returned (2, 2)"),
        (["{run}", "--reward", "{tmp}/bad.py:nan"], "returned a non-finite value"),
        (["{run}", "--reward", "{tmp}/bad.py:wrong_feature"], "speed are not walker features"),
        (["{run}", "--goal", "99:5"], "outside the data: episodes 0..3"),
        (["{run}", "--goal", "x"], "expected EPISODE:STEP"),
        (["{run}", "--video_size", "8"], "expected WIDTHxHEIGHT"),
        (["{tmp}"], "holds no config.yaml"),
        (["{tmp}/nope"], "nope does not exist; pass a folder main_exorl.py wrote"),
        (["{tmp}/bad.py"], "bad.py is a file; pass a folder main_exorl.py wrote"),
        (["{run}", "--name", ".."], "one folder name of letters"),
        (["{run}", "--domain", "walker_bogus"], "walker_bogus"),
        (["{run}", "--domain", "walker_occluded"], "gives observations of widths (15, 15)"),
        (["{run}", "--multipliers", "inf"], "must be a finite number > 0"),
        (["{run}", "--reward", "9**9**9"], "cannot be evaluated"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    runs: dict[str, Path], tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bad.py").write_text(
        "import numpy as np\n"
        "def raises(torso_height):\n    return 1 / 0\n"
        "def shape(torso_height):\n    return np.zeros((2, 2))\n"
        "def nan(torso_height):\n    return torso_height * np.nan\n"
        "def wrong_feature(speed):\n    return speed\n"
    )
    run_dir = runs["fb_m"]
    before = sorted(p for p in run_dir.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main([a.format(run=run_dir, tmp=tmp_path) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("evaluate.py: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert sorted(p for p in run_dir.rglob("*")) == before


def test_no_gl_backend_exits_2_before_any_rollout(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("bfm.envs.render.BACKENDS", ("no_such_backend",))
    before = sorted(p for p in runs["fb_m"].rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main([str(runs["fb_m"]), "--video", "1"])
    assert exit_info.value.code == 2
    assert "no usable OpenGL backend for video (no_such_backend:" in capsys.readouterr().err
    assert sorted(p for p in runs["fb_m"].rglob("*")) == before


def test_cli_process_exits_2_on_bad_input(runs: dict[str, Path]) -> None:
    proc = run_evaluate(str(runs["fb_m"]), "--reward", "torso_height + speed")
    assert (
        proc.returncode == 2
        and proc.stderr.count("evaluate.py: error:") == 1
        and "Traceback" not in proc.stderr
    )


def test_formula_checks() -> None:
    features = np.random.default_rng(0).normal(size=(50, 4))
    assert np.array_equal(formula_reward("walker", STAND)(features), task_reward("walker", "stand")(features))
    assert (
        formula_reward("walker", "where(horizontal_velocity > 0, 1, -1)")(features).tolist()
        == np.where(features[:, 2] > 0, 1.0, -1.0).tolist()
    )
    for bad, why in [
        ("torso_height and 1", "use & and |"),
        ("torso_height.real", "Attribute is not allowed"),
        ("'text'", "is not a number"),
        ("tolerance(torso_height, 2, 1)", "lower <= upper"),
        ("tolerance(torso_height, 0, 1, sigmoid='box')", "is not one of"),
        ("tolerance(torso_height, torso_upright, 1)", "must be a constant number"),
        ("[torso_height]", "List is not allowed"),
    ]:
        with pytest.raises(PromptError, match=why.replace("|", r"\|")):
            formula_reward("walker", bad)
    assert set(FEATURES) == {"walker", "cheetah", "quadruped"}
    assert formula_reward(
        "cheetah", "tolerance(-speed, 10, inf, margin=10, sigmoid='linear', value_at_margin=0)"
    )(np.array([[-10.0], [0.0]])).tolist() == [1.0, 0.0]


def test_file_reward_takes_the_features_it_names(tmp_path: Path) -> None:
    (tmp_path / "r.py").write_text(
        WALK_FILE + "\ndef everything(**features):\n    return features['torso_height']\n"
    )
    features = np.random.default_rng(1).normal(size=(30, 4))
    walk = file_reward("walker", f"{tmp_path / 'r.py'}:walk")
    assert walk.name == "walk" and np.array_equal(walk(features), task_reward("walker", "walk")(features))
    assert np.array_equal(file_reward("walker", f"{tmp_path / 'r.py'}:everything")(features), features[:, 0])
    named = parse_reward("walker", f"stroll = {tmp_path / 'r.py'}:walk")
    assert named.name == "stroll" and np.array_equal(named(features), walk(features))
    assert parse_reward("walker", "headstand=torso_upright < -0.8").name == "headstand"
    assert parse_reward("walker", "torso_height==1").name == "formula"  # == is not a name


def test_the_example_notebook_runs_at_smoke_size(runs: dict[str, Path], tmp_path: Path) -> None:
    """The notebook's code cells, run in order as one script against a smoke run (IPython's
    display stubbed when Jupyter is not installed)."""
    _gl_or_skip()
    notebook = json.loads((ROOT / "docs" / "using_a_trained_model.ipynb").read_text())
    code = "\n\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    stub = tmp_path / "stub" / "IPython"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "display.py").write_text(
        "def display(*a, **k):\n    pass\nclass Video:\n    def __init__(self, *a, **k):\n        pass\nImage = Video\n"
    )
    (tmp_path / "notebook.py").write_text(code)
    env = dict(cli_env(), BFM_NOTEBOOK_RUN=str(runs["fb_m"]), BFM_NOTEBOOK_SMOKE="1")
    paths = [str(ROOT)] + ([] if importlib.util.find_spec("IPython") else [str(stub.parent)])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "notebook.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean over prompts" in proc.stdout
