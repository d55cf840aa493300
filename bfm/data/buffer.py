"""The sequence buffer: reformatted ExORL episodes on the training device, sampled as history windows.

Every window is built with one ``index_select`` per output tensor from a flat [E * (T+1) + 1, D]
array whose last row is zeros: an index tensor [B, L] maps each slot either to its storage row,
to the episode's row 0 (padding by repetition of the first observation) or to the zero row (padding
with zeros, and the zero action of padded slots). No window crosses an episode boundary because
every row index is ``episode * (T+1) + row`` with ``row`` clamped into the episode. The pairings are
the ones documented in ``data/batch.py``.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm.data.batch import Batch, BatchSpec, GoalSampling, LabelledWindows
from bfm.data.exorl import (
    DatasetError,
    read_array_rows,
    read_manifest,
    remake_advice,
    reward_key,
    select_episodes,
)
from bfm.envs.specs import check_domain

logger = logging.getLogger(__name__)


def _is_identity(transform: Any) -> bool:
    return (
        transform is None
        or getattr(transform, "variant", "?") is None
        or getattr(transform, "is_identity", False)
    )


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> 1)


class SequenceBuffer:
    """Offline ExORL episodes sampled as obs-stream, goal-stream and HILP-goal history windows.

    Args:
        paths: one ``dataset.npz`` or several (several train multipliers, concatenated; the
            ``episodes`` are split evenly between them).
        domain: domain the data must belong to (shapes and tasks are checked against it).
        episodes: number of episodes to load; None loads all.
        history_length: L_F, context length of F and pi.
        backward_history_length: L_B, context length of B (and HILP's phi).
        obs_transform: POMDP transform of the obs stream (``envs.make_transform``); None = identity.
        goal_transform: POMDP transform of the goal stream; None = identity.
        seed: run seed; every random draw comes from generators derived from it.
        device: training device; the arrays live there.
        resample_per_batch: re-draw the POMDP corruption for every batch instead of freezing one draw
            at load (the paper's behaviour, default).
        pad_with_zeros: pad slots before the episode start with zero observations instead of
            repeating the first observation (actions of padded slots are zero either way).
        tasks: tasks whose relabelled rewards are loaded; default every eval task of the domain.
        episode_selection: which ``episodes`` of each dataset are loaded (``data.exorl.select_episodes``):
            ``spread`` evenly over the whole collection (default) or the ``first`` N by index.
        keep_states: also keep the stored physics states and the uncorrupted observations in host
            memory (``physics_rows``, ``raw_observation``), for rewards and goals that the dataset
            was not labelled with (prompting a trained model, ``training.prompting``).
        verify_checksums: hash every array read while it streams in and compare it with the
            manifest's sha256 (a DatasetError naming the array on a mismatch).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        domain: str,
        episodes: int | None,
        history_length: int,
        backward_history_length: int,
        obs_transform: Any = None,
        goal_transform: Any = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        resample_per_batch: bool = False,
        pad_with_zeros: bool = False,
        tasks: Sequence[str] | None = None,
        episode_selection: str = "spread",
        keep_states: bool = False,
        verify_checksums: bool = True,
    ) -> None:

        self.domain, self.info = domain, check_domain(domain)
        if history_length < 1 or backward_history_length < 1:
            raise ValueError(f"history lengths must be >= 1, got {history_length}, {backward_history_length}")
        self.paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("SequenceBuffer needs at least one dataset path")
        self.tasks = tuple(tasks) if tasks is not None else self.info.tasks
        self.history_length, self.backward_history_length = history_length, backward_history_length
        self.device = torch.device(device)
        self.resample_per_batch, self.pad_with_zeros = resample_per_batch, pad_with_zeros
        self._transforms = (obs_transform, goal_transform)
        self._seed_generators(seed)
        self.verify_checksums = verify_checksums

        obs, action, rewards, physics = self._load(episodes, episode_selection, keep_states)
        self.num_episodes, self.rows = obs.shape[0], obs.shape[1]
        self.episode_length = self.rows - 1
        if self.episode_length < 2:
            raise DatasetError(
                f"episodes need at least 2 transitions, got {self.episode_length}; collect longer ones "
                "(exorl_reformatter.py --collect --episode_length N)"
            )
        self.action_dim = action.shape[-1]
        self.physics = None if physics is None else physics.reshape(-1, physics.shape[-1])  # [E * (T+1), P]
        self.raw_observation = obs.reshape(-1, obs.shape[-1]) if keep_states else None  # [E * (T+1), obs]
        self._action = self._flat(action)
        self._rewards = {t: torch.from_numpy(r.reshape(-1)).to(self.device) for t, r in rewards.items()}
        if resample_per_batch:
            self._obs_f = self._obs_b = self._flat(obs)
            self.obs_dim = self._out_dim(obs_transform)
            self.goal_dim = self._out_dim(goal_transform)
        else:
            obs_f = obs if _is_identity(obs_transform) else obs_transform(obs, self._np_rngs[0])
            obs_b = obs if _is_identity(goal_transform) else goal_transform(obs, self._np_rngs[1])
            self.obs_dim, self.goal_dim = obs_f.shape[-1], obs_b.shape[-1]
            self._obs_f = self._flat(obs_f)
            self._obs_b = self._obs_f if obs_b is obs_f else self._flat(obs_b)
        self._zero_row = self.num_episodes * self.rows
        self._offsets_f = torch.arange(-history_length, 1, device=self.device)  # [L_F + 1]
        self._offsets_b = torch.arange(-backward_history_length, 1, device=self.device)  # [L_B + 1]
        logger.info(
            "buffer: %d episodes x %d steps from %s, obs %d, goal %d, action %d on %s",
            self.num_episodes, self.episode_length, ", ".join(map(str, self.paths)),
            self.obs_dim, self.goal_dim, self.action_dim, self.device,
        )  # fmt: skip

    def _seed_generators(self, seed: int) -> None:
        """Every random stream of the buffer, derived from the run seed."""
        self._np_rngs = [np.random.default_rng([seed, stream]) for stream in (0, 1)]
        self.generator = torch.Generator(self.device).manual_seed(_stream_seed(seed, 2))
        self.labelled_generator = torch.Generator(self.device).manual_seed(_stream_seed(seed, 3))

    def with_seed(self, seed: int) -> SequenceBuffer | None:
        """The same data with the random streams of another seed (sharing the arrays), as a buffer
        built with that seed would sample it; None when the data themselves depend on the seed
        (a POMDP corruption drawn once at load, ``resample_per_batch=False``)."""
        if not self.resample_per_batch and not all(_is_identity(t) for t in self._transforms):
            return None
        other = copy.copy(self)
        other._seed_generators(seed)
        return other

    # ------------------------------------------------------------------------------------------
    # loading

    def _load(
        self, episodes: int | None, selection: str, keep_states: bool = False
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        n = len(self.paths)
        wanted = [None] * n if episodes is None else [episodes // n + (i < episodes % n) for i in range(n)]
        parts, manifests, selected = [], [], []
        for path, want in zip(self.paths, wanted, strict=True):
            manifest = read_manifest(path)
            self._check_manifest(path, manifest)
            positions = select_episodes(manifest["episodes"], want, selection)
            if want is not None and want > manifest["episodes"]:
                logger.warning(
                    "%s holds %d episodes, fewer than the %d requested", path, manifest["episodes"], want
                )
            keys = ("observation", "action", *(reward_key(task) for task in self.tasks))
            keys += ("physics",) if keep_states else ()
            sums = (
                {k: v.get("sha256") for k, v in manifest.get("arrays", {}).items()}
                if self.verify_checksums
                else {}
            )
            part = {key: read_array_rows(path, key, positions, sums.get(key)) for key in keys}
            self._check_shapes(path, part, len(positions))
            parts.append(part)
            manifests.append(manifest)
            indices = manifest.get("episode_indices") or list(range(manifest["episodes"]))
            selected.append([indices[p] for p in positions])
        rows = {p["observation"].shape[1] for p in parts}
        if len(rows) > 1:
            raise DatasetError(
                f"datasets {self.paths} have different episode lengths {sorted(r - 1 for r in rows)}; train on "
                "datasets of one length (collect the other again with --episode_length)"
            )
        self.manifest = {
            "paths": [str(p) for p in self.paths],
            "episodes": [len(p["observation"]) for p in parts],
            "episode_selection": selection,
            "episode_indices": selected,
            "datasets": manifests,
        }

        def cat(key: str) -> np.ndarray:
            return parts[0][key] if n == 1 else np.concatenate([p[key] for p in parts])

        rewards = {t: cat(reward_key(t)) for t in self.tasks}
        if keep_states:  # [E]: the dynamics multiplier each episode was collected at
            self.row_multipliers = np.concatenate(
                [
                    np.full(len(p["observation"]), float(m.get("multiplier", 1.0)))
                    for p, m in zip(parts, manifests, strict=True)
                ]
            )
        return cat("observation"), cat("action"), rewards, cat("physics") if keep_states else None

    def _check_manifest(self, path: Path, manifest: dict) -> None:
        if manifest.get("domain") != self.domain:
            raise DatasetError(
                f"{path} holds {manifest.get('domain')!r} data, but the run's domain is {self.domain!r}; "
                f"{remake_advice(path)}"
            )
        missing = set(self.tasks) - set(manifest.get("tasks", []))
        if missing:
            raise DatasetError(
                f"{path} has no relabelled rewards for {sorted(missing)}; it has {manifest.get('tasks')}: "
                f"evaluate only those (--eval_tasks), or {remake_advice(path)}"
            )

    def _check_shapes(self, path: Path, part: dict[str, np.ndarray], take: int) -> None:
        obs, action = part["observation"], part["action"]
        expected = {"observation": self.info.obs_dim, "action": self.info.action_dim}
        if "physics" in part:
            expected["physics"] = self.info.physics_dim
        for key, dim in expected.items():
            if part[key].ndim != 3 or part[key].shape[0] != take or part[key].shape[2] != dim:
                raise DatasetError(
                    f"{path}: {key} has shape {part[key].shape}, expected [{take}, T+1, {dim}]"
                )
        if action.shape[1] != obs.shape[1]:
            raise DatasetError(
                f"{path}: action has {action.shape[1]} rows per episode, observation {obs.shape[1]}; "
                f"{remake_advice(path)}"
            )
        for task in self.tasks:
            if part[reward_key(task)].shape != obs.shape[:2]:
                raise DatasetError(
                    f"{path}: reward of {task!r} has shape {part[reward_key(task)].shape}, expected "
                    f"{obs.shape[:2]}; {remake_advice(path)}"
                )
        for key, array in part.items():  # the arrays actually read: numbers, all finite
            if not np.issubdtype(array.dtype, np.floating):
                raise DatasetError(f"{path}: {key} has dtype {array.dtype}, expected floating point")
            if not np.isfinite(array).all():
                bad = np.argwhere(~np.isfinite(array))[0]
                raise DatasetError(
                    f"{path}: {key} holds a non-finite value (first at episode position {bad[0]}, row {bad[1]}); "
                    "rebuild the dataset (python exorl_reformatter.py ...) or delete it"
                )

    def _flat(self, array: np.ndarray) -> torch.Tensor:
        """[E, T+1, D] -> [E * (T+1) + 1, D] float32 tensor on the device, last row zeros."""
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, array.shape[-1])
        out = torch.empty((flat.shape[0] + 1, flat.shape[1]), dtype=torch.float32, device=self.device)
        out[:-1].copy_(torch.from_numpy(flat))
        out[-1].zero_()
        return out

    def _out_dim(self, transform: Any) -> int:
        return self.info.obs_dim if _is_identity(transform) else int(transform.out_dim)

    # ------------------------------------------------------------------------------------------
    # index arithmetic

    def _obs_index(self, episode: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Flat indices [B, L] of observation rows; rows < 0 repeat row 0 or hit the zero row."""
        base = episode[:, None] * self.rows  # [B, 1]
        if self.pad_with_zeros and not self.resample_per_batch:
            return torch.where(rows >= 0, base + rows, self._zero_row)
        return base + rows.clamp(min=0)

    def _action_index(self, episode: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Flat indices [B, L] of action rows; invalid slots hit the zero row."""
        return torch.where(valid, episode[:, None] * self.rows + rows, self._zero_row)

    def _gather(self, array: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """array [N, D], index [B, L] -> [B, L, D] (one index_select)."""
        return array.index_select(0, index.reshape(-1)).view(*index.shape, array.shape[-1])

    def _obs_windows(
        self, stream: int, episode: torch.Tensor, rows: torch.Tensor, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        """Observation windows [B, L, D] of one stream (0: obs, 1: goal), corruption re-drawn if asked
        (from ``rng``, default the stream's own generator)."""
        array = self._obs_f if stream == 0 else self._obs_b
        out = self._gather(array, self._obs_index(episode, rows))  # [B, L, D]
        if not self.resample_per_batch:
            return out  # corruption frozen at load; zero padding done by the index
        transform = self._transforms[stream]
        if not _is_identity(transform):
            corrupted = transform(out.cpu().numpy(), self._np_rngs[stream] if rng is None else rng)
            out = torch.from_numpy(np.ascontiguousarray(corrupted, dtype=np.float32)).to(self.device)
        if self.pad_with_zeros:
            out = out * (rows >= 0).unsqueeze(-1)  # [B, L, D]
        return out

    # ------------------------------------------------------------------------------------------
    # sampling

    def sample(self, batch_size: int, spec: BatchSpec | None = None) -> Batch:
        """Sample a training batch: uniform episode, uniform transition index s in 1..T-1.

        Args:
            batch_size: B.
            spec: what the algorithm needs beyond the windows (``agent.batch_spec``); with
                ``spec.goals`` also goals (a future state at a geometric offset >= 1 from the
                current row s-1, clipped to row T-1, else a uniform random state of the dataset).

        Returns:
            A ``Batch`` with the pairings of ``data/batch.py``: obs_window [B, L_F+1, obs],
            prev_action_window [B, L_F+1, act], goal_window [B, L_B+1, goal],
            goal_action_window [B, L_B+1, act]; with ``spec.goals`` also sampled_goal_window
            [B, L_B, goal], sampled_goal_action_window [B, L_B, act], sampled_goal_is_current [B].
        """
        gen, dev, T = self.generator, self.device, self.episode_length
        episode = torch.randint(0, self.num_episodes, (batch_size,), generator=gen, device=dev)  # [B]
        step = torch.randint(1, T, (batch_size,), generator=gen, device=dev)  # [B], s in 1..T-1
        rows_f = step[:, None] + self._offsets_f  # [B, L_F + 1], rows s-L_F .. s
        rows_b = step[:, None] + self._offsets_b  # [B, L_B + 1], rows s-L_B .. s
        obs_window = self._obs_windows(0, episode, rows_f)
        shared = self._obs_b is self._obs_f and not self.resample_per_batch
        if shared and self.backward_history_length <= self.history_length:
            goal_window = obs_window[:, self.history_length - self.backward_history_length :]  # same rows
        else:
            goal_window = self._obs_windows(1, episode, rows_b)
        batch = Batch(
            obs_window=obs_window,
            prev_action_window=self._gather(self._action, self._action_index(episode, rows_f, rows_f >= 0)),
            goal_window=goal_window,
            goal_action_window=self._gather(
                self._action, self._action_index(episode, rows_b + 1, rows_b >= 0)
            ),
        )
        if spec is not None and spec.goals is not None:
            self._add_goals(batch, episode, step, spec.goals)
        return batch

    def _add_goals(
        self, batch: Batch, episode: torch.Tensor, step: torch.Tensor, goals: GoalSampling
    ) -> None:
        gen, dev, T, B = self.generator, self.device, self.episode_length, len(episode)
        current = step - 1  # [B], row of g_t
        uniform = torch.rand(B, generator=gen, device=dev).clamp_min(torch.finfo(torch.float32).tiny)
        offset = torch.floor(torch.log(uniform) / np.log1p(-goals.geometric_p)).long() + 1  # [B], Geom >= 1
        future_row = (current + offset).clamp(max=T - 1)  # [B]
        random_episode = torch.randint(0, self.num_episodes, (B,), generator=gen, device=dev)  # [B]
        random_row = torch.randint(0, T, (B,), generator=gen, device=dev)  # [B], 0..T-1
        use_future = torch.rand(B, generator=gen, device=dev) < goals.future_prob  # [B], one mask for both
        goal_episode = torch.where(use_future, episode, random_episode)  # [B]
        goal_row = torch.where(use_future, future_row, random_row)  # [B]
        rows = goal_row[:, None] + self._offsets_b[1:]  # [B, L_B], rows g-L_B+1 .. g
        batch.sampled_goal_window = self._obs_windows(1, goal_episode, rows)
        batch.sampled_goal_action_window = self._gather(
            self._action, self._action_index(goal_episode, rows + 1, rows >= 0)
        )
        batch.sampled_goal_is_current = ((goal_episode == episode) & (goal_row == current)).float()  # [B]

    def sample_labelled(
        self, n: int, tasks: Sequence[str] | None = None, seed: int | None = None
    ) -> LabelledWindows:
        """Reward-labelled goal-stream windows for zero-shot task inference.

        Draws n (episode, row s) pairs, s uniform in 1..T-1, from a generator separate from the
        training one (so evaluation does not shift the training batches).

        Args:
            n: number of windows (the paper uses 10,000).
            tasks: tasks whose rewards are returned; default every loaded task.
            seed: when given, every draw (rows, and a goal-stream corruption re-drawn per batch)
                comes from generators made from this seed alone, so the windows are a function of
                the seed and the data (evaluation passes one derived from the run seed and the
                step); None draws from the buffer's own labelled generator.

        Returns:
            goal_window [n, L_B, goal] (rows s-L_B+1 .. s), goal_action_window [n, L_B, act] (action
            taken at each row), rewards task -> [n] = R(physics[s]), index [n] storage row of s.
        """
        tasks = tuple(tasks) if tasks is not None else self.tasks
        unknown = set(tasks) - set(self._rewards)
        if unknown:
            raise ValueError(f"no rewards loaded for {sorted(unknown)}; loaded tasks: {list(self._rewards)}")
        gen, rng, dev, T = self.labelled_generator, None, self.device, self.episode_length
        if seed is not None:
            gen = torch.Generator(dev).manual_seed(_stream_seed(seed, 4))
            rng = np.random.default_rng([seed, 5])
        episode = torch.randint(0, self.num_episodes, (n,), generator=gen, device=dev)  # [n]
        step = torch.randint(1, T, (n,), generator=gen, device=dev)  # [n]
        rows = step[:, None] + self._offsets_b[1:]  # [n, L_B], rows s-L_B+1 .. s
        flat = episode * self.rows + step  # [n]
        return LabelledWindows(
            goal_window=self._obs_windows(1, episode, rows, rng),
            goal_action_window=self._gather(self._action, self._action_index(episode, rows + 1, rows >= 0)),
            rewards={t: self._rewards[t].index_select(0, flat) for t in tasks},
            index=flat,
        )

    def window_at(self, episode: int, row: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The goal-stream window ending at ``row`` of loaded episode ``episode``, as task inference
        sees labelled windows (a corruption re-drawn per batch comes from ``seed``).

        Returns:
            goal_window [1, L_B, goal], goal_action_window [1, L_B, act].
        """
        if not 0 <= episode < self.num_episodes or not 0 <= row <= self.episode_length:
            raise IndexError(
                f"state {episode}:{row} is outside the data: episodes 0..{self.num_episodes - 1}, "
                f"steps 0..{self.episode_length}"
            )
        ep = torch.tensor([episode], device=self.device)  # [1]
        rows = torch.tensor([[row]], device=self.device) + self._offsets_b[1:]  # [1, L_B]
        window = self._obs_windows(1, ep, rows, np.random.default_rng([seed, 6]))
        return window, self._gather(self._action, self._action_index(ep, rows + 1, rows >= 0))

    def physics_rows(self, index: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Stored physics states [n, P] of storage rows ``index`` [n] and the dynamics multiplier
        [n] their episodes were collected at (needs ``keep_states=True``)."""
        if self.physics is None:
            raise ValueError("this buffer was loaded without keep_states=True: no physics states kept")
        index = torch.as_tensor(index).cpu().numpy()
        return self.physics[index], self.row_multipliers[index // self.rows]

    # ------------------------------------------------------------------------------------------
    # checkpointing of the random streams

    def state_dict(self) -> dict[str, Any]:
        """States of every random generator (to resume a run with the same batch sequence)."""
        return {
            "generator": self.generator.get_state(),
            "labelled_generator": self.labelled_generator.get_state(),
            "np_rngs": [rng.bit_generator.state for rng in self._np_rngs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generators saved by ``state_dict`` (a generator missing from ``state`` is kept)."""
        for name in ("generator", "labelled_generator"):
            if name in state:
                getattr(self, name).set_state(state[name])
        for rng, rng_state in zip(self._np_rngs, state["np_rngs"], strict=True):
            rng.bit_generator.state = rng_state
