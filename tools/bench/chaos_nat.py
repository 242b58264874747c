"""The chaos suite's NAT side: mappings in Redis, echo connections, "state kept".

The ``acl -> nat`` chain carries TCP and UDP echo connections
(``tools/trafficgen/echo.py``) whose replies come back through the NAT, so what
a connection saw is counted at its client: each round's echo, when it came
back, and what had to be sent again.  A NAT mapping is seen twice: in Redis
(the NAT's ``in`` keys, decoded here) and by the far side (the external
address and port the echo server saw, reported back in each echo).

Pure functions over those reports and snapshots, apart from :func:`redis_mappings`.
"""

from __future__ import annotations

import ipaddress
import struct

KIND_IN = 2  # cext/nf_nat.pyx: the key (external address, port, protocol) -> inside endpoint
PROTOS = {6: "tcp", 17: "udp"}
# qd_key (cext/state.pxd), host order: a, b (u32), pa, pb (u16), proto, kind (u8), pad
_KEY = struct.Struct("=IIHHBB2x")
# an in key's value: inside address (u32), inside port, remote port (u16), remote address
_IN_VAL = struct.Struct("=IHHI")


def decode_mappings(raw: dict[bytes, bytes], prefix: str) -> dict[tuple, tuple]:
    """``{(proto, inside address, inside port): (external address, external port)}`` from
    the NAT's Redis keys and values (``<prefix>:<32 hex digits of the key>``); keys of
    other kinds, prefixes or shapes are skipped."""
    out = {}
    head = prefix.encode() + b":"
    for key, val in raw.items():
        if not key.startswith(head) or val is None or len(val) != _IN_VAL.size:
            continue
        try:
            k = bytes.fromhex(key[len(head) :].decode())
        except ValueError:
            continue
        if len(k) != _KEY.size:
            continue
        ext, _b, eport, _pb, proto, kind = _KEY.unpack(k)
        if kind != KIND_IN or proto not in PROTOS:
            continue
        inside, iport, _rport, _remote = _IN_VAL.unpack(val)
        out[(PROTOS[proto], str(ipaddress.IPv4Address(inside)), iport)] = (
            str(ipaddress.IPv4Address(ext)),
            eport,
        )
    return out


def redis_mappings(srv, prefix: str) -> dict[tuple, tuple]:
    """Every mapping the NAT of key prefix ``prefix`` has in Redis now (admin client)."""
    admin = srv.client()
    try:
        keys = sorted(admin.scan_iter(match=f"{prefix}:*", count=1000))
        vals = admin.mget(keys) if keys else []
    finally:
        admin.close()
    return decode_mappings(dict(zip(keys, vals, strict=True)), prefix)


def seen_mapping(report: dict) -> tuple | None:
    """The external endpoint the far side saw for one connection (None unless exactly one)."""
    if len(report.get("peers") or ()) != 1:
        return None
    addr, port = report["peers"][0].rsplit(":", 1)
    return addr, int(port)


def state_kept(reports: list[dict], before: dict, after: dict, inside: str, rounds: int):
    """``(kept, why)``: every connection completed every round in order, with no error,
    behind one external endpoint, the one Redis had for it before the fault and still
    has after.  ``why`` lists what broke it (at most 5), empty if kept."""
    why = []
    for r in reports:
        name = f"{r.get('kind')}:{r.get('local_port')}"
        if r.get("error"):
            why.append(f"{name}: {r['error']}")
            continue
        if r.get("seqs") != list(range(rounds)):
            why.append(f"{name}: {len(r.get('seqs') or ())} of {rounds} rounds, or out of order")
            continue
        seen = seen_mapping(r)
        key = (r.get("kind"), inside, r.get("local_port"))
        if seen is None:
            why.append(f"{name}: seen behind {r.get('peers')}")
        elif before.get(key) != seen or after.get(key) != seen:
            why.append(f"{name}: seen {seen}, Redis {before.get(key)} before, "
                       f"{after.get(key)} after")  # fmt: skip
    if not reports:
        why.append("no connection ran")
    ports = [seen_mapping(r) for r in reports]
    if len(set(ports)) != len(ports):
        why.append("two connections behind one external endpoint")
    return not why, why[:5]


def echo_counts(reports: list[dict], rounds: int) -> dict:
    """What the connections lost and how: ``lost`` = UDP rounds sent again after a
    timeout, less the late echoes of those rounds (their first send was not lost,
    only slow), plus the TCP segments the kernel retransmitted; ``rounds`` and
    ``expected``: echoes that came back and were due; ``failed``: connections with
    an error; ``reordered``: connections whose echoes came back out of order."""
    lost = 0
    for r in reports:
        if r.get("kind") == "udp":
            lost += max(0, (r.get("retries") or 0) - (r.get("late") or 0))
        else:
            lost += r.get("retrans") or 0
    return {
        "lost": lost,
        "rounds": sum(len(r.get("seqs") or ()) for r in reports),
        "expected": rounds * len(reports),
        "failed": sum(1 for r in reports if r.get("error")),
        "reordered": sum(
            1 for r in reports if (r.get("seqs") or []) != sorted(r.get("seqs") or [])
        ),
    }


def echo_outage(reports: list[dict], t0_ns: int, window_ns: float, quiet_ns: float):
    """``(recover_ms, outage_ms)`` from the connections' echo times: a connection is
    affected when two of its echoes came back more than ``quiet_ns`` apart (its round
    interval and some: more than a slow echo) across the fault, the silence ending
    after ``t0_ns`` and starting within ``window_ns`` of it.  ``recover_ms``: the fault
    to the last affected connection's first echo after its silence; ``outage_ms``:
    the longest such silence.  ``(None, None)`` if no connection was affected."""
    hit = []
    for r in reports:
        times = r.get("times_ns") or []
        gaps = [(b - a, b) for a, b in zip(times, times[1:], strict=False)
                if b - a > quiet_ns and b > t0_ns and a < t0_ns + window_ns]  # fmt: skip
        if gaps:
            hit.append(max(gaps))
    if not hit:
        return None, None
    recover = max(end - t0_ns for _, end in hit) / 1e6
    return round(recover, 1), round(max(g for g, _ in hit) / 1e6, 1)
