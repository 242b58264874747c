"""The agent's monitor: per-instance load figures from the NFs' shared counters.

It runs in the agent, on the housekeeping core, and never writes to an NF's
memory: each tick it reads the counters every NF runtime keeps in its
chain buffer's header (``qs_nfctl``: batches, packets, drops, TSC cycles in
the NF, and the NF's cycles-per-batch histogram; see docs/chains.rst) and
turns two readings into, per instance:

``pps``
    packets per second the first NF took from the VF;
``load``
    the fraction of the core's time spent inside the chain's NFs
    (sum over the NFs of their cycles / TSC Hz / wall time);
``p99_us``
    the 99th percentile of the chain's per-batch execution time (µs) over the
    batches of the last ``window`` ticks (default: since the last tick).
    Each NF's process files every batch it works on in its histogram in the
    chain buffer header (cycles from the start of its batch work to the end,
    log-linear buckets: see docs/chains.rst); the difference between two
    readings is the histogram of that tick's batches, whose 99th percentile
    (:func:`worker.nf_stats.hist_quantile`) converted with the TSC frequency
    is the NF's.  The chain's is the sum over its NFs: exact for a chain in
    one process; for one process per NF an estimate that in practice errs
    high (the sum of the NFs' p99s is the p99 of a batch's total only if
    the NFs' slow batches coincide; they rarely do).  0 when no batch ran;
``drops``
    packets dropped by the chain since it was prepared, a running total: the
    first NF's drop count (which includes what later NFs dropped: their slots
    come back to it flagged) plus descriptors any NF refused as invalid;
``queue_len``
    always None (JSON null): the NIC RX queue length.  The first NF owns its
    port, so only its process could call ``rte_eth_rx_queue_count``, and no
    driver of the lab's (``net_af_packet``; nor ``net_pcap``, ``net_null``,
    ``net_ring``, ``net_tap``, ``net_memif``) implements it: -ENOTSUP;
``buffered``
    packets waiting in the chain buffer between the chain's NFs (the rings
    from each NF to the next and from the last back to the first), from the
    rings' indices; 0 for a chain in one process.

:class:`Significance` (pure) decides which rows are worth a ``stats`` call:
a value crossing a configured threshold, a change by more than a configured
fraction since the last report, or the periodic summary.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from worker import nf_stats


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
    hists: deque = field(default_factory=deque)  # per tick: a delta histogram per NF


def chain_p99_cycles(deltas: list[tuple[int, ...] | None]) -> float:
    """The chain's p99 batch time (cycles) from one delta histogram per NF (None:
    that NF's reading is not usable): the sum of the NFs' 99th percentiles."""
    total = 0.0
    for d in deltas:
        q = nf_stats.hist_quantile(d, 0.99) if d is not None else None
        if q is not None:
            total += q
    return total


def sum_hists(ticks: list[list[tuple[int, ...] | None]]) -> list[tuple[int, ...] | None]:
    """Per NF, the sum of its delta histograms over ``ticks`` (each tick: one delta
    per NF, None where unusable); None for an NF with no usable tick."""
    out: list[tuple[int, ...] | None] = []
    for per_tick in zip(*ticks, strict=True):
        usable = [d for d in per_tick if d is not None]
        out.append(tuple(map(sum, zip(*usable, strict=True))) if usable else None)
    return out


class Rates:
    """Per-instance figures from successive counter readings (pure: readings in, rows out)."""

    def __init__(self, hz: float, window: int = 1):
        if hz <= 0:
            raise ValueError(f"hz: {hz!r} is not a positive TSC frequency")
        if window < 1:
            raise ValueError(f"window: {window!r} ticks, must be >= 1")
        self.hz = hz
        self.window = window
        self.tracks: dict[int, _Track] = {}

    def update(self, readings: dict[int, list[dict]], now: float) -> list[dict]:
        """``readings``: instance id -> its NFs' counters and histograms
        (``ChainInstance.stats()``: ``pkts``, ``batches``, ``cycles``, ``drops``,
        ``bad``, ``hist``; ``buffered`` in the first NF's entry, optional)."""
        rows = []
        for iid, nfs in readings.items():
            prev = self.tracks.get(iid)
            # NF 0 counts every packet of the chain that did not leave: its own verdicts,
            # no free slot, TX refused, and slots a later NF flagged dropped when they
            # come back; later NFs' own drop counts are already in it
            drops = nfs[0]["drops"] + sum(n["bad"] for n in nfs)
            buffered = nfs[0].get("buffered", 0)
            if prev is None or len(prev.nfs) != len(nfs):
                self.tracks[iid] = _Track(now, nfs, deque(maxlen=self.window))
                rows.append({"id": iid, "pps": 0.0, "load": 0.0, "p99_us": 0.0, "drops": drops,
                             "queue_len": None, "buffered": buffered})  # fmt: skip
                continue
            dt = now - prev.t
            if dt <= 0:
                continue
            pairs = list(zip(nfs, prev.nfs, strict=True))
            pps = (nfs[0]["pkts"] - prev.nfs[0]["pkts"]) / dt
            cycles = sum(n["cycles"] - p["cycles"] for n, p in pairs)
            prev.hists.append([nf_stats.hist_delta(p["hist"], n["hist"]) for n, p in pairs])
            p99 = chain_p99_cycles(sum_hists(list(prev.hists)))
            prev.t, prev.nfs = now, nfs
            rows.append({
                "id": iid,
                "pps": round(max(0.0, pps), 1),
                "load": round(min(1.0, max(0.0, cycles / self.hz / dt)), 6),
                "p99_us": round(p99 / self.hz * 1e6, 3),
                "drops": drops,
                "queue_len": None,
                "buffered": buffered,
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
        self.floor = {"pps": 50.0, "load": 0.02, "p99_us": 2.0, "drops": 1, "buffered": 32,
                      **(floor or {})}  # fmt: skip
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
            if not isinstance(new, (int, float)) or not isinstance(old, (int, float)):
                if new != old:  # e.g. queue_len None -> a number: news
                    return True
                continue
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


def _cause(ev: dict) -> str:
    """What an ``nf_failed`` event reports, in one word (for the controller's metrics)."""
    reason = ev.get("reason", "")
    if ev.get("watchdog"):  # the core's watchdog also sees an attached chain's NF exit
        return "exited" if "exited" in reason else "watchdog"
    if "third-party" in reason:
        return "thirdparty"
    if "stalled" in reason:
        return "stalled"
    return "exited"


class Monitor:
    """Glue: read the manager's instances, compute, filter (called every tick).

    With a :class:`worker.liveness.ChainLiveness`, :meth:`check` also judges each
    attached instance's native NFs by the stall rule; the agent calls it more often
    than :meth:`tick` (its ``--liveness-interval``), so a failed NF is reported
    within the stall bound, not a stats period later.
    """

    def __init__(self, manager, rates: Rates, significance: Significance, liveness=None):
        self.manager = manager
        self.rates = rates
        self.significance = significance
        self.liveness = liveness  # worker.liveness.ChainLiveness, or None
        self.latest: list[dict] = []
        self._store_down: set[tuple[int, int]] = set()  # (instance, NF) finding Redis away

    def resync(self) -> None:
        """A new session: the next tick reports every instance."""
        self.significance.last_summary = None

    def check(self, now: float | None = None) -> list[dict]:
        """``nf_failed`` events for what failed since the last check: NF processes that
        exited, chains a core's watchdog ended, third-party NFs found failed, and (with
        a liveness tracker) native NFs that stalled.  Each event carries ``cause``
        (exited, stalled, watchdog, thirdparty) and ``at``: this host's monotonic clock
        when it was found.  Then ``state_store`` events (:meth:`_store_changes`)."""
        now = time.monotonic() if now is None else now
        seen, store = [], []
        for iid, chain in self.manager.snapshot():
            seen.append(iid)
            try:
                readings = chain.progress()
            except Exception:  # torn down between the snapshot and the read
                continue
            if self.liveness is not None:
                for i, reason in self.liveness.update(iid, readings, now):
                    chain.note_stall(i, reason)
            store += self._store_changes(iid, readings, now)
        if self.liveness is not None:
            self.liveness.forget_others(seen)
        self._store_down = {k for k in self._store_down if k[0] in seen}
        events = self.manager.check_alive()
        for ev in events:
            ev.setdefault("cause", _cause(ev))
            ev.setdefault("at", round(now, 6))
        return events + store

    def _store_changes(self, iid: int, readings: list[dict], now: float) -> list[dict]:
        """``state_store`` events: a stateful NF of instance ``iid`` found Redis
        unreachable (``down`` true: it rides the outage out, docs/state.rst) or reached
        it again (``down`` false); once per change."""
        out = []
        for i, r in enumerate(readings):
            down, was = bool(r.get("store_down")), (iid, i) in self._store_down
            if down == was:
                continue
            (self._store_down.add if down else self._store_down.discard)((iid, i))
            out.append({"kind": "state_store", "instance": iid, "nf": i, "down": down,
                        "at": round(now, 6)})  # fmt: skip
        return out

    def tick(self, now: float | None = None, report: bool = True, check: bool = True):
        """Returns ``(rows to send as stats, nf_failed events)``; with ``report`` False
        (no session) the rates still advance but no row is selected; with ``check``
        False liveness is left to separate :meth:`check` calls."""
        now = time.monotonic() if now is None else now
        events = self.check(now) if check else []
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
