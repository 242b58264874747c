"""The scaling loop on the live core: plans carried out on a fake switch table."""

from scapy.all import raw

from quadrant_app import flowkey, ofbuild
from quadrant_app.autoscale import Autoscaler, Move, Settings
from quadrant_app.latency_profile import NetworkProfile
from tests.unit.test_core import W1_MACS, W1_PORT, W2_MACS, W2_PORT, Lab, reply, tcp


def stats(lab, inst, pps, load, batch_p99):
    lab.apply(
        lab.core.update_stats(
            inst.id, lab.now, load=load, pps=pps, p99_us=2 * batch_p99, batch_p99_us=batch_p99
        )
    )


def flow(lab, sport, pps):
    """Send a flow's first packet and give it a measured rate."""
    lab.send(tcp(sport=sport))
    rec = lab.core.flows.get(1, flowkey.parse(raw(tcp(sport=sport))))
    lab.core.flows.pps[rec._slot] = pps
    return rec


def setup(**settings):
    lab = Lab()
    chain = lab.chain({"dst": "10.2.0.0/16", "proto": "tcp"}, bidirectional=True)
    a = lab.instance(chain, "w1", core=0)
    stats(lab, a, 0, 0.0, 5)  # cool: the flows go here
    recs = [flow(lab, 100 + i, pps) for i, pps in enumerate([300, 200, 100, 300, 100])]
    b = lab.instance(chain, "w2", core=0)
    auto = Autoscaler(lab.core, Settings(reclaim_grace=0.0, **settings))
    return lab, chain, a, b, recs, auto


def test_a_hot_instance_sheds_eq4s_share_of_its_flows_to_a_cool_one():
    lab, chain, a, b, recs, auto = setup()
    auto.s.reclaim_grace = 100.0  # b has no flows yet: it must not be reclaimed first
    stats(lab, a, 1000, 0.5, 50)  # estimate 100 us > beta 90: hot; r_max 2000
    stats(lab, b, 100, 0.1, 5)  # 10 us: a candidate
    msgs, moves = auto.tick(lab.now)
    # eq. 4: 1000 * (100 - 60) / 100 * (2000 / 1000 - 1) = 400 pps, largest flows first
    (move,) = moves
    assert (move.src, move.dst, move.pps) == (a.id, b.id, 400)
    assert sorted(lab.core.flows.by_id(f).pps for f in move.flow_ids) == [100, 300]
    assert auto.tick(lab.now + 0.5) == ([], [])  # not before the interval


def test_a_stated_max_pps_bounds_what_an_idle_instance_is_sent():
    lab = Lab()
    chain = lab.chain({"dst": "10.2.0.0/16", "proto": "tcp"}, scaling={"max_pps": 400})
    a = lab.instance(chain, "w1", core=0)
    stats(lab, a, 0, 0.0, 5)
    [flow(lab, 100 + i, pps) for i, pps in enumerate([300, 200, 100, 300, 100])]
    b = lab.instance(chain, "w2", core=0)
    auto = Autoscaler(lab.core, Settings(reclaim_grace=100.0))
    # 1,000 pps on a stated 400 (load 2.5): it sheds what is above 0.9 * 400 = 360,
    # the largest flows that fit in 640 pps: 300 + 300
    stats(lab, a, 1000, 2.5, 5)
    before = lab.core.metrics.scaling_shortage_pps.value
    msgs, moves = auto.tick(lab.now)
    # b has carried nothing: its r_max is the stated 400, not the 1 Mpps default, so it
    # takes one 300 pps flow (its headroom, 360, has no room for the second)
    (move,) = moves
    assert (move.src, move.dst, move.pps) == (a.id, b.id, 300)
    assert lab.core.metrics.scaling_shortage_pps.value - before == 300


def test_migrate_repoints_the_rules_and_the_replies_go_along():
    lab, chain, a, b, recs, auto = setup()
    lab.send(reply(tcp(sport=100)), in_port=2)  # the first flow's reply: on a too
    moved, msgs = lab.core.migrate([recs[0].id], a.id, b.id, lab.now)
    lab.apply(msgs)
    assert len(moved) == 2 and msgs[-1][1].__class__.__name__ == "OFPBarrierRequest"
    assert lab.send(tcp(sport=100))[0][0] == W2_PORT
    assert lab.send(reply(tcp(sport=100)), in_port=2)[0][0] == W2_PORT
    assert lab.send(tcp(sport=101))[0][0] == W1_PORT  # the others stay
    assert (a.flows, b.flows) == (4, 2)
    cookies = {e.cookie for e in lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)}
    assert ofbuild.flow_cookie(b.id) in cookies
    assert lab.core.metrics.migrated_flows.value == 2
    # moving a flow that is not (or no longer) there is a no-op
    assert lab.core.migrate([recs[0].id], a.id, b.id, lab.now) == ([], [])


def test_an_idle_instance_is_reclaimed_to_the_warm_pool():
    lab, chain, a, b, recs, auto = setup()
    stats(lab, a, 1000, 0.3, 5)
    stats(lab, b, 0, 0.0, 2)  # no flows
    msgs, moves = auto.tick(lab.now)
    assert moves == [] and not b.attached
    assert ("detach", b.id, "w2") in lab.core.instances.agent_requests
    assert lab.core.metrics.reclaims.values == {"warm": 1}


def test_reclaim_waits_for_the_grace_after_an_attach():
    lab, chain, a, b, recs, auto = setup()
    auto.s.reclaim_grace = 5.0
    stats(lab, a, 1000, 0.3, 5)
    auto.tick(lab.now)
    assert b.attached  # attached just now, as far as the loop knows
    assert auto.tick(lab.now + 6)[1] == [] and not b.attached


def test_no_candidate_left_scales_out_from_the_pool():
    lab, chain, a, b, recs, auto = setup()
    lab.apply(lab.core.detach(b.id, lab.now))  # b is the warm pool now
    stats(lab, a, 1000, 0.5, 35)  # 70 us: between the thresholds, no candidate
    msgs, moves = auto.tick(lab.now)
    assert b.attached and ("attach", b.id, "w2") in lab.core.instances.agent_requests
    assert lab.core.metrics.scale_outs.value == 1
    lab.send(tcp(sport=999))  # the next new flow goes to the new instance
    assert lab.core.flows.get(1, flowkey.parse(raw(tcp(sport=999)))).instance_id == b.id


def test_instances_of_workers_without_an_agent_and_those_moving_are_left_alone():
    lab, chain, a, b, recs, auto = setup()
    auto.managed = lambda worker: worker == "w1"
    stats(lab, a, 1000, 0.5, 50)
    assert auto.tick(lab.now)[1] == []  # b is not managed: nowhere to shed to
    auto.managed = lambda worker: True
    auto.moving.update((a.id,))
    assert auto.tick(lab.now + 2)[1] == []


def test_the_latency_estimate_adds_the_network_at_the_workers_throughput():
    lab, chain, a, b, recs, auto = setup(network=NetworkProfile((0.0, 10.0), (4.0, 8.0), "model"))
    for r in recs:
        lab.core.flows.bps[r._slot] = 1e9  # 5 Gbit/s through w1
    auto.tick(lab.now)
    assert auto.latency_us("w1", 10.0) == 2 * 10.0 + 6.0
    assert auto.latency_us("w2", 10.0) == 2 * 10.0 + 4.0
    assert isinstance(Move(1, 1, 2, (1,), 1.0), Move) and W1_MACS and W2_MACS


def test_a_nat_chain_sheds_connections_by_their_outbound_flows():
    """A NAT chain's plan moves connections (outbound flows, which take their replies
    along through the app's NAT handover), never a reply flow on its own."""
    from scapy.all import IP, UDP, Ether

    from quadrant_app.chains import parse_chain
    from tests.unit.test_natpools import nat_chain

    lab = Lab()
    chain = lab.core.add_chain("acme", parse_chain(nat_chain()), lab.now)
    a, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now, nat_slot=0)
    stats(lab, a, 0, 0.0, 5)
    outs = []
    for i, pps in enumerate([250, 50, 20]):
        pkt = Ether() / IP(src="10.1.0.5", dst="10.2.0.1") / UDP(sport=4000 + i, dport=5353)
        lab.send(pkt)
        rec = lab.core.flows.get(1, flowkey.parse(raw(pkt)))
        lab.core.flows.pps[rec._slot] = pps
        outs.append(rec.id)
    rep = Ether() / IP(src="10.2.0.1", dst="10.2.0.254") / UDP(sport=5353, dport=20000)
    lab.send(rep, in_port=2)  # the largest flow: a reply to a's address
    rrec = lab.core.flows.get(1, flowkey.parse(raw(rep)))
    lab.core.flows.pps[rrec._slot] = 300
    b, _ = lab.core.add_instance(chain.id, "w2", W2_MACS[0], 0, True, lab.now, nat_slot=1)
    auto = Autoscaler(lab.core, Settings(reclaim_grace=100.0))
    stats(lab, a, 1100, 0.55, 500)  # estimate 1000 us > beta 900: hot; r_max 2000
    stats(lab, b, 100, 0.1, 5)  # a candidate
    _msgs, moves = auto.tick(lab.now)
    # eq. 4: 1100 * (1000 - 600) / 1000 * (2000 / 1100 - 1) = 360 pps, largest first:
    # the reply (300) and the 50 pps connection; the reply is left to go along with its
    # outbound flow, so the move names the connection alone
    (move,) = moves
    assert (move.src, move.dst) == (a.id, b.id)
    assert move.flow_ids == (outs[1],)
