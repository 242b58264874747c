"""The pure core against a fake OpenFlow table: assignment, consistency, pool, hold, bookkeeping."""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, raw

from quadrant_app import flowkey, ofbuild, topology
from quadrant_app.chains import parse_chain
from quadrant_app.core import Core, Settings
from quadrant_app.heldrelease import Handover
from tests.unit.fakeoftable import FakeOFTable, StatsRequest, parse_wire

from .test_topology import LAB

DPID = 1
UPLINK = 1
W1_PORT, W2_PORT, EGRESS = 11, 12, 2
W1_MACS = ["02:00:00:00:01:01", "02:00:00:00:01:02", "02:00:00:00:01:03"]
W2_MACS = ["02:00:00:00:02:01", "02:00:00:00:02:02"]


class Lab:
    """A core wired to a fake switch table, with a clock.

    A :class:`Handover` (held flows released in order) runs at once, its agent's hold
    taken as granted, unless ``hand_over=False``: then it waits in ``handovers``.
    """

    def __init__(self, hand_over=True, **settings):
        self.core = Core(topology.load(LAB), Settings(**settings))
        self.table = FakeOFTable(core=self.core)
        self.now = 100.0
        self.hand_over = hand_over
        self.handovers = []
        self.apply(self.core.datapath_up(DPID, self.now))
        self.answer_stats()

    def apply(self, msgs):
        msgs = list(msgs)
        for dpid, msg in msgs:
            if isinstance(msg, Handover) and not self.hand_over:
                self.handovers.append(msg)
            else:
                self.table.apply([(dpid, msg)])
        return msgs

    def answer_stats(self):
        """Answer (and forget) the stats requests the switch has seen."""
        for req in self.table.stats_requests():
            self.table.other.remove(req)
            entries = self.table.stats_reply(req)
            self.apply(self.core.flow_stats_reply(DPID, req.xid, entries, False, self.now))

    def chain(self, filt=None, tenant="acme", **extra):
        body = {"name": "c", "nfs": [{"type": "empty"}], "filter": filt or {}, "slo_us": 100}
        body.update(extra)
        return self.core.add_chain(tenant, parse_chain(body), self.now)

    def instance(self, chain, worker="w1", mac=None, core=0, attached=True, load=None, p99=None):
        mac = mac or (W1_MACS if worker == "w1" else W2_MACS)[core]
        inst, msgs = self.core.add_instance(chain.id, worker, mac, core, attached, self.now)
        self.apply(msgs)
        if load is not None or p99 is not None:
            self.apply(self.core.update_stats(inst.id, self.now, load=load, p99_us=p99))
        return inst

    def send(self, pkt, in_port=UPLINK):
        """A packet arrives at the switch; a packet-in goes to the core if the table says so."""
        data = raw(pkt)
        out = self.table.lookup(data, in_port)
        if out == "controller":
            self.apply(self.core.packet_in(DPID, in_port, data, self.now))
            return "controller"
        return out


def tcp(sport=1000, dport=80, src="10.1.0.1", dst="10.2.0.1", payload=b""):
    return (
        Ether(src="02:00:00:00:0a:01", dst="02:00:00:00:0b:01")
        / IP(src=src, dst=dst)
        / TCP(sport=sport, dport=dport)
        / payload
    )


def udp6(sport=1000, dport=53):
    return (
        Ether(src="02:00:00:00:0a:01", dst="02:00:00:00:0b:01")
        / IPv6(src="2001:db8:1::1", dst="2001:db8:2::1")
        / UDP(sport=sport, dport=dport)
    )


def test_new_flow_gets_rule_and_first_packet_is_not_lost():
    lab = Lab()
    chain = lab.chain({"dst": "10.2.0.0/16", "proto": "tcp"})
    lab.instance(chain, "w2", core=0)
    pkt = tcp(payload=b"first")
    assert lab.send(pkt) == "controller"
    # the packet-out carries the first packet, rewritten to the instance's VF
    ((port, data),) = lab.table.packet_outs
    assert port == W2_PORT and data[:6] == bytes.fromhex("020000000201") and data.endswith(b"first")
    # the rule is in place: the next packet goes straight to the worker
    (rule,) = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)
    assert rule.idle_timeout == 10 and rule.flags & 1
    out = lab.send(tcp(payload=b"second"))
    assert out == [(W2_PORT, bytes.fromhex("020000000201") + raw(tcp(payload=b"second"))[6:])]
    assert lab.core.metrics.flow_setups.value == 1 and lab.core.metrics.packet_ins.value == 1
    assert chain.flows == 1 and lab.core.instances.by_id[1].flows == 1


def test_most_loaded_instance_under_threshold_wins():
    lab = Lab()
    chain = lab.chain()  # slo 100 us, alpha 0.6 -> threshold 60 us; load cap 0.9
    light = lab.instance(chain, "w1", core=0, load=0.2, p99=10)
    heavy = lab.instance(chain, "w2", core=0, load=0.7, p99=30)
    too_slow = lab.instance(chain, "w1", core=1, load=0.8, p99=61)
    assert lab.core.instances.candidates(chain.id, DPID) == [heavy, light]
    lab.send(tcp(sport=1))
    assert lab.core.flows.get(DPID, flowkey.parse(raw(tcp(sport=1)))).instance_id == heavy.id
    # heavy passes the load cap: the next flow goes to the lighter one
    lab.apply(lab.core.update_stats(heavy.id, lab.now, load=0.95))
    lab.send(tcp(sport=2))
    assert lab.core.flows.get(DPID, flowkey.parse(raw(tcp(sport=2)))).instance_id == light.id
    # too_slow recovers and is now the most loaded eligible one
    lab.apply(lab.core.update_stats(too_slow.id, lab.now, p99_us=20))
    lab.send(tcp(sport=3))
    assert lab.core.flows.get(DPID, flowkey.parse(raw(tcp(sport=3)))).instance_id == too_slow.id


def test_repeat_packet_in_goes_to_the_same_instance():
    lab = Lab()
    chain = lab.chain()
    a = lab.instance(chain, "w1", load=0.5)
    pkt = raw(tcp())
    msgs1 = lab.core.packet_in(DPID, UPLINK, pkt, lab.now)
    # stats change between the two packet-ins: another instance is now preferred
    b = lab.instance(chain, "w2", load=0.8)
    assert lab.core.instances.candidates(chain.id, DPID)[0] is b
    lab.now += 0.01
    msgs2 = lab.core.packet_in(DPID, UPLINK, pkt, lab.now)  # before the rule landed
    (m1a, m1b) = parse_wire(bytes(msgs1[0][1]))  # the packet-out first, then the rule
    (m2,) = parse_wire(bytes(msgs2[0][1]))  # only a packet-out: the rule is on its way
    assert m1b.cookie == ofbuild.flow_cookie(a.id) and not hasattr(m1a, "cookie")
    assert m2.actions[0].value == a.vf_mac and m2.actions[1].port == W1_PORT
    assert lab.core.metrics.repeat_packet_ins.value == 1
    assert a.flows == 1 and b.flows == 0
    # much later the rule is evidently missing: install it again, same instance
    lab.now += 5
    msgs3 = lab.core.packet_in(DPID, UPLINK, pkt, lab.now)
    _out, rule = parse_wire(bytes(msgs3[0][1]))
    assert rule.cookie == ofbuild.flow_cookie(a.id)


def test_ipv6_flow():
    lab = Lab()
    chain = lab.chain({"dst": "2001:db8:2::/48", "proto": "udp", "dst_ports": 53})
    lab.instance(chain, "w1", core=1)
    assert lab.send(udp6()) == "controller"
    (rule,) = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)
    assert rule.match["ipv6_dst"] == "2001:db8:2::1" and rule.match["udp_dst"] == 53
    out = lab.send(udp6())
    assert out == [(W1_PORT, bytes.fromhex("020000000102") + raw(udp6())[6:])]


def test_other_protocols_are_keyed_without_ports():
    lab = Lab()
    chain = lab.chain({"proto": "icmp"})
    lab.instance(chain)
    pkt = Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / ICMP()
    assert lab.send(pkt) == "controller"
    (rule,) = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)
    assert rule.match == {
        "eth_type": 0x0800,
        "ip_proto": 1,
        "ipv4_src": "10.1.0.1",
        "ipv4_dst": "10.2.0.1",
    }
    assert lab.send(pkt)[0][0] == W1_PORT


def test_unmatched_flow_gets_the_default_action():
    lab = Lab()
    lab.instance(lab.chain({"dst": "10.2.0.0/16", "proto": "udp"}))
    assert lab.send(tcp()) == "controller"
    assert lab.table.packet_outs == []  # default drop: nothing sent on
    (rule,) = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_UNMATCHED)
    assert lab.send(tcp()) == [] and rule.packets == 1  # dropped by the switch now
    assert lab.core.metrics.unmatched_flows.value == 1


def test_warm_pool_instance_is_attached_when_no_candidate():
    lab = Lab()
    chain = lab.chain()
    busy = lab.instance(chain, "w1", load=0.95)  # over the load cap
    pooled = lab.instance(chain, "w2", attached=False)
    assert lab.core.instances.candidates(chain.id, DPID) == []
    lab.send(tcp())
    assert pooled.attached and lab.core.instances.agent_requests == [
        ("attach", pooled.id, pooled.worker)
    ]
    assert lab.core.flows.get(DPID, flowkey.parse(raw(tcp()))).instance_id == pooled.id
    assert busy.flows == 0 and lab.core.metrics.pool_attaches.value == 1


def test_no_instance_holds_packets_in_a_bounded_queue():
    lab = Lab(hold_queue_len=3, hold_timeout=1.0)
    chain = lab.chain()
    for sport in range(5):
        lab.send(tcp(sport=sport))
    assert len(chain.held) == 3 and chain.shortage_since is not None
    assert lab.core.metrics.held_dropped.values == {"full": 2}
    assert lab.core.metrics.shortages.value == 1
    assert lab.table.packet_outs == []
    # an instance appears: the held flows are assigned and their packets sent on, in order
    inst = lab.instance(chain, "w1")
    assert [p for p, _ in lab.table.packet_outs] == [W1_PORT] * 3
    assert [flowkey.parse(d).sport for _, d in lab.table.packet_outs] == [0, 1, 2]
    assert inst.flows == 3 and not chain.held and chain.shortage_since is None
    assert lab.core.metrics.held_released.value == 3


def test_held_packets_expire():
    lab = Lab(hold_queue_len=10, hold_timeout=1.0)
    chain = lab.chain()
    lab.send(tcp(sport=1))
    lab.now += 0.5
    lab.send(tcp(sport=2))
    lab.now += 0.7
    lab.apply(lab.core.tick(lab.now))
    assert [k[2].sport for k in chain.held] == [2]
    assert lab.core.metrics.held_dropped.values == {"timeout": 1}


def test_two_packets_of_one_held_flow_go_to_one_instance():
    lab = Lab()
    chain = lab.chain()
    lab.send(tcp(payload=b"a"))
    lab.send(tcp(payload=b"b"))
    lab.instance(chain, "w1")
    lab.instance(chain, "w2", load=0.5)  # preferred, but the flow is already assigned
    assert [p for p, _ in lab.table.packet_outs] == [W1_PORT, W1_PORT]
    assert len(lab.core.flows) == 1


def test_flow_removed_updates_counts():
    lab = Lab()
    chain = lab.chain()
    inst = lab.instance(chain)
    lab.send(tcp())
    key = flowkey.parse(raw(tcp()))
    lab.now += 12
    match = ofbuild.flow_match(key)
    lab.apply(lab.core.flow_removed(DPID, ofbuild.flow_cookie(inst.id), match, 0, 12.0, lab.now))
    assert lab.core.flows.get(DPID, key) is None
    assert inst.flows == 0 and chain.flows == 0
    assert lab.core.metrics.flow_removed.values == {"idle_timeout": 1}


def test_stale_flow_removed_is_ignored():
    lab = Lab()
    chain = lab.chain()
    inst = lab.instance(chain)
    lab.send(tcp())
    key = flowkey.parse(raw(tcp()))
    lab.now += 5
    lab.core.packet_in(DPID, UPLINK, raw(tcp()), lab.now)  # rule re-installed at now
    # the old copy's removal arrives: it was installed 5 s before the record's last install
    lab.now += 0.1
    lab.core.flow_removed(
        DPID, ofbuild.flow_cookie(inst.id), ofbuild.flow_match(key), 0, 5.1, lab.now
    )
    assert lab.core.flows.get(DPID, key) is not None and inst.flows == 1


def test_flow_stats_give_rates_and_default_counters():
    lab = Lab(flow_stats_interval=10)
    chain = lab.chain({"proto": "tcp"})
    lab.instance(chain)
    lab.send(tcp())
    for _ in range(4):
        lab.send(tcp())
    lab.send(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / UDP(), in_port=5)  # default: counted
    lab.now += 10
    lab.apply(lab.core.tick(lab.now))
    reqs = lab.table.stats_requests()
    assert {(r.cookie, r.table_id) for r in reqs} == {
        (ofbuild.COOKIE_FLOW, ofbuild.TABLE_FLOWS),
        (ofbuild.COOKIE_BASE, 0xFF),
    }
    lab.answer_stats()
    rec = lab.core.flows.get(DPID, flowkey.parse(raw(tcp())))
    assert rec.packets == 4
    assert lab.core.switches[DPID].default_packets == 1
    for _ in range(10):
        lab.send(tcp())
    lab.now += 10
    lab.apply(lab.core.tick(lab.now))
    lab.answer_stats()
    assert rec.packets == 14 and rec.pps == pytest.approx(1.0) and rec.bps == pytest.approx(800.0)


def test_reconnect_reinstalls_base_and_resyncs_without_reassigning():
    lab = Lab()
    chain = lab.chain()
    a = lab.instance(chain, "w1", load=0.5)
    lab.instance(chain, "w2", load=0.1)
    for sport in range(3):
        lab.send(tcp(sport=sport))
    assert a.flows == 3
    # the switch restarts and loses everything; meanwhile stats changed
    lab.apply(lab.core.datapath_down(DPID, lab.now))
    lab.table = FakeOFTable(core=lab.core)
    lab.apply(lab.core.update_stats(a.id, lab.now, load=0.1))
    lab.now += 1
    msgs = lab.core.datapath_up(DPID, lab.now)
    lab.apply(msgs)
    # the flows' rules are back at once, ahead of the base pipeline (no packet-in window)
    rules = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)
    assert len(rules) == 3 and {r.cookie for r in rules} == {ofbuild.flow_cookie(a.id)}
    assert all(type(m) is bytearray for _, m in msgs[:3])  # the rules, then the pipeline
    assert lab.core.metrics.resync_installed.value == 3
    lab.answer_stats()  # the re-sync: all three are there, none installed again
    assert len(lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)) == 3
    assert lab.core.metrics.resync_installed.value == 3
    assert a.flows == 3  # nothing reassigned
    assert lab.send(tcp(sport=1))[0][0] == W1_PORT


def test_controller_restart_adopts_rules_of_known_instances():
    lab = Lab()
    chain = lab.chain()
    inst = lab.instance(chain, "w1")
    lab.send(tcp(sport=1))
    lab.send(tcp(sport=2))
    old_table = lab.table
    # a new controller, same registrations (as the agents will re-register them),
    # finds the switch's per-flow rules, plus one that names an unknown instance
    stray = ofbuild.flow_rule(flowkey.parse(raw(tcp(sport=9))), [], ofbuild.flow_cookie(77), 10)
    old_table.apply([(DPID, stray)])
    fresh = Lab()
    fresh.table = old_table
    c2 = fresh.chain()
    inst2 = fresh.instance(c2, "w1")
    assert inst2.id == inst.id
    fresh.apply(fresh.core.datapath_up(DPID, fresh.now))
    fresh.answer_stats()
    assert len(fresh.core.flows) == 2 and inst2.flows == 2
    assert fresh.core.metrics.resync_adopted.value == 2
    assert fresh.core.metrics.resync_deleted.value == 1
    assert len(old_table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)) == 2


def test_remove_chain_deletes_its_rules():
    lab = Lab()
    chain = lab.chain({"proto": "tcp"})
    other = lab.chain({"proto": "udp"})
    lab.instance(chain, "w1")
    lab.instance(other, "w2")
    lab.send(tcp())
    lab.send(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / UDP(sport=5, dport=6))
    assert len(lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)) == 2
    lab.apply(lab.core.remove_chain(chain.id, lab.now))
    (left,) = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)
    assert left.match["ip_proto"] == 17
    assert len(lab.core.flows) == 1 and chain.id not in lab.core.chains.by_id
    assert lab.core.instances.of_chain(chain.id) == []


def test_remove_instance_reassigns_its_flows():
    lab = Lab()
    chain = lab.chain()
    a = lab.instance(chain, "w1", load=0.5)
    b = lab.instance(chain, "w2", load=0.1)
    lab.send(tcp())
    lab.apply(lab.core.remove_instance(a.id, lab.now))
    assert lab.send(tcp()) == "controller"  # the rule went with the instance
    assert lab.core.flows.get(DPID, flowkey.parse(raw(tcp()))).instance_id == b.id


def test_instance_validation():
    lab = Lab()
    chain = lab.chain()
    lab.instance(chain, "w1", core=0)
    from quadrant_app.chains import ConflictError, SpecError

    cases = [
        ((chain.id, "w9", W1_MACS[1], 1), SpecError, "worker"),
        ((chain.id, "w1", "02:00:00:00:02:01", 1), SpecError, "vf_mac"),  # w2's VF
        ((chain.id, "w1", W1_MACS[1], 7), SpecError, "core"),
        ((chain.id, "w1", W1_MACS[0], 1), ConflictError, "vf_mac"),
        ((chain.id, "w1", W1_MACS[1], 0), ConflictError, "core"),
        ((999, "w1", W1_MACS[1], 1), SpecError, "chain_id"),
    ]
    for args, exc, field in cases:
        with pytest.raises(exc) as err:
            lab.core.add_instance(*args, True, lab.now)
        assert err.value.field == field
    assert len(lab.core.instances.by_id) == 1


def test_metrics_render_in_prometheus_text_format():
    lab = Lab()
    chain = lab.chain()
    lab.instance(chain)
    lab.send(tcp())
    lab.core.metrics.setup_seconds.observe(25e-6)
    text = lab.core.metrics.render()
    assert "quadrant_packet_ins_total 1\n" in text
    assert "quadrant_flow_setups_total 1\n" in text
    assert 'quadrant_chain_flows{chain="1",tenant="acme"} 1\n' in text
    assert 'quadrant_flow_setup_seconds_bucket{le="3e-05"} 1\n' in text
    assert 'quadrant_flow_setup_seconds_bucket{le="2e-05"} 0\n' in text
    assert "quadrant_flow_setup_seconds_count 1\n" in text
    assert 'quadrant_switch_connected{switch="tor1"} 1\n' in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_unknown_switch_is_ignored():
    lab = Lab()
    assert lab.core.datapath_up(99, lab.now) == []
    lab.instance(lab.chain())
    assert lab.core.packet_in(99, 1, raw(tcp()), lab.now) == []
    assert len(lab.core.flows) == 0


def test_stats_request_is_a_flow_stats_request():
    lab = Lab()
    req = lab.core.datapath_up(DPID, lab.now)[-1][1]
    (parsed,) = parse_wire(ofbuild.serialize(req))
    assert isinstance(parsed, StatsRequest) and parsed.cookie == ofbuild.COOKIE_FLOW


def test_unmatched_flow_with_forward_default_goes_on_to_egress():
    import dataclasses

    lab = Lab()
    topo = lab.core.topology
    sw = dataclasses.replace(topo.switches[0], default_action="forward")
    lab.core.topology = dataclasses.replace(topo, switches=(sw,))
    pkt = udp6()
    assert lab.send(pkt) == "controller"
    assert lab.table.packet_outs == [(EGRESS, raw(pkt))]  # sent on unchanged
    (rule,) = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_UNMATCHED)
    assert rule.match["ipv6_src"] == "2001:db8:1::1"
    assert lab.send(pkt) == [(EGRESS, raw(pkt))]  # by the switch now


def test_held_flows_take_a_warm_pool_instance_that_appears():
    lab = Lab()
    chain = lab.chain()
    lab.send(tcp(sport=1))  # held: no instance at all
    inst, msgs = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, False, lab.now)
    lab.apply(msgs)  # detached, but flows are waiting: it is attached for them
    assert inst.attached and lab.core.instances.agent_requests == [("attach", inst.id, inst.worker)]
    assert [flowkey.parse(d).sport for _, d in lab.table.packet_outs] == [1]
    lab.send(tcp(sport=2))
    assert [flowkey.parse(d).sport for _, d in lab.table.packet_outs] == [1, 2]
    assert not chain.held and inst.flows == 2


def test_new_flow_queues_behind_held_ones():
    lab = Lab(hold_queue_len=10)
    chain = lab.chain()
    busy = lab.instance(chain, load=0.95)
    lab.send(tcp(sport=1))
    assert len(chain.held) == 1
    lab.core.instances.by_id[busy.id].load = 0.1  # eligible again, nobody told the core yet
    lab.core.instances.refresh(chain.id)
    lab.send(tcp(sport=2))  # released in arrival order: 1, then 2
    assert [flowkey.parse(d).sport for _, d in lab.table.packet_outs] == [1, 2]


def test_tick_releases_held_packets_when_an_instance_is_eligible():
    lab = Lab()
    chain = lab.chain()
    inst = lab.instance(chain, load=0.95)  # over the load cap: not a candidate
    lab.send(tcp())
    assert len(chain.held) == 1
    inst.load = 0.1  # changed without a call that releases (e.g. by a later feed)
    lab.core.instances.refresh(chain.id)
    lab.apply(lab.core.tick(lab.now))
    assert not chain.held and len(lab.table.packet_outs) == 1


def reply(pkt):
    """The other direction of ``pkt`` (a TCP packet from tcp()), as the sink sends it."""
    ip, seg = pkt[IP], pkt[TCP]
    return (
        Ether(src="02:00:00:00:0b:01", dst="02:00:00:00:0a:01")
        / IP(src=ip.dst, dst=ip.src)
        / TCP(sport=seg.dport, dport=seg.sport, flags="SA")
    )


def test_replies_of_a_bidirectional_chain_go_to_the_same_instance():
    lab = Lab()
    chain = lab.chain({"dst": "10.2.0.0/16", "proto": "tcp"}, bidirectional=True)
    first = lab.instance(chain, "w1", core=0, load=0.5, p99=10)
    lab.send(tcp(sport=7))
    # a more loaded instance appears: new flows would go there, replies must not
    lab.instance(chain, "w2", core=0, load=0.8, p99=10)
    assert lab.send(reply(tcp(sport=7)), in_port=EGRESS) == "controller"
    ((port, data),) = lab.table.packet_outs[-1:]
    assert port == W1_PORT and data[:6] == bytes.fromhex(W1_MACS[0].replace(":", ""))
    rec = lab.core.flows.get(DPID, flowkey.parse(raw(reply(tcp(sport=7)))))
    assert rec.instance_id == first.id
    assert lab.send(reply(tcp(sport=7)), in_port=EGRESS)[0][0] == W1_PORT  # by the switch now
    assert lab.core.metrics.reply_flows.values == {"chain": 1}
    # a new flow from the egress side that is nobody's reply is classified normally
    assert lab.send(tcp(sport=9, src="10.2.0.1", dst="10.1.0.1"), in_port=EGRESS) == "controller"
    assert lab.core.metrics.unmatched_flows.value == 1


def test_replies_of_a_one_way_chain_bypass_it_to_their_host():
    lab = Lab()  # default action drop: replies are delivered all the same
    chain = lab.chain({"dst": "10.2.0.0/16", "proto": "tcp"})
    lab.instance(chain, "w1", core=0)
    lab.send(tcp(sport=7))
    back = reply(tcp(sport=7))
    assert lab.send(back, in_port=EGRESS) == "controller"
    assert lab.table.packet_outs[-1] == (UPLINK, raw(back))  # to the source host
    assert lab.send(back, in_port=EGRESS) == [(UPLINK, raw(back))]
    assert lab.core.metrics.reply_flows.values == {"direct": 1}
    assert lab.core.metrics.unmatched_flows.value == 0
    assert chain.flows == 1


def test_forward_default_delivers_to_the_host_of_the_destination():
    import dataclasses

    lab = Lab()
    topo = lab.core.topology
    sw = dataclasses.replace(topo.switches[0], default_action="forward")
    lab.core.topology = dataclasses.replace(topo, switches=(sw,))
    pkt = tcp(src="10.1.0.1", dst="10.2.9.9")
    pkt[Ether].dst = "02:00:00:00:99:99"
    assert lab.send(pkt) == "controller"
    delivered = bytes.fromhex("020000000b01") + raw(pkt)[6:]
    assert lab.table.packet_outs == [(EGRESS, delivered)]
    assert lab.send(pkt) == [(EGRESS, delivered)]


def test_held_packets_leave_before_their_flows_rule():
    """Packets held while a chain had no instance go out, in order, before the rule
    that would forward the flow's later packets past them is sent (without ordered
    release: tests/unit/test_heldrelease.py has it with)."""
    lab = Lab(ordered_release=False)
    chain = lab.chain()
    first, second = tcp(sport=5, payload=b"1"), tcp(sport=5, payload=b"2")
    assert lab.send(first) == "controller" and lab.send(second) == "controller"
    assert len(chain.held) == 2
    _inst, msgs = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now)
    wire = [m for _dpid, buf in msgs for m in parse_wire(bytes(buf))]
    assert [type(m).__name__ for m in wire] == ["PacketOut", "PacketOut", "OFPFlowMod"]
    assert [bytes(m.data)[-1:] for m in wire[:2]] == [b"1", b"2"]
