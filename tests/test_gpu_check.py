"""The GPU check's driver, dry-run on the CPU at tiny sizes (same code path), and the bundle's slim wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from scripts.gpu_bundle import slim_wheel
from scripts.gpu_check import PARTS

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_of_every_part_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu_check.py"),
            "--device",
            "cpu",
            "--tiny",
            "--no_install",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert [report[p]["status"] for p in PARTS] == ["ok"] * len(PARTS)
    assert (
        report["tests"]["selected"]["exit_code"] == 0 and "passed" in report["tests"]["selected"]["summary"]
    )
    speed = {(r["algo"], r["mode"]): r for r in report["speed"]["rows"]}
    assert (
        speed[("fb_m", "eager")]["updates_per_s"] > 0
        and speed[("fb_m", "eager")]["launches_per_update"] > 100
    )
    assert [r["seeds"] for r in report["seeds"]["rows"]] == [1, 2]
    run = report["run"]
    assert run["exit_code"] == 0 and run["killed_after_first_checkpoint"] and run["steps"] == 6
    assert run["resumed_from"].endswith("step_000000003")
    assert report["paper_run_estimate"]["hours"] > 0
    text = (out / "report.md").read_text()
    assert "| run | ok |" in text and "One paper FB-M GRU run" in text


def test_a_failing_part_leaves_the_others(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cuda:7", "--tiny", "--no_install",
         "--out", str(out), "--parts", "env", "matmul"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert proc.returncode == 1
    assert report["env"]["status"] == "ok" and report["matmul"]["status"].startswith("failed")


def test_slim_wheel_drops_the_folder_and_its_record_lines(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/big/asset.xml", "x" * 10_000)
        z.writestr(
            "pkg-1.0.dist-info/RECORD", "pkg/__init__.py,sha256=a,0\npkg/big/asset.xml,sha256=b,10000\n"
        )
    assert slim_wheel(wheel, ("pkg/big/",)) > 0
    with zipfile.ZipFile(wheel) as z:
        assert z.namelist() == ["pkg/__init__.py", "pkg-1.0.dist-info/RECORD"]
        assert "big" not in z.read("pkg-1.0.dist-info/RECORD").decode()
