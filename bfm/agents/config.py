"""The settings FB and HILP share (``RepresentationConfig``, its ``MemoryConfig``), building them from
plain dicts, and the range and choice checks of config fields."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

MemoryName = Literal["gru", "transformer", "s4d", "mlp"]
MEMORY_TYPES: tuple[str, ...] = typing.get_args(MemoryName)


@dataclass
class MemoryConfig:
    """The memory models of F / psi, the policy and B / phi (each position owns its weights).

    Attributes:
        name: memory model of every memory position: gru, transformer, s4d or mlp (frame stacking).
        name_F: memory model of F / psi instead of ``name`` (None: ``name``).
        name_B: memory model of B / phi instead of ``name`` (None: ``name``).
        name_actor: memory model of the policy instead of ``name`` (None: ``name``).
        model_dimension: the models' size knob: GRU hidden size, transformer d_model, S4d state
            size, MLP hidden width; None: the model's default (512, 32, 32 and 512, the paper's).
        history_length: L_F, the window of F / psi and the policy (>= 1; 1 without recurrent_F).
        backward_history_length: L_B, the window of B / phi (>= 1; 1 without recurrent_B).
        settings: memory name -> extra keyword settings of that model (``token_dim``, layers,
            heads, ...; a ``model_dimension`` there wins for that model). Empty for the paper's.
    """

    name: MemoryName = "gru"
    name_F: MemoryName | None = None
    name_B: MemoryName | None = None
    name_actor: MemoryName | None = None
    model_dimension: int | None = None
    history_length: int = 32
    backward_history_length: int = 8
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)
        check_settings(self, at_least_1=("model_dimension", "history_length", "backward_history_length"))
        unknown = sorted(set(self.settings) - set(MEMORY_TYPES))
        if unknown:
            raise SettingError(
                "settings",
                f"settings names unknown memory model(s) {', '.join(unknown)}; accepted: {', '.join(MEMORY_TYPES)}",
            )

    def of(self, position: str) -> str:
        """The memory model of ``position`` in {"F", "B", "actor"}."""
        override = {"F": self.name_F, "B": self.name_B, "actor": self.name_actor}[position]
        return override or self.name


@dataclass
class RepresentationConfig:
    """Settings shared by FB and HILP (defaults: the paper's; docs/algorithms.md).

    Attributes:
        name: the algorithm: fb or fb_m (``FBConfig``), hilp or hilp_m (``HILPConfig``).
        z_dim: d, the task-embedding width (50).
        hidden_dim: preprocessor and memory-summary width (512).
        head_hidden_dim: hidden width of the F / psi heads and the actor trunk (1024).
        memory: the memory models and their windows (``MemoryConfig``).
        recurrent_F: memory in F / psi and in the policy (``fb_m`` / ``hilp_m``); forced off by
            the memory-free names ``fb`` / ``hilp``.
        recurrent_B: memory in B / phi; forced off by ``fb`` / ``hilp``.
        memory_B_output_relu: the memory B / phi summary ends in a ReLU before the sphere
            projection (the reference code's quirk; B then lies in the positive orthant).
        gamma: discount of the measure / successor-feature bootstrap (0.98).
        lr_f: Adam learning rate of F / psi (1e-4).
        lr_actor: Adam learning rate of the policy (1e-4).
        tau: Polyak rate of the F / psi (and FB's B) targets (0.01).
        z_mix_ratio: fraction of z rows taken from the representation of permuted batch goals
            instead of the sphere (0.5).
        actor_std: training action-noise std (0.2).
        actor_clip: training action-noise clip (0.3).
        grad_clamp: element-wise gradient clamp [-c, c] before every Adam step (1.0; None: off).
        inference_chunk: windows per forward pass in task inference (10,000 bounds memory).
        compile: ``torch.compile`` the loss computations of ``update`` (off by default; on a 2-core
            CPU it is slower than eager at every size measured, see docs/performance.md).
        compile_mode: ``torch.compile`` mode when ``compile``: None (inductor default),
            "reduce-overhead" (CUDA graphs on a GPU: removes kernel-launch overhead of small
            configs), "max-autotune".
        bf16: bf16 autocast around the network forwards of ``update`` (losses in fp32; off).
        tf32: allow TF32 matmuls / convolutions on CUDA (sets the process-wide torch flags when
            the agent is built on a CUDA device; off, no effect on the CPU).
        fused_adam: fused Adam kernels (one kernel for all parameters; CPU and CUDA), with the
            same update rule as the default implementation.
    """

    name: str = ""
    z_dim: int = 50
    hidden_dim: int = 512
    head_hidden_dim: int = 1024
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    recurrent_F: bool = True
    recurrent_B: bool = True
    memory_B_output_relu: bool = True
    gamma: float = 0.98
    lr_f: float = 1e-4
    lr_actor: float = 1e-4
    tau: float = 0.01
    z_mix_ratio: float = 0.5
    actor_std: float = 0.2
    actor_clip: float = 0.3
    grad_clamp: float | None = 1.0
    inference_chunk: int = 10_000
    compile: bool = False
    compile_mode: str | None = None
    bf16: bool = False
    tf32: bool = False
    fused_adam: bool = True

    def __post_init__(self) -> None:
        check_choices(self)
        check_settings(
            self,
            at_least_1=("z_dim", "hidden_dim", "head_hidden_dim", "inference_chunk"),
            positive=("lr_f", "lr_actor", "grad_clamp"),
            unit=("tau",),
            discount=("gamma",),
            fraction=("z_mix_ratio",),
            non_negative=("actor_std", "actor_clip"),
        )

    @property
    def memory_free(self) -> bool:
        """The names ``fb`` / ``hilp``: no memory anywhere."""
        return is_memory_free(self.name)

    @property
    def history_length(self) -> int:
        """L_F as the networks and the buffer see it (1 without memory in F / psi and pi)."""
        return self.memory.history_length if self.recurrent_F else 1

    @property
    def backward_history_length(self) -> int:
        """L_B as the networks and the buffer see it (1 without memory in B / phi)."""
        return self.memory.backward_history_length if self.recurrent_B else 1

    def memory_of(self, position: str) -> str:
        """The memory type of ``position`` in {"F", "B", "actor"}."""
        return self.memory.of(position)


def is_memory_free(algorithm: str) -> bool:
    """``fb`` and ``hilp`` have no memory anywhere; the ``_m`` names may have it."""
    return not algorithm.endswith("_m")


class SettingError(ValueError):
    """A config field out of range: ``field`` names it, the message reads ``"<field> must be ..."``."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def check_settings(
    config: Any,
    *,
    at_least_1: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    unit: tuple[str, ...] = (),
    discount: tuple[str, ...] = (),
    fraction: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
) -> None:
    """Range checks of config fields (None, where a field allows it, is not checked).

    ``at_least_1``: integers >= 1; ``positive``: > 0; ``unit``: in (0, 1]; ``discount``: in
    [0, 1); ``fraction``: in [0, 1]; ``non_negative``: >= 0.

    Raises:
        SettingError: ``"<field> must be ..., got <value>"`` for the first field out of range.
    """
    rules = [
        (at_least_1, lambda v: v >= 1, ">= 1"),
        (positive, lambda v: v > 0, "> 0"),
        (unit, lambda v: 0 < v <= 1, "in (0, 1]"),
        (discount, lambda v: 0 <= v < 1, "in [0, 1)"),
        (fraction, lambda v: 0 <= v <= 1, "in [0, 1]"),
        (non_negative, lambda v: v >= 0, ">= 0"),
    ]
    for names, ok, wanted in rules:
        for name in names:
            value = getattr(config, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingError(name, f"{name} must be a number {wanted}, got {value!r}")
            if not ok(value):
                raise SettingError(name, f"{name} must be {wanted}, got {value!r}")


def check_choices(config: Any) -> None:
    """Checks every field typed ``Literal[...]`` (or ``Literal[...] | None``) against its choices.

    Raises:
        SettingError: ``"<field> must be one of a, b, c, got <value>"``.
    """
    for name, hint in typing.get_type_hints(type(config)).items():
        choices = _literal_choices(hint)
        value = getattr(config, name)
        if choices and value not in choices:
            if value is None and type(None) in typing.get_args(hint):
                continue
            raise SettingError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    """The choices of ``Literal[...]`` or ``Literal[...] | None``, else ()."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds dataclass ``cls`` from a nested dict: dataclass-typed fields from their own dicts.

    Raises:
        SettingError: an unknown key, or a value out of range, with ``field`` the dotted key
            below ``cls`` (``memory.history_length``).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SettingError(unknown[0], f"{unknown[0]} is not a setting; accepted: {', '.join(sorted(names))}")
    kwargs = dict(values)
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            try:
                kwargs[name] = from_dict(hints[name], value)
            except SettingError as error:
                raise SettingError(f"{name}.{error.field}", f"{name}.{error}") from None
    return cls(**kwargs)
