"""Partial observability: domain-name parsing and observation transforms.

A transform is an array function over [..., obs_dim] observations with an injected
``np.random.Generator``, so the same object corrupts a whole offline dataset once at load and
live observations at every evaluation step. Each call draws fresh, independent randomness.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bfm.envs.specs import DOMAINS, check_domain

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
        corrupt_obs: whether the obs stream (read by F and the policy) is transformed.
        corrupt_goal: whether the goal stream (read by B or phi, and by task inference) is transformed.
    """

    domain: str
    variant: str | None
    corrupt_obs: bool
    corrupt_goal: bool


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


@dataclass(frozen=True)
class Setting:
    """One number a transform is configured by: a config key (``env.<key>``) and paper-style flag
    (``--<key>``) of its own.

    Attributes:
        default: the paper's value.
        doc: what it means (the config field's documentation and the flag's help).
        accepted: the values accepted, in words (for error messages).
        check: whether a value is accepted.
    """

    default: float
    doc: str
    accepted: str
    check: Callable[[float], bool]

    def validated(self, key: str, value: float) -> float:
        """``value`` as a float; ValueError naming ``key`` and what is accepted otherwise."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not self.check(number):
            shown = value if math.isnan(number) else number  # text that is no number, as given
            raise ValueError(f"{key} must be {self.accepted}, got {shown!r}")
        return number


def probability(doc: str) -> Setting:
    """A probability setting of default 0.2 (the paper's)."""
    return Setting(0.2, doc, "a probability in [0, 1]", lambda p: 0.0 <= p <= 1.0)


class ObsTransform:
    """Base class and identity: maps observations [..., obs_dim] to [..., out_dim] float32.

    A POMDP is a subclass with a ``variant`` name, its ``settings`` (each becomes the attribute of
    that name, validated) and ``_apply``; registering it in ``REGISTRY`` makes ``<domain>_<variant>``
    a domain name and each setting a config key and flag.

    Attributes:
        domain: the domain whose observations are transformed.
        variant: None for the identity, else the variant name.
        obs_dim: expected last dimension of the input.
        out_dim: last dimension of the output.
    """

    variant: ClassVar[str | None] = None
    settings: ClassVar[dict[str, Setting]] = {}

    def __init__(self, domain: str, **settings: float):
        self.domain = domain
        self.obs_dim = check_domain(domain).obs_dim
        self.out_dim = self.obs_dim
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise ValueError(
                f"{self.variant or 'the identity'} has no setting {', '.join(unknown)}; "
                f"accepted: {', '.join(self.settings) or 'none'}"
            )
        for key, setting in self.settings.items():
            setattr(self, key, setting.validated(key, settings.get(key, setting.default)))

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
        values = "".join(f", {key}={getattr(self, key)!r}" for key in self.settings)
        return f"{type(self).__name__}(domain={self.domain!r}{values})"


class Flickering(ObsTransform):
    """Zeroes the whole observation vector of each step independently with probability ``flickering_prob``."""

    variant = "flickering"
    settings = {"flickering_prob": probability("probability that the whole observation is zeroed at a step.")}
    flickering_prob: float

    def _apply(self, obs, rng):
        keep = rng.random(len(obs)) >= self.flickering_prob  # [rows]
        return obs * keep[:, None]


class Noise(ObsTransform):
    """Adds i.i.d. Gaussian noise N(0, noise_std^2) to every element."""

    variant = "noise"
    settings = {
        "noise_std": Setting(
            0.2,
            "standard deviation of the additive Gaussian observation noise.",
            "a finite number >= 0",
            lambda std: std >= 0 and math.isfinite(std),
        )
    }
    noise_std: float

    def _apply(self, obs, rng):
        return obs + np.float32(self.noise_std) * rng.standard_normal(obs.shape, dtype=np.float32)


class Sensors(ObsTransform):
    """Zeroes each element of each step independently with probability ``missing_sensor_prob`` (no
    persistent failures)."""

    variant = "sensors"
    settings = {
        "missing_sensor_prob": probability("probability that each observation element is zeroed at a step.")
    }
    missing_sensor_prob: float

    def _apply(self, obs, rng):
        keep = rng.random(obs.shape) >= self.missing_sensor_prob  # [rows, obs_dim]
        return obs * keep


class Occluded(ObsTransform):
    """Keeps only the non-velocity entries (``OCCLUDED_INDICES``): dims 15 / 8 / 69. Uses no randomness."""

    variant = "occluded"

    def __init__(self, domain: str, **settings: float):
        super().__init__(domain, **settings)
        self.indices = OCCLUDED_INDICES[domain]
        self.out_dim = len(self.indices)

    def _apply(self, obs, rng):
        return obs[:, self.indices]


# The POMDPs, by variant name: a new one is a subclass above and an entry here.
REGISTRY: dict[str, type[ObsTransform]] = {cls.variant: cls for cls in (Flickering, Noise, Sensors, Occluded)}
VARIANTS: tuple[str, ...] = tuple(REGISTRY)
# Every variant's settings by key (the keys are distinct across variants: each is a config key).
SETTINGS: dict[str, Setting] = {key: s for cls in REGISTRY.values() for key, s in cls.settings.items()}


def make_transform(variant: str | None, domain: str, **settings: float) -> ObsTransform:
    """Build the observation transform of ``variant`` (None: identity) for ``domain``.

    Args:
        variant: a key of ``REGISTRY``, or None.
        domain: walker, cheetah or quadruped.
        **settings: any of ``SETTINGS`` (flickering_prob, noise_std, missing_sensor_prob, ...);
            each is checked, and those of other variants are ignored (so one set serves every
            variant).

    Raises:
        ValueError: unknown variant, domain or setting, or a setting outside its range.
    """
    check_domain(domain)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown POMDP setting(s) {', '.join(unknown)}; accepted: {', '.join(SETTINGS)}")
    for key, value in settings.items():
        SETTINGS[key].validated(key, value)
    if variant is None:
        return ObsTransform(domain)
    if variant not in REGISTRY:
        raise ValueError(f"unknown POMDP variant {variant!r}; valid variants: None, {', '.join(VARIANTS)}")
    cls = REGISTRY[variant]
    return cls(domain, **{key: value for key, value in settings.items() if key in cls.settings})


def make_stream_transforms(name: str, **settings: float) -> tuple[ObsTransform, ObsTransform]:
    """(obs-stream transform, goal-stream transform) for a DOMAIN string such as ``walker_rewards_noise``.

    Args:
        name: a DOMAIN string accepted by ``parse_domain``.
        **settings: POMDP settings (``SETTINGS``), as in ``make_transform``.
    """
    spec = parse_domain(name)
    corrupted = make_transform(spec.variant, spec.domain, **settings)
    identity = ObsTransform(spec.domain)
    return (
        corrupted if spec.corrupt_obs else identity,
        corrupted if spec.corrupt_goal else identity,
    )
