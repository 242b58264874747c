"""Traffic models: flows with start, end, rate and packet size, as numpy arrays.

:func:`ramp` is the paper's ramp: new flows come at ``growth`` per second
(10) so that the offered rate rises linearly to ``peak_pps`` over
``ramp_s`` (60 s), then stays there for ``steady_s``; optionally it falls to
zero over ``down_s`` (flows are ended at uniform random times in that phase).
Flows live an exponential time of mean ``mean_flow_s``; ended flows are
replaced (arrival intensity ``N'(t) + N(t)/D`` keeps ``N(t)`` flows alive on
average), so the accelerate model has durations to work with.  Packet sizes
follow :class:`~tools.sim.micro.SizeDist` (1024 B median); flow rates are
lognormal around ``peak_pps / N_peak``.

``accel_frac`` > 0 is the paper's second model: a random ``accel_frac`` of the
flows run ``accel_factor`` (1.3x) faster for half their duration, from a
uniformly drawn point of their first half.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tools.sim.micro import SizeDist


@dataclasses.dataclass(frozen=True)
class Flows:
    start: np.ndarray
    end: np.ndarray
    pps: np.ndarray  # base rate
    size: np.ndarray  # bytes per packet
    accel_from: np.ndarray  # +inf when not accelerated
    accel_to: np.ndarray
    accel_factor: float = 1.3

    def __len__(self):
        return len(self.start)

    def offered_pps(self, t: float) -> float:
        alive = (self.start <= t) & (self.end > t)
        fast = alive & (self.accel_from <= t) & (self.accel_to > t)
        return float(self.pps[alive].sum() + (self.accel_factor - 1) * self.pps[fast].sum())


@dataclasses.dataclass(frozen=True)
class Ramp:
    peak_pps: float
    ramp_s: float = 60.0
    steady_s: float = 60.0
    down_s: float = 0.0
    growth: float = 10.0  # new flows per second on the ramp (beyond replacements)
    mean_flow_s: float = 60.0
    rate_sigma: float = 0.5
    sizes: SizeDist = SizeDist()
    accel_frac: float = 0.0
    accel_factor: float = 1.3

    @property
    def duration(self) -> float:
        return self.ramp_s + self.steady_s + self.down_s

    @property
    def peak_flows(self) -> float:
        return self.growth * self.ramp_s


def ramp(tr: Ramp, rng: np.random.Generator) -> Flows:
    if tr.peak_pps <= 0 or tr.ramp_s <= 0 or tr.growth <= 0 or tr.mean_flow_s <= 0:
        raise ValueError("peak_pps, ramp_s, growth and mean_flow_s must be > 0")
    if not 0 <= tr.accel_frac <= 1:
        raise ValueError(f"accel_frac: must be in [0, 1], not {tr.accel_frac}")
    n_peak, d = tr.peak_flows, tr.mean_flow_s
    t_up = tr.ramp_s + tr.steady_s
    a_max = n_peak / tr.ramp_s + n_peak / d
    cand = np.cumsum(rng.exponential(1.0 / a_max, int(a_max * t_up * 1.2) + 100))
    cand = cand[cand < t_up]
    intensity = np.where(
        cand < tr.ramp_s, n_peak / tr.ramp_s + n_peak * cand / (tr.ramp_s * d), n_peak / d
    )
    start = cand[rng.random(len(cand)) < intensity / a_max]
    n = len(start)
    end = start + rng.exponential(d, n)
    if tr.down_s > 0:
        kill = t_up + rng.random(n) * tr.down_s
        end = np.minimum(end, kill)
    else:
        end = np.minimum(end, t_up)
    mean_rate = tr.peak_pps / n_peak
    s = tr.rate_sigma
    pps = mean_rate * np.exp(s * rng.standard_normal(n) - s * s / 2)
    size = tr.sizes.sample(rng, n)
    fast = rng.random(n) < tr.accel_frac
    half = (end - start) / 2
    a0 = np.where(fast, start + rng.random(n) * half, np.inf)
    a1 = np.where(fast, a0 + half, np.inf)
    return Flows(start, end, pps, size, a0, a1, tr.accel_factor)


def constant(pps: float, duration: float, size: float = 1024.0) -> Flows:
    """One flow at ``pps`` for ``duration`` (the oracle's steady load)."""
    one = np.ones(1)
    return Flows(0 * one, duration * one, pps * one, size * one, np.inf * one, np.inf * one, 1.0)
