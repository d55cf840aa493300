"""Damaged, missing and foreign checkpoint files: resume never starts over silently, never deletes
an intact checkpoint, and names the file when it cannot go on (exit 2, one line)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bfm.training.checkpoint import checkpoint_problem, resume_point
from tests.test_cli import ROOT, run_cli
from tests.test_cli_input import fail

SMOKE = ["experiment=smoke", "train.eval_frequency=3"]


@pytest.fixture(scope="module")
def finished(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An FB-M and a HILP smoke run of 6 steps: checkpoints step 3 and step 6 each."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for algo in ("fb_m", "hilp"):
        runs[algo] = root / algo
        run_cli(algo, "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={runs[algo]}", *SMOKE)
    return runs


def copy_run(finished: dict[str, Path], algo: str, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished[algo], run_dir)
    return run_dir


def resume(run_dir: Path, data_dir: Path, steps: int = 9, algo: str = "fb_m", check: bool = True):
    return run_cli(
        algo, "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}", *SMOKE,
        f"train.learning_steps={steps}", check=check,
    )  # fmt: skip


STEP3, STEP6 = "step_000000003", "step_000000006"


def test_latest_naming_a_missing_step_resumes_from_the_newest_intact_one(
    finished: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    run_dir = copy_run(finished, "fb_m", tmp_path)
    (run_dir / "checkpoints" / "latest").write_text("step_000000099")
    resume(run_dir, data_dir)
    log = (run_dir / "main_exorl.log").read_text()  # hydra's job log (its console copy is stdout)
    assert "step_000000099: it does not exist" in log and f"resuming from {STEP6}" in log, log[-2000:]
    assert re.search(rf"resume from \S*{STEP6}", log)
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 9


def test_missing_optimizers_of_the_newest_falls_back_and_sets_it_aside(
    finished: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    run_dir = copy_run(finished, "fb_m", tmp_path)
    (run_dir / "checkpoints" / STEP6 / "agent" / "optimizers.pt").unlink()
    resume(run_dir, data_dir)
    log = (run_dir / "main_exorl.log").read_text()
    assert "agent/optimizers.pt is missing" in log and f"resuming from {STEP3}" in log, log[-2000:]
    assert (run_dir / "checkpoints" / f"damaged_{STEP6}" / "agent" / "weights.safetensors").is_file()
    assert re.search(rf"resume from \S*{STEP3}", log)
    assert checkpoint_problem(run_dir / "checkpoints" / "step_000000009") is None


def test_missing_pointer_still_resumes(finished: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    """A kill between the checkpoint's rename and the pointer's update leaves no (or an old) pointer."""
    run_dir = copy_run(finished, "fb_m", tmp_path)
    (run_dir / "checkpoints" / "latest").unlink()
    assert resume_point(run_dir).path == run_dir / "checkpoints" / STEP6
    (run_dir / "checkpoints" / "latest").write_text(STEP3)
    assert resume_point(run_dir).path == run_dir / "checkpoints" / STEP6


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda ckpt: (ckpt / "trainer.pt").write_bytes(b"garbage"), "trainer.pt is unreadable"),
        (lambda ckpt: (ckpt / "trainer.pt").unlink(), "trainer.pt is missing"),
        (
            lambda ckpt: (ckpt / "agent" / "agent.json").write_text("{oops"),
            "agent/agent.json is not valid JSON",
        ),
        (
            lambda ckpt: (ckpt / "agent" / "weights.safetensors").write_bytes(
                (ckpt / "agent" / "weights.safetensors").read_bytes()[:-100]
            ),
            "agent/weights.safetensors is unreadable",
        ),
        (
            lambda ckpt: (ckpt / "agent" / "optimizers.pt").write_bytes(
                (ckpt / "agent" / "optimizers.pt").read_bytes()[:50]
            ),
            "agent/optimizers.pt is unreadable",
        ),
    ],
)
def test_no_intact_checkpoint_is_refused_naming_the_file(
    damage, expected: str, finished: dict[str, Path], data_dir: Path, tmp_path: Path, capsys
) -> None:
    run_dir = copy_run(finished, "fb_m", tmp_path)
    for step in (STEP3, STEP6):
        damage(run_dir / "checkpoints" / step)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    line = fail(["fb_m", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}", *SMOKE], capsys)
    assert f"no intact checkpoint to resume in {run_dir}: {STEP6}: {expected}" in line
    assert "(and 1 more damaged)" in line and "to train from step 0" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before  # nothing touched


def test_a_foreign_checkpoint_is_refused(finished: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    """HILP checkpoints copied into an FB-M run directory (its config.yaml still FB-M's)."""
    run_dir = copy_run(finished, "fb_m", tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.copytree(finished["hilp"] / "checkpoints", run_dir / "checkpoints")
    proc = resume(run_dir, data_dir, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"checkpoint {run_dir / 'checkpoints' / STEP6} does not fit this run's agent" in last
    assert (run_dir / "checkpoints" / STEP6 / "trainer.pt").is_file()  # left as it was


def test_unreadable_config_yaml_is_named(
    finished: dict[str, Path], data_dir: Path, tmp_path: Path, capsys
) -> None:
    run_dir = copy_run(finished, "fb_m", tmp_path)
    (run_dir / "config.yaml").write_text("agent: [unclosed\n")
    line = fail(["fb_m", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}", *SMOKE], capsys)
    assert f"{run_dir / 'config.yaml'} is not a readable run config" in line


def test_no_pickle_is_loaded_anywhere() -> None:
    """torch.load always with weights_only=True, np.load never with allow_pickle=True."""
    unsafe = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(")
    here = Path(__file__).resolve()
    wrong = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if not {".venv", "runs", "datasets"} & set(p.relative_to(ROOT).parts) and p != here
        and unsafe.search(p.read_text())
    ]  # fmt: skip
    assert not wrong, wrong


def test_a_full_disk_while_checkpointing_exits_2_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    """torch's writer fails ("file write failed") on a full disk at the second checkpoint: one line
    naming the file and the full disk, exit 2, no temporary folder, the first checkpoint intact."""
    from tests.test_cli import run_patched_cli

    run = tmp_path / "run"
    argv = ["fb", "walker", "rnd", "experiment=smoke", f"--data_dir={data_dir}", f"--run_dir={run}",
            "--learning_steps=4", "--eval_frequency=2"]  # fmt: skip
    setup = (
        "import collections, torch; from bfm.training import checkpoint; save = torch.save\n"
        "def failing(obj, f, *a, **k):\n"
        "    if isinstance(obj, dict) and obj.get('step', 0) > 0:\n"
        "        raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')\n"
        "    return save(obj, f, *a, **k)\n"
        "checkpoint.torch.save = failing\n"
        "full = collections.namedtuple('usage', 'total used free')(10, 10, 0)\n"
        "checkpoint.shutil.disk_usage = lambda path: full"
    )
    code, line = run_patched_cli(setup, argv)
    assert code == 2, line
    assert line.startswith("main_exorl.py: error: no space left on the device while writing ")
    assert "checkpoints/.tmp_step_000000002/trainer.pt" in line and "rerun the same command" in line
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step_000000000"]
    assert (run / "checkpoints" / "latest").read_text() == "step_000000000"
