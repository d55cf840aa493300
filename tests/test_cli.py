"""The training CLI end to end (subprocess, smoke preset, tiny synthetic walker dataset)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bfm.agents import MEMORY_TYPES  # equal to the registries (tests/test_repo.py)
from bfm.training.config import ALGORITHMS

ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    return env


def run_cli(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main_exorl.py"), *args],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def smoke_runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every algorithm x memory pairing in smoke mode: one multirun per memory-free / memory group."""
    runs = tmp_path_factory.mktemp("runs")
    common = ["experiment=smoke", f"--data_dir={data_dir}", f"run_root={runs}", "-m"]
    run_cli("fb_m,hilp_m", "walker_flickering", "rnd", *common, f"memory={','.join(MEMORY_TYPES)}")
    run_cli("fb,hilp", "walker_flickering", "rnd", *common)
    return runs


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_smoke_every_algorithm_and_memory(smoke_runs: Path, algorithm: str) -> None:
    memories = ("none",) if not algorithm.endswith("_m") else MEMORY_TYPES
    for memory in memories:
        run_dir = smoke_runs / algorithm / "walker_flickering" / "rnd" / memory / "seed42"
        results = results_of(run_dir)
        assert results["algorithm"] == algorithm and results["memory"] == memory
        assert results["steps"] == 6 and results["final"]["step"] == 6
        assert [p["step"] for p in results["curve"]] == [0, 3, 6]
        assert set(results["final"]["iqm"]) == {"stand", "walk", "run", "flip"}
        assert results["finite"] and results["rollout_memory"] == "sliding"
        assert results["dataset_provenance"]["paths"][0].endswith("walker/rnd/buffer/dataset.npz")
        for name in ("config.yaml", "train.csv", "eval.csv", "checkpoints/latest"):
            assert (run_dir / name).exists(), name
        eval_lines = (run_dir / "eval.csv").read_text().strip().splitlines()
        assert len(eval_lines) == 1 + 3 * 4  # header + 3 evaluations x 4 tasks


def test_report_on_smoke_runs(smoke_runs: Path, tmp_path: Path) -> None:
    from bfm.cli import report as plot_results

    assert plot_results.main([str(smoke_runs), "--out", str(tmp_path), "--reps", "200"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| flickering | walker | rnd |" in report
    for method in ("FB", "HILP", "HILP-M", "FB-M (transformer)", "FB-stack"):
        assert method in report
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    assert (tmp_path / "iqm_bars.png").stat().st_size > 1000


def _resume_args(data_dir: Path, run_dir: Path) -> list[str]:
    return [
        "fb_m",
        "walker_noise",
        "rnd",
        "experiment=smoke",
        f"--data_dir={data_dir}",
        f"--run_dir={run_dir}",
        "--learning_steps=40",
        "--eval_frequency=10",
        "train.log_interval=5",
    ]


def start_cli(args: list[str]) -> subprocess.Popen:
    """main_exorl.py with ``args`` in the background, its output discarded."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main_exorl.py"), *args],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_patched_cli(setup: str, argv: list[str]) -> tuple[int, str]:
    """main_exorl.py's ``cli(argv)`` in a fresh process after the Python lines ``setup`` (a fault
    injected into the library); returns (exit code, last stderr line), asserting no traceback."""
    code = f"{setup}\nfrom bfm.cli.train import cli\ncli({argv!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, proc.stderr.strip().splitlines()[-1]


def kill_when(args: list[str], path: Path) -> None:
    """Starts main_exorl.py with ``args`` and kills it (SIGKILL) as soon as ``path`` exists."""
    proc = start_cli(args)
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"


def test_resume_after_kill_matches_uninterrupted(data_dir: Path, tmp_path: Path) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_cli(*_resume_args(data_dir, reference))
    kill_when(_resume_args(data_dir, resumed), resumed / "checkpoints" / "latest")
    assert not (resumed / "results.json").exists()
    run_cli(*_resume_args(data_dir, resumed))
    a, b = results_of(reference), results_of(resumed)
    assert b["final"] == a["final"]
    assert b["curve"] == a["curve"]
    assert (resumed / "eval.csv").read_text() == (reference / "eval.csv").read_text()


def test_sweep_with_joblib_launcher(data_dir: Path, tmp_path: Path) -> None:
    run_cli(
        "fb_m",
        "walker",
        "rnd",
        "experiment=smoke",
        f"--data_dir={data_dir}",
        f"run_root={tmp_path}",
        "train.learning_steps=2",
        "train.eval_frequency=2",
        "-m",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    finals = [results_of(tmp_path / "fb_m" / "walker" / "rnd" / "gru" / f"seed{s}")["final"] for s in (0, 1)]
    assert finals[0]["step"] == finals[1]["step"] == 2
    assert finals[0]["returns"] != finals[1]["returns"]  # different seeds, different runs


def test_bad_input_exits_2_with_one_line(data_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "fb_m",
        "walker",
        "rnd",
        "--eval_task",
        "dance",
        f"--data_dir={data_dir}",
        f"run_root={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "main_exorl.py: error: unknown task 'dance' for domain walker; accepted: stand, walk, run, flip"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_wandb_offline_without_account(data_dir: Path, tmp_path: Path) -> None:
    run_cli(
        "fb_m",
        "walker",
        "rnd",
        "experiment=smoke",
        f"--data_dir={data_dir}",
        f"--run_dir={tmp_path}",
        "--wandb",
    )
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert results_of(tmp_path)["final"]["step"] == 6


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_rerun_continues(data_dir: Path, tmp_path: Path) -> None:
    args = [*_resume_args(data_dir, tmp_path), "--learning_steps=400", "--eval_frequency=200"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main_exorl.py"), *args],
        cwd=ROOT,
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted (SIGINT at step" in stderr
    step = int((tmp_path / "checkpoints" / "latest").read_text().split("_")[1])
    assert 0 < step < 400
    run_cli(*args)
    assert results_of(tmp_path)["final"]["step"] == 400


def test_carry_rollouts_on_occluded_observations(data_dir: Path, tmp_path: Path) -> None:
    run_cli(
        "fb_m",
        "walker_occluded",
        "rnd",
        "experiment=smoke",
        f"--data_dir={data_dir}",
        f"run_root={tmp_path}",
        "--rollout_memory=carry",
        "-m",
        "memory=gru,s4d",
    )
    for memory in ("gru", "s4d"):
        results = results_of(tmp_path / "fb_m" / "walker_occluded" / "rnd" / memory / "seed42")
        assert results["rollout_memory"] == "carry" and results["finite"]


def test_progress_in_a_log_is_plain_lines(data_dir: Path, tmp_path: Path) -> None:
    """Without a terminal the progress bar becomes one plain line a minute (and one at the end)."""
    proc = run_cli(
        "fb",
        "walker",
        "rnd",
        "experiment=smoke",
        "train.show_progress=true",
        f"--data_dir={data_dir}",
        f"--run_dir={tmp_path / 'run'}",
    )
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " upd (" in line]
    assert len(lines) == 1 and lines[0].startswith("fb walker none: 6/6 upd (100 %), "), proc.stderr[-2000:]


def test_one_run_per_directory(data_dir: Path, tmp_path: Path) -> None:
    """A second process on a run directory in use is refused at once (exit 2, one line naming the
    holder); the lock of a killed run is taken over with a warning and the run continues."""
    run = tmp_path / "run"
    args = [
        *_resume_args(data_dir, run)[:-3],
        "--learning_steps=4000",
        "--eval_frequency=20",
        "train.log_interval=5",
    ]
    first = start_cli(args)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.05)
        second = run_cli(*args, check=False)
        assert first.poll() is None, "the first run finished before the second started"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main_exorl.py: error: run directory "), second.stderr
    assert f"is in use by pid {first.pid} on host " in lines[0] and "choose another directory" in lines[0]
    assert json.loads((run / ".lock.json").read_text())["pid"] == first.pid  # left by the killed run

    third = run_cli(*args[:-3], "--learning_steps=40", "--eval_frequency=20", "train.log_interval=5")
    assert (
        f"taking over the lock of pid {first.pid} on host "
        in third.stderr + (run / "main_exorl.log").read_text()
    )
    assert results_of(run)["steps"] >= 40 and not (run / ".lock.json").exists()  # resumed, finished, released
