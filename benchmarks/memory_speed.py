"""Forward+backward time of every memory model at the paper's sizes, as a markdown table.

    .venv/bin/python -m benchmarks.memory_speed [--batch 512] [--length 32] [--repeats 3]

Columns: window forward+backward (training), the same under bf16 autocast, encode of the
L-1 prefix without gradients + step of the last token with gradients (the actor-loss saving),
the forward FLOPs counted by torch's FlopCounterMode (matmuls, the GRU's included; not the
elementwise work), and the fp32 rate they imply if the backward pass costs twice the forward
(the machine's fp32 matmul limit is about 170 GFLOP/s, docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import time_calls  # noqa: E402
from bfm.memory import REGISTRY, make_memory  # noqa: E402


def best_seconds(fn: Callable[[], None], repeats: int) -> float:
    return min(time_calls(fn, repeats))  # the least disturbed run: the machine is shared


def bench(name: str, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    model = make_memory(name, args.input, args.output, history_length=args.length)
    tokens = torch.randn(args.batch, args.length, args.input)

    def window() -> None:
        model(tokens).sum().backward()

    def window_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(tokens)
        out.float().sum().backward()

    def prefix_step() -> None:
        with torch.no_grad():
            state = model.encode(tokens[:, :-1])
        model.step(tokens[:, -1], state)[0].sum().backward()

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens)
    return {
        "window": best_seconds(window, args.repeats),
        "bf16": best_seconds(window_bf16, args.repeats),
        "prefix_step": best_seconds(prefix_step, args.repeats),
        "gflop": counter.get_total_flops() / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--input", type=int, default=30, help="token width (walker obs 24 + action 6)")
    parser.add_argument("--output", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=sorted(REGISTRY))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"batch {args.batch}, L {args.length}, input {args.input}, output {args.output}, "
        f"{args.threads} threads, torch {torch.__version__}, best of {args.repeats}\n"
    )
    print(
        "| model | fwd+bwd fp32 (ms) | fwd+bwd bf16 autocast (ms) | encode prefix + step last (ms) | fwd GFLOP | fp32 GFLOP/s (3 x fwd / time) |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models:
        r = bench(name, args)
        print(
            f"| {name} | {1e3 * r['window']:.0f} | {1e3 * r['bf16']:.0f} | "
            f"{1e3 * r['prefix_step']:.0f} | {r['gflop']:.2f} | {3 * r['gflop'] / r['window']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
