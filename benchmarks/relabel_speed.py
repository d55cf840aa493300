"""Relabelling throughput: rows/s of ``envs.relabel`` per domain (all evaluation tasks at once).

With ``--batched`` it also measures ``envs.BatchedEvalEnv`` environment steps/s (every
evaluation task x ``--rollouts`` episodes in one batch) against a loop of plain dm_control
``env.step`` calls on the same episodes.

Usage: python -m benchmarks.relabel_speed [--rows 20000] [--workers 1] [--domains walker cheetah quadruped]
       [--batched --rollouts 10 --steps 100]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from bfm.envs import DOMAINS, BatchedEvalEnv, make_env, relabel

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


def batched_speed(domain: str, rollouts: int, steps: int) -> tuple[float, float]:
    """(BatchedEvalEnv env-steps/s, plain dm_control env-steps/s) over the same episodes."""
    env = BatchedEvalEnv(domain, DOMAINS[domain].tasks, [1.0], rollouts, None, seed=0)
    actions = (
        np.random.default_rng(0).uniform(-1, 1, (steps, env.num_envs, env.action_dim)).astype(np.float32)
    )
    env.reset()
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    batched = steps * env.num_envs / (time.perf_counter() - start)
    singles = [
        make_env(domain, task, s, m)
        for (task, m, _), s in zip(env.episode_keys, env.episode_seeds, strict=True)
    ]
    for single in singles:
        single.reset()
    start = time.perf_counter()
    for action in actions:
        for i, single in enumerate(singles):
            single.step(action[i])
    plain = steps * len(singles) / (time.perf_counter() - start)
    return batched, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--batched", action="store_true", help="also time BatchedEvalEnv")
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True, stream=sys.stdout)
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
        if args.batched:
            batched, plain = batched_speed(domain, args.rollouts, args.steps)
            logger.info(
                "%-9s BatchedEvalEnv: %.0f env-steps/s (plain dm_control loop: %.0f)", domain, batched, plain
            )


if __name__ == "__main__":
    main()
