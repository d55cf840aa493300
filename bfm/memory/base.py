"""The interface every memory model implements, and the layers they all share.

A memory model summarises a window of tokens [B, L, in] into one vector [B, out]. It runs in two
modes that give the same result on the same tokens:

- window mode, ``forward(tokens)``: the whole window at once (training, sliding-window rollouts);
- step mode, ``step(token, state)``: one token at a time with an explicit carried state, starting
  from ``initial_state(batch_size, device)`` (carry-mode rollouts), or from ``encode(prefix)``,
  the state after a window prefix. ``step(x, encode(prefix))`` equals ``forward(cat(prefix, x))``,
  which lets an agent encode the prefix of a window once without gradients and step only the last
  token with gradients (the actor loss only changes the last token of F's window).

A state is a tuple of tensors, each with the batch as dimension 0, so callers can index, mask or
detach it with ``tuple(f(s) for s in state)`` without knowing the model.
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, ...]

TOKEN_DIM = 512
"""Width of the per-token MLP (the reference code's ``preprocessed_dimension``)."""


class TokenMLP(nn.Module):
    """The per-token preprocessor: in -> width -> LayerNorm -> tanh -> width -> ReLU.

    Applied to [..., in] tensors; torch folds the leading dimensions into one matmul, so a
    [B, L, in] window costs one [B*L, in] x [in, width] product per layer.
    """

    def __init__(self, input_dim: int, width: int = TOKEN_DIM) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, width),
            nn.LayerNorm(width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.ReLU(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Maps tokens [..., in] to features [..., width]."""
        return self.net(tokens)


def summary_head(input_dim: int, output_dim: int, output_relu: bool) -> nn.Module:
    """The summary projection: Linear -> ReLU (the ReLU only when ``output_relu``)."""
    linear = nn.Linear(input_dim, output_dim)
    return nn.Sequential(linear, nn.ReLU()) if output_relu else linear


class MemoryModel(nn.Module):
    """Base class of the memory models: window mode, step mode and prefix encoding.

    Subclasses implement ``forward``, ``initial_state``, ``step`` and ``encode``.

    Attributes:
        input_dim: token width ``in``.
        output_dim: summary width ``out``.
        history_length: the training window length L (the frame-stacking MLP needs it; the other
            models accept any length).
        model_dimension: the model's single size knob (see each model).
        fused_kernels: run the GRU and attention through torch's fused kernels (the default);
            False writes them out in plain tensor operations (same result up to rounding), for
            callers that transform the computation (the agents' several-seeds update).
    """

    fused_kernels: bool = True

    def __init__(self, input_dim: int, output_dim: int, history_length: int, model_dimension: int) -> None:
        super().__init__()
        for name, value in (
            ("input_dim", input_dim),
            ("output_dim", output_dim),
            ("history_length", history_length),
            ("model_dimension", model_dimension),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {value!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.history_length = history_length
        self.model_dimension = model_dimension

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summarises a window.

        Args:
            tokens: [B, L, in], oldest first.

        Returns:
            The summary [B, out] of the whole window.
        """
        raise NotImplementedError

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The state before any token (an empty history), a tuple of [batch_size, ...] tensors."""
        raise NotImplementedError

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Feeds one token.

        Args:
            token: [B, in].
            state: from ``initial_state``, ``encode`` or a previous ``step``.

        Returns:
            (summary [B, out] of the history including ``token``, the new state).
        """
        raise NotImplementedError

    def step_summary(self, token: torch.Tensor, state: State) -> torch.Tensor:
        """The summary [B, out] of ``step(token, state)`` when the new state is not wanted (the
        actor loss); a model may skip computing the state."""
        return self.step(token, state)[0]

    def encode(self, tokens: torch.Tensor) -> State:
        """The state after feeding ``tokens`` [B, L, in] (L may be 0), computed in window mode."""
        raise NotImplementedError

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def _check_tokens(self, tokens: torch.Tensor, ndim: int) -> None:
        if tokens.dim() != ndim or tokens.shape[-1] != self.input_dim:
            want = "[B, L, in]" if ndim == 3 else "[B, in]"
            raise ValueError(
                f"{type(self).__name__}: expected tokens {want} with in={self.input_dim}, "
                f"got shape {tuple(tokens.shape)}"
            )
