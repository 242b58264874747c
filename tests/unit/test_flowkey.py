"""The fast 5-tuple parser agrees with the os_ken.lib.packet reference on every shape."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.all import ARP, ICMP, IP, SCTP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrFragment, raw
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting

from quadrant_app import flowkey
from quadrant_app.flowkey import ETH_IPV4, ETH_IPV6, FlowKey

E = Ether(src="02:00:00:00:0a:01", dst="02:00:00:00:0b:01")
V4 = IP(src="10.1.2.3", dst="10.2.0.9")
V6 = IPv6(src="2001:db8:1::5", dst="2001:db8:2::7")


def v4(a):
    return int(ipaddress.IPv4Address(a))


def v6(a):
    return int(ipaddress.IPv6Address(a))


A4, B4 = v4("10.1.2.3"), v4("10.2.0.9")
A6, B6 = v6("2001:db8:1::5"), v6("2001:db8:2::7")

SHAPES = {
    "v4-tcp": (E / V4 / TCP(sport=1234, dport=80), FlowKey(ETH_IPV4, 6, A4, B4, 1234, 80)),
    "v4-udp": (E / V4 / UDP(sport=53, dport=5353), FlowKey(ETH_IPV4, 17, A4, B4, 53, 5353)),
    "v4-sctp": (E / V4 / SCTP(sport=9, dport=10), FlowKey(ETH_IPV4, 132, A4, B4, 9, 10)),
    "v4-icmp": (E / V4 / ICMP(), FlowKey(ETH_IPV4, 1, A4, B4, 0, 0)),
    "v4-options": (
        E / IP(src="10.1.2.3", dst="10.2.0.9", options=b"\x01\x01\x01\x00") / TCP(sport=7, dport=8),
        FlowKey(ETH_IPV4, 6, v4("10.1.2.3"), v4("10.2.0.9"), 7, 8),
    ),
    "vlan-v4-udp": (
        E / Dot1Q(vlan=100) / V4 / UDP(sport=1, dport=2),
        FlowKey(ETH_IPV4, 17, v4("10.1.2.3"), v4("10.2.0.9"), 1, 2),
    ),
    "v6-tcp": (E / V6 / TCP(sport=4321, dport=443), FlowKey(ETH_IPV6, 6, A6, B6, 4321, 443)),
    "v6-udp": (E / V6 / UDP(sport=5, dport=6), FlowKey(ETH_IPV6, 17, A6, B6, 5, 6)),
    "v6-icmp": (E / V6 / ICMPv6EchoRequest(), FlowKey(ETH_IPV6, 58, A6, B6, 0, 0)),
}

ODD_SHAPES = {
    "v6-hop-by-hop": (
        E / V6 / IPv6ExtHdrHopByHop() / TCP(sport=11, dport=12),
        FlowKey(ETH_IPV6, 6, v6("2001:db8:1::5"), v6("2001:db8:2::7"), 11, 12),
    ),
    "v6-routing": (
        E / V6 / IPv6ExtHdrRouting() / UDP(sport=13, dport=14),
        FlowKey(ETH_IPV6, 17, v6("2001:db8:1::5"), v6("2001:db8:2::7"), 13, 14),
    ),
    "v6-later-fragment": (
        E / V6 / IPv6ExtHdrFragment(offset=10, nh=6) / raw(b"x" * 16),
        FlowKey(ETH_IPV6, 6, v6("2001:db8:1::5"), v6("2001:db8:2::7"), 0, 0),
    ),
    "v4-later-fragment": (
        E / IP(src="10.1.2.3", dst="10.2.0.9", frag=20, proto=6) / raw(b"y" * 16),
        FlowKey(ETH_IPV4, 6, v4("10.1.2.3"), v4("10.2.0.9"), 0, 0),
    ),
    "v4-first-fragment": (
        E / IP(src="10.1.2.3", dst="10.2.0.9", flags="MF") / TCP(sport=21, dport=22),
        FlowKey(ETH_IPV4, 6, v4("10.1.2.3"), v4("10.2.0.9"), 21, 22),
    ),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_fast_shapes_match_reference(name):
    pkt, want = SHAPES[name]
    data = raw(pkt)
    assert flowkey.parse(data) == want
    assert flowkey.parse_with_osken(data) == want
    assert flowkey.parse(bytearray(data)) == want  # os-ken hands over bytearrays


@pytest.mark.parametrize("name", sorted(ODD_SHAPES))
def test_extension_headers_and_fragments(name):
    pkt, want = ODD_SHAPES[name]
    assert flowkey.parse(raw(pkt)) == want
    ref = flowkey.parse_with_osken(raw(pkt))
    if name != "v6-routing":  # os-ken's parser gives up on a type-0 routing header
        assert ref == want


def test_non_ip_is_not_keyed():
    assert flowkey.parse(raw(E / ARP())) is None
    assert flowkey.parse(b"") is None
    assert flowkey.parse(b"\x00" * 13) is None


@pytest.mark.parametrize("cut", [20, 30, 36, 40])
def test_truncated_packets_do_not_crash(cut):
    data = raw(E / V4 / TCP(sport=1, dport=2))[:cut]
    key = flowkey.parse(data)
    assert key is None or key.proto == 6  # never garbage ports from beyond the end
    if key is not None:
        assert (key.sport, key.dport) == (1, 2)


def test_bad_ihl_is_not_taken_at_face_value():
    data = bytearray(raw(E / V4 / TCP(sport=1, dport=2)))
    data[14] = 0x42  # IHL 2 (8 bytes): invalid
    assert flowkey.parse(bytes(data)) is None


def test_to_json_names_addresses_and_ports():
    assert SHAPES["v6-tcp"][1].to_json() == {
        "src": "2001:db8:1::5",
        "dst": "2001:db8:2::7",
        "proto": "tcp",
        "sport": 4321,
        "dport": 443,
    }
    assert SHAPES["v4-icmp"][1].to_json() == {"src": "10.1.2.3", "dst": "10.2.0.9", "proto": "icmp"}
