"""The CPU-scale study: FB, FB-stack and FB-M on walker and walker_flickering (walker_noise optional).

    python experiments/cpu_study.py                      # the whole study (README, "Reproducing the paper")
    python experiments/cpu_study.py --dry_run            # print the commands only
    python experiments/cpu_study.py --methods fb fb_stack fb_m hilp --seeds 1 2 3 4 5

Steps, each skipped when already done:

1. the dataset: ``exorl_reformatter.py walker_rnd --collect --explorer cpu`` into ``--data_dir``
   when ``<data_dir>/walker/rnd/buffer/dataset.npz`` is missing (the collection resumes itself);
2. one ``main_exorl.py`` run per method x domain x seed, ``--jobs`` at a time (one torch thread
   each), all with the same preset and update budget; a run whose ``results.json`` reached
   ``--updates`` is skipped, an interrupted one continues from its last checkpoint;
3. the report: ``plot_results.py``'s tables and figures (IQM over runs x tasks with 95 %
   stratified-bootstrap CIs; scores under partial observability in percent of the same method's
   fully observed score, as in the paper) plus ``summary.md`` with the paper's numbers beside
   ours, the command and the wall time, all into ``--report_dir``.

Each run's output goes to ``<run_dir>/driver.log``. The exit code is 0 when every run finished,
1 when some failed (listed at the end; rerun the same command to retry them), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bfm.cli import report as plot_results  # noqa: E402  (the repository root is put on the path above)

# Study method -> (algorithm, memory type or None); the names plot_results reports them under.
METHODS: dict[str, tuple[str, str | None]] = {
    "fb": ("fb", None),
    "fb_stack": ("fb_m", "mlp"),
    "fb_m": ("fb_m", "gru"),
    "hilp": ("hilp", None),
}
DOMAINS = ("walker", "walker_flickering", "walker_noise")
# The default leaves walker_noise out: with it the study took 117 minutes on 2 cores, not
# the 100 it is sized for (README, "Reproducing the paper"); ``--domains`` with all three adds it.
DEFAULT_DOMAINS = ("walker", "walker_flickering")

# The paper's Figure numbers (percent of the same method's fully observed score, IQM): walker.
PAPER_PERCENT: dict[str, dict[str, int]] = {
    "noise": {"FB": 53, "HILP": 48, "FB-stack": 67, "FB-M": 68},
    "flickering": {"FB": 12, "HILP": 13, "FB-stack": 81, "FB-M": 80},
}
STATE_FILE = "study.json"  # per-run wall seconds, kept across invocations in the runs root


@dataclass(frozen=True)
class Job:
    """One training run of the study."""

    method: str
    domain: str
    seed: int

    @property
    def algorithm(self) -> str:
        return METHODS[self.method][0]

    @property
    def memory(self) -> str | None:
        return METHODS[self.method][1]

    def run_dir(self, runs: Path) -> Path:
        """The default layout of main_exorl.py under ``runs`` (plot_results finds it there)."""
        return runs / self.algorithm / self.domain / "rnd" / (self.memory or "none") / f"seed{self.seed}"

    def key(self) -> str:
        return f"{self.method}/{self.domain}/seed{self.seed}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpu_study.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["fb", "fb_stack", "fb_m"])
    p.add_argument(
        "--domains",
        nargs="+",
        choices=DOMAINS,
        default=list(DEFAULT_DOMAINS),
        help="default: walker walker_flickering",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--updates", type=int, default=12000, help="gradient steps per run (default 12000)")
    p.add_argument(
        "--eval_frequency", type=int, default=3000, help="evaluate at step 0 and every N steps (default 3000)"
    )
    p.add_argument("--preset", default="cpu", help="bfm/configs/experiment preset of every run (default cpu)")
    p.add_argument("--data_dir", default="datasets/cpu", help="dataset root (default datasets/cpu)")
    p.add_argument(
        "--episodes", type=int, default=300, help="episodes collected and trained on (default 300)"
    )
    p.add_argument(
        "--runs", default="runs/cpu_study", help="root of the run directories (default runs/cpu_study)"
    )
    p.add_argument(
        "--report_dir", default="report/cpu_study", help="where the report goes (default report/cpu_study)"
    )
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default 2)")
    p.add_argument(
        "--reps", type=int, default=2000, help="bootstrap replications of the report (default 2000)"
    )
    p.add_argument("--dry_run", action="store_true", help="print the commands and exit")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="write the report from the runs finished so far, run nothing (e.g. while another driver runs)",
    )
    p.add_argument(
        "--overrides", nargs="*", default=[], help="extra hydra overrides for every run (key=value)"
    )
    return p


def dataset_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "exorl_reformatter.py"),
        "walker_rnd",
        "--collect",
        "--explorer",
        "cpu",
        "--collect_steps",
        str(1000 * args.episodes),
        "--data_dir",
        args.data_dir,
    ]


def train_command(job: Job, args: argparse.Namespace) -> list[str]:
    cmd = [
        sys.executable,
        str(ROOT / "main_exorl.py"),
        job.algorithm,
        job.domain,
        "rnd",
        f"experiment={args.preset}",
        f"env.data_dir={args.data_dir}",
        f"env.episodes={args.episodes}",
        f"train.learning_steps={args.updates}",
        f"train.eval_frequency={args.eval_frequency}",
        "train.show_progress=false",
        f"seed={job.seed}",
        f"run_root={args.runs}",
    ]
    if job.memory:
        cmd.append(f"memory={job.memory}")
    return cmd + list(args.overrides)


def finished(job: Job, args: argparse.Namespace) -> bool:
    """The run's results.json exists and reached the study's update budget."""
    path = job.run_dir(Path(args.runs)) / "results.json"
    try:
        return json.loads(path.read_text()).get("steps", -1) >= args.updates
    except (OSError, ValueError):
        return False


def ordered_jobs(args: argparse.Namespace) -> list[Job]:
    """Domains in the given order (fully observed first, the normaliser), seeds, then methods
    with memory first (the slowest), so that two jobs at a time end close together."""
    slow_first = sorted(args.methods, key=lambda m: (METHODS[m][1] != "gru", METHODS[m][1] is None))
    return [Job(m, d, s) for d in args.domains for s in args.seeds for m in slow_first]


class Ledger:
    """Per-run wall seconds, kept in ``<runs>/study.json`` across invocations (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.seconds: dict[str, float] = json.loads(path.read_text())["run_seconds"]
        except (OSError, ValueError, KeyError):
            self.seconds = {}

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run_seconds": self.seconds}, indent=1))
            os.replace(tmp, self.path)


def run_job(job: Job, args: argparse.Namespace, ledger: Ledger) -> bool:
    run_dir = job.run_dir(Path(args.runs))
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"))
    start = time.perf_counter()
    say(f"start  {job.key()}")
    with (run_dir / "driver.log").open("a") as log:
        code = subprocess.run(train_command(job, args), cwd=ROOT, env=env, stdout=log, stderr=log).returncode
    seconds = time.perf_counter() - start
    ledger.add(job.key(), seconds)
    status = "done" if code == 0 else f"FAILED (exit {code}, see {run_dir / 'driver.log'})"
    say(f"{status}  {job.key()} in {seconds / 60:.1f} min")
    return code == 0


_PRINT = threading.Lock()


def say(message: str) -> None:
    with _PRINT:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_seconds(job: Job, runs: Path, ledger: Ledger) -> float:
    """The run's time as the driver measured it, else (a run the driver did not see end, e.g.
    started by an earlier driver that was stopped) from its config.yaml to its results.json."""
    if job.key() in ledger.seconds:
        return ledger.seconds[job.key()]
    run_dir = job.run_dir(runs)
    return (run_dir / "results.json").stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime


def study_span_s(done: list[Job], runs: Path) -> float:
    """Seconds from the first run's start (its config.yaml) to the last run's end (its results.json)."""
    starts = [job.run_dir(runs).joinpath("config.yaml").stat().st_mtime for job in done]
    ends = [job.run_dir(runs).joinpath("results.json").stat().st_mtime for job in done]
    return max(ends) - min(starts)


def absolute_returns(rows: list[dict], reps: int) -> list[str]:
    """Per task, each method and domain's final return: IQM over seeds [95 % CI], and the seeds' values."""
    tasks = list(rows[0]["runs"][0].scores("final"))
    lines = [
        "Final returns per task (IQM over seeds [95 % stratified-bootstrap CI]; each seed's value after it):",
        "",
        "| method | domain | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for r in sorted(
        rows, key=lambda r: (DOMAINS.index(r["domain"]), plot_results.METHOD_ORDER.index(r["method"]))
    ):
        matrix, _ = plot_results.score_matrix(r["runs"], "final", None)  # [seeds, tasks], returns
        cells = []
        for j in range(len(tasks)):
            point, lo, hi = plot_results.stratified_bootstrap_ci(matrix[:, [j]], reps)
            seeds = "/".join(f"{v:.0f}" for v in matrix[:, j])
            cells.append(f"{point:.0f} [{lo:.0f}, {hi:.0f}] ({seeds})")
        lines.append(f"| {r['method']} | {r['domain']} | " + " | ".join(cells) + " |")
    return lines


def summary(
    rows: list[dict], args: argparse.Namespace, done: list[Job], wall_s: float, ledger: Ledger, command: str
) -> str:
    """The paper-shaped comparison (ours beside the paper's percentages) with command and timing."""
    keyed = {(r["variant"], r["method"]): r for r in rows}
    methods = [m for m in plot_results.METHOD_ORDER if any(r["method"] == m for r in rows)]
    lines = [
        "# CPU-scale study: summary",
        "",
        f"Command: `{command}`",
        "",
        f"Runs: {len(done)} ({', '.join(args.methods)} x {', '.join(args.domains)} x seeds "
        f"{' '.join(map(str, args.seeds))}), {args.updates} updates each, preset `{args.preset}`, "
        f"{args.episodes} locally collected episodes (`--explorer cpu`).",
        f"Wall time from the first run's start to the last run's end: {study_span_s(done, Path(args.runs)) / 60:.1f} min "
        f"({args.jobs} runs at a time; this invocation {wall_s / 60:.1f} min); summed run time "
        f"{sum(run_seconds(job, Path(args.runs), ledger) for job in done) / 60:.1f} min.",
        "",
        "Percent of the same method's fully observed score (IQM over runs x tasks, 95 % stratified-bootstrap",
        'CI); "paper" is the paper\'s figure for walker (Jeen et al., 2025).',
        "",
        "| POMDP | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for variant in [v for v in ("flickering", "noise") if any(r["variant"] == v for r in rows)]:
        cells = []
        for m in methods:
            r = keyed.get((variant, m))
            ours = plot_results._cell(r["iqm"], r["ci"], r["normalised"]) if r else "-"
            paper = PAPER_PERCENT[variant].get(m)
            cells.append(f"{ours} (paper {paper} %)" if paper is not None else ours)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    full = [keyed.get(("full", m)) for m in methods]
    if any(full):
        cells = [plot_results._cell(r["iqm"], r["ci"], False) if r else "-" for r in full]
        lines.append("| fully observed (return, 0-1000) | " + " | ".join(cells) + " |")
    lines += ["", *absolute_returns(rows, args.reps)]
    lines += [
        "",
        "Per-task tables in percent: `report.md`; figures: `learning_curves.png`, `iqm_bars.png`.",
    ]
    return "\n".join(lines) + "\n"


def run_study(jobs: list[Job], dataset: Path, args: argparse.Namespace, ledger: Ledger) -> list[str] | None:
    """Makes the dataset if missing, then runs every unfinished job; returns the failed ones
    (None when the dataset could not be made)."""
    if not dataset.exists():
        say(f"collecting the dataset: {shlex.join(dataset_command(args))}")
        env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"))
        if subprocess.run(dataset_command(args), cwd=ROOT, env=env).returncode != 0:
            sys.stderr.write("cpu_study.py: error: the dataset collection failed (its output is above)\n")
            return None
    todo = [job for job in jobs if not finished(job, args)]
    say(
        f"{len(jobs)} runs, {len(jobs) - len(todo)} finished already, {len(todo)} to run, {args.jobs} at a time"
    )
    with ThreadPoolExecutor(args.jobs) as pool:
        ok = list(pool.map(lambda job: run_job(job, args, ledger), todo))
    failed = [job.key() for job, good in zip(todo, ok, strict=True) if not good]
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("updates", "eval_frequency", "episodes", "jobs", "reps"):
        if getattr(args, name) < 1:
            sys.stderr.write(f"cpu_study.py: error: --{name} must be >= 1, got {getattr(args, name)}\n")
            return 2
    command = "python experiments/cpu_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    jobs = ordered_jobs(args)
    dataset = Path(args.data_dir) / "walker" / "rnd" / "buffer" / "dataset.npz"
    if args.dry_run:
        if not dataset.exists():
            print(shlex.join(dataset_command(args)))
        for job in jobs:
            print(("# done: " if finished(job, args) else "") + shlex.join(train_command(job, args)))
        return 0
    start = time.perf_counter()
    ledger = Ledger(Path(args.runs) / STATE_FILE)
    failed = [] if args.report_only else run_study(jobs, dataset, args, ledger)
    if failed is None:
        return 1
    # Only this study's runs at this budget (the runs root may hold others, e.g. a shorter budget).
    done = [job for job in jobs if finished(job, args)]
    done_dirs = {job.run_dir(Path(args.runs)).resolve() for job in done}
    runs = [run for run in plot_results.find_runs([args.runs]) if run.path.resolve() in done_dirs]
    if runs:
        rows = plot_results.aggregate(runs, "final", args.reps)
        out = Path(args.report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(plot_results.markdown(rows, "final"))
        plot_results.plot_curves(rows, out / "learning_curves.png")
        plot_results.plot_bars(rows, out / "iqm_bars.png")
        text = summary(rows, args, done, time.perf_counter() - start, ledger, command)
        missing = [job.key() for job in jobs if job not in done]
        if missing:
            text += f"\nNot finished yet (left out above): {', '.join(missing)}.\n"
        (out / "summary.md").write_text(text)
        print(text)
        say(f"report written to {out}")
    if failed:
        sys.stderr.write(f"cpu_study.py: {len(failed)} run(s) failed: {', '.join(failed)}; rerun to retry\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
