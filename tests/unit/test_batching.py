"""Batch sizing (worker/batching.py) on hand-computed cases."""

import math

import pytest

from worker.batching import (
    BatchEstimator,
    BatchSizingError,
    choose_batch,
    fit_switch_cost,
    latency_us,
    rate_pps,
)

HZ = 2e9


def test_three_nf_chain_rate_goal_by_hand():
    # sum S = 3000, N*C = 3*4000 = 12000; smallest B with 12000/(B*3000) <= 0.05 is 80
    c = choose_batch([1000, 1000, 1000], 4000, HZ, p=0.05, slo_us=1000, alpha=0.6)
    assert c.min_for_rate == 80
    # budget 0.6*1000us*2GHz/2 - 12000 = 588000 cycles, / 3000 per packet = 196
    assert c.max_for_slo == 196
    assert c.batch == 80 and c.rate_goal_met and c.slo_met
    assert c.ideal_pps == pytest.approx(HZ / 3000)
    assert c.rate_pps == pytest.approx(HZ / 3150)
    assert c.ideal_pps / c.rate_pps == pytest.approx(1.05)
    # 2 * (80*3000 + 12000) cycles at 2 GHz = 252 us
    assert c.latency_us == pytest.approx(252.0)


def test_79_would_miss_the_rate_goal():
    assert HZ / 3000 / rate_pps([1000] * 3, 4000, 79, HZ) > 1.05
    assert HZ / 3000 / rate_pps([1000] * 3, 4000, 80, HZ) <= 1.05 + 1e-12


def test_slo_caps_the_batch():
    # 100 us SLO: budget 60000 - 12000 = 48000 cycles -> 16 packets
    c = choose_batch([1000, 1000, 1000], 4000, HZ, p=0.05, slo_us=100, alpha=0.6)
    assert (c.batch, c.min_for_rate, c.max_for_slo) == (16, 80, 16)
    assert not c.rate_goal_met and c.slo_met
    assert latency_us([1000] * 3, 4000, 16, HZ) <= 0.6 * 100


def test_p99_bounds_latency_not_rate():
    c = choose_batch(
        [1000, 1000], 4000, HZ, p=0.05, slo_us=100, alpha=0.6, nf_cycles_p99=[2000, 2000]
    )
    # rate: 8000/(0.05*2000) = 80; SLO: (60000 - 8000)/4000 = 13
    assert (c.min_for_rate, c.max_for_slo, c.batch) == (80, 13, 13)


def test_slo_unreachable_gives_one_and_says_so():
    c = choose_batch([1000, 1000, 1000], 4000, HZ, slo_us=10, alpha=0.6)
    assert c.batch == 1 and c.max_for_slo == 0 and not c.slo_met and not c.rate_goal_met


def test_single_nf_has_no_switch_cost():
    c = choose_batch([500], 4000, HZ, slo_us=100)
    assert c.min_for_rate == 1 and c.batch == 1
    assert c.rate_pps == pytest.approx(c.ideal_pps)


def test_larger_p_means_smaller_batch_and_max_batch_caps():
    assert choose_batch([100, 100], 4000, HZ, p=0.5, slo_us=10000).batch == 80
    c = choose_batch([100, 100], 4000, HZ, p=0.001, slo_us=10000, max_batch=512)
    assert c.min_for_rate == 40000 and c.batch == 512


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nf_cycles": []}, "nf_cycles"),
        ({"nf_cycles": [100, -1]}, "nf_cycles[1]"),
        ({"nf_cycles": [100, math.nan]}, "nf_cycles[1]"),
        ({"ctx_switch_cycles": -5}, "ctx_switch_cycles"),
        ({"hz": 0}, "hz"),
        ({"p": 0}, "p"),
        ({"slo_us": 0}, "slo_us"),
        ({"alpha": 1.5}, "alpha"),
        ({"max_batch": 5000}, "max_batch"),
        ({"nf_cycles_p99": [1]}, "nf_cycles_p99"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    args = {"nf_cycles": [100, 100], "ctx_switch_cycles": 4000, "hz": HZ, "slo_us": 100}
    args.update(kwargs)
    nf, c, hz = args.pop("nf_cycles"), args.pop("ctx_switch_cycles"), args.pop("hz")
    with pytest.raises(BatchSizingError) as e:
        choose_batch(nf, c, hz, **args)
    assert e.value.field == field and str(e.value).startswith(field + ":")


def test_estimator_follows_drift_with_hysteresis():
    est = BatchEstimator(3, HZ, slo_us=1000, p=0.05, weight=0.5, hysteresis=0.1)
    with pytest.raises(BatchSizingError):
        est.update()
    est.observe([1000, 1000, 1000], 4000)
    assert est.update() == 80
    est.observe([1000, 1000, 1000], 4200)  # C -> 4100 smoothed: B = 82, within 10%
    assert est.update() is None
    # the switch cost doubles and stays there: the estimate follows
    for _ in range(6):
        est.observe([1000, 1000, 1000], 8000)
    b = est.update()
    assert b is not None and 150 <= b <= 160
    assert est.current == b
    with pytest.raises(BatchSizingError):
        est.observe([1000, 1000], 4000)


def test_fit_switch_cost_recovers_the_model():
    # a = 2000 cycles/packet, N = 2, C = 5000: cycles(B) = 2000 + 10000/B
    pts = [(b, 2000 + 10000 / b) for b in (16, 48, 200)]
    a, c = fit_switch_cost(pts, 2)
    assert a == pytest.approx(2000) and c == pytest.approx(5000)
    # the batch from the fitted costs: 10000 / (0.05 * 2000) = 100
    assert choose_batch([a / 2, a / 2], c, HZ, slo_us=10_000).batch == 100


def test_fit_switch_cost_bad_input():
    with pytest.raises(BatchSizingError, match="points"):
        fit_switch_cost([(32, 100.0), (32, 110.0)], 2)
    with pytest.raises(BatchSizingError, match="n_nfs"):
        fit_switch_cost([(16, 100.0), (32, 90.0)], 1)
    # noise that makes bigger batches look slower: no switch cost, not a negative one
    assert fit_switch_cost([(16, 100.0), (32, 110.0)], 2)[1] == 0.0
