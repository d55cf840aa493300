"""The settings FB and HILP share (``RepresentationConfig``) and the range checks of config fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RepresentationConfig:
    """Settings shared by FB and HILP (defaults: the paper's; README, "Algorithms").

    Attributes:
        z_dim: d, the task-embedding width (50).
        hidden_dim: preprocessor and memory-summary width (512).
        head_hidden_dim: hidden width of the F / psi heads and the actor trunk (1024).
        memory_type: memory model of every memory position: gru, transformer, s4d or mlp.
        memory_type_F: override for F / psi (None: ``memory_type``).
        memory_type_B: override for B / phi (None: ``memory_type``).
        memory_type_actor: override for the policy (None: ``memory_type``).
        model_dimension: the memory models' size knob (None: each model's default: 512 for GRU
            and MLP, 32 for transformer and S4d).
        memory_settings: memory name -> extra keyword settings for ``make_memory`` (layers,
            heads, ``token_dim``, ...). Empty for the paper models.
        history_length: L_F, the F / pi window (32).
        backward_history_length: L_B, the B / phi window (8).
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
        batch_size: training batch size (512); the buffer samples it, kept here for the record.
        inference_chunk: windows per forward pass in task inference (10,000 bounds memory).
        compile: ``torch.compile`` the loss computations of ``update`` (off by default; on a 2-core
            CPU it is slower than eager at every size measured, see README "Performance").
        compile_mode: ``torch.compile`` mode when ``compile``: None (inductor default),
            "reduce-overhead" (CUDA graphs on a GPU: removes kernel-launch overhead of small
            configs), "max-autotune".
        bf16: bf16 autocast around the network forwards of ``update`` (losses in fp32; off).
        tf32: allow TF32 matmuls / convolutions on CUDA (sets the process-wide torch flags when
            the agent is built on a CUDA device; off, no effect on the CPU).
        fused_adam: fused Adam kernels (one kernel for all parameters; CPU and CUDA), with the
            same update rule as the default implementation.
        seed: seed of the agent's own generator (z sampling, action noise, permutations).
    """

    z_dim: int = 50
    hidden_dim: int = 512
    head_hidden_dim: int = 1024
    memory_type: str = "gru"
    memory_type_F: str | None = None
    memory_type_B: str | None = None
    memory_type_actor: str | None = None
    model_dimension: int | None = None
    memory_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    history_length: int = 32
    backward_history_length: int = 8
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
    batch_size: int = 512
    inference_chunk: int = 10_000
    compile: bool = False
    compile_mode: str | None = None
    bf16: bool = False
    tf32: bool = False
    fused_adam: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_settings(
            self,
            at_least_1=(
                "z_dim",
                "hidden_dim",
                "head_hidden_dim",
                "model_dimension",
                "history_length",
                "backward_history_length",
                "batch_size",
                "inference_chunk",
            ),
            positive=("lr_f", "lr_actor", "grad_clamp"),
            unit=("tau",),
            discount=("gamma",),
            fraction=("z_mix_ratio",),
            non_negative=("actor_std", "actor_clip"),
        )

    def memory_of(self, position: str) -> str:
        """The memory type of ``position`` in {"F", "B", "actor"}."""
        override = {"F": self.memory_type_F, "B": self.memory_type_B, "actor": self.memory_type_actor}[
            position
        ]
        return override or self.memory_type


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
