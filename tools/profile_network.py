"""Measure the network-latency profile: offered throughput -> p99 one-way latency.

The scaling estimate needs, per kind of worker, the p99 latency the network
path adds at a given throughput (see quadrant_app/latency_profile.py for the
file format).  This tool offers UDP load at a series of rates across a path
and, alongside, sends timestamped probe packets; the receiver takes the
kernel's receive timestamp (SO_TIMESTAMPNS, the same CLOCK_REALTIME as the
sender's stamp, so one host only) and keeps the p99 of receive - send.

Paths:

* ``--path netns`` (root): two network namespaces ``qx-pn-a<pid>`` and
  ``qx-pn-b<pid>`` joined by a veth pair ``qxpa<pid>``/``qxpb<pid>``, made
  here and removed at the end (also on errors);
* ``--path loopback``: 127.0.0.1 in the current namespace (no root).

Each point is measured for ``--seconds``; the throughput recorded is what
the receiver got, not what was asked for.  The sender is Python: it reaches
a few Gbit/s at 1 KB, enough for a lab, not for a 100 Gbit/s NIC, where the
same probe method belongs in the traffic generator.

    python -m tools.profile_network --path netns --gbps 0.1 0.5 1 2 --out profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time

from quadrant_app.latency_profile import FORMAT, parse_profile

PROBE = b"QXPROBE1"
LOAD = b"QXLOAD01"
_ID = os.getpid() % 100000  # concurrent runs must not share names
NS_A, NS_B = f"qx-pn-a{_ID}", f"qx-pn-b{_ID}"
VETH_A, VETH_B = f"qxpa{_ID}", f"qxpb{_ID}"
IP_A, IP_B = "10.213.7.1", "10.213.7.2"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def receive(bind_ip: str, seconds: float) -> dict:
    """Count load bytes and collect probe latencies for ``seconds`` after the first packet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((bind_ip, 0))
    print(sock.getsockname()[1], flush=True)
    sock.settimeout(5.0)
    lat, nbytes, first, last = [], 0, None, None
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(2048, 64)
        except TimeoutError:
            break
        now = time.monotonic()
        if first is None:
            first = now
        elif now - first > seconds + 2.0:
            break
        if data[:8] == PROBE:
            for level, kind, val in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", val[:16])
                    (sent,) = struct.unpack_from("q", data, 8)
                    lat.append((sec * 1_000_000_000 + nsec - sent) / 1000.0)
        elif data[:8] == b"QXDONE01":
            break
        nbytes += len(data)
        last = now
    span = (last - first) if first is not None and last > first else 0.0
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None
    return {"probes": len(lat), "p99_us": p99, "gbps": nbytes * 8 / span / 1e9 if span else 0}


def send(to_ip: str, port: int, gbps: float, size: int, seconds: float, probe_pps: float):
    """Offer ``gbps`` of ``size``-byte datagrams, paced per millisecond, with probes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    dst = (to_ip, port)
    payload = LOAD + bytes(max(0, size - 8 - 28))
    pps = gbps * 1e9 / 8 / size
    start = time.monotonic()
    sent = probes = 0
    while True:
        now = time.monotonic()
        el = now - start
        if el >= seconds:
            break
        while probes < el * probe_pps:
            sock.sendto(PROBE + struct.pack("q", time.time_ns()), dst)
            probes += 1
        while sent < el * pps:
            with contextlib.suppress(BlockingIOError, OSError):
                sock.sendto(payload, dst)
            sent += 1
            if sent % 64 == 0:
                break
        time.sleep(0.0002)
    for _ in range(3):
        sock.sendto(b"QXDONE01", dst)
    return sent


def _ns(ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns] if ns else []


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def namespaces():
    """Two namespaces and a veth between them; removed whatever happens."""
    made = []
    try:
        for ns in (NS_A, NS_B):
            _run(["ip", "netns", "add", ns])
            made.append(ns)
        _run(["ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B,
              "netns", NS_B])  # fmt: skip
        for ns, dev, ip in ((NS_A, VETH_A, IP_A), (NS_B, VETH_B, IP_B)):
            _run(_ns(ns) + ["ip", "addr", "add", f"{ip}/30", "dev", dev])
            _run(_ns(ns) + ["ip", "link", "set", dev, "up"])
            _run(_ns(ns) + ["ip", "link", "set", "lo", "up"])
        yield
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def point(gbps, size, seconds, probe_pps, ns_send, ns_recv, src_ip, dst_ip) -> dict:
    me = [sys.executable, "-m", "tools.profile_network"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    recv = subprocess.Popen(
        _ns(ns_recv) + me + ["_recv", dst_ip, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = int(recv.stdout.readline())
        subprocess.run(
            _ns(ns_send)
            + me
            + ["_send", dst_ip, str(port), str(gbps), str(size), str(seconds), str(probe_pps)],
            check=True,
            env=env,
        )
        out, _ = recv.communicate(timeout=seconds + 15)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return json.loads(out)


def profile(path: str, rates, size: int, seconds: float, probe_pps: float) -> dict:
    if path == "netns":
        ctx, a, b, src, dst = namespaces(), NS_A, NS_B, IP_A, IP_B
    else:
        ctx, a, b, src, dst = contextlib.nullcontext(), None, None, "127.0.0.1", "127.0.0.1"
    rows = []
    with ctx:
        for g in rates:
            r = point(g, size, seconds, probe_pps, a, b, src, dst)
            r["asked_gbps"] = g
            rows.append(r)
            print(f"asked {g:g} Gbit/s: got {r['gbps']:.3f}, p99 {r['p99_us']} us "
                  f"({r['probes']} probes)", file=sys.stderr)  # fmt: skip
    points, last = [], -1.0
    for r in sorted((r for r in rows if r["p99_us"] is not None), key=lambda r: r["gbps"]):
        g = round(r["gbps"], 4)
        if g > last:
            points.append({"gbps": g, "p99_us": round(r["p99_us"], 2)})
            last = g
    where = f"veth {NS_A} -> {NS_B}" if path == "netns" else "loopback 127.0.0.1"
    doc = {
        "format": FORMAT,
        "source": "measured",
        "path": f"{where}, UDP, {seconds:g} s per point, kernel rx timestamps",
        "packet_bytes": size,
        "points": points,
        "meta": {"host": socket.gethostname(), "rows": rows},
    }
    parse_profile(doc)  # what we write must load
    return doc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_recv":
        print(json.dumps(receive(argv[1], float(argv[2]))))
        return 0
    if argv and argv[0] == "_send":
        ip, port, g, size, secs, probe = argv[1:7]
        send(ip, int(port), float(g), int(size), float(secs), float(probe))
        return 0
    ap = argparse.ArgumentParser(prog="python -m tools.profile_network", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--path", choices=("netns", "loopback"), default="netns")
    ap.add_argument("--gbps", type=float, nargs="+", default=[0.05, 0.2, 0.5, 1.0])
    ap.add_argument("--size", type=int, default=1024, help="datagram bytes on the wire (IP+UDP)")
    ap.add_argument("--seconds", type=float, default=1.0, help="per point")
    ap.add_argument("--probe-pps", type=float, default=2000.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.path == "netns" and os.geteuid() != 0:
        ap.error("--path netns needs root (network namespaces); use --path loopback")
    if not 60 <= a.size <= 9000:
        ap.error("--size: must be in 60..9000")
    doc = profile(a.path, a.gbps, a.size, a.seconds, a.probe_pps)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {a.out}: {len(doc['points'])} points", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
