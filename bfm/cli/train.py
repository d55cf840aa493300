"""Train and evaluate behaviour foundation models with memory (FB-M, HILP-M) on ExORL data.

    python main_exorl.py ALGORITHM DOMAIN DATASET [flags] [key=value ...] [-m]
    python main_exorl.py fb_m walker_flickering rnd --memory_type=gru --eval_task stand run walk flip
    python main_exorl.py fb_m walker_flickering rnd experiment=smoke -m seed=0,1 memory=gru,transformer

The paper-style flags (those of the official code's README) are translated into hydra overrides of the config
groups in ``bfm/configs/`` (agent, memory, env, train, logger, experiment); any hydra override and
``-m`` (multirun; ``hydra/launcher=joblib`` runs jobs in parallel, ``hydra/launcher=submitit_slurm``
on a cluster) may follow. Every job's config is composed and checked before the first one starts:
bad input exits with code 2 and one line naming the problem and the accepted values.

This is the only module that imports hydra; ``bfm.training`` receives plain dataclasses
(``bfm.training.config.RunConfig``). Its imports load torch and dm_control, so ``--help`` takes
about 3 s (the choices and help texts come from the registries and the config classes).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import itertools
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bfm import agents, envs
from bfm.agents import MEMORY_TYPES
from bfm.cli import errors
from bfm.data.exorl import DatasetError
from bfm.training import config as tc
from bfm.training.config import ALGORITHMS, ConfigError, RunConfig, memory_label
from bfm.training.run import check, format_summary, train
from bfm.training.trainer import NonFiniteLossError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DOMAIN_NAMES: tuple[str, ...] = tuple(envs.DOMAINS)
PROG = "main_exorl.py"

log = logging.getLogger("main_exorl")


@dataclasses.dataclass(frozen=True)
class Flag:
    """A paper-style flag: the config key it sets and how.

    Attributes:
        key: the hydra key (or config group) it sets.
        kind: value (key=value, quoted when needed), list (one or more values, key=[a,b]), group (a config group option,
            checked by ``_check_choices``; a comma list sweeps with -m), logger (the logger group:
            wandb when the flag is on, csv when off).
        type: argparse type of a value (None: text).
        boolean: ``--x`` / ``--no-x``.
        help: help text; None: the config field's documentation and default.
        aliases: other spellings.
    """

    key: str
    kind: str = "value"
    type: Callable[[str], Any] | None = None
    boolean: bool = False
    help: str | None = None
    aliases: tuple[str, ...] = ()


# Every flag, in --help order; the POMDP settings come from the POMDP registry.
FLAGS: dict[str, Flag] = {
    "memory_type": Flag(
        "memory",
        "group",
        help=f"{', '.join(MEMORY_TYPES)} (default {agents.MemoryConfig.name}; mlp: frame stacking)",
    ),
    "history_length": Flag("agent.memory.history_length", type=int),
    "backward_history_length": Flag("agent.memory.backward_history_length", type=int),
    "model_dimension": Flag("agent.memory.model_dimension", type=int),
    "recurrent_F": Flag("agent.recurrent_F", boolean=True, help="memory in F and pi"),
    "recurrent_B": Flag("agent.recurrent_B", boolean=True, help="memory in B"),
    "eval_tasks": Flag("env.eval_tasks", "list", aliases=("--eval_task",)),
    **{key: Flag(f"env.{key}", type=float) for key in envs.pomdp.SETTINGS},
    "train_multipliers": Flag("env.train_multipliers", "list", type=float),
    "eval_multipliers": Flag("env.eval_multipliers", "list", type=float),
    "learning_steps": Flag("train.learning_steps", type=int),
    "batch_size": Flag("train.batch_size", type=int),
    "episodes": Flag("env.episodes", type=int),
    "episode_selection": Flag("env.episode_selection"),
    "eval_frequency": Flag("train.eval_frequency", type=int),
    "eval_rollouts": Flag("train.eval_rollouts", type=int),
    "z_inference_steps": Flag("train.z_inference_steps", type=int),
    "rollout_memory": Flag("train.rollout_memory"),
    "seed": Flag("seed", type=int),
    "seeds": Flag("seeds", type=errors.int_at_least(1)),
    "device": Flag("device", help="auto (default), cpu, cuda, cuda:N"),
    "data_dir": Flag("env.data_dir"),
    "run_dir": Flag(
        "run_dir", help="run directory (default runs/<algorithm>/<domain>/<dataset>/<memory>/seed<seed>)"
    ),
    "wandb": Flag("logger", "logger", boolean=True, help="log to wandb (offline mode without an account)"),
}


def build_parser() -> errors.Parser:
    """The paper-style command line (``FLAGS``: the official code's flags); defaults live in bfm/configs/."""
    p = errors.Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Hydra overrides (key=value) and -m may follow, e.g. agent.lr_f=3e-4 experiment=smoke -m seed=0,1,2.",
    )
    p.add_argument("algorithm", help=f"{', '.join(ALGORITHMS)} (fb and hilp are memory-free)")
    p.add_argument(
        "domain",
        help=f"{', '.join(DOMAIN_NAMES)}, optionally {'/'.join('_' + v for v in envs.VARIANTS)} or _dynamics_X/_rewards_X",
    )
    p.add_argument("dataset", help="ExORL exploration algorithm of the dataset (rnd, random, proto, ...)")
    for name, flag in FLAGS.items():
        options: dict[str, Any] = {"dest": name, "default": None}
        if flag.boolean:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=flag.type, nargs="+" if flag.kind == "list" else None)
        help_text = flag.help if flag.help is not None else tc.field_help(flag.key)
        p.add_argument(*flag.aliases, f"--{name}", help=help_text.replace("%", "%%"), **options)
    p.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="hydra multirun: sweep over comma-separated override values",
    )
    return p


# Hydra's output directories are derived from run_dir / run_root (bfm/configs/config.yaml).
HYDRA_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")
_PLAIN_PUNCTUATION = str.maketrans("", "", "_-.:/")  # characters hydra accepts unquoted


def _hydra_value(value: Any) -> str:
    """Formats a flag value as a hydra override value (strings quoted when needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int):
        return repr(value)
    text = str(value)
    return text if text.translate(_PLAIN_PUNCTUATION).isalnum() else repr(text)


def translate(argv: list[str]) -> tuple[list[str], bool]:
    """Turns the command line into (hydra overrides, multirun).

    Tokens of the form ``key=value`` (not starting with ``-``) are passed to hydra unchanged;
    everything else goes through the paper-style parser.

    Raises:
        SystemExit: code 2 on flags argparse rejects.
    """
    hydra_args = [a for a in argv if "=" in a and not a.startswith("-")]
    for arg in hydra_args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in HYDRA_DIR_KEYS:
            errors.fail(
                PROG,
                f"{key} is not used: hydra's directories follow the run directory; set it with --run_dir DIR "
                "(or run_dir=DIR; the root of the default layout and of sweeps with run_root=DIR)",
            )
    flags = [a for a in argv if a not in hydra_args]
    hydra_args = [_expand_alias(a) for a in hydra_args]
    parser = build_parser()
    args = parser.parse_args(flags)
    _check_choices(args)
    overrides = [
        f"agent={args.algorithm}",
        f"env.domain={_hydra_value(args.domain)}",
        f"env.dataset={_hydra_value(args.dataset)}",
    ]
    for name, flag in FLAGS.items():
        value, key, kind = getattr(args, name), flag.key, flag.kind
        if value is None:
            continue
        if kind == "list":
            overrides.append(f"{key}=[{','.join(_hydra_value(v) for v in value)}]")
        elif kind == "group":
            overrides.append(f"{key}={value}")
        elif kind == "logger":
            overrides.append(f"{key}={'wandb' if value else 'csv'}")
        else:
            overrides.append(f"{key}={_hydra_value(value)}")
    return overrides + hydra_args, args.multirun


def _expand_alias(override: str) -> str:
    """``memory.<field>=...`` is short for ``agent.memory.<field>=...`` (the memory settings live in
    the agent config; the ``memory`` config group fills them)."""
    key = override.lstrip("+~")
    if key.startswith("memory."):
        return override[: len(override) - len(key)] + "agent." + key
    return override


def _with_flag(message: str) -> str:
    """Names the paper-style flag after a config key that starts a message
    (``agent.memory.history_length (--history_length) must be ...``)."""
    key, _, rest = message.partition(" ")
    flag = next((name for name, f in FLAGS.items() if f.key == key and f.kind == "value"), None)
    return f"{key} (--{flag}) {rest}" if flag and rest.startswith("must ") else message


def _check_choices(args: argparse.Namespace) -> None:
    """Rejects unknown algorithm and memory names at once (comma lists allowed with -m)."""
    for what, value, accepted in (
        ("algorithm", args.algorithm, ALGORITHMS),
        ("memory type", args.memory_type, MEMORY_TYPES),
    ):
        if value is None:
            continue
        for name in value.split(",") if args.multirun else [value]:
            if name not in accepted:
                errors.fail(PROG, f"unknown {what} {name!r}; accepted: {', '.join(accepted)}")


def _memory_label(recurrent_F: Any, recurrent_B: Any, memory: str) -> str:
    return memory_label(str(recurrent_F).lower() == "true", str(recurrent_B).lower() == "true", str(memory))


def register_configs() -> None:
    """Registers the structured schemas (training.config dataclasses, the agents' configs) and resolvers."""
    if not OmegaConf.has_resolver("memory_label"):
        OmegaConf.register_new_resolver("memory_label", _memory_label)
    cs = ConfigStore.instance()
    cs.store(group="env", name="base_env", node=tc.EnvSettings)
    cs.store(group="train", name="base_train", node=tc.TrainSettings)
    cs.store(group="logger", name="base_logger", node=tc.LoggerSettings)
    for name, config_cls in agents.CONFIGS.items():  # base_fb, base_hilp: the agent yamls' defaults
        cs.store(group="agent", name=f"base_{name}", node=_schema(config_cls))


def _schema(config_cls: type) -> Any:
    """The hydra schema of a config dataclass: the same fields and defaults, nested dataclasses as
    nested schemas, each type one OmegaConf can check (``_schema_type``).

    The agents' domain-dependent fields (``tc.DOMAIN_DEPENDENT_FIELDS``) default to None here:
    ``tc.agent_from_dict`` fills in the domain's value unless the user set one.
    """
    hints = typing.get_type_hints(config_cls)
    fields = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            nested = _schema(hints[f.name])
            fields.append((f.name, nested, dataclasses.field(default_factory=nested)))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            default = list(default)
        kind = _schema_type(hints[f.name])
        if f.name in tc.DOMAIN_DEPENDENT_FIELDS:
            default = None
            kind = Optional[kind] if kind is not Any else Any  # noqa: UP045 (OmegaConf reads typing.Optional)
        fields.append((f.name, kind, dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d))))
    return dataclasses.make_dataclass(f"{config_cls.__name__}Schema", fields)


def _schema_type(hint: Any) -> Any:
    """The OmegaConf type of a config field: int, float, bool, str (``Literal`` choices: str,
    checked by the config's own ``__post_init__``), Optional of one of them, a dict, else Any.
    Floats accept ints."""
    plain = (int, float, bool, str)
    if typing.get_origin(hint) is typing.Literal:
        return str
    if hint in plain:
        return hint
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        inner = _schema_type(inner)
        return Optional[inner] if inner in plain else Any  # noqa: UP045 (OmegaConf reads typing.Optional)
    if typing.get_origin(hint) is dict:
        return dict[str, Any]
    return Any


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs of a ``-m`` command: the cartesian product of every sweep override's values, in
    the order hydra's basic sweeper launches them (the first override varies slowest).

    Uses hydra's public override parser (``Override.sweep_string_iterator``).
    """

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def compose_jobs(overrides: list[str], multirun: bool) -> list[dict[str, Any]]:
    """Composes the resolved config of every job the command would launch."""

    job_overrides = expand_sweep(overrides) if multirun else [overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="main_exorl"):
            configs = [
                compose(config_name="config", overrides=[o for o in job if not o.startswith("hydra")])
                for job in job_overrides
            ]
            return [values for c in configs for values in expand_seeds(c)]
    finally:
        GlobalHydra.instance().clear()


def expand_seeds(composed: Any) -> list[dict[str, Any]]:
    """The resolved config of every seed of a composed job: ``seeds=K`` gives K configs with seeds
    ``seed, ..., seed + K - 1`` and the run directories those seeds resolve to.

    Raises:
        ConfigError: seeds < 1, or run directories that do not differ by seed.
    """
    seeds = composed.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1, got {seeds!r}")
    out = []
    for k in range(seeds):
        one = composed.copy()
        one.seed = composed.seed + k
        out.append(OmegaConf.to_container(one, resolve=True))
    dirs = [values["run_dir"] for values in out]
    if len(set(dirs)) < len(dirs):
        raise ConfigError(
            f"seeds={seeds} writes one run directory per seed, but run_dir {dirs[0]} does not depend on the "
            "seed; leave run_dir to its default (it ends in seed<seed>) or put ${seed} in it"
        )
    return out  # type: ignore[return-value]


def _task(hydra_cfg: Any) -> list[dict[str, Any]]:
    """Hydra job entry point: plain dataclasses from here on."""
    try:
        with errors.reported(PROG, ConfigError, DatasetError):
            cfgs = [tc.run_config_from_dict(values) for values in expand_seeds(hydra_cfg)]
            try:
                results = train(cfgs)
                for one in results:
                    print(format_summary(one))
                return results
            except (MemoryError, RuntimeError) as error:
                if not errors.out_of_memory(error):
                    raise
                raise ConfigError(
                    f"out of memory ({errors.one_line(error)[:160] or 'MemoryError'}); reduce train.batch_size, "
                    "agent.memory.history_length, the widths or env.episodes, or use another --device"
                ) from error
            except ConfigError as error:
                raise ConfigError(_with_flag(str(error))) from error
    except NonFiniteLossError as error:
        errors.fail(PROG, str(error), 1)
    except KeyboardInterrupt as error:
        errors.fail(
            PROG,
            f"interrupted ({error or 'KeyboardInterrupt'}); rerun the same command to continue from the last checkpoint",
            errors.EXIT_INTERRUPTED,
        )


def cli(argv: list[str] | None = None) -> None:
    """Parses, checks every job, then hands over to hydra (single run or multirun)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, multirun = translate(argv)
    register_configs()

    try:
        seen: dict[str, int] = {}
        for index, values in enumerate(compose_jobs(overrides, multirun)):
            cfg = check(tc.run_config_from_dict(values))
            _check_memory_settings_used(cfg, overrides, multirun)
            if cfg.run_dir in seen:
                raise ConfigError(_shared_run_dir_message(cfg.run_dir, seen[cfg.run_dir], index, overrides))
            seen[cfg.run_dir] = index
    except ConfigError as error:
        errors.fail(PROG, _with_flag(str(error)))
    except (HydraException, OmegaConfBaseException) as error:  # unknown group option, key, bad value
        errors.fail(PROG, _unknown_key_message(error, overrides, multirun) or errors.composition_error(error))

    # hydra.main reads its overrides from sys.argv: hydra has no public API that hands a list of
    # overrides to its launchers (joblib, submitit), so the translated command line goes there
    # for the call and the original comes back after it.
    original = sys.argv
    sys.argv = [original[0], *overrides, *(["--multirun"] if multirun else [])]
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_task)()
    finally:
        sys.argv = original


def _shared_run_dir_message(run_dir: str, first: int, second: int, overrides: list[str]) -> str:
    """Why two sweep jobs got one run directory, and what to do about it."""
    if any(override.split("=", 1)[0].lstrip("+~") == "run_dir" for override in overrides):
        return (
            f"--run_dir {run_dir} names one directory for a sweep of several jobs (jobs {first} and {second} "
            "would share it); leave --run_dir out (each job gets its own folder under run_root) or put the "
            "swept keys into it, e.g. 'run_dir=runs/mine/seed${seed}'"
        )
    return (
        f"sweep jobs {first} and {second} would share the run directory {run_dir}: they differ only in "
        "settings that are not part of the run's name (e.g. a memory sweep of a memory-free algorithm); "
        "remove the duplicate values"
    )


def _check_memory_settings_used(cfg: RunConfig, overrides: list[str], multirun: bool) -> None:
    """Memory settings given for a memory-free agent (F, B and pi without memory) change nothing:
    refused for a single run, a warning for a sweep (where other jobs may use them).

    Raises:
        ConfigError: a single run with such a setting.
    """
    if cfg.agent.recurrent_F or cfg.agent.recurrent_B:
        return
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    given = [k for k in keys if k == "memory" or k.startswith("agent.memory.")]
    if not given:
        return
    flags = {flag.key: name for name, flag in FLAGS.items()}
    names = ", ".join(f"--{flags[k]}" if k in flags else k for k in given)
    message = (
        f"{names} has no effect for {cfg.agent.name}: it has no memory (F, B and the policy see one step); "
        f"use {cfg.agent.name}_m for a memory model, or drop the setting"
    )
    if not multirun:
        raise ConfigError(message)
    log.warning("%s: warning: %s", PROG, message)


def _unknown_key_message(error: BaseException, overrides: list[str], multirun: bool) -> str | None:
    """For an override of a key the config does not have: the key, then the keys its parent node
    accepts, nearest matches first (the config composed without that override tells them)."""
    cause = error.__cause__ or error.__context__
    match = re.match(r"Could not override '([^']+)'", str(error))
    if not match or "not in" not in f"{error} {cause}":
        return None
    key = match.group(1)
    parent = key.rpartition(".")[0]
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        composed = compose_jobs(rest, multirun)[0]
    except (HydraException, OmegaConfBaseException, ConfigError):
        return None
    node: Any = composed
    known = ""
    for part in parent.split(".") if parent else []:
        if not isinstance(node, dict) or part not in node:
            break
        node, known = node[part], f"{known}.{part}".lstrip(".")
    if not isinstance(node, dict):
        return None
    accepted = sorted(k for k in node if not str(k).startswith("_"))
    if known.endswith("memory.settings"):  # per-model settings: one entry per registered memory model
        accepted = sorted(set(accepted) | set(MEMORY_TYPES))
    unknown = key.split(".")[len(known.split(".")) if known else 0]  # the first part not found
    nearest = difflib.get_close_matches(unknown, accepted, n=3, cutoff=0.5)
    order = nearest + [k for k in accepted if k not in nearest]
    where = f"keys of {known}" if known else "top-level keys"
    return f"unknown config key {key} ({unknown!r} is not a key of {known or 'the config'}); accepted {where}: {', '.join(order)}"


if __name__ == "__main__":
    cli()
