"""Relabelling throughput: rows/s of ``envs.relabel`` per domain (all evaluation tasks at once).

Usage: python -m benchmarks.relabel_speed [--rows 20000] [--workers 1] [--domains walker cheetah quadruped]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from envs import DOMAINS, make_env, relabel

logger = logging.getLogger("relabel_speed")


def random_states(domain: str, rows: int, seed: int = 0) -> np.ndarray:
    """Physics states [rows, P] from a random-action rollout, tiled to ``rows``."""
    env = make_env(domain, DOMAINS[domain].tasks[0], seed=seed)
    env.reset()
    rng = np.random.default_rng(seed)
    states = []
    for _ in range(min(rows, 1000)):
        env.step(rng.uniform(-1, 1, DOMAINS[domain].action_dim))
        states.append(env.physics.get_state())
    return np.resize(np.asarray(states), (rows, DOMAINS[domain].physics_dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    for domain in args.domains:
        states = random_states(domain, args.rows)
        start = time.perf_counter()
        rewards = relabel(domain, states, workers=args.workers, chunk_size=max(1, args.rows // args.workers))
        elapsed = time.perf_counter() - start
        logger.info(
            "%-9s %d rows x %d tasks, %d worker(s): %.0f rows/s",
            domain,
            args.rows,
            len(rewards),
            args.workers,
            args.rows / elapsed,
        )


if __name__ == "__main__":
    main()
