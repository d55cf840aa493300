"""How much of each task a dataset covers: the share of states with a high relabelled reward.

A zero-shot agent can only reach what the data shows: FB and HILP fit the successor measure of the
states in the dataset, so a dataset where no state scores well on a task cannot yield a policy that
scores well on it. These statistics let a user see that before training (they are printed by
``exorl_reformatter.py`` and stored in the manifest under ``coverage``).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

REWARD_THRESHOLDS: tuple[float, ...] = (0.5, 0.8)
HEIGHT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99)
# Observation column of the walker's torso height (dm_control walker: 14 orientations, then height).
WALKER_HEIGHT_COLUMN = 14


def coverage(domain: str, rewards: dict[str, np.ndarray], observation: np.ndarray) -> dict:
    """Coverage statistics of one dataset.

    Row 0 of every episode (the reset state, before any action) is left out.

    Args:
        domain: walker, cheetah or quadruped.
        rewards: task -> relabelled reward [E, T+1].
        observation: [E, T+1, obs] float32.

    Returns:
        ``{"states": N, "reward_above": {task: {"0.5": share, "0.8": share}}, "mean_reward": {task: r}}``
        and, for walker, ``"torso_height_quantiles": {"0.1": h, ...}`` (metres; standing is >= 1.2).
    """
    stats: dict = {"states": int(observation.shape[0] * (observation.shape[1] - 1))}
    stats["reward_above"] = {
        task: {f"{t:g}": float(np.mean(r[:, 1:] > t)) for t in REWARD_THRESHOLDS}
        for task, r in rewards.items()
    }
    stats["mean_reward"] = {task: float(np.mean(r[:, 1:])) for task, r in rewards.items()}
    if domain == "walker":
        height = observation[:, 1:, WALKER_HEIGHT_COLUMN]  # [E, T]
        values = np.quantile(height, HEIGHT_QUANTILES)
        stats["torso_height_quantiles"] = {
            f"{q:g}": float(v) for q, v in zip(HEIGHT_QUANTILES, values, strict=True)
        }
    return stats


def format_coverage(stats: dict) -> str:
    """A small text table of ``coverage`` output, one row per task."""
    heads = [f"r > {t:g}" for t in REWARD_THRESHOLDS]
    lines = [f"{'task':<14}" + "".join(f"{h:>10}" for h in heads) + f"{'mean r':>10}"]
    for task, shares in stats["reward_above"].items():
        cells = "".join(f"{100 * shares[f'{t:g}']:>9.2f}%" for t in REWARD_THRESHOLDS)
        lines.append(f"{task:<14}{cells}{stats['mean_reward'][task]:>10.3f}")
    if "torso_height_quantiles" in stats:
        quantiles = ", ".join(
            f"q{float(q) * 100:g} {h:.2f}" for q, h in stats["torso_height_quantiles"].items()
        )
        lines.append(f"torso height (m): {quantiles}")
    lines.append(f"({stats['states']} states, reset rows left out)")
    return "\n".join(lines)
