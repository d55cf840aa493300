"""Networks shared by FB and HILP: preprocessors, F / psi, B / phi, the policy, action noise.

Every network takes *windows* (oldest row first) so that the same call works with and without
memory: a memory-free network reads only the last row, a memory network encodes the whole window
with its own memory model (``memory.make_memory``). Token pairings (``data.batch``):

- F / psi: tokens (o_k, a_k), a_k the action taken at o_k (the current action is the last token);
- pi: tokens (o_k, a_{k-1}), each observation with the action that led to it;
- B / phi: tokens (g_k, a_k), g the B-stream observation, a_k the action taken at g_k.

Widths follow the official code (enjeeneer/bfms-with-memory): 512-wide preprocessors
(Linear -> LayerNorm -> tanh -> Linear -> ReLU), 1024-wide F heads and actor trunk.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from data.batch import Batch

State = tuple[torch.Tensor, ...]


def preprocessor(input_dim: int, width: int) -> nn.Sequential:
    """The reference "preprocessor" MLP: in -> width -> LayerNorm -> tanh -> width -> ReLU."""
    return nn.Sequential(
        nn.Linear(input_dim, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, width), nn.ReLU()
    )


def project_to_sphere(x: torch.Tensor) -> torch.Tensor:
    """Projects rows of x [..., d] onto the sphere of radius sqrt(d)."""
    return math.sqrt(x.shape[-1]) * nn.functional.normalize(x, dim=-1)


def build_memory(
    memory_type: str,
    input_dim: int,
    output_dim: int,
    context_length: int,
    model_dimension: int | None,
    output_activation: bool,
    settings: dict[str, dict[str, Any]] | None,
    defaults: dict[str, dict[str, Any]] | None = None,
) -> nn.Module:
    """Builds a memory model through ``memory.make_memory`` (imported lazily).

    Args:
        memory_type: gru, transformer, s4d or mlp.
        input_dim: token width.
        output_dim: summary width.
        context_length: training window length.
        model_dimension: the model's size knob, None for the model default.
        output_activation: end the summary with a ReLU.
        settings: memory name -> extra keyword settings for that model (e.g. ``token_dim``;
            a ``model_dimension`` there overrides the argument for that memory type).
        defaults: memory name -> settings of this position that ``settings`` may override.
    """
    from memory import make_memory

    extra = {**(defaults or {}).get(memory_type, {}), **(settings or {}).get(memory_type, {})}
    model_dimension = extra.pop("model_dimension", model_dimension)  # a per-type setting wins
    return make_memory(
        memory_type,
        input_dim,
        output_dim,
        context_length=context_length,
        model_dimension=model_dimension,
        output_activation=output_activation,
        **extra,
    )


class TwinHead(nn.Module):
    """Two MLP heads in -> hidden -> ReLU -> out, evaluated as one fused computation.

    Equivalent to two independent ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)`` heads
    with PyTorch's default initialisation: the first layers share their input, so they are one
    Linear(in, 2 * hidden); the second layers are one batched matmul. Fewer, larger kernels.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.hidden_dim = num_heads, hidden_dim
        self.first = nn.Linear(input_dim, num_heads * hidden_dim)
        bound = 1.0 / math.sqrt(hidden_dim)  # nn.Linear's default init for fan_in = hidden_dim
        self.weight = nn.Parameter(torch.empty(num_heads, hidden_dim, output_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_heads, 1, output_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps x [N, in] to [num_heads, N, out]."""
        h = torch.relu(self.first(x))  # [N, K * hidden]
        h = h.view(x.shape[0], self.num_heads, self.hidden_dim).transpose(0, 1)  # [K, N, hidden]
        return torch.baddbmm(self.bias, h, self.weight)  # [K, N, out]


class HistoryNetwork(nn.Module):
    """What F / psi and pi share: history features ++ preprocessor(o_t ++ z), fed to a head.

    The history features [N, hidden] come from a memory model over the window's (o_k, a_k) tokens
    when ``recurrent``; without memory, from a preprocessor of the last row alone: o_t ++ a_t when
    the subclass sets ``memoryless_reads_action`` (F), o_t otherwise (pi). Subclasses add the head.

    Args:
        obs_dim: F/pi-stream observation width.
        action_dim: action width.
        z_dim: d.
        recurrent: use a memory model over the window.
        memory_type, model_dimension, context_length, memory_settings: memory model settings.
        hidden_dim: preprocessor / memory summary width (512).
    """

    memoryless_reads_action: bool

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        z_dim: int,
        *,
        recurrent: bool,
        memory_type: str = "gru",
        model_dimension: int | None = None,
        context_length: int = 32,
        memory_settings: dict[str, dict[str, Any]] | None = None,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        self.recurrent, self.hidden_dim = recurrent, hidden_dim
        if recurrent:
            self.history_encoder = build_memory(
                memory_type,
                obs_dim + action_dim,
                hidden_dim,
                context_length,
                model_dimension,
                True,
                memory_settings,
            )
        else:
            memoryless_dim = obs_dim + action_dim if self.memoryless_reads_action else obs_dim
            self.history_encoder = preprocessor(memoryless_dim, hidden_dim)
        self.obs_z_encoder = preprocessor(obs_dim + z_dim, hidden_dim)

    def _memoryless_input(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, action], dim=-1) if self.memoryless_reads_action else obs

    def history_features(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Encodes the window obs [N, L, o] with each row's token action [N, L, a] into [N, hidden]."""
        if self.recurrent:
            return self.history_encoder(torch.cat([obs, action], dim=-1))  # [N, hidden]
        return self.history_encoder(self._memoryless_input(obs[:, -1], action[:, -1]))  # [N, hidden]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State | None:
        """Carry-mode state before the first step (None without memory)."""
        return self.history_encoder.initial_state(batch_size, device) if self.recurrent else None

    def prefix_state(self, obs: torch.Tensor, action: torch.Tensor) -> State | None:
        """Memory state after the window prefix obs [N, L-1, o], action [N, L-1, a] (None without memory)."""
        if not self.recurrent:
            return None
        return self.history_encoder.encode(torch.cat([obs, action], dim=-1))

    def step_features(
        self, obs: torch.Tensor, action: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        """Feeds the token (obs [N, o], action [N, a]) after ``state``; returns (features [N, hidden], state)."""
        if not self.recurrent:
            return self.history_encoder(self._memoryless_input(obs, action)), state  # [N, hidden]
        return self.history_encoder.step(torch.cat([obs, action], dim=-1), state)

    def joint_features(self, features: torch.Tensor, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The head input [N, 2 hidden]: history features [N, hidden] ++ preprocessor(o_t [N, o] ++ z [N, d])."""
        oz = self.obs_z_encoder(torch.cat([obs, z], dim=-1))  # [N, hidden]
        return torch.cat([features, oz], dim=-1)  # [N, 2 hidden]


class ForwardMap(HistoryNetwork):
    """F(h, a, z) (and HILP's psi): history features ++ preprocessor(o_t ++ z) -> two heads.

    With memory, the history features are a memory model over the (o_k, a_k) tokens (512); without,
    preprocessor(o_t ++ a_t) (512). Both heads share the trunk (as in the reference code).

    Args:
        obs_dim, action_dim, z_dim: widths.
        head_hidden_dim: head hidden width (1024).
        **settings: the ``HistoryNetwork`` settings (recurrent, memory settings, hidden_dim).
    """

    memoryless_reads_action = True

    def __init__(
        self, obs_dim: int, action_dim: int, z_dim: int, *, head_hidden_dim: int = 1024, **settings: Any
    ) -> None:
        super().__init__(obs_dim, action_dim, z_dim, **settings)
        self.heads = TwinHead(2 * self.hidden_dim, head_hidden_dim, z_dim)

    def heads_from_features(self, features: torch.Tensor, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Both heads [2, N, d] from history features [N, hidden], o_t [N, o] and z [N, d]."""
        return self.heads(self.joint_features(features, obs, z))  # [2, N, d]

    def forward(self, obs: torch.Tensor, action: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """F of a window.

        Args:
            obs: [N, L, o] observations, the last row o_t.
            action: [N, L, a] action taken at each row, the last row a_t.
            z: [N, d].

        Returns:
            [2, N, d], the two heads.
        """
        return self.heads_from_features(self.history_features(obs, action), obs[:, -1], z)


class BackwardMap(nn.Module):
    """B(g-window) (and HILP's phi_k) projected onto the sphere of radius sqrt(d).

    Without memory: g_t -> 512 -> LayerNorm -> tanh -> 512 -> ReLU -> d. With memory: a memory
    model over the (g_k, a_k) tokens whose summary head maps to d, ending in a ReLU when
    ``memory_output_relu`` (the reference code's quirk, kept by default: B then lies in the
    positive orthant). Frame stacking (``mlp``) has one MLP layer here, as in the reference,
    unless ``memory_settings`` set ``num_layers``.

    Args:
        goal_dim: B-stream observation width.
        action_dim: action width.
        z_dim: d.
        recurrent: use a memory model over the window.
        memory_type, model_dimension, context_length, memory_settings: memory model settings.
        hidden_dim: MLP width (512).
        memory_output_relu: keep the ReLU before the projection in the memory version.
        sphere: project onto the sphere (FB always; HILP phi by default).
    """

    def __init__(
        self,
        goal_dim: int,
        action_dim: int,
        z_dim: int,
        *,
        recurrent: bool,
        memory_type: str = "gru",
        model_dimension: int | None = None,
        context_length: int = 8,
        memory_settings: dict[str, dict[str, Any]] | None = None,
        hidden_dim: int = 512,
        memory_output_relu: bool = True,
        sphere: bool = True,
    ) -> None:
        super().__init__()
        self.recurrent, self.sphere = recurrent, sphere
        if recurrent:
            self.net = build_memory(
                memory_type,
                goal_dim + action_dim,
                z_dim,
                context_length,
                model_dimension,
                memory_output_relu,
                memory_settings,
                defaults={"mlp": {"num_layers": 1}},  # the reference's frame-stacking B: no extra layer
            )
        else:
            self.net = nn.Sequential(preprocessor(goal_dim, hidden_dim), nn.Linear(hidden_dim, z_dim))

    def forward(self, goal: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """B of a window.

        Args:
            goal: [N, L, g] B-stream observations, the last row the represented state.
            action: [N, L, a] action taken at each row (unused without memory).

        Returns:
            [N, d] (on the sphere of radius sqrt(d) when ``sphere``).
        """
        if self.recurrent:
            out = self.net(torch.cat([goal, action], dim=-1))  # [N, d]
        else:
            out = self.net(goal[:, -1])  # [N, d]
        return project_to_sphere(out) if self.sphere else out


class Actor(HistoryNetwork):
    """pi(h, z): history features ++ preprocessor(o_t ++ z) -> 1024 -> ReLU -> |A| -> tanh = mu.

    With memory, the history features come from the actor's own memory model over (o_k, a_{k-1})
    tokens; without memory, preprocessor(o_t) (the reference ``ActorModel``).

    Args:
        obs_dim, action_dim, z_dim: widths.
        head_hidden_dim: trunk hidden width (1024).
        **settings: the ``HistoryNetwork`` settings (recurrent, memory settings, hidden_dim).
    """

    memoryless_reads_action = False

    def __init__(
        self, obs_dim: int, action_dim: int, z_dim: int, *, head_hidden_dim: int = 1024, **settings: Any
    ) -> None:
        super().__init__(obs_dim, action_dim, z_dim, **settings)
        self.trunk = nn.Sequential(
            nn.Linear(2 * self.hidden_dim, head_hidden_dim), nn.ReLU(), nn.Linear(head_hidden_dim, action_dim)
        )

    def _mu(self, features: torch.Tensor, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.trunk(self.joint_features(features, obs, z)))  # [N, A]

    def forward(self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The mean action mu of a window.

        Args:
            obs: [N, L, o] observations, the last row o_t.
            prev_action: [N, L, a] the action that led to each row.
            z: [N, d].

        Returns:
            mu [N, A] in (-1, 1).
        """
        return self._mu(self.history_features(obs, prev_action), obs[:, -1], z)

    def step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        """Carry mode: feeds obs [N, o] with the action that led to it [N, a]; returns (mu [N, A], state)."""
        features, state = self.step_features(obs, prev_action, state)  # [N, hidden]
        return self._mu(features, obs, z), state


def sample_action(mu: torch.Tensor, noise: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """Training action mu + clip(std * eps, -clip, clip), clamped to [-1, 1].

    The clamp passes gradients straight through (the reference ``TruncatedNormal``), so the
    reparameterised actor gradient is d mu even where the clamp is active.

    Args:
        mu: [N, A] mean action.
        noise: [N, A] standard normal eps (drawn by the caller from its generator).
        std: noise std (0.2).
        clip: noise clip (0.3).
    """
    x = mu + (std * noise).clamp(-clip, clip)  # [N, A]
    return x - x.detach() + x.detach().clamp(-1.0, 1.0)


class FeatureCentring(nn.Module):
    """Running mean of features (EMA), subtracted from HILP's exposed phi.

    Args:
        dim: feature width d.
        momentum: EMA weight of each new batch mean (0.005, the reference value).
    """

    def __init__(self, dim: int, momentum: float = 0.005) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(dim))

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Moves the running mean towards the batch mean of features [N, d] (in place, no sync)."""
        self.mean.lerp_(features.mean(dim=0), self.momentum)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Centred features [..., d]."""
        return features - self.mean


# --------------------------------------------------------------------------------------------
# Shared agent machinery: the config fields FB and HILP have in common, target and gradient
# helpers, and the acting / inference / state-dict half of an agent.
# --------------------------------------------------------------------------------------------


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
        ValueError: ``"<field> must be ..., got <value>"`` for the first field out of range.
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
                raise ValueError(f"{name} must be a number {wanted}, got {value!r}")
            if not ok(value):
                raise ValueError(f"{name} must be {wanted}, got {value!r}")


def history_network_settings(config: RepresentationConfig, position: str) -> dict[str, Any]:
    """Constructor settings of F / psi (``position="F"``) or pi (``"actor"``): both have memory iff
    ``recurrent_F`` and read L_F windows."""
    return {
        "recurrent": config.recurrent_F,
        "memory_type": config.memory_of(position),
        "model_dimension": config.model_dimension,
        "context_length": config.history_length,
        "memory_settings": config.memory_settings,
        "hidden_dim": config.hidden_dim,
        "head_hidden_dim": config.head_hidden_dim,
    }


def build_forward(obs_dim: int, action_dim: int, config: RepresentationConfig) -> ForwardMap:
    """F / psi as configured."""
    return ForwardMap(obs_dim, action_dim, config.z_dim, **history_network_settings(config, "F"))


def build_backward(
    goal_dim: int, action_dim: int, config: RepresentationConfig, sphere: bool = True
) -> BackwardMap:
    """B / phi_k as configured."""
    return BackwardMap(
        goal_dim,
        action_dim,
        config.z_dim,
        recurrent=config.recurrent_B,
        memory_type=config.memory_of("B"),
        model_dimension=config.model_dimension,
        context_length=config.backward_history_length,
        memory_settings=config.memory_settings,
        hidden_dim=config.hidden_dim,
        memory_output_relu=config.memory_B_output_relu,
        sphere=sphere,
    )


def build_actor(obs_dim: int, action_dim: int, config: RepresentationConfig) -> Actor:
    """The policy as configured (memory iff ``recurrent_F``)."""
    return Actor(obs_dim, action_dim, config.z_dim, **history_network_settings(config, "actor"))


def make_adam(
    groups: list[dict[str, Any]] | list[nn.Parameter],
    lr: float,
    config: RepresentationConfig,
    device: torch.device,
) -> torch.optim.Adam:
    """Adam over ``groups`` (parameters or parameter groups), fused when ``config.fused_adam`` and
    the device supports it (CPU and CUDA)."""
    fused = config.fused_adam and device.type in ("cpu", "cuda")
    return torch.optim.Adam(groups, lr=lr, fused=fused or None)


def maybe_compile(fn: Callable, config: RepresentationConfig) -> Callable:
    """``torch.compile(fn, mode=config.compile_mode)`` when ``config.compile``, else fn.

    Sets ``torch._dynamo.config.allow_rnn`` (process-wide) so that the GRU memory is traced into
    the graph instead of breaking it (dynamo's default for ``nn.GRU``), and raises the
    recompile limit: each agent's loss functions are compiled per grad mode and call site.
    """
    if not config.compile:
        return fn
    import torch._dynamo

    torch._dynamo.config.allow_rnn = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(fn, mode=config.compile_mode)


def configure_device(config: RepresentationConfig, device: torch.device) -> None:
    """Applies the process-wide precision flags a config asks for (TF32 on CUDA)."""
    if config.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_target(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (a target network)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- target + tau (online - target) for every parameter; buffers are copied."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


def clamp_gradients(params: list[nn.Parameter], bound: float | None) -> None:
    """Clamps every gradient element to [-bound, bound] in place (no-op for None)."""
    grads = [p.grad for p in params if p.grad is not None]
    if bound is None or not grads:
        return
    torch._foreach_clamp_min_(grads, -bound)
    torch._foreach_clamp_max_(grads, bound)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter], bound: float | None
) -> None:
    """zero_grad, backward into ``params`` only, element-wise clamp, Adam step.

    ``backward(inputs=params)`` skips weight gradients of every other network in the graph
    (e.g. F's weights in the actor loss), which the reference code computes and discards.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    clamp_gradients(params, bound)
    optimizer.step()


def offdiag_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the off-diagonal entries of x [..., n, n], as (sum - trace) / (n (n - 1))."""
    n = x.shape[-1]
    return (x.sum(dim=(-2, -1)) - x.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def last_rows(window: torch.Tensor, recurrent: bool) -> torch.Tensor:
    """The window itself for a memory network, only its last row [N, 1, .] otherwise."""
    return window if recurrent else window[:, -1:]


class AgentBase:
    """The acting half shared by FB and HILP agents; subclasses build ``self.model`` and update.

    The model must have ``forward_map`` (F or psi, a ``ForwardMap``) and ``actor`` (an ``Actor``)
    and implement ``infer_z``; the agent must have ``target_forward``.
    """

    name: str
    config: RepresentationConfig
    model: nn.Module
    device: torch.device

    @property
    def batch_spec(self) -> Any:
        """What this algorithm's training batches hold (``data.batch.BatchSpec``, from its config)."""
        return self.config.batch_spec()

    def _setup_generator(self) -> None:
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.config.seed)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)

    def _z_draws(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random parts of z sampling, in this order: sphere z [n, d], a batch permutation [n],
        and the rows [n, 1] (a ``z_mix_ratio`` fraction) that take a goal's z instead."""
        z = project_to_sphere(self._randn(n, self.config.z_dim))  # [n, d]
        perm = torch.randperm(n, generator=self.generator, device=self.device)  # [n]
        mix = (
            torch.rand(n, 1, generator=self.generator, device=self.device) < self.config.z_mix_ratio
        )  # [n, 1]
        return z, perm, mix

    def next_policy(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """mu = pi(h_{t+1}, z) [n, A] with gradient, shared by the target action and the actor loss."""
        rec = self.model.actor.recurrent
        obs = last_rows(batch.obs_window[:, 1:], rec)  # [n, L_F or 1, o]
        prev = last_rows(batch.prev_action_window[:, 1:], rec)  # [n, L_F or 1, a]
        return self.model.actor(obs, prev, z)

    def target_forward_next(
        self, batch: Batch, z: torch.Tensor, next_mu: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Target F / psi heads [2, n, d] (fp32) at (h_{t+1}, a', z), a' = next_mu [n, A] plus clipped noise."""
        cfg, rec = self.config, self.model.forward_map.recurrent
        next_action = sample_action(next_mu, noise, cfg.actor_std, cfg.actor_clip)  # [n, A]
        act_next = torch.cat([batch.prev_action_window[:, 2:], next_action[:, None]], dim=1)  # [n, L_F, a]
        obs_next = last_rows(batch.obs_window[:, 1:], rec)  # [n, L_F or 1, o]
        return self.target_forward(obs_next, last_rows(act_next, rec), z).float()  # [2, n, d]

    def policy_q(
        self, batch: Batch, z: torch.Tensor, next_mu: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """min_k F_k(h_{t+1}, a, z) . z [n], a = next_mu [n, A] plus clipped noise, reparameterised.

        Only the last token of F's window depends on a: with memory, the prefix is encoded
        without gradients (``memory.encode``) and the last token is stepped with gradients,
        which gives the same actor gradient as encoding the whole window.
        """
        cfg, fmap = self.config, self.model.forward_map
        action = sample_action(next_mu, noise, cfg.actor_std, cfg.actor_clip)  # [n, A]
        obs_next = batch.obs_window[:, -1]  # [n, o]
        with self._autocast():
            with torch.no_grad():
                state = fmap.prefix_state(batch.obs_window[:, 1:-1], batch.prev_action_window[:, 2:])
            features, _ = fmap.step_features(obs_next, action, state)  # [n, hidden]
            F = fmap.heads_from_features(features, obs_next, z).float()  # [2, n, d]
        return (F * z[None]).sum(-1).min(dim=0).values  # [n]

    def act(
        self, obs_window: torch.Tensor, prev_action_window: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """Deterministic actions mu (sliding-window mode). See the model's ``act``."""
        return self.model.act(obs_window, prev_action_window, z)

    def initial_actor_state(self, n: int) -> State | None:
        """Carry-mode actor state for n episodes (None without memory)."""
        return self.model.actor.initial_state(n, self.device)

    def act_step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        """Carry mode: one step from a carried state. See the model's ``act_step``."""
        return self.model.act_step(obs, prev_action, z, state)

    def infer_z(
        self, goal_window: torch.Tensor, goal_action_window: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Zero-shot task inference. See the model's ``infer_z``."""
        return self.model.infer_z(goal_window, goal_action_window, reward)

    # Subclasses list what they own.
    def _modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, targets, optimizers, generator state."""
        return {
            "modules": {k: m.state_dict() for k, m in self._modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self._optimizers().items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned (strict)."""
        for k, m in self._modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self._optimizers().items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())


def inference(method: Callable) -> Callable:
    """Decorator for model inference methods: no_grad and eval mode (dropout off), restored after."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


class InferenceMixin:
    """Acting API shared by the FB and HILP models (``self.actor`` is an ``Actor``)."""

    actor: Actor
    config: RepresentationConfig

    def _device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]

    @inference
    def act(
        self, obs_window: torch.Tensor, prev_action_window: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """Deterministic actions from windows (the sliding-window rollout mode, as in training).

        Args:
            obs_window: [N, L_F, o] the last L_F F-stream observations, the last row o_t
                (slots before the episode start padded as in training).
            prev_action_window: [N, L_F, a] the action that led to each row (zeros at the start).
            z: [N, d] or [d].

        Returns:
            mu [N, a].
        """
        dev = self._device()
        n = obs_window.shape[0]
        z = z.to(dev).expand(n, -1) if z.dim() == 1 else z.to(dev)
        recurrent = self.actor.recurrent
        obs = last_rows(obs_window, recurrent).to(dev)
        prev = last_rows(prev_action_window, recurrent).to(dev)
        return self.actor(obs, prev, z)

    @inference
    def act_step(
        self, obs: torch.Tensor, prev_action: torch.Tensor, z: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        """Carry mode: feeds obs [N, o] with the action that led to it [N, a] (zeros at the
        first step); returns (mu [N, a], new state). Start from ``actor.initial_state(N)``."""
        dev = self._device()
        z = z.to(dev).expand(obs.shape[0], -1) if z.dim() == 1 else z.to(dev)
        return self.actor.step(obs.to(dev), prev_action.to(dev), z, state)

    def _goal_windows_in_chunks(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        recurrent: bool,
        goal_window: torch.Tensor,
        goal_action_window: torch.Tensor,
    ) -> torch.Tensor:
        """fn over windows [N, L, .] (their last rows when not ``recurrent``), ``config.inference_chunk``
        rows at a time moved to the model's device, concatenated to [N, ...]."""
        g, a = last_rows(goal_window, recurrent), last_rows(goal_action_window, recurrent)
        chunk, device = self.config.inference_chunk, self._device()
        outs = [
            fn(g[i : i + chunk].to(device), a[i : i + chunk].to(device)) for i in range(0, g.shape[0], chunk)
        ]
        return torch.cat(outs, dim=0)
