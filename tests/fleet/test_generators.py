"""Telemetry generators: specs parse from TOML with precise errors, and samples are seeded and bounded."""

from __future__ import annotations

import itertools
import math
import random
import tomllib
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, TypeAdapter

import fleet.generators
from fleet.config import validated
from fleet.errors import ConfigError
from fleet.generators import (
    BooleanSpec,
    ChoiceSpec,
    ConstantSpec,
    CounterSpec,
    GaussianSpec,
    GpsSpec,
    JSONValue,
    MetricSpec,
    RandomWalkSpec,
    SineSpec,
    UniformSpec,
    make_generator,
)


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    telemetry: dict[str, MetricSpec]


SPEC = TypeAdapter[MetricSpec](MetricSpec)

ONE_OF_EACH: dict[str, dict[str, Any]] = {
    "constant": {"kind": "constant", "value": "ok"},
    "uniform": {"kind": "uniform", "min": 0, "max": 10},
    "gaussian": {"kind": "gaussian", "mean": 20, "stddev": 3, "min": 10, "max": 30},
    "random_walk": {"kind": "random_walk", "min": 15, "max": 30, "step": 0.5},
    "sine": {"kind": "sine", "period": 60, "amplitude": 5, "offset": 20, "noise": 0.2},
    "counter": {"kind": "counter", "start": 5, "increment": 2, "wrap": 100},
    "choice": {"kind": "choice", "values": ["idle", "busy", "error"], "weights": [5, 4, 1]},
    "boolean": {"kind": "boolean", "p_true": 0.3},
    "gps": {"kind": "gps", "lat": 59.33, "lon": 18.06, "step_m": 10, "radius_m": 500},
}
RANDOM_KINDS = [kind for kind in ONE_OF_EACH if kind not in ("constant", "counter")]


def samples(data: dict[str, Any], n: int = 1000, seed: int = 1, dt: float = 1.0) -> list[JSONValue]:
    generator = make_generator(SPEC.validate_python(data), random.Random(seed))
    return [generator.sample(i * dt) for i in range(n)]


def floats(data: dict[str, Any], n: int = 1000, seed: int = 1, dt: float = 1.0) -> list[float]:
    values = samples(data, n, seed, dt)
    assert all(isinstance(v, float) for v in values)
    return [v for v in values if isinstance(v, float)]


def track(data: dict[str, Any], n: int) -> list[dict[str, float]]:
    points = [
        {"lat": p["lat"], "lon": p["lon"]}
        for p in samples(data, n)
        if isinstance(p, dict) and isinstance(p["lat"], float) and isinstance(p["lon"], float)
    ]
    assert len(points) == n
    return points


def config_error(telemetry: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validated(Group, {"telemetry": telemetry}, where="x.toml", prefix="groups[1]")
    return str(info.value)


def metres(a: dict[str, float], b: dict[str, float]) -> float:
    """Great-circle distance by the haversine formula."""
    phi1, phi2 = math.radians(a["lat"]), math.radians(b["lat"])
    dphi, dlam = phi2 - phi1, math.radians(b["lon"] - a["lon"])
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def test_all_names_exist() -> None:
    """Every name in __all__ is defined by the module."""
    assert all(hasattr(fleet.generators, name) for name in fleet.generators.__all__)


def test_toml_parses_into_one_spec_per_kind() -> None:
    """A TOML telemetry table becomes the spec class its kind names, with the defaults filled in."""
    text = """
    [telemetry]
    on = { kind = "constant", value = true }
    level = { kind = "uniform", min = 0, max = 100 }
    noise = { kind = "gaussian", mean = 0.0, stddev = 1.5 }
    temp = { kind = "random_walk", min = 15, max = 25, step = 0.2 }
    light = { kind = "sine", period = 86400, amplitude = 500 }
    packets = { kind = "counter" }
    state = { kind = "choice", values = ["idle", 1, 2.5, false] }
    door = { kind = "boolean" }
    where = { kind = "gps", lat = -33.9, lon = 151.2, step_m = 5, radius_m = 200 }
    """
    telemetry = validated(Group, tomllib.loads(text), where="x.toml").telemetry
    assert {name: type(spec) for name, spec in telemetry.items()} == {
        "on": ConstantSpec,
        "level": UniformSpec,
        "noise": GaussianSpec,
        "temp": RandomWalkSpec,
        "light": SineSpec,
        "packets": CounterSpec,
        "state": ChoiceSpec,
        "door": BooleanSpec,
        "where": GpsSpec,
    }
    assert telemetry["on"] == ConstantSpec(value=True)
    assert telemetry["state"] == ChoiceSpec(values=("idle", 1, 2.5, False))
    assert telemetry["light"] == SineSpec(period=86400, amplitude=500, offset=0, noise=0, phase="random")
    assert telemetry["packets"] == CounterSpec(start=0, increment=1, wrap=None)
    assert telemetry["door"] == BooleanSpec(p_true=0.5)
    assert telemetry["level"] == UniformSpec(min=0, max=100, decimals=2)


@pytest.mark.parametrize("kind", ONE_OF_EACH)
def test_same_seed_gives_same_sequence(kind: str) -> None:
    """Two generators built from the same spec and seed produce the same values."""
    assert samples(ONE_OF_EACH[kind], seed=7) == samples(ONE_OF_EACH[kind], seed=7)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_different_seeds_give_different_sequences(kind: str) -> None:
    """Different seeds give different values for every kind that draws from the rng."""
    assert samples(ONE_OF_EACH[kind], seed=1) != samples(ONE_OF_EACH[kind], seed=2)


@pytest.mark.parametrize("kind", ONE_OF_EACH)
def test_generators_are_slotted(kind: str) -> None:
    """Generators carry no per-instance dict: a fleet holds many of them."""
    generator = make_generator(SPEC.validate_python(ONE_OF_EACH[kind]), random.Random(0))
    assert not hasattr(generator, "__dict__")


def test_constant_keeps_its_type_and_rounds_floats() -> None:
    """A constant returns its value unchanged, except that a float is rounded to `decimals`."""
    assert samples({"kind": "constant", "value": True}, n=2) == [True, True]
    assert samples({"kind": "constant", "value": 3}, n=1) == [3]
    assert samples({"kind": "constant", "value": 2.34567}, n=1) == [2.35]
    assert samples({"kind": "constant", "value": 2.34567, "decimals": None}, n=1) == [2.34567]


def test_uniform_stays_in_bounds_and_covers_them() -> None:
    """Uniform draws stay within [min, max] and spread across the whole range."""
    values = floats({"kind": "uniform", "min": -5, "max": 5}, n=5000)
    assert all(-5 <= v <= 5 for v in values)
    assert min(values) < -4.9
    assert max(values) > 4.9


def test_gaussian_clamps_to_bounds() -> None:
    """A wide gaussian is clamped to min and max, and does reach both."""
    data = {"kind": "gaussian", "mean": 20, "stddev": 10, "min": 15, "max": 25}
    values = floats(data, n=5000)
    assert all(15 <= v <= 25 for v in values)
    assert values.count(15) > 100
    assert values.count(25) > 100


def test_gaussian_mean_and_spread() -> None:
    """An unclamped gaussian has roughly the configured mean and standard deviation."""
    values = floats({"kind": "gaussian", "mean": 50, "stddev": 4, "decimals": None}, n=20_000)
    mean = sum(values) / len(values)
    stddev = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert mean == pytest.approx(50, abs=0.2)
    assert stddev == pytest.approx(4, rel=0.05)


@given(
    lo=st.floats(-1e6, 1e6),
    span=st.floats(1e-3, 1e4),
    step_ratio=st.floats(1e-3, 5),
    seed=st.integers(0, 2**32),
)
def test_random_walk_stays_in_bounds(lo: float, span: float, step_ratio: float, seed: int) -> None:
    """A random walk never leaves [min, max], even when a step is longer than the range."""
    data = {"kind": "random_walk", "min": lo, "max": lo + span, "step": span * step_ratio, "decimals": None}
    assert all(lo <= v <= lo + span for v in floats(data, n=300, seed=seed))


def test_random_walk_starts_at_start_and_moves_by_at_most_step() -> None:
    """The first sample is the start (the midpoint by default), and no move exceeds step."""
    data: dict[str, Any] = {"kind": "random_walk", "min": 10, "max": 20, "step": 0.5, "decimals": None}
    values = floats(data, n=5000)
    assert values[0] == 15
    assert all(abs(b - a) <= 0.5 for a, b in itertools.pairwise(values))
    assert min(values) < 11  # it does wander: reflection does not trap it near the start
    assert max(values) > 19
    assert floats({**data, "start": 12}, n=1) == [12]


def test_sine_follows_period_amplitude_and_offset() -> None:
    """A noiseless sine peaks at offset + amplitude a quarter period in, and repeats every period."""
    data = {"kind": "sine", "period": 60, "amplitude": 5, "offset": 20, "phase": 0, "decimals": None}
    generator = make_generator(SPEC.validate_python(data), random.Random(0))
    assert generator.sample(0) == pytest.approx(20)
    assert generator.sample(15) == pytest.approx(25)
    assert generator.sample(45) == pytest.approx(15)
    for t in (3.0, 17.5, 41.0):
        assert generator.sample(t + 60) == pytest.approx(generator.sample(t))
        assert generator.sample(t + 600) == pytest.approx(generator.sample(t))


def test_sine_depends_on_time_not_on_sample_count() -> None:
    """A noiseless sine gives the same value at the same t whatever was sampled before."""
    data = {"kind": "sine", "period": 10, "amplitude": 1, "decimals": None}
    forward = samples(data, n=50, seed=3, dt=0.5)
    generator = make_generator(SPEC.validate_python(data), random.Random(3))
    backward = [generator.sample(i * 0.5) for i in reversed(range(50))]
    assert backward[::-1] == forward


def test_sine_random_phase_and_noise() -> None:
    """A random phase differs per seed but keeps the amplitude; noise stays near the curve."""
    data = {"kind": "sine", "period": 100, "amplitude": 3, "decimals": None}
    assert samples(data, n=1, seed=1) != samples(data, n=1, seed=2)
    values = floats(data, n=100)
    assert max(values) - min(values) == pytest.approx(6, abs=0.01)
    noisy = floats({**data, "noise": 0.1, "phase": 0}, n=2000)
    assert all(abs(v - 3 * math.sin(2 * math.pi * i / 100)) < 0.6 for i, v in enumerate(noisy))


def test_counter_counts_and_wraps() -> None:
    """A counter steps by increment and resets to start on reaching or passing wrap, either way."""
    assert samples({"kind": "counter", "wrap": 3}, n=7) == [0, 1, 2, 0, 1, 2, 0]
    assert samples({"kind": "counter", "start": 1, "increment": 2, "wrap": 6}, n=5) == [1, 3, 5, 1, 3]
    assert samples({"kind": "counter", "start": 10, "increment": -4, "wrap": 0}, n=5) == [10, 6, 2, 10, 6]
    assert samples({"kind": "counter", "start": 100, "increment": 10}, n=3) == [100, 110, 120]


def test_choice_follows_weights_and_never_picks_weight_zero() -> None:
    """Weighted choice matches the weights roughly, and a zero weight never comes up."""
    data = {"kind": "choice", "values": ["never", "a", "b", "also-never"], "weights": [0, 1, 3, 0]}
    counts = Counter(samples(data, n=20_000))
    assert set(counts) == {"a", "b"}
    assert counts["a"] / 20_000 == pytest.approx(0.25, abs=0.02)


def test_choice_without_weights_is_uniform_and_keeps_types() -> None:
    """Without weights every value comes up about equally often, with its own type."""
    counts = Counter(samples({"kind": "choice", "values": [True, 2, "x"]}, n=9000))
    assert {type(v) for v in counts} == {bool, int, str}
    assert all(c / 9000 == pytest.approx(1 / 3, abs=0.03) for c in counts.values())


def test_boolean_probability() -> None:
    """p_true 0 is always false, 1 always true, and 0.3 about three times in ten."""
    assert set(samples({"kind": "boolean", "p_true": 0}, n=5000)) == {False}
    assert set(samples({"kind": "boolean", "p_true": 1}, n=5000)) == {True}
    trues = samples({"kind": "boolean", "p_true": 0.3}, n=20_000).count(True)
    assert trues / 20_000 == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize(("lat", "lon"), [(59.33, 18.06), (-33.9, 151.2), (0.0, 0.0), (70.0, -100.0)])
def test_gps_stays_within_radius(lat: float, lon: float) -> None:
    """A GPS track never strays further than radius_m from its start, and does roam up to it."""
    data = {"kind": "gps", "lat": lat, "lon": lon, "step_m": 25, "radius_m": 400}
    points = track(data, n=5000)
    start = {"lat": lat, "lon": lon}
    assert points[0] == start
    distances = [metres(start, p) for p in points]
    assert max(distances) <= 400 * 1.001 + 0.2  # flat-map error, and rounding to 6 decimals
    assert max(distances) > 350


def test_gps_step_longer_than_radius_still_stays_inside() -> None:
    """A step longer than the radius is cut short at the fence."""
    data = {"kind": "gps", "lat": 10, "lon": 10, "step_m": 1000, "radius_m": 100}
    start = {"lat": 10.0, "lon": 10.0}
    assert all(metres(start, p) <= 100.2 for p in track(data, n=500))


def test_gps_wraps_longitude_at_the_antimeridian() -> None:
    """A track across the 180th meridian keeps longitudes within [-180, 180)."""
    data = {"kind": "gps", "lat": 0, "lon": 179.9999, "step_m": 50, "radius_m": 2000}
    lons = [p["lon"] for p in track(data, n=2000)]
    assert all(-180 <= lon < 180 for lon in lons)
    assert min(lons) < 0 < max(lons)


def test_cross_field_error_names_file_group_metric_and_field() -> None:
    """A model validator's error reads as file, group, metric and field, then the reason."""
    message = config_error({"temperature": {"kind": "uniform", "min": 30, "max": 25}})
    assert message == "x.toml: groups[1].telemetry.temperature.min: must be less than max (30 >= 25)"


def test_unknown_key_is_reported_at_the_key() -> None:
    """An unknown key in a metric is named in the path, without the kind in between."""
    message = config_error({"temperature": {"kind": "sine", "period": 60, "amplitude": 1, "colour": "red"}})
    assert message == "x.toml: groups[1].telemetry.temperature.colour: unknown key"


def test_field_constraint_is_reported_at_the_field() -> None:
    """A single-field constraint names that field, without the kind in between."""
    message = config_error({"temperature": {"kind": "gaussian", "mean": 1, "stddev": -1}})
    assert (
        message
        == "x.toml: groups[1].telemetry.temperature.stddev: Input should be greater than or equal to 0"
    )


def test_unknown_or_missing_kind_is_blamed_on_kind() -> None:
    """An unknown kind lists the known ones, and a missing kind is reported as missing."""
    message = config_error({"temperature": {"kind": "sinus", "period": 60}})
    assert message.startswith(
        "x.toml: groups[1].telemetry.temperature.kind: unknown kind 'sinus'; expected one of"
    )
    assert "'random_walk'" in message
    assert (
        config_error({"temperature": {"min": 1}})
        == "x.toml: groups[1].telemetry.temperature.kind: Field required"
    )


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ({"kind": "uniform", "min": 2.5, "max": 2.5}, "min: must be less than max (2.5 >= 2.5)"),
        ({"kind": "gaussian", "mean": 0, "stddev": 1, "min": 5}, "mean: must be at least min (0 < 5)"),
        ({"kind": "gaussian", "mean": 9, "stddev": 1, "max": 5}, "mean: must be at most max (9 > 5)"),
        (
            {"kind": "random_walk", "min": 0, "max": 1, "step": 0.1, "start": 2},
            "start: must be at most max (2 > 1)",
        ),
        ({"kind": "random_walk", "min": 0, "max": 1, "step": 0}, "step: Input should be greater than 0"),
        ({"kind": "counter", "increment": 0}, "increment: must not be 0"),
        ({"kind": "counter", "start": 5, "wrap": 5}, "wrap: must be greater than start (5 vs 5)"),
        ({"kind": "counter", "increment": -1, "wrap": 3}, "wrap: must be less than start (3 vs 0)"),
        (
            {"kind": "choice", "values": []},
            "values: Tuple should have at least 1 item after validation, not 0",
        ),
        (
            {"kind": "choice", "values": [1, 2], "weights": [1]},
            "weights: must give one weight per value (1 weights, 2 values)",
        ),
        ({"kind": "choice", "values": [1, 2], "weights": [0, 0]}, "weights: must not all be 0"),
        (
            {"kind": "choice", "values": [1, 2], "weights": [1, -1]},
            "weights[1]: Input should be greater than or equal to 0",
        ),
        ({"kind": "boolean", "p_true": 1.5}, "p_true: Input should be less than or equal to 1"),
        (
            {"kind": "gps", "lat": 91, "lon": 0, "step_m": 1, "radius_m": 1},
            "lat: Input should be less than or equal to 90",
        ),
        (
            {"kind": "gps", "lat": 89.999, "lon": 0, "step_m": 1, "radius_m": 500},
            "radius_m: reaches a pole from lat 89.999 (500 m)",
        ),
        ({"kind": "sine", "period": 0, "amplitude": 1}, "period: Input should be greater than 0"),
        (
            {"kind": "sine", "period": 1, "amplitude": 1, "phase": "later"},
            'phase: must be a number of radians or "random"',
        ),
        ({"kind": "constant", "value": [1]}, "value: must be a string, number or boolean, not list"),
        ({"kind": "choice", "values": ["a", {}]}, "values[1]: must be a string, number or boolean, not dict"),
        (
            {"kind": "constant", "value": 1, "decimals": -1},
            "decimals: Input should be greater than or equal to 0",
        ),
    ],
)
def test_invalid_specs_name_the_field_to_blame(metric: dict[str, Any], expected: str) -> None:
    """Each invalid spec is rejected with the field to blame and a reason."""
    assert config_error({"m": metric}) == f"x.toml: groups[1].telemetry.m.{expected}"
