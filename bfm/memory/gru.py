"""GRU memory: per-token MLP -> torch GRU -> final hidden state of the last layer -> Linear (-> ReLU)."""

from __future__ import annotations

import torch
from torch import nn

from bfm.memory.base import TOKEN_DIM, MemoryModel, State, TokenMLP, summary_head


class GRUMemory(MemoryModel):
    """A GRU over the per-token features; the summary is the last layer's final hidden state.

    Window mode runs ``torch.nn.GRU`` over the whole window (one fused cuDNN / ATen call); step
    mode runs the same module on a length-1 sequence. The hidden size is a real setting (the
    reference code breaks when it differs from 512).

    Args:
        input_dim: token width.
        output_dim: summary width.
        history_length: training window length (unused by the GRU itself).
        model_dimension: GRU hidden size (paper: 512).
        output_relu: end the summary head with a ReLU.
        num_layers: stacked GRU layers (paper: 1).
        token_dim: per-token MLP width (paper: 512).

    State: ``(h,)`` with h [B, num_layers, hidden], zeros at the start.

    Attributes:
        zero_state_min_hidden: from this hidden size on, a window starting from the empty state
            runs its first step without the W_hh h_0 = 0 product (same result, 2 B hidden 3 hidden
            fewer FLOPs forward and backward). Below it the extra small kernels cost more than the
            product saves (docs/performance.md).
    """

    zero_state_min_hidden: int = 256

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        history_length: int,
        model_dimension: int = 512,
        output_relu: bool = True,
        num_layers: int = 1,
        token_dim: int = TOKEN_DIM,
    ) -> None:
        super().__init__(input_dim, output_dim, history_length, model_dimension)
        self.num_layers = num_layers
        self.token_mlp = TokenMLP(input_dim, token_dim)
        self.gru = nn.GRU(token_dim, model_dimension, num_layers=num_layers, batch_first=True)
        self.head = summary_head(model_dimension, output_dim, output_relu)

    def _run(self, tokens: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        features = self.token_mlp(tokens)  # [B, L, token_dim]
        if not self.fused_kernels:
            return self._unrolled(features, h)
        if h is None and self.num_layers == 1 and self.model_dimension >= self.zero_state_min_hidden:
            # From the empty state h_0 = 0, W_hh h_0 = 0: the first step needs no hidden-state
            # product (nor its weight gradient), which the fused call would compute anyway.
            h1 = self._first_step(features[:, 0])  # [B, hidden]
            if features.shape[1] == 1:
                return h1[:, None]  # [B, 1, hidden]
            _, h_n = self.gru(features[:, 1:], h1[None].to(features.dtype))  # [1, B, hidden]
            return h_n.transpose(0, 1)  # [B, 1, hidden]
        hx = None if h is None else h.transpose(0, 1).contiguous()  # [layers, B, hidden]
        _, h_n = self.gru(features, hx)  # [layers, B, hidden]
        return h_n.transpose(0, 1)  # [B, layers, hidden]

    def _unrolled(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """The GRU written out step by step (torch's equations), without ``fused_kernels``.

        Args:
            x: [B, L, token_dim] token features.
            h: [B, layers, hidden] initial state, or None for zeros.

        Returns:
            [B, layers, hidden], the final state of every layer.
        """
        finals = []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self.gru, f"weight_ih_l{layer}"), getattr(self.gru, f"weight_hh_l{layer}")
            b_ih, b_hh = getattr(self.gru, f"bias_ih_l{layer}"), getattr(self.gru, f"bias_hh_l{layer}")
            gi = nn.functional.linear(x, w_ih, b_ih)  # [B, L, 3 hidden], every step at once
            state = None if h is None else h[:, layer].to(gi.dtype)  # [B, hidden]
            outputs = []
            hidden = self.model_dimension
            for gi_t in gi.unbind(1):  # unbind: one gradient stack (indexing would add L zero-filled ones)
                if state is None:  # h = 0: W_hh h = 0
                    gh = b_hh.to(gi.dtype).expand_as(gi_t)  # [B, 3 hidden]
                else:
                    gh = torch.addmm(b_hh.to(gi.dtype), state, w_hh.to(gi.dtype).t())  # [B, 3 hidden]
                ru = torch.sigmoid(gi_t[:, : 2 * hidden] + gh[:, : 2 * hidden])  # [B, 2 hidden]: r, u
                r, u = ru[:, :hidden], ru[:, hidden:]
                n = torch.tanh(torch.addcmul(gi_t[:, 2 * hidden :], r, gh[:, 2 * hidden :]))  # [B, hidden]
                # h' = (1 - u) n + u h = lerp(n, h, u)
                state = (1 - u) * n if state is None else torch.lerp(n, state, u)  # [B, hidden]
                outputs.append(state)
            finals.append(state)
            if layer < self.num_layers - 1:
                x = torch.stack(outputs, dim=1)  # [B, L, hidden], the next layer's input
        return torch.stack(finals, dim=1)  # [B, layers, hidden]

    def _first_step(self, x: torch.Tensor) -> torch.Tensor:
        """GRU layer 0 from h = 0 on x [B, token_dim]: torch's GRU equations with W_hh h = 0.

        r = sigma(W_ir x + b_ir + b_hr), u = sigma(W_iz x + b_iz + b_hz),
        n = tanh(W_in x + b_in + r * b_hn), h' = (1 - u) * n.
        """
        gi = nn.functional.linear(x, self.gru.weight_ih_l0, self.gru.bias_ih_l0)  # [B, 3 hidden]
        b_r, b_u, b_n = self.gru.bias_hh_l0.to(gi.dtype).chunk(3)  # [hidden] each
        i_r, i_u, i_n = gi.chunk(3, dim=-1)  # [B, hidden] each
        r = torch.sigmoid(i_r + b_r)
        u = torch.sigmoid(i_u + b_u)
        n = torch.tanh(i_n + r * b_n)
        return (1 - u) * n  # [B, hidden]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summarises tokens [B, L, in] into [B, out]."""
        self._check_tokens(tokens, 3)
        return self.head(self._run(tokens, None)[:, -1])  # [B, out]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """``(zeros [batch_size, num_layers, hidden],)``."""
        p = self._param()
        h = torch.zeros(
            batch_size, self.num_layers, self.model_dimension, device=device or p.device, dtype=p.dtype
        )
        return (h,)

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Feeds token [B, in]; returns (summary [B, out], (h [B, layers, hidden],))."""
        self._check_tokens(token, 2)
        h = self._run(token[:, None], state[0])  # [B, layers, hidden]
        return self.head(h[:, -1]), (h,)

    def encode(self, tokens: torch.Tensor) -> State:
        """The hidden state after tokens [B, L, in] (zeros for L = 0)."""
        self._check_tokens(tokens, 3)
        if tokens.shape[1] == 0:
            return self.initial_state(tokens.shape[0], tokens.device)
        return (self._run(tokens, None),)
