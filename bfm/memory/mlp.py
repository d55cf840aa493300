"""Frame-stacking MLP memory: flatten the last L tokens and apply an MLP."""

from __future__ import annotations

import torch
from torch import nn

from bfm.memory.base import MemoryModel, State, TokenMLP, summary_head


class MLPMemory(MemoryModel):
    """Frame stacking: the window of ``history_length`` tokens is flattened into one vector.

    As in the reference code, the per-token preprocessor is applied to the flattened window
    (L*in -> width -> LayerNorm -> tanh -> width -> ReLU), followed by ``num_layers - 1`` blocks
    of Linear(width, width) + ReLU, then the summary head. The reference uses 2 layers for F and
    the policy and 1 for B.

    Windows of another length are brought to ``history_length``: a shorter window is left-padded
    with zero tokens, a longer one keeps its last ``history_length`` tokens. Step mode keeps a
    buffer of the last ``history_length`` tokens, zeros before the first token, so stepping a
    window from ``initial_state`` equals ``forward`` on that window. Note that the sequence buffer
    pads training windows by repeating the first observation (unless ``pad_with_zeros``), so the
    first L-1 steps of a carried rollout see a different padding than training did; sliding-window
    rollouts that pad like the buffer avoid this.

    Args:
        input_dim: token width.
        output_dim: summary width.
        history_length: the stacked window length L.
        model_dimension: hidden width (paper: 512).
        output_relu: end the summary head with a ReLU.
        num_layers: hidden layers counting the preprocessor (reference: 2 for F and pi, 1 for B).

    State: ``(window,)`` with window [B, L, in], the last L tokens, oldest first.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        history_length: int,
        model_dimension: int = 512,
        output_relu: bool = True,
        num_layers: int = 2,
    ) -> None:
        super().__init__(input_dim, output_dim, history_length, model_dimension)
        if num_layers < 1:
            raise ValueError(f"MLPMemory: num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = [TokenMLP(history_length * input_dim, model_dimension)]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(model_dimension, model_dimension), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = summary_head(model_dimension, output_dim, output_relu)

    def _fit(self, tokens: torch.Tensor) -> torch.Tensor:
        """Left-pads with zeros or truncates [B, L', in] to [B, history_length, in]."""
        length = tokens.shape[1]
        if length >= self.history_length:
            return tokens[:, length - self.history_length :]
        pad = tokens.new_zeros(tokens.shape[0], self.history_length - length, tokens.shape[2])
        return torch.cat([pad, tokens], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summarises tokens [B, L', in] (fitted to [B, L, in]) into [B, out]."""
        self._check_tokens(tokens, 3)
        flat = self._fit(tokens).flatten(1)  # [B, L*in]
        return self.head(self.body(flat))  # [B, out]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """``(zeros [batch_size, L, in],)``."""
        p = self._param()
        window = torch.zeros(
            batch_size, self.history_length, self.input_dim, device=device or p.device, dtype=p.dtype
        )
        return (window,)

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Shifts token [B, in] into the buffer; returns (summary [B, out], (window [B, L, in],))."""
        self._check_tokens(token, 2)
        window = torch.cat([state[0][:, 1:], token[:, None]], dim=1)  # [B, L, in]
        return self.forward(window), (window,)

    def encode(self, tokens: torch.Tensor) -> State:
        """The buffer after tokens [B, L', in]: their last L, left-padded with zeros."""
        self._check_tokens(tokens, 3)
        return (self._fit(tokens),)
