"""The NF runtime's shared-memory counter block: create it, read it from another core.

The layout is ``struct qd_stats`` in ``cext/src/qd_stats.h`` (docs/dataplane.rst
has the table).  The data core is the only writer; :func:`read` takes a
consistent snapshot with the block's sequence lock and never writes, so a
monitor polling it costs the data core one cache-line transfer per poll.
This module has no DPDK dependency: a monitor imports it alone.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0x31544154534E4451  # "QDNSTAT1"
VERSION = 1
HIST_BUCKETS = 128
SAMPLES = 1024
HEADER = struct.Struct("<QIIQQIIIIQQ")  # offset 0, 64 bytes
COUNTERS = struct.Struct("<14Q")  # offset 64: seq .. sample_head (+2 pad), 128 bytes
HIST_OFFSET = 192
SAMPLES_OFFSET = HIST_OFFSET + 8 * HIST_BUCKETS
SAMPLE = struct.Struct("<QIHH")
SIZE = SAMPLES_OFFSET + SAMPLE.size * SAMPLES
STATES = {0: "init", 1: "running", 2: "stopped"}
COUNTER_NAMES = (
    "seq",
    "rx_packets",
    "rx_bytes",
    "tx_packets",
    "tx_bytes",
    "drops_nf",
    "drops_tx",
    "held",
    "batches",
    "empty_polls",
    "busy_cycles",
    "last_tsc",
    "max_batch_cycles",
    "sample_head",
)


def bucket_of(cycles: int) -> int:
    """Same rule as ``qd_hist_bucket`` in qd_stats.h (log-linear, 4 per octave)."""
    if cycles < 4:
        return cycles
    e = cycles.bit_length() - 1
    return min(4 * (e - 1) + ((cycles >> (e - 2)) & 3), HIST_BUCKETS - 1)


def bucket_low(b: int) -> int:
    """The smallest cycle count filed under bucket ``b``."""
    if b < 4:
        return b
    e = b // 4 + 1
    return (4 + b % 4) << (e - 2)


def hist_delta(before, after) -> tuple[int, ...] | None:
    """Batches per bucket between two readings of the same cumulative histogram,
    or None if a bucket went down (the writer restarted, or the memory was
    rewritten: nothing to conclude from this pair)."""
    if len(before) != len(after):
        raise ValueError(f"histograms of {len(before)} and {len(after)} buckets")
    d = tuple(b - a for a, b in zip(before, after, strict=True))
    return None if any(x < 0 for x in d) else d


def hist_quantile(hist, q: float) -> float | None:
    """Cycles at quantile ``q`` (0..1) of the batches counted in ``hist`` (one
    count per bucket of :func:`bucket_of`), None if it counts none.

    The rank ``q * total`` (at least 1) falls in one bucket; the value is
    interpolated linearly across that bucket's range (buckets below 4 are
    exact; the last one, open-ended, gives its lower bound).  So the result
    is never below the smallest and never above the largest cycle count the
    histogram can hold for its batches."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q: {q!r} is outside 0..1")
    total = sum(hist)
    if total <= 0:
        return None
    rank = max(1.0, q * total)
    seen = 0
    for b, n in enumerate(hist):
        if n <= 0:
            continue
        if seen + n >= rank:
            low = bucket_low(b)
            if b < 4 or b + 1 >= len(hist):
                return float(low)
            high = bucket_low(b + 1) - 1
            return low + (high - low) * (rank - seen) / n
        seen += n
    return float(bucket_low(len(hist) - 1))  # not reached: rank <= total


@dataclass(frozen=True)
class Snapshot:
    tsc_hz: int
    start_tsc: int
    pid: int
    core: int
    state: str
    counters: dict[str, int]
    hist: tuple[int, ...]
    samples: list[tuple[int, int, int]]  # (tsc, cycles, pkts), oldest first

    def percentile_cycles(self, q: float) -> int:
        """Upper bound of the per-batch cycle count at quantile ``q`` (0..1), from the
        histogram (resolution: a quarter octave)."""
        total = sum(self.hist)
        if total == 0:
            return 0
        rank = q * total
        seen = 0
        for b, n in enumerate(self.hist):
            seen += n
            if seen >= rank and n:
                return bucket_low(b + 1) - 1 if b + 1 < HIST_BUCKETS else bucket_low(b)
        return bucket_low(HIST_BUCKETS - 1)

    def sample_percentile_cycles(self, q: float) -> int:
        """Exact quantile over the recent samples (up to 1024 batches)."""
        cycles = sorted(c for _, c, _ in self.samples)
        if not cycles:
            return 0
        return cycles[min(len(cycles) - 1, int(q * len(cycles)))]


def rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Rates between two snapshots of the same runtime, over the data core's own
    clock (``last_tsc``): packets and bytes per second in and out, drops per
    second, and ``load``, the fraction of the core's cycles spent on non-empty
    batches (the rest is empty polls)."""
    a, b = before.counters, after.counters
    dt_cycles = b["last_tsc"] - a["last_tsc"]
    if dt_cycles <= 0 or after.tsc_hz == 0:
        return {
            "rx_pps": 0.0,
            "rx_bps": 0.0,
            "tx_pps": 0.0,
            "tx_bps": 0.0,
            "drop_pps": 0.0,
            "load": 0.0,
        }
    dt = dt_cycles / after.tsc_hz

    def per_s(name: str) -> float:
        return (b[name] - a[name]) / dt

    return {
        "rx_pps": per_s("rx_packets"),
        "rx_bps": 8 * per_s("rx_bytes"),
        "tx_pps": per_s("tx_packets"),
        "tx_bps": 8 * per_s("tx_bytes"),
        "drop_pps": per_s("drops_nf") + per_s("drops_tx"),
        "load": min(1.0, (b["busy_cycles"] - a["busy_cycles"]) / dt_cycles),
    }


def parse(buf: bytes) -> Snapshot:
    """Decode one copy of the block (pure; :func:`read` handles the lock)."""
    if len(buf) < SIZE:
        raise ValueError(f"stats block is {len(buf)} bytes, expected {SIZE}")
    magic, version, size, hz, start, pid, core, nhist, nsamp, state, _ = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise ValueError(f"not a Quadrant NF stats block (magic {magic:#x})")
    if version != VERSION or size != SIZE or nhist != HIST_BUCKETS or nsamp != SAMPLES:
        raise ValueError(f"stats block version {version} size {size}: this reader knows {VERSION}")
    counters = dict(zip(COUNTER_NAMES, COUNTERS.unpack_from(buf, 64), strict=False))
    hist = struct.unpack_from(f"<{HIST_BUCKETS}Q", buf, HIST_OFFSET)
    head = counters["sample_head"]
    n = min(head, SAMPLES)
    samples = []
    for k in range(head - n, head):
        tsc, cyc, pkts, _ = SAMPLE.unpack_from(buf, SAMPLES_OFFSET + SAMPLE.size * (k % SAMPLES))
        samples.append((tsc, cyc, pkts))
    return Snapshot(hz, start, pid, core, STATES.get(state, str(state)), counters, hist, samples)


def read(path: str | os.PathLike, retries: int = 1000) -> Snapshot:
    """A consistent snapshot of the block at ``path`` (seqlock: retry while the
    writer is mid-update)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), SIZE, prot=mmap.PROT_READ) as m:
        for _ in range(retries):
            seq1 = struct.unpack_from("<Q", m, 64)[0]
            if seq1 & 1:
                time.sleep(0)
                continue
            buf = m[:SIZE]
            if struct.unpack_from("<Q", m, 64)[0] == seq1:
                return parse(buf)
        raise TimeoutError(f"{path}: writer kept the block locked for {retries} tries")


class StatsBlock:
    """The writer's side: a file of :data:`SIZE` bytes mapped shared (the runtime
    passes the mapping to ``cext.runtime.Runtime``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            self.map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def close(self, remove: bool) -> None:
        self.map.close()
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
