"""Telemetry generators: what a simulated device measures, as config specs and as cheap samplers.

A group's `telemetry` table maps a metric name to a `MetricSpec`, chosen by its `kind`::

    [groups.telemetry.temperature]
    kind = "random_walk"
    min = 15
    max = 30
    step = 0.2

`make_generator(spec, rng)` turns a spec into a `Generator`; `sample(t)` returns the next value. The
code is pure: every random draw comes from the `rng` passed in, so one seed gives one fleet, and `t`
is simulated seconds since the device started. Only `sine` depends on `t`; the walks and the counter
advance once per sample, and their first sample is their start. Floats are rounded to `decimals`
places (default 2, `None` keeps full precision), so a value may pass a bound by half a unit in the
last place when the bound has more decimals.
"""

from __future__ import annotations

import math
import random
from bisect import bisect
from itertools import accumulate
from typing import Annotated, Literal, Protocol, Self, TypeAlias, assert_never

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WrapValidator,
    field_validator,
    model_validator,
)

from fleet.config import untagged

__all__ = [
    "BooleanSpec",
    "ChoiceSpec",
    "ConstantSpec",
    "CounterSpec",
    "GaussianSpec",
    "Generator",
    "GpsSpec",
    "JSONValue",
    "MetricSpec",
    "RandomWalkSpec",
    "SineSpec",
    "UniformSpec",
    "make_generator",
]

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"


def _scalar(value: object) -> object:
    # Without this a bad value gets one error per union member, at paths like `value.bool`.
    if isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"must be a string, number or boolean, not {type(value).__name__}")


_Scalar: TypeAlias = Annotated[bool | int | float | str, BeforeValidator(_scalar)]
_Decimals: TypeAlias = Annotated[int, Field(ge=0, le=15)] | None

_M_PER_DEGREE = math.pi * 6_371_008.8 / 180  # along a meridian, on the mean-radius sphere
_GPS_TURN = math.radians(20)  # stddev of a heading change per sample: tracks look driven, not jittered


def _num(x: float) -> str:
    return f"{x:.15g}"


def _check_range(lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"min: must be less than max ({_num(lo)} >= {_num(hi)})")


def _check_within(name: str, x: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and x < lo:
        raise ValueError(f"{name}: must be at least min ({_num(x)} < {_num(lo)})")
    if hi is not None and x > hi:
        raise ValueError(f"{name}: must be at most max ({_num(x)} > {_num(hi)})")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstantSpec(_Spec):
    """The same value on every sample."""

    kind: Literal["constant"] = "constant"
    value: _Scalar
    decimals: _Decimals = 2


class UniformSpec(_Spec):
    """Independent draws, uniform over [min, max]."""

    kind: Literal["uniform"] = "uniform"
    min: float
    max: float
    decimals: _Decimals = 2

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_range(self.min, self.max)
        return self


class GaussianSpec(_Spec):
    """Independent normal draws, clamped to `min` and `max` when given."""

    kind: Literal["gaussian"] = "gaussian"
    mean: float
    stddev: float = Field(ge=0)
    min: float | None = None
    max: float | None = None
    decimals: _Decimals = 2

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_range(self.min, self.max)
        _check_within("mean", self.mean, self.min, self.max)
        return self


class RandomWalkSpec(_Spec):
    """Moves by up to `step` per sample, uniformly; reflects off `min` and `max`, so it never sticks there."""

    kind: Literal["random_walk"] = "random_walk"
    start: float | None = None  # None: the midpoint of [min, max]
    step: float = Field(gt=0)
    min: float
    max: float
    decimals: _Decimals = 2

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_range(self.min, self.max)
        if self.start is not None:
            _check_within("start", self.start, self.min, self.max)
        return self


class SineSpec(_Spec):
    """`offset + amplitude * sin(2 pi t / period + phase)`, plus gaussian `noise`; a function of time t."""

    kind: Literal["sine"] = "sine"
    period: float = Field(gt=0)
    amplitude: float = Field(ge=0)
    offset: float = 0.0
    noise: float = Field(default=0.0, ge=0)
    phase: float | Literal["random"] = "random"  # radians, or drawn once per device from its rng
    decimals: _Decimals = 2

    @field_validator("phase", mode="before")
    @classmethod
    def _check_phase(cls, value: object) -> object:
        if value == "random" or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
        raise ValueError('must be a number of radians or "random"')


class CounterSpec(_Spec):
    """`start`, then `+ increment` per sample; back to `start` on reaching or passing `wrap`, if given."""

    kind: Literal["counter"] = "counter"
    start: int = 0
    increment: int = 1
    wrap: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.increment == 0:
            raise ValueError("increment: must not be 0")
        if self.wrap is not None and (self.wrap - self.start) * self.increment <= 0:
            side = "greater" if self.increment > 0 else "less"
            raise ValueError(f"wrap: must be {side} than start ({self.wrap} vs {self.start})")
        return self


class ChoiceSpec(_Spec):
    """One of `values` per sample, weighted by `weights` when given; a value of weight 0 never comes up."""

    kind: Literal["choice"] = "choice"
    values: tuple[_Scalar, ...] = Field(min_length=1)
    weights: tuple[Annotated[float, Field(ge=0)], ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                n, m = len(self.weights), len(self.values)
                raise ValueError(f"weights: must give one weight per value ({n} weights, {m} values)")
            if sum(self.weights) <= 0:
                raise ValueError("weights: must not all be 0")
        return self


class BooleanSpec(_Spec):
    """True with probability `p_true`, independently per sample."""

    kind: Literal["boolean"] = "boolean"
    p_true: float = Field(default=0.5, ge=0, le=1)


class GpsSpec(_Spec):
    """A vehicle: `step_m` metres per sample, heading drifting, never over `radius_m` from the start.

    Its value is `{"lat": .., "lon": ..}` in degrees, rounded to 6 places (about 0.1 m). Distances use a
    flat map around the start, which is accurate to well under 1% for radii up to tens of kilometres.
    """

    kind: Literal["gps"] = "gps"
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    step_m: float = Field(gt=0)
    radius_m: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if abs(self.lat) + self.radius_m / _M_PER_DEGREE >= 90:
            raise ValueError(f"radius_m: reaches a pole from lat {_num(self.lat)} ({_num(self.radius_m)} m)")
        return self


MetricSpec: TypeAlias = Annotated[
    ConstantSpec
    | UniformSpec
    | GaussianSpec
    | RandomWalkSpec
    | SineSpec
    | CounterSpec
    | ChoiceSpec
    | BooleanSpec
    | GpsSpec,
    Field(discriminator="kind"),
    WrapValidator(untagged("kind")),
]
"""One metric's spec, told apart by `kind`; use it as `telemetry: dict[str, MetricSpec]`."""


class Generator(Protocol):
    """Produces one metric's values; `t` is simulated seconds since the device started."""

    def sample(self, t: float) -> JSONValue: ...


def _round(x: float, decimals: int | None) -> float:
    return x if decimals is None else round(x, decimals)


class _Constant:
    __slots__ = ("_value",)

    def __init__(self, spec: ConstantSpec) -> None:
        value = spec.value
        self._value = _round(value, spec.decimals) if isinstance(value, float) else value

    def sample(self, t: float) -> _Scalar:
        return self._value


class _Uniform:
    __slots__ = ("_decimals", "_lo", "_rng", "_span")

    def __init__(self, spec: UniformSpec, rng: random.Random) -> None:
        self._rng, self._lo, self._span, self._decimals = rng, spec.min, spec.max - spec.min, spec.decimals

    def sample(self, t: float) -> float:
        return _round(self._lo + self._span * self._rng.random(), self._decimals)


class _Gaussian:
    __slots__ = ("_decimals", "_hi", "_lo", "_mean", "_rng", "_stddev")

    def __init__(self, spec: GaussianSpec, rng: random.Random) -> None:
        self._rng, self._mean, self._stddev, self._decimals = rng, spec.mean, spec.stddev, spec.decimals
        self._lo = -math.inf if spec.min is None else spec.min
        self._hi = math.inf if spec.max is None else spec.max

    def sample(self, t: float) -> float:
        x = self._rng.gauss(self._mean, self._stddev)
        return _round(min(max(x, self._lo), self._hi), self._decimals)


class _RandomWalk:
    __slots__ = ("_decimals", "_hi", "_lo", "_rng", "_step", "_x")

    def __init__(self, spec: RandomWalkSpec, rng: random.Random) -> None:
        self._rng, self._step, self._lo, self._hi = rng, spec.step, spec.min, spec.max
        self._x = (spec.min + spec.max) / 2 if spec.start is None else spec.start
        self._decimals = spec.decimals

    def sample(self, t: float) -> float:
        x, lo, hi = self._x, self._lo, self._hi
        nxt = x + self._step * (2 * self._rng.random() - 1)
        if nxt < lo or nxt > hi:
            # Fold back into [lo, hi], however far the step overshot (a step may exceed the span).
            span = hi - lo
            y = (nxt - lo) % (2 * span)
            nxt = min(max(lo + (y if y <= span else 2 * span - y), lo), hi)
        self._x = nxt
        return _round(x, self._decimals)


class _Sine:
    __slots__ = ("_amplitude", "_decimals", "_noise", "_offset", "_omega", "_phase", "_rng")

    def __init__(self, spec: SineSpec, rng: random.Random) -> None:
        self._rng, self._omega = rng, 2 * math.pi / spec.period
        self._amplitude, self._offset, self._noise = spec.amplitude, spec.offset, spec.noise
        self._phase = rng.uniform(0, 2 * math.pi) if spec.phase == "random" else spec.phase
        self._decimals = spec.decimals

    def sample(self, t: float) -> float:
        x = self._offset + self._amplitude * math.sin(self._omega * t + self._phase)
        if self._noise:
            x += self._rng.gauss(0.0, self._noise)
        return _round(x, self._decimals)


class _Counter:
    __slots__ = ("_increment", "_next", "_start", "_wrap")

    def __init__(self, spec: CounterSpec) -> None:
        self._start, self._increment, self._wrap, self._next = (
            spec.start,
            spec.increment,
            spec.wrap,
            spec.start,
        )

    def sample(self, t: float) -> int:
        value = self._next
        nxt = value + self._increment
        # Reached or passed wrap, in the direction of travel.
        if self._wrap is not None and (nxt - self._wrap) * self._increment >= 0:
            nxt = self._start
        self._next = nxt
        return value


class _Choice:
    __slots__ = ("_cumulative", "_last", "_rng", "_total", "_values")

    def __init__(self, spec: ChoiceSpec, rng: random.Random) -> None:
        weights = spec.weights or (1.0,) * len(spec.values)
        # Dropping zero weights is what guarantees they never come up, even when random() * total
        # rounds up to total.
        kept = [(v, w) for v, w in zip(spec.values, weights, strict=True) if w > 0]
        self._rng, self._values = rng, [v for v, _ in kept]
        self._cumulative = list(accumulate(w for _, w in kept))
        self._total, self._last = self._cumulative[-1], len(kept) - 1

    def sample(self, t: float) -> _Scalar:
        return self._values[bisect(self._cumulative, self._rng.random() * self._total, 0, self._last)]


class _Boolean:
    __slots__ = ("_p", "_rng")

    def __init__(self, spec: BooleanSpec, rng: random.Random) -> None:
        self._rng, self._p = rng, spec.p_true

    def sample(self, t: float) -> bool:
        return self._rng.random() < self._p


class _Gps:
    __slots__ = ("_deg_per_m_lon", "_heading", "_lat", "_lon", "_radius", "_rng", "_step", "_x", "_y")

    def __init__(self, spec: GpsSpec, rng: random.Random) -> None:
        self._rng, self._lat, self._lon = rng, spec.lat, spec.lon
        self._step, self._radius = spec.step_m, spec.radius_m
        self._deg_per_m_lon = 1 / (_M_PER_DEGREE * math.cos(math.radians(spec.lat)))
        self._x = self._y = 0.0  # metres east and north of the start
        self._heading = rng.uniform(0, 2 * math.pi)

    def sample(self, t: float) -> JSONValue:
        x, y, step = self._x, self._y, self._step
        lon = self._lon + x * self._deg_per_m_lon
        if not -180 <= lon < 180:
            lon = (lon + 180) % 360 - 180
        value: JSONValue = {"lat": round(self._lat + y / _M_PER_DEGREE, 6), "lon": round(lon, 6)}
        heading = self._heading + self._rng.gauss(0.0, _GPS_TURN)
        nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
        if math.hypot(nx, ny) > self._radius:
            heading = math.atan2(-y, -x)  # at the fence, head back to the start
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            r = math.hypot(nx, ny)
            if r > self._radius:  # a step longer than the way back overshoots: stop at the fence
                nx, ny = nx * self._radius / r, ny * self._radius / r
        self._x, self._y, self._heading = nx, ny, heading
        return value


def make_generator(spec: MetricSpec, rng: random.Random) -> Generator:
    """A fresh generator for `spec`; it keeps `rng` and draws from it (in `__init__` too, for a random phase).

    Generators that share an rng stay deterministic as long as they are built and sampled in a fixed order.
    """
    match spec:
        case ConstantSpec():
            return _Constant(spec)
        case UniformSpec():
            return _Uniform(spec, rng)
        case GaussianSpec():
            return _Gaussian(spec, rng)
        case RandomWalkSpec():
            return _RandomWalk(spec, rng)
        case SineSpec():
            return _Sine(spec, rng)
        case CounterSpec():
            return _Counter(spec)
        case ChoiceSpec():
            return _Choice(spec, rng)
        case BooleanSpec():
            return _Boolean(spec, rng)
        case GpsSpec():
            return _Gps(spec, rng)
    assert_never(spec)
