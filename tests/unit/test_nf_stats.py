"""The counter block: layout, histogram buckets (same rule as the C side), reader."""

from __future__ import annotations

import struct

import pytest

from worker import nf_stats as s


def test_layout_matches_the_c_struct():
    runtime = pytest.importorskip("cext.runtime")
    assert runtime.STATS_SIZE == s.SIZE == 1216 + 16 * 1024
    assert runtime.STATS_MAGIC == s.MAGIC and runtime.STATS_VERSION == s.VERSION


def test_buckets_match_c_and_bound_their_values():
    runtime = pytest.importorskip("cext.runtime")
    values = list(range(0, 5000)) + [2**k + d for k in range(12, 40) for d in (-1, 0, 1)]
    for v in values:
        b = s.bucket_of(v)
        assert b == runtime.hist_bucket(v), v
        if b < s.HIST_BUCKETS - 1:
            assert s.bucket_low(b) <= v < s.bucket_low(b + 1)
    assert s.bucket_of(2**40) == s.HIST_BUCKETS - 1


def block(counters: dict, hist: dict, samples: list, seq: int = 2) -> bytearray:
    buf = bytearray(s.SIZE)
    s.HEADER.pack_into(
        buf, 0, s.MAGIC, s.VERSION, s.SIZE, 2_000_000_000, 5, 42, 1, s.HIST_BUCKETS, s.SAMPLES, 1, 0
    )
    vals = [counters.get(n, 0) for n in s.COUNTER_NAMES]
    vals[0] = seq
    vals[-1] = len(samples)
    struct.pack_into(f"<{len(vals)}Q", buf, 64, *vals)
    for b, n in hist.items():
        struct.pack_into("<Q", buf, s.HIST_OFFSET + 8 * b, n)
    for i, (tsc, cyc, pkts) in enumerate(samples):
        s.SAMPLE.pack_into(buf, s.SAMPLES_OFFSET + 16 * (i % s.SAMPLES), tsc, cyc, pkts, 0)
    return buf


def test_parse_and_percentiles(tmp_path):
    hist = {s.bucket_of(1000): 98, s.bucket_of(5000): 2}
    samples = [(i, 1000 + i, 32) for i in range(100)]
    buf = block({"rx_packets": 3200, "batches": 100}, hist, samples)
    snap = s.parse(bytes(buf))
    assert (snap.pid, snap.core, snap.state, snap.tsc_hz) == (42, 1, "running", 2_000_000_000)
    assert snap.counters["rx_packets"] == 3200 and snap.counters["batches"] == 100
    assert snap.samples == samples
    assert s.bucket_low(s.bucket_of(1000)) <= snap.percentile_cycles(0.5) < 1100
    assert snap.percentile_cycles(0.99) >= 5000
    assert snap.sample_percentile_cycles(0.99) == 1099
    path = tmp_path / "b.stats"
    path.write_bytes(buf)
    assert s.read(path).counters == snap.counters


def test_reader_refuses_a_locked_or_foreign_block(tmp_path):
    path = tmp_path / "b.stats"
    path.write_bytes(block({}, {}, [], seq=3))  # odd: the writer is mid-update
    with pytest.raises(TimeoutError):
        s.read(path, retries=3)
    buf = block({}, {}, [])
    buf[0] ^= 0xFF
    with pytest.raises(ValueError, match="not a Quadrant NF stats block"):
        s.parse(bytes(buf))


def test_sample_ring_wraps():
    samples = [(i, i, 1) for i in range(s.SAMPLES + 10)]
    snap = s.parse(bytes(block({}, {}, samples)))
    assert len(snap.samples) == s.SAMPLES
    assert snap.samples[0] == (10, 10, 1) and snap.samples[-1][0] == s.SAMPLES + 9


def test_rates_between_snapshots():
    hz = 2_000_000_000
    a = s.parse(
        bytes(
            block(
                {
                    "rx_packets": 1000,
                    "rx_bytes": 64_000,
                    "tx_packets": 900,
                    "drops_nf": 100,
                    "busy_cycles": 10**9,
                    "last_tsc": 10**9,
                },
                {},
                [],
            )
        )
    )
    b = s.parse(
        bytes(
            block(
                {
                    "rx_packets": 3000,
                    "rx_bytes": 192_000,
                    "tx_packets": 2700,
                    "drops_nf": 300,
                    "busy_cycles": 2 * 10**9,
                    "last_tsc": 10**9 + hz,
                },
                {},
                [],
            )
        )
    )
    r = s.rates(a, b)
    assert r["rx_pps"] == 2000 and r["rx_bps"] == 8 * 128_000 and r["tx_pps"] == 1800
    assert r["drop_pps"] == 200 and r["load"] == 0.5
    assert s.rates(b, b)["rx_pps"] == 0.0
