"""A full disk at each write site of the programs: exit 2, one line naming the file, no partial or
temporary file left, what was written before intact, and the same command continues afterwards.

The fault is injected where the disk would refuse it: ``write()`` on the file (half the bytes go
through, then ENOSPC without a file name, as the kernel reports it). Checkpoints and dataset.npz
have their own tests (tests/test_checkpoint_faults.py, tests/test_reformatter.py, the report's in
tests/test_report.py).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bfm.cli import evaluate as evaluate_cli
from bfm.cli import reformat as exorl_reformatter
from bfm.data import dataset_path, list_episode_files, read_manifest
from bfm.data.exorl import buffer_dir
from bfm.training.logger import CSVWriter
from tests.test_cli import ROOT, cli_env
from tests.test_reformatter import exorl_zip, raw_episodes, server  # noqa: F401  (fixtures)

FULL = "no space left on the device while writing "


class _FullFile:
    """A file whose writes stop half way with ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


class FullDisk:
    """Makes writes to files whose name matches ``pattern`` fail, after ``skip`` such files."""

    def __init__(self, patch=setattr) -> None:
        self.pattern: str | None = None
        self.skip = 0
        real_open = io.open

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            name = Path(os.fspath(file)).name if isinstance(file, str | os.PathLike) else ""
            if self.pattern and any(c in mode for c in "wax") and re.search(self.pattern, name):
                if self.skip == 0:
                    return _FullFile(f)
                self.skip -= 1
            return f

        patch(io, "open", fake_open)
        patch(builtins, "open", fake_open)

    def arm(self, pattern: str, skip: int = 0) -> FullDisk:
        self.pattern, self.skip = pattern, skip
        return self

    def disarm(self) -> None:
        self.pattern = None


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    return FullDisk(monkeypatch.setattr)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bfm.collection import make_synthetic_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_dataset(root, "walker", "rnd", episodes=4, episode_length=40, seed=0)
    return root


def train(data_dir: Path, run_dir: Path, pattern: str | None = None, skip: int = 0):
    """main_exorl.py in a process of its own (hydra owns the process), the disk full for files
    matching ``pattern`` when given."""
    args = ["fb", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}", "experiment=smoke"]
    code = (
        "import sys; from tests.test_disk_full import FullDisk; "
        f"FullDisk().arm({pattern!r}, {skip}) if {pattern!r} else None; "
        "from bfm.cli.train import cli; cli(sys.argv[1:])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("pattern", "skip"),
    [(r"^eval\.csv$", 1), (r"^train\.csv$", 1), (r"results\.json", 0)],
)
def test_training(pattern: str, skip: int, data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train(data_dir, run_dir, pattern, skip)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and line.startswith(f"main_exorl.py: error: {FULL}{run_dir}/"), proc.stderr[
        -3000:
    ]
    assert re.search(pattern, line.split(FULL)[1].split(";")[0].rsplit("/", 1)[1])
    assert not leftovers(run_dir)
    for name in ("eval.csv", "train.csv"):  # whole rows only: each parses, none cut short
        rows = CSVWriter(run_dir / name).read() if (run_dir / name).exists() else []
        assert all(None not in row.values() and None not in row for row in rows), rows
    proc = train(data_dir, run_dir)  # continues from its last checkpoint and finishes
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["final"]["step"] == 6
    steps = [int(r["step"]) for r in CSVWriter(run_dir / "eval.csv").read()]  # one row per task and step
    assert steps == sorted(steps) and steps.count(0) == steps.count(3) == steps.count(6) > 0, steps


def test_collection(tmp_path: Path, full_disk: FullDisk, capsys) -> None:
    args = ["walker_random", "--collect", "--collect_steps", "60", "--episode_length", "20"]
    args += ["--data_dir", str(tmp_path), "--workers", "1"]
    folder = buffer_dir(tmp_path, "walker", "random")
    full_disk.arm(r"^\.episode_000001_20\.npz\.tmp$")
    assert exorl_reformatter.main(args) == 2
    line = error_line(capsys)
    assert line == (
        f"exorl_reformatter.py: error: {FULL}{folder / 'episode_000001_20.npz'}; what was written before is "
        "intact and the partial file was removed: free some space (or write elsewhere) and rerun the same "
        "command, which continues"
    )
    assert [p.name for p in list_episode_files(folder)] == ["episode_000000_20.npz"] and not leftovers(
        tmp_path
    )
    full_disk.arm(r"^\.collection\.json\.tmp")
    assert exorl_reformatter.main(args) == 2
    assert error_line(capsys).startswith(f"exorl_reformatter.py: error: {FULL}{folder / 'collection.json'};")
    assert json.loads((folder / "collection.json").read_text())["steps"] == 60  # the earlier one, whole
    full_disk.disarm()
    assert exorl_reformatter.main(args) == 0
    assert read_manifest(dataset_path(tmp_path, "walker", "random"))["episodes"] == 3


def test_download_and_extraction(tmp_path: Path, server, raw_episodes, full_disk: FullDisk, capsys) -> None:  # noqa: F811
    served, url = server
    served.files["/walker/rnd.zip"] = exorl_zip(raw_episodes)
    args = ["walker_rnd", "--data_dir", str(tmp_path), "--base_url", url, "--workers", "1"]
    part = tmp_path / "walker" / "rnd.zip.part"
    full_disk.arm(r"^rnd\.zip\.part$")
    assert exorl_reformatter.main(args) == 2
    line = error_line(capsys)
    kept = part.stat().st_size
    assert line.startswith(f"exorl_reformatter.py: error: no space left on the device while writing {part}; ")
    assert f"the {kept} bytes written are kept" in line and "rerun the same command to resume" in line
    assert len(served.requests) == 1  # a full disk is not retried like a cut connection
    full_disk.arm(r"^\.episode_1_")
    assert exorl_reformatter.main(args) == 2
    folder = buffer_dir(tmp_path, "walker", "rnd")
    assert error_line(capsys).startswith(f"exorl_reformatter.py: error: {FULL}{folder}/episode_1_")
    assert served.requests[-1] == f"bytes={kept}-" and not leftovers(tmp_path)
    full_disk.disarm()
    assert exorl_reformatter.main(args) == 0
    assert read_manifest(dataset_path(tmp_path, "walker", "rnd"))["episodes"] == 3


def test_evaluation_output(data_dir: Path, tmp_path: Path, full_disk: FullDisk, capsys) -> None:
    run_dir = tmp_path / "run"
    assert train(data_dir, run_dir).returncode == 0
    full_disk.arm(r"^episodes\.csv$")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main([str(run_dir), "--name", "again", "--rollouts", "1"])
    line = error_line(capsys)
    assert exit_info.value.code == 2 and line.startswith(f"evaluate.py: error: {FULL}"), line
    assert "episodes.csv" in line
    assert not (run_dir / "evaluations").exists() and not leftovers(run_dir)
    full_disk.disarm()
    assert evaluate_cli.main([str(run_dir), "--name", "again", "--rollouts", "1"]) == 0
    assert (run_dir / "evaluations" / "again" / "episodes.csv").is_file()
