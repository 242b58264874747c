"""The NAT NF through the real runtime and a real Redis: many TCP and UDP connections,
both directions, one port per connection for its lifetime, reuse only after the end,
mappings surviving a restart (fetched from Redis), checksums."""

from __future__ import annotations

from scapy.all import IP, TCP, UDP, Ether, Raw, raw

INSIDE, REMOTE_TCP, REMOTE_UDP = "10.1.0.0/16", "198.51.100.1", "198.51.100.2"
EXT = [("203.0.113.1", 40000, 40099), ("203.0.113.2", 50000, 50049)]  # 150 ports
EXT_ADDRS = {a for a, _, _ in EXT}


def nat(**extra) -> dict:
    config = {
        "internal": [INSIDE],
        "external": [{"address": a, "ports": f"{lo}-{hi}"} for a, lo, hi in EXT],
    }
    return {"type": "nat", "config": config | extra}


def eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def conns(n: int, first=0):
    """n TCP and n UDP connections: (proto, inside addr, inside port, remote, remote port)."""
    out = []
    for c in range(first, first + n):
        host = f"10.1.{c // 200}.{c % 200 + 1}"
        out.append(("tcp", host, 10000 + c, REMOTE_TCP, 80))
        out.append(("udp", host, 20000 + c, REMOTE_UDP, 53))
    return out


def outbound(c, flags="S", payload=b"x" * 12):
    proto, host, port, remote, rport = c
    l4 = (
        TCP(sport=port, dport=rport, flags=flags)
        if proto == "tcp"
        else UDP(sport=port, dport=rport)
    )
    return eth() / IP(src=host, dst=remote) / l4 / Raw(payload)


def inbound(c, ext, flags="SA", payload=b"y" * 12, rport=None):
    proto, _, _, remote, rp = c
    ea, ep = ext
    sport = rp if rport is None else rport
    l4 = TCP(sport=sport, dport=ep, flags=flags) if proto == "tcp" else UDP(sport=sport, dport=ep)
    return eth() / IP(src=remote, dst=ea) / l4 / Raw(payload)


def checksums_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    again = pkt.copy()
    del again[IP].chksum
    layer = TCP if TCP in again else UDP
    del again[layer].chksum
    return raw(Ether(raw(again))) == frame


def translate_out(frames) -> dict[tuple[str, int], tuple[str, int]]:
    """{(proto, payload tag): (ext addr, ext port)}: each outbound frame carries its
    connection's inside port in its payload (the header has the external one)."""
    got: dict[tuple[str, int], set] = {}
    for f in frames:
        p = Ether(f)
        assert checksums_ok(f), p.summary()
        assert p[IP].src in EXT_ADDRS, p.summary()
        l4 = p[TCP] if TCP in p else p[UDP]
        inside = int(f[-13:-8])  # tagged(): "%05d-payload"
        got.setdefault(("tcp" if TCP in p else "udp", inside), set()).add((p[IP].src, l4.sport))
    assert all(len(v) == 1 for v in got.values()), "a connection changed its port"
    return {k: v.pop() for k, v in got.items()}


def unused_port(used) -> tuple[str, int]:
    pool = {(a, p) for a, lo, hi in EXT for p in range(lo, hi + 1)}
    return sorted(pool - set(used))[0]


def tagged(c) -> bytes:
    return b"%05d" % c[2] + b"-payload"


def test_nat_both_directions_restart_and_port_reuse(run_stateful, nf_user, redis_server):
    state = nf_user("nat0-a")
    cs = conns(60)  # 60 TCP + 60 UDP
    # 1. first packets out: each connection gets its own external address/port
    first = run_stateful(nat(), [outbound(c, payload=tagged(c)) for c in cs], state)
    assert first.summary["nf_stats"]["new_mappings"] == 120
    assert len(first.output) == 120 and first.summary["state"]["released"] == 120
    ext = translate_out(first.output)
    assert len(set(ext.values())) == 120  # no two connections share a port
    for a, p in ext.values():
        assert any(a == ea and lo <= p <= hi for ea, lo, hi in EXT)
    keys = redis_server.client().keys("nat0-a:*")
    assert len(keys) == 240  # an out and an in key per connection

    # 2. a new instance (restart): replies come in, more packets go out, same ports
    replies = [inbound(c, ext[(c[0], c[2])]) for c in cs]
    more = [outbound(c, flags="A", payload=tagged(c)) for c in cs]
    bad = [
        inbound(cs[0], ext[("tcp", cs[0][2])], rport=81),  # another remote port: filtered
        inbound(cs[1], unused_port(ext.values())),  # a port no connection has: no mapping
        outbound(("tcp", "10.1.9.9", 999, REMOTE_TCP, 80), flags="A"),  # no SYN: no mapping
    ]
    second = run_stateful(nat(), replies + more + bad, state)
    st = second.summary["nf_stats"]
    assert st["restored"] == 120 and st["new_mappings"] == 0
    assert st["filtered"] == 1 and st["no_mapping"] == 2
    outs = [f for f in second.output if Ether(f)[IP].src in EXT_ADDRS]
    ins = [f for f in second.output if Ether(f)[IP].src in (REMOTE_TCP, REMOTE_UDP)]
    assert translate_out(outs) == ext  # every connection kept its port across the restart
    assert len(ins) == 120
    back = {}
    for f in ins:
        assert checksums_ok(f)
        p = Ether(f)
        l4 = p[TCP] if TCP in p else p[UDP]
        back[("tcp" if TCP in p else "udp", l4.dport)] = p[IP].dst
    assert back == {(c[0], c[2]): c[1] for c in cs}  # translated back to the inside host
    assert second.summary["state"]["updates"] == 0  # nothing new: nothing held
    assert second.summary["state"]["held"] == 0

    # 3. half the TCP connections end (RST out), as many new ones open
    ending = [c for c in cs if c[0] == "tcp"][:30]
    live = {ext[(c[0], c[2])] for c in cs} - {ext[(c[0], c[2])] for c in ending}
    new1 = [c for c in conns(30, first=100) if c[0] == "tcp"]
    third = run_stateful(
        nat(),
        [outbound(c, flags="R") for c in ending] + [outbound(c, payload=tagged(c)) for c in new1],
        state,
    )
    assert third.summary["nf_stats"]["ended"] == 30
    got1 = translate_out([f for f in third.output if Ether(f)[TCP].flags == "S"])
    assert not set(got1.values()) & live  # never a port of a live connection
    assert not set(got1.values()) & {ext[(c[0], c[2])] for c in ending}  # not reused at once
    # 4. the pool has 150 - 90 - 30 = 30 never-used ports... used now: the next new ones
    # can only get the ended connections' ports, and do
    new2 = [c for c in conns(30, first=200) if c[0] == "tcp"]
    fourth = run_stateful(nat(), [outbound(c, payload=tagged(c)) for c in new2], state)
    got2 = translate_out(fourth.output)
    assert set(got2.values()) == {ext[(c[0], c[2])] for c in ending}
    assert fourth.summary["nf_stats"]["new_mappings"] == 30
    # the pool is full now: one more connection is refused, not given a live port
    full = run_stateful(nat(), [outbound(conns(1, first=300)[0])], state)
    assert full.summary["nf_stats"]["pool_exhausted"] == 1 and not full.output


def test_nat_fin_both_ways_then_closing_timeout(run_stateful, nf_user):
    state = nf_user("nat1-b")
    c = conns(1)[0]
    r = run_stateful(nat(closing_s=0), [outbound(c, payload=tagged(c))], state)
    e = translate_out(r.output)[("tcp", c[2])]
    assert e == ("203.0.113.1", 40000)  # the first free slot (the sweep below relies on it)
    # FIN out, FIN in, last ACK out: still mapped (closing); the sweep (32 pool slots per
    # batch, from slot 0) reaches slot 0 again in the 5th batch and ends it (closing_s 0)
    pkts = [outbound(c, flags="FA"), inbound(c, e, flags="FA"), outbound(c, flags="A")]
    fillers = [eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP() for _ in range(4)]
    r2 = run_stateful(nat(closing_s=0), pkts + fillers, state, batch=1)
    st = r2.summary["nf_stats"]
    assert st["out"] == 2 and st["in"] == 1 and len(r2.output) == 7
    assert st["ended"] == 1 and st["live"] == 0 and st["free_ports"] == 150
    assert r2.summary["state"]["updates"] == 2  # both keys deleted


def test_nat_udp_idle_timeout_frees_ports(run_stateful, nf_user):
    state = nf_user("nat2-c")
    one = {"internal": [INSIDE], "external": [{"address": "203.0.113.9", "ports": "7000-7001"}]}
    cs = [c for c in conns(3) if c[0] == "udp"]
    # two ports, idle timeout 0: a mapping expires at the next sweep, so 3 flows fit
    r = run_stateful(
        {"type": "nat", "config": one | {"udp_idle_s": 0}},
        [outbound(c) for c in cs],
        state,
        batch=1,
    )
    st = r.summary["nf_stats"]
    assert st["new_mappings"] == 3 and st["expired"] >= 1 and len(r.output) == 3


def test_nat_drops_what_it_cannot_translate(run_stateful, nf_user):
    from scapy.all import ICMP

    pkts = [
        eth() / IP(src="10.1.0.5", dst=REMOTE_TCP) / ICMP(),  # not TCP/UDP: not translated
        eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2),  # not NAT's
        eth() / IP(src="10.1.0.5", dst=REMOTE_UDP) / UDP(sport=5, dport=53, chksum=0) / b"z",
    ]
    r = run_stateful(nat(), pkts, nf_user("nat3-d"))
    st = r.summary["nf_stats"]
    assert st["unsupported"] == 1 and st["passthrough"] == 1 and st["new_mappings"] == 1
    assert Ether(r.output[-1])[UDP].chksum == 0  # a UDP datagram without checksum stays so


def test_nat_config_errors():
    from cext.nf_nat import NatNF

    from worker.nf_errors import NFConfigError

    cases = {
        "config.internal": {"external": [{"address": "1.2.3.4"}]},
        "config.external[0].address": {
            "internal": ["10.0.0.0/8"],
            "external": [{"address": "10.0.0.1"}],
        },
        "config.external[0].ports": {
            "internal": ["10.0.0.0/8"],
            "external": [{"address": "1.2.3.4", "ports": "9-3"}],
        },
        "config.bogus": {
            "internal": ["10.0.0.0/8"],
            "external": [{"address": "1.2.3.4"}],
            "bogus": 1,
        },
    }
    for field, cfg in cases.items():
        try:
            NatNF().configure(cfg)
        except NFConfigError as exc:
            assert exc.field == field, (field, exc)
        else:
            raise AssertionError(f"{field}: accepted {cfg}")
