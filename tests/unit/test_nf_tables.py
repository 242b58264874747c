"""Parsing the basic NFs' configs (pure)."""

from __future__ import annotations

import pytest

from worker import nf_tables as t
from worker.nf_errors import NFConfigError


def test_prefix_and_mac():
    assert t.parse_prefix("10.1.0.0/16", "f") == (0x0A010000, 16)
    assert t.parse_prefix("1.2.3.4", "f") == (0x01020304, 32)
    with pytest.raises(NFConfigError, match="f: not an IPv4 prefix"):
        t.parse_prefix("10.1.0.1/16", "f")  # host bits set
    assert t.parse_mac("02:00:00:00:00:0A", "m") == bytes([2, 0, 0, 0, 0, 10])
    for bad in ("02:00:00:00:00", "zz:00:00:00:00:00", 5):
        with pytest.raises(NFConfigError, match="m: not a MAC address"):
            t.parse_mac(bad, "m")


def test_routes_file_and_inline(tmp_path):
    (tmp_path / "r.txt").write_text(
        "# comment\n10.0.0.0/8 02:00:00:00:00:01\n\n10.2.0.0/16 02:00:00:00:00:02  # tail\n"
    )
    cfg = t.parse_ipforward(
        {
            "route_file": "r.txt",
            "routes": [{"prefix": "0.0.0.0/0", "next_hop_mac": "02:00:00:00:00:03"}],
        },
        tmp_path,
    )
    assert [(n, d) for n, d, _ in cfg.routes] == [(0, 0), (0x0A000000, 8), (0x0A020000, 16)]
    assert cfg.src_mac is None
    (tmp_path / "bad.txt").write_text("10.0.0.0/8\n")
    with pytest.raises(NFConfigError, match=r"bad.txt:1: expected 'PREFIX NEXT_HOP_MAC'"):
        t.parse_ipforward({"route_file": "bad.txt"}, tmp_path)
    with pytest.raises(NFConfigError, match="config.routes: ipforward needs routes"):
        t.parse_ipforward({})
    with pytest.raises(NFConfigError, match=r"config.routes\[0\].next_hop_mac: missing"):
        t.parse_ipforward({"routes": [{"prefix": "10.0.0.0/8"}]})


def test_generated_routes_roundtrip(tmp_path):
    routes = t.generate_routes(500, seed=2)
    assert len({(n, d) for n, d, _ in routes}) == 500
    (tmp_path / "g.txt").write_text(t.format_routes(routes))
    assert t.load_routes({"route_file": "g.txt"}, tmp_path) == routes
    assert t.generate_routes(50, seed=2) == routes[:50]  # deterministic


def test_tunnel():
    assert t.parse_tunnel({"vlan": 100, "pcp": 3}).fixed_tci == (3 << 13) | 100
    c = t.parse_tunnel({"by_dst": [{"prefix": "10.0.0.0/8", "vlan": 5}], "default_vlan": 9})
    assert c.fixed_tci is None and c.routes == [(0x0A000000, 8, 5)] and c.default_tci == 9
    with pytest.raises(NFConfigError, match="exactly one of 'vlan' or 'by_dst'"):
        t.parse_tunnel({})
    with pytest.raises(NFConfigError, match="config.default_vlan: only with by_dst"):
        t.parse_tunnel({"vlan": 1, "default_vlan": 2})
    with pytest.raises(NFConfigError, match="config.pcp: must be 0..7"):
        t.parse_tunnel({"vlan": 1, "pcp": 8})


def test_acl_rules(tmp_path):
    r = t.parse_rule_line("deny 10.0.0.0/8 any tcp 1000-2000 22", "f")
    assert r == t.AclRule(False, 6, 0xFF, 0x0A000000, 8, 0, 0, 1000, 2000, 22, 22)
    r = t.parse_acl_rule({"action": "allow"}, "f")
    assert (r.proto_mask, r.src_len, r.sport_lo, r.sport_hi) == (0, 0, 0, 65535)
    assert t.parse_acl({}).default_allow is False
    for line, msg in [
        ("deny any any tcp any 70000", "f.dport: ports must be"),
        ("deny any any tcp 9-3 any", "f.sport: ports must be"),
        ("block any any tcp any any", "f.action: action must be"),
        ("deny any any 300 any any", "f.proto: must be 0..255"),
        ("deny any any", "f: expected 6 columns"),
    ]:
        with pytest.raises(NFConfigError, match=msg):
            t.parse_rule_line(line, "f")


def test_generated_acl_rules_parse(tmp_path):
    lines = t.generate_acl_rules(1500, seed=1)
    assert len(lines) == 1500
    (tmp_path / "acl.txt").write_text("\n".join(lines))
    cfg = t.parse_acl({"rule_file": "acl.txt"}, tmp_path)
    assert len(cfg.rules) == 1500
    assert any(r.allow for r in cfg.rules) and any(not r.allow for r in cfg.rules)


def test_bpf_lpm():
    c = t.parse_bpf_lpm({})
    assert c.lookups == 200 and len(c.routes) == 1024
    c = t.parse_bpf_lpm(
        {"lookups": 5, "routes": [{"prefix": "10.0.0.0/8", "next_hop_mac": "02:00:00:00:00:01"}]}
    )
    assert c.lookups == 5 and len(c.routes) == 1
    with pytest.raises(NFConfigError, match="config.lookups: must be 1..100000"):
        t.parse_bpf_lpm({"lookups": 0})


def test_generator_tool_writes_loadable_files(tmp_path, capsys):
    from tools import gen_nf_tables

    gen_nf_tables.main(["acl", "--count", "20", "--seed", "4"])
    (tmp_path / "a.txt").write_text(capsys.readouterr().out)
    assert len(t.parse_acl({"rule_file": "a.txt"}, tmp_path).rules) == 20
    gen_nf_tables.main(["routes", "--count", "30"])
    (tmp_path / "r.txt").write_text(capsys.readouterr().out)
    assert len(t.parse_ipforward({"route_file": "r.txt"}, tmp_path).routes) == 30
