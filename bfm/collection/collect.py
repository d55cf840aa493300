"""Local collection of ExORL-format datasets: uniform random actions or the URLB RND explorer.

Each finished episode is written at once (``episode_<index>_<length>.npz`` in the ``buffer``
folder), together with ``collection.json`` (the settings) and, for RND, the agent's state, so an
interrupted collection resumes from the episodes present.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bfm.collection.rnd import RNDAgent, RNDConfig
from bfm.data.exorl import DatasetError, list_episode_files, parse_episode_name, read_episode, write_episode
from bfm.data.progress import progress
from bfm.data.reformat import COLLECTION_FILE
from bfm.envs import DOMAINS, episode_seed, flat_obs, make_env, make_physics
from bfm.envs.specs import check_domain
from bfm.files import disk_error, replacing, write_text_atomic

logger = logging.getLogger(__name__)

AGENT_STATE_FILE = ".rnd_agent.pt"
COLLECT_ALGOS = ("random", "rnd")
_RESUME_KEYS = ("domain", "algorithm", "seed", "multiplier", "episode_length", "task", "rnd")


def run_episode(env, policy, episode_length: int) -> dict[str, np.ndarray]:
    """Roll out one episode and return it in the ExORL layout (T + 1 rows, row 0 = reset step).

    Args:
        env: a ``envs.make_env`` environment.
        policy: callable obs [obs] -> action [act] float32 in [-1, 1].
        episode_length: transitions T (at most the environment's time limit).

    Returns:
        observation [T+1, obs] float32, action [T+1, act] float32 (row 0 zeros), reward and discount
        [T+1, 1] float32 (collection task; discount 1), physics [T+1, phys] float64 [qpos, qvel, act].
    """

    timestep = env.reset()
    action_dim = env.action_spec().shape[0]
    obs, actions, rewards, physics = [flat_obs(timestep)], [np.zeros(action_dim, np.float32)], [0.0], []
    physics.append(env.physics.get_state().copy())
    for _ in range(episode_length):
        action = np.asarray(policy(obs[-1]), np.float32)
        timestep = env.step(action)
        obs.append(flat_obs(timestep))
        actions.append(action)
        rewards.append(float(timestep.reward or 0.0))
        physics.append(env.physics.get_state().copy())
        if timestep.last():
            break
    if len(obs) != episode_length + 1:
        raise ValueError(
            f"the environment ended after {len(obs) - 1} steps, before episode_length={episode_length}"
        )
    return {
        "observation": np.stack(obs).astype(np.float32),
        "action": np.stack(actions).astype(np.float32),
        "reward": np.asarray(rewards, np.float32)[:, None],
        "discount": np.ones((len(obs), 1), np.float32),
        "physics": np.stack(physics).astype(np.float64),
    }


class _UniformPolicy:
    """Uniform random actions in [-1, 1] from a given generator."""

    def __init__(self, rng: np.random.Generator, action_dim: int) -> None:
        self.rng, self.action_dim = rng, action_dim

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


class _Replay:
    """FIFO of finished episodes sampled as URLB n-step transitions (uniform episode, uniform step)."""

    def __init__(self, capacity_episodes: int, rows: int, obs_dim: int, action_dim: int) -> None:
        self.obs = np.zeros((capacity_episodes, rows, obs_dim), np.float32)
        self.action = np.zeros((capacity_episodes, rows, action_dim), np.float32)
        self.size, self.next = 0, 0

    def add(self, episode: dict[str, np.ndarray]) -> None:
        self.obs[self.next], self.action[self.next] = episode["observation"], episode["action"]
        self.next = (self.next + 1) % len(self.obs)
        self.size = min(self.size + 1, len(self.obs))

    def sample(self, rng: np.random.Generator, batch_size: int, nstep: int) -> tuple[np.ndarray, ...]:
        """(obs [B, obs] = o[i-1], action [B, act] = a[i], next_obs [B, obs] = o[i+n-1]), i in 1..T-n+1."""
        episode = rng.integers(0, self.size, batch_size)
        index = rng.integers(1, self.obs.shape[1] - nstep + 1, batch_size)
        return self.obs[episode, index - 1], self.action[episode, index], self.obs[episode, index + nstep - 1]


def _check_resume(folder: Path, settings: dict, existing: list[Path]) -> None:
    record = folder / COLLECTION_FILE
    if record.is_file():
        previous = json.loads(record.read_text())
        diff = {}
        for key in _RESUME_KEYS:
            before, now = previous.get(key), settings.get(key)
            if isinstance(before, dict) and isinstance(now, dict):  # the explorer: name the changed fields
                diff.update(
                    {
                        f"{key}.{k}": (before.get(k), now.get(k))
                        for k in before | now
                        if before.get(k) != now.get(k)
                    }
                )
            elif before != now:
                diff[key] = (before, now)
        if diff:
            raise DatasetError(
                f"{folder} holds a collection with other settings {diff} (previous, now); "
                "use another --data_dir or --seed, or delete the folder to start over"
            )
    elif existing:
        raise DatasetError(
            f"{folder} already holds {len(existing)} episode files that were not collected here "
            "(no collection.json); collect into another --data_dir"
        )
    indices = [parse_episode_name(p)[0] for p in existing]
    if indices != list(range(len(indices))):
        raise DatasetError(
            f"{folder}: collected episode indices are not 0..{len(indices) - 1}; cannot resume"
        )


def collect(
    folder: str | os.PathLike,
    domain: str,
    algo: str,
    steps: int,
    seed: int = 0,
    multiplier: float = 1.0,
    episode_length: int = 1000,
    rnd_config=None,
    device: str = "cpu",
) -> Path:
    """Collect ``ceil(steps / episode_length)`` episodes into ``folder``.

    Args:
        folder: the ``buffer`` folder, normally ``buffer_dir(data_dir, domain, algo, multiplier)``.
        domain: walker, cheetah or quadruped; the collection task is ``DOMAINS[domain].collection_task``
            (it only fills the raw reward column).
        algo: ``random`` (uniform actions) or ``rnd`` (URLB RND explorer, ``collection.rnd``).
        steps: total environment steps (transitions) wanted; episodes already present count.
        seed: collection seed (environment initial states, actions, agent).
        multiplier: mass and damping multiplier of the environment.
        episode_length: transitions per episode (1000 for ExORL; smaller for tests).
        rnd_config: ``collection.rnd.RNDConfig`` for ``rnd`` (default URLB settings).
        device: torch device of the RND agent.

    Returns:
        The ``buffer`` folder.
    """

    if algo not in COLLECT_ALGOS:
        raise ValueError(f"cannot collect with {algo!r}; collection algorithms: {', '.join(COLLECT_ALGOS)}")
    info, folder = check_domain(domain), Path(folder)
    if not 1 <= episode_length <= info.episode_length:
        raise ValueError(f"episode_length must be in 1..{info.episode_length}, got {episode_length}")
    total = math.ceil(steps / episode_length)
    settings = {
        "domain": domain,
        "algorithm": algo,
        "task": info.collection_task,
        "seed": int(seed),
        "multiplier": float(multiplier),
        "episode_length": int(episode_length),
        "steps": int(total * episode_length),
        "episodes": total,
        "device": str(device),
    }
    if algo == "rnd":
        settings["rnd"] = asdict(rnd_config or RNDConfig())
    existing = list_episode_files(folder)
    _check_resume(folder, settings, existing)
    if len(existing) > total:  # a smaller request than what is there: record what is there
        settings["episodes"], settings["steps"] = len(existing), len(existing) * int(episode_length)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / COLLECTION_FILE, json.dumps(settings, indent=1))
    done = len(existing)
    if done >= total:
        logger.info("%s already holds %d episodes (%d wanted); nothing to collect", folder, done, total)
        return folder
    logger.info("collecting %s %s episodes %d..%d into %s", domain, algo, done, total - 1, folder)
    physics = make_physics(domain, multiplier)
    if algo == "random":
        for index in progress(range(done, total), desc=f"collect {domain} random", unit="ep"):
            env_seed = episode_seed(seed, index)  # seeds the initial state and the actions
            env = make_env(domain, info.collection_task, env_seed, multiplier, physics=physics)
            rng = np.random.default_rng(env_seed)
            episode = run_episode(env, _UniformPolicy(rng, info.action_dim), episode_length)
            write_episode(folder, index, episode)
        return folder
    _collect_rnd(folder, existing, done, total, settings, physics, device)
    return folder


def _collect_rnd(
    folder: Path, existing: list[Path], done: int, total: int, settings: dict, physics, device: str
):

    domain, seed, length = settings["domain"], settings["seed"], settings["episode_length"]
    info, config = DOMAINS[domain], RNDConfig(**settings["rnd"])
    agent = RNDAgent(info.obs_dim, info.action_dim, config, device, seed)
    replay = _Replay(max(1, config.replay_capacity // length), length + 1, info.obs_dim, info.action_dim)
    rng = np.random.default_rng([seed, 1])
    state_path, step = folder / AGENT_STATE_FILE, 0
    if done:
        if not state_path.is_file():
            raise DatasetError(
                f"{folder}: {done} RND episodes but no agent state {AGENT_STATE_FILE}, so the collection cannot "
                "continue; delete the folder to collect again, or reformat the episodes there without --collect"
            )
        state = torch.load(state_path, map_location=device, weights_only=True)
        done = min(done, state["episodes"])  # an episode written after the last agent save is redone
        agent.load_state_dict(state["agent"])
        rng.bit_generator.state, step = state["rng"], state["step"]
        for path in existing[max(0, done - len(replay.obs)) : done]:
            replay.add(read_episode(path))
        logger.info("resumed RND collection at episode %d (step %d)", done, step)
    dev = torch.device(device)
    for index in progress(range(done, total), desc=f"collect {domain} rnd", unit="ep"):
        env = make_env(
            domain, info.collection_task, episode_seed(seed, index), settings["multiplier"], physics=physics
        )

        def policy(obs: np.ndarray) -> np.ndarray:
            nonlocal step
            if step >= config.num_seed_frames and step % config.update_every_steps == 0 and replay.size:
                obs_b, action_b, next_b = (
                    torch.as_tensor(x, device=dev)
                    for x in replay.sample(rng, config.batch_size, config.nstep)
                )
                discount = torch.full((len(obs_b), 1), config.gamma**config.nstep, device=dev)
                agent.update(obs_b, action_b, discount, next_b)
            action = agent.act(obs, step)
            step += 1
            return action

        episode = run_episode(env, policy, length)
        write_episode(folder, index, episode)
        replay.add(episode)
        state = {
            "agent": agent.state_dict(),
            "rng": rng.bit_generator.state,
            "step": step,
            "episodes": index + 1,
        }
        with replacing(
            state_path, state_path.with_suffix(".tmp")
        ) as tmp:  # the previous state stays on failure
            try:
                torch.save(state, tmp)
            except RuntimeError as error:  # torch's writer reports a full disk as "file write failed"
                raise disk_error(error, state_path) from error
