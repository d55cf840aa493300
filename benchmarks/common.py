"""Shared benchmark helpers: timing on a shared machine, device sync, the machine's matmul limit,
the official code's numbers (docs/performance.md) and the presets measured.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# The official code's GFLOP per update (enjeeneer/bfms-with-memory 98fcd17, FlopCounterMode; a
# count, the same on every machine).
OFFICIAL_GFLOP = {
    ("paper", "fb_m", "gru"): 757.0,
    ("paper", "fb", "none"): 28.1,
    ("small", "fb_m", "gru"): 2.38,
}
# Speed against the official code is only measured side by side: both codes alternating in one run
# on one machine, equal widths and parameter counts (docs/performance.md). Seconds per update
# (official, this project) of the run of 2026-12-01 on a 2-core AMD EPYC, 2 threads; the suite
# prints them for reference and never divides its own timings by them.
SIDE_BY_SIDE = {
    "small (batch 64, L_F 8, L_B 4, every width 128), fp32": (0.0244, 0.0173),
    "small with F / actor hidden 1024, fp32": (0.0293, 0.0203),
    "plain FB, batch 512, fp32": (0.124, 0.088),
    "paper FB-M GRU, fp32": (3.38, 2.11),
    "paper FB-M GRU, this project with bf16 autocast": (3.25, 0.94),
    "small (every width 128), this project with bf16 autocast": (0.0271, 0.0221),
}
OFFICIAL_MATMUL_GFLOPS = {"fp32": 170.0, "bf16": 380.0}


@dataclass(frozen=True)
class Preset:
    """A benchmark size.

    Attributes:
        name: small or paper.
        batch: batch size.
        history: L_F.
        backward_history: L_B.
        width: every width (GRU hidden, token MLP, preprocessors, F heads, actor trunk) for
            ``small``; None keeps the paper widths (512 / 1024, memory defaults).
    """

    name: str
    batch: int
    history: int
    backward_history: int
    width: int | None

    def agent_config(self, memory: str = "gru", **overrides: Any) -> dict[str, Any]:
        """Agent config dict (the paper defaults with this preset's sizes and memory model)."""
        cfg: dict[str, Any] = {
            "memory": {
                "name": memory,
                "history_length": self.history,
                "backward_history_length": self.backward_history,
            }
        }
        if self.width is not None:
            w = self.width
            cfg.update(hidden_dim=w, head_hidden_dim=w)
            cfg["memory"]["settings"] = {
                "gru": {"token_dim": w, "model_dimension": w},
                "transformer": {"token_dim": w},
                "s4d": {"token_dim": w},
                "mlp": {"model_dimension": w},
            }
        cfg.update(overrides)
        return cfg


@dataclass(frozen=True)
class CpuPreset(Preset):
    """``experiment=cpu``'s sizes (bfm/configs/experiment/cpu.yaml): z 32, widths 128 / 256, memory
    64 wide with 64-wide token MLPs, L_F 8, L_B 4, batch 256."""

    def agent_config(self, memory: str = "gru", **overrides: Any) -> dict[str, Any]:
        tokens = {"token_dim": 64}
        cfg: dict[str, Any] = {
            "z_dim": 32,
            "hidden_dim": 128,
            "head_hidden_dim": 256,
            "memory": {
                "name": memory,
                "model_dimension": 64,
                "history_length": self.history,
                "backward_history_length": self.backward_history,
                "settings": {"gru": tokens, "transformer": tokens, "s4d": tokens},
            },
        }
        cfg.update(overrides)
        return cfg


PRESETS = {
    # The official code's "small FB-M" timing: GRU 128, all widths 128, batch 64, L_F 8, L_B 4.
    "small": Preset("small", 64, 8, 4, 128),
    # The paper: GRU 512, batch 512, L_F 32, L_B 8.
    "paper": Preset("paper", 512, 32, 8, None),
    # The CPU preset of docs/cpu_scale.md.
    "cpu": CpuPreset("cpu", 256, 8, 4, None),
    # Seconds-long runs of every benchmark (the test suite's check that each one runs).
    "tiny": Preset("tiny", 8, 4, 2, 16),
}


def sync(device: torch.device | str) -> None:
    """Waits for queued device work (CUDA); a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(
    fn: Callable[[], Any], repeats: int, device: torch.device | str = "cpu", warmup: int = 1
) -> list[float]:
    """Seconds of ``repeats`` calls of fn after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float]) -> dict[str, float]:
    """best (least disturbed on a shared machine) and median seconds."""
    return {"best_s": min(times), "median_s": statistics.median(times), "n": len(times)}


def matmul_gflops(
    size: int = 1024, dtype: torch.dtype = torch.float32, device: str = "cpu", seconds: float = 1.0
) -> float:
    """Measured dense matmul rate (GFLOP/s) of size x size @ size x size (best of ~``seconds``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flop = 2 * size**3
    a @ b
    sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return flop / best / 1e9


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU/GPU, threads, torch version, load."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info
