"""Real TCP and UDP connections through a NAT, both directions (lab tests, the demo).

    python -m tools.trafficgen.echo serve ADDR PORT          # in the sink's namespace
    python -m tools.trafficgen.echo connect ADDR PORT --tcp N --udp N --rounds K

``serve`` answers every TCP connection and UDP datagram with the line it got
plus the peer address it saw (so the client learns its connection's external
address and port as the server sees them).  ``connect`` opens N TCP and N UDP
connections at once from distinct local ports, sends K numbered messages on
each (``--interval`` apart), waiting for each echo before the next, closes the TCP connections with
FIN, and prints one JSON report: per connection the local port, the peers
the server saw, the sequence numbers that came back (in order) and any error.
"""

from __future__ import annotations

import argparse
import json
import socket
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


def _one(kind: str, addr: str, port: int, rounds: int, timeout: float, interval: float,
         out: dict) -> None:  # fmt: skip
    seen, back = set(), []
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
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
            for attempt in range(3 if kind == "udp" else 1):  # UDP: a datagram may be lost
                try:
                    if kind == "tcp":
                        s.sendall(msg)
                        line = f.readline()
                    else:
                        s.sendto(msg, (addr, port))
                        line = s.recv(2048)
                    break
                except TimeoutError:
                    if attempt == 2 or kind == "tcp":
                        raise
                    out["retries"] = out.get("retries", 0) + 1
            text, peer = line.decode().rsplit(" ", 1)
            back.append(int(text.split("-")[2]))
            seen.add(peer.strip())
        if kind == "tcp":
            f.close()
            s.shutdown(socket.SHUT_WR)  # FIN: the NAT ends the mapping after closing_s
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        s.close()
        out.update(kind=kind, peers=sorted(seen), seqs=back)


def connect(addr: str, port: int, n_tcp: int, n_udp: int, rounds: int, timeout: float,
            interval: float = 0.0) -> list:  # fmt: skip
    reports = [{} for _ in range(n_tcp + n_udp)]
    kinds = ["tcp"] * n_tcp + ["udp"] * n_udp
    threads = [threading.Thread(target=_one, args=(k, addr, port, rounds, timeout, interval, r))
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
        help="seconds to wait for an echo (UDP: per try, 3 tries)",
    )
    c.add_argument("--interval", type=float, default=0.0, help="seconds between rounds")
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        serve(a.addr, a.port)
        return 0
    print(json.dumps(connect(a.addr, a.port, a.tcp, a.udp, a.rounds, a.timeout, a.interval)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
