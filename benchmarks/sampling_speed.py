"""Sampling speed of the SequenceBuffer at the paper's sizes, and reformatting throughput.

    .venv/bin/python -m benchmarks.sampling_speed [--episodes 200] [--batch 512] [--device cpu]

Builds an in-memory walker-shaped dataset (random values, ``--episodes`` x 1000 steps), then times
``sample`` (FB batch, and with HILP goals), ``sample_labelled`` (10,000 windows) under the
identity, frozen-noise and per-batch-resampled noise transforms. With ``--reformat`` it also times
the reformatter on ``--reformat_episodes`` random-action walker episodes written to a temp folder.
Prints a markdown table of milliseconds per call (median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import time_calls  # noqa: E402
from bfm.agents import HILPConfig  # noqa: E402
from bfm.data import SequenceBuffer, dataset_path  # noqa: E402
from bfm.data.exorl import reward_key, write_dataset  # noqa: E402
from bfm.envs import DOMAINS, make_transform  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call (device-synchronised)."""
    return 1000 * statistics.median(time_calls(fn, repeats, device))


def random_dataset(folder: Path, episodes: int, length: int = 1000) -> Path:
    info, rng = DOMAINS["walker"], np.random.default_rng(0)
    rows = (episodes, length + 1)
    arrays = {
        "observation": rng.standard_normal((*rows, info.obs_dim), np.float32),
        "action": rng.uniform(-1, 1, (*rows, info.action_dim)).astype(np.float32),
        "physics": np.zeros((*rows, info.physics_dim)),
    }
    arrays.update({reward_key(t): rng.random(rows, np.float32) for t in info.tasks})
    manifest = {"domain": "walker", "algo": "bench", "multiplier": 1.0, "episodes": episodes, "episode_length": length,
                "tasks": list(info.tasks), "source": {"kind": "benchmark"}}  # fmt: skip
    return write_dataset(dataset_path(folder, "walker", "bench"), arrays, manifest)


def bench_sampling(path: Path, args: argparse.Namespace) -> None:
    noise = make_transform("noise", "walker")
    settings = {
        "identity": {},
        "noise (frozen)": {"obs_transform": noise, "goal_transform": noise},
        "noise (resampled per batch)": {
            "obs_transform": noise,
            "goal_transform": noise,
            "resample_per_batch": True,
        },
    }
    print(f"| transform ({args.device}, {torch.get_num_threads()} threads) | FB batch {args.batch} | + HILP goals | "
          f"10k labelled |")  # fmt: skip
    print("|---|---|---|---|")
    for name, kwargs in settings.items():
        buffer = SequenceBuffer(
            path, "walker", None, args.history, args.backward_history, seed=0, device=args.device, **kwargs
        )
        fb = median_ms(lambda b=buffer: b.sample(args.batch), args.repeats, args.device)
        hilp = median_ms(
            lambda b=buffer: b.sample(args.batch, HILPConfig().batch_spec()), args.repeats, args.device
        )
        labelled = median_ms(
            lambda b=buffer: b.sample_labelled(10_000), max(3, args.repeats // 10), args.device
        )
        print(f"| {name} | {fb:.2f} ms | {hilp:.2f} ms | {labelled:.1f} ms |")


def bench_reformat(folder: Path, episodes: int) -> None:
    from bfm.collection.collect import collect
    from bfm.data.reformat import reformat

    raw = folder / "walker" / "rnd" / "buffer"
    start = time.perf_counter()
    collect(raw, "walker", "random", episodes * 1000, seed=0)
    collect_s = time.perf_counter() - start
    start = time.perf_counter()
    reformat(raw, "walker", "rnd", workers=os.cpu_count())
    reformat_s = time.perf_counter() - start
    steps = episodes * 1000
    print(f"\nrandom collection: {steps / collect_s:,.0f} steps/s; reformat (read + relabel 4 tasks + write): "
          f"{steps / reformat_s:,.0f} transitions/s ({reformat_s:.1f} s for {episodes} episodes)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--episodes", type=int, default=200, help="episodes of 1000 steps in the benchmark dataset"
    )
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--history", type=int, default=32, help="L_F")
    parser.add_argument("--backward_history", type=int, default=8, help="L_B")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reformat", action="store_true", help="also time collection and reformatting")
    parser.add_argument("--reformat_episodes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_sampling(random_dataset(Path(tmp), args.episodes), args)
        if args.reformat:
            bench_reformat(Path(tmp) / "reformat", args.reformat_episodes)


if __name__ == "__main__":
    main()
