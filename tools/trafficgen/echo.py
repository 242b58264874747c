"""Real TCP and UDP connections through a NAT, both directions (lab tests, the demo).

    python -m tools.trafficgen.echo serve ADDR PORT          # in the sink's namespace
    python -m tools.trafficgen.echo connect ADDR PORT --tcp N --udp N --rounds K

``serve`` answers every TCP connection and UDP datagram with the line it got
plus the peer address it saw (so the client learns its connection's external
address and port as the server sees them).  ``connect`` opens N TCP and N UDP
connections at once from distinct local ports, sends K numbered messages on
each (``--interval`` apart), waiting for each echo before the next, closes the TCP connections with
FIN, and prints one JSON report: per connection the local port, the peers
the server saw, the sequence numbers that came back (in order), when each
came back (``times_ns``, ``time.monotonic_ns``: one clock for every namespace
of the host), what was lost on the way (``retries``: UDP messages sent again
after a timeout; ``late``: UDP echoes of an earlier round, skipped;
``retrans``: the kernel's count of retransmitted TCP segments) and any error.
With ``--announce`` it prints ``connected`` first, once every connection has
its first echo back (or failed).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time


def serve(addr: str, port: int) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((addr, port))
    tcp.listen(256)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, port))

    def tcp_conn(c, peer):
        with c, c.makefile("rb") as f:
            for line in f:
                c.sendall(line.rstrip(b"\n") + b" %s:%d\n" % (peer[0].encode(), peer[1]))

    def tcp_loop():
        while True:
            c, peer = tcp.accept()
            threading.Thread(target=tcp_conn, args=(c, peer), daemon=True).start()

    threading.Thread(target=tcp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(data.rstrip(b"\n") + b" %s:%d\n" % (peer[0].encode(), peer[1]), peer)


TCP_INFO_RETRANS = 100  # struct tcp_info: offset of tcpi_total_retrans (__u32)


def _tcp_retrans(s: socket.socket) -> int | None:
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    return struct.unpack_from("I", info, TCP_INFO_RETRANS)[0] if len(info) >= 104 else None


def _one(kind: str, addr: str, port: int, rounds: int, timeout: float, interval: float,
         out: dict, tries: int = 3, first=None) -> None:  # fmt: skip
    seen, back, times = set(), [], []
    first = first or (lambda: None)
    retries = late = 0
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout if kind == "udp" else timeout * tries)  # TCP: one wait, as long
    try:
        s.bind(("0.0.0.0", 0))
        out["local_port"] = s.getsockname()[1]
        if kind == "tcp":
            s.connect((addr, port))
            f = s.makefile("rb")
        for k in range(rounds):
            if k and interval:
                time.sleep(interval)
            msg = b"%s-%d-%d\n" % (kind.encode(), out["local_port"], k)
            if kind == "tcp":
                s.sendall(msg)
                text, peer = f.readline().decode().rsplit(" ", 1)
            else:
                text, peer, skipped, again = _udp_round(s, msg, addr, port, k, tries)
                late += skipped
                retries += again
            times.append(time.monotonic_ns())
            back.append(int(text.split("-")[2]))
            seen.add(peer.strip())
            if k == 0:
                first()
        if kind == "tcp":
            out["retrans"] = _tcp_retrans(s)
            f.close()
            s.shutdown(socket.SHUT_WR)  # FIN: the NAT ends the mapping after closing_s
    except (OSError, ValueError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        if not back:
            first()
    finally:
        s.close()
        out.update(kind=kind, peers=sorted(seen), seqs=back, times_ns=times)
        if kind == "udp":
            out.update(retries=retries, late=late)


def _udp_round(s, msg: bytes, addr: str, port: int, k: int, tries: int = 3):
    """Send round ``k`` (again after each timeout, ``tries`` times in all) until its echo
    comes back; echoes of earlier rounds (a retry's first answer arriving late) are
    skipped.  Returns ``(text, peer, late echoes skipped, retries)``."""
    skipped = 0
    for attempt in range(tries):
        s.sendto(msg, (addr, port))
        try:
            while True:
                text, peer = s.recv(2048).decode().rsplit(" ", 1)
                if int(text.split("-")[2]) == k:
                    return text, peer, skipped, attempt
                skipped += 1
        except TimeoutError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def connect(addr: str, port: int, n_tcp: int, n_udp: int, rounds: int, timeout: float,
            interval: float = 0.0, tries: int = 3, on_first=None) -> list:  # fmt: skip
    """``on_first``: called once, when every connection has its first echo (or failed)."""
    reports = [{} for _ in range(n_tcp + n_udp)]
    kinds = ["tcp"] * n_tcp + ["udp"] * n_udp
    left = [len(reports)]
    lock = threading.Lock()

    def first():
        with lock:
            left[0] -= 1
            if left[0] == 0 and on_first is not None:
                on_first()

    threads = [threading.Thread(target=_one,
                                args=(k, addr, port, rounds, timeout, interval, r, tries, first))
               for k, r in zip(kinds, reports, strict=True)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nat_echo")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    c = sub.add_parser("connect")
    c.add_argument("addr")
    c.add_argument("port", type=int)
    c.add_argument("--tcp", type=int, default=10)
    c.add_argument("--udp", type=int, default=10)
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for an echo (UDP: per try; TCP: times --tries)",
    )
    c.add_argument("--tries", type=int, default=3, help="UDP: sends of a round before giving up")
    c.add_argument("--announce", action="store_true",
                   help="print 'connected' once every connection has its first echo")  # fmt: skip
    c.add_argument("--interval", type=float, default=0.0, help="seconds between rounds")
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        serve(a.addr, a.port)
        return 0

    def announce():
        print("connected", flush=True)

    reports = connect(a.addr, a.port, a.tcp, a.udp, a.rounds, a.timeout, a.interval, a.tries,
                      announce if a.announce else None)  # fmt: skip
    print(json.dumps(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
