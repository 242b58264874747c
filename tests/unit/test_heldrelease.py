"""Held packets released in order to a chain's new instance (quadrant_app/heldrelease.py):
the core's side, step by step, on the fake switch table."""

from __future__ import annotations

from scapy.all import raw

from quadrant_app import flowkey
from quadrant_app.heldrelease import HOLD_MAX, MARK_TAG, Handover, mark
from tests.unit.fakeoftable import parse_wire

from .test_core import W1_MACS, W1_PORT, Lab, tcp


def payloads(outs):
    return [bytes(d)[-2:] for _port, d in outs]


def held_then_instance(lab, chain, packets):
    for p in packets:
        assert lab.send(p) == "controller"
    lab.base_mods = lab.table.flow_mods
    inst = lab.instance(chain, "w1")
    (h,) = lab.handovers
    return inst, h


def test_mark_puts_the_marker_tag_after_the_macs_and_keeps_the_flow_key():
    data = raw(tcp(sport=7, payload=b"xy"))
    marked = mark(data)
    assert marked[:12] == data[:12] and marked[12:16] == MARK_TAG == b"\x81\x00\x0f\xff"
    assert marked[16:] == data[12:]
    assert flowkey.parse(marked) == flowkey.parse(data)


def test_release_waits_for_the_hold_then_sends_marked_packets_rules_and_a_barrier():
    lab = Lab(hand_over=False)
    chain = lab.chain()
    inst, h = held_then_instance(
        lab, chain, [tcp(sport=1, payload=b"a1"), tcp(sport=1, payload=b"a2"),
                     tcp(sport=2, payload=b"b1")])  # fmt: skip
    # nothing reaches the switch before the instance holds the flows
    assert lab.table.packet_outs == [] and lab.table.flow_mods == lab.base_mods
    assert isinstance(h, Handover) and h.instance_id == inst.id and not h.held
    assert [k.sport for k in h.keys] == [1, 2] and inst.flows == 2 and not chain.held
    # a packet-in read meanwhile (its flow has no rule yet) queues behind the others
    assert lab.send(tcp(sport=1, payload=b"a3")) == "controller"
    assert lab.table.packet_outs == [] and len(h.packets) == 4

    msgs = lab.core.handover_held(h)  # the agent holds them, marked
    wire = [m for _dpid, buf in msgs[:-1] for m in parse_wire(bytes(buf))]
    assert [type(m).__name__ for m in wire] == ["PacketOut"] * 4 + ["OFPFlowMod"] * 2
    assert type(msgs[-1][1]).__name__ == "OFPBarrierRequest"
    lab.apply(msgs)
    assert [p for p, _ in lab.table.packet_outs] == [W1_PORT] * 4
    assert payloads(lab.table.packet_outs) == [b"a1", b"a2", b"b1", b"a3"]
    assert all(bytes(d)[12:16] == MARK_TAG for _p, d in lab.table.packet_outs)
    # the rules are in place: later packets go by them, unmarked, to the VF
    ((port, fwd),) = lab.send(tcp(sport=1, payload=b"a4"))
    assert port == W1_PORT and fwd[12:14] == b"\x08\x00"
    # a packet-in after the barrier's reply (a switch's cached flow made before the
    # rule was in place) is older than anything the rule forwards: it queues for the
    # app's thread, which sends it on marked
    lab.now += 0.01
    lab.apply(lab.core.packet_in(1, 1, raw(tcp(sport=2, payload=b"b2")), lab.now))
    assert h.last_in == lab.now and len(lab.table.packet_outs) == 4  # the app waits for quiet
    lab.apply(lab.core.handover_take(h))
    assert payloads(lab.table.packet_outs[-1:]) == [b"b2"]
    assert lab.table.packet_outs[-1][1][12:16] == MARK_TAG
    assert lab.core.handover_take(h) == []
    lab.apply(lab.core.packet_in(1, 1, raw(tcp(sport=2, payload=b"b3")), lab.now))
    flush = lab.core.handover_flush(h)  # the last of them, and a barrier
    assert [type(m).__name__ for _d, m in flush] == ["bytearray", "OFPBarrierRequest"]
    lab.apply(flush)
    assert payloads(lab.table.packet_outs[-1:]) == [b"b3"]
    lab.core.handover_done(h)  # the last marked packet has left: release at the agent
    assert not lab.core.handing
    lab.apply(lab.core.packet_in(1, 1, raw(tcp(sport=2, payload=b"b4")), lab.now))
    assert lab.table.packet_outs[-1][1][12:14] == b"\x08\x00"  # plain again
    m = lab.core.metrics
    assert m.ordered_releases.values == {"started": 1, "held": 1}
    assert m.marked_packet_outs.value == 6 and m.held_released.value == 3


def test_a_refused_hold_sends_the_packets_plainly_in_order():
    lab = Lab(hand_over=False)
    chain = lab.chain()
    _inst, h = held_then_instance(lab, chain, [tcp(sport=1, payload=b"a1"),
                                               tcp(sport=2, payload=b"b1")])  # fmt: skip
    lab.send(tcp(sport=1, payload=b"a2"))
    lab.apply(lab.core.handover_failed(h, "no agent connected"))
    assert payloads(lab.table.packet_outs) == [b"a1", b"b1", b"a2"]
    assert all(d[12:14] == b"\x08\x00" for _p, d in lab.table.packet_outs)
    assert len(lab.send(tcp(sport=1, payload=b"a3"))) == 1  # by the rule
    assert not lab.core.handing
    assert lab.core.metrics.ordered_releases.values == {"started": 1, "refused": 1}


def test_an_instance_gone_before_its_hold_drops_the_queued_packets():
    lab = Lab(hand_over=False)
    chain = lab.chain()
    inst, h = held_then_instance(lab, chain, [tcp(sport=1), tcp(sport=2)])
    lab.apply(lab.core.remove_instance(inst.id, lab.now, tell_agent=False))
    msgs = lab.core.handover_held(h)
    assert [type(m).__name__ for _d, m in msgs] == ["OFPBarrierRequest"]
    lab.core.handover_done(h)
    assert lab.table.packet_outs == [] and not lab.core.handing
    assert lab.core.metrics.held_dropped.values == {"instance_gone": 2}


def test_a_flow_reassigned_meanwhile_is_not_marked_for_its_old_instance():
    lab = Lab(hand_over=False)
    chain = lab.chain()
    inst, h = held_then_instance(lab, chain, [tcp(sport=1)])
    lab.apply(lab.core.remove_instance(inst.id, lab.now, tell_agent=False))
    lab.instance(chain, "w2")  # nothing is held any more: no second handover
    assert lab.handovers == [h]
    lab.apply(lab.core.packet_in(1, 1, raw(tcp(sport=1, payload=b"n1")), lab.now))
    lab.apply(lab.core.packet_in(1, 1, raw(tcp(sport=1, payload=b"n2")), lab.now))
    # both sent at once, plainly: the flow is w2's now, not the handover's
    assert payloads(lab.table.packet_outs) == [b"n1", b"n2"] and len(h.packets) == 1
    assert all(d[12:14] == b"\x08\x00" for _p, d in lab.table.packet_outs)


def test_more_flows_than_a_hold_takes_release_the_rest_plainly():
    lab = Lab(hand_over=False, hold_queue_len=200)
    chain = lab.chain()
    n = HOLD_MAX + 6
    _inst, h = held_then_instance(lab, chain, [tcp(sport=100 + i) for i in range(n)])
    assert len(h.keys) == HOLD_MAX and len(h.packets) == HOLD_MAX
    assert [flowkey.parse(d).sport for _p, d in lab.table.packet_outs] == [
        100 + i for i in range(HOLD_MAX, n)
    ]
    lab.apply(lab.core.handover_held(h))
    assert len(lab.table.packet_outs) == n and len(lab.core.flows) == n


def test_ordered_release_off_sends_at_once():
    lab = Lab(hand_over=False, ordered_release=False)
    chain = lab.chain()
    for sport in (1, 2):
        lab.send(tcp(sport=sport))
    lab.instance(chain, "w1")
    assert lab.handovers == [] and len(lab.table.packet_outs) == 2


def test_the_lab_runs_handovers_in_order_by_default():
    lab = Lab()
    chain = lab.chain()
    lab.send(tcp(sport=1, payload=b"a1"))
    lab.instance(chain, "w1", mac=W1_MACS[0])
    assert payloads(lab.table.packet_outs) == [b"a1"] and not lab.core.handing
