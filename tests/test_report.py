"""plot_results.py on fabricated run directories: grouping, normalisation, bootstrap, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bfm.cli import report as plot_results


def write_run(
    root: Path, algorithm: str, domain: str, memory: str, seed: int, scores: dict[str, float]
) -> None:
    run_dir = root / algorithm / domain / "rnd" / memory / f"seed{seed}"
    run_dir.mkdir(parents=True)
    iqm = {task: {"1.0": v} for task, v in scores.items()}
    results = {
        "algorithm": algorithm,
        "domain": domain,
        "dataset": "rnd",
        "memory": memory,
        "seed": seed,
        "final": {"step": 10, "mean_iqm": float(np.mean(list(scores.values()))), "iqm": iqm},
        "best": {"step": 10, "mean_iqm": float(np.mean(list(scores.values()))), "iqm": iqm},
        "curve": [
            {"step": 0, "mean_iqm": 1.0},
            {"step": 10, "mean_iqm": float(np.mean(list(scores.values())))},
        ],
    }
    (run_dir / "results.json").write_text(json.dumps(results))


def test_normalised_by_the_same_methods_fully_observed_runs(tmp_path: Path) -> None:
    for seed in (0, 1, 2):
        write_run(tmp_path, "fb_m", "walker", "gru", seed, {"stand": 800.0, "walk": 400.0})
        write_run(tmp_path, "fb_m", "walker_noise", "gru", seed, {"stand": 400.0 + seed, "walk": 300.0})
        write_run(tmp_path, "fb", "walker_noise", "none", seed, {"stand": 100.0, "walk": 50.0})
    rows = {
        (r["method"], r["domain"]): r
        for r in plot_results.aggregate(plot_results.find_runs([str(tmp_path)]), reps=200)
    }
    noisy = rows[("FB-M", "walker_noise")]
    assert noisy["normalised"] and noisy["seeds"] == 3
    assert noisy["per_task"]["walk"][0] == pytest.approx(75.0)
    assert noisy["per_task"]["stand"][0] == pytest.approx(100 * 401 / 800)
    lo, hi = noisy["per_task"]["stand"][1:]
    assert 100 * 400 / 800 <= lo <= hi <= 100 * 402 / 800
    assert not rows[("FB", "walker_noise")]["normalised"]  # no fully observed FB runs
    assert rows[("FB", "walker_noise")]["mean_of_tasks"][0] == pytest.approx(75.0)


def test_report_files_and_paper_shaped_table(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "report"
    write_run(runs, "fb_m", "walker", "mlp", 0, {"stand": 500.0})
    write_run(runs, "fb_m", "walker_flickering", "mlp", 0, {"stand": 250.0})
    write_run(runs, "hilp", "walker_flickering", "none", 0, {"stand": 100.0})
    assert plot_results.main([str(runs), "--out", str(out), "--reps", "100"]) == 0
    text = (out / "report.md").read_text()
    assert "| POMDP | domain | dataset | HILP | FB-stack |" in text
    assert "| flickering | walker | rnd | 100.0 [100.0, 100.0] (n=1) | 50.0% [50.0, 50.0] (n=1) |" in text
    assert (out / "learning_curves.png").exists() and (out / "iqm_bars.png").exists()


def test_no_runs_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([str(tmp_path), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"plot_results.py: error: no readable results.json under {tmp_path}")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, capsys, monkeypatch) -> None:
    write_run(tmp_path / "runs", "fb", "walker", "none", 0, {"stand": 500.0})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plot_results, "aggregate", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([str(tmp_path / "runs"), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line
        == "plot_results.py: error: interrupted; the runs are untouched, rerun the same command to write the report"
    )
    assert not (tmp_path / "r").exists()


def test_a_full_disk_names_the_file(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno
    import os

    write_run(tmp_path / "runs", "fb", "walker", "none", 0, {"stand": 500.0})
    out = tmp_path / "r"

    def full(self, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([str(tmp_path / "runs"), "--out", str(out), "--reps", "10"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"plot_results.py: error: no space left on the device while writing {out / 'report.md'};"
    )
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_results_json_files_can_be_named_directly(tmp_path: Path) -> None:
    write_run(tmp_path, "fb_m", "walker", "gru", 0, {"stand": 800.0})
    write_run(tmp_path, "fb_m", "walker", "gru", 1, {"stand": 600.0})
    one = tmp_path / "fb_m" / "walker" / "rnd" / "gru" / "seed1" / "results.json"
    assert [run.path.name for run in plot_results.find_runs([str(one)])] == ["seed1"]
    assert len(plot_results.find_runs([str(tmp_path)])) == 2


def test_a_bootstrap_interval_depends_on_its_seed_alone() -> None:
    """rliable resamples from numpy's global generator: the interval must not depend on the calls
    made before it, and the caller's global state is left as it was."""
    scores = np.random.default_rng(0).random((3, 4)) * 100  # [runs, tasks]
    first = plot_results.stratified_bootstrap_ci(scores, 200)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    assert plot_results.stratified_bootstrap_ci(scores, 200) == first
    assert (np.random.get_state()[1] == before).all()
    assert plot_results.stratified_bootstrap_ci(scores, 200, seed=1) != first
