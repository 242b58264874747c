"""Crafted test frames: well-formed ones per protocol and a set of malformed ones."""

from __future__ import annotations

from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, Raw, raw

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def eth():
    return Ether(src=SRC_MAC, dst=DST_MAC)


def udp(src="10.1.0.1", dst="10.2.0.1", sport=1234, dport=80, payload=b"q" * 18, ttl=64):
    return eth() / IP(src=src, dst=dst, ttl=ttl) / UDP(sport=sport, dport=dport) / Raw(payload)


def tcp(src="10.1.0.1", dst="10.2.0.1", sport=1234, dport=80, ttl=64):
    return eth() / IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport) / Raw(b"t" * 10)


def malformed() -> dict[str, bytes]:
    """Frames a parser must reject (or, for non-IP, recognise) without reading past them."""
    good = raw(udp())
    ip_hdr = 14
    bad_ihl = bytearray(good)
    bad_ihl[ip_hdr] = 0x43  # IHL 3 (< 5)
    long_ihl = bytearray(good)
    long_ihl[ip_hdr] = 0x4F  # IHL 15 = 60 bytes: options run past the IP total length
    bad_version = bytearray(good)
    bad_version[ip_hdr] = 0x65
    long_total = bytearray(good)
    long_total[ip_hdr + 2 : ip_hdr + 4] = (1400).to_bytes(2, "big")
    short_total = bytearray(good)
    short_total[ip_hdr + 2 : ip_hdr + 4] = (12).to_bytes(2, "big")
    return {
        "runt": good[:10],
        "eth_only": good[:14],
        "truncated_ip": good[: 14 + 12],
        "bad_ihl": bytes(bad_ihl),
        "ihl_past_end": bytes(long_ihl)[: 14 + 40],
        "bad_version": bytes(bad_version),
        "total_len_past_end": bytes(long_total),
        "total_len_below_ihl": bytes(short_total),
        "truncated_udp": raw(eth() / IP(src="10.1.0.1", dst="10.2.0.1", proto=17) / b"\x00\x50"),
        "vlan_truncated": raw(eth() / Dot1Q(vlan=5))[:16],
    }


def non_ip() -> dict[str, bytes]:
    return {
        "arp": raw(eth() / ARP(pdst="10.2.0.1")),
        "ipv6": raw(eth() / IPv6(dst="fd00::1") / UDP(dport=80)),
    }


def icmp(dst="10.2.0.1"):
    return eth() / IP(src="10.1.0.1", dst=dst) / ICMP()
