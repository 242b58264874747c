"""An emulated OpenFlow 1.3 switch for benchmarks (cbench-style), on plain sockets.

It does the handshake a controller expects (hello, features, port
description, barrier, echo, empty flow stats), then sends packet-ins of new
flows as fast as it is told and reads the controller's answers.  Messages are
built with :mod:`struct` from templates patched per flow, so the switch side
costs about a microsecond per packet-in and the controller is what is measured.

Flow ``i`` is TCP ``10.1.(i >> 8 & 255).(i & 255):(1024 + i >> 16) -> 10.2.0.1:80``;
its source address and port (:meth:`EmulatedSwitch.tag`) must appear in the
flow-mod the controller sends for it, which the benchmark checks.
"""

from __future__ import annotations

import select
import socket
import struct
import time

OFP_VERSION = 4
T_HELLO, T_ERROR, T_ECHO_REQUEST, T_ECHO_REPLY = 0, 1, 2, 3
T_FEATURES_REQUEST, T_FEATURES_REPLY = 5, 6
T_PACKET_IN, T_FLOW_REMOVED, T_PACKET_OUT, T_FLOW_MOD = 10, 11, 13, 14
T_MULTIPART_REQUEST, T_MULTIPART_REPLY = 18, 19
T_BARRIER_REQUEST, T_BARRIER_REPLY = 20, 21
MP_FLOW, MP_PORT_DESC = 1, 13

_hdr = struct.Struct("!BBHI")


def _msg(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    return _hdr.pack(OFP_VERSION, msg_type, 8 + len(body), xid) + body


def frame(src_ip: bytes, sport: int, size: int = 64) -> bytes:
    """An Ethernet/IPv4/TCP SYN of ``size`` bytes from the source host to the sink."""
    eth = bytes.fromhex("020000000b01020000000a010800")
    ip_len = size - 14
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 1, 0, 64, 6, 0, src_ip, bytes([10, 2, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 0, 0, 5 << 4, 0x02, 8192, 0, 0)
    return eth + ip + tcp + bytes(ip_len - 40)


class EmulatedSwitch:
    def __init__(self, dpid: int, ports=(1, 2, 11, 12), in_port: int = 1, frame_size: int = 64):
        self.dpid = dpid
        self.ports = ports
        self.in_port = in_port
        self.sock: socket.socket | None = None
        self.rx = bytearray()
        self.counts = {T_FLOW_MOD: 0, T_PACKET_OUT: 0, T_ERROR: 0}
        # Packet-in template: header, buffer_id, total_len, reason, table, cookie,
        # match (OXM in_port, padded to 16), 2 pad bytes, frame.
        data = frame(b"\0\0\0\0", 0, frame_size)
        match = struct.pack("!HHIII", 1, 12, 0x80000004, in_port, 0)  # type OXM, len 12, in_port
        body = struct.pack("!IHBBQ", 0xFFFFFFFF, len(data), 0, 1, 0) + match + b"\0\0" + data
        self._pin = bytearray(_msg(T_PACKET_IN, 0, body))
        self._data_off = len(self._pin) - len(data)

    # ------------------------------------------------------------------

    def connect(self, host: str, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.sock.sendall(_msg(T_HELLO, 1))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def settle(self, quiet: float = 0.3, timeout: float = 15.0) -> None:
        """Answer the handshake and whatever else until the controller is quiet."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        seen_features = False
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.05)
            if r:
                types = self.poll(time.perf_counter())
                if types:
                    last = time.monotonic()
                    seen_features |= T_FEATURES_REQUEST in types
            elif seen_features and time.monotonic() - last > quiet:
                return
        raise TimeoutError("the controller did not finish the handshake")

    # ------------------------------------------------------------------

    @staticmethod
    def tag(i: int) -> tuple[bytes, bytes]:
        """What names flow ``i`` in a flow-mod: its source address, and its OXM tcp_src TLV."""
        return bytes([10, 1, (i >> 8) & 255, i & 255]), struct.pack(
            "!IH", 0x80001A02, 1024 + (i >> 16)
        )

    def packet_in(self, i: int) -> bytes:
        """The packet-in of the first packet of flow ``i``."""
        buf = self._pin
        off = self._data_off
        struct.pack_into("!I", buf, 4, i & 0xFFFFFFFF)
        buf[off + 26 : off + 30] = bytes([10, 1, (i >> 8) & 255, i & 255])
        struct.pack_into("!H", buf, off + 34, 1024 + (i >> 16))
        return bytes(buf)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                select.select([], [self.sock], [], 0.01)
                self.poll(time.perf_counter())  # keep reading so neither side blocks
                continue
            view = view[n:]

    def poll(self, now: float, on_response=None) -> list[int]:
        """Read what is there; answer requests; call ``on_response(type, msg, now)``."""
        try:
            chunk = self.sock.recv(1 << 18)
        except BlockingIOError:
            return []
        if not chunk:
            raise ConnectionError("the controller closed the connection")
        rx = self.rx
        rx += chunk
        types = []
        off, n = 0, len(rx)
        replies = []
        while n - off >= 8:
            _v, t, length, xid = _hdr.unpack_from(rx, off)
            if n - off < length:
                break
            types.append(t)
            if t in self.counts:
                self.counts[t] += 1
                if on_response is not None and t != T_ERROR:
                    on_response(t, rx[off : off + length], now)
            elif t == T_ECHO_REQUEST:
                replies.append(_msg(T_ECHO_REPLY, xid, bytes(rx[off + 8 : off + length])))
            elif t == T_FEATURES_REQUEST:
                body = struct.pack("!QIBB2xII", self.dpid, 0, 254, 0, 0x4F, 0)
                replies.append(_msg(T_FEATURES_REPLY, xid, body))
            elif t == T_MULTIPART_REQUEST:
                (mp,) = struct.unpack_from("!H", rx, off + 8)
                body = struct.pack("!HH4x", mp, 0)
                if mp == MP_PORT_DESC:
                    for p in self.ports:
                        mac = bytes([2, 0, 0, 0, 0xEE, p & 255])
                        name = f"p{p}".encode().ljust(16, b"\0")
                        body += struct.pack("!I4x6s2x16sIIIIIIII", p, mac, name, 0, 0, 0, 0, 0, 0,
                                            0, 0)  # fmt: skip
                replies.append(_msg(T_MULTIPART_REPLY, xid, body))
            elif t == T_BARRIER_REQUEST:
                replies.append(_msg(T_BARRIER_REPLY, xid))
            off += length
        del rx[:off]
        if replies:
            self.sock.sendall(b"".join(replies))
        return types
