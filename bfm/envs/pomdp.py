"""Partial observability: domain-name parsing and observation transforms.

A transform is an array function over [..., obs_dim] observations with an injected
``np.random.Generator``, so the same object corrupts a whole offline dataset once at load and
live observations at every evaluation step. Each call draws fresh, independent randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bfm.envs.specs import DOMAINS, check_domain

VARIANTS: tuple[str, ...] = ("flickering", "noise", "sensors", "occluded")
STREAM_PREFIXES: tuple[str, ...] = ("dynamics", "rewards")

# Non-velocity entries kept by the "occluded" variant. Quadruped follows the reference code:
# egocentric_state (0-43, which contains the joint velocities), torso_upright (47) and
# force_torque (54-77); torso_velocity (44-46) and imu (48-53) are dropped.
OCCLUDED_INDICES: dict[str, np.ndarray] = {
    "walker": np.arange(15),
    "cheetah": np.arange(8),
    "quadruped": np.concatenate([np.arange(44), [47], np.arange(54, 78)]),
}

# Rows transformed per chunk, to bound the temporary memory on 10^6-10^7-row datasets.
_CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class DomainSpec:
    """A parsed DOMAIN argument.

    Attributes:
        domain: walker, cheetah or quadruped.
        variant: None, flickering, noise, sensors or occluded.
        corrupt_dynamics: whether the F/pi stream is transformed.
        corrupt_rewards: whether the B stream (also used for task inference) is transformed.
    """

    domain: str
    variant: str | None
    corrupt_dynamics: bool
    corrupt_rewards: bool


def valid_domain_names() -> list[str]:
    """Every accepted DOMAIN string."""
    names = []
    for domain in DOMAINS:
        names.append(domain)
        names += [f"{domain}_{v}" for v in VARIANTS]
        names += [f"{domain}_{s}_{v}" for s in STREAM_PREFIXES for v in VARIANTS]
    return names


def parse_domain(name: str) -> DomainSpec:
    """Parse ``walker``, ``walker_noise``, ``walker_dynamics_noise``, ``walker_rewards_noise``, ...

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    domain, *parts = name.split("_")
    if domain in DOMAINS:
        if not parts:
            return DomainSpec(domain, None, False, False)
        if len(parts) == 1 and parts[0] in VARIANTS:
            return DomainSpec(domain, parts[0], True, True)
        if len(parts) == 2 and parts[0] in STREAM_PREFIXES and parts[1] in VARIANTS:
            return DomainSpec(domain, parts[1], parts[0] == "dynamics", parts[0] == "rewards")
    raise ValueError(f"unknown domain name {name!r}; valid names: {', '.join(valid_domain_names())}")


class ObsTransform:
    """Base class: maps observations [..., obs_dim] to [..., out_dim] float32.

    Attributes:
        domain: the domain whose observations are transformed.
        variant: None for the identity, else the variant name.
        obs_dim: expected last dimension of the input.
        out_dim: last dimension of the output.
    """

    variant: str | None = None

    def __init__(self, domain: str):
        self.domain = domain
        self.obs_dim = check_domain(domain).obs_dim
        self.out_dim = self.obs_dim

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform ``obs`` [..., obs_dim] with fresh draws from ``rng``; the input is not modified.

        Returns:
            float32 [..., out_dim].
        """
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim == 0 or obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"{self.domain} observations must have last dimension {self.obs_dim}, got shape {obs.shape}"
            )
        flat = obs.reshape(-1, self.obs_dim)
        out = np.empty((len(flat), self.out_dim), dtype=np.float32)
        for start in range(0, len(flat), _CHUNK_ROWS):
            out[start : start + _CHUNK_ROWS] = self._apply(flat[start : start + _CHUNK_ROWS], rng)
        return out.reshape(*obs.shape[:-1], self.out_dim)

    def _apply(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return obs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(domain={self.domain!r})"


class Flickering(ObsTransform):
    """Zeroes the whole observation vector of each step independently with probability ``p``."""

    variant = "flickering"

    def __init__(self, domain: str, p: float):
        super().__init__(domain)
        self.p = _check_probability(p, "flickering_prob")

    def _apply(self, obs, rng):
        keep = rng.random(len(obs)) >= self.p  # [rows]
        return obs * keep[:, None]


class Noise(ObsTransform):
    """Adds i.i.d. Gaussian noise N(0, std^2) to every element."""

    variant = "noise"

    def __init__(self, domain: str, std: float):
        super().__init__(domain)
        self.std = _check_std(std)

    def _apply(self, obs, rng):
        return obs + np.float32(self.std) * rng.standard_normal(obs.shape, dtype=np.float32)


class Sensors(ObsTransform):
    """Zeroes each element of each step independently with probability ``p`` (no persistent failures)."""

    variant = "sensors"

    def __init__(self, domain: str, p: float):
        super().__init__(domain)
        self.p = _check_probability(p, "missing_sensor_prob")

    def _apply(self, obs, rng):
        keep = rng.random(obs.shape) >= self.p  # [rows, obs_dim]
        return obs * keep


class Occluded(ObsTransform):
    """Keeps only the non-velocity entries (``OCCLUDED_INDICES``): dims 15 / 8 / 69. Uses no randomness."""

    variant = "occluded"

    def __init__(self, domain: str):
        super().__init__(domain)
        self.indices = OCCLUDED_INDICES[domain]
        self.out_dim = len(self.indices)

    def _apply(self, obs, rng):
        return obs[:, self.indices]


def _check_probability(p: float, name: str) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return p


def _check_std(std: float) -> float:
    std = float(std)
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"noise_std must be a finite number >= 0, got {std!r}")
    return std


def make_transform(
    variant: str | None,
    domain: str,
    flickering_prob: float = 0.2,
    noise_std: float = 0.2,
    missing_sensor_prob: float = 0.2,
) -> ObsTransform:
    """Build the observation transform of ``variant`` (None: identity) for ``domain``.

    Raises:
        ValueError: unknown variant or domain, probability outside [0, 1], negative std.
    """
    check_domain(domain)
    _check_probability(flickering_prob, "flickering_prob")
    _check_probability(missing_sensor_prob, "missing_sensor_prob")
    _check_std(noise_std)
    if variant is None:
        return ObsTransform(domain)
    if variant == "flickering":
        return Flickering(domain, flickering_prob)
    if variant == "noise":
        return Noise(domain, noise_std)
    if variant == "sensors":
        return Sensors(domain, missing_sensor_prob)
    if variant == "occluded":
        return Occluded(domain)
    raise ValueError(f"unknown POMDP variant {variant!r}; valid variants: None, {', '.join(VARIANTS)}")


def make_stream_transforms(name: str, **settings: float) -> tuple[ObsTransform, ObsTransform]:
    """(F/pi-stream transform, B-stream transform) for a DOMAIN string such as ``walker_rewards_noise``.

    Args:
        name: a DOMAIN string accepted by ``parse_domain``.
        **settings: flickering_prob, noise_std, missing_sensor_prob (as in ``make_transform``).
    """
    spec = parse_domain(name)
    corrupted = make_transform(spec.variant, spec.domain, **settings)
    identity = ObsTransform(spec.domain)
    return (
        corrupted if spec.corrupt_dynamics else identity,
        corrupted if spec.corrupt_rewards else identity,
    )
