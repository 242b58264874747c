"""The monitor's pure parts: rates from counter readings, the significance filter."""

from __future__ import annotations

import pytest

from worker.monitor import Rates, Significance, chain_p99_cycles, sum_hists
from worker.nf_stats import HIST_BUCKETS, bucket_low, bucket_of, hist_delta, hist_quantile

HZ = 2e9


def hist(*batches):
    """A cumulative histogram: ``(cycles, count)`` pairs filed by the data core's rule."""
    h = [0] * HIST_BUCKETS
    for cycles, count in batches:
        h[bucket_of(cycles)] += count
    return tuple(h)


def nf(pkts=0, batches=0, cycles=0, drops=0, bad=0, h=None, **extra):
    return {"pkts": pkts, "batches": batches, "cycles": cycles, "drops": drops, "bad": bad,
            "tx": 0, "state": "running", "hist": h or hist(), **extra}  # fmt: skip


def test_hist_delta_and_reset():
    a, b = hist((100, 3)), hist((100, 5), (5000, 1))
    assert hist_delta(a, b) == hist((100, 2), (5000, 1))
    assert hist_delta(b, a) is None  # a bucket went down: the writer restarted
    with pytest.raises(ValueError, match="buckets"):
        hist_delta(a, a[:10])


def test_hist_quantile_stays_inside_the_observed_buckets():
    assert hist_quantile(hist(), 0.99) is None
    assert hist_quantile(hist((3, 7)), 0.99) == 3.0  # values below 4 are exact
    h = hist((1000, 99), (100_000, 1))
    lo, hi = bucket_low(bucket_of(1000)), bucket_low(bucket_of(1000) + 1) - 1
    assert lo <= hist_quantile(h, 0.5) <= hist_quantile(h, 0.99) <= hi  # rank 99: the bulk
    top = hist_quantile(h, 1.0)  # rank 100: the one slow batch
    assert bucket_low(bucket_of(100_000)) <= top < bucket_low(bucket_of(100_000) + 1)
    assert hist_quantile(hist((2**62, 1)), 0.99) == bucket_low(HIST_BUCKETS - 1)  # open top
    with pytest.raises(ValueError, match="q"):
        hist_quantile(h, 1.5)


def test_p99_follows_the_tail_not_the_mean():
    # 1000 batches of ~2,000 cycles and 20 of ~200,000: the mean is ~6,000 (3 us), the
    # p99 is in the slow ones (~100 us at 2 GHz), which a mean of ticks cannot see
    h = hist((2_000, 1000), (200_000, 20))
    q = hist_quantile(h, 0.99)
    assert bucket_low(bucket_of(200_000)) <= q < bucket_low(bucket_of(200_000) + 1)


def test_chain_p99_sums_the_nfs_and_skips_unusable_readings():
    a, b = hist((1000, 100)), hist((3000, 100))
    assert chain_p99_cycles([a, b]) == hist_quantile(a, 0.99) + hist_quantile(b, 0.99)
    assert chain_p99_cycles([a, None, hist()]) == hist_quantile(a, 0.99)
    assert sum_hists([[a, None], [a, b]]) == [tuple(2 * x for x in a), b]
    assert sum_hists([[None], [None]]) == [None]


def test_rates_from_two_readings():
    r = Rates(HZ)
    first = r.update({7: [nf(buffered=5), nf()]}, now=10.0)
    assert first == [{"id": 7, "pps": 0.0, "load": 0.0, "p99_us": 0.0, "drops": 0,
                      "queue_len": None, "buffered": 5}]  # fmt: skip
    # 0.5 s: 1000 packets in 100 batches; NF0 2e6 cycles, NF1 4e6; batch times from the
    # histograms: NF0 all ~20,000 cycles (10 us), NF1 all 40,000 (20 us)
    # NF1 dropped 2 of the 3 NF0 counts (flagged slots come back to NF0): not counted twice
    n0 = nf(1000, 100, 2_000_000, drops=3, h=hist((20_000, 100)), buffered=0)
    n1 = nf(990, 100, 4_000_000, drops=2, bad=1, h=hist((40_000, 100)))
    (row,) = r.update({7: [n0, n1]}, 10.5)
    want = hist_quantile(hist((20_000, 100)), 0.99) + hist_quantile(hist((40_000, 100)), 0.99)
    assert row == {"id": 7, "pps": 2000.0, "load": 0.006, "p99_us": round(want / HZ * 1e6, 3),
                   "drops": 4, "queue_len": None, "buffered": 0}  # fmt: skip
    assert 30.0 <= row["p99_us"] <= 30.0 * 1.25  # 10 + 20 us, at a quarter octave's resolution


def test_p99_is_over_the_last_window_ticks_and_zero_when_idle():
    r = Rates(HZ, window=2)
    acc = []
    r.update({1: [nf()]}, 0.0)

    def tick(t, *batches):
        acc.extend(batches)
        return r.update({1: [nf(h=hist(*acc))]}, t)[0]["p99_us"]

    slow = tick(0.5, (20_000, 1000), (2_000_000, 50))  # 5 % of batches at 1 ms
    assert 900 <= slow <= 1200
    assert 900 <= tick(1.0, (20_000, 1000)) <= 1200  # still in the 2-tick window (50 of 2050)
    assert tick(1.5, (20_000, 1000)) < 15  # the slow tick left the window
    assert 0 < tick(2.0) < 15  # an idle tick, the last busy one still in the window
    assert tick(2.5) == 0.0  # no batch in the window: 0
    acc.clear()
    r.update({1: [nf()]}, 3.0)  # counters went down (the NF restarted): nothing concluded
    assert tick(3.5, (20_000, 10)) < 15


def test_rates_forget_gone_instances_and_refuse_bad_args():
    r = Rates(HZ)
    r.update({1: [nf()], 2: [nf()]}, 0.0)
    r.update({2: [nf()]}, 1.0)
    assert set(r.tracks) == {2}
    with pytest.raises(ValueError, match="hz"):
        Rates(0)
    with pytest.raises(ValueError, match="window"):
        Rates(HZ, window=0)


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


def test_significance_compares_only_numbers():
    s = Significance(fraction=0.2, summary_s=100)
    base = {**row(), "queue_len": None, "buffered": 0}
    s.select([base], 0)
    assert s.select([dict(base)], 1) == []  # None == None: no news
    assert s.select([{**base, "buffered": 20}], 2) == []  # under the 32-packet floor
    assert s.select([{**base, "buffered": 500}], 3) != []
    assert s.select([{**base, "buffered": 500, "queue_len": 7}], 4) != []  # None -> a number


class _StallingChain:
    """progress() as a chain whose NF 1 takes nothing while its ring fills."""

    def __init__(self):
        self.k = 0
        self.stalled = []

    def progress(self):
        self.k += 1
        return [{"own": 100 * self.k, "input": 100 * self.k, "queued": 0, "running": True},
                {"own": 5, "input": None, "queued": 10 * self.k, "running": True}]  # fmt: skip

    def note_stall(self, i, reason):
        self.stalled.append((i, reason))


class _Manager:
    def __init__(self, chain):
        self.chain = chain

    def snapshot(self):
        return [(4, self.chain)]

    def check_alive(self):  # what InstanceManager.check_alive does with chain.failures()
        if self.chain.stalled:
            i, reason = self.chain.stalled[0]
            return [{"kind": "nf_failed", "instance": 4, "reason": reason, "nfs": [i]}]
        return []


def test_monitor_check_reports_a_stalled_nf_with_cause_and_time():
    from worker.liveness import ChainLiveness
    from worker.monitor import Monitor, Rates, Significance

    chain = _StallingChain()
    mon = Monitor(_Manager(chain), Rates(1e9), Significance(), liveness=ChainLiveness(0.3))
    assert mon.check(10.0) == [] and mon.check(10.1) == [] and mon.check(10.2) == []
    (ev,) = mon.check(10.35)
    assert ev["cause"] == "stalled" and ev["at"] == 10.35 and ev["nfs"] == [1]
    assert "NF 1 stalled" in ev["reason"]


class _OutageChain(_StallingChain):
    """progress() of a chain whose stateful NF 1 finds Redis away, then back."""

    def __init__(self, down):
        super().__init__()
        self.down = down

    def progress(self):
        rows = super().progress()
        rows[1].update(running=not self.down[0], store_down=self.down[0])
        return rows


def test_monitor_reports_a_state_store_outage_once_each_way():
    from worker.liveness import ChainLiveness
    from worker.monitor import Monitor, Rates, Significance

    down = [False]
    mon = Monitor(_Manager(_OutageChain(down)), Rates(1e9), Significance(),
                  liveness=ChainLiveness(0.3))  # fmt: skip
    assert mon.check(1.0) == []
    down[0] = True
    assert mon.check(1.1) == [
        {"kind": "state_store", "instance": 4, "nf": 1, "down": True, "at": 1.1}
    ]
    assert mon.check(1.2) == [] and mon.check(5.0) == []  # waiting on Redis: no stall
    down[0] = False
    assert mon.check(5.1) == [
        {"kind": "state_store", "instance": 4, "nf": 1, "down": False, "at": 5.1}
    ]
