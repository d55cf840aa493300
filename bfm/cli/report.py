"""Results report: aggregate runs into paper-shaped tables and figures.

    python plot_results.py RUN_DIR_OR_ROOT... [--out report/] [--reps 2000] [--which final|best]

Every directory holding a ``results.json`` below the given paths is one run. Runs are grouped by
method (algorithm + memory setup: FB, FB-M, FB-stack, HILP, HILP-M, ...), domain and dataset; seeds
are the runs of a group. Per task the score of a run is its final (or best) IQM over evaluation
episodes; where the matching fully observed runs exist (same method and dataset, domain without
the POMDP suffix) scores are divided by their mean per-task score and reported in percent, as in
the paper. Aggregates are the IQM over runs x tasks (``rliable.metrics.aggregate_iqm``) with 95 %
stratified-bootstrap confidence intervals (runs resampled with replacement within each task,
percentile interval, ``rliable.library.get_interval_estimates``).

Writes ``report.md`` (overall table shaped like the paper's, plus per-task tables),
``learning_curves.png`` and ``iqm_bars.png`` into ``--out``, and prints the markdown.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfm.cli import errors
from bfm.files import write_text_atomic

PROG = "plot_results.py"
log = logging.getLogger("plot_results")

METHOD_NAMES = {
    ("fb", "none"): "FB",
    ("hilp", "none"): "HILP",
    ("fb_m", "mlp"): "FB-stack",
    ("fb_m", "gru"): "FB-M",
    ("hilp_m", "gru"): "HILP-M",
}
METHOD_ORDER = ["FB", "HILP", "FB-stack", "FB-M", "HILP-M"]


def method_name(algorithm: str, memory: str) -> str:
    """Paper name of an (algorithm, memory label) pair; other pairs are spelled out."""
    return METHOD_NAMES.get((algorithm, memory), f"{algorithm.upper().replace('_M', '-M')} ({memory})")


@dataclass
class Run:
    """One run directory's results.

    Attributes:
        path: run directory.
        results: parsed results.json.
        curve: (step, mean IQM over tasks) of every evaluation.
    """

    path: Path
    results: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def method(self) -> str:
        return method_name(self.results["algorithm"], self.results["memory"])

    @property
    def domain(self) -> str:
        return self.results["domain"]

    @property
    def base_domain(self) -> str:
        return self.domain.split("_")[0]

    @property
    def variant(self) -> str:
        return self.domain.partition("_")[2] or "full"

    def scores(self, which: str) -> dict[str, float]:
        """Per (task@multiplier) IQM of the final or best evaluation."""
        iqm = self.results[which]["iqm"]
        return {_label(task, m, len(per_m)): v for task, per_m in iqm.items() for m, v in per_m.items()}


def _label(task: str, multiplier: str, count: int) -> str:
    return task if count == 1 and float(multiplier) == 1.0 else f"{task}@{float(multiplier):g}"


REQUIRED_KEYS = ("algorithm", "memory", "domain", "dataset", "final", "best")


def find_runs(paths: list[str], skipped: list[str] | None = None) -> list[Run]:
    """Every run (directory with a readable results.json) under the given paths.

    Args:
        paths: run directories, folders above them, or results.json files.
        skipped: when given, receives ``"<path>: <why>"`` of each results.json that cannot be read
            (truncated, not JSON, missing keys); those runs are left out, with a warning.
    """
    runs = []
    for root in paths:
        root = Path(root)
        # A results.json named itself, or every one under a folder (the folder's own included).
        for results_path in [root] if root.is_file() else sorted(root.rglob("results.json")):
            try:
                results = json.loads(results_path.read_text())
                missing = [k for k in REQUIRED_KEYS if k not in results]
                if missing:
                    raise ValueError(f"no {', '.join(missing)}")
                curve = [(int(p["step"]), float(p["mean_iqm"])) for p in results.get("curve", [])]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as error:
                reason = f"{results_path}: {str(error).splitlines()[0][:120]}"
                log.warning("skipped unreadable run: %s", reason)
                if skipped is not None:
                    skipped.append(reason)
                continue
            runs.append(Run(results_path.parent, results, curve))
    return runs


def mean_of_task_iqms(scores: np.ndarray) -> float:
    """Mean over tasks of each task's IQM over runs (the headline of results.json for one run)."""
    from rliable.metrics import aggregate_iqm  # lazy (also below): the [report] extra, slow to import

    return float(np.mean([aggregate_iqm(scores[:, j]) for j in range(scores.shape[1])]))


def stratified_bootstrap_ci(
    scores: np.ndarray, reps: int, seed: int = 0, size: float = 0.95, aggregate: Any = None
) -> tuple[float, float, float]:
    """An aggregate (default: IQM over runs x tasks) with rliable's stratified-bootstrap CI.

    Runs are resampled with replacement within each task (``rliable.library.get_interval_estimates``,
    percentile interval).

    Args:
        scores: [runs, tasks].
        reps: bootstrap replications.
        seed: seed of the bootstrap's random state.
        size: confidence level.
        aggregate: [runs, tasks] -> float (default ``rliable.metrics.aggregate_iqm``).

    Returns:
        (point estimate, lower, upper).
    """
    from rliable import library
    from rliable.metrics import aggregate_iqm

    aggregate = aggregate or aggregate_iqm
    # rliable prints a progress line per call, and arch deprecates the RandomState rliable hands it.
    # rliable's StratifiedBootstrap draws its resamples from numpy's global generator, not from
    # random_state: seeded here (and restored after), so an interval does not depend on the calls before.
    state = np.random.get_state()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
        np.random.seed(seed)
        try:
            points, intervals = library.get_interval_estimates(
                {"scores": scores},
                lambda x: np.array([aggregate(x)]),
                reps=reps,
                confidence_interval_size=size,
                random_state=np.random.RandomState(seed),
            )
        finally:
            np.random.set_state(state)
    return float(points["scores"][0]), float(intervals["scores"][0, 0]), float(intervals["scores"][1, 0])


def group_runs(runs: list[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """(method, domain, dataset) -> runs (seeds)."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.method, run.domain, run.results["dataset"])].append(run)
    return dict(groups)


def score_matrix(group: list[Run], which: str, reference: list[Run] | None) -> tuple[np.ndarray, list[str]]:
    """[runs, tasks] scores, normalised to percent of the fully observed reference when given."""
    tasks = list(group[0].scores(which))

    def scores(runs: list[Run]) -> np.ndarray:
        return np.array([[run.scores(which).get(t, np.nan) for t in tasks] for run in runs])  # [runs, tasks]

    matrix = scores(group)
    if reference:
        ref = scores(reference).mean(0)  # [tasks]
        matrix = 100.0 * matrix / np.where(np.abs(ref) > 1e-8, ref, np.nan)
    return matrix, tasks


def aggregate(runs: list[Run], which: str = "final", reps: int = 2000) -> list[dict[str, Any]]:
    """One summary row per (method, domain, dataset) group."""
    groups = group_runs(runs)
    missing = (float("nan"),) * 3
    rows = []
    for (method, domain, dataset), group in sorted(groups.items()):
        base = group[0].base_domain
        reference = groups.get((method, base, dataset)) if domain != base else None
        matrix, tasks = score_matrix(group, which, reference)
        valid = matrix[:, ~np.isnan(matrix).any(0)]  # [runs, tasks with every score defined]
        point, lo, hi = stratified_bootstrap_ci(valid, reps) if valid.size else missing
        mean_of_tasks = (
            stratified_bootstrap_ci(valid, reps, aggregate=mean_of_task_iqms) if valid.size else missing
        )
        per_task = {
            t: stratified_bootstrap_ci(matrix[:, [i]], reps) if not np.isnan(matrix[:, i]).any() else missing
            for i, t in enumerate(tasks)
        }
        excluded = [t for i, t in enumerate(tasks) if np.isnan(matrix[:, i]).any()]
        if excluded:
            log.warning("%s on %s: no finite score in some run for %s", method, domain, ", ".join(excluded))
        rows.append(
            {
                "method": method,
                "domain": domain,
                "base_domain": base,
                "variant": group[0].variant,
                "dataset": dataset,
                "seeds": len(group),
                "normalised": bool(reference),
                "iqm": point,
                "mean_of_tasks": mean_of_tasks,
                "ci": (lo, hi),
                "per_task": per_task,
                "excluded_tasks": excluded,
                "runs": group,
            }
        )
    return rows


def _cell(point: float, ci: tuple[float, float], percent: bool) -> str:
    if np.isnan(point):
        return "n/a (a run has no finite score)"
    unit = "%" if percent else ""
    return f"{point:.1f}{unit} [{ci[0]:.1f}, {ci[1]:.1f}]"


def markdown(rows: list[dict[str, Any]], which: str) -> str:
    """The paper-shaped table (rows POMDP x domain, columns methods) and per-task tables."""
    methods = sorted({r["method"] for r in rows}, key=_method_rank)
    lines = [
        f"# Results ({which} evaluation)",
        "",
        "IQM over runs x tasks with 95 % stratified-bootstrap CIs. Cells marked % are normalised by the",
        "same method's fully observed runs (percent); other cells are raw returns (0-1000).",
        "",
        "| POMDP | domain | dataset | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    keyed = {(r["variant"], r["base_domain"], r["dataset"], r["method"]): r for r in rows}
    for variant, domain, dataset in sorted({(r["variant"], r["base_domain"], r["dataset"]) for r in rows}):
        cells = []
        for m in methods:
            r = keyed.get((variant, domain, dataset, m))
            cells.append(_cell(r["iqm"], r["ci"], r["normalised"]) + f" (n={r['seeds']})" if r else "")
        lines.append(f"| {variant} | {domain} | {dataset} | " + " | ".join(cells) + " |")
    for r in rows:
        lines += [
            "",
            f"## {r['method']} on {r['domain']} ({r['dataset']}, {r['seeds']} seed(s){', % of fully observed' if r['normalised'] else ''})",
            "",
        ]
        lines += ["| task | IQM [95 % CI] |", "|---|---|"]
        lines += [
            f"| {t} | {_cell(p, (lo, hi), r['normalised'])} |" for t, (p, lo, hi) in r["per_task"].items()
        ]
        if r["excluded_tasks"]:
            lines.append(f"| (aggregates below leave out {', '.join(r['excluded_tasks'])}) | |")
        lines.append(f"| **IQM over runs x tasks** | {_cell(r['iqm'], r['ci'], r['normalised'])} |")
        mean, lo, hi = r["mean_of_tasks"]
        lines.append(f"| **mean over tasks of the task IQMs** | {_cell(mean, (lo, hi), r['normalised'])} |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib  # lazy: the backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _method_color(method: str) -> str:
    """One colour per method in every panel (matplotlib's default cycle, in METHOD_ORDER)."""
    rank = (
        _method_rank(method)[0]
        if method in METHOD_ORDER
        else len(METHOD_ORDER) + zlib.crc32(method.encode()) % 5
    )
    return f"C{rank % 10}"


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Learning curves: mean-over-tasks IQM against gradient steps, mean over seeds (min-max band)."""
    plt = _pyplot()
    domains = sorted({r["domain"] for r in rows})
    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 3.6), squeeze=False, sharey=True)
    for ax, domain in zip(axes[0], domains, strict=True):
        for r in sorted((r for r in rows if r["domain"] == domain), key=lambda r: _method_rank(r["method"])):
            color = _method_color(r["method"])
            steps = sorted({s for run in r["runs"] for s, _ in run.curve})
            values = np.array(
                [[dict(run.curve).get(s, np.nan) for s in steps] for run in r["runs"]]
            )  # [runs, steps]
            mean = np.nanmean(values, 0)
            ax.plot(steps, mean, marker="o", ms=3, color=color, label=f"{r['method']} (n={r['seeds']})")
            if len(r["runs"]) > 1:
                ax.fill_between(steps, np.nanmin(values, 0), np.nanmax(values, 0), color=color, alpha=0.2)
        ax.set_title(domain)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("mean task IQM (return)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar charts of each group's aggregate IQM with its 95 % CI: raw returns of the groups without
    a fully observed reference on the left, percent of the fully observed score on the right."""
    plt = _pyplot()
    panels = [
        (kind, [r for r in rows if r["normalised"] == normalised])
        for kind, normalised in (("IQM return (0-1000)", False), ("IQM, % of the fully observed score", True))
    ]
    panels = [(kind, group) for kind, group in panels if group]
    widths = [max(2.5, 1.1 * len(group)) for _, group in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(sum(widths) + 1, 3.8), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, (kind, group) in zip(axes[0], panels, strict=True):
        group = sorted(group, key=lambda r: (r["domain"], _method_rank(r["method"])))
        points = np.array([r["iqm"] for r in group])
        errors = np.array([[r["iqm"] - r["ci"][0] for r in group], [r["ci"][1] - r["iqm"] for r in group]])
        colors = [_method_color(r["method"]) for r in group]
        ax.bar(range(len(group)), points, yerr=errors, capsize=4, color=colors, alpha=0.85)
        ax.set_xticks(range(len(group)), [f"{r['method']}\n{r['domain']}" for r in group], fontsize=7)
        ax.set_ylabel(kind)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (130 on Ctrl-C, with one line)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        errors.fail(
            PROG,
            "interrupted; the runs are untouched, rerun the same command to write the report",
            errors.EXIT_INTERRUPTED,
        )


def _main(argv: list[str] | None) -> int:
    parser = errors.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="+", help="run directories, roots to search for results.json, or results.json files"
    )
    parser.add_argument("--out", default="report", help="output directory (default: report)")
    parser.add_argument(
        "--which", choices=("final", "best"), default="final", help="final or best evaluation"
    )
    parser.add_argument(
        "--reps", type=errors.int_at_least(1), default=2000, help="bootstrap replications (>= 1)"
    )
    args = parser.parse_args(argv)
    errors.setup_logging("%(message)s")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        errors.fail(PROG, f"--out {out} is a file; name a folder (it is created if missing)")
    skipped: list[str] = []
    for path in map(Path, args.paths):
        problem = "does not exist" if not path.exists() else "is a file" if path.is_file() else None
        if problem and not (path.is_file() and path.name == "results.json"):
            errors.fail(
                PROG,
                f"{path} {problem}; pass run directories written by main_exorl.py, folders above them, "
                "or their results.json files",
            )
    runs = find_runs(args.paths, skipped)
    if not runs:
        errors.fail(
            PROG,
            f"no readable results.json under {', '.join(args.paths)}"
            + (f" ({len(skipped)} unreadable: {skipped[0]})" if skipped else "")
            + "; pass run directories written by main_exorl.py, or folders above them",
        )
    rows = aggregate(runs, args.which, args.reps)
    with errors.reported(PROG, OSError):
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(rows, args.which)
        if skipped:
            text += "\nLeft out, unreadable: " + "; ".join(skipped) + "\n"
        write_text_atomic(out / "report.md", text)
        plot_curves(rows, out / "learning_curves.png")
        plot_bars(rows, out / "iqm_bars.png")
    print(text)
    log.info(
        "%d run(s), %d group(s)%s: wrote %s, %s, %s",
        len(runs),
        len(rows),
        f", {len(skipped)} unreadable left out" if skipped else "",
        out / "report.md",
        out / "learning_curves.png",
        out / "iqm_bars.png",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
