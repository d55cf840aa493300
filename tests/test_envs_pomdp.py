"""POMDP transforms and domain-name parsing: exact semantics, determinism, bad input."""

import numpy as np
import pytest

from bfm.envs import (
    DOMAINS,
    OCCLUDED_INDICES,
    DomainSpec,
    ObsTransform,
    make_stream_transforms,
    make_transform,
    parse_domain,
    valid_domain_names,
)


def _obs(domain, lead=(50,), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, (*lead, DOMAINS[domain].obs_dim)).astype(np.float32)


def test_parse_domain_all_forms():
    assert parse_domain("walker") == DomainSpec("walker", None, False, False)
    assert parse_domain("cheetah_flickering") == DomainSpec("cheetah", "flickering", True, True)
    assert parse_domain("quadruped_dynamics_noise") == DomainSpec("quadruped", "noise", True, False)
    assert parse_domain("walker_rewards_sensors") == DomainSpec("walker", "sensors", False, True)
    assert parse_domain("walker_occluded").variant == "occluded"
    names = valid_domain_names()
    assert len(names) == 3 * (1 + 4 + 8)
    for name in names:
        assert parse_domain(name).domain in DOMAINS


@pytest.mark.parametrize(
    "name", ["hopper", "walker_blur", "walker_dynamics", "walker_noise_noise", "walker_", ""]
)
def test_parse_domain_unknown(name):
    with pytest.raises(ValueError, match="valid names: walker, walker_flickering"):
        parse_domain(name)


def test_flickering_zeroes_whole_vectors():
    obs = _obs("walker", (400,))
    out = make_transform("flickering", "walker", flickering_prob=0.3)(obs, np.random.default_rng(1))
    zero_rows = (out == 0).all(-1)
    np.testing.assert_array_equal(out[~zero_rows], obs[~zero_rows])
    expected = np.random.default_rng(1).random(400) < 0.3
    np.testing.assert_array_equal(zero_rows, expected)
    assert 0.2 < zero_rows.mean() < 0.4


def test_sensors_zeroes_elements_independently():
    obs = _obs("quadruped", (300,))
    out = make_transform("sensors", "quadruped", missing_sensor_prob=0.25)(obs, np.random.default_rng(2))
    expected = np.random.default_rng(2).random(obs.shape) < 0.25
    np.testing.assert_array_equal(out == 0, expected)
    np.testing.assert_array_equal(out[~expected], obs[~expected])
    assert not (out == 0).all(-1).any()  # per element, not per vector


def test_noise_adds_gaussian_with_std():
    obs = _obs("cheetah", (2000,))
    out = make_transform("noise", "cheetah", noise_std=0.5)(obs, np.random.default_rng(3))
    expected = obs + np.float32(0.5) * np.random.default_rng(3).standard_normal(obs.shape, dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    assert abs((out - obs).std() - 0.5) < 0.01
    assert out.dtype == np.float32


@pytest.mark.parametrize("domain,dim", [("walker", 15), ("cheetah", 8), ("quadruped", 69)])
def test_occluded_dims(domain, dim):
    obs = _obs(domain, (4, 7))
    t = make_transform("occluded", domain)
    out = t(obs, np.random.default_rng(0))
    assert t.out_dim == dim and out.shape == (4, 7, dim)
    np.testing.assert_array_equal(out, obs[..., OCCLUDED_INDICES[domain]])
    if domain == "quadruped":
        kept = set(OCCLUDED_INDICES["quadruped"].tolist())
        assert kept == set(range(44)) | {47} | set(range(54, 78))


@pytest.mark.parametrize("variant", [None, "flickering", "noise", "sensors", "occluded"])
def test_seed_determinism_and_shapes(variant):
    obs = _obs("walker", (3, 5, 11))
    t = make_transform(variant, "walker")
    a = t(obs, np.random.default_rng(7))
    b = t(obs, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 5, 11, t.out_dim)
    assert obs.flags.writeable and np.array_equal(obs, _obs("walker", (3, 5, 11)))  # input untouched
    if variant in ("flickering", "noise", "sensors"):
        assert not np.array_equal(a, t(obs, np.random.default_rng(8)))
    if variant is None:
        np.testing.assert_array_equal(a, obs)


def test_chunked_application_equals_one_draw():
    from bfm.envs import pomdp

    obs = _obs("walker", (1000,))
    t = make_transform("noise", "walker")
    whole = t(obs, np.random.default_rng(5))
    old = pomdp._CHUNK_ROWS
    try:
        pomdp._CHUNK_ROWS = 64
        chunked = t(obs, np.random.default_rng(5))
    finally:
        pomdp._CHUNK_ROWS = old
    np.testing.assert_array_equal(whole, chunked)


def test_edge_probabilities():
    obs = _obs("walker")
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(make_transform("flickering", "walker", flickering_prob=0.0)(obs, rng), obs)
    assert not make_transform("sensors", "walker", missing_sensor_prob=1.0)(obs, rng).any()
    np.testing.assert_array_equal(make_transform("noise", "walker", noise_std=0.0)(obs, rng), obs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"variant": "flickering", "flickering_prob": 1.5},
            "flickering_prob must be a probability in \\[0, 1\\]",
        ),
        ({"variant": "sensors", "missing_sensor_prob": -0.1}, "missing_sensor_prob must be a probability"),
        ({"variant": "noise", "noise_std": -0.2}, "noise_std must be a finite number >= 0"),
        ({"variant": "blur"}, "valid variants: None, flickering, noise, sensors, occluded"),
        ({"variant": None, "domain": "hopper"}, "valid domains: walker, cheetah, quadruped"),
    ],
)
def test_bad_input(kwargs, match):
    kwargs = {"domain": "walker", **kwargs}
    with pytest.raises(ValueError, match=match):
        make_transform(**kwargs)


def test_wrong_observation_dim():
    with pytest.raises(ValueError, match="last dimension 24"):
        make_transform("noise", "walker")(np.zeros((3, 17)), np.random.default_rng(0))


def test_stream_transforms():
    dyn, rew = make_stream_transforms("walker_dynamics_occluded")
    assert dyn.out_dim == 15 and rew.out_dim == 24 and type(rew) is ObsTransform
    dyn, rew = make_stream_transforms("cheetah_rewards_noise", noise_std=0.1)
    assert dyn.variant is None and rew.variant == "noise" and rew.noise_std == 0.1
    dyn, rew = make_stream_transforms("quadruped_flickering", flickering_prob=0.5)
    assert dyn.variant == rew.variant == "flickering"
    dyn, rew = make_stream_transforms("walker")
    assert dyn.variant is None and rew.variant is None


def test_a_registered_pomdp_is_a_domain_name_with_its_settings(monkeypatch) -> None:
    """A new POMDP is one subclass and one registry entry: its name parses as a domain suffix and
    its setting is validated and applied (config keys and flags: tests/test_cli_input.py)."""
    from bfm.envs import pomdp

    class Scaled(pomdp.ObsTransform):
        variant = "scaled"
        settings = {"scale": pomdp.Setting(2.0, "factor.", "a number > 0", lambda x: x > 0)}

        def _apply(self, obs, rng):
            return obs * self.scale

    monkeypatch.setitem(pomdp.REGISTRY, "scaled", Scaled)
    monkeypatch.setattr(pomdp, "VARIANTS", (*pomdp.VARIANTS, "scaled"))
    monkeypatch.setitem(pomdp.SETTINGS, "scale", Scaled.settings["scale"])
    assert "walker_rewards_scaled" in valid_domain_names()
    dyn, rew = make_stream_transforms("walker_dynamics_scaled", scale=3.0, noise_std=0.5)
    obs = _obs("walker")
    np.testing.assert_array_equal(dyn(obs, np.random.default_rng(0)), obs * 3)
    assert type(rew) is ObsTransform and make_transform("scaled", "walker").scale == 2.0
    with pytest.raises(ValueError, match="scale must be a number > 0, got -1.0"):
        make_transform("scaled", "walker", scale=-1)
    with pytest.raises(
        ValueError, match="unknown POMDP setting\\(s\\) blur; accepted: flickering_prob, noise_std"
    ):
        make_transform("noise", "walker", blur=1)


def test_every_setting_is_a_config_key_and_a_flag() -> None:
    from bfm.cli import train
    from bfm.envs import pomdp
    from bfm.training.config import EnvSettings, field_help

    for key, setting in pomdp.SETTINGS.items():
        assert getattr(EnvSettings(), key) == setting.default
        assert (train.FLAGS[key].key, train.FLAGS[key].kind) == (f"env.{key}", "value")
        assert setting.doc.rstrip(".") in field_help(f"env.{key}")
