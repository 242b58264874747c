"""Batch size of a chain instance (the paper's estimate, §4.3).  Pure: no clock, no I/O.

With ``S_i`` the cycles per packet of NF ``i``, ``C`` the cycles one switch
between two NFs costs, ``N`` the chain length, ``F`` the core's clock and
``B`` the batch size, the chain's rate is

    r(B) = F / (sum(S_i) + N * C / B)

and without any switching cost it would be ``r~ = F / sum(S_i)``, so

    r~ / r(B) = 1 + N * C / (B * sum(S_i)).

The smallest batch with ``r~ / r <= 1 + p`` is ``ceil(N * C / (p * sum(S_i)))``.
A batch also costs latency: a packet waits for its batch to be received and
then for the whole chain to process it, so the latency estimate is twice the
batch time, ``2 * (B * sum(S_i) + N * C) / F``.  The batch is capped so that
this stays under ``alpha * SLO`` (the controller's lower threshold); when the
cap is below the rate goal the cap wins and :attr:`BatchChoice.rate_goal_met`
says so.  A single-NF chain has no switches (``N * C`` counts as 0).

:class:`BatchEstimator` re-estimates as the measured costs drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_BATCH = 1024  # the runtime's largest burst (cext/src/qs_chainrt.h QS_MAX_BATCH)


class BatchSizingError(ValueError):
    """An input to the batch estimate is out of range; the message names it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    min_for_rate: int  # smallest B meeting r~/r <= 1 + p
    max_for_slo: int  # largest B keeping 2 x batch time under alpha x SLO (0: none does)
    rate_goal_met: bool
    slo_met: bool
    rate_pps: float  # r(batch)
    ideal_pps: float  # r~
    latency_us: float  # 2 x batch time at `batch`


def switch_cycles(n_nfs: int, ctx_switch_cycles: float) -> float:
    """Cycles one chain pass spends switching: N * C, none for a single NF."""
    return n_nfs * ctx_switch_cycles if n_nfs > 1 else 0.0


def rate_pps(nf_cycles: Sequence[float], ctx_switch_cycles: float, batch: int, hz: float) -> float:
    """r = F / (sum S_i + N*C/B)."""
    per_pkt = sum(nf_cycles) + switch_cycles(len(nf_cycles), ctx_switch_cycles) / batch
    return hz / per_pkt


def latency_us(
    nf_cycles: Sequence[float], ctx_switch_cycles: float, batch: int, hz: float
) -> float:
    """The latency estimate, 2 x the time the chain takes for one batch."""
    cycles = batch * sum(nf_cycles) + switch_cycles(len(nf_cycles), ctx_switch_cycles)
    return 2.0 * cycles / hz * 1e6


def _check(nf_cycles, ctx_switch_cycles, hz, p, slo_us, alpha, max_batch):
    if not nf_cycles:
        raise BatchSizingError("nf_cycles", "a chain has at least one NF")
    for i, s in enumerate(nf_cycles):
        if not (isinstance(s, int | float) and math.isfinite(s) and s > 0):
            raise BatchSizingError(f"nf_cycles[{i}]", f"{s!r} is not a positive number")
    if not (math.isfinite(ctx_switch_cycles) and ctx_switch_cycles >= 0):
        raise BatchSizingError("ctx_switch_cycles", f"{ctx_switch_cycles!r} is not >= 0")
    if not (math.isfinite(hz) and hz > 0):
        raise BatchSizingError("hz", f"{hz!r} is not a positive clock rate")
    if not (math.isfinite(p) and p > 0):
        raise BatchSizingError("p", f"{p!r} must be > 0 (the allowed rate loss, e.g. 0.05)")
    if not (math.isfinite(slo_us) and slo_us > 0):
        raise BatchSizingError("slo_us", f"{slo_us!r} is not a positive latency")
    if not 0 < alpha <= 1:
        raise BatchSizingError("alpha", f"{alpha!r} is outside (0, 1]")
    if not (isinstance(max_batch, int) and 1 <= max_batch <= MAX_BATCH):
        raise BatchSizingError("max_batch", f"{max_batch!r} is outside 1..{MAX_BATCH}")


def choose_batch(
    nf_cycles: Sequence[float],
    ctx_switch_cycles: float,
    hz: float,
    *,
    p: float = 0.05,
    slo_us: float,
    alpha: float = 0.6,
    max_batch: int = MAX_BATCH,
    nf_cycles_p99: Sequence[float] | None = None,
) -> BatchChoice:
    """The smallest batch within ``p`` of the switch-free rate, capped by the SLO.

    ``nf_cycles_p99`` (per NF, cycles per packet at the 99th percentile of
    batch time) bounds the latency when given; the mean ``nf_cycles`` is used
    otherwise.
    """
    _check(nf_cycles, ctx_switch_cycles, hz, p, slo_us, alpha, max_batch)
    tail = list(nf_cycles_p99) if nf_cycles_p99 is not None else list(nf_cycles)
    if len(tail) != len(nf_cycles):
        raise BatchSizingError("nf_cycles_p99", "needs one value per NF")
    for i, s in enumerate(tail):
        if not (math.isfinite(s) and s > 0):
            raise BatchSizingError(f"nf_cycles_p99[{i}]", f"{s!r} is not a positive number")
    total = float(sum(nf_cycles))
    sw = switch_cycles(len(nf_cycles), ctx_switch_cycles)
    # ceil with a small tolerance so float noise (e.g. 10.000000001) does not add one
    b_rate = max(1, math.ceil(sw / (p * total) - 1e-9)) if sw else 1
    budget = alpha * slo_us * 1e-6 * hz / 2.0 - sw  # cycles a batch may take
    b_slo = min(max_batch, math.floor(budget / sum(tail) + 1e-9)) if budget > 0 else 0
    batch = max(1, min(b_rate, b_slo, max_batch))
    return BatchChoice(
        batch=batch,
        min_for_rate=b_rate,
        max_for_slo=max(b_slo, 0),
        rate_goal_met=b_rate <= min(b_slo, max_batch),
        slo_met=b_slo >= 1,
        rate_pps=rate_pps(nf_cycles, ctx_switch_cycles, batch, hz),
        ideal_pps=hz / total,
        latency_us=latency_us(tail, ctx_switch_cycles, batch, hz),
    )


def fit_switch_cost(points: Sequence[tuple[int, float]], n_nfs: int) -> tuple[float, float]:
    """``(per-packet cycles, C)`` from the chain's own measured cost at two or more batches.

    ``points`` are ``(batch, core cycles per packet)``, e.g. ``F / rate``
    measured over a window at that batch.  The model is
    ``cycles(B) = a + N * C / B``; a least-squares fit over ``1/B`` gives
    ``a`` (everything that does not shrink with the batch: the NFs, the
    copies, the rings) and ``C``, the switch cost as the chain really pays
    it -- the kernel's switch plus the cache and TLB refills after it, which
    a yield ping-pong between two empty processes does not see.
    """
    if n_nfs < 2:
        raise BatchSizingError("n_nfs", "a single NF has no switches to fit")
    pts = [(int(b), float(c)) for b, c in points]
    if len({b for b, _ in pts}) < 2:
        raise BatchSizingError("points", "need measurements at two or more batch sizes")
    for b, c in pts:
        if b < 1 or not (math.isfinite(c) and c > 0):
            raise BatchSizingError("points", f"({b}, {c}) is not (batch >= 1, cycles > 0)")
    xs = [1.0 / b for b, _ in pts]
    ys = [c for _, c in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    c = max(slope, 0.0) / n_nfs
    a = my - slope * mx if slope > 0 else my
    return a, c


class BatchEstimator:
    """Keeps a chain's batch size current as its measured costs drift.

    Feed it measurements with :meth:`observe` (per-NF cycles per packet, the
    context-switch cost); it smooths them (EWMA weight ``weight``) and
    :meth:`update` returns a new batch size only when the estimate moved by
    more than ``hysteresis`` (a fraction) from the one in force, so that
    noise does not make the agent call ``set_batch`` every second.
    """

    def __init__(
        self,
        n_nfs: int,
        hz: float,
        *,
        slo_us: float,
        p: float = 0.05,
        alpha: float = 0.6,
        weight: float = 0.3,
        hysteresis: float = 0.1,
        max_batch: int = MAX_BATCH,
    ):
        if not n_nfs >= 1:
            raise BatchSizingError("n_nfs", f"{n_nfs!r} is not >= 1")
        if not 0 < weight <= 1:
            raise BatchSizingError("weight", f"{weight!r} is outside (0, 1]")
        if not 0 <= hysteresis < 1:
            raise BatchSizingError("hysteresis", f"{hysteresis!r} is outside [0, 1)")
        self.n_nfs = n_nfs
        self.hz = hz
        self.slo_us = slo_us
        self.p = p
        self.alpha = alpha
        self.weight = weight
        self.hysteresis = hysteresis
        self.max_batch = max_batch
        self.nf_cycles: list[float] | None = None
        self.nf_cycles_p99: list[float] | None = None
        self.ctx_switch_cycles: float | None = None
        self.current: int | None = None

    def _mix(self, old, new):
        return new if old is None else old + self.weight * (new - old)

    def observe(
        self,
        nf_cycles: Sequence[float],
        ctx_switch_cycles: float,
        nf_cycles_p99: Sequence[float] | None = None,
    ) -> None:
        if len(nf_cycles) != self.n_nfs:
            raise BatchSizingError(
                "nf_cycles", f"expected {self.n_nfs} values, got {len(nf_cycles)}"
            )
        tail = nf_cycles_p99 if nf_cycles_p99 is not None else nf_cycles
        if len(tail) != self.n_nfs:
            raise BatchSizingError("nf_cycles_p99", f"expected {self.n_nfs} values")
        if self.nf_cycles is None:
            self.nf_cycles = [float(x) for x in nf_cycles]
            self.nf_cycles_p99 = [float(x) for x in tail]
        else:
            self.nf_cycles = [
                self._mix(o, n) for o, n in zip(self.nf_cycles, nf_cycles, strict=True)
            ]
            self.nf_cycles_p99 = [
                self._mix(o, n) for o, n in zip(self.nf_cycles_p99, tail, strict=True)
            ]
        self.ctx_switch_cycles = self._mix(self.ctx_switch_cycles, float(ctx_switch_cycles))

    def estimate(self) -> BatchChoice:
        if self.nf_cycles is None:
            raise BatchSizingError("measurements", "observe() has not been called yet")
        return choose_batch(
            self.nf_cycles,
            self.ctx_switch_cycles,
            self.hz,
            p=self.p,
            slo_us=self.slo_us,
            alpha=self.alpha,
            max_batch=self.max_batch,
            nf_cycles_p99=self.nf_cycles_p99,
        )

    def update(self) -> int | None:
        """The new batch size to set, or None if the one in force is still good."""
        b = self.estimate().batch
        if self.current is None or abs(b - self.current) > self.hysteresis * self.current:
            self.current = b
            return b
        return None
