"""The sockets: send paced stamped flows, receive and count them (AF_PACKET)."""

from __future__ import annotations

import heapq
import socket
import struct
import time

from tools.trafficgen.counting import Sink
from tools.trafficgen.frames import FlowSpec, Template, parse

SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6  # struct tpacket_stats: packets, drops (since the last read)
TP_STATUS_VLAN_VALID = 0x10
ETH_P_ALL = 0x0003
AUXDATA = struct.Struct("IIIHHHH")


def send(
    iface: str,
    flows: list[FlowSpec],
    src_mac: str,
    dst_mac: str,
    duration: float,
    ramp: float = 0.0,
    progress=None,
) -> dict[int, int]:
    """Send every flow at its rate for ``duration`` seconds; return packets sent per flow.

    With ``ramp`` > 0 every rate rises linearly from 10% to 100% over the first
    ``ramp`` seconds.  Pacing is per flow (a heap of due times), so flows stay
    apart in time rather than bursting one after another.  A flow sends from its
    ``start`` to its ``stop`` (seconds after the sender starts; no ``stop``: to the end).
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    templates = {f.flow_id: Template(f, src_mac, dst_mac) for f in flows}
    sent = dict.fromkeys(templates, 0)
    start = time.monotonic()
    due = [(start + f.start + i * 1e-5, f.flow_id) for i, f in enumerate(flows)]
    heapq.heapify(due)
    rates = {f.flow_id: f.pps for f in flows}
    end = start + duration
    stops = {f.flow_id: start + f.stop for f in flows if f.stop is not None}
    next_progress = start + 1.0
    try:
        while due:
            t, fid = due[0]
            now = time.monotonic()
            if t >= end:
                break
            if t > now:
                time.sleep(min(t - now, 0.001))
                continue
            if t >= stops.get(fid, end):
                heapq.heappop(due)  # this flow has ended
                continue
            tpl = templates[fid]
            seq = sent[fid]
            try:
                sock.send(tpl.stamp(seq, time.monotonic_ns()))
            except BlockingIOError:
                continue  # the socket buffer is full: try the same packet again
            sent[fid] = seq + 1
            factor = 1.0 if ramp <= 0 else min(1.0, 0.1 + 0.9 * (now - start) / ramp)
            heapq.heapreplace(due, (max(t, now - 0.01) + 1.0 / (rates[fid] * factor), fid))
            if progress and now >= next_progress:
                progress(now - start, sum(sent.values()))
                next_progress += 1.0
    finally:
        sock.close()
    return sent


def receive(iface: str, duration: float, idle: float = 1.0, ready=None) -> Sink:
    """Count stamped frames on ``iface`` for up to ``duration`` seconds.

    Stops early once ``idle`` seconds pass without a stamped frame after the
    first one.  VLAN tags the kernel stripped into metadata are read from
    AF_PACKET's auxdata, so tagged traffic is seen as tagged.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.settimeout(0.1)
    sink = Sink()
    if ready:
        ready()
    end = time.monotonic() + duration
    last = None
    try:
        while True:
            now = time.monotonic()
            if now >= end or (last is not None and now - last > idle):
                break
            try:
                data, anc, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(AUXDATA.size))
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            vlan = None
            for level, kind, cdata in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _, _, _, _, tci, _tpid = AUXDATA.unpack_from(cdata)
                    if status & TP_STATUS_VLAN_VALID:
                        vlan = tci
            parsed = parse(data, vlan)
            sink.add(parsed, time.monotonic_ns())
            if parsed is not None:
                last = time.monotonic()
        # frames the kernel dropped for want of room in this socket's buffer: a loss at
        # the sink (the receiver starved), not on the way
        _packets, sink.socket_drops = struct.unpack(
            "II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        )
    finally:
        sock.close()
    return sink
