"""The monitor's pure parts: rates from counter readings, the significance filter."""

from __future__ import annotations

import pytest

from worker.monitor import Rates, Significance, percentile

HZ = 2e9


def nf(pkts=0, batches=0, cycles=0, drops=0, bad=0):
    return {"pkts": pkts, "batches": batches, "cycles": cycles, "drops": drops, "bad": bad,
            "tx": 0, "state": "running"}  # fmt: skip


def test_rates_from_two_readings():
    r = Rates(HZ)
    first = r.update({7: [nf(), nf()]}, now=10.0)
    assert first == [{"id": 7, "pps": 0.0, "load": 0.0, "p99_us": 0.0, "drops": 0}]
    # 0.5 s: 1000 packets in 100 batches; NF0 2e6 cycles (10 us per batch), NF1 4e6 (20 us)
    # NF1 dropped 2 of the 3 NF0 counts (flagged slots come back to NF0): not counted twice
    second = nf(990, 100, 4_000_000, drops=2, bad=1)
    rows = r.update({7: [nf(1000, 100, 2_000_000, drops=3), second]}, 10.5)
    assert rows == [{"id": 7, "pps": 2000.0, "load": 0.006, "p99_us": 30.0, "drops": 4}]


def test_p99_over_recent_ticks_and_idle_ticks_add_no_sample():
    r = Rates(HZ, window=100)
    t, c, b = 0.0, 0, 0
    r.update({1: [nf()]}, t)
    for k in range(100):
        t += 0.1
        b += 10
        c += 10 * (20_000 if k == 50 else 2_000)  # one tick of 10 us batches, the rest 1 us
        row = r.update({1: [nf(b * 4, b, c)]}, t)[0]
    assert row["p99_us"] == 10.0
    row = r.update({1: [nf(b * 4, b, c)]}, t + 0.1)[0]  # no batch: no sample, same p99
    assert row["pps"] == 0.0 and row["p99_us"] == 10.0


def test_rates_forget_gone_instances_and_refuse_bad_hz():
    r = Rates(HZ)
    r.update({1: [nf()], 2: [nf()]}, 0.0)
    r.update({2: [nf()]}, 1.0)
    assert set(r.tracks) == {2}
    with pytest.raises(ValueError, match="hz"):
        Rates(0)


def test_percentile():
    assert percentile([], 0.99) == 0.0
    assert percentile(range(1, 101), 0.99) == 100
    assert percentile([5, 1, 3], 0.5) == 3


def row(iid=1, pps=1000.0, p99=10.0, drops=0, load=0.1):
    return {"id": iid, "pps": pps, "p99_us": p99, "drops": drops, "load": load}


def test_significance_first_report_then_only_changes():
    s = Significance(fraction=0.2, summary_s=100)
    assert s.select([row()], now=0) == [row()]  # the first summary
    assert s.select([row(pps=1100)], now=1) == []  # 10 %: not news
    assert s.select([row(pps=1300)], now=2) == [row(pps=1300)]  # 30 % since the last report
    assert s.select([row(pps=1300, p99=13)], now=3) == [row(pps=1300, p99=13)]


def test_significance_slow_drift_is_reported_once_it_adds_up():
    s = Significance(fraction=0.2, summary_s=100)
    s.select([row(pps=1000)], 0)
    sent = [s.select([row(pps=1000 + 60 * k)], k) for k in range(1, 6)]
    assert [bool(x) for x in sent] == [False, False, False, True, False]  # 1240 vs 1000


def test_significance_floor_keeps_noise_near_zero_quiet():
    s = Significance(fraction=0.2, summary_s=100)
    s.select([row(pps=0.0, p99=0.0, load=0.0)], 0)
    assert s.select([row(pps=10.0, p99=0.5, load=0.01)], 1) == []
    assert s.select([row(pps=200.0, p99=0.5, load=0.01)], 2) != []


def test_significance_threshold_crossing_either_way():
    s = Significance(fraction=10.0, thresholds={"p99_us": [50.0]}, summary_s=100)
    s.select([row(p99=45)], 0)
    assert s.select([row(p99=49)], 1) == []
    assert s.select([row(p99=51)], 2) == [row(p99=51)]  # crossed upwards
    assert s.select([row(p99=52)], 3) == []
    assert s.select([row(p99=48)], 4) == [row(p99=48)]  # and back down


def test_significance_new_instance_drops_and_periodic_summary():
    s = Significance(fraction=0.5, summary_s=10)
    s.select([row(1)], 0)
    assert s.select([row(1), row(2)], 1) == [row(2)]  # new instance
    assert s.select([row(1, drops=5), row(2)], 2) == [row(1, drops=5)]  # first drops
    assert s.select([row(1, drops=5), row(2)], 5) == []
    assert s.select([row(1, drops=5), row(2)], 10) == [row(1, drops=5), row(2)]  # summary
    s.select([row(2)], 11)
    assert set(s.last) == {2}


def test_significance_refuses_bad_settings():
    with pytest.raises(ValueError, match="fraction"):
        Significance(fraction=0)
    with pytest.raises(ValueError, match="summary_s"):
        Significance(summary_s=0)
