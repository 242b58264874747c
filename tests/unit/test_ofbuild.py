"""OpenFlow builders: templates equal os-ken's own serialization; the base pipeline routes."""

from __future__ import annotations

import random

import pytest
from os_ken.ofproto import ofproto_v1_3_parser as parser
from scapy.all import ARP, IP, TCP, Ether, IPv6, raw

from quadrant_app import ofbuild, topology
from quadrant_app.flowkey import ETH_IPV4, ETH_IPV6, FlowKey
from tests.unit.fakeoftable import FakeOFTable, parse_wire

from .test_topology import LAB

SHAPES = [(ETH_IPV4, p) for p in (6, 17, 132, 1, 47)] + [(ETH_IPV6, p) for p in (6, 17, 132, 58)]


def random_key(rng, eth_type, proto):
    bits = 32 if eth_type == ETH_IPV4 else 128
    ports = proto in (6, 17, 132)
    return FlowKey(
        eth_type,
        proto,
        rng.getrandbits(bits),
        rng.getrandbits(bits),
        rng.randrange(65536) if ports else 0,
        rng.randrange(65536) if ports else 0,
    )


@pytest.mark.parametrize("eth_type,proto", SHAPES)
def test_flow_rule_template_equals_osken_serialization(eth_type, proto):
    rng = random.Random(proto * 7 + eth_type)
    actions = ofbuild.instance_actions("02:00:00:00:01:03", 11)
    cookie = ofbuild.flow_cookie(42)
    tpl = ofbuild.FlowRuleTemplate(eth_type, proto, actions, cookie, 17)
    # edge values too: all-zero and all-one addresses and ports
    keys = [random_key(rng, eth_type, proto) for _ in range(200)]
    bits = 32 if eth_type == ETH_IPV4 else 128
    ports = proto in (6, 17, 132)
    keys += [
        FlowKey(eth_type, proto, 0, 0, 0, 0),
        FlowKey(eth_type, proto, 2**bits - 1, 2**bits - 1, 65535 * ports, 65535 * ports),
    ]
    for i, key in enumerate(keys):
        want = ofbuild.serialize(ofbuild.flow_rule(key, actions, cookie, 17, xid=i + 1))
        assert bytes(tpl.render(key, i + 1)) == want


def test_packet_out_template_equals_osken_serialization():
    actions = ofbuild.instance_actions("02:00:00:00:02:01", 12)
    tpl = ofbuild.PacketOutTemplate(actions)
    for size in (0, 60, 1514):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        want = ofbuild.serialize(ofbuild.packet_out_msg(3, actions, data, xid=99))
        assert bytes(tpl.render(3, data, 99)) == want


def test_flow_rule_fields():
    key = FlowKey(ETH_IPV6, 17, 1, 2, 53, 5353)
    actions = ofbuild.instance_actions("02:00:00:00:01:01", 11)
    (m,) = parse_wire(ofbuild.serialize(ofbuild.flow_rule(key, actions, ofbuild.flow_cookie(7), 9)))
    assert isinstance(m, parser.OFPFlowMod)
    assert m.table_id == ofbuild.TABLE_FLOWS and m.priority == ofbuild.PRIO_FLOW
    assert m.idle_timeout == 9 and m.hard_timeout == 0
    assert m.flags & 1  # OFPFF_SEND_FLOW_REM
    assert m.cookie == ofbuild.COOKIE_FLOW | 7
    assert dict(m.match.items()) == {
        "eth_type": ETH_IPV6,
        "ip_proto": 17,
        "ipv6_src": "::1",
        "ipv6_dst": "::2",
        "udp_src": 53,
        "udp_dst": 5353,
    }
    assert ofbuild.key_of_match(m.match) == key


@pytest.mark.parametrize("eth_type,proto", SHAPES)
def test_key_of_match_round_trips(eth_type, proto):
    key = random_key(random.Random(proto), eth_type, proto)
    assert ofbuild.key_of_match(ofbuild.flow_match(key)) == key


def test_key_of_match_refuses_non_flow_matches():
    assert ofbuild.key_of_match(parser.OFPMatch(in_port=1)) is None
    assert ofbuild.key_of_match(parser.OFPMatch(eth_type=ETH_IPV4)) is None


def _pipeline(default="drop"):
    topo = topology.load(LAB)
    sw = topo.switches[0]
    if default != sw.default_action:
        import dataclasses

        sw = dataclasses.replace(sw, default_action=default)
    table = FakeOFTable()
    table.apply((1, m) for m in ofbuild.base_pipeline(sw, [11, 12], topo.hosts_on(sw.name)))
    return table


V4 = raw(
    Ether(src="02:00:00:00:0a:01", dst="02:00:00:00:0b:01")
    / IP(src="10.1.0.1", dst="10.2.0.1")
    / TCP()
)
V6 = raw(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP())
NON_IP = raw(Ether() / ARP())


def test_base_pipeline_routes_by_port():
    table = _pipeline()
    assert table.lookup(V4, 1) == "controller"  # new flow from the uplink
    assert table.lookup(V6, 1) == "controller"
    assert table.lookup(NON_IP, 1) == []  # non-IP from the uplink: default (drop)
    assert table.lookup(V4, 11) == [(2, V4)]  # back from a worker: to the sink host
    assert table.lookup(V4, 12) == [(2, V4)]
    assert table.lookup(V4, 2) == "controller"  # from the egress side: classified too
    assert table.lookup(NON_IP, 2) == []  # non-IP from there: default (drop)
    assert table.lookup(V4, 7) == []  # anything else: default (drop)
    defaults = [e for t in (0, 1) for e in table.entries(t) if e.cookie == ofbuild.COOKIE_DEFAULT]
    assert sum(e.packets for e in defaults) == 3  # counted


def test_worker_output_is_delivered_to_the_host_of_its_destination():
    table = _pipeline()
    # a chain's output with whatever MAC its NFs left: the host's MAC, the host's port
    to_sink = raw(Ether(dst="02:00:00:00:01:01") / IP(src="10.1.0.9", dst="10.2.3.4") / TCP())
    to_src = raw(Ether(dst="02:00:00:00:01:01") / IP(src="10.2.0.1", dst="10.1.7.7") / TCP())
    elsewhere = raw(Ether(dst="02:00:00:00:01:01") / IP(src="10.2.0.1", dst="192.0.2.1") / TCP())
    assert table.lookup(to_sink, 11) == [(2, bytes.fromhex("020000000b01") + to_sink[6:])]
    assert table.lookup(to_src, 12) == [(1, bytes.fromhex("020000000a01") + to_src[6:])]
    assert table.lookup(elsewhere, 11) == [(2, elsewhere)]  # unknown: egress, untouched
    assert table.lookup(V6, 11) == [(2, V6)]


def test_base_pipeline_forward_default():
    table = _pipeline("forward")
    assert table.lookup(NON_IP, 1) == [(2, NON_IP)]
    assert table.lookup(V4, 7) == [(2, V4)]


def test_base_pipeline_reinstall_keeps_per_flow_rules():
    table = _pipeline()
    key = FlowKey(ETH_IPV4, 6, 0x0A010001, 0x0A020001, 20, 80)
    rule = ofbuild.flow_rule(
        key, ofbuild.instance_actions("02:00:00:00:01:01", 11), ofbuild.flow_cookie(1), 10
    )
    table.apply([(1, rule)])
    before = len(table.entries(1))
    table.apply((1, m) for m in ofbuild.base_pipeline(topology.load(LAB).switches[0], [11, 12]))
    assert len(table.entries(1)) == before
    assert len(table.entries(1, ofbuild.COOKIE_FLOW)) == 1
