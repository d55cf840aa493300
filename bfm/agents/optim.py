"""Optimiser, target-network and compile helpers of the agents' updates, and small loss helpers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bfm.agents.config import RepresentationConfig


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
    import torch._dynamo  # lazy: only compiled runs need the compiler stack

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
def polyak_tensors(
    targets: list[torch.Tensor],
    onlines: list[torch.Tensor],
    tau: float,
    target_buffers: list[torch.Tensor],
    online_buffers: list[torch.Tensor],
) -> None:
    """The Polyak step: targets <- targets + tau (onlines - targets), buffers copied. One seed's
    module tensors or K seeds' stacked ones (``agents.seeds``): the arithmetic is per element."""
    if targets:
        torch._foreach_lerp_(targets, onlines, tau)
    if target_buffers:
        torch._foreach_copy_(target_buffers, online_buffers)


def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- target + tau (online - target) for every parameter; buffers are copied."""
    polyak_tensors(
        list(target.parameters()),
        list(online.parameters()),
        tau,
        list(target.buffers()),
        list(online.buffers()),
    )


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
