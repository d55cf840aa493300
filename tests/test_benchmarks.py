"""Every benchmark runs at a tiny size and prints its table (the suite cannot break silently)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "update_speed": ["--preset", "tiny", "--steps", "1", "--threads", "1", "--memories", "gru", "--flops"],
    "eval_speed": ["--preset", "tiny", "--steps", "2", "--rollouts", "1", "--threads", "1"],
    "memory_speed": ["--batch", "4", "--length", "4", "--output", "8", "--repeats", "1", "--threads", "1"],
    "relabel_speed": ["--rows", "40", "--domains", "walker"],
    "sampling_speed": [
        "--episodes",
        "2",
        "--batch",
        "8",
        "--history",
        "4",
        "--backward_history",
        "2",
        "--repeats",
        "2",
    ],  # fmt: skip
    "seeds_speed": [
        "--preset",
        "tiny",
        "--seeds",
        "1",
        "2",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
    ],
}


def run_module(module: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="disable")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def table_rows(text: str) -> list[str]:
    """Markdown table rows with at least one number, separators excluded."""
    return [
        line
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|---") and any(c.isdigit() for c in line)
    ]


@pytest.mark.parametrize("script", sorted(TINY))
def test_each_benchmark_prints_its_table(script: str) -> None:
    out = run_module(f"benchmarks.{script}", *TINY[script])
    if script == "eval_speed":  # one line: env steps/s of both rollout modes and task inference
        assert "env steps/s" in out and "task inference" in out, out[-2000:]
    elif script == "relabel_speed":  # one line per domain
        assert "walker    40 rows x 4 tasks" in out and "rows/s" in out, out[-2000:]
    else:
        assert table_rows(out), out[-2000:]


def test_side_by_side_table(tmp_path: Path) -> None:
    out = run_module(
        "benchmarks.update_speed", "--side_by_side", "--preset", "tiny", "--threads", "1", "--rounds", "1",
        "--steps", "1",
    )  # fmt: skip
    rows = table_rows(out)
    assert [r.split("|")[2:4] for r in rows][:3] == [
        [" fb ", " none "],
        [" fb_m ", " mlp "],
        [" fb_m ", " gru "],
    ]
    assert rows[0].split("|")[5].strip() == "1.00x"  # fb is the unit
    assert all(int(r.split("|")[7]) > 100 for r in rows)  # profiler events per update


def test_suite_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = run_module(
        "benchmarks", "--presets", "tiny", "--modes", "eager", "--skip", "eval", "relabel",
        "--side-preset", "tiny", "--side-rounds", "1", "--threads", "1", "--out", str(tmp_path),
    )  # fmt: skip
    assert "| tiny | fb_m | gru | eager |" in out
    assert "Time split of one training step, tiny fb_m gru eager" in out
    assert "| tiny | hilp_m | gru |" in out.split("Side by side")[1]
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list(tmp_path.glob("*.md"))) == 1
