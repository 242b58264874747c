"""Chain specs: validation of what ``POST /v1/chains`` takes, and filter matching.

:func:`parse_chain` turns a decoded JSON body into a :class:`ChainSpec` or
raises :class:`SpecError` naming the field (``filter.dst_ports``) and the
reason; it never returns half a chain.  Filters are matched against a
:class:`~quadrant_app.flowkey.FlowKey` with integer compares only, and ordered
by :func:`precedence` (the rule is documented in ``docs/controller.rst``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import netaddr

from quadrant_app.flowkey import ETH_IPV4, ETH_IPV6, PORT_PROTOS, PROTO_NUMBERS
from worker.nf_errors import NFConfigError
from worker.thirdparty_spec import TYPE as THIRDPARTY
from worker.thirdparty_spec import parse_thirdparty

# NF types the data plane knows (issue 4 and 5); a deployment can extend the
# list with the `nf_types` option.
DEFAULT_NF_TYPES = (
    "empty",
    "tunnel",
    "ipforward",
    "acl",
    "bpf_lpm",
    "urlfilter",
    "encrypt",
    "decrypt",
    "nat",
    "thirdparty",  # an unmodified program behind a veth (docs/thirdparty.rst)
)

DEFAULT_SCALING = {"alpha": 0.6, "beta": 0.9, "load_cap": 0.9}
MAX_NAME = 63
MAX_NFS = 16
MIN_PRIORITY, MAX_PRIORITY = 0, 1000
_FULL_PORTS = (0, 65535)


class SpecError(ValueError):
    """A chain spec (or another API body) is wrong: ``field`` says where, ``reason`` why."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ConflictError(SpecError):
    """The input is well-formed but clashes with what is registered (HTTP 409)."""


@dataclasses.dataclass(frozen=True)
class Prefix:
    """An IP prefix as integers, so matching a packet is two int operations."""

    family: int  # ETH_IPV4 or ETH_IPV6
    network: int
    mask: int
    length: int
    text: str

    def contains(self, addr: int) -> bool:
        return addr & self.mask == self.network

    def intersects(self, other: Prefix) -> bool:
        if self.family != other.family:
            return False
        mask = self.mask & other.mask  # the shorter prefix's mask
        return self.network & mask == other.network & mask


@dataclasses.dataclass(frozen=True)
class Filter:
    """The traffic a chain takes.  ``None`` means "any" for every field."""

    src: Prefix | None = None
    dst: Prefix | None = None
    proto: int | None = None  # IP protocol number
    src_ports: tuple[int, int] = _FULL_PORTS
    dst_ports: tuple[int, int] = _FULL_PORTS

    @property
    def family(self) -> int | None:
        p = self.src or self.dst
        return p.family if p else None

    def matches(self, key) -> bool:
        """Does the flow ``key`` (a FlowKey) fall in this filter?"""
        src, dst = self.src, self.dst
        if src is not None and (key.eth_type != src.family or not src.contains(key.src)):
            return False
        if dst is not None and (key.eth_type != dst.family or not dst.contains(key.dst)):
            return False
        if self.proto is not None:
            if key.proto != self.proto:
                return False
            lo, hi = self.src_ports
            if not lo <= key.sport <= hi:
                return False
            lo, hi = self.dst_ports
            if not lo <= key.dport <= hi:
                return False
        return True

    def overlaps(self, other: Filter) -> bool:
        """Could one flow match both filters?"""
        fa, fb = self.family, other.family
        if fa is not None and fb is not None and fa != fb:
            return False
        for a, b in ((self.src, other.src), (self.dst, other.dst)):
            if a is not None and b is not None and not a.intersects(b):
                return False
        if self.proto is not None and other.proto is not None:
            if self.proto != other.proto:
                return False
            for (alo, ahi), (blo, bhi) in (
                (self.src_ports, other.src_ports),
                (self.dst_ports, other.dst_ports),
            ):
                if ahi < blo or bhi < alo:
                    return False
        return True

    def specificity(self) -> tuple:
        """Bigger is more specific; see :func:`precedence`."""
        return (
            self.dst.length if self.dst else -1,
            self.src.length if self.src else -1,
            self.proto is not None,
            -(self.dst_ports[1] - self.dst_ports[0]),
            -(self.src_ports[1] - self.src_ports[0]),
        )

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        if self.src:
            out["src"] = self.src.text
        if self.dst:
            out["dst"] = self.dst.text
        if self.proto is not None:
            out["proto"] = _PROTO_NAMES.get(self.proto, self.proto)
            if self.src_ports != _FULL_PORTS:
                out["src_ports"] = _ports_text(self.src_ports)
            if self.dst_ports != _FULL_PORTS:
                out["dst_ports"] = _ports_text(self.dst_ports)
        return out


@dataclasses.dataclass(frozen=True)
class Scaling:
    alpha: float
    beta: float
    load_cap: float
    # The measured highest packet rate of one instance of this chain on these workers,
    # for paths whose limit the NFs' own cycle counters do not show (the lab: the
    # af_packet I/O and one shared switch and core; docs/scaling.rst, *In the lab*).
    # None: the limit is the one the agents measure.
    max_pps: float | None = None


@dataclasses.dataclass(frozen=True)
class NfSpec:
    type: str
    config: dict


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    name: str
    nfs: tuple[NfSpec, ...]
    filter: Filter
    slo_us: float
    scaling: Scaling
    priority: int = 0
    # Replies of this chain's flows (the reversed 5-tuple, arriving from the
    # egress side) go through the same instance; otherwise they bypass it.
    bidirectional: bool = False


def precedence(spec: ChainSpec, seq: int) -> tuple:
    """Sort key of a chain among all chains: the first that matches a flow wins.

    Higher ``priority`` first; at equal priority the more specific filter
    (longer destination prefix, then longer source prefix, then a protocol
    over none, then the narrower destination and source port ranges); at
    equal specificity the chain registered first (lower ``seq``).
    """
    return (-spec.priority, *(-x for x in spec.filter.specificity()), seq)


_PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
CHAIN_FIELDS = {"name", "nfs", "filter", "slo_us", "scaling", "priority", "bidirectional"}
CHAIN_REQUIRED = {"name", "nfs", "filter", "slo_us"}
FILTER_FIELDS = {"src", "dst", "proto", "src_ports", "dst_ports"}
SCALING_FIELDS = {"alpha", "beta", "load_cap", "max_pps"}


def _ports_text(r: tuple[int, int]) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def _fields(value: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise SpecError(path, f"must be an object, not {_kind(value)}")
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise SpecError(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in value:
            raise SpecError(f"{path}.{key}" if path else key, "missing required field")
    return value


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"must be a number, not {_kind(value)}")
    return float(value)


def parse_prefix(value: Any, path: str) -> Prefix:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a prefix string like 10.1.0.0/16, not {_kind(value)}")
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise SpecError(path, f"{value!r} is not an IPv4 or IPv6 prefix") from None
    if net.ip != net.network:
        raise SpecError(path, f"{value!r} has host bits set (the prefix is {net.cidr})")
    family = ETH_IPV4 if net.version == 4 else ETH_IPV6
    return Prefix(family, int(net.network), int(net.netmask), net.prefixlen, str(net.cidr))


def parse_ports(value: Any, path: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str):
        parts = value.split("-")
        if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            raise SpecError(path, f"{value!r} is not a port or a range like 80-8080")
        lo, hi = int(parts[0]), int(parts[-1])
    else:
        raise SpecError(path, f"must be a port number or a range string, not {_kind(value)}")
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise SpecError(path, f"{value!r} is out of range (ports are 0..65535)")
    if lo > hi:
        raise SpecError(path, f"{value!r} is an empty range (low end above high end)")
    return lo, hi


def parse_filter(value: Any, path: str = "filter") -> Filter:
    raw = _fields(value, path, FILTER_FIELDS)
    src = parse_prefix(raw["src"], f"{path}.src") if "src" in raw else None
    dst = parse_prefix(raw["dst"], f"{path}.dst") if "dst" in raw else None
    if src and dst and src.family != dst.family:
        raise SpecError(f"{path}.dst", "src and dst must be of the same IP version")
    proto = None
    if "proto" in raw:
        p = raw["proto"]
        if isinstance(p, str) and p.lower() in PROTO_NUMBERS:
            proto = PROTO_NUMBERS[p.lower()]
        elif isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255:
            proto = p
        else:
            names = ", ".join(sorted(PROTO_NUMBERS))
            raise SpecError(f"{path}.proto", f"{p!r} is not one of {names} or a number 0..255")
    ports = {}
    for field in ("src_ports", "dst_ports"):
        if field in raw:
            if proto not in PORT_PROTOS:
                raise SpecError(f"{path}.{field}", "port ranges need proto tcp, udp or sctp")
            ports[field] = parse_ports(raw[field], f"{path}.{field}")
    return Filter(src=src, dst=dst, proto=proto, **ports)


def parse_chain(body: Any, nf_types=DEFAULT_NF_TYPES) -> ChainSpec:
    """Validate a chain spec (decoded JSON) completely, or raise :class:`SpecError`."""
    raw = _fields(body, "", CHAIN_FIELDS, CHAIN_REQUIRED)
    name = raw["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise SpecError("name", f"must be a non-empty string of at most {MAX_NAME} characters")
    if not name.isprintable():
        raise SpecError("name", "must contain printable characters only")
    nfs_raw = raw["nfs"]
    if not isinstance(nfs_raw, list) or not nfs_raw:
        raise SpecError("nfs", "must be a non-empty array of {type, config}")
    if len(nfs_raw) > MAX_NFS:
        raise SpecError("nfs", f"a chain has at most {MAX_NFS} NFs")
    nfs = []
    for i, nf in enumerate(nfs_raw):
        path = f"nfs[{i}]"
        nf = _fields(nf, path, {"type", "config"}, {"type"})
        if nf["type"] not in nf_types:
            raise SpecError(
                f"{path}.type", f"unknown NF type {nf['type']!r} (known: {', '.join(nf_types)})"
            )
        config = nf.get("config", {})
        if not isinstance(config, dict):
            raise SpecError(f"{path}.config", f"must be an object, not {_kind(config)}")
        if nf["type"] == THIRDPARTY:
            try:  # the worker's own schema: refused here with the same field and reason
                parse_thirdparty(config, f"{path}.config")
            except NFConfigError as exc:
                raise SpecError(exc.field, exc.reason) from None
        nfs.append(NfSpec(nf["type"], config))
    filt = parse_filter(raw["filter"])
    slo = _number(raw["slo_us"], "slo_us")
    if not slo > 0 or slo == float("inf"):
        raise SpecError("slo_us", f"must be a positive number of microseconds, not {slo:g}")
    knobs = dict(DEFAULT_SCALING)
    max_pps = None
    if "scaling" in raw:
        for key, value in _fields(raw["scaling"], "scaling", SCALING_FIELDS).items():
            if key == "max_pps":
                max_pps = _number(value, "scaling.max_pps")
                if not 0 < max_pps < float("inf"):
                    raise SpecError("scaling.max_pps", f"must be a positive rate, not {max_pps:g}")
                continue
            knobs[key] = _number(value, f"scaling.{key}")
    for key, value in knobs.items():
        if not 0 < value <= 1:
            raise SpecError(f"scaling.{key}", f"must be in (0, 1], not {value:g}")
    if knobs["alpha"] >= knobs["beta"]:
        raise SpecError("scaling.alpha", "must be below scaling.beta (alpha < beta)")
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise SpecError("priority", f"must be an integer, not {_kind(priority)}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise SpecError("priority", f"must be in {MIN_PRIORITY}..{MAX_PRIORITY}, not {priority}")
    bidirectional = raw.get("bidirectional", False)
    if not isinstance(bidirectional, bool):
        raise SpecError("bidirectional", f"must be true or false, not {_kind(bidirectional)}")
    return ChainSpec(
        name=name,
        nfs=tuple(nfs),
        filter=filt,
        slo_us=slo,
        scaling=Scaling(**knobs, max_pps=max_pps),
        priority=priority,
        bidirectional=bidirectional,
    )


def chain_to_json(spec: ChainSpec) -> dict:
    return {
        "name": spec.name,
        "nfs": [{"type": nf.type, "config": nf.config} for nf in spec.nfs],
        "filter": spec.filter.to_json(),
        "slo_us": spec.slo_us,
        "scaling": {k: v for k, v in dataclasses.asdict(spec.scaling).items() if v is not None},
        "priority": spec.priority,
        "bidirectional": spec.bidirectional,
    }
