"""Training-update speed: updates/s, FLOPs per update, fraction of the matmul limit, step time split.

    .venv/bin/python -m benchmarks.update_speed [--preset small|paper|cpu|tiny] [--algos fb fb_m hilp_m]
        [--memories gru transformer s4d mlp] [--modes eager compiled bf16 bf16+compiled] [--steps 5]
    .venv/bin/python -m benchmarks.update_speed --side_by_side --preset cpu --threads 1

``--side_by_side`` times every (algorithm, memory) pairing in one process, alternating between
them round by round (each pairing's best round), and prints each one's time per update as a
ratio to memory-free ``fb``, its GFLOP and its profiler event count per update (operator calls:
on a GPU each is a kernel launch, on a CPU each costs dispatch overhead).

Walker dimensions (obs 24, goal 24, action 6), synthetic batches on the training device. An
"update" is one ``agent.update(batch)`` call (z sampling, representation step(s), actor step,
Polyak), exactly what the trainer calls per step. FLOPs are counted with torch's
``FlopCounterMode`` around one update (matmuls, the memory models' included; elementwise work is
not counted, as for the official code's numbers in ``benchmarks.common.OFFICIAL_GFLOP``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import PRESETS, Preset, summarise, sync, time_calls
from bfm.agents import AGENTS, make_agent
from bfm.data.batch import Batch
from bfm.memory import REGISTRY

OBS, GOAL, ACT = 24, 24, 6  # walker
MODES = {
    # mode -> (compile, bf16)
    "eager": (False, False),
    "compiled": (True, False),
    "bf16": (False, True),
    "bf16+compiled": (True, True),
}


def synthetic_batch(preset: Preset, device: torch.device | str, seed: int = 0) -> Batch:
    """A random walker-shaped training batch (with HILP goal fields) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    n, lf, lb = preset.batch, preset.history, preset.backward_history
    batch = Batch(
        obs_window=torch.randn(n, lf + 1, OBS, generator=g),
        prev_action_window=torch.rand(n, lf + 1, ACT, generator=g) * 2 - 1,
        goal_window=torch.randn(n, lb + 1, GOAL, generator=g),
        goal_action_window=torch.rand(n, lb + 1, ACT, generator=g) * 2 - 1,
        sampled_goal_window=torch.randn(n, lb, GOAL, generator=g),
        sampled_goal_action_window=torch.rand(n, lb, ACT, generator=g) * 2 - 1,
        sampled_goal_is_current=(torch.rand(n, generator=g) < 0.2).float(),
    )
    return batch.to(device)


def build(algo: str, memory: str, preset: Preset, mode: str, device: torch.device | str, **overrides: Any):
    """The agent of ``algo`` with ``memory`` at ``preset`` in ``mode`` (eager / compiled / bf16...)."""
    compile_, bf16 = MODES[mode]
    cfg = preset.agent_config(memory if algo.endswith("_m") else "gru", compile=compile_, bf16=bf16)
    cfg.update(overrides)
    return make_agent(algo, OBS, GOAL, ACT, cfg, device=device)


def count_gflop(agent: Any, batch: Batch) -> float:
    """GFLOP of one update (FlopCounterMode; forward, backward and optimizer matmuls)."""
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return counter.get_total_flops() / 1e9


def time_updates(
    agent: Any, batch: Batch, steps: int, device: torch.device | str, warmup: int = 2
) -> dict[str, float]:
    """Seconds per update over ``steps`` timed calls after ``warmup`` (compilation happens there).

    Returns best / median seconds per update and ``warmup_s`` (first call: compile time).
    """
    start = time.perf_counter()
    agent.update(batch)
    sync(device)
    first = time.perf_counter() - start
    out = summarise(time_calls(lambda: agent.update(batch), steps, device, warmup=max(0, warmup - 1)))
    out["warmup_s"] = first
    return out


def count_events(agent: Any, batch: Batch) -> int:
    """Operator calls of one update: the events torch's profiler records on the CPU side."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        agent.update(batch)
    return len(prof.events())


SIDE_BY_SIDE_PAIRS = [
    ("fb", "none"),
    ("fb_m", "mlp"),
    ("fb_m", "gru"),
    ("fb_m", "s4d"),
    ("fb_m", "transformer"),
    ("hilp", "none"),
    ("hilp_m", "gru"),
]


def side_by_side(
    preset: Preset,
    device: torch.device | str,
    pairs: list[tuple[str, str]] | None = None,
    rounds: int = 8,
    calls: int = 4,
) -> list[dict[str, Any]]:
    """Seconds per update of each (algo, memory) pairing, eager, measured in alternating rounds of
    ``calls`` updates (each pairing's best round: the least disturbed), with the ratio to the
    first pairing (memory-free fb), GFLOP and profiler events per update."""
    pairs = pairs or SIDE_BY_SIDE_PAIRS
    batch = synthetic_batch(preset, device)
    agents = {p: build(p[0], p[1] if p[1] != "none" else "gru", preset, "eager", device) for p in pairs}
    for agent in agents.values():  # warm-up: allocator, first-call dispatch
        for _ in range(2):
            agent.update(batch)
    best = dict.fromkeys(pairs, math.inf)
    for _ in range(rounds):
        for pair, agent in agents.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                agent.update(batch)
            sync(device)
            best[pair] = min(best[pair], (time.perf_counter() - start) / calls)
    base = best[pairs[0]]
    return [
        {
            "preset": preset.name,
            "algo": algo,
            "memory": memory,
            "s_per_update": best[(algo, memory)],
            "ratio": best[(algo, memory)] / base,
            "gflop": count_gflop(agents[(algo, memory)], batch),
            "events": count_events(agents[(algo, memory)], batch),
        }
        for algo, memory in pairs
    ]


SIDE_BY_SIDE_HEADER = (
    "| preset | algo | memory | ms/update (best) | vs fb | GFLOP/update | events/update |\n"
    "|---|---|---|---|---|---|---|"
)


def side_by_side_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['preset']} | {r['algo']} | {r['memory']} | {1e3 * r['s_per_update']:.1f} | "
        f"{r['ratio']:.2f}x | {r['gflop']:.2f} | {r['events']} |"
    )


class _PhaseClock:
    """Timestamps at the end of every optimizer step and Polyak update inside one ``update``."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.opt: list[float] = []
        self.polyak: list[float] = []

    def wrap(self, fn, marks: list[float]):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            sync(self.device)
            marks.append(time.perf_counter())
            return out

        return wrapped


def time_split(
    agent: Any, preset: Preset, steps: int, device: torch.device | str, log_interval: int = 1000
) -> dict[str, float]:
    """Median seconds of each part of one training step, as the trainer runs it.

    Parts: ``sampling`` (``SequenceBuffer.sample`` from a random walker dataset on the device),
    ``representation`` (z sampling, pi(h_{t+1}) and the F/B, or psi + phi, steps), ``actor``
    (actor loss and step), ``target`` (Polyak updates), ``logging`` (metric dict, accumulation
    in ``MetricLogger`` and the flush every ``log_interval`` steps, amortised per step).
    """
    from benchmarks.sampling_speed import random_dataset
    from bfm.agents import base
    from bfm.data import SequenceBuffer
    from bfm.training.config import LoggerSettings
    from bfm.training.logger import MetricLogger

    module = base  # AgentBase.update calls base.optimizer_step and base.polyak_update
    parts: dict[str, list[float]] = {
        k: [] for k in ("sampling", "representation", "actor", "target", "logging")
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = random_dataset(Path(tmp), episodes=10)
        buffer = SequenceBuffer(
            path, "walker", None, preset.history, preset.backward_history, seed=0, device=device
        )
        (Path(tmp) / "run").mkdir()
        logger = MetricLogger(Path(tmp) / "run", LoggerSettings(wandb=False), {}, "bench")
        clock = _PhaseClock(device)
        originals = module.optimizer_step, module.polyak_update
        module.optimizer_step = clock.wrap(originals[0], clock.opt)
        module.polyak_update = clock.wrap(originals[1], clock.polyak)
        try:
            for i in range(steps + 1):
                clock.opt.clear()
                clock.polyak.clear()
                sync(device)
                t0 = time.perf_counter()
                batch = buffer.sample(preset.batch, agent.batch_spec)
                sync(device)
                t1 = time.perf_counter()
                metrics = agent.update(batch)
                sync(device)
                t2 = time.perf_counter()
                logger.accumulate(metrics)
                t3 = time.perf_counter()
                if i == 0:  # warm-up (and compilation)
                    continue
                parts["sampling"].append(t1 - t0)
                parts["representation"].append(clock.opt[-2] - t1)
                parts["actor"].append(clock.opt[-1] - clock.opt[-2])
                parts["target"].append(clock.polyak[-1] - clock.opt[-1])
                parts["logging"].append((t2 - clock.polyak[-1]) + (t3 - t2))
            start = time.perf_counter()
            logger.flush_train(steps, {})
            flush = time.perf_counter() - start
        finally:
            module.optimizer_step, module.polyak_update = originals
            logger.close()
    out = {k: statistics.median(v) for k, v in parts.items()}
    # The flush stacks log_interval steps of metrics; its cost scales with the number stacked.
    out["logging"] += flush / steps * (steps / log_interval) if log_interval else 0.0
    out["total"] = sum(out[k] for k in parts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="small")
    parser.add_argument("--algos", nargs="+", choices=list(AGENTS), default=["fb", "fb_m", "hilp_m"])
    parser.add_argument("--memories", nargs="+", choices=list(REGISTRY), default=list(REGISTRY))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["eager"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--flops", action="store_true", help="also count GFLOP per update")
    parser.add_argument(
        "--side_by_side", action="store_true", help="ratios to fb of every pairing, alternating (eager)"
    )
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds of --side_by_side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.side_by_side:
        print(SIDE_BY_SIDE_HEADER)
        for row in side_by_side(preset, args.device, rounds=args.rounds, calls=args.steps):
            print(side_by_side_line(row), flush=True)
        return
    batch = synthetic_batch(preset, args.device)
    print("| algo | memory | mode | s/update (best) | median | updates/s | first call (s) | GFLOP |")
    print("|---|---|---|---|---|---|---|---|")
    for algo in args.algos:
        for memory in args.memories if algo.endswith("_m") else ["none"]:
            for mode in args.modes:
                agent = build(algo, memory, preset, mode, args.device)
                r = time_updates(agent, batch, args.steps, args.device)
                gflop = (
                    count_gflop(build(algo, memory, preset, "eager", args.device), batch)
                    if args.flops
                    else float("nan")
                )
                print(
                    f"| {algo} | {memory} | {mode} | {r['best_s']:.4f} | {r['median_s']:.4f} | "
                    f"{1 / r['best_s']:.2f} | {r['warmup_s']:.1f} | {gflop:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
