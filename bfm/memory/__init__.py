"""Memory models: token sequences [B, L, in] -> summaries [B, out], in window or step mode.

``make_memory(name, ...)`` builds one by name from ``REGISTRY`` (gru, transformer, s4d, mlp).
Every model implements the interface of ``memory.base.MemoryModel``.
"""

from __future__ import annotations

from bfm.memory.base import MemoryModel, State, TokenMLP
from bfm.memory.gru import GRUMemory
from bfm.memory.mlp import MLPMemory
from bfm.memory.s4d import S4DMemory
from bfm.memory.transformer import TransformerMemory

REGISTRY: dict[str, type[MemoryModel]] = {
    "gru": GRUMemory,
    "transformer": TransformerMemory,
    "s4d": S4DMemory,
    "mlp": MLPMemory,
}


def make_memory(
    name: str,
    input_dim: int,
    output_dim: int,
    *,
    history_length: int,
    model_dimension: int | None = None,
    output_relu: bool = True,
    **settings,
) -> MemoryModel:
    """Builds a memory model by name.

    Args:
        name: a key of ``REGISTRY``.
        input_dim: token width ``in``.
        output_dim: summary width ``out``.
        history_length: the training window length L.
        model_dimension: the paper's ``--model_dimension``: GRU hidden size (default 512),
            Transformer d_model (32), S4d state size N (32), MLP hidden width (512). None keeps
            the model's default.
        output_relu: end the summary with a ReLU (the reference code always does).
        **settings: model-specific settings (layers, heads, token width, pooling, dropout, ...),
            documented on each class.

    Returns:
        The model, an ``nn.Module`` implementing ``MemoryModel``.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown memory model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    if model_dimension is not None:
        settings["model_dimension"] = model_dimension
    return REGISTRY[name](
        input_dim, output_dim, history_length=history_length, output_relu=output_relu, **settings
    )


__all__ = [
    "REGISTRY",
    "GRUMemory",
    "MLPMemory",
    "MemoryModel",
    "State",
    "TokenMLP",
    "TransformerMemory",
    "make_memory",
]
