"""Parse the basic NFs' configs into plain tables (pure: no DPDK, no I/O but files named).

Every function raises :class:`worker.nf_errors.NFConfigError` naming the field
(``routes[3].prefix``, ``rule_file:12``) and the reason.  The native NFs in
``cext/`` load the results into ``rte_lpm`` / ``rte_acl``.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.nf_errors import NFConfigError

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132}


def _check_keys(config: Mapping, allowed: set[str], field: str = "config") -> None:
    if not isinstance(config, Mapping):
        raise NFConfigError(field, f"must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise NFConfigError(
            f"{field}.{unknown[0]}", f"unknown option (known: {', '.join(sorted(allowed))})"
        )


def parse_prefix(text, field: str) -> tuple[int, int]:
    """``"10.1.0.0/16"`` -> ``(0x0a010000, 16)``; a bare address is a /32."""
    if not isinstance(text, str):
        raise NFConfigError(field, f"must be an IPv4 prefix string, got {text!r}")
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise NFConfigError(field, f"not an IPv4 prefix: {text!r} ({exc})") from None
    return int(net.network_address), net.prefixlen


def parse_mac(text, field: str) -> bytes:
    if isinstance(text, str):
        parts = text.strip().split(":")
        if len(parts) == 6 and all(len(p) == 2 for p in parts):
            try:
                return bytes(int(p, 16) for p in parts)
            except ValueError:
                pass
    raise NFConfigError(field, f"not a MAC address (aa:bb:cc:dd:ee:ff): {text!r}")


def parse_int(value, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NFConfigError(field, f"must be an integer {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise NFConfigError(field, f"must be {lo}..{hi}, got {value}")
    return value


def _resolve(path, field: str, base_dir: Path | None) -> Path:
    if not isinstance(path, str) or not path:
        raise NFConfigError(field, f"must be a file path, got {path!r}")
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.is_file():
        raise NFConfigError(field, f"no such file: {p}")
    return p


# --- routes (ipforward, bpf_lpm) ------------------------------------------------


def load_routes(config: Mapping, base_dir: Path | None) -> list[tuple[int, int, bytes]]:
    """``routes: [{prefix, next_hop_mac}]`` and/or ``route_file`` (lines
    ``PREFIX NEXT_HOP_MAC``, ``#`` comments) -> ``[(network, depth, mac)]``."""
    routes = []
    inline = config.get("routes", [])
    if not isinstance(inline, list):
        raise NFConfigError("config.routes", "must be a list of {prefix, next_hop_mac}")
    for i, r in enumerate(inline):
        f = f"config.routes[{i}]"
        _check_keys(r, {"prefix", "next_hop_mac"}, f)
        for key in ("prefix", "next_hop_mac"):
            if key not in r:
                raise NFConfigError(f"{f}.{key}", "missing")
        net, depth = parse_prefix(r["prefix"], f"{f}.prefix")
        routes.append((net, depth, parse_mac(r["next_hop_mac"], f"{f}.next_hop_mac")))
    if "route_file" in config:
        path = _resolve(config["route_file"], "config.route_file", base_dir)
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            f = f"config.route_file {path}:{lineno}"
            parts = line.split()
            if len(parts) != 2:
                raise NFConfigError(f, f"expected 'PREFIX NEXT_HOP_MAC', got {line!r}")
            net, depth = parse_prefix(parts[0], f)
            routes.append((net, depth, parse_mac(parts[1], f)))
    return routes


def generate_routes(count: int, seed: int = 1) -> list[tuple[int, int, bytes]]:
    """``count`` distinct random prefixes (/8../32, mostly /16../24) with random MACs."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < count:
        depth = rng.choice((8, 12, 16, 16, 20, 22, 24, 24, 24, 28, 32))
        net = rng.getrandbits(32) & ((0xFFFFFFFF << (32 - depth)) & 0xFFFFFFFF)
        if (net, depth) in seen:
            continue
        seen.add((net, depth))
        mac = bytes([0x02, 0x00]) + rng.getrandbits(32).to_bytes(4, "big")
        out.append((net, depth, mac))
    return out


def format_routes(routes) -> str:
    lines = ["# prefix next_hop_mac"]
    for net, depth, mac in routes:
        lines.append(f"{ipaddress.IPv4Address(net)}/{depth} {mac.hex(':')}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class IpForwardConfig:
    routes: list[tuple[int, int, bytes]]
    src_mac: bytes | None


def parse_ipforward(config: Mapping, base_dir: Path | None = None) -> IpForwardConfig:
    _check_keys(config, {"routes", "route_file", "src_mac"})
    routes = load_routes(config, base_dir)
    if not routes:
        raise NFConfigError("config.routes", "ipforward needs routes or a route_file")
    src = config.get("src_mac")
    return IpForwardConfig(routes, parse_mac(src, "config.src_mac") if src is not None else None)


# --- tunnel ---------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelConfig:
    fixed_tci: int | None  # tag every packet with this TCI
    routes: list[tuple[int, int, int]]  # (network, depth, tci) by destination
    default_tci: int | None  # no route matched (None: forward untagged)


def _tci(vlan, pcp, field: str) -> int:
    return (pcp << 13) | parse_int(vlan, field, 1, 4094)


def parse_tunnel(config: Mapping) -> TunnelConfig:
    """``{vlan: 100}`` (fixed) or ``{by_dst: [{prefix, vlan}], default_vlan: 7}``."""
    _check_keys(config, {"vlan", "pcp", "by_dst", "default_vlan"})
    pcp = parse_int(config.get("pcp", 0), "config.pcp", 0, 7)
    if ("vlan" in config) == ("by_dst" in config):
        raise NFConfigError("config", "tunnel needs exactly one of 'vlan' or 'by_dst'")
    if "vlan" in config:
        if "default_vlan" in config:
            raise NFConfigError("config.default_vlan", "only with by_dst")
        return TunnelConfig(_tci(config["vlan"], pcp, "config.vlan"), [], None)
    by_dst = config["by_dst"]
    if not isinstance(by_dst, list) or not by_dst:
        raise NFConfigError("config.by_dst", "must be a non-empty list of {prefix, vlan}")
    routes = []
    for i, r in enumerate(by_dst):
        f = f"config.by_dst[{i}]"
        _check_keys(r, {"prefix", "vlan"}, f)
        for key in ("prefix", "vlan"):
            if key not in r:
                raise NFConfigError(f"{f}.{key}", "missing")
        net, depth = parse_prefix(r["prefix"], f"{f}.prefix")
        routes.append((net, depth, _tci(r["vlan"], pcp, f"{f}.vlan")))
    default = config.get("default_vlan")
    default_tci = _tci(default, pcp, "config.default_vlan") if default is not None else None
    return TunnelConfig(None, routes, default_tci)


# --- acl ------------------------------------------------------------------------


@dataclass(frozen=True)
class AclRule:
    allow: bool
    proto: int  # 0 with proto_mask 0: any
    proto_mask: int
    src: int
    src_len: int
    dst: int
    dst_len: int
    sport_lo: int
    sport_hi: int
    dport_lo: int
    dport_hi: int


@dataclass(frozen=True)
class AclConfig:
    rules: list[AclRule]
    default_allow: bool


def _action(text, field: str) -> bool:
    if text in ("allow", "deny"):
        return text == "allow"
    raise NFConfigError(field, f"action must be 'allow' or 'deny', got {text!r}")


def _net_or_any(text, field: str) -> tuple[int, int]:
    if text in ("any", "*", None):
        return 0, 0
    return parse_prefix(text, field)


def _proto(text, field: str) -> tuple[int, int]:
    if text in ("any", "*", None):
        return 0, 0
    if isinstance(text, str) and text.lower() in PROTOCOLS:
        return PROTOCOLS[text.lower()], 0xFF
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    return parse_int(text, field, 0, 255), 0xFF


def _ports(text, field: str) -> tuple[int, int]:
    if text in ("any", "*", None):
        return 0, 65535
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if isinstance(text, str):
        lo, sep, hi = text.partition("-")
        if lo.strip().isdigit() and (not sep or hi.strip().isdigit()):
            a, b = int(lo), int(hi if sep else lo)
            if 0 <= a <= b <= 65535:
                return a, b
    raise NFConfigError(field, f"ports must be 'any', N or LO-HI within 0..65535, got {text!r}")


def parse_acl_rule(fields: Mapping, field: str) -> AclRule:
    _check_keys(fields, {"action", "src", "dst", "proto", "sport", "dport"}, field)
    if "action" not in fields:
        raise NFConfigError(f"{field}.action", "missing")
    src, src_len = _net_or_any(fields.get("src"), f"{field}.src")
    dst, dst_len = _net_or_any(fields.get("dst"), f"{field}.dst")
    proto, proto_mask = _proto(fields.get("proto"), f"{field}.proto")
    sport = _ports(fields.get("sport"), f"{field}.sport")
    dport = _ports(fields.get("dport"), f"{field}.dport")
    if (sport != (0, 65535) or dport != (0, 65535)) and proto not in (6, 17, 132):
        raise NFConfigError(f"{field}.proto", "port ranges need proto tcp, udp or sctp")
    return AclRule(
        _action(fields["action"], f"{field}.action"),
        proto,
        proto_mask,
        src,
        src_len,
        dst,
        dst_len,
        *sport,
        *dport,
    )


RULE_COLUMNS = ("action", "src", "dst", "proto", "sport", "dport")


def parse_rule_line(line: str, field: str) -> AclRule:
    """``ACTION SRC DST PROTO SPORT DPORT``, e.g. ``deny 10.0.0.0/8 any tcp any 22``."""
    parts = line.split()
    if len(parts) != len(RULE_COLUMNS):
        raise NFConfigError(
            field, f"expected {len(RULE_COLUMNS)} columns ({' '.join(RULE_COLUMNS)}), got {line!r}"
        )
    return parse_acl_rule(dict(zip(RULE_COLUMNS, parts, strict=True)), field)


def parse_acl(config: Mapping, base_dir: Path | None = None) -> AclConfig:
    """``rules: [{action, src, dst, proto, sport, dport}]`` and/or ``rule_file``;
    ``default: allow|deny`` (default deny).  The first matching rule wins."""
    _check_keys(config, {"rules", "rule_file", "default"})
    default = _action(config.get("default", "deny"), "config.default")
    rules = []
    inline = config.get("rules", [])
    if not isinstance(inline, list):
        raise NFConfigError("config.rules", "must be a list of rules")
    for i, r in enumerate(inline):
        rules.append(parse_acl_rule(r, f"config.rules[{i}]"))
    if "rule_file" in config:
        path = _resolve(config["rule_file"], "config.rule_file", base_dir)
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                rules.append(parse_rule_line(line, f"config.rule_file {path}:{lineno}"))
    return AclConfig(rules, default)


def generate_acl_rules(count: int, seed: int = 1) -> list[str]:
    """A ClassBench-like rule set of ``count`` lines: prefixes of mixed lengths,
    common service ports and ranges, mostly allow with some deny."""
    rng = random.Random(seed)
    services = [22, 25, 53, 80, 123, 443, 3306, 5432, 6379, 8080, 8443]

    def prefix() -> str:
        depth = rng.choice((0, 8, 16, 16, 24, 24, 24, 32))
        if depth == 0:
            return "any"
        net = rng.getrandbits(32) & ((0xFFFFFFFF << (32 - depth)) & 0xFFFFFFFF)
        return f"{ipaddress.IPv4Address(net)}/{depth}"

    def ports() -> str:
        kind = rng.random()
        if kind < 0.5:
            return "any"
        if kind < 0.8:
            return str(rng.choice(services))
        lo = rng.randrange(1024, 60000)
        return f"{lo}-{lo + rng.randrange(1, 5000)}"

    lines = []
    for _ in range(count):
        proto = rng.choice(("tcp", "tcp", "tcp", "udp", "udp", "icmp", "any"))
        action = "deny" if rng.random() < 0.3 else "allow"
        if proto in ("tcp", "udp"):
            sport, dport = ("any" if rng.random() < 0.8 else ports()), ports()
        else:
            sport = dport = "any"
        lines.append(f"{action} {prefix()} {prefix()} {proto} {sport} {dport}")
    return lines


# --- bpf_lpm --------------------------------------------------------------------


@dataclass(frozen=True)
class BpfLpmConfig:
    lookups: int
    routes: list[tuple[int, int, bytes]]


def parse_bpf_lpm(config: Mapping, base_dir: Path | None = None) -> BpfLpmConfig:
    """``lookups`` (default 200) LPMs per packet over ``routes``/``route_file``
    or ``table_size`` generated prefixes (default 1024, ``seed``)."""
    _check_keys(config, {"lookups", "routes", "route_file", "table_size", "seed"})
    lookups = parse_int(config.get("lookups", 200), "config.lookups", 1, 100_000)
    routes = load_routes(config, base_dir)
    if "table_size" in config or not routes:
        size = parse_int(config.get("table_size", 1024), "config.table_size", 1, 1_000_000)
        seed = parse_int(config.get("seed", 1), "config.seed", 0, 2**32 - 1)
        routes += generate_routes(size, seed)
    return BpfLpmConfig(lookups, routes)
