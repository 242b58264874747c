"""ipforward, acl, bpf_lpm, the example native NF and a Python NF through the runtime."""

from __future__ import annotations

import pytest
from scapy.all import IP, Ether, raw

from tests.dataplane.packets import icmp, malformed, non_ip, tcp, udp
from worker import nf_tables

HOP_A, HOP_B, ROUTER = "02:00:00:00:0a:0a", "02:00:00:00:0b:0b", "02:00:00:00:ff:01"


def routed(frame: bytes, next_hop: str, src: str | None = None) -> bytes:
    pkt = Ether(frame)
    pkt.dst = next_hop
    if src:
        pkt.src = src
    pkt[IP].ttl -= 1
    del pkt[IP].chksum  # scapy recomputes it from scratch: checks our incremental update
    return raw(pkt)


def test_ipforward_lpm_ttl_checksum(run_nf, tmp_path):
    # thousands of routes from a file, plus inline ones that must win by length
    routes = nf_tables.generate_routes(3000, seed=7)
    routes = [r for r in routes if r[0] >> 24 not in (10, 192)]
    (tmp_path / "routes.txt").write_text(nf_tables.format_routes(routes))
    config = {
        "route_file": "routes.txt",
        "routes": [
            {"prefix": "10.0.0.0/8", "next_hop_mac": HOP_A},
            {"prefix": "10.2.128.0/17", "next_hop_mac": HOP_B},
            {"prefix": "192.168.7.7/32", "next_hop_mac": HOP_B},
        ],
        "src_mac": ROUTER,
    }
    forwarded = [
        (raw(udp(dst="10.2.0.1")), HOP_A),
        (raw(udp(dst="10.2.200.1", ttl=2)), HOP_B),
        (raw(tcp(dst="192.168.7.7", ttl=255)), HOP_B),
        (raw(icmp(dst="10.9.9.9")), HOP_A),
    ]
    dropped = [
        raw(udp(dst="192.168.7.8")),  # no route
        raw(udp(dst="10.2.0.1", ttl=1)),  # TTL expires
        raw(udp(dst="10.2.0.1", ttl=0)),
        *malformed().values(),
        *non_ip().values(),
    ]
    frames = [f for f, _ in forwarded] + dropped
    result = run_nf({"type": "ipforward", "config": config}, frames)
    assert result.output == [routed(f, hop, ROUTER) for f, hop in forwarded]
    stats = result.summary["nf_stats"]
    assert stats == {"no_route": 1, "ttl_expired": 2, "malformed": len(dropped) - 3}


def test_ipforward_checksum_wraps(run_nf):
    # checksums near 0x0000/0xffff exercise the one's-complement carry
    frames = []
    for ident in range(0, 65536, 257):
        frames.append(raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=ident, ttl=9) / b"x"))
    config = {"routes": [{"prefix": "0.0.0.0/0", "next_hop_mac": HOP_A}]}
    result = run_nf({"type": "ipforward", "config": config}, frames)
    assert result.output == [routed(f, HOP_A) for f in frames]


def test_acl_first_match_wins_default_deny(run_nf, tmp_path):
    lines = nf_tables.generate_acl_rules(1500, seed=3)
    # generated rules only cover other space: keep the test's addresses out of them
    lines = [ln for ln in lines if " any " not in f" {ln.split()[1]} {ln.split()[2]} "]
    lines = [ln for ln in lines if not any(p.startswith(("10.", "0.")) for p in ln.split()[1:3])]
    (tmp_path / "rules.txt").write_text("\n".join(lines) + "\n")
    config = {
        "rules": [
            {"action": "deny", "src": "10.1.0.66/32", "proto": "tcp"},
            {
                "action": "allow",
                "src": "10.1.0.0/16",
                "dst": "10.2.0.0/16",
                "proto": "tcp",
                "dport": "80-8080",
            },
            {"action": "allow", "dst": "10.2.0.0/16", "proto": "udp", "sport": "53"},
            {"action": "allow", "dst": "10.3.0.0/16", "proto": "icmp"},
        ],
        "rule_file": "rules.txt",
    }
    allowed = [
        raw(tcp(dport=80)),
        raw(tcp(dport=8080)),
        raw(udp(sport=53, dport=9999)),
        raw(icmp(dst="10.3.1.1")),
    ]
    denied = [
        raw(tcp(src="10.1.0.66", dport=80)),  # deny rule first
        raw(tcp(dport=8081)),  # outside the range
        raw(udp(sport=54, dport=80)),
        raw(icmp(dst="10.2.1.1")),
        raw(tcp(src="10.9.0.1", dport=80)),
        *non_ip().values(),  # default applies
        *malformed().values(),
    ]
    result = run_nf({"type": "acl", "config": config}, allowed + denied)
    assert result.output == allowed
    stats = result.summary["nf_stats"]
    assert stats["rules"] == 4 + len(lines)
    assert stats["allowed"] == len(allowed)
    assert stats["malformed"] == len(malformed())


def test_acl_default_allow(run_nf):
    config = {"default": "allow", "rules": [{"action": "deny", "proto": "udp", "dport": 53}]}
    frames = [raw(udp(dport=53)), raw(udp(dport=54)), non_ip()["arp"], raw(tcp(dport=53))]
    result = run_nf({"type": "acl", "config": config}, frames)
    assert result.output == frames[1:]


@pytest.mark.parametrize("keys", ["tuple", "spread"])
def test_bpf_lpm_forwards_parsed_ipv4(run_nf, keys):
    good = [raw(udp(sport=s, dst=f"10.{s}.0.1")) for s in range(20)] + [raw(icmp())]
    bad = list(malformed().values()) + list(non_ip().values())
    config = {"lookups": 50, "table_size": 2000, "seed": 5, "keys": keys}
    result = run_nf({"type": "bpf_lpm", "config": config}, good + bad)
    assert result.output == good
    s = result.summary["nf_stats"]
    assert s["routes"] == 2000 and s["keys"] == keys
    assert s["hits"] + s["misses"] == 50 * len(good)
    assert s["hits"] > 0 and s["misses"] > 0
    assert s["malformed"] == len(bad)


def test_example_native_nf(run_nf):
    frames = [raw(tcp(dport=23)), raw(udp(dport=445)), raw(tcp(dport=22)), non_ip()["arp"]]
    nf = {"type": "native", "class": "cext.nf_example:PortBlockNF", "config": {"ports": [23, 445]}}
    result = run_nf(nf, frames + [malformed()["bad_ihl"]])
    assert result.output == frames[2:]
    assert result.summary["nf_stats"] == {"dropped": 3, "passed": 2}


def test_python_nf_zero_copy(run_nf):
    frames = [raw(udp(ttl=t)) for t in (64, 63, 62, 61)] + [non_ip()["arp"]]
    nf = {"type": "python", "class": "tests.dataplane.pynfs:DropOddTTL", "config": {}}
    result = run_nf(nf, frames)
    expected = [f[:-1] + b"\xee" for f in (frames[0], frames[2], frames[4])]
    assert result.output == expected
    assert result.summary["nf_stats"] == {"seen": 5}
    assert result.summary["counters"]["drops_nf"] == 2


def test_python_nf_from_the_docs(run_nf):
    frames = [raw(tcp(dport=23)), raw(tcp(dport=22)), raw(udp(dport=23)), raw(tcp(dport=2323))]
    nf = {"type": "python", "class": "tests.dataplane.pynfs:DropTelnet", "config": {"port": 23}}
    result = run_nf(nf, frames)
    assert result.output == frames[1:]
    assert result.summary["nf_stats"] == {"dropped": 1}


@pytest.mark.parametrize(
    "nf",
    [
        {"type": "python", "class": "tests.dataplane.pynfs:DropOddTTL", "config": {"mark": 0}},
        {"type": "native", "class": "cext.nf_example:PortBlockNF", "config": {"ports": [23]}},
    ],
    ids=["python", "native"],
)
def test_a_drop_does_not_outlive_its_batch(run_nf, nf):
    # the runtime restores its verdict array to FORWARD after a batch with drops
    # (there is no preset pass): batches of 4, drops only in the first one
    drop = {1, 3}
    frames = [
        raw(udp(ttl=63, dport=23) if i in drop else udp(ttl=64, dport=24, sport=1000 + i))
        for i in range(12)
    ]
    if nf["type"] == "python":
        frames = [f[:-1] + b"\x00" for f in frames]  # DropOddTTL marks with 0: unchanged
    result = run_nf(nf, frames, batch=4)
    assert result.output == [f for i, f in enumerate(frames) if i not in drop]
    assert result.summary["counters"]["drops_nf"] == len(drop)
    assert result.summary["counters"]["tx_packets"] == len(frames) - len(drop)
