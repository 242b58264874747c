"""Building and reading stamped frames: pure byte work, no sockets.

A frame is Ethernet / IPv4 / UDP or TCP / payload, where the payload starts
with a 24-byte stamp ``!4sIQQ``: magic ``QTG1``, flow id, sequence number,
send time (CLOCK_MONOTONIC ns; namespaces share the clock).  A frame is
built once per flow as a template; per packet only the stamp is written and
the L4 checksum patched incrementally (RFC 1624), so sending costs a few
microseconds of Python, not a full checksum over the payload.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

MAGIC = b"QTG1"
STAMP = struct.Struct("!4sIQQ")
STAMP_LEN = STAMP.size  # 24
ETH_HLEN = 14
IP_HLEN = 20
UDP_HLEN = 8
TCP_HLEN = 20
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
PROTO = {"udp": 17, "tcp": 6}
MIN_FRAME = ETH_HLEN + IP_HLEN + TCP_HLEN + STAMP_LEN  # 78: the smallest stamped frame


class FrameError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """One flow: its 5-tuple, frame size (bytes, Ethernet header to payload end), rate."""

    flow_id: int
    src_ip: str
    dst_ip: str
    proto: str
    sport: int
    dport: int
    size: int
    pps: float
    # seconds after the sender starts: the flow's first packet, and when it stops
    # (None: at the end of the run); a ramp of new flows, and flows that end
    start: float = 0.0
    stop: float | None = None

    def __post_init__(self):
        if self.proto not in PROTO:
            raise FrameError(f"flow {self.flow_id}: proto must be udp or tcp, not {self.proto!r}")
        if not MIN_FRAME <= self.size <= 1514:
            raise FrameError(f"flow {self.flow_id}: size {self.size} not in {MIN_FRAME}..1514")
        for name in ("sport", "dport"):
            if not 1 <= getattr(self, name) <= 65535:
                raise FrameError(f"flow {self.flow_id}: {name} {getattr(self, name)} out of range")
        if self.pps <= 0:
            raise FrameError(f"flow {self.flow_id}: pps must be positive")
        if not 0 <= self.start < float("inf"):
            raise FrameError(f"flow {self.flow_id}: start must be >= 0 seconds")
        if self.stop is not None and not self.stop > self.start:
            raise FrameError(f"flow {self.flow_id}: stop must be after start ({self.start})")
        for name in ("src_ip", "dst_ip"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError:
                raise FrameError(f"flow {self.flow_id}: {name} is not an IPv4 address") from None


def _csum_add(total: int, data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total += sum(struct.unpack(f"!{len(data) // 2}H", data))
    return total


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


class Template:
    """A flow's frame with the stamp left zero, and what is needed to stamp it fast."""

    def __init__(self, flow: FlowSpec, src_mac: str, dst_mac: str, ttl: int = 64):
        self.flow = flow
        l4_len = flow.size - ETH_HLEN - IP_HLEN
        l4_hlen = UDP_HLEN if flow.proto == "udp" else TCP_HLEN
        payload = bytearray(l4_len - l4_hlen)
        # Fill after the stamp with a pattern the sink can check for corruption.
        for i in range(STAMP_LEN, len(payload)):
            payload[i] = (flow.flow_id + i) & 0xFF
        src = ipaddress.IPv4Address(flow.src_ip).packed
        dst = ipaddress.IPv4Address(flow.dst_ip).packed
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, IP_HLEN + l4_len, flow.flow_id & 0xFFFF, 0x4000, ttl,
                PROTO[flow.proto], 0, src, dst,
            )
        )  # fmt: skip
        struct.pack_into("!H", ip, 10, _fold(_csum_add(0, bytes(ip))) ^ 0xFFFF)
        if flow.proto == "udp":
            l4 = bytearray(struct.pack("!HHHH", flow.sport, flow.dport, l4_len, 0))
            self.csum_offset = ETH_HLEN + IP_HLEN + 6
        else:
            # An established-looking segment: ACK|PSH, fixed sequence numbers.
            l4 = bytearray(
                struct.pack("!HHIIBBHHH", flow.sport, flow.dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0)
            )
            self.csum_offset = ETH_HLEN + IP_HLEN + 16
        pseudo = src + dst + struct.pack("!BBH", 0, PROTO[flow.proto], l4_len)
        self.base_sum = _csum_add(_csum_add(_csum_add(0, pseudo), bytes(l4)), bytes(payload))
        eth = mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP)
        self.frame = bytearray(eth + bytes(ip) + bytes(l4) + bytes(payload))
        self.stamp_offset = ETH_HLEN + IP_HLEN + l4_hlen
        self.udp = flow.proto == "udp"

    def stamp(self, seq: int, now_ns: int) -> bytearray:
        """The frame for packet ``seq`` sent at ``now_ns`` (modified in place and returned)."""
        frame = self.frame
        STAMP.pack_into(frame, self.stamp_offset, MAGIC, self.flow.flow_id, seq, now_ns)
        words = struct.unpack_from("!12H", frame, self.stamp_offset)
        csum = _fold(self.base_sum + sum(words)) ^ 0xFFFF
        if self.udp and csum == 0:
            csum = 0xFFFF  # 0 means "no checksum" in UDP
        struct.pack_into("!H", frame, self.csum_offset, csum)
        return frame


@dataclasses.dataclass
class Parsed:
    flow_id: int
    seq: int
    tx_ns: int
    vlan: int | None  # VLAN TCI if the frame was tagged
    ttl: int
    src_ip: str
    dst_ip: str
    proto: int
    dst_mac: str
    length: int
    payload_ok: bool


def parse(frame: bytes, vlan_tci: int | None = None) -> Parsed | None:
    """Read a stamped frame; None for anything that is not one of ours.

    ``vlan_tci`` is the tag the kernel stripped into packet metadata, if any
    (AF_PACKET's auxdata); a tag still in the frame is read from it.
    """
    off = ETH_HLEN
    if len(frame) < off + IP_HLEN:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_8021Q:
        (vlan_tci, ethertype) = struct.unpack_from("!HH", frame, 14)
        off += 4
    if ethertype != ETH_P_IP or len(frame) < off + IP_HLEN:
        return None
    vihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack_from("!BBHHHBBH4s4s", frame, off)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < IP_HLEN:
        return None
    l4 = off + ihl
    if proto == 17:
        start = l4 + UDP_HLEN
    elif proto == 6:
        if len(frame) < l4 + 13:
            return None
        start = l4 + ((frame[l4 + 12] >> 4) * 4)
    else:
        return None
    if len(frame) < start + STAMP_LEN:
        return None
    magic, flow_id, seq, tx_ns = STAMP.unpack_from(frame, start)
    if magic != MAGIC:
        return None
    end = min(len(frame), off + total)
    payload_ok = all(
        frame[start + i] == (flow_id + i) & 0xFF for i in range(STAMP_LEN, end - start, 97)
    )
    return Parsed(
        flow_id, seq, tx_ns, vlan_tci, ttl, str(ipaddress.IPv4Address(src)),
        str(ipaddress.IPv4Address(dst)), proto, ":".join(f"{b:02x}" for b in frame[:6]),
        len(frame), payload_ok,
    )  # fmt: skip
