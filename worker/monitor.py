"""The agent's monitor: per-instance load figures from the NFs' shared counters.

It runs in the agent, on the housekeeping core, and never writes to an NF's
memory: each tick it reads the counters every NF runtime keeps in its
chain buffer's header (``qs_nfctl``: batches, packets, drops, TSC cycles in
the NF; see docs/chains.rst) and turns two readings into, per instance:

``pps``
    packets per second the first NF took from the VF;
``load``
    the fraction of the core's time spent inside the chain's NFs
    (sum over the NFs of their cycles / TSC Hz / wall time);
``p99_us``
    the 99th percentile of the chain's per-batch execution time (µs): per
    tick the mean batch time of each NF (cycles / batches in that tick),
    summed over the NFs, gives one sample; the percentile is over the last
    ``window`` ticks with traffic.  The chain buffer keeps no per-batch
    histogram (the single-NF counter block of :mod:`worker.nf_stats`
    does), so this is a percentile of tick means, not of single batches;
``drops``
    packets dropped by the chain since it was prepared, a running total: the
    first NF's drop count (which includes what later NFs dropped: their slots
    come back to it flagged) plus descriptors any NF refused as invalid.

The NIC queue length is not reported: the first NF owns its port, and
``rte_eth_rx_queue_count`` works only in that process (and not at all on
``net_af_packet``), so the agent cannot read it from outside.

:class:`Significance` (pure) decides which rows are worth a ``stats`` call:
a value crossing a configured threshold, a change by more than a configured
fraction since the last report, or the periodic summary.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


def tsc_hz(seconds: float = 0.05) -> float:
    """The TSC frequency, measured against the monotonic clock."""
    from cext import chainbuf

    t0, c0 = time.perf_counter(), chainbuf.rdtsc()
    time.sleep(seconds)
    return (chainbuf.rdtsc() - c0) / (time.perf_counter() - t0)


@dataclass
class _Track:
    t: float
    nfs: list[dict]
    p99_samples: deque = field(default_factory=lambda: deque(maxlen=200))


def percentile(values, q: float) -> float:
    xs = sorted(values)
    if not xs:
        return 0.0
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Rates:
    """Per-instance figures from successive counter readings (pure: readings in, rows out)."""

    def __init__(self, hz: float, window: int = 200):
        if hz <= 0:
            raise ValueError(f"hz: {hz!r} is not a positive TSC frequency")
        self.hz = hz
        self.window = window
        self.tracks: dict[int, _Track] = {}

    def update(self, readings: dict[int, list[dict]], now: float) -> list[dict]:
        """``readings``: instance id -> its NFs' counters (``ChainInstance.stats()``)."""
        rows = []
        for iid, nfs in readings.items():
            prev = self.tracks.get(iid)
            # NF 0 counts every packet of the chain that did not leave: its own verdicts,
            # no free slot, TX refused, and slots a later NF flagged dropped when they
            # come back; later NFs' own drop counts are already in it
            drops = nfs[0]["drops"] + sum(n["bad"] for n in nfs)
            if prev is None:
                track = _Track(now, nfs, deque(maxlen=self.window))
                self.tracks[iid] = track
                rows.append({"id": iid, "pps": 0.0, "load": 0.0, "p99_us": 0.0, "drops": drops})
                continue
            dt = now - prev.t
            if dt <= 0:
                continue
            pps = (nfs[0]["pkts"] - prev.nfs[0]["pkts"]) / dt
            cycles = sum(n["cycles"] - p["cycles"] for n, p in zip(nfs, prev.nfs, strict=True))
            per_batch = 0.0
            for n, p in zip(nfs, prev.nfs, strict=True):
                b = n["batches"] - p["batches"]
                if b > 0:
                    per_batch += (n["cycles"] - p["cycles"]) / b
            if per_batch > 0:
                prev.p99_samples.append(per_batch / self.hz * 1e6)
            prev.t, prev.nfs = now, nfs
            rows.append({
                "id": iid,
                "pps": round(max(0.0, pps), 1),
                "load": round(min(1.0, max(0.0, cycles / self.hz / dt)), 6),
                "p99_us": round(percentile(prev.p99_samples, 0.99), 3),
                "drops": drops,
            })  # fmt: skip
        for gone in set(self.tracks) - set(readings):
            del self.tracks[gone]
        return rows


class Significance:
    """Which rows to send: the paper's "only when significant events occur".

    A row is sent when its instance is new, when a value crossed one of its
    ``thresholds`` (either way) since the last report, or when it changed by
    more than ``fraction`` of the last reported value (and by at least
    ``floor`` of that key, so noise around zero is not news).  Every
    ``summary_s`` seconds all rows go out (the low-rate periodic summary).
    """

    def __init__(
        self,
        fraction: float = 0.2,
        thresholds: dict[str, list[float]] | None = None,
        floor: dict[str, float] | None = None,
        summary_s: float = 10.0,
    ):
        if fraction <= 0:
            raise ValueError(f"fraction: {fraction!r} must be > 0")
        if summary_s <= 0:
            raise ValueError(f"summary_s: {summary_s!r} must be > 0")
        self.fraction = fraction
        self.thresholds = {k: sorted(v) for k, v in (thresholds or {}).items()}
        self.floor = {"pps": 50.0, "load": 0.02, "p99_us": 2.0, "drops": 1, **(floor or {})}
        self.summary_s = summary_s
        self.last: dict[int, dict] = {}
        self.last_summary: float | None = None

    def _crossed(self, key: str, old: float, new: float) -> bool:
        return any((old < t) != (new < t) for t in self.thresholds.get(key, ()))

    def significant(self, row: dict, last: dict | None) -> bool:
        if last is None:
            return True
        for key, new in row.items():
            if key == "id" or key not in last:
                continue
            old = last[key]
            if self._crossed(key, old, new):
                return True
            delta = abs(new - old)
            if delta >= self.floor.get(key, 0) and delta > self.fraction * abs(old):
                return True
        return False

    def select(self, rows: list[dict], now: float) -> list[dict]:
        """The rows to report now; remembers them as reported."""
        summary = self.last_summary is None or now - self.last_summary >= self.summary_s
        if summary:
            self.last_summary = now
            out = list(rows)
        else:
            out = [r for r in rows if self.significant(r, self.last.get(r["id"]))]
        for r in out:
            self.last[r["id"]] = dict(r)
        for gone in set(self.last) - {r["id"] for r in rows}:
            del self.last[gone]
        return out


class Monitor:
    """Glue: read the manager's instances, compute, filter (called every tick)."""

    def __init__(self, manager, rates: Rates, significance: Significance):
        self.manager = manager
        self.rates = rates
        self.significance = significance
        self.latest: list[dict] = []

    def resync(self) -> None:
        """A new session: the next tick reports every instance."""
        self.significance.last_summary = None

    def tick(self, now: float | None = None, report: bool = True):
        """Returns ``(rows to send as stats, nf_failed events)``; with ``report`` False
        (no session) the rates still advance but no row is selected."""
        now = time.monotonic() if now is None else now
        events = self.manager.check_alive()
        readings = {}
        for iid, chain in self.manager.snapshot():
            try:
                readings[iid] = chain.stats()
            except Exception:  # torn down between the snapshot and the read
                continue
        self.latest = self.rates.update(readings, now)
        if not report:
            return [], events
        return self.significance.select(self.latest, now), events
