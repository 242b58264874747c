"""The 5-tuple of a packet, as plain integers.

:func:`parse` is on the packet-in fast path.  It reads the common shapes
(Ethernet, at most one 802.1Q tag, IPv4 without fragmentation, IPv6 with or
without extension headers) with :mod:`struct` directly, because
``os_ken.lib.packet`` costs tens of microseconds per packet, more than the
whole per-setup budget (see docs/benchmarks.rst).  IPv4 fragments and short
IPv4 packets go to :func:`parse_with_osken`, the reference parser, and the
unit tests check that both agree on every shape os-ken parses.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from os_ken.lib.packet import ethernet, ipv4, ipv6, packet, sctp, tcp, udp, vlan

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8)

TCP, UDP, SCTP = 6, 17, 132
PROTO_NUMBERS = {"tcp": TCP, "udp": UDP, "sctp": SCTP, "icmp": 1, "icmpv6": 58}
PORT_PROTOS = frozenset((TCP, UDP, SCTP))

_u16 = struct.Struct("!H").unpack_from
_ports = struct.Struct("!HH").unpack_from
# version/IHL, flags/fragment offset, protocol, source, destination of an IPv4 header
_ipv4 = struct.Struct("!B5xHxB2xII").unpack_from
_from_bytes = int.from_bytes


class FlowKey(NamedTuple):
    """A flow: ``src``/``dst`` are addresses as ints; ports are 0 for non-port protocols."""

    eth_type: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int

    def reverse(self) -> FlowKey:
        """The key of the other direction of the same conversation (a reply)."""
        return FlowKey(self.eth_type, self.proto, self.dst, self.src, self.dport, self.sport)

    def to_json(self) -> dict:
        make = ipaddress.IPv4Address if self.eth_type == ETH_IPV4 else ipaddress.IPv6Address
        name = next((k for k, v in PROTO_NUMBERS.items() if v == self.proto), self.proto)
        out = {"src": str(make(self.src)), "dst": str(make(self.dst)), "proto": name}
        if self.proto in PORT_PROTOS:
            out["sport"], out["dport"] = self.sport, self.dport
        return out


def parse(data) -> FlowKey | None:
    """The flow key of an Ethernet frame, or ``None`` if it is not IP."""
    n = len(data)
    if n < 34:
        return parse_with_osken(data)
    off = 12
    eth_type = _u16(data, off)[0]
    if eth_type in ETH_VLAN:
        off = 16
        eth_type = _u16(data, off)[0]
    off += 2
    if eth_type == ETH_IPV4:
        if n < off + 20:
            return parse_with_osken(data)
        vihl, frag, proto, src, dst = _ipv4(data, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or n < off + ihl or frag & 0x3FFF:
            return parse_with_osken(data)  # options are fine, fragments are not
        l4 = off + ihl
    elif eth_type == ETH_IPV6:
        if n < off + 40:
            return parse_with_osken(data)
        proto = data[off + 6]
        src = _from_bytes(data[off + 8 : off + 24], "big")
        dst = _from_bytes(data[off + 24 : off + 40], "big")
        l4 = off + 40
        while proto in _V6_EXT_LEN:  # walk extension headers to the transport header
            if n < l4 + 8:
                return None
            if proto == 44 and _u16(data, l4 + 2)[0] & 0xFFF8:  # a later fragment
                return FlowKey(eth_type, data[l4], src, dst, 0, 0)
            proto, l4 = data[l4], l4 + _V6_EXT_LEN[proto](data[l4 + 1])
    else:
        return None
    if proto in PORT_PROTOS:
        if n < l4 + 4:
            return parse_with_osken(data)
        sport, dport = _ports(data, l4)
        return FlowKey(eth_type, proto, src, dst, sport, dport)
    return FlowKey(eth_type, proto, src, dst, 0, 0)


# IPv6 extension headers that may come before the transport header, and their
# length from their second byte: hop-by-hop, routing, fragment, AH, destination
# options (RFC 8200, RFC 4302).  ESP (50) hides what follows: its key has no ports.
_V6_EXT_LEN = {
    0: lambda b: (b + 1) * 8,
    43: lambda b: (b + 1) * 8,
    44: lambda b: 8,
    51: lambda b: (b + 2) * 4,
    60: lambda b: (b + 1) * 8,
}


def parse_with_osken(data) -> FlowKey | None:
    """The reference parser: ``os_ken.lib.packet``.  Slow; used for the odd shapes.

    A fragment other than the first has no transport header: its key has the
    protocol and ports 0 (as OVS sees it).  A packet too short to parse is not IP.
    """
    try:
        pkt = packet.Packet(bytes(data))
    except Exception:  # os-ken raises assorted errors on truncated input
        return None
    eth = pkt.get_protocol(ethernet.ethernet)
    if eth is None:
        return None
    v4 = pkt.get_protocol(ipv4.ipv4)
    v6 = pkt.get_protocol(ipv6.ipv6)
    vl = pkt.get_protocol(vlan.vlan)
    eth_type = vl.ethertype if vl is not None else eth.ethertype
    if v4 is not None and eth_type == ETH_IPV4:
        src, dst = int(ipaddress.IPv4Address(v4.src)), int(ipaddress.IPv4Address(v4.dst))
        proto = v4.proto
        if v4.offset:  # a later fragment: no transport header
            return FlowKey(ETH_IPV4, proto, src, dst, 0, 0)
    elif v6 is not None and eth_type == ETH_IPV6:
        src, dst = int(ipaddress.IPv6Address(v6.src)), int(ipaddress.IPv6Address(v6.dst))
        proto = v6.nxt
        for ext in v6.ext_hdrs or ():
            proto = ext.nxt
            if type(ext).__name__ == "fragment" and ext.offset:
                return FlowKey(ETH_IPV6, proto, src, dst, 0, 0)
    else:
        return None
    l4 = pkt.get_protocol(tcp.tcp) or pkt.get_protocol(udp.udp) or pkt.get_protocol(sctp.sctp)
    if proto in PORT_PROTOS:
        if l4 is None:
            return None  # truncated transport header: cannot key it
        return FlowKey(eth_type, proto, src, dst, l4.src_port, l4.dst_port)
    return FlowKey(eth_type, proto, src, dst, 0, 0)
