"""The scaling core's formulas and rules, against hand-computed cases."""

import random

import pytest

from quadrant_app import scaling as s
from quadrant_app.latency_profile import NetworkProfile

HZ = 1e9  # 1 GHz: 1000 cycles = 1 us
FLAT = NetworkProfile((0.0,), (0.0,), "model")
P = s.ScalingParams(100.0, alpha=0.6, beta=0.9, load_cap=0.9, pool_size=1)


def inst(i, pps=0.0, p99=2.0, flows=1, attached=True, worker="w1", at=1.0):
    # 1000 cycles/packet, 3200 per batch of 32: r_max = 1e9 / 1100 = 909090.9 pps
    return s.InstanceStats(
        id=i,
        worker=worker,
        attached=attached,
        pps=pps,
        bps=pps * 8000,
        cycles_per_packet=1000.0,
        batch_cycles=3200.0,
        batch_size=32,
        batch_p99_us=p99,
        flows=flows,
        stats_at=at,
    )


def test_max_rate_and_load():
    assert s.max_rate(1000, 3200, 32, HZ) == pytest.approx(1e9 / 1100)
    assert s.max_rate(1000, 0, 1, HZ) == pytest.approx(1e6)
    e = s.estimate(inst(1, pps=454545.45, p99=10.0), P, HZ, FLAT, 0.0)
    assert e.load == pytest.approx(0.5)
    with pytest.raises(s.ScalingError):
        s.max_rate(0, 3200, 32, HZ)


def test_latency_estimate_adds_network_from_profile():
    assert s.latency_estimate_us(10.0, 5.0) == 25.0
    net = NetworkProfile((0.0, 10.0), (4.0, 8.0), "model")
    e = s.estimate(inst(1, p99=10.0), P, HZ, net, 5.0)
    assert e.latency_us == pytest.approx(2 * 10.0 + 6.0)


def test_zone_edges():
    assert s.zone(59.999, P) == "below"
    assert s.zone(60.0, P) == "between"  # alpha*SLO itself takes no new flows
    assert s.zone(90.0, P) == "between"  # beta*SLO itself does not shed
    assert s.zone(90.001, P) == "above"


def test_rate_adapting_term_and_its_bound():
    assert s.rate_adapting_term(0.5, 1.0) == pytest.approx(1.0)
    assert s.rate_adapting_term(0.79, 1.0) == pytest.approx(1 / 0.79 - 1)
    assert s.rate_adapting_term(0.8, 1.0) == pytest.approx(0.25)  # edge: both give 0.25
    assert s.rate_adapting_term(0.9, 1.0) == pytest.approx(0.25)  # 0.111 bounded to 0.25
    assert s.rate_adapting_term(1.2, 1.0) == pytest.approx(0.25)  # overloaded: negative -> 0.25
    # the bound only applies from adapt_from * r_max on
    assert s.rate_adapting_term(0.9, 1.0, floor=0.25, start=0.95) == pytest.approx(1 / 0.9 - 1)


def test_migration_amount_eq4():
    r_max = 1_000_000.0
    # t = 120 us, alpha*SLO = 60: (t - aS)/t = 0.5
    assert s.migration_amount(500_000, r_max, 120.0, P) == pytest.approx(250_000)  # term 1.0
    assert s.migration_amount(900_000, r_max, 120.0, P) == pytest.approx(112_500)  # term 0.25
    assert s.migration_amount(800_000, r_max, 120.0, P) == pytest.approx(100_000)
    flat = s.ScalingParams(100.0, rate_adapt=False)
    assert s.migration_amount(900_000, r_max, 120.0, flat) == pytest.approx(450_000)
    assert s.migration_amount(500_000, r_max, 60.0, P) == 0.0  # at alpha*SLO: nothing
    assert s.migration_amount(0.0, r_max, 120.0, P) == 0.0
    # never more than the instance carries: r = 100k, t huge, term = 9
    assert s.migration_amount(100_000, r_max, 1e6, P) == pytest.approx(100_000)


def test_select_flows_by_rate():
    fl = [s.FlowRate(i, 1, r) for i, r in enumerate([5.0, 4.0, 3.0, 2.0, 1.0])]
    assert [f.pps for f in s.select_flows(fl, 6.0)] == [5.0, 1.0]
    assert [f.pps for f in s.select_flows(fl, 9.0)] == [5.0, 4.0]
    assert [f.pps for f in s.select_flows(fl, 0.5)] == [1.0]  # none fits: the smallest
    assert s.select_flows(fl, 0.0) == []
    assert s.select_flows([s.FlowRate(1, 1, 0.0)], 3.0) == []  # idle flows do not count
    # equal rates: the lower flow id first, whatever order they come in
    tie = [s.FlowRate(3, 1, 2.0), s.FlowRate(1, 1, 2.0), s.FlowRate(2, 1, 5.0)]
    assert [f.id for f in s.select_flows(tie, 2.5)] == [1]
    assert [f.id for f in s.select_flows(tie, 4.0)] == [1, 3]  # 5 does not fit
    assert [f.id for f in s.select_flows(tie, 1.0)] == [3]  # none fits: the last in that order


def test_headroom_fluid_batch_model():
    # c = 1 us, busy = 0.1, o = 10 us * 0.9 = 9 us; target T = 60 / 2 = 30 us
    # -> (1 - 9/30) / 1 us = 700k pps, under the cap 0.9 * 909k
    h = s.headroom_pps(inst(1, pps=100_000, p99=10.0), P, HZ, 0.0)
    assert h == pytest.approx(700_000)
    # the cap binds when the batch is cheap
    h = s.headroom_pps(inst(1, pps=0.0, p99=3.2), P, HZ, 0.0)
    assert h == pytest.approx(0.9 * 1e9 / 1100)
    # network eats the budget: nothing more than now
    assert s.headroom_pps(inst(1, pps=5.0, p99=10.0), P, HZ, 80.0) == 5.0


def test_headroom_capped_by_a_full_batch():
    # a full batch: 3200 + 32 * 1000 cycles = 35.2 us, so 2 T + net never exceeds 70.4 us
    cap = 0.9 * 1e9 / 1100
    loose = s.ScalingParams(100.0, alpha=0.8, beta=0.9)  # alpha*SLO = 80: target T = 40 us
    # the fluid model alone would say (1 - 9/40) / 1 us = 775k; no batch gets to 40 us
    assert s.headroom_pps(inst(1, pps=100_000, p99=10.0), loose, HZ, 0.0) == pytest.approx(cap)
    # edge: target = 35.2 us, exactly a full batch (2 T = alpha*SLO is "between"): the fluid
    # model, (1 - 9/35.2) / 1 us = 744,318 pps
    edge = s.ScalingParams(100.0, alpha=0.704, beta=0.9)
    h = s.headroom_pps(inst(1, pps=100_000, p99=10.0), edge, HZ, 0.0)
    assert h == pytest.approx((1 - 9 / 35.2) * 1e6)
    # the network term counts: 80 - 2 * 5 leaves T = 35 us < 35.2 -> fluid, (1 - 9/35) / 1 us
    h = s.headroom_pps(inst(1, pps=100_000, p99=10.0), loose, HZ, 10.0)
    assert h == pytest.approx((1 - 9 / 35) * 1e6)
    # a measured p99 batch of 50 us is longer than the nominal full batch: 40 us is
    # reachable, so the fluid model: busy 0.5, o = 25 us -> (1 - 25/40) / 1 us = 375k
    h = s.headroom_pps(inst(1, pps=500_000, p99=50.0), loose, HZ, 0.0)
    assert h == pytest.approx(375_000)


def est(i, load, lat, r_max=1e6, headroom=None):
    return s.Estimate(i, lat, load, r_max, load * r_max, headroom or 0.9 * r_max)


def test_most_loaded_ingress_thresholds_and_headroom():
    a = est(1, 0.5, 40.0)
    b = est(2, 0.7, 50.0, headroom=750_000)
    c = est(3, 0.8, 70.0)  # between the thresholds: no new flows
    d = est(4, 0.95, 30.0)  # over the load cap
    pool = [est(9, 0.0, 5.0)]
    ing = s.MostLoadedIngress([a, b, c, d], P, pool)
    assert ing.pick(30_000) == 2  # most loaded eligible
    assert ing.pick(30_000) == 1  # 760k > 750k: the next one
    assert ing.pick(30_000) == 1
    assert ing.pick(1e6) == 9  # nobody has room: the warm pool instance
    assert ing.attached == [9]
    assert ing.pick(1e6) is None  # pool empty


def test_power_of_two_ingress():
    a, b = est(1, 0.5, 1e4), est(2, 0.2, 1e4)
    ing = s.PowerOfTwoIngress([a, b, est(3, 0.85, 1.0)], 0.8, random.Random(3))
    assert ing.pick(1000) == 2  # the less loaded of the two under 80 %; SLO ignored
    assert 3 not in [e.id for e in ing.cands]


def test_plan_reclaims_idle_and_refills_pool():
    pol = s.QuadrantPolicy(P, HZ, FLAT)
    insts = [inst(1, pps=1e5, p99=5.0), inst(2, flows=0), inst(3, flows=0)]
    plan = pol.plan(10.0, insts, {}, None, pending=0)
    assert s.Detach(2, True) in plan.decisions  # the pool was empty: keep it warm
    assert s.Detach(3, False) in plan.decisions  # pool full again: core released
    assert not any(isinstance(d, s.Prepare) for d in plan.decisions)
    # min_attached keeps the last one even with no flows
    plan = pol.plan(11.0, [inst(5, flows=0)], {}, None, pending=0)
    assert not any(isinstance(d, s.Detach) for d in plan.decisions)
    assert s.Prepare(1) in plan.decisions


def test_plan_migrates_eq4_amount_to_most_loaded_below_alpha():
    pol = s.QuadrantPolicy(P, HZ, FLAT)
    r_max = 1e9 / 1100
    hot = inst(1, pps=0.5 * r_max, p99=60.0, flows=4)  # t = 120 > 90
    cool = inst(2, pps=0.1 * r_max, p99=5.0)  # t = 10
    cooler = inst(3, pps=0.05 * r_max, p99=4.0)
    dr = s.migration_amount(0.5 * r_max, r_max, 120.0, P)  # 0.25 * 0.5 r_max ... = 0.25 r_max
    flows = {1: [s.FlowRate(10 + k, 1, 0.125 * r_max) for k in range(4)]}
    plan = pol.plan(5.0, [hot, cool, cooler], flows, None, pending=1)
    moves = [d for d in plan.decisions if isinstance(d, s.Migrate)]
    assert sum(m.pps for m in moves) == pytest.approx(dr)
    assert {m.dst for m in moves} == {2}  # most loaded below alpha*SLO
    # stats not refreshed since: no second migration off the same instance
    again = pol.plan(5.0, [hot, cool, cooler], flows, None, pending=1)
    assert not any(isinstance(d, s.Migrate) for d in again.decisions)


def test_plan_sheds_above_the_load_cap_even_under_the_slo():
    pol = s.QuadrantPolicy(P, HZ, FLAT)
    r_max = 1e9 / 1100
    sat = inst(1, pps=0.96 * r_max, p99=20.0, flows=6)  # t = 40: below beta*SLO
    cool = inst(2, pps=0.1 * r_max, p99=5.0)
    flows = {1: [s.FlowRate(k, 1, 0.16 * r_max) for k in range(6)]}
    plan = pol.plan(1.0, [sat, cool], flows, None)
    moves = [d for d in plan.decisions if isinstance(d, s.Migrate)]
    # 0.06 r_max over the cap; no flow is that small: the smallest one goes
    assert [m.pps for m in moves] == [pytest.approx(0.16 * r_max)]
    at_cap = inst(1, pps=0.9 * r_max, p99=20.0, flows=6)
    plan = pol.plan(2.0, [at_cap, cool], flows, None)
    assert not any(isinstance(d, s.Migrate) for d in plan.decisions)


def test_plan_scales_out_from_pool_when_none_below_alpha():
    pol = s.QuadrantPolicy(P, HZ, FLAT)
    busy = inst(1, pps=4e5, p99=35.0)  # t = 70: between, takes no new flows
    warm = inst(2, attached=False, flows=0)
    plan = pol.plan(1.0, [busy, warm], {}, None, pending=0)
    assert plan.decisions[0] == s.Attach(2)
    assert s.Prepare(1) in plan.decisions  # refill
    assert plan.ingress.pick(1000.0) == 2


def test_plan_reports_shortage_without_pool():
    pol = s.QuadrantPolicy(s.ScalingParams(100.0, pool_size=0), HZ, FLAT)
    hot = inst(1, pps=8e5, p99=60.0, flows=2)
    flows = {1: [s.FlowRate(1, 1, 4e5), s.FlowRate(2, 1, 4e5)]}
    plan = pol.plan(1.0, [hot], flows, None)
    assert any(isinstance(d, s.Shortage) for d in plan.decisions)
    assert not any(isinstance(d, s.Migrate) for d in plan.decisions)


def test_metron_policy_load_threshold_no_slo():
    pol = s.MetronPolicy(P, HZ, FLAT, seed=1)
    r_max = 1e9 / 1100
    hot = inst(1, pps=0.85 * r_max, p99=1.0, flows=3)  # tiny latency, but load > 80 %
    cool = inst(2, pps=0.1 * r_max, p99=500.0)  # far above any SLO: Metron does not care
    flows = {1: [s.FlowRate(k, 1, 0.05 * r_max) for k in range(3)]}
    plan = pol.plan(1.0, [hot, cool], flows, None)
    moves = [d for d in plan.decisions if isinstance(d, s.Migrate)]
    # sheds what is above 70 %: 0.15 r_max = 3 flows of 0.05
    assert sum(m.pps for m in moves) == pytest.approx(0.15 * r_max)
    assert {m.dst for m in moves} == {2}


def test_params_validation_names_the_field():
    with pytest.raises(s.ScalingError) as e:
        s.ScalingParams(100.0, alpha=0.9, beta=0.6)
    assert e.value.field == "alpha"
    with pytest.raises(s.ScalingError) as e:
        s.ScalingParams(0.0)
    assert e.value.field == "slo_us"


def test_consolidation_drains_the_least_loaded_when_others_have_room():
    r_max = 1e9 / 1100
    a = inst(1, pps=0.3 * r_max, p99=5.0, flows=3)
    c = inst(3, pps=0.2 * r_max, p99=5.0, flows=3)
    b = inst(2, pps=0.05 * r_max, p99=4.0, flows=2)
    flows = {2: [s.FlowRate(7, 2, 0.03 * r_max), s.FlowRate(8, 2, 0.02 * r_max)]}
    off = s.QuadrantPolicy(P, HZ, FLAT).plan(1.0, [a, b, c], flows, None)
    assert not any(isinstance(d, s.Migrate) for d in off.decisions)  # the paper's rules
    on = s.QuadrantPolicy(s.ScalingParams(100.0, consolidate=True), HZ, FLAT)
    # headroom 0.9 r_max each (the cap): room 0.6 + 0.7 - 0.05 >= one instance's 0.9
    plan = on.plan(1.0, [a, b, c], flows, None)
    moves = [d for d in plan.decisions if isinstance(d, s.Migrate)]
    assert [(m.flow_id, m.src, m.dst) for m in moves] == [(7, 2, 1), (8, 2, 1)]
    assert plan.ingress.pick(1.0) == 1  # the drained one takes no new flows
    # two instances only: room 0.6 - 0.05 < 0.9 spare, no drain (not on the way up)
    plan = on.plan(2.0, [a, b], flows, None)
    assert not any(isinstance(d, s.Migrate) for d in plan.decisions)
