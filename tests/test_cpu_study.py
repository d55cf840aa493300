"""The CPU study driver end to end on the smoke preset (tiny synthetic dataset, a few updates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import scipy.stats

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "experiments" / "cpu_study.py"


def run_driver(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", MUJOCO_GL="disable")
    return subprocess.run(
        [sys.executable, str(DRIVER), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_study_driver_runs_skips_and_reports(tmp_path: Path) -> None:
    from bfm.collection import make_synthetic_dataset

    data = tmp_path / "data"
    make_synthetic_dataset(data, "walker", "rnd", episodes=4, episode_length=60, seed=0)
    runs, report, kept = tmp_path / "runs", tmp_path / "report", tmp_path / "kept"
    common = [
        f"--results={kept}",
        "--preset=smoke",
        f"--data_dir={data}",
        "--episodes=4",
        f"--runs={runs}",
        f"--report_dir={report}",
        "--methods",
        "fb",
        "fb_stack",
        "fb_m",
        "--domains",
        "walker",
        "walker_flickering",
        "--seeds",
        "7",
        "--updates=4",
        "--eval_frequency=2",
        "--reps=50",
    ]
    proc = run_driver(*common)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method, memory in (("fb", "none"), ("fb_stack", "mlp"), ("fb_m", "gru")):
        for domain in ("walker", "walker_flickering"):
            results = json.loads((runs / method / domain / "seed7" / "results.json").read_text())
            assert results["steps"] == 4 and results["seed"] == 7 and results["memory"] == memory
            assert [p["step"] for p in results["curve"]] == [0, 2, 4]
            # The small outputs are kept (to be committed), with the run's wall time.
            for name in ("results.json", "eval.csv", "train.csv", "config.yaml"):
                assert (kept / method / domain / "seed7" / name).read_bytes() == (
                    runs / method / domain / "seed7" / name
                ).read_bytes()
            assert json.loads((kept / method / domain / "seed7" / "driver.json").read_text())["seconds"] > 0
    text = first = (report / "summary.md").read_text()
    flickering = next(line for line in text.splitlines() if line.startswith("| walker | flickering |"))
    assert flickering.count("%") == 2 * 3  # ours and the paper's, for each of the three methods
    assert "(paper 12 %)" in flickering and "(paper 81 %)" in flickering
    assert "Runs: 6 (" in text
    returns = [line for line in text.splitlines() if line.startswith("| FB-M | walker_flickering |")]
    assert len(returns) == 1 and returns[0].count("[") == 4  # a cell per walker task
    against_fb = [line for line in text.splitlines() if line.startswith("| walker_flickering | ")]
    assert len(against_fb) == 3 and all(line.count("%") == 1 for line in against_fb)  # each % of FB's walker
    # The one dataset every run trained on, identified by its manifest, with its coverage.
    datasets = [line for line in text.splitlines() if line.startswith("| walker | `")]
    assert len(datasets) == 1 and datasets[0].endswith(" | 6 |") and "stand " in datasets[0], text
    for name in ("report.md", "learning_curves.png", "iqm_bars.png"):
        assert (report / name).stat().st_size > 0
    seconds = json.loads((runs / "study.json").read_text())["run_seconds"]
    assert len(seconds) == 6 and all(s > 0 for s in seconds.values())

    # --report_only runs nothing and names the runs the report leaves out.
    partial = run_driver(
        *common, "--seeds", "7", "8", "--report_only", f"--report_dir={tmp_path / 'partial'}"
    )
    assert partial.returncode == 0 and "] start  " not in partial.stdout
    text = (tmp_path / "partial" / "summary.md").read_text()
    assert "Runs: 6 (" in text
    returns = [line for line in text.splitlines() if line.startswith("| FB-M | walker_flickering |")]
    assert len(returns) == 1 and returns[0].count("[") == 4  # a cell per walker task
    not_finished = text.split("Not finished yet (left out above): ")[1]
    assert not_finished.count("(seed 8)") == 6 and "fb_m/walker_flickering (seed 8)" in not_finished
    assert not (runs / "fb" / "walker" / "seed8").exists()

    # A rerun skips every finished run, and so does one on another machine that has only the kept
    # results (the report is written from them alone).
    again = run_driver(*common)
    assert again.returncode == 0 and "6 finished already, 0 to run" in again.stdout
    elsewhere = [a if not a.startswith("--runs=") else f"--runs={tmp_path / 'empty'}" for a in common]
    moved = run_driver(*elsewhere, f"--report_dir={tmp_path / 'moved'}")
    assert moved.returncode == 0 and "6 finished already, 0 to run" in moved.stdout
    assert not (tmp_path / "empty").joinpath("fb").exists()
    moved_text = (tmp_path / "moved" / "summary.md").read_text()
    assert moved_text.split("Percent of")[1] == first.split("Percent of")[1]

    # --final_eval scores the last checkpoint again (the paper's protocol and other evaluation
    # seeds) of the finished runs, with --report_only too (training nothing).
    noise = run_driver(
        *common, "--methods", "fb", "--domains", "walker", "--final_eval", "--spread", "2", "--report_only"
    )
    assert noise.returncode == 0, noise.stdout[-3000:] + noise.stderr[-3000:]
    assert "] start  " not in noise.stdout and "final evaluation of fb/walker/seed7 kept" in noise.stdout
    kept_eval = json.loads((kept / "fb" / "walker" / "seed7" / "final_eval.json").read_text())
    assert sorted(kept_eval) == ["paper_protocol", "seed1000", "seed1001"]
    assert kept_eval["paper_protocol"]["rollouts"] == 10 and kept_eval["paper_protocol"]["step"] == 4
    assert kept_eval["paper_protocol"]["z_inference_steps"] == 10000
    noise_rows = [
        line
        for line in (report / "summary.md").read_text().splitlines()
        if line.startswith("| FB | walker | 1 |")
    ]
    assert len(noise_rows) == 1, (report / "summary.md").read_text()
    # The headline again from the paper-protocol scores, for the cells every run of which has them.
    text = (report / "summary.md").read_text()
    protocol = text.split("re-evaluated with the paper's protocol")[1].split("\n\n")[1].splitlines()
    assert len(protocol) == 3 and protocol[2].startswith("| walker | fully observed (return, 0-1000) | ")
    scores = [v["1.0"] for v in kept_eval["paper_protocol"]["iqm"].values()]  # one run x 4 tasks
    assert protocol[2].split(" | ")[2].startswith(f"{scipy.stats.trim_mean(scores, 0.25):.1f} [")

    # A larger budget continues the runs from their checkpoints.
    longer = run_driver(
        *[a for a in common if not a.startswith("--updates")], "--updates=6", "--methods", "fb"
    )
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    run_dir = runs / "fb" / "walker" / "seed7"
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 6
    assert (
        "resume from " + str(run_dir / "checkpoints" / "step_000000004")
        in (run_dir / "driver.log").read_text()
    )
    text = (report / "summary.md").read_text()  # this invocation's runs only (FB at 6 updates)
    assert "Runs: 2 (" in text and "| POMDP | FB |" in text and "FB-stack" not in text
    assert json.loads((kept / "fb" / "walker" / "seed7" / "results.json").read_text())["steps"] == 6


def test_study_driver_dry_run_names_the_collection_and_rejects_bad_budgets(tmp_path: Path) -> None:
    # Its own results and runs folders: runs kept in the repository would print as "# done".
    isolated = (f"--results={tmp_path / 'kept'}", f"--runs={tmp_path / 'runs'}")
    proc = run_driver(f"--data_dir={tmp_path}", *isolated, "--dry_run", "--seeds", "1", "--domains", "walker")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "exorl_reformatter.py walker_rnd --collect --explorer cpu --collect_steps 300000" in lines[0]
    assert lines[0].endswith(" --seed 0")
    assert len(lines) == 1 + 3 and all("main_exorl.py" in line for line in lines[1:])
    second = run_driver(
        f"--data_dir={tmp_path}",
        *isolated,
        "--dry_run",
        "--seeds",
        "1",
        "--domains",
        "walker",
        "--collection_seed=2",
    )
    assert second.returncode == 0 and second.stdout.splitlines()[0].endswith(" --seed 2")
    for flag, message in (("--updates=0", "--updates must be >= 1, got 0"),
                          ("--collection_seed=-1", "--collection_seed must be >= 0, got -1")):  # fmt: skip
        bad = run_driver(flag, "--dry_run")
        assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [f"cpu_study.py: error: {message}"]


def test_a_run_kept_by_another_driver_meanwhile_is_not_run_again(tmp_path: Path, monkeypatch) -> None:
    """Two drivers over overlapping runs: the one that reaches a run the other has finished (and
    kept) since it started skips it instead of training it again."""
    monkeypatch.syspath_prepend(str(DRIVER.parent))
    import cpu_study

    args = cpu_study.build_parser().parse_args(
        [f"--results={tmp_path / 'kept'}", f"--runs={tmp_path / 'runs'}"]
    )
    job = cpu_study.Job("fb", "walker", 1)
    ledger = cpu_study.Ledger(tmp_path / "runs" / cpu_study.STATE_FILE)
    started = []
    failing = subprocess.CompletedProcess([], 1)  # a training run that fails: nothing is kept
    monkeypatch.setattr(cpu_study.subprocess, "run", lambda *a, **k: started.append(a) or failing)
    kept = cpu_study.kept_dir(job, args)
    kept.mkdir(parents=True)
    (kept / "results.json").write_text(json.dumps({"steps": args.updates - 1}))
    assert not cpu_study.run_job(job, args, ledger) and len(started) == 1  # not reached: started
    assert not (job.run_dir(Path(args.runs)) / cpu_study.LOCK_FILE).exists()  # released after the run
    (kept / "results.json").write_text(json.dumps({"steps": args.updates}))
    assert cpu_study.run_job(job, args, ledger) and len(started) == 1


def test_two_ledgers_side_by_side_keep_each_others_run_seconds(tmp_path: Path, monkeypatch) -> None:
    """Two drivers write the same study.json: neither drops the runs the other recorded."""
    monkeypatch.syspath_prepend(str(DRIVER.parent))
    import cpu_study

    path = tmp_path / cpu_study.STATE_FILE
    first, second = cpu_study.Ledger(path), cpu_study.Ledger(path)
    first.add("fb/walker/seed1", 10.0)
    second.add("fb/cheetah/seed1", 20.0)
    first.add("fb/walker/seed1", 5.0)
    assert json.loads(path.read_text())["run_seconds"] == {"fb/walker/seed1": 15.0, "fb/cheetah/seed1": 20.0}
    assert cpu_study.Ledger(path).seconds == first.seconds


def test_two_drivers_never_train_the_same_run_at_once(tmp_path: Path, monkeypatch) -> None:
    """A run another live driver is training is skipped; a lock left by a dead driver is taken over."""
    monkeypatch.syspath_prepend(str(DRIVER.parent))
    import cpu_study

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / cpu_study.LOCK_FILE).write_text(str(other.pid))
        assert cpu_study.claim(run_dir) == other.pid
        args = cpu_study.build_parser().parse_args([f"--results={tmp_path / 'kept'}", f"--runs={tmp_path}"])
        job = cpu_study.Job("fb", "walker", 1)
        job_dir = job.run_dir(tmp_path)
        job_dir.mkdir(parents=True)
        (job_dir / cpu_study.LOCK_FILE).write_text(str(other.pid))
        started = []
        monkeypatch.setattr(cpu_study.subprocess, "run", lambda *a, **k: started.append(a))
        ledger = cpu_study.Ledger(tmp_path / cpu_study.STATE_FILE)
        assert cpu_study.run_job(job, args, ledger) and not started  # skipped, not failed
    finally:
        other.kill()
        other.wait()
    assert cpu_study.claim(run_dir) is None  # the holder died: its lock is taken over
    assert (run_dir / cpu_study.LOCK_FILE).read_text() == str(os.getpid())
    assert cpu_study.claim(run_dir) == os.getpid() and sorted(p.name for p in run_dir.iterdir()) == [
        cpu_study.LOCK_FILE
    ]


def test_per_task_returns_get_a_table_per_task_set(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(DRIVER.parent))
    import cpu_study

    from bfm.cli.report import Run, aggregate

    def run(domain: str, seed: int, tasks: tuple[str, ...]) -> Run:
        iqm = {task: {"1.0": 100.0 * seed + i} for i, task in enumerate(tasks)}
        results = {"algorithm": "fb", "memory": "none", "domain": domain, "dataset": "rnd"}
        return Run(Path(domain), {**results, "final": {"iqm": iqm}, "best": {"iqm": iqm}})

    walker, cheetah = ("stand", "walk", "run", "flip"), ("run", "run_backward", "walk", "walk_backward")
    runs = [run(d, s, t) for d, t in (("walker", walker), ("cheetah", cheetah)) for s in (1, 2)]
    lines = cpu_study.absolute_returns(aggregate(runs, "final", 50), 50)
    headers = [line for line in lines if line.startswith("| method | domain |")]
    assert headers == ["| method | domain | " + " | ".join(t) + " |" for t in (walker, cheetah)]
    rows = [line for line in lines if line.startswith("| FB |")]
    assert [r.split(" | ")[1] for r in rows] == ["walker", "cheetah"]
    assert "(100/200)" in rows[0] and "(103/203)" in rows[1]


def test_the_noise_table_marks_a_run_evaluated_without_other_seeds(tmp_path: Path, monkeypatch) -> None:
    """`--spread 0` keeps only the paper-protocol score: that run's range is "-", not "nan"."""
    monkeypatch.syspath_prepend(str(DRIVER.parent))
    import cpu_study

    args = cpu_study.build_parser().parse_args([f"--results={tmp_path}", "--spread=0"])
    jobs = [cpu_study.Job("fb", "walker", seed) for seed in (1, 2)]
    for job, others in zip(jobs, ({}, {"seed1000": 30.0, "seed1001": 50.0}), strict=True):
        kept = cpu_study.kept_dir(job, args)
        kept.mkdir(parents=True)
        iqm = lambda value: {"stand": {"1.0": value}, "walk": {"1.0": value}}  # noqa: E731
        (kept / "results.json").write_text(json.dumps({"final": {"iqm": iqm(40.0)}}))
        scores = {"paper_protocol": {"iqm": iqm(45.0)}, **{k: {"iqm": iqm(v)} for k, v in others.items()}}
        (kept / cpu_study.FINAL_EVAL).write_text(json.dumps(scores))
    rows = [line for line in cpu_study.noise_lines(jobs, args) if line.startswith("| FB |")]
    assert rows == ["| FB | walker | 2 | 40 / 40 | - / 20 | 0 | 45 / 45 |"]
