"""Run configuration: plain dataclasses, one per hydra config group, plus validation.

Only the CLI (``bfm.cli.train``, run by ``main_exorl.py``) knows about hydra. It registers schemas
generated from these dataclasses and the agents' configs, composes ``bfm/configs/`` with the
user's overrides, and hands the result to :func:`run_config_from_dict`, which returns a
:class:`RunConfig` made of plain dataclasses. Every run field is documented here, once; the
agent's fields on its config class in ``bfm.agents``.

Groups: ``agent`` (the agents' own config, ``bfm.agents.FBConfig`` / ``HILPConfig``, with its
memory models and context lengths in ``agent.memory``; the ``memory`` config group fills that),
``env`` (domain, dataset, POMDP settings, evaluation tasks), ``train`` (schedule and
evaluation protocol; the ``experiment`` presets override it), ``logger`` (CSV always, wandb
optional).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from bfm.agents import AGENTS, AgentConfig, FBConfig, SettingError, make_config
from bfm.agents.config import is_memory_free
from bfm.envs import pomdp

ALGORITHMS: tuple[str, ...] = tuple(AGENTS)
EPISODE_LENGTH = 1000  # of every ExORL and evaluation episode
ROLLOUT_MEMORY_MODES: tuple[str, ...] = ("sliding", "carry")
# The same as data.exorl.EPISODE_SELECTIONS (a test keeps them equal; config imports no data code).
EPISODE_SELECTIONS: tuple[str, ...] = ("spread", "first")
# Agent fields whose default depends on the domain (the reference code's per-domain settings):
# HILP's gamma_phi 0.96 on walker, its scalar successor-feature loss (psi . z) on quadruped. The
# CLI's schema leaves them None; an explicit agent.<field> wins.
DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "walker": {"gamma_phi": 0.96},
    "quadruped": {"sf_loss": "scalar"},
}
DOMAIN_DEPENDENT_FIELDS: tuple[str, ...] = tuple(sorted({k for d in DOMAIN_DEFAULTS.values() for k in d}))

# Keys that may differ between a run directory's saved config and a resumed run.
RESUMABLE_KEYS: tuple[str, ...] = (
    "seeds",
    "batch_seeds",
    "train.learning_steps",
    "env.verify_checksums",
    "train.log_interval",
    "train.show_progress",
    "resume",
    "train.checkpoint_every_eval",
    "logger",
    "device",
    "run_dir",
    "torch_threads",
)


class ConfigError(ValueError):
    """Bad user input: the CLI reports the message on one line and exits with code 2."""


@dataclass
class _EnvSettings:
    """Domain, dataset and evaluation tasks; ``EnvSettings`` adds each POMDP's settings.

    Attributes:
        domain: ``walker``, ``quadruped``, ``cheetah``, optionally with a POMDP suffix
            (``_flickering``, ``_noise``, ``_sensors``, ``_occluded``, or the stream-specific
            ``_dynamics_X`` / ``_rewards_X``).
        dataset: ExORL exploration algorithm whose dataset is loaded (``rnd``, ``random``, ...).
        data_dir: root of ``<domain>/<dataset>/buffer/dataset.npz``.
        episodes: episodes loaded from the dataset(s) (split evenly across training multipliers).
        episode_selection: which episodes of each dataset: ``spread`` evenly over the whole
            collection (default) or the ``first`` N by episode index (collection order).
        eval_tasks: tasks evaluated zero-shot; empty means every task of the domain.
        train_multipliers: mass/damping multipliers of the training dataset(s).
        eval_multipliers: mass/damping multipliers of the evaluation environment(s).
        resample_per_batch: resample the POMDP corruption of the offline data every batch
            (default: once at load, as in the paper).
        pad_with_zeros: pad history slots before the episode start with zeros instead of
            repeating the first observation.
        verify_checksums: check every array a run reads against the sha256 in the dataset's
            manifest while loading (a mismatch stops the run naming the array).
    """

    domain: str = "walker"
    dataset: str = "rnd"
    data_dir: str = "datasets"
    episodes: int = 5000
    episode_selection: str = "spread"
    eval_tasks: list[str] = field(default_factory=list)
    train_multipliers: list[float] = field(default_factory=lambda: [1.0])
    eval_multipliers: list[float] = field(default_factory=lambda: [1.0])
    resample_per_batch: bool = False
    pad_with_zeros: bool = False
    verify_checksums: bool = True


# The env config: the fields above and one per POMDP setting (``envs.pomdp.SETTINGS``: the
# registry declares them, with their defaults and documentation).
EnvSettings = dataclasses.make_dataclass(
    "EnvSettings",
    [(key, float, field(default=setting.default)) for key, setting in pomdp.SETTINGS.items()],
    bases=(_EnvSettings,),
    namespace={
        "__module__": __name__,
        "__doc__": "Domain, POMDP settings, dataset and evaluation tasks.\n\n    Attributes:\n"
        + "".join(f"        {key}: {setting.doc}\n" for key, setting in pomdp.SETTINGS.items()),
    },
)


@dataclass
class TrainSettings:
    """Training schedule and evaluation protocol (docs/training.md).

    Attributes:
        learning_steps: gradient steps.
        batch_size: transitions (windows) per gradient step.
        eval_frequency: evaluate at step 0, every N steps and at the last step.
        eval_rollouts: episodes per task per multiplier per evaluation (>= 1).
        eval_episode_length: environment steps per evaluation episode; None means the full
            episode (1000). Shorter values are for smoke tests only.
        z_inference_steps: reward-labelled dataset windows used to infer each task's z.
        rollout_memory: ``sliding`` re-encodes the last L_F tokens every step (matches
            training); ``carry`` keeps a recurrent state over the whole episode.
        log_interval: gradient steps between rows of train.csv (metrics stay tensors between).
        checkpoint_every_eval: write a checkpoint after every evaluation.
        show_progress: tqdm progress bar with updates/s.
    """

    learning_steps: int = 1_000_000
    batch_size: int = 512
    eval_frequency: int = 20_000
    eval_rollouts: int = 10
    eval_episode_length: int | None = None
    z_inference_steps: int = 10_000
    rollout_memory: str = "sliding"
    log_interval: int = 1000
    checkpoint_every_eval: bool = True
    show_progress: bool = True


@dataclass
class LoggerSettings:
    """Where metrics go. CSV files in the run directory always; wandb when ``wandb`` is true.

    Attributes:
        wandb: also log to Weights & Biases.
        project: wandb project.
        entity: wandb entity (team or user); None uses the account default.
        mode: wandb mode: ``offline`` (no account needed, sync later), ``online`` or ``disabled``.
        tags: extra wandb tags.
    """

    wandb: bool = False
    project: str = "bfms-with-memory"
    entity: str | None = None
    mode: str = "offline"
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """Everything one training run needs.

    Attributes:
        agent: the algorithm and its hyperparameters, memory included (``agents.FBConfig`` or
            ``agents.HILPConfig``, chosen by ``agent.name``).
        env, train, logger: the config groups above.
        seed: run seed; every generator (buffer, POMDP transforms, agent, evaluation) derives
            from it.
        device: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:1``, ...
        run_dir: output directory (bfm/configs/config.yaml builds the default
            ``runs/<algorithm>/<domain>/<dataset>/<memory>/seed<seed>``).
        torch_threads: CPU threads of torch (None: torch's default). 1 is much faster for the
            tiny smoke networks on a busy machine.
        resume: continue from the run directory's last checkpoint when it has one (the
            default: rerunning a command continues it). False refuses to touch a directory
            that already holds a checkpoint.
        seeds: seeds trained together in this process, ``seed`` to ``seed + seeds - 1``, each
            in the run directory its seed resolves to (docs/training.md, "Several seeds in one process").
        batch_seeds: update the seeds of a ``seeds > 1`` run as one batched computation
            (``agents.seeds``; equal to separate runs up to rounding); false updates them one
            after another (equal to separate runs exactly).
    """

    agent: AgentConfig = field(default_factory=FBConfig)
    env: EnvSettings = field(default_factory=EnvSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    logger: LoggerSettings = field(default_factory=LoggerSettings)
    seed: int = 42
    device: str = "auto"
    run_dir: str = "runs/default"
    resume: bool = True
    torch_threads: int | None = None
    seeds: int = 1
    batch_seeds: bool = True

    @property
    def history_length(self) -> int:
        """L_F as the agent and the buffer see it (1 without memory in F and pi)."""
        return self.agent.history_length

    @property
    def backward_history_length(self) -> int:
        """L_B as the agent and the buffer see it (1 without memory in B)."""
        return self.agent.backward_history_length

    @property
    def memory_label(self) -> str:
        """Short name of the memory setup: ``none``, ``gru``, ``gru-F`` (F/pi only), ``gru-B``."""
        return memory_label(self.agent.recurrent_F, self.agent.recurrent_B, self.agent.memory.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)


def memory_label(recurrent_F: bool, recurrent_B: bool, memory: str) -> str:
    """Names the memory setup for run directories and reports (see ``RunConfig.memory_label``)."""
    if not recurrent_F and not recurrent_B:
        return "none"
    if recurrent_F and recurrent_B:
        return memory
    return f"{memory}-F" if recurrent_F else f"{memory}-B"


def _build(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Builds dataclass ``cls`` from a dict, naming unknown keys as a ConfigError."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; accepted: {', '.join(sorted(names))}"
        )
    return cls(**values)


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Builds a RunConfig from a plain nested dict (a resolved hydra config or a saved one).

    Keys outside the schema (hydra's own, ``experiment``) are ignored at the top level and
    rejected inside the groups.

    Raises:
        ConfigError: an unknown key or a value out of range, naming its dotted key.
    """
    groups = {"env": EnvSettings, "train": TrainSettings, "logger": LoggerSettings}
    kwargs: dict[str, Any] = {name: _build(cls, values.get(name), f"{name}.") for name, cls in groups.items()}
    kwargs["agent"] = agent_from_dict(values.get("agent") or {}, kwargs["env"].domain)
    for key in ("seed", "device", "run_dir", "resume", "torch_threads", "seeds", "batch_seeds"):
        if key in values and values[key] is not None:
            kwargs[key] = values[key]
    cfg = RunConfig(**kwargs)
    cfg.env.eval_tasks = [str(t) for t in cfg.env.eval_tasks]
    cfg.env.train_multipliers = [float(m) for m in cfg.env.train_multipliers]
    cfg.env.eval_multipliers = [float(m) for m in cfg.env.eval_multipliers]
    return cfg


def agent_from_dict(values: dict[str, Any], domain: str) -> AgentConfig:
    """The agent config of ``values["name"]`` (default fb_m); domain-dependent fields left None
    take the domain's value (``DOMAIN_DEFAULTS``), else the config class's default.

    Raises:
        ConfigError: unknown algorithm, unknown field, or a value out of range (``agent.<field>``).
    """
    values = dict(values)
    name = values.pop("name", None) or "fb_m"
    _choice(name, ALGORITHMS, "algorithm")
    if is_memory_free(name) and (values.get("recurrent_F") or values.get("recurrent_B")):
        raise ConfigError(
            f"{name} is memory-free; use {name}_m for memory in F/pi or B (--recurrent_F / --recurrent_B)"
        )
    known = {f.name for f in dataclasses.fields(AGENTS[name][1])}
    for key in DOMAIN_DEPENDENT_FIELDS:
        if key in values and values[key] is None:
            del values[key]
    values.update(
        {
            k: v
            for k, v in DOMAIN_DEFAULTS.get(domain.split("_")[0], {}).items()
            if k in known and k not in values
        }
    )
    try:
        return make_config(name, values)
    except SettingError as error:  # "<field> must be ...": name the key the user sets
        raise ConfigError("agent." + str(error)) from None


def _choice(value: str, accepted: tuple[str, ...] | list[str], what: str) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")


def validate_names(cfg: RunConfig) -> None:
    """Checks every name and number that does not need the environment package or the data.

    Raises:
        ConfigError: naming the problem and the accepted values.
    """
    _choice(cfg.train.rollout_memory, ROLLOUT_MEMORY_MODES, "rollout memory mode (train.rollout_memory)")
    _choice(cfg.env.episode_selection, EPISODE_SELECTIONS, "episode selection (env.episode_selection)")
    longest = max(cfg.agent.memory.history_length, cfg.agent.memory.backward_history_length)
    checks = [
        (cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}"),
        (cfg.seeds >= 1, f"seeds must be >= 1, got {cfg.seeds}"),
        (
            longest <= EPISODE_LENGTH,
            f"history lengths must be <= {EPISODE_LENGTH} (an episode's length), got {longest}",
        ),
        (
            cfg.torch_threads is None or cfg.torch_threads >= 1,
            f"torch_threads must be >= 1, got {cfg.torch_threads}",
        ),
        (cfg.train.eval_rollouts >= 1, f"train.eval_rollouts must be >= 1, got {cfg.train.eval_rollouts}"),
        (cfg.train.learning_steps >= 0, f"train.learning_steps must be >= 0, got {cfg.train.learning_steps}"),
        (cfg.train.batch_size >= 1, f"train.batch_size must be >= 1, got {cfg.train.batch_size}"),
        (cfg.train.eval_frequency >= 1, f"train.eval_frequency must be >= 1, got {cfg.train.eval_frequency}"),
        (
            cfg.train.z_inference_steps >= 1,
            f"train.z_inference_steps must be >= 1, got {cfg.train.z_inference_steps}",
        ),
        (cfg.train.log_interval >= 1, f"train.log_interval must be >= 1, got {cfg.train.log_interval}"),
        (cfg.env.episodes >= 1, f"env.episodes must be >= 1, got {cfg.env.episodes}"),
        (len(cfg.env.train_multipliers) >= 1, "env.train_multipliers must name at least one multiplier"),
        (len(cfg.env.eval_multipliers) >= 1, "env.eval_multipliers must name at least one multiplier"),
        (
            all(m > 0 for m in cfg.env.train_multipliers + cfg.env.eval_multipliers),
            "mass/damping multipliers must be > 0",
        ),
        (
            cfg.train.eval_episode_length is None or cfg.train.eval_episode_length >= 1,
            f"train.eval_episode_length must be >= 1, got {cfg.train.eval_episode_length}",
        ),
        (
            cfg.logger.mode in ("offline", "online", "disabled"),
            f"unknown wandb mode {cfg.logger.mode!r}; accepted: offline, online, disabled",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for key, setting in pomdp.SETTINGS.items():
        try:
            setting.validated(f"env.{key}", getattr(cfg.env, key))
        except ValueError as error:
            raise ConfigError(str(error)) from None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens a nested dict into dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def incompatible_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring ``RESUMABLE_KEYS``."""
    a, b = flatten(saved), flatten(current)

    def resumable(key: str) -> bool:
        return any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)

    return sorted(k for k in set(a) | set(b) if not resumable(k) and a.get(k) != b.get(k))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation from the ``Attributes:`` sections of a dataclass's docstring and
    its bases', as one line."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    lines = (cls.__dict__.get("__doc__") or "").splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Attributes:"), len(lines))
    names: list[str] = []
    for line in lines[start:]:
        match = re.match(r"^ {8}(\w+(?:, \w+)*): (.*)$", line)
        if match:
            names = match.group(1).split(", ")
            docs.update({name: match.group(2).strip() for name in names})
        elif names and line.startswith(" " * 12):
            docs.update({name: docs[name] + " " + line.strip() for name in names})
        elif line.strip():
            break
    return {name: re.sub(r"(?<!\.)\.$", "", text.replace("``", "")) for name, text in docs.items()}


def field_help(key: str) -> str:
    """``"<documentation> (default <value>)"`` of a dotted RunConfig key such as ``train.batch_size``."""
    cls: Any = RunConfig
    *groups, name = key.split(".")
    for group in groups:
        cls = typing.get_type_hints(cls)[group]
        cls = typing.get_args(cls)[0] if typing.get_args(cls) else cls  # a union: its first class
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    doc = field_docs(cls)[name]
    if default is None or default == [] or "default" in doc:
        return doc  # the documentation says what an empty value means, or names the default
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{doc} (default {shown})"
