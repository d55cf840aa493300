"""The CPU-scale study: FB, HILP, FB-stack, FB-M, HILP-M and memory ablations on walker and cheetah.

    python experiments/cpu_study.py                      # the default study (docs/reproducing.md)
    python experiments/cpu_study.py --dry_run            # print the commands only
    python experiments/cpu_study.py --methods hilp hilp_m --domains walker walker_flickering walker_noise

Steps, each skipped when already done:

1. the dataset of each base domain: ``exorl_reformatter.py <domain>_rnd --collect --explorer cpu``
   into ``--data_dir`` when ``<data_dir>/<domain>/rnd/buffer/dataset.npz`` is missing (the
   collection resumes itself);
2. one ``main_exorl.py`` run per method x domain x seed, ``--jobs`` at a time (one torch thread
   each), all with the same preset and update budget, in ``<runs>/<method>/<domain>/seed<seed>``;
   an interrupted run continues from its last checkpoint. When a run ends, its small outputs
   (``results.json``, ``eval.csv``, ``train.csv``, ``config.yaml`` and ``driver.json`` with its
   wall time) are copied to ``<results>/<method>/<domain>/seed<seed>``, a folder meant to be
   committed: a run whose copy there reached ``--updates`` is done, on any machine;
3. the report, written from the ``--results`` folder alone: ``plot_results.py``'s tables and
   figures (IQM over runs x tasks with 95 % stratified-bootstrap CIs; scores under partial
   observability in percent of the same method's fully observed score, as in the paper) plus
   ``summary.md`` with the paper's numbers beside ours, the compute and the datasets the runs
   trained on (identity and coverage, from the manifest each results.json records), into
   ``--report_dir``. A second collection (``--collection_seed``, with its own ``--data_dir``,
   ``--runs`` and ``--results``) repeats the study on other data.

Each run's output goes to ``<run_dir>/driver.log``. Several drivers may share the runs: a run another
live driver is training (``<run_dir>/driver.lock`` holds its process id) is skipped, so a second
driver over the same study takes the next run instead. The exit code is 0 when every run finished,
1 when some failed (listed at the end; rerun the same command to retry them), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
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
from bfm.training.config import memory_label  # noqa: E402


@dataclass(frozen=True)
class Method:
    """A study method: the algorithm, its memory model (None: memory-free) and extra overrides."""

    algorithm: str
    memory: str | None = None
    overrides: tuple[str, ...] = ()


# HILP's settings at this scale, from the pilots in docs/results/hilp_pilots: an expectile above
# the reference code's 0.5 (which makes the phi value loss a plain MSE) lifts every walker task.
HILP_SETTINGS = ("agent.expectile=0.7",)
# Study method -> Method; plot_results reports them under the paper's names (FB-stack, FB-M, ...).
METHODS: dict[str, Method] = {
    "fb": Method("fb"),
    "fb_stack": Method("fb_m", "mlp"),
    "fb_m": Method("fb_m", "gru"),
    "hilp": Method("hilp", None, HILP_SETTINGS),
    "hilp_m": Method("hilp_m", "gru", HILP_SETTINGS),
    # The memory ablation (the paper's walker ablation): other memory models in F, B and pi, and
    # the GRU in F and pi only (memory-free B).
    "fb_m_transformer": Method("fb_m", "transformer"),
    "fb_m_s4d": Method("fb_m", "s4d"),
    "fb_m_gru_f": Method("fb_m", "gru", ("agent.recurrent_B=false",)),
}
DOMAINS = (
    "walker",
    "walker_flickering",
    "walker_noise",
    "cheetah",
    "cheetah_flickering",
    "cheetah_noise",
)
# The default leaves walker_noise out: with it the study took 117 minutes on 2 cores, not
# the 100 it is sized for (docs/reproducing.md); ``--domains`` with all three adds it.
DEFAULT_DOMAINS = ("walker", "walker_flickering")

# The paper's Figure numbers (percent of the same method's fully observed score, IQM).
PAPER_PERCENT: dict[tuple[str, str], dict[str, int]] = {
    ("walker", "noise"): {"FB": 53, "HILP": 48, "FB-stack": 67, "FB-M": 68},
    ("walker", "flickering"): {"FB": 12, "HILP": 13, "FB-stack": 81, "FB-M": 80},
    ("cheetah", "noise"): {"FB": 45, "HILP": 21, "FB-stack": 24, "FB-M": 31},
    ("cheetah", "flickering"): {"FB": 38, "HILP": 16, "FB-stack": 23, "FB-M": 36},
}
SMALL_OUTPUTS = ("results.json", "eval.csv", "train.csv", "config.yaml")
STATE_FILE = "study.json"  # per-run wall seconds, kept across invocations in the runs root


@dataclass(frozen=True)
class Job:
    """One training run of the study."""

    method: str
    domain: str
    seed: int

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def base_domain(self) -> str:
        return self.domain.partition("_")[0]

    def run_dir(self, runs: Path) -> Path:
        return runs / self.method / self.domain / f"seed{self.seed}"

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
        help="default: walker walker_flickering; each base domain (walker, cheetah) gets its own dataset",
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
        "--collection_seed",
        type=int,
        default=0,
        help="seed of a missing dataset's collection (default 0); another seed with another --data_dir, "
        "--runs and --results repeats the study on a second collection",
    )
    p.add_argument(
        "--runs", default="runs/cpu_study", help="root of the run directories (default runs/cpu_study)"
    )
    p.add_argument(
        "--results",
        default="docs/results/cpu_study/runs",
        help="where each finished run's small outputs are kept, to be committed; the report reads only "
        "these (default docs/results/cpu_study/runs)",
    )
    p.add_argument(
        "--report_dir", default="report/cpu_study", help="where the report goes (default report/cpu_study)"
    )
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default 2)")
    p.add_argument(
        "--reps", type=int, default=2000, help="bootstrap replications of the report (default 2000)"
    )
    p.add_argument(
        "--final_eval",
        action="store_true",
        help="evaluate each finished run's last checkpoint again: with the paper's protocol (10,000 "
        "labelled windows, 10 episodes per task) and with --spread other evaluation seeds at the run's "
        "own protocol; kept as final_eval.json and reported (needs the run's checkpoints on this machine)",
    )
    p.add_argument(
        "--spread",
        type=int,
        default=5,
        help="evaluation seeds of --final_eval's noise measurement (default 5)",
    )
    p.add_argument("--dry_run", action="store_true", help="print the commands and exit")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="train nothing; write the report from the runs finished so far (e.g. while another driver "
        "runs; with --final_eval, evaluate those runs first)",
    )
    p.add_argument(
        "--overrides", nargs="*", default=[], help="extra hydra overrides for every run (key=value)"
    )
    return p


def dataset_path(args: argparse.Namespace, base_domain: str) -> Path:
    return Path(args.data_dir) / base_domain / "rnd" / "buffer" / "dataset.npz"


def dataset_command(args: argparse.Namespace, base_domain: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "exorl_reformatter.py"),
        f"{base_domain}_rnd",
        "--collect",
        "--explorer",
        "cpu",
        "--collect_steps",
        str(1000 * args.episodes),
        "--data_dir",
        args.data_dir,
        "--seed",
        str(args.collection_seed),
    ]


def train_command(job: Job, args: argparse.Namespace) -> list[str]:
    spec = job.spec
    cmd = [
        sys.executable,
        str(ROOT / "main_exorl.py"),
        spec.algorithm,
        job.domain,
        "rnd",
        f"experiment={args.preset}",
        f"env.data_dir={args.data_dir}",
        f"env.episodes={args.episodes}",
        f"train.learning_steps={args.updates}",
        f"train.eval_frequency={args.eval_frequency}",
        "train.show_progress=false",
        f"seed={job.seed}",
        f"run_dir={job.run_dir(Path(args.runs))}",
    ]
    if spec.memory:
        cmd.append(f"memory={spec.memory}")
    return cmd + list(spec.overrides) + list(args.overrides)


def reached(results: Path, updates: int) -> bool:
    """``results`` (a results.json) exists and its run reached ``updates`` steps."""
    try:
        return json.loads(results.read_text()).get("steps", -1) >= updates
    except (OSError, ValueError):
        return False


def kept_dir(job: Job, args: argparse.Namespace) -> Path:
    """The run's folder in the committed results (``--results``)."""
    return Path(args.results) / job.method / job.domain / f"seed{job.seed}"


def finished(job: Job, args: argparse.Namespace, ledger: Ledger | None = None) -> bool:
    """The run's kept results reached the study's budget (a run finished in its run directory
    whose outputs were not kept yet, e.g. by an older driver, is kept now)."""
    if reached(kept_dir(job, args) / "results.json", args.updates):
        return True
    if reached(job.run_dir(Path(args.runs)) / "results.json", args.updates):
        keep(job, args, ledger.seconds.get(job.key()) if ledger else None)
        return True
    return False


def keep(job: Job, args: argparse.Namespace, seconds: float | None) -> None:
    """Copies the run's small outputs into its kept folder (results.json last, since it marks the
    run done), with ``driver.json``: the wall time and the machine."""
    source, target = job.run_dir(Path(args.runs)), kept_dir(job, args)
    target.mkdir(parents=True, exist_ok=True)
    if seconds is None:  # not measured by this driver: from config.yaml to results.json
        seconds = (source / "results.json").stat().st_mtime - (source / "config.yaml").stat().st_mtime
    info = {
        "seconds": round(seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "jobs_at_a_time": args.jobs,
        "command": "python " + shlex.join(train_command(job, args)[1:]).replace(f"{ROOT}/", ""),
    }
    (target / "driver.json").write_text(json.dumps(info, indent=1) + "\n")
    for name in SMALL_OUTPUTS:
        shutil.copy2(source / name, target / name)


FINAL_EVAL = "final_eval.json"
PAPER_PROTOCOL = ("--z_inference_steps", "10000", "--rollouts", "10")  # the paper's evaluation


def final_eval_commands(job: Job, args: argparse.Namespace) -> dict[str, list[str]]:
    """evaluate.py commands of ``--final_eval``: the paper's protocol and ``--spread`` other seeds."""
    base = [sys.executable, str(ROOT / "evaluate.py"), str(job.run_dir(Path(args.runs)))]
    commands = {"paper_protocol": [*base, *PAPER_PROTOCOL, "--name", "final_paper_protocol"]}
    for i in range(args.spread):
        seed = 1000 + i  # evaluation seeds no run trains with
        commands[f"seed{seed}"] = [*base, "--seed", str(seed), "--name", f"final_seed{seed}"]
    return commands


def final_eval(job: Job, args: argparse.Namespace) -> bool:
    """Runs ``final_eval_commands`` for a finished run (unless its kept folder has them) and keeps
    the per-task IQMs in ``final_eval.json``; False when a command failed."""
    target = kept_dir(job, args) / FINAL_EVAL
    if target.exists():
        return True
    run_dir = job.run_dir(Path(args.runs))
    if not (run_dir / "checkpoints").is_dir():
        say(f"no checkpoints of {job.key()} on this machine: final evaluation skipped")
        return True
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"))
    scores = {}
    for name, cmd in final_eval_commands(job, args).items():
        with (run_dir / "driver.log").open("a") as log:
            if subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=log).returncode != 0:
                say(f"FAILED final evaluation {name} of {job.key()} (see {run_dir / 'driver.log'})")
                return False
        results = json.loads((run_dir / "evaluations" / cmd[-1] / "results.json").read_text())
        scores[name] = {"iqm": results["iqm"], "z_inference_steps": results["z_inference_steps"],
                        "rollouts": results["rollouts"], "seed": results["seed"], "step": results["step"]}  # fmt: skip
    target.write_text(json.dumps(scores, indent=1) + "\n")
    say(f"final evaluation of {job.key()} kept")
    return True


def noise_lines(done: list[Job], args: argparse.Namespace) -> list[str]:
    """The evaluation-noise table from the kept final_eval.json files (empty when there are none)."""
    rows = []
    for method in sorted({j.method for j in done}, key=lambda m: method_order(_paper_name(m))):
        for domain in [d for d in DOMAINS if any(j.domain == d for j in done)]:
            jobs = [j for j in done if (j.method, j.domain) == (method, domain)]
            evals = [(j, kept_dir(j, args) / FINAL_EVAL) for j in jobs]
            evals = [(j, json.loads(f.read_text())) for j, f in evals if f.exists()]
            if not evals:
                continue
            spreads, paper, logged = [], [], []
            for j, e in evals:
                seeds = [_mean_iqm(v["iqm"]) for k, v in e.items() if k.startswith("seed")]
                spreads.append(f"{max(seeds) - min(seeds):.0f}" if seeds else "-")  # - : `--spread 0`
                paper.append(_mean_iqm(e["paper_protocol"]["iqm"]))
                results = json.loads((kept_dir(j, args) / "results.json").read_text())
                logged.append(_mean_iqm(results["final"]["iqm"]))
            between = f"{max(logged) - min(logged):.0f}" if len(logged) > 1 else "-"
            rows.append(
                f"| {_paper_name(method)} | {domain} | {len(evals)} | "
                f"{' / '.join(f'{v:.0f}' for v in logged)} | {' / '.join(spreads)} | "
                f"{between} | {' / '.join(f'{v:.0f}' for v in paper)} |"
            )
    if not rows:
        return []
    return [
        "Evaluation noise of the final step (mean over tasks of the per-task IQM; `--final_eval`): the "
        "training run's own evaluation per seed; the range of the same weights' score over other "
        "evaluation seeds (`--spread`, 5 by default; new labelled windows and episodes; - for a run "
        "evaluated without them); the range between training seeds; the same weights under the "
        "paper's protocol (10,000 windows, 10 episodes).",
        "",
        "| method | domain | runs | final score per seed | range over evaluation seeds, per run | "
        "range between training seeds | paper protocol per seed |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def dataset_lines(done: list[Job], args: argparse.Namespace) -> list[str]:
    """The datasets the kept runs trained on, from the manifest each results.json records: identity
    (a digest of the per-array sha256s), collection seed, date, coverage, and the runs on each."""
    found: dict[str, dict] = {}
    for job in done:
        provenance = json.loads((kept_dir(job, args) / "results.json").read_text()).get("dataset_provenance")
        for manifest in (provenance or {}).get("manifest", {}).get("datasets", []):
            digest = hashlib.sha256(
                "".join(manifest["arrays"][name]["sha256"] for name in sorted(manifest["arrays"])).encode()
            ).hexdigest()[:12]
            entry = found.setdefault(digest, {"manifest": manifest, "runs": 0})
            entry["runs"] += 1
    if not found:
        return []
    rows = []
    for digest, entry in sorted(found.items(), key=lambda kv: (kv[1]["manifest"]["domain"], kv[0])):
        m = entry["manifest"]
        collection = m.get("source", {}).get("collection") or {}
        above = m.get("coverage", {}).get("reward_above", {})
        coverage = ", ".join(f"{task} {100 * v['0.5']:.1f} %" for task, v in above.items() if "0.5" in v)
        rows.append(
            f"| {m['domain']} | `{digest}` | {m['episodes']} | {collection.get('seed', '?')} | "
            f"{m.get('created', '?')[:10]} | {coverage or '?'} | {entry['runs']} |"
        )
    return [
        "Datasets the runs trained on (identity: the first 12 hex digits of the sha256 of the manifest's "
        "per-array sha256s; coverage: share of states with reward above 0.5 per task):",
        "",
        "| domain | identity | episodes | collection seed | made | coverage | runs |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _mean_iqm(iqm: dict[str, dict[str, float]]) -> float:
    return sum(v for per_m in iqm.values() for v in per_m.values()) / sum(len(v) for v in iqm.values())


def _paper_name(method: str) -> str:
    """The name the report gives the method's runs (their results.json's memory label)."""
    spec = METHODS[method]
    memory = spec.memory is not None
    label = memory_label(
        memory, memory and "agent.recurrent_B=false" not in spec.overrides, spec.memory or "none"
    )
    return plot_results.method_name(spec.algorithm, label)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ordered_jobs(args: argparse.Namespace) -> list[Job]:
    """Domains in the given order (fully observed first, the normaliser), seeds, then methods
    with memory first (the slowest), so that two jobs at a time end close together."""
    slow_first = sorted(args.methods, key=lambda m: (METHODS[m].memory is None, METHODS[m].memory != "gru"))
    return [Job(m, d, s) for d in args.domains for s in args.seeds for m in slow_first]


class Ledger:
    """Per-run wall seconds, kept in ``<runs>/study.json`` across invocations (thread-safe; re-read
    before each write, so that two drivers running side by side keep each other's entries)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = self._read()

    def _read(self) -> dict[str, float]:
        try:
            return json.loads(self.path.read_text())["run_seconds"]
        except (OSError, ValueError, KeyError):
            return {}

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.seconds = {**self.seconds, **self._read()}
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run_seconds": self.seconds}, indent=1))
            os.replace(tmp, self.path)


LOCK_FILE = "driver.lock"  # in a run directory while a driver trains it: the driver's process id


def claim(run_dir: Path) -> int | None:
    """Takes the run directory's lock for this process; returns None, or the process id of the
    live driver that holds it (a lock left by a driver that died is taken over)."""
    lock, mine = run_dir / LOCK_FILE, run_dir / f".{LOCK_FILE}.{os.getpid()}"
    mine.write_text(str(os.getpid()))
    try:
        while True:
            try:
                os.link(mine, lock)  # atomic: the lock appears with its process id in it
                return None
            except FileExistsError:
                try:
                    pid = int(lock.read_text())
                    os.kill(pid, 0)  # raises ProcessLookupError when no such process
                    return pid
                except PermissionError:  # alive, another user's
                    return pid
                except (OSError, ValueError):  # stale, or removed meanwhile
                    lock.unlink(missing_ok=True)
    finally:
        mine.unlink()


def run_job(job: Job, args: argparse.Namespace, ledger: Ledger) -> bool:
    run_dir = job.run_dir(Path(args.runs))
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = claim(run_dir)
    if holder is not None:
        say(f"skip   {job.key()}: another driver (process {holder}) is training it")
        return True
    try:
        if finished(job, args, ledger):  # by another driver since this one started
            say(f"skip   {job.key()}: finished since this driver started")
            return True
        return _train(job, args, ledger, run_dir)
    finally:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)


def _train(job: Job, args: argparse.Namespace, ledger: Ledger, run_dir: Path) -> bool:
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"))
    start = time.perf_counter()
    say(f"start  {job.key()}")
    with (run_dir / "driver.log").open("a") as log:
        code = subprocess.run(train_command(job, args), cwd=ROOT, env=env, stdout=log, stderr=log).returncode
    seconds = time.perf_counter() - start
    ledger.add(job.key(), seconds)
    if code == 0:
        keep(job, args, ledger.seconds[job.key()])
    status = "done" if code == 0 else f"FAILED (exit {code}, see {run_dir / 'driver.log'})"
    say(f"{status}  {job.key()} in {seconds / 60:.1f} min")
    return code == 0


_PRINT = threading.Lock()


def say(message: str) -> None:
    with _PRINT:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_seconds(job: Job, args: argparse.Namespace) -> float:
    """The run's wall seconds as kept in its driver.json."""
    return float(json.loads((kept_dir(job, args) / "driver.json").read_text())["seconds"])


def method_order(name: str) -> tuple[int, str]:
    """The paper's methods first, in its order, then the ablation's."""
    order = plot_results.METHOD_ORDER
    return (order.index(name) if name in order else len(order), name)


def absolute_returns(rows: list[dict], reps: int) -> list[str]:
    """Per task, each method and domain's final return: IQM over seeds [95 % CI], and the seeds'
    values; one table per task set (walker's tasks are not cheetah's)."""
    lines = [
        "Final returns per task (IQM over seeds [95 % stratified-bootstrap CI]; each seed's value after it):"
    ]
    by_tasks: dict[tuple[str, ...], list[dict]] = {}
    for r in sorted(rows, key=lambda r: (DOMAINS.index(r["domain"]), method_order(r["method"]))):
        by_tasks.setdefault(tuple(r["runs"][0].scores("final")), []).append(r)
    for tasks, group in by_tasks.items():
        lines += ["", "| method | domain | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for r in group:
            matrix, _ = plot_results.score_matrix(r["runs"], "final", None)  # [seeds, tasks], returns
            cells = []
            for j in range(len(tasks)):
                point, lo, hi = plot_results.stratified_bootstrap_ci(matrix[:, [j]], reps)
                seeds = "/".join(f"{v:.0f}" for v in matrix[:, j])
                cells.append(f"{point:.0f} [{lo:.0f}, {hi:.0f}] ({seeds})")
            lines.append(f"| {r['method']} | {r['domain']} | " + " | ".join(cells) + " |")
    return lines


def against_fb_lines(rows: list[dict], reps: int) -> list[str]:
    """Every partially observed row as a return and as percent of FB's fully observed score: one
    yardstick for the methods (the memory ablation) whose own fully observed runs are not in the study."""
    fb = _paper_name("fb")
    fb_full = {r["domain"]: r["runs"] for r in rows if r["method"] == fb and r["domain"] == r["base_domain"]}
    pomdp = [r for r in rows if r["domain"] != r["base_domain"]]
    if not pomdp:
        return []
    lines = [
        "Partially observed rows as returns (IQM over runs x tasks [95 % CI], 0-1000) and as percent of",
        "memory-free FB's fully observed score on the same domain and data (the common yardstick of",
        "the memory ablation):",
        "",
        "| domain | method | seeds | return | % of FB fully observed |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(pomdp, key=lambda r: (DOMAINS.index(r["domain"]), method_order(r["method"]))):
        raw, _ = plot_results.score_matrix(r["runs"], "final", None)  # [seeds, tasks]
        point, lo, hi = plot_results.stratified_bootstrap_ci(raw, reps)
        reference = fb_full.get(r["base_domain"])
        share = "-"
        if reference:
            matrix, _ = plot_results.score_matrix(r["runs"], "final", reference)
            p, p_lo, p_hi = plot_results.stratified_bootstrap_ci(matrix, reps)
            share = plot_results._cell(p, (p_lo, p_hi), True)
        lines.append(
            f"| {r['domain']} | {r['method']} | {r['seeds']} | {point:.0f} [{lo:.0f}, {hi:.0f}] | {share} |"
        )
    return lines


def headline_rows(rows: list[dict], methods: list[str]) -> list[str]:
    """The paper-shaped table: per domain and POMDP, each method's percent of its own fully observed
    score (a return where the fully observed run is missing) beside the paper's."""
    keyed = {(r["domain"], r["method"]): r for r in rows}
    lines = ["| domain | POMDP | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for domain in [d for d in DOMAINS if any(r["domain"] == d for r in rows)]:
        base, _, variant = domain.partition("_")
        paper = PAPER_PERCENT.get((base, variant), {})
        cells = []
        for m in methods:
            r = keyed.get((domain, m))
            normalised = bool(r and r["normalised"])
            ours = plot_results._cell(r["iqm"], r["ci"], normalised) if r else "-"
            if r and variant and not normalised:  # no fully observed run of this method
                ours = f"return {ours}"
            cells.append(f"{ours} (paper {paper[m]} %)" if m in paper and normalised else ours)
        label = variant or "fully observed (return, 0-1000)"
        lines.append(f"| {base} | {label} | " + " | ".join(cells) + " |")
    return lines


def paper_protocol_lines(done: list[Job], args: argparse.Namespace, methods: list[str]) -> list[str]:
    """The headline table again from the paper-protocol re-evaluations (``--final_eval``): only the
    (method, domain) cells whose every run has one."""
    runs = []
    for method, domain in sorted({(j.method, j.domain) for j in done}):
        jobs = [j for j in done if (j.method, j.domain) == (method, domain)]
        files = [kept_dir(j, args) / FINAL_EVAL for j in jobs]
        if not all(f.exists() for f in files):
            continue
        for job, f in zip(jobs, files, strict=True):
            for run in plot_results.find_runs([str(kept_dir(job, args) / "results.json")]):
                iqm = json.loads(f.read_text())["paper_protocol"]["iqm"]
                runs.append(plot_results.Run(run.path, {**run.results, "final": {"iqm": iqm}}, run.curve))
    if not runs:
        return []
    rows = plot_results.aggregate(runs, "final", args.reps)
    return [
        "The same from the final step re-evaluated with the paper's protocol (10,000 labelled windows,",
        "10 episodes per task; `--final_eval`), for the cells whose every run has that evaluation:",
        "",
        *headline_rows(rows, [m for m in methods if any(r["method"] == m for r in rows)]),
    ]


def summary(rows: list[dict], args: argparse.Namespace, done: list[Job], wall_s: float, command: str) -> str:
    """The paper-shaped comparison (ours beside the paper's percentages) with command and compute."""
    methods = sorted({r["method"] for r in rows}, key=method_order)
    drivers = [json.loads((kept_dir(j, args) / "driver.json").read_text()) for j in done]
    machines = sorted({d.get("cpu", "?") for d in drivers})
    at_a_time = "/".join(sorted({str(d.get("jobs_at_a_time", "?")) for d in drivers}))
    lines = [
        "# CPU-scale study: summary",
        "",
        f"Command: `{command}`",
        "",
        f"Runs: {len(done)} ({', '.join(args.methods)} x {', '.join(args.domains)} x seeds "
        f"{' '.join(map(str, args.seeds))}), {args.updates} updates each, preset `{args.preset}`, "
        f"{args.episodes} locally collected episodes per domain (`--explorer cpu`).",
        f"Compute: {sum(run_seconds(job, args) for job in done) / 60:.1f} min of summed run wall time "
        f"(one torch thread per run, {at_a_time} runs at a time; machines: {'; '.join(machines)}); "
        f"this invocation {wall_s / 60:.1f} min.",
        "",
        "Percent of the same method's fully observed score (IQM over runs x tasks, 95 % stratified-bootstrap",
        'CI); "paper" is the paper\'s figure (Jeen et al., 2025).',
        "",
    ]
    lines += headline_rows(rows, methods)
    protocol = paper_protocol_lines(done, args, methods)
    if protocol:
        lines += ["", *protocol]
    against_fb = against_fb_lines(rows, args.reps)
    if against_fb:
        lines += ["", *against_fb]
    lines += ["", *absolute_returns(rows, args.reps)]
    for extra in (noise_lines(done, args), dataset_lines(done, args)):
        if extra:
            lines += ["", *extra]
    lines += [
        "",
        "Per-task tables in percent: `report.md`; figures: `learning_curves.png`, `iqm_bars.png`.",
    ]
    return "\n".join(lines) + "\n"


def run_study(jobs: list[Job], args: argparse.Namespace, ledger: Ledger) -> list[str] | None:
    """Makes each missing dataset, then runs every unfinished job; returns the failed ones
    (None when a dataset could not be made)."""
    todo = [job for job in jobs if not finished(job, args, ledger)]
    for base in sorted({job.base_domain for job in todo}):
        if not dataset_path(args, base).exists():
            say(f"collecting the dataset: {shlex.join(dataset_command(args, base))}")
            env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"))
            if subprocess.run(dataset_command(args, base), cwd=ROOT, env=env).returncode != 0:
                sys.stderr.write(
                    f"cpu_study.py: error: the {base} dataset collection failed (its output is above)\n"
                )
                return None
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
    for name in ("spread", "collection_seed"):
        if getattr(args, name) < 0:
            sys.stderr.write(f"cpu_study.py: error: --{name} must be >= 0, got {getattr(args, name)}\n")
            return 2
    command = "python experiments/cpu_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    jobs = ordered_jobs(args)
    if args.dry_run:
        todo = [job for job in jobs if not reached(kept_dir(job, args) / "results.json", args.updates)]
        for base in sorted({job.base_domain for job in todo}):
            if not dataset_path(args, base).exists():
                print(shlex.join(dataset_command(args, base)))
        for job in jobs:
            print(("# done: " if job not in todo else "") + shlex.join(train_command(job, args)))
            if args.final_eval and not (kept_dir(job, args) / FINAL_EVAL).exists():
                for cmd in final_eval_commands(job, args).values():
                    print(shlex.join(cmd))
        return 0
    start = time.perf_counter()
    ledger = Ledger(Path(args.runs) / STATE_FILE)
    failed = [] if args.report_only else run_study(jobs, args, ledger)
    if failed is None:
        return 1
    # Only this study's runs at this budget, read from the kept results alone.
    done = [job for job in jobs if finished(job, args, ledger)]
    if args.final_eval:  # with --report_only too: scores the finished runs, trains nothing
        failed += [f"{job.key()} (final evaluation)" for job in done if not final_eval(job, args)]
    runs = [run for job in done for run in plot_results.find_runs([str(kept_dir(job, args))])]
    if runs:
        rows = plot_results.aggregate(runs, "final", args.reps)
        out = Path(args.report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(plot_results.markdown(rows, "final"))
        plot_results.plot_curves(rows, out / "learning_curves.png")
        plot_results.plot_bars(rows, out / "iqm_bars.png")
        text = summary(rows, args, done, time.perf_counter() - start, command)
        missing: dict[str, list[str]] = {}
        for job in jobs:
            if job not in done:
                missing.setdefault(f"{job.method}/{job.domain}", []).append(str(job.seed))
        if missing:
            cells = "; ".join(f"{cell} (seed {', '.join(seeds)})" for cell, seeds in missing.items())
            text += f"\nNot finished yet (left out above): {cells}.\n"
        (out / "summary.md").write_text(text)
        print(text)
        say(f"report written to {out}")
    if failed:
        sys.stderr.write(f"cpu_study.py: {len(failed)} run(s) failed: {', '.join(failed)}; rerun to retry\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
