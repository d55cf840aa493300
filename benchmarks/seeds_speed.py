"""Multi-seed throughput: updates/s per seed with K seeds in one batched update (``agents.seeds``)
against K separate agents updated one after the other.

    .venv/bin/python -m benchmarks.seeds_speed [--preset small|paper] [--algos fb_m] [--memories gru]
        [--seeds 1 2 4 8] [--modes eager bf16] [--steps 10] [--threads 2] [--device cpu|cuda]

For each K: ``batched`` is one ``SeedBatch.update`` of K seeds (seconds per call / K = seconds
per seed-update); ``sequential`` is K single-seed ``agent.update`` calls, what K runs one after
another cost. "gain over K = 1" is the per-seed updates/s of the batched K over that of one
single-seed agent (the best sequential figure of all K: the least disturbed), "gain over K
sequential" over the sequential figure of the same rounds. Targets (issue 12; benchmarks, not
tests): small preset on 2 CPU cores, K = 4 at least 2.5x; paper config on a GPU, K = 5 at least 3x.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import PRESETS, machine_info, summarise, sync, time_calls
from benchmarks.update_speed import ACT, GOAL, MODES, OBS, synthetic_batch
from bfm.agents import AGENTS, make_agent
from bfm.agents.seeds import SeedBatch, unbatchable_reason
from bfm.memory import REGISTRY

RESULTS = Path(__file__).resolve().parent / "results"


def build_agents(algo: str, memory: str, preset_name: str, mode: str, k: int, device: str) -> list[Any]:
    """K agents of one configuration, seeds 0..K-1, each seeded before its construction."""
    compile_, bf16 = MODES[mode]
    preset = PRESETS[preset_name]
    cfg = preset.agent_config(memory if algo.endswith("_m") else "gru", compile=compile_, bf16=bf16)
    agents = []
    for seed in range(k):
        torch.manual_seed(seed)
        agents.append(make_agent(algo, OBS, GOAL, ACT, cfg, device=device, seed=seed))
    return agents


def measure(
    algo: str, memory: str, preset_name: str, mode: str, k: int, steps: int, device: str, rounds: int = 3
) -> dict[str, Any]:
    """Seconds per seed-update, batched and sequential, for K seeds: best of ``rounds`` x ``steps``
    timed calls each, the rounds alternating between the two."""
    preset = PRESETS[preset_name]
    batches = [synthetic_batch(preset, device, seed=s) for s in range(k)]
    agents = build_agents(algo, memory, preset_name, mode, k, device)
    row: dict[str, Any] = {"algo": algo, "memory": memory, "preset": preset_name, "mode": mode, "seeds": k}
    reason = unbatchable_reason(agents[0])
    group = None
    if reason is None:
        group = SeedBatch(build_agents(algo, memory, preset_name, mode, k, device))
        start = time.perf_counter()
        group.update(batches)
        sync(device)
        row["batched_first_call_s"] = time.perf_counter() - start
    else:
        row["note"] = reason
    # Rounds alternate the two ways, so that a shared machine's slow spells hit both alike.
    sequential, batched = [], []
    for _ in range(rounds):
        sequential += time_calls(
            lambda: [a.update(b) for a, b in zip(agents, batches, strict=True)], steps, device
        )
        if group is not None:
            batched += time_calls(lambda: group.update(batches), steps, device)
    row["sequential_s_per_seed"] = summarise(sequential)["best_s"] / k
    row["sequential_median_s_per_seed"] = summarise(sequential)["median_s"] / k
    row["batched_s_per_seed"] = None if group is None else summarise(batched)["best_s"] / k
    row["batched_median_s_per_seed"] = None if group is None else summarise(batched)["median_s"] / k
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    # One seed's update on its own: the best sequential figure of every K (each is K single-seed
    # updates; on a shared machine the best is the least disturbed).
    base: dict[tuple[str, str, str, str], float] = {}
    for r in rows:
        key = (r["algo"], r["memory"], r["preset"], r["mode"])
        base[key] = min(base.get(key, float("inf")), r["sequential_s_per_seed"])
    lines = [
        "| preset | algo | memory | mode | K | sequential s / seed-update | batched s / seed-update | "
        "batched updates/s per seed | gain over K = 1 | gain over K sequential |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one = base.get((r["algo"], r["memory"], r["preset"], r["mode"]))
        b = r["batched_s_per_seed"]
        cells = [
            r["preset"], r["algo"], r["memory"], r["mode"], str(r["seeds"]),
            f"{r['sequential_s_per_seed']:.4f}",
            "n/a" if b is None else f"{b:.4f}",
            "n/a" if b is None else f"{1 / b:.1f}",
            "n/a" if b is None or one is None else f"{one / b:.2f}x",
            "n/a" if b is None else f"{r['sequential_s_per_seed'] / b:.2f}x",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="small")
    parser.add_argument("--algos", nargs="+", choices=list(AGENTS), default=["fb_m"])
    parser.add_argument("--memories", nargs="+", choices=list(REGISTRY), default=["gru"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["eager"])
    parser.add_argument("--steps", type=int, default=5, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (sequential, batched)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only print the table of an earlier --out file"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default benchmarks/results/seeds_<time>.json)"
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        print(markdown(json.loads(args.from_json.read_text())["rows"]))
        return
    torch.set_num_threads(args.threads)
    rows = []
    for algo in args.algos:
        for memory in args.memories if algo.endswith("_m") else ["gru"]:
            for mode in args.modes:
                for k in sorted(set(args.seeds) | {1}):
                    rows.append(
                        measure(algo, memory, args.preset, mode, k, args.steps, args.device, args.rounds)
                    )
                    print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    print(table)
    out = args.out or RESULTS / f"seeds_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "rows": rows, "markdown": table}, indent=2))


if __name__ == "__main__":
    main()
