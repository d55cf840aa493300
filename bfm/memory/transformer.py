"""Causal Transformer memory: per-token MLP -> d_model -> pre-norm blocks -> pooled summary."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bfm.memory.base import TOKEN_DIM, MemoryModel, State, TokenMLP, summary_head


def sinusoidal_positions(
    start: int, length: int, dim: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Fixed sinusoidal encodings of positions start..start+length-1, [length, dim]."""
    position = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None]  # [L, 1]
    frequency = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # [ceil(dim/2)]
    angle = position * frequency  # [L, ceil(dim/2)]
    encoding = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[
        :, :dim
    ]  # [L, dim]: sin, cos interleaved
    return encoding.to(dtype)


class Block(nn.Module):
    """A pre-norm ("NormFormer") block, as in the reference code's AMAGO transformer.

    x + LN(attention(LN(x))), then x + dropout(Linear(LN(LeakyReLU(Linear(LN(x)))))). Attention
    is causal multi-head self-attention through ``scaled_dot_product_attention``, QKV without bias.
    """

    fused_kernels: bool = True  # False: written-out attention (``MemoryModel.fused_kernels``)

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Transformer: model_dimension {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attention_out = nn.Linear(dim, dim)
        self.norm_attention_out = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.LeakyReLU(),
            nn.LayerNorm(ffn_dim),
            nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the block on a window, or on one new token after cached keys and values.

        Args:
            x: [B, M, d]; a whole window (causal) when ``past`` is None, else one token (M = 1).
            past: cached (keys, values) [B, heads, P, d/heads] of the P earlier tokens.
            last_only: compute the output of the window's last token only (keys and values of
                every token): what the last block needs when the summary reads the last token.
                The attention output, feed-forward and their dropout then run on one token of M
                (the same numbers as the window's last row; the dropout draws as many random
                numbers as on the whole window, so the random stream stays the same).

        Returns:
            (output [B, M, d] ([B, 1, d] with ``last_only``), keys and values [B, heads, P + M,
            d/heads] including the new ones).
        """
        batch, length, dim = x.shape
        q, k, v = self._qkv(x)  # each [B, heads, M, dh]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, heads, P+M, dh]
            v = torch.cat([past[1], v], dim=2)
        causal = past is None
        if last_only:  # the last query attends to every key: no mask
            q, x, causal = q[:, :, -1:], x[:, -1:], False  # [B, heads, 1, dh], [B, 1, d]
        if not self.fused_kernels:
            attended = _attention(q, k, v, causal=causal)  # [B, heads, M', dh]
        else:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, heads, M', dh]
        attended = attended.transpose(1, 2).reshape(batch, q.shape[2], dim)  # [B, M', d]
        x = x + self.norm_attention_out(self.attention_out(attended))
        if last_only:
            x = x + dropout_last(self.ffn[:-1](self.norm_ffn(x)), (batch, length, dim), self.ffn[-1])
        else:
            x = x + self.ffn(self.norm_ffn(x))  # [B, M, d]
        return x, k, v

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, heads, M, d/heads] of a window x [B, M, d] without the block's output
        (a prefix's cache), drawing the random numbers the output's dropout would draw."""
        _, k, v = self._qkv(x)
        dropout_last(x[:, :0], x.shape, self.ffn[-1])
        return k, v

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values [B, heads, M, d/heads] of x [B, M, d]."""
        batch, length, dim = x.shape
        qkv = self.qkv(self.norm_attention(x))  # [B, M, 3d]
        qkv = qkv.view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)


def dropout_last(x_last: torch.Tensor, shape: tuple[int, ...], dropout: nn.Dropout) -> torch.Tensor:
    """``dropout(x)[:, -M:]`` for a window x of ``shape`` whose last M tokens are ``x_last`` [B, M, d]:
    the noise is drawn for the whole window (the same random numbers, in the same order, as
    dropout of the window) and its last M tokens applied."""
    if not dropout.training or dropout.p == 0:
        return x_last
    noise = F.dropout(x_last.new_ones(shape), dropout.p, True)  # [B, L, d]: mask / (1 - p)
    return x_last * noise[:, shape[1] - x_last.shape[1] :]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v with a causal mask when ``causal``: what
    ``scaled_dot_product_attention`` computes, written out (q [..., M, dh], k, v [..., P, dh])."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [..., M, P]
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # [..., M, dh]


class TransformerMemory(MemoryModel):
    """A small causal Transformer over the per-token features.

    Tokens go through the per-token MLP, a Linear to d_model, plus fixed sinusoidal positions
    counted from the start of the window (position 0 = oldest token; the reference code uses
    absolute episode time instead), dropout, ``num_layers`` pre-norm blocks and a final
    LayerNorm. The summary is the head applied to the last token (``pooling="last"``) or the mean
    of the head applied to every token (``pooling="mean"``, as the reference does it).

    Step mode keeps a key/value cache, so a step costs O(t) attention over the t tokens seen;
    positions keep counting, so carrying a state past the training window length shows the model
    positions it never saw in training (sliding-window rollouts avoid this). Dropout (paper:
    0.05) makes window and step mode differ in training mode; they agree in ``eval()`` mode.

    Args:
        input_dim: token width.
        output_dim: summary width.
        history_length: training window length (attention accepts any length).
        model_dimension: d_model (paper: 32).
        output_relu: end the summary head with a ReLU.
        num_layers: blocks (paper: 1).
        num_heads: attention heads (paper: 4).
        ffn_dim: feed-forward width (reference: 256).
        dropout: embedding and feed-forward dropout (reference: 0.05).
        pooling: "last" or "mean".
        token_dim: per-token MLP width (paper: 512).

    State: ``(keys, values, pooled)``: keys and values [B, layers, heads, t, d/heads] for the t
    tokens seen, pooled [B, out] the sum of the per-token summaries (used by mean pooling).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        history_length: int,
        model_dimension: int = 32,
        output_relu: bool = True,
        num_layers: int = 1,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.05,
        pooling: str = "last",
        token_dim: int = TOKEN_DIM,
    ) -> None:
        super().__init__(input_dim, output_dim, history_length, model_dimension)
        if pooling not in ("last", "mean"):
            raise ValueError(f"Transformer: pooling must be 'last' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.token_mlp = TokenMLP(input_dim, token_dim)
        self.embed = nn.Linear(token_dim, model_dimension)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(model_dimension, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(model_dimension)
        self.head = summary_head(model_dimension, output_dim, output_relu)

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        x = self.embed(self.token_mlp(tokens))  # [B, M, d]
        x = x + sinusoidal_positions(start, tokens.shape[1], self.model_dimension, x.device, x.dtype)
        return self.embed_dropout(x)

    def _window(
        self, tokens: torch.Tensor, output: str = "all"
    ) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor]]:
        """Runs a window; returns (final features, per-layer keys, per-layer values).

        ``output`` says what of the last block's output is needed: "all" ([B, L, d]), "last"
        (the last token's, [B, 1, d]) or "none" (None: only the keys and values are wanted).
        """
        x = self._embed(tokens, 0)  # [B, L, d]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if last and output == "none":
                k, v = block.keys_values(x)
            else:
                x, k, v = block(x, last_only=last and output == "last")  # x [B, L or 1, d]
            keys.append(k)  # [B, heads, L, dh]
            values.append(v)
        return (None if output == "none" else self.final_norm(x)), keys, values

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summarises tokens [B, L, in] into [B, out]."""
        self._check_tokens(tokens, 3)
        if self.pooling == "last":
            x, _, _ = self._window(tokens, "last")  # [B, 1, d]
            return self.head(x[:, -1])  # [B, out]
        x, _, _ = self._window(tokens)  # [B, L, d]
        return self.head(x).mean(dim=1)  # [B, out]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Empty caches [batch_size, layers, heads, 0, d/heads] and a zero pooled sum [batch_size, out]."""
        p = self._param()
        device = device or p.device
        dh = self.model_dimension // self.num_heads
        cache = torch.zeros(batch_size, self.num_layers, self.num_heads, 0, dh, device=device, dtype=p.dtype)
        pooled = torch.zeros(batch_size, self.output_dim, device=device, dtype=p.dtype)
        return cache, cache.clone(), pooled

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Feeds token [B, in] at position t = cached length; returns (summary [B, out], state)."""
        self._check_tokens(token, 2)
        keys, values, pooled = state
        position = keys.shape[3]
        x = self._embed(token[:, None], position)  # [B, 1, d]
        new_keys, new_values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, (keys[:, i], values[:, i]))  # k, v [B, heads, t+1, dh]
            new_keys.append(k)
            new_values.append(v)
        summary = self.head(self.final_norm(x[:, 0]))  # [B, out]
        if self.pooling == "mean":
            pooled = pooled + summary  # [B, out], sum of the per-token summaries
            summary = pooled / (position + 1)
        return summary, (torch.stack(new_keys, 1), torch.stack(new_values, 1), pooled)

    def encode(self, tokens: torch.Tensor) -> State:
        """The caches (and pooled sum) after tokens [B, L, in], from one window pass."""
        self._check_tokens(tokens, 3)
        if tokens.shape[1] == 0:
            return self.initial_state(tokens.shape[0], tokens.device)
        if self.pooling == "mean":
            x, keys, values = self._window(tokens)
            pooled = self.head(x).sum(dim=1)  # [B, out]
        else:  # the summary of the prefix is not part of the state
            _, keys, values = self._window(tokens, "none")
            pooled = tokens.new_zeros(tokens.shape[0], self.output_dim)
        return torch.stack(keys, 1), torch.stack(values, 1), pooled
