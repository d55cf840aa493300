"""S4D memory: per-token MLP -> diagonal state-space layers -> last position -> summary.

Each of the H channels (the per-token MLP width, 512) has its own diagonal linear state-space
model with N/2 complex modes (N = ``model_dimension``, paper 32, stored as conjugate pairs, so the
real output is twice the real part of the sum over N/2 modes):

    A_n = -exp(theta_n) + i * A_imag_n          (init: real part -0.5, A_imag_n = pi * n)
    zero-order hold with step Delta = exp(log_dt):
    Abar_n = exp(Delta A_n),  Bbar_n = (exp(Delta A_n) - 1) / A_n * B_n   (B_n = 1)
    x_t = Abar x_{t-1} + Bbar u_t,   y_t = 2 Re(sum_n C_n x_{t,n}) + D u_t
        = sum_{s <= t} K_{t-s} u_s + D u_t,  K_l = 2 Re sum_n C_n Bbar_n Abar_n^l

then GELU and Linear(H, 2H) + GLU. Layers are stacked without residuals or norms, as in the
reference (HazyResearch standalone S4, ``mode=diag``, ``measure=diag-lin``, ``disc=zoh``). B is
fixed at 1 (the minimal S4D; a trainable B would only rescale C).

Window mode convolves with K through an FFT of length 2L (or, for windows up to 64 tokens, a
causal Toeplitz matmul, faster on a CPU at L = 32; the ``conv`` setting); the last layer only needs its last
position, which is a direct O(L) contraction per channel, so its GELU/GLU run on one position
instead of L (same result, about half the FLOPs of the reference's full-sequence output). Step
mode runs the recurrence. The discretisation is recomputed from the current parameters on every
call, in both modes (the reference freezes the step-mode one at construction, a bug). All
complex arithmetic is written out in real and imaginary parts (no complex tensors), and the SSM
core runs in the parameters' dtype even under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bfm.memory.base import TOKEN_DIM, MemoryModel, State, TokenMLP, summary_head

DIRECT_MAX_LENGTH = 64
"""Longest window convolved directly (Toeplitz matmul) rather than by FFT under ``conv="auto"``."""

Discretisation = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class S4DLayer(nn.Module):
    """One S4D layer over H channels with N/2 complex modes each, then GELU and Linear + GLU.

    Args:
        channels: H.
        state_size: N (even); N/2 complex modes per channel.
        dt_min, dt_max: range of the log-uniform initial step size Delta.
    """

    def __init__(self, channels: int, state_size: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        if state_size < 2 or state_size % 2:
            raise ValueError(f"S4D: model_dimension (state size N) must be even and >= 2, got {state_size}")
        modes = state_size // 2
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # [H]
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.full((channels, modes), math.log(0.5)))  # [H, N/2]
        self.A_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(channels, 1))
        self.C = nn.Parameter(
            torch.randn(channels, modes, 2) * math.sqrt(0.5)
        )  # [H, N/2, (re, im)], CN(0, 1)
        self.D = nn.Parameter(torch.randn(channels))  # [H]
        self.output = nn.Linear(channels, 2 * channels)

    def discretise(self) -> Discretisation:
        """Zero-order hold from the current parameters: (Abar_re, Abar_im, Bbar_re, Bbar_im), each [H, N/2]."""
        dt = self.log_dt.exp()[:, None]  # [H, 1]
        a_re, a_im = -self.log_A_real.exp(), self.A_imag  # [H, N/2]
        magnitude = (dt * a_re).exp()
        abar_re, abar_im = magnitude * (dt * a_im).cos(), magnitude * (dt * a_im).sin()
        # Bbar = (Abar - 1) / A, a complex division
        num_re, num_im = abar_re - 1, abar_im
        denominator = a_re**2 + a_im**2
        bbar_re = (num_re * a_re + num_im * a_im) / denominator
        bbar_im = (num_im * a_re - num_re * a_im) / denominator
        return abar_re, abar_im, bbar_re, bbar_im

    def _powers(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Abar^l for l = 0..length-1, real and imaginary parts [H, N/2, length]."""
        dt = self.log_dt.exp()[:, None, None]  # [H, 1, 1]
        lag = torch.arange(length, device=dt.device, dtype=dt.dtype)  # [length]
        magnitude = (dt * -self.log_A_real.exp()[..., None] * lag).exp()  # [H, N/2, length]
        angle = dt * self.A_imag[..., None] * lag
        return magnitude * angle.cos(), magnitude * angle.sin()

    def _weighted_powers(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Abar^l Bbar for l = 0..length-1, real and imaginary parts [H, N/2, length]."""
        _, _, bbar_re, bbar_im = self.discretise()
        p_re, p_im = self._powers(length)
        return p_re * bbar_re[..., None] - p_im * bbar_im[..., None], p_re * bbar_im[
            ..., None
        ] + p_im * bbar_re[..., None]

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel K_l = 2 Re sum_n C_n Bbar_n Abar_n^l, [length, H]."""
        w_re, w_im = self._weighted_powers(length)  # [H, N/2, length]
        c_re, c_im = self.C[..., 0:1], self.C[..., 1:2]  # [H, N/2, 1]
        return 2 * (c_re * w_re - c_im * w_im).sum(1).T  # [length, H]

    def convolve(self, u: torch.Tensor, method: str = "auto") -> torch.Tensor:
        """The SSM output before the nonlinearity at every position, [B, L, H].

        Args:
            u: inputs [B, L, H].
            method: "fft" (length-2L FFT), "direct" (a causal Toeplitz matmul per channel,
                O(L^2) but several times faster than the FFT on a CPU for short windows), or
                "auto": direct up to ``DIRECT_MAX_LENGTH`` tokens, FFT beyond.
        """
        length = u.shape[1]
        k = self.kernel(length)  # [L, H]
        if method == "direct" or (method == "auto" and length <= DIRECT_MAX_LENGTH):
            lag = torch.arange(length, device=u.device)
            lag = lag[:, None] - lag[None, :]  # [t, s], t - s
            toeplitz = (k[lag.clamp(min=0)] * (lag >= 0)[..., None]).permute(2, 0, 1)  # [H, t, s]
            y = torch.bmm(toeplitz, u.permute(2, 1, 0)).permute(2, 1, 0)  # [H, t, B] -> [B, L, H]
        elif method in ("fft", "auto"):
            u_f = torch.fft.rfft(u, n=2 * length, dim=1)  # [B, L+1, H]
            k_f = torch.fft.rfft(k, n=2 * length, dim=0)  # [L+1, H]
            y = torch.fft.irfft(u_f * k_f, n=2 * length, dim=1)[:, :length]  # [B, L, H]
        else:
            raise ValueError(f"S4D: convolution method must be 'auto', 'fft' or 'direct', got {method!r}")
        return y + self.D * u  # [B, L, H]

    def convolve_last(self, u: torch.Tensor) -> torch.Tensor:
        """The SSM output before the nonlinearity at the last position only, [B, H]."""
        k = self.kernel(u.shape[1]).flip(0)  # [L, H], k[s] = K_{L-1-s}
        return (u * k).sum(1) + self.D * u[:, -1]  # [B, H]

    def state_after(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_{L-1} = sum_s Abar^{L-1-s} Bbar u_s, real and imaginary parts [B, H, N/2]."""
        w_re, w_im = self._weighted_powers(u.shape[1])  # [H, N/2, L]
        w = torch.cat([w_re, w_im], 1).flip(-1)  # [H, N, L], index s holds power L-1-s
        # One matmul per channel, batched over the H channels with contiguous operands: CPU torch
        # runs a strided batch (what einsum("bsh,hns->bhn") passes it) as H separate matmuls.
        x = torch.bmm(u.permute(2, 0, 1).contiguous(), w.transpose(1, 2).contiguous())  # [H, B, N]
        x = x.permute(1, 0, 2)  # [B, H, N]
        modes = w_re.shape[1]
        return x[..., :modes], x[..., modes:]

    def step_output(self, u: torch.Tensor, x_re: torch.Tensor, x_im: torch.Tensor) -> torch.Tensor:
        """The pre-nonlinearity output y [B, H] of one step from state [B, H, N/2] on u [B, H].

        y = 2 Re sum_n C_n (Abar_n x_n + Bbar_n u) + D u, computed as
        2 Re sum_n (C Abar)_n x_n + (K_0 + D) u with K_0 = 2 Re sum_n C_n Bbar_n: one contraction of
        the state, and a gradient with respect to u that is the [B, H] product (K_0 + D) dy.
        """
        abar_re, abar_im, bbar_re, bbar_im = self.discretise()  # [H, N/2]
        c_re, c_im = self.C[..., 0], self.C[..., 1]  # [H, N/2]
        ca_re, ca_im = c_re * abar_re - c_im * abar_im, c_re * abar_im + c_im * abar_re  # C Abar
        k0 = 2 * (c_re * bbar_re - c_im * bbar_im).sum(-1)  # [H]
        return 2 * (ca_re * x_re - ca_im * x_im).sum(-1) + (k0 + self.D) * u  # [B, H]

    def recurrence(
        self, u: torch.Tensor, x_re: torch.Tensor, x_im: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One recurrence step: u [B, H], state [B, H, N/2] -> (pre-nonlinearity y [B, H], new state)."""
        abar_re, abar_im, bbar_re, bbar_im = self.discretise()  # [H, N/2]
        u_ = u[..., None]  # [B, H, 1]
        new_re = abar_re * x_re - abar_im * x_im + bbar_re * u_  # [B, H, N/2]
        new_im = abar_re * x_im + abar_im * x_re + bbar_im * u_
        y = 2 * (self.C[..., 0] * new_re - self.C[..., 1] * new_im).sum(-1) + self.D * u  # [B, H]
        return y, new_re, new_im

    def activate(self, y: torch.Tensor) -> torch.Tensor:
        """GELU then Linear(H, 2H) + GLU, [..., H] -> [..., H]."""
        return F.glu(self.output(F.gelu(y)), dim=-1)


class S4DMemory(MemoryModel):
    """Stacked S4D layers over the per-token features; the summary is the last position's output.

    Args:
        input_dim: token width.
        output_dim: summary width.
        history_length: training window length (the convolution accepts any length).
        model_dimension: state size N per channel (paper: 32, i.e. 16 complex modes).
        output_relu: end the summary head with a ReLU.
        num_layers: stacked S4D layers (paper: 1).
        token_dim: per-token MLP width = number of SSM channels H (paper: 512).
        dt_min, dt_max: range of the initial step sizes.
        conv: full-sequence convolution of the layers before the last: "auto", "fft" or "direct"
            (see ``S4DLayer.convolve``).

    State: ``(x_re, x_im)``, each [B, layers, H, N/2], the complex SSM states (zeros at start).
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
        token_dim: int = TOKEN_DIM,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        conv: str = "auto",
    ) -> None:
        super().__init__(input_dim, output_dim, history_length, model_dimension)
        if conv not in ("auto", "fft", "direct"):
            raise ValueError(f"S4D: conv must be 'auto', 'fft' or 'direct', got {conv!r}")
        self.conv = conv
        self.num_layers = num_layers
        self.channels = token_dim
        self.token_mlp = TokenMLP(input_dim, token_dim)
        self.layers = nn.ModuleList(
            S4DLayer(token_dim, model_dimension, dt_min, dt_max) for _ in range(num_layers)
        )
        self.head = summary_head(token_dim, output_dim, output_relu)

    def _features(self, tokens: torch.Tensor) -> torch.Tensor:
        u = self.token_mlp(tokens)
        return u.to(self.layers[0].log_dt.dtype)  # the SSM core runs in the parameters' dtype

    def _sequence(self, u: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
        with torch.autocast(u.device.type, enabled=False):
            for layer in layers:
                u = layer.activate(layer.convolve(u, self.conv))  # [B, L, H]
        return u

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summarises tokens [B, L, in] into [B, out]."""
        self._check_tokens(tokens, 3)
        u = self._sequence(self._features(tokens), self.layers[:-1])  # [B, L, H]
        with torch.autocast(u.device.type, enabled=False):
            last = self.layers[-1]
            y = last.activate(last.convolve_last(u))  # [B, H]
        return self.head(y)  # [B, out]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero states ``(x_re, x_im)``, each [batch_size, layers, H, N/2]."""
        p = self.layers[0].log_dt
        shape = (batch_size, self.num_layers, self.channels, self.model_dimension // 2)
        zeros = torch.zeros(shape, device=device or p.device, dtype=p.dtype)
        return zeros, zeros.clone()

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Feeds token [B, in]; returns (summary [B, out], new state)."""
        self._check_tokens(token, 2)
        x_re, x_im = state
        u = self._features(token)  # [B, H]
        new_re, new_im = [], []
        with torch.autocast(u.device.type, enabled=False):
            for i, layer in enumerate(self.layers):
                y, re, im = layer.recurrence(u, x_re[:, i], x_im[:, i])
                u = layer.activate(y)  # [B, H]
                new_re.append(re)
                new_im.append(im)
        return self.head(u), (torch.stack(new_re, 1), torch.stack(new_im, 1))

    def step_summary(self, token: torch.Tensor, state: State) -> torch.Tensor:
        """``step(token, state)[0]`` without the new state (see ``S4DLayer.step_output``)."""
        self._check_tokens(token, 2)
        x_re, x_im = state
        u = self._features(token)  # [B, H]
        with torch.autocast(u.device.type, enabled=False):
            for i, layer in enumerate(self.layers):
                u = layer.activate(layer.step_output(u, x_re[:, i], x_im[:, i]))  # [B, H]
        return self.head(u)

    def encode(self, tokens: torch.Tensor) -> State:
        """The states after tokens [B, L, in] (zeros for L = 0), in closed form per layer."""
        self._check_tokens(tokens, 3)
        if tokens.shape[1] == 0:
            return self.initial_state(tokens.shape[0], tokens.device)
        u = self._features(tokens)  # [B, L, H]
        states_re, states_im = [], []
        with torch.autocast(u.device.type, enabled=False):
            for i, layer in enumerate(self.layers):
                re, im = layer.state_after(u)  # [B, H, N/2]
                states_re.append(re)
                states_im.append(im)
                if i < self.num_layers - 1:
                    u = layer.activate(layer.convolve(u, self.conv))  # [B, L, H], the next layer's input
        return torch.stack(states_re, 1), torch.stack(states_im, 1)
