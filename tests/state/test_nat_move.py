"""Moving NAT connections mid-connection from instance A (its own address a) to B
(address b), through the real NF runtime and a real Redis: B translates both
directions with the unchanged mapping (a, port), A keeps the port reserved and
leaves the keys alone when its timers fire, B deletes them when the connection
ends.  The owner is written by the agent's real code (worker/state_access.py), as
the controller's move does (docs/state.rst, *Moving NAT flows*)."""

from __future__ import annotations

import ipaddress
import struct

from scapy.all import IP, TCP, UDP, Ether

from tests.state.test_nat import INSIDE, checksums_ok, conns, eth, inbound, outbound, tagged
from worker.state_access import StateAccess

A_ADDR, B_ADDR = "203.0.113.1", "203.0.113.2"
A_ID, B_ID = 11, 12


def nat_cfg(addr, ports, instance, adopt, **extra) -> dict:
    config = {
        "internal": [INSIDE],
        "external": [{"address": addr, "ports": ports}],
        "instance": instance,
        "adopt": [adopt],
    }
    return {"type": "nat", "config": config | extra}


def nat_a(**extra):
    return nat_cfg(A_ADDR, "40000-40003", A_ID, B_ADDR, **extra)  # 4 ports


def nat_b(**extra):
    return nat_cfg(B_ADDR, "50000-50003", B_ID, A_ADDR, **extra)


def fillers(n):
    """Packets the NAT passes untouched: each batch of them runs its timer sweep."""
    return [eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=9, dport=9)] * n


def ext_of(frames) -> dict:
    """{(proto, inside port): (source address, source port)} of outbound frames."""
    out = {}
    for f in frames:
        p = Ether(f)
        assert checksums_ok(f), p.summary()
        if p[IP].src.startswith("192.0.2"):
            continue
        l4 = p[TCP] if TCP in p else p[UDP]
        out.setdefault(("tcp" if TCP in p else "udp", int(f[-13:-8])), set()).add(
            (p[IP].src, l4.sport)
        )
    assert all(len(v) == 1 for v in out.values()), out
    return {k: v.pop() for k, v in out.items()}


def outs(redis_server, prefix):
    """{(proto, inside port): (owner, external address, port)} of the ``out`` keys."""
    c = redis_server.client()
    try:
        names = c.keys(f"{prefix}:*")
        got = {}
        for name, v in zip(names, c.mget(names) if names else [], strict=True):
            key = bytes.fromhex(name.decode().split(":")[1])
            a, b, pa, pb, proto, kind = struct.unpack("<IIHHBB2x", key)
            if kind != 1:
                continue
            addr, port = struct.unpack_from("<IH", v)
            owner = struct.unpack_from("<I", v, 8)[0] if len(v) == 12 else 0
            got[("tcp" if proto == 6 else "udp", pa)] = (
                owner,
                str(ipaddress.IPv4Address(addr)),
                port,
            )
        return got, len(names)
    finally:
        c.close()


def test_a_nat_connection_moved_to_another_instance_keeps_its_mapping(
    run_stateful, nf_user, redis_server
):
    prefix = "natmove"
    state = nf_user(prefix)
    moved = conns(1)  # one TCP, one UDP connection
    # 1. A opens both: owner 0 (the address's instance) in each mapping
    r = run_stateful(nat_a(), [outbound(c, payload=tagged(c)) for c in moved], state)
    ext = ext_of(r.output)
    assert set(ext.values()) <= {(A_ADDR, p) for p in range(40000, 40004)} and len(ext) == 2
    got, _ = outs(redis_server, prefix)
    assert {k: v[0] for k, v in got.items()} == {(c[0], c[2]): 0 for c in moved}

    # 2. the move's handover: the agent's code reads the mappings, writes B as owner
    sa = StateAccess(f"unix:{redis_server.socket_path}", "admin", redis_server.admin_password)
    try:
        flows = [(6 if c[0] == "tcp" else 17, int(ipaddress.IPv4Address(c[1])),
                  int(ipaddress.IPv4Address(c[3])), c[2], c[4]) for c in moved]  # fmt: skip
        read = sa.nat_handover(prefix, flows)
        assert [(str(ipaddress.IPv4Address(a)), p) for a, p in read] == [
            ext[(c[0], c[2])] for c in moved
        ]
        a_int = int(ipaddress.IPv4Address(A_ADDR))
        b_int = int(ipaddress.IPv4Address(B_ADDR))
        assert sa.nat_handover(prefix, flows, owner=B_ID, home=b_int) == read
        gone = (6, int(ipaddress.IPv4Address("10.1.7.7")), 1, 2, 3)
        assert sa.nat_handover(prefix, [gone], owner=B_ID) == [None]  # SET XX: not created
        got, nkeys = outs(redis_server, prefix)
        assert {k: v[0] for k, v in got.items()} == {(c[0], c[2]): B_ID for c in moved}
        assert nkeys == 4
        # back to A would write 0 (A's own address), and B again writes B
        sa.nat_handover(prefix, flows, owner=A_ID, home=a_int)
        assert {v[0] for v in outs(redis_server, prefix)[0].values()} == {0}
        sa.nat_handover(prefix, flows, owner=B_ID, home=b_int)
    finally:
        sa.close()

    # 3. B, mid-connection: later packets out and the replies to (a, port), both ways
    # translated with the unchanged mapping
    pkts = []
    for c in moved:
        rep = inbound(c, ext[(c[0], c[2])], flags="A")
        pkts += [outbound(c, flags="A", payload=tagged(c)), rep]
    r = run_stateful(nat_b(), pkts, state)
    st = r.summary["nf_stats"]
    assert st["new_mappings"] == 0 and st["adopted"] == 2 and st["no_mapping"] == 0
    assert st["out"] == 2 and st["in"] == 2 and len(r.output) == 4
    out_frames = [f for f in r.output if Ether(f)[IP].src == A_ADDR]
    assert ext_of(out_frames) == ext  # the same external endpoint as on A
    back = {(("tcp" if TCP in p else "udp"), (p[TCP] if TCP in p else p[UDP]).dport): p[IP].dst
            for p in map(Ether, r.output) if p[IP].dst.startswith("10.1.")}  # fmt: skip
    assert back == {(c[0], c[2]): c[1] for c in moved}
    assert r.summary["state"]["updates"] == 0  # nothing written: B is the owner already

    # 4. A again (restarted: it restores its pool from Redis), every timer at 0: it asks
    # Redis, finds B owning both, keeps the two ports lent and deletes nothing; new
    # connections get only the two other ports
    new = [c for c in conns(3, first=50) if c[0] == "tcp"]
    r = run_stateful(
        nat_a(tcp_idle_s=0, udp_idle_s=0),
        [outbound(c, payload=tagged(c)) for c in new] + fillers(8),
        state,
        batch=1,
    )
    st = r.summary["nf_stats"]
    assert st["restored"] == 2 and st["lent"] == 2 and st["timer_reads"] >= 1
    new_ports = set(ext_of(r.output).values())
    assert new_ports and not new_ports & set(ext.values())
    got, _ = outs(redis_server, prefix)
    assert {k: v for k, v in got.items() if k in ext} == {
        k: (B_ID, *ext[k]) for k in ext
    }  # untouched

    # 5. B ends them: FIN both ways (closing 0) for TCP, idle 0 for UDP; it asks Redis,
    # finds itself the owner, and deletes both keys of each
    tcp, udp = moved
    fin = [
        outbound(tcp, flags="FA", payload=tagged(tcp)),
        inbound(tcp, ext[("tcp", tcp[2])], flags="FA"),
        outbound(tcp, flags="A", payload=tagged(tcp)),
        outbound(udp, payload=tagged(udp)),
    ]
    r = run_stateful(nat_b(closing_s=0, udp_idle_s=0), fin + fillers(80), state, batch=1)
    st = r.summary["nf_stats"]
    assert st["ended"] == 1 and st["expired"] == 1 and st["adopted"] == 0
    assert r.summary["state"]["updates"] == 4  # two keys each, deleted
    got, _ = outs(redis_server, prefix)
    assert not set(got) & set(ext)


def test_many_adopted_connections_in_a_small_table(run_stateful, nf_user, redis_server):
    """120 connections moved to B, whose adopted table has 256 entries (collisions):
    each is adopted once, RSTs of 30 remove entries (shifting the others back) without
    losing any, the rest keep translating, and UDP idling out empties the table of
    them while the keys of connections B does not own stay."""
    prefix = "natmany"
    state = nf_user(prefix)
    cs = conns(60)
    a = nat_cfg(A_ADDR, "40000-40199", A_ID, B_ADDR)
    r = run_stateful(a, [outbound(c, payload=tagged(c)) for c in cs], state)
    ext = ext_of(r.output)
    assert len(set(ext.values())) == 120
    flows = [(6 if c[0] == "tcp" else 17, int(ipaddress.IPv4Address(c[1])),
              int(ipaddress.IPv4Address(c[3])), c[2], c[4]) for c in cs]  # fmt: skip
    sa = StateAccess(f"unix:{redis_server.socket_path}", "admin", redis_server.admin_password)
    try:  # B owns all but the last 10 UDP ones (still A's, as if moved and given back)
        owned = [f for f, c in zip(flows, cs, strict=True) if not (c[0] == "udp" and c[2] >= 20050)]
        sa.nat_handover(prefix, owned, owner=B_ID, home=int(ipaddress.IPv4Address(B_ADDR)))
    finally:
        sa.close()
    tcp = [c for c in cs if c[0] == "tcp"]
    pkts = [outbound(c, flags="A", payload=tagged(c)) for c in cs]
    pkts += [outbound(c, flags="R", payload=tagged(c)) for c in tcp[:30]]
    pkts += [inbound(c, ext[(c[0], c[2])], flags="A") for c in cs if c not in tcp[:30]]
    pkts += [outbound(c, flags="A", payload=tagged(c)) for c in cs if c not in tcp[:30]]
    r = run_stateful(nat_b(adopted_max=150), pkts, state, batch=4)
    st = r.summary["nf_stats"]
    # adopted once each: no entry lost to a collision or to the deletions' shifts
    assert st["adopted_total"] == 120 and st["no_mapping"] == 0 and st["adopt_full"] == 0
    assert st["ended"] == 30 and st["adopted"] == 90
    out_frames = [f for f in r.output if Ether(f)[IP].src == A_ADDR]
    assert ext_of(out_frames) == ext  # every packet out kept its mapping
    back = {(("tcp" if TCP in p else "udp"), (p[TCP] if TCP in p else p[UDP]).dport): p[IP].dst
            for p in map(Ether, r.output) if p[IP].dst.startswith("10.1.")}  # fmt: skip
    assert back == {(c[0], c[2]): c[1] for c in cs if c not in tcp[:30]}
    # UDP idles out on B: the 50 it owns are deleted, the 10 still A's are handed back
    udp = [c for c in cs if c[0] == "udp"]
    r = run_stateful(nat_b(adopted_max=150, udp_idle_s=0),
                     [outbound(c, payload=tagged(c)) for c in udp] + fillers(40), state,
                     batch=4)  # fmt: skip
    st = r.summary["nf_stats"]
    assert st["expired"] == 50 and st["handed_back"] == 10 and st["adopted"] == 0, st
    got, _ = outs(redis_server, prefix)
    live = {(c[0], c[2]) for c in tcp[30:]} | {("udp", p) for p in range(20050, 20060)}
    assert set(got) == live  # B deleted what it ended and owned; A's ten are left alone
