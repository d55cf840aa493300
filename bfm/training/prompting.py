"""Using a trained model: re-evaluate a checkpoint, prompt it with any reward or goal, record videos.

    from bfm.training.prompting import TrainedModel

    model = TrainedModel.load("runs/fb/walker/rnd/none/seed42")          # newest intact checkpoint
    evaluation = model.evaluate(tasks=["stand"], rewards=["(torso_height > 1.3) & (abs(horizontal_velocity) < 0.2)"])
    print(evaluation.table())
    evaluation = model.evaluate(goals=["17:400"], video=1, out="evaluations/goal")

A prompt is scored by the reward it asked for: z comes from the run's own dataset windows labelled
with that reward (computed from the stored physics states, exactly as the built-in tasks were
relabelled), and the rollouts are scored online by the same function. Everything an evaluation
draws depends on (seed, step) only (``training.evaluation``), so re-evaluating the checkpoint of a
training evaluation with the run's settings gives the returns that evaluation recorded.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfm import envs
from bfm.envs.prompts import FeatureReward, GoalReward, PromptError, parse_reward
from bfm.envs.render import Recording, check_gl, render
from bfm.files import writing
from bfm.training import builders
from bfm.training.checkpoint import CHECKPOINT_DIR, checkpoint_problem, load_agent, resume_point
from bfm.training.config import ConfigError, RunConfig, run_config_from_dict, validate_names
from bfm.training.evaluation import EvalResult, Evaluator, iqm
from bfm.training.run_dir import saved_config

log = logging.getLogger(__name__)

EVALUATIONS_DIR = "evaluations"
GOAL_QUANTILE = 0.01  # default goal threshold: closer than all but this share of the dataset's states


class TrainedModel:
    """A trained agent with its run config and data, ready to be prompted (load with ``load``).

    Attributes:
        run_dir: the run directory.
        cfg: the run's saved config.
        agent: the agent restored from the checkpoint.
        step: the checkpoint's training step.
        checkpoint: the checkpoint directory.
    """

    def __init__(
        self, run_dir: Path, cfg: RunConfig, agent: Any, step: int, checkpoint: Path, device: torch.device
    ):
        self.run_dir, self.cfg, self.agent, self.step = run_dir, cfg, agent, step
        self.checkpoint, self.device = checkpoint, device
        self._buffers: dict[str, Any] = {}

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike,
        step: int | None = None,
        device: str = "auto",
        data_dir: str | None = None,
    ) -> TrainedModel:
        """Loads a run directory's config and a checkpoint (the newest intact one, or ``step``).

        Args:
            run_dir: a run directory of ``main_exorl.py`` (finished or interrupted).
            step: the training step of the checkpoint to load; None takes the newest intact one.
            device: auto, cpu, cuda or cuda:N.
            data_dir: where the run's dataset lies now, if it moved (default: the run's data_dir).

        Raises:
            ConfigError: no run config or checkpoint, or no checkpoint at ``step`` (names those there).
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            what = "is a file" if run_dir.exists() else "does not exist"
            raise ConfigError(
                f"run directory {run_dir} {what}; pass a folder main_exorl.py wrote (it holds config.yaml "
                "and checkpoints/)"
            )
        values = saved_config(run_dir)
        if values is None:
            raise ConfigError(
                f"{run_dir} holds no config.yaml: not a run directory of main_exorl.py; pass a folder it wrote"
            )
        cfg = run_config_from_dict(values)
        if data_dir is not None:
            cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, data_dir=str(data_dir)))
        checkpoint = _checkpoint(run_dir, step)
        dev = builders.resolve_device(device)
        agent = load_agent(checkpoint / "agent", dev)
        loaded_step = int(checkpoint.name.removeprefix("step_"))
        log.info("loaded %s (step %d) on %s", checkpoint, loaded_step, dev)
        return cls(run_dir, cfg, agent, loaded_step, checkpoint, dev)

    # ------------------------------------------------------------------------------------------
    # prompts

    def base_domain(self) -> str:
        return envs.parse_domain(self.cfg.env.domain).domain

    def reward(self, spec: str, name: str | None = None) -> FeatureReward:
        """A reward prompt: a formula over the domain's features or ``file.py:function``
        (``envs.prompts``)."""
        return parse_reward(self.base_domain(), spec, name)

    def goal(self, spec: str, threshold: float | None = None, domain: str | None = None) -> GoalReward:
        """A goal prompt: ``EPISODE:STEP`` (a state of the run's data: loaded episode 0..E-1, step
        0..T) or a ``.npy`` file of one observation [obs_dim] (or a window [L, obs_dim] ending at it).

        Args:
            spec: the goal.
            threshold: posture distance that counts as reached; None takes the distance that only
                1 % of the dataset's states are closer to the goal than.
            domain: the evaluation domain (its goal-stream transform shapes the goal window).
        """
        if self.agent.goal_needs_state and self.agent.obs_dim != self.agent.goal_dim:
            raise PromptError(
                f"{self.agent.name}'s goal z compares phi of the goal and of the current observation, but this run's "
                f"streams differ in width ({self.agent.obs_dim} and {self.agent.goal_dim}); use a run without "
                "_dynamics_occluded / _rewards_occluded"
            )
        parsed = envs.parse_domain(domain or self.cfg.env.domain)
        if self.agent.goal_needs_state and parsed.variant and parsed.corrupt_obs != parsed.corrupt_goal:
            raise PromptError(
                f"{self.agent.name}'s goal z feeds phi (a goal-stream network) the policy's observations, which "
                f"{domain or self.cfg.env.domain} corrupts differently; use a variant that corrupts both streams or none"
            )
        buffer, setup = self._buffer(domain or self.cfg.env.domain)
        name = "goal_" + Path(spec).stem if spec.endswith(".npy") else "goal_" + spec.replace(":", "_")
        if spec.endswith(".npy"):
            raw, window, action_window = self._goal_from_file(spec, buffer, setup)
        else:
            episode, row = _goal_index(spec)
            try:
                window, action_window = buffer.window_at(episode, row, seed=self.cfg.seed)
            except IndexError as error:
                raise PromptError(f"goal {spec}: {error}") from None
            raw = buffer.raw_observation[episode * buffer.rows + row]
            window, action_window = window.cpu().numpy(), action_window.cpu().numpy()
        goal = GoalReward(self.base_domain(), name, raw, 1.0, spec, window, action_window)
        if threshold is None:
            rows = np.random.default_rng(0).integers(0, len(buffer.raw_observation), 10_000)
            threshold = float(np.quantile(goal.distance(buffer.raw_observation[rows]), GOAL_QUANTILE))
        return GoalReward(self.base_domain(), name, raw, threshold, spec, window, action_window)

    def _goal_from_file(
        self, spec: str, buffer: Any, setup: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        path = Path(spec)
        if not path.is_file():
            raise PromptError(
                f"goal file {path} does not exist (expected a .npy observation or EPISODE:STEP)"
            )
        try:
            obs = np.load(path, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as error:
            raise PromptError(
                f"goal file {path} is not a readable .npy array ({error}); expected an observation saved "
                "with numpy.save"
            ) from None
        dim = envs.DOMAINS[self.base_domain()].obs_dim
        obs = obs[None] if obs.ndim == 1 else obs
        if obs.ndim != 2 or obs.shape[-1] != dim or not np.isfinite(obs).all():
            raise PromptError(f"goal file {path} holds {obs.shape}; expected finite [{dim}] or [L, {dim}]")
        L = buffer.backward_history_length
        rows = np.concatenate([np.repeat(obs[:1], max(L - len(obs), 0), axis=0), obs])[
            -L:
        ]  # pad like training
        window = setup.goal_transform(rows, np.random.default_rng([self.cfg.seed, 6]))[None]  # [1, L_B, g]
        return obs[-1], window, np.zeros((1, L, buffer.action_dim), dtype=np.float32)

    # ------------------------------------------------------------------------------------------
    # evaluation

    def evaluate(
        self,
        tasks: Sequence[str] | None = None,
        rewards: Sequence[str | FeatureReward] = (),
        goals: Sequence[str | GoalReward] = (),
        domain: str | None = None,
        multipliers: Sequence[float] | None = None,
        rollouts: int | None = None,
        rollout_memory: str | None = None,
        seed: int | None = None,
        z_inference_steps: int | None = None,
        video: int = 0,
        video_every: int = 4,
        video_size: tuple[int, int] = (320, 240),
        out: str | os.PathLike | None = None,
    ) -> Evaluation:
        """Evaluates the model zero-shot on built-in tasks and prompts.

        Args:
            tasks: built-in tasks of the domain; None takes the run's own evaluation tasks when no
                reward or goal is given, else none.
            rewards: reward prompts (formulas, ``file.py:function`` or ``reward(...)`` objects).
            goals: goal prompts (``EPISODE:STEP``, ``.npy`` files or ``goal(...)`` objects).
            domain: the evaluation domain, any POMDP variant of the run's base domain (default the
                run's); z inference reads the run's data through that variant's goal stream.
            multipliers, rollouts, rollout_memory, seed, z_inference_steps: default the run's.
            video: episodes per prompt and multiplier to render (MP4 + PNG filmstrip); 0: none.
            video_every: render every N-th environment step (the video plays in real time).
            video_size: (width, height) of the frames.
            out: folder for results.json, episodes.csv and videos (written by ``Evaluation.save``);
                None keeps everything in memory (videos then need ``out``).

        Raises:
            ConfigError / PromptError: bad input (the message says what is accepted).
        """
        domain = domain or self.cfg.env.domain
        cfg = self._eval_config(
            domain,
            tasks,
            bool(rewards or goals),
            multipliers,
            rollouts,
            rollout_memory,
            seed,
            z_inference_steps,
        )
        prompts: list[Any] = [r if isinstance(r, FeatureReward) else self.reward(r) for r in rewards]
        prompts += [g if isinstance(g, GoalReward) else self.goal(g, domain=domain) for g in goals]
        prompts = _unique_names(prompts, cfg.env.eval_tasks)
        if video and out is None:
            raise ConfigError("video needs an output folder (out=...)")
        recorder = _VideoRecorder(self, video, video_every) if video else None
        if recorder is not None:
            check_gl()  # fails now, not after the rollouts
        buffer, setup = self._buffer(domain)
        tasks_and_prompts = list(cfg.env.eval_tasks) + prompts
        evaluator = self._evaluator(cfg, setup, buffer, tasks_and_prompts)
        result = evaluator.evaluate(self.agent, self.step, recorder)
        evaluation = Evaluation(self, cfg, tasks_and_prompts, result)
        if out is not None:
            evaluation.save(out, recorder.recordings() if recorder else (), video_size)
        return evaluation

    def _eval_config(
        self,
        domain: str,
        tasks: Sequence[str] | None,
        prompted: bool,
        multipliers: Sequence[float] | None,
        rollouts: int | None,
        rollout_memory: str | None,
        seed: int | None,
        z_inference_steps: int | None,
    ) -> RunConfig:
        """The run config with the evaluation's settings, checked like a training run's."""
        try:
            spec = envs.parse_domain(domain)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if spec.domain != self.base_domain():
            raise ConfigError(
                f"domain {domain!r} is not a variant of the run's domain {self.base_domain()!r}; accepted: "
                + ", ".join(
                    n for n in envs.valid_domain_names() if envs.parse_domain(n).domain == self.base_domain()
                )
            )
        if tasks is None:
            tasks = (
                []
                if prompted
                else list(self.cfg.env.eval_tasks) or list(envs.DOMAINS[self.base_domain()].tasks)
            )
        env = dataclasses.replace(
            self.cfg.env,
            domain=domain,
            eval_tasks=list(tasks),
            eval_multipliers=list(multipliers or self.cfg.env.eval_multipliers),
        )
        train = dataclasses.replace(
            self.cfg.train,
            eval_rollouts=rollouts or self.cfg.train.eval_rollouts,
            rollout_memory=rollout_memory or self.cfg.train.rollout_memory,
            z_inference_steps=z_inference_steps or self.cfg.train.z_inference_steps,
        )
        cfg = dataclasses.replace(
            self.cfg, env=env, train=train, seed=self.cfg.seed if seed is None else seed
        )
        validate_names(cfg)
        for m in cfg.env.eval_multipliers:
            if not (np.isfinite(m) and m > 0):
                raise ConfigError(f"multiplier {m} must be a finite number > 0")
        if tasks:
            builders.make_env(cfg)  # unknown tasks fail here, naming the accepted ones
        return cfg

    def _buffer(self, domain: str) -> tuple[Any, builders.EnvSetup]:
        """The run's data seen through ``domain``'s transforms (with the physics states), cached."""
        if domain not in self._buffers:
            every_task = list(envs.DOMAINS[self.base_domain()].reward_tasks)  # any task can be asked for
            env = dataclasses.replace(self.cfg.env, domain=domain, eval_tasks=every_task)
            cfg = dataclasses.replace(self.cfg, env=env)
            setup = builders.make_env(cfg)
            widths = (setup.obs_transform.out_dim, setup.goal_transform.out_dim)
            if widths != (self.agent.obs_dim, self.agent.goal_dim):
                raise ConfigError(
                    f"domain {domain!r} gives observations of widths {widths}, but the model takes "
                    f"{(self.agent.obs_dim, self.agent.goal_dim)} (obs, goal); use a variant that keeps them"
                )
            builders.dataset_paths(cfg, setup.domain)  # a missing dataset names the command that makes it
            self._buffers[domain] = (builders.make_buffer(cfg, setup, self.device, keep_states=True), setup)
        return self._buffers[domain]

    def _evaluator(
        self, cfg: RunConfig, setup: builders.EnvSetup, buffer: Any, tasks: list[Any]
    ) -> Evaluator:
        evaluator = builders.make_evaluator(cfg, setup, buffer, self.device)
        evaluator.tasks = tasks

        def make_eval_env(seed: int) -> envs.BatchedEvalEnv:
            return envs.BatchedEvalEnv(
                setup.domain,
                tasks,
                cfg.env.eval_multipliers,
                cfg.train.eval_rollouts,
                setup.obs_transform,
                seed,
            )

        evaluator.make_env = make_eval_env
        return evaluator


def _checkpoint(run_dir: Path, step: int | None) -> Path:
    """The checkpoint directory to load: the newest intact one, or the one of ``step``."""
    root = run_dir / CHECKPOINT_DIR
    steps = (
        sorted(int(p.name.removeprefix("step_")) for p in root.glob("step_*") if p.is_dir())
        if root.is_dir()
        else []
    )
    if step is None:
        point = resume_point(run_dir)
        if point.path is None:
            why = "; ".join(f"{p.name}: {problem}" for p, problem in point.damaged) or "none written yet"
            raise ConfigError(f"{run_dir} has no intact checkpoint ({why})")
        return point.path
    path = root / f"step_{step:09d}"
    if not path.is_dir():
        raise ConfigError(
            f"{run_dir} has no checkpoint at step {step}; checkpoints there: {', '.join(map(str, steps)) or 'none'}"
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ConfigError(f"checkpoint {path} is damaged ({problem})")
    return path


def _goal_index(spec: str) -> tuple[int, int]:
    episode, _, row = spec.partition(":")
    try:
        return int(episode), int(row)
    except ValueError:
        raise PromptError(f"goal {spec!r}: expected EPISODE:STEP (two integers) or a .npy file") from None


def _unique_names(prompts: list[Any], tasks: Sequence[str]) -> list[Any]:
    """Prompts renamed ``name_2``, ``name_3``, ... where names repeat (two formulas, a task's name)."""
    seen, out = set(tasks), []
    for prompt in prompts:
        name, k = prompt.name, 2
        while name in seen:
            name, k = f"{prompt.name}_{k}", k + 1
        seen.add(name)
        if name != prompt.name:
            prompt = copy.copy(prompt)
            prompt.name = name
        out.append(prompt)
    return out


def _observation_mark(raw: np.ndarray, seen: np.ndarray) -> str:
    """What the agent did not get of one observation: dropped, missing sensors, noise, hidden entries."""
    if seen.shape != raw.shape:
        return f"{raw.shape[0] - seen.shape[0]} entries hidden"
    if not np.any(seen) and np.any(raw):
        return "observation dropped"
    zeroed = int(np.sum((seen == 0) & (raw != 0)))
    if zeroed:
        return f"{zeroed} sensors dropped"
    return "noisy observation" if not np.allclose(seen, raw, atol=1e-6) else ""


class _VideoRecorder:
    """Keeps the physics states of the first ``episodes`` rollouts of every prompt and multiplier,
    every ``every`` steps, with captions and observation marks (``evaluation.Recorder``)."""

    def __init__(self, model: TrainedModel, episodes: int, every: int):
        if episodes < 1 or every < 1:
            raise ConfigError(f"video episodes and video_every must be >= 1, got {episodes}, {every}")
        self.model, self.episodes, self.every = model, episodes, every
        self.rows: list[int] = []
        self.frames: dict[int, list[tuple[np.ndarray, str, str]]] = {}
        self.keys: list[tuple[str, float, int]] = []
        self.fps = 1.0

    def on_step(self, t: int, env: Any, obs: np.ndarray, totals: np.ndarray) -> None:
        if t == 0:
            self.keys = list(env.episode_keys)
            self.rows = [i for i, (_, _, r) in enumerate(self.keys) if r < self.episodes]
            self.frames = {i: [] for i in self.rows}
            self.fps = 1.0 / (env.control_timestep * self.every)  # real time
        if t % self.every:
            return
        states, raw, seen = env.physics_states(self.rows), env.raw_observation, np.asarray(obs)
        for state, i in zip(states, self.rows, strict=True):
            caption = f"{self.model.agent.name} step {self.model.step} | {self.keys[i][0]} | t {t} | return {totals[i]:.0f}"
            self.frames[i].append((state, caption, _observation_mark(raw[i], seen[i])))

    def recordings(self) -> list[Recording]:
        out = []
        for i in self.rows:
            name, m, r = self.keys[i]
            states, captions, marks = zip(*self.frames[i], strict=True)
            stem = f"{name}_m{m:g}_ep{r}"
            out.append(
                Recording(
                    stem, self.model.base_domain(), m, np.stack(states), list(captions), list(marks), self.fps
                )
            )
        return out


@dataclasses.dataclass
class Evaluation:
    """The outcome of ``TrainedModel.evaluate``: returns per prompt and multiplier, and where it was saved."""

    model: TrainedModel
    cfg: RunConfig
    prompts: list[Any]
    result: EvalResult
    folder: Path | None = None
    videos: list[Path] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """The printed table: per prompt and multiplier the IQM and mean over episodes, as training prints."""
        r, cfg = self.result, self.cfg
        lines = [
            f"\n{self.model.agent.name} {cfg.env.domain} {cfg.env.dataset} memory={cfg.memory_label} seed={cfg.seed} "
            f"step={self.model.step} rollout_memory={cfg.train.rollout_memory} episodes={cfg.train.eval_rollouts}",
            f"{'prompt':<24}{'mult':>6}{'IQM':>10}{'mean':>10}{'min':>8}{'max':>8}",
        ]
        for (name, m), returns in r.returns.items():
            lines.append(
                f"{name:<24}{m:>6g}{r.task_iqm[(name, m)]:>10.1f}{np.mean(returns):>10.1f}{min(returns):>8.0f}{max(returns):>8.0f}"
            )
            for key, values in r.details.get((name, m), {}).items():
                lines.append(f"  {key}: {' '.join(f'{v:.2f}' for v in values)}")
        lines.append(f"{'mean over prompts':<30}{r.mean_iqm():>10.1f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        r, cfg = self.result, self.cfg
        return {
            "run_dir": str(self.model.run_dir),
            "checkpoint": str(self.model.checkpoint),
            "step": self.model.step,
            "algorithm": self.model.agent.name,
            "domain": cfg.env.domain,
            "seed": cfg.seed,
            "rollouts": cfg.train.eval_rollouts,
            "rollout_memory": cfg.train.rollout_memory,
            "z_inference_steps": cfg.train.z_inference_steps,
            "multipliers": list(cfg.env.eval_multipliers),
            "prompts": [_describe(p) for p in self.prompts],
            "iqm": _nest(r.task_iqm),
            "returns": _nest(r.returns),
            "details": {f"{n}@{m:g}": v for (n, m), v in r.details.items()},
            "mean_iqm": r.mean_iqm(),
            "seconds": r.seconds,
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
        }

    def save(
        self,
        folder: str | os.PathLike,
        recordings: Sequence[Recording] = (),
        video_size: tuple[int, int] = (320, 240),
    ) -> Path:
        """Writes ``results.json``, ``episodes.csv`` (every episode's return) and the videos of
        ``recordings`` (``videos/<prompt>_m<multiplier>_ep<k>.mp4`` and ``.png``) into ``folder``,
        all or nothing: a failure leaves no folder behind."""
        folder = Path(folder)
        if folder.exists() and not (folder / "results.json").is_file():
            raise ConfigError(
                f"{folder} exists and is not an evaluation folder (no results.json); use another name"
            )
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        created = not folder.parent.exists()
        tmp.mkdir(parents=True)
        try:
            with writing(folder / "results.json"):
                (tmp / "results.json").write_text(json.dumps(self.to_dict(), indent=2))
            with writing(folder / "episodes.csv"):
                self._write_episodes(tmp / "episodes.csv")
            written = render(recordings, tmp / "videos", *video_size) if recordings else []
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if created and folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()  # a failed first evaluation leaves no evaluations/ behind
        self.folder = folder
        self.videos = [folder / "videos" / p.name for p in written]
        return folder

    def _write_episodes(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["prompt", "multiplier", "rollout", "return", "min_distance", "final_distance"])
            for (name, m), returns in self.result.returns.items():
                details = self.result.details.get((name, m), {})
                for k, value in enumerate(returns):
                    extra = [
                        f"{details[key][k]:.4f}" if key in details else ""
                        for key in ("min_distance", "final_distance")
                    ]
                    writer.writerow([name, m, k, f"{value:.4f}", *extra])


def _nest(values: dict[tuple[str, float], Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (name, m), v in values.items():
        out.setdefault(name, {})[str(float(m))] = v
    return out


def _describe(prompt: Any) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"name": prompt, "kind": "task"}
    if isinstance(prompt, GoalReward):
        return {"name": prompt.name, "kind": "goal", "source": prompt.source, "threshold": prompt.threshold}
    return {"name": prompt.name, "kind": "reward", "source": prompt.source}


def evaluation_folder(run_dir: Path, name: str | None, step: int, domain: str) -> Path:
    """``<run_dir>/evaluations/<name>``; the default name ``step<step>_<domain>`` gets ``_2``, ``_3``,
    ... when taken, so an evaluation never replaces another."""
    root = Path(run_dir) / EVALUATIONS_DIR
    if name:
        if not re.fullmatch(r"\w[\w.-]*", name):
            raise ConfigError(
                f"--name {name!r}: expected one folder name of letters, digits, '_', '-', '.' (no '/', not '.' or '..')"
            )
        return root / name
    base, k = f"step{step}_{domain}", 2
    folder = root / base
    while folder.exists():
        folder, k = root / f"{base}_{k}", k + 1
    return folder


__all__ = ["Evaluation", "TrainedModel", "evaluation_folder", "iqm"]
