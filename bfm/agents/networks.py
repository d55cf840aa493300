"""Networks shared by FB and HILP: the preprocessor MLP, F / psi (``ForwardMap``, with its fused
``TwinHead``), B / phi (``BackwardMap``), the policy (``Actor``), the training action noise
(``sample_action``), HILP's feature centring (``FeatureCentring``), and ``build_forward`` /
``build_backward`` / ``build_actor``, which build them from an agent config.

Every network takes *windows* (oldest row first) so that the same call works with and without
memory: a memory-free network reads only the last row, a memory network encodes the whole window
with its own memory model (``memory.make_memory``). Token pairings (``data.batch``):

- F / psi: tokens (o_k, a_k), a_k the action taken at o_k (the current action is the last token);
- pi: tokens (o_k, a_{k-1}), each observation with the action that led to it;
- B / phi: tokens (g_k, a_k), g the goal-stream observation, a_k the action taken at g_k.

The widths come from the config (``hidden_dim``, ``head_hidden_dim``); its defaults follow the
official code (enjeeneer/bfms-with-memory): 512-wide preprocessors (Linear -> LayerNorm -> tanh ->
Linear -> ReLU), 1024-wide F heads and actor trunk.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bfm.agents.config import RepresentationConfig
from bfm.memory import State, TokenMLP, make_memory


def preprocessor(input_dim: int, width: int) -> nn.Sequential:
    """The reference "preprocessor" MLP: in -> width -> LayerNorm -> tanh -> width -> ReLU.

    The same network as the memory models' per-token MLP (``memory.TokenMLP``); its layers are
    used directly so that the parameter names (``0.weight``, ...) stay those of the checkpoints.
    """
    return TokenMLP(input_dim, width).net


def project_to_sphere(x: torch.Tensor) -> torch.Tensor:
    """Projects rows of x [..., d] onto the sphere of radius sqrt(d)."""
    return math.sqrt(x.shape[-1]) * nn.functional.normalize(x, dim=-1)


def build_memory(
    memory_type: str,
    input_dim: int,
    output_dim: int,
    history_length: int,
    model_dimension: int | None,
    output_relu: bool,
    settings: dict[str, dict[str, Any]] | None,
    defaults: dict[str, dict[str, Any]] | None = None,
) -> nn.Module:
    """Builds a memory model through ``memory.make_memory``.

    Args:
        memory_type: gru, transformer, s4d or mlp.
        input_dim: token width.
        output_dim: summary width.
        history_length: training window length.
        model_dimension: the model's size knob, None for the model default.
        output_relu: end the summary with a ReLU.
        settings: memory name -> extra keyword settings for that model (e.g. ``token_dim``;
            a ``model_dimension`` there overrides the argument for that memory type).
        defaults: memory name -> settings of this position that ``settings`` may override.
    """
    extra = {**(defaults or {}).get(memory_type, {}), **(settings or {}).get(memory_type, {})}
    model_dimension = extra.pop("model_dimension", model_dimension)  # a per-type setting wins
    return make_memory(
        memory_type,
        input_dim,
        output_dim,
        history_length=history_length,
        model_dimension=model_dimension,
        output_relu=output_relu,
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
        obs_dim: obs-stream observation width.
        action_dim: action width.
        z_dim: d.
        recurrent: use a memory model over the window.
        memory_type, model_dimension, history_length, memory_settings: memory model settings.
        hidden_dim: preprocessor / memory summary width (512 in the paper).
    """

    memoryless_reads_action: bool

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        z_dim: int,
        *,
        recurrent: bool,
        memory_type: str,
        model_dimension: int | None,
        history_length: int,
        memory_settings: dict[str, dict[str, Any]] | None,
        hidden_dim: int,
    ) -> None:
        super().__init__()
        self.recurrent, self.hidden_dim = recurrent, hidden_dim
        if recurrent:
            self.history_encoder = build_memory(
                memory_type,
                obs_dim + action_dim,
                hidden_dim,
                history_length,
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
        self, obs: torch.Tensor, action: torch.Tensor, state: State | None, need_state: bool = True
    ) -> tuple[torch.Tensor, State | None]:
        """Feeds the token (obs [N, o], action [N, a]) after ``state``; returns (features [N, hidden],
        the new state, or None when not ``need_state``: the memory may then skip computing it)."""
        if not self.recurrent:
            return self.history_encoder(self._memoryless_input(obs, action)), state  # [N, hidden]
        token = torch.cat([obs, action], dim=-1)
        if not need_state:
            return self.history_encoder.step_summary(token, state), None
        return self.history_encoder.step(token, state)

    def joint_features(self, features: torch.Tensor, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The head input [N, 2 hidden]: history features [N, hidden] ++ preprocessor(o_t [N, o] ++ z [N, d])."""
        oz = self.obs_z_encoder(torch.cat([obs, z], dim=-1))  # [N, hidden]
        return torch.cat([features, oz], dim=-1)  # [N, 2 hidden]


class ForwardMap(HistoryNetwork):
    """F(h, a, z) (and HILP's psi): history features ++ preprocessor(o_t ++ z) -> two heads.

    With memory, the history features are a memory model over the (o_k, a_k) tokens; without,
    preprocessor(o_t ++ a_t) (both ``hidden_dim`` wide). Both heads share the trunk (as in the
    reference code).

    Args:
        obs_dim, action_dim, z_dim: widths.
        head_hidden_dim: head hidden width (1024 in the paper).
        **settings: the ``HistoryNetwork`` settings (recurrent, memory settings, hidden_dim).
    """

    memoryless_reads_action = True

    def __init__(
        self, obs_dim: int, action_dim: int, z_dim: int, *, head_hidden_dim: int, **settings: Any
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

    Without memory: g_t -> hidden -> LayerNorm -> tanh -> hidden -> ReLU -> d. With memory: a memory
    model over the (g_k, a_k) tokens whose summary head maps to d, ending in a ReLU when
    ``memory_output_relu`` (the reference code's quirk, the config's default: B then lies in the
    positive orthant). Frame stacking (``mlp``) has one MLP layer here, as in the reference,
    unless ``memory_settings`` set ``num_layers``.

    Args:
        goal_dim: goal-stream observation width.
        action_dim: action width.
        z_dim: d.
        recurrent: use a memory model over the window.
        memory_type, model_dimension, history_length, memory_settings: memory model settings.
        hidden_dim: MLP width (512 in the paper).
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
        memory_type: str,
        model_dimension: int | None,
        history_length: int,
        memory_settings: dict[str, dict[str, Any]] | None,
        hidden_dim: int,
        memory_output_relu: bool,
        sphere: bool,
    ) -> None:
        super().__init__()
        self.recurrent, self.sphere = recurrent, sphere
        if recurrent:
            self.net = build_memory(
                memory_type,
                goal_dim + action_dim,
                z_dim,
                history_length,
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
            goal: [N, L, g] goal-stream observations, the last row the represented state.
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
    """pi(h, z): history features ++ preprocessor(o_t ++ z) -> head_hidden -> ReLU -> |A| -> tanh = mu.

    With memory, the history features come from the actor's own memory model over (o_k, a_{k-1})
    tokens; without memory, preprocessor(o_t) (the reference ``ActorModel``).

    Args:
        obs_dim, action_dim, z_dim: widths.
        head_hidden_dim: trunk hidden width (1024 in the paper).
        **settings: the ``HistoryNetwork`` settings (recurrent, memory settings, hidden_dim).
    """

    memoryless_reads_action = False

    def __init__(
        self, obs_dim: int, action_dim: int, z_dim: int, *, head_hidden_dim: int, **settings: Any
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
        # out of place, then copied: vmap (several seeds, agents.seeds) cannot batch lerp_
        self.mean.copy_(torch.lerp(self.mean, features.mean(dim=0), self.momentum))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Centred features [..., d]."""
        return features - self.mean


# --------------------------------------------------------------------------------------------
# The networks as an agent config sets them up.
# --------------------------------------------------------------------------------------------


def history_network_settings(config: RepresentationConfig, position: str) -> dict[str, Any]:
    """Constructor settings of F / psi (``position="F"``) or pi (``"actor"``): both have memory iff
    ``recurrent_F`` and read L_F windows."""
    return {
        "recurrent": config.recurrent_F,
        "memory_type": config.memory_of(position),
        "model_dimension": config.memory.model_dimension,
        "history_length": config.history_length,
        "memory_settings": config.memory.settings,
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
        model_dimension=config.memory.model_dimension,
        history_length=config.backward_history_length,
        memory_settings=config.memory.settings,
        hidden_dim=config.hidden_dim,
        memory_output_relu=config.memory_B_output_relu,
        sphere=sphere,
    )


def build_actor(obs_dim: int, action_dim: int, config: RepresentationConfig) -> Actor:
    """The policy as configured (memory iff ``recurrent_F``)."""
    return Actor(obs_dim, action_dim, config.z_dim, **history_network_settings(config, "actor"))
