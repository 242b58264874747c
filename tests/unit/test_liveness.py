"""The stall rule (worker.liveness), with ``now`` passed in."""

from __future__ import annotations

import pytest

from worker.liveness import ChainLiveness, Stall


def test_no_progress_with_packets_offered_stalls_after_the_bound():
    s = Stall(0.3)
    assert s.update(own=100, input=100, queued=None, now=0.0) is None
    assert s.update(100, 110, None, 0.1) is None  # offered, not long yet
    assert s.update(100, 120, None, 0.29) is None
    assert s.update(100, 120, None, 0.31) == pytest.approx(0.31)  # nothing new went in: still
    assert s.waiting == 20


def test_an_idle_nf_never_stalls():
    s = Stall(0.3)
    for k in range(50):  # its counter stands still, but nothing is offered or waiting
        assert s.update(7, 7, 0, k * 0.1) is None


def test_progress_resets_the_rule():
    s = Stall(0.3)
    s.update(0, 0, None, 0.0)
    for k in range(1, 20):  # busy and keeping up: its own counter moves every reading
        assert s.update(k * 10, k * 10 + 5, 3, k * 0.1) is None


def test_a_non_empty_input_ring_is_work_waiting():
    s = Stall(0.3)
    s.update(5, None, 0, 0.0)
    assert s.update(5, None, 12, 0.1) is None
    assert s.update(5, None, 40, 0.2) is None
    assert s.update(5, None, 64, 0.4) == pytest.approx(0.4)
    assert s.queued == 64
    # a ring that empties without the NF taking anything (it was torn down): starts over
    s = Stall(0.3)
    s.update(5, None, 8, 0.0)
    assert s.update(5, None, 0, 0.2) is None
    assert s.update(5, None, 8, 0.4) is None  # the mark moved to 0.2


def test_stall_bound_must_be_positive():
    with pytest.raises(ValueError, match="bound_s"):
        Stall(0)
    with pytest.raises(ValueError, match="stall bound"):
        ChainLiveness(-1)


def reading(own, input=None, queued=None, running=True, skip=False):
    return {"own": own, "input": input, "queued": queued, "running": running, "skip": skip}


def test_chain_liveness_names_the_stalled_nf_and_skips_what_it_should():
    lv = ChainLiveness(0.3)
    # NF 0 keeps taking packets; NF 1's ring fills and it takes none
    assert lv.update(7, [reading(0, 0, 0), reading(0, None, 0)], 0.0) == []
    assert lv.update(7, [reading(50, 50, 0), reading(0, None, 30)], 0.1) == []
    out = lv.update(7, [reading(120, 120, 0), reading(0, None, 90)], 0.45)
    assert out == [(1, "NF 1 stalled: 90 waiting, none taken for 450 ms")]
    # a parked (detached) chain, or a third-party position, is not judged
    lv = ChainLiveness(0.3)
    for k in range(10):
        r = [reading(0, k * 100, 0, running=False), reading(0, None, 5, skip=True)]
        assert lv.update(8, r, k * 0.1) == []


def test_a_dead_nf_fails_at_once():
    lv = ChainLiveness(0.3)
    assert lv.update(2, [reading(1, 1, 0), reading(1, None, 0)], 0.0) == []
    r = [reading(1, 1, 0), {**reading(1, None, 0), "alive": False}]
    assert lv.update(2, r, 0.01) == [(1, "NF 1 exited (its process is gone)")]


def test_chain_liveness_first_nf_judged_by_its_ports_rx_counter():
    lv = ChainLiveness(0.2)
    lv.update(3, [reading(10, 10, 0)], 0.0)
    assert lv.update(3, [reading(10, 40, 0)], 0.1) == []
    ((i, why),) = lv.update(3, [reading(10, 80, 0)], 0.25)
    assert i == 0 and "70 packets offered" in why
    lv.forget_others([])
    assert lv.tracks == {}
