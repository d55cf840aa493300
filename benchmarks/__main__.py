"""The benchmark suite: ``python -m benchmarks`` (full, ~10-15 min on 2 CPU cores) or ``--quick`` (< 1 min).

Measures on the current machine and writes ``benchmarks/results/<timestamp>.json`` and ``.md``
(git-ignored), printing the markdown:

1. machine: dense matmul rate fp32 / bf16 (1024 x 1024), the hardware limit used below;
2. updates/s of fb, fb_m and hilp_m with each memory type, at the ``small`` preset
   (widths 128, batch 64, L_F 8, L_B 4, the size the official code was timed at) and the ``paper`` config (batch 512,
   L_F 32, L_B 8, GRU 512), in the modes eager / compiled / bf16 (autocast) / bf16+compiled; GFLOP
   per update (FlopCounterMode), the achieved GFLOP/s and its fraction of the measured matmul rate
   at the same precision, and the official code's GFLOP per update where ``common.OFFICIAL_GFLOP`` has it
   (speed against the official code only comes from side-by-side runs: ``common.SIDE_BY_SIDE``, printed for reference);
3. the time split of one training step (sampling, representation step, actor step, targets,
   logging) of fb_m GRU;
4. evaluation throughput (env steps/s with the policy, sliding and carry mode) and the share of a
   paper-cadence run (eval every 20k updates, 10 rollouts x tasks x 1000 steps) spent evaluating;
5. relabelling rows/s (walker, every task);
6. side by side at the ``cpu`` preset (``experiment=cpu``'s sizes), one torch thread: time per
   update of every (algorithm, memory) pairing as a ratio to memory-free fb, measured alternately
   in one process, with GFLOP and profiler events (operator calls) per update.

Flags select subsets: ``--presets``, ``--algos``, ``--memories``, ``--modes``, ``--paper-modes``,
``--skip eval relabel split side``, ``--side-preset``. Timings are best-of a few calls (the least disturbed on a shared
machine); the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import OFFICIAL_GFLOP, PRESETS, SIDE_BY_SIDE, machine_info, matmul_gflops
from benchmarks.update_speed import (
    MODES,
    SIDE_BY_SIDE_HEADER,
    build,
    count_gflop,
    side_by_side,
    side_by_side_line,
    synthetic_batch,
    time_split,
    time_updates,
)
from bfm.agents import AGENTS
from bfm.memory import REGISTRY

RESULTS = Path(__file__).resolve().parent / "results"
MEMORIES = list(REGISTRY)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small preset only, eager + bf16, < 1 min")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=["small", "paper"])
    parser.add_argument("--algos", nargs="+", choices=list(AGENTS), default=["fb", "fb_m", "hilp_m"])
    parser.add_argument("--memories", nargs="+", default=MEMORIES)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["eager", "compiled", "bf16"],
                        help="modes at the small preset")  # fmt: skip
    parser.add_argument("--paper-modes", nargs="+", choices=list(MODES), default=["eager", "bf16"],
                        help="modes at the paper config")  # fmt: skip
    parser.add_argument("--paper-compiled", nargs="*", default=["fb_m:gru"],
                        help="algo:memory pairs also measured compiled at the paper config")  # fmt: skip
    parser.add_argument("--steps-small", type=int, default=15, help="timed updates per small entry")
    parser.add_argument("--steps-paper", type=int, default=2, help="timed updates per paper entry")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["eval", "relabel", "split", "flops", "side"]
    )
    parser.add_argument(
        "--side-preset", choices=list(PRESETS), default="cpu", help="preset of the side-by-side table"
    )
    parser.add_argument(
        "--side-rounds", type=int, default=8, help="alternating rounds of the side-by-side table"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.modes, args.steps_small, args.side_rounds = ["small"], ["eager", "bf16"], 10, 2
        args.skip = sorted(set(args.skip) | {"relabel"})
    return args


def bench_updates(args: argparse.Namespace, matmul: dict[str, float]) -> list[dict[str, Any]]:
    """One row per (preset, algo, memory, mode)."""
    rows = []
    for preset_name in args.presets:
        preset = PRESETS[preset_name]
        batch = synthetic_batch(preset, args.device)
        paper = preset_name == "paper"
        for algo in args.algos:
            for memory in args.memories if algo.endswith("_m") else ["none"]:
                modes = list(args.paper_modes if paper else args.modes)
                if paper and f"{algo}:{memory}" in args.paper_compiled and "compiled" not in modes:
                    modes.append("compiled")
                gflop = math.nan
                if "flops" not in args.skip:
                    gflop = count_gflop(build(algo, memory, preset, "eager", args.device), batch)
                for mode in modes:
                    agent = build(algo, memory, preset, mode, args.device)
                    steps = args.steps_paper if paper else args.steps_small
                    t = time_updates(agent, batch, steps, args.device, warmup=1 if paper else 2)
                    precision = "bf16" if "bf16" in mode else "fp32"
                    row = {
                        "preset": preset_name, "algo": algo, "memory": memory, "mode": mode,
                        "s_per_update": t["best_s"], "median_s": t["median_s"], "first_call_s": t["warmup_s"],
                        "updates_per_s": 1 / t["best_s"], "gflop": gflop,
                        "gflops": gflop / t["best_s"], "limit_fraction": gflop / t["best_s"] / matmul[precision],
                        "official_gflop": OFFICIAL_GFLOP.get((preset_name, algo, memory)),
                    }  # fmt: skip
                    rows.append(row)
                    print(_update_line(row), flush=True)
                    del agent
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _update_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['preset']} | {r['algo']} | {r['memory']} | {r['mode']} | {r['s_per_update']:.4f} | "
        f"{r['median_s']:.4f} | {r['updates_per_s']:.2f} | {_fmt(r['gflop'], '.1f')} | "
        f"{_fmt(r['gflops'], '.0f')} | {_fmt(100 * r['limit_fraction'], '.0f')} % | "
        f"{_fmt(r['official_gflop'], '.1f')} |"
    )


UPDATE_HEADER = (
    "| preset | algo | memory | mode | s/update (best) | median | updates/s | GFLOP/update | GFLOP/s | "
    "% of matmul limit | official GFLOP/update |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    m = report["machine"]
    lines = [
        f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, torch "
        f"{m['torch']}, {m['cuda'] or 'no GPU'}; load average at start {_fmt(m.get('loadavg_1m'), '.1f')}. "
        f"Dense matmul 1024^3: fp32 {report['matmul']['fp32']:.0f} GFLOP/s, bf16 {report['matmul']['bf16']:.0f} GFLOP/s "
        f"(the official code's timing run: about 170 / 380).",
        "",
        UPDATE_HEADER,
        *(_update_line(r) for r in report["updates"]),
        "",
        "Against the official code, only side by side (``benchmarks/common.py`` SIDE_BY_SIDE, both codes in one "
        "run on one 2-core AMD EPYC, 2026-12-01; not this run's machine):",
        "",
        "| config | official s/update | this project s/update | official / this project |",
        "|---|---|---|---|",
        *(f"| {name} | {a:.4g} | {b:.4g} | {a / b:.2f}x |" for name, (a, b) in SIDE_BY_SIDE.items()),
    ]
    for name, split in report.get("split", {}).items():
        total = split["total"]
        lines += [
            "",
            f"Time split of one training step, {name} (median ms, share of the step):",
            "",
            "| sampling | F/B (representation) update | actor update | target update | logging | total |",
            "|---|---|---|---|---|---|",
            "| "
            + " | ".join(
                f"{1e3 * split[k]:.1f} ({100 * split[k] / total:.1f} %)"
                for k in ("sampling", "representation", "actor", "target", "logging")
            )
            + f" | {1e3 * total:.1f} |",
        ]
    if "eval" in report:
        e = report["eval"]
        lines += [
            "",
            f"Evaluation ({e['preset']} FB-M GRU policy, walker, {e['envs']} episodes = {e['tasks']} tasks x "
            f"{e['rollouts']} rollouts, {e['steps']} steps): "
            + ", ".join(f"{k} {v:.0f} env steps/s" for k, v in e["steps_per_s"].items())
            + f"; task inference (10k windows, all tasks) {e['infer_z_s']:.2f} s.",
        ]
        for mode, share in e.get("share", {}).items():
            lines.append(
                f"Paper cadence ({mode}): one evaluation {share['eval_s']:.0f} s vs {share['train_s']:.0f} s "
                f"of updates between evaluations ({share['s_per_update']:.3f} s/update, {share['update_mode']}) "
                f"-> {100 * share['share']:.1f} % of the run evaluating."
            )
    if "relabel" in report:
        r = report["relabel"]
        lines += ["", f"Relabelling ({r['domain']}, {r['tasks']} tasks): {r['rows_per_s']:.0f} rows/s."]
    if "side" in report:
        lines += [
            "",
            "Side by side, one torch thread, eager, time per update as a ratio to memory-free fb "
            "(alternating rounds, best of each):",
            "",
            SIDE_BY_SIDE_HEADER,
            *(side_by_side_line(r) for r in report["side"]),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    report["matmul"] = {
        "fp32": matmul_gflops(1024, torch.float32, args.device),
        "bf16": matmul_gflops(1024, torch.bfloat16, args.device),
    }
    print(markdown({**report, "updates": []}).split("\n\n")[0] + "\n\n" + UPDATE_HEADER, flush=True)
    report["updates"] = bench_updates(args, report["matmul"])

    if "split" not in args.skip:
        report["split"] = {}
        for preset in args.presets:
            mode = "bf16" if preset == "paper" and "bf16" in args.paper_modes else "eager"
            agent = build("fb_m", "gru", PRESETS[preset], mode, args.device)
            steps = args.steps_paper if preset == "paper" else args.steps_small
            report["split"][f"{preset} fb_m gru {mode}"] = time_split(
                agent, PRESETS[preset], steps, args.device
            )

    if "eval" not in args.skip:
        from benchmarks.eval_speed import eval_share, eval_throughput

        preset = "paper" if "paper" in args.presets else "small"
        e = eval_throughput(PRESETS[preset], 5 if preset == "paper" else 20, 10, args.device)
        e["preset"] = preset
        updates = [
            r
            for r in report["updates"]
            if r["preset"] == preset and r["algo"] == "fb_m" and r["memory"] == "gru"
        ]
        best = min(updates, key=lambda r: r["s_per_update"]) if updates else None
        e["share"] = {}
        if best is not None:
            for mode, rate in e["steps_per_s"].items():
                share = eval_share(rate, e["infer_z_s"], e["tasks"], best["s_per_update"])
                e["share"][mode] = {
                    **share,
                    "s_per_update": best["s_per_update"],
                    "update_mode": best["mode"],
                }
        report["eval"] = e

    if "relabel" not in args.skip:
        from benchmarks.relabel_speed import random_states
        from bfm.envs import DOMAINS, relabel

        states = random_states("walker", 5000)
        t0 = time.perf_counter()
        relabel("walker", states, workers=1, chunk_size=5000)
        report["relabel"] = {
            "domain": "walker",
            "tasks": len(DOMAINS["walker"].tasks),
            "rows_per_s": len(states) / (time.perf_counter() - t0),
        }

    if "side" not in args.skip:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        report["side"] = side_by_side(PRESETS[args.side_preset], args.device, rounds=args.side_rounds)
        torch.set_num_threads(threads)

    report["seconds"] = time.perf_counter() - start
    text = markdown(report)
    rest = any(k in report for k in ("split", "eval", "relabel", "side"))
    print("\n" + text.split("\n\n", 2)[-1] if rest else "", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / f"{stamp}.md").write_text(text + "\n")
    print(f"\n({report['seconds']:.0f} s) wrote {args.out / stamp}.json and .md")
    return report


if __name__ == "__main__":
    main()
