"""Topology files: the one description of switches, workers and lab hosts.

The controller and the lab read the same file.  :func:`load` either returns a
complete, validated :class:`Topology` or raises :class:`TopologyError` naming
the file, the key path (``workers[1].vfs[0].mac``) and the reason; nothing is
ever half-loaded.  The schema is documented in ``docs/topology.rst``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Host",
    "Switch",
    "Topology",
    "TopologyError",
    "Vf",
    "Worker",
    "load",
    "parse",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_NETDEV_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")
_CONTROLLER_RE = re.compile(r"^(tcp|ssl):(?P<host>[^:\[\]]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$")
_MAX_OF_PORT = 0xFFFFFF00  # OFPP_MAX: numbers above are reserved ports


class TopologyError(ValueError):
    """A topology file is malformed: ``source``, ``path`` and ``reason`` say how."""

    def __init__(self, source: str, path: str, reason: str):
        self.source = source
        self.path = path
        self.reason = reason
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {reason}")


@dataclasses.dataclass(frozen=True)
class Switch:
    name: str
    dpid: int
    controller: str
    uplink_ports: tuple[int, ...]
    egress_port: int
    default_action: str  # "drop" or "forward" (to egress_port)

    @property
    def controller_host(self) -> str:
        return _CONTROLLER_RE.match(self.controller).group("host").strip("[]")

    @property
    def controller_port(self) -> int:
        return int(_CONTROLLER_RE.match(self.controller).group("port"))


@dataclasses.dataclass(frozen=True)
class Vf:
    """One SR-IOV virtual function (or, in the lab, the macvlan that stands in)."""

    mac: str
    pci: str | None = None
    netdev: str | None = None


@dataclasses.dataclass(frozen=True)
class Worker:
    name: str
    switch: str
    switch_port: int
    management: str
    cores: tuple[int, ...]
    vfs: tuple[Vf, ...]


@dataclasses.dataclass(frozen=True)
class Host:
    """A lab traffic host (source or sink) in its own network namespace."""

    name: str
    role: str  # "source" or "sink"
    switch: str
    switch_port: int
    mac: str
    ip: str  # address with prefix length, e.g. 10.1.0.1/16

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    switches: tuple[Switch, ...]
    workers: tuple[Worker, ...]
    hosts: tuple[Host, ...]
    source: str = "<string>"

    def switch(self, name: str) -> Switch:
        return next(s for s in self.switches if s.name == name)

    def switch_by_dpid(self, dpid: int) -> Switch | None:
        return next((s for s in self.switches if s.dpid == dpid), None)

    def workers_on(self, switch_name: str) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.switch == switch_name)

    def hosts_on(self, switch_name: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.switch == switch_name)


# --------------------------------------------------------------------------
# Validation helpers.  Each takes the key path it is checking so that every
# error names exactly the field that is wrong.


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, reason: str) -> None:
        raise TopologyError(self.source, path, reason)

    def mapping(self, value: Any, path: str, required: set[str], optional: set[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"key {key!r} must be a string")
        unknown = sorted(set(value) - required - optional)
        if unknown:
            allowed = ", ".join(sorted(required | optional))
            self.fail(_join(path, unknown[0]), f"unknown key (allowed: {allowed})")
        missing = sorted(required - set(value))
        if missing:
            self.fail(_join(path, missing[0]), "missing required key")
        return value

    def sequence(self, value: Any, path: str, *, allow_empty: bool = False) -> list:
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {_kind(value)}")
        if not value and not allow_empty:
            self.fail(path, "must not be empty")
        return value

    def name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            self.fail(
                path,
                f"{value!r} is not a valid name (lower-case letter, then up to 14 "
                "lower-case letters, digits or '-'; names become device names)",
            )
        return value

    def port(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_OF_PORT:
            self.fail(path, f"{value!r} is not an OpenFlow port number (1..{_MAX_OF_PORT})")
        return value

    def mac(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
            self.fail(path, f"{value!r} is not a MAC address like 02:00:00:00:00:01")
        mac = value.lower()
        if int(mac[:2], 16) & 1:
            self.fail(path, f"{value!r} is a multicast MAC address")
        if mac == "00:00:00:00:00:00":
            self.fail(path, "the all-zero MAC address is not usable")
        return mac

    def dpid(self, value: Any, path: str) -> int:
        if isinstance(value, bool):
            self.fail(path, f"{value!r} is not a datapath id")
        if isinstance(value, int):
            dpid = value
        elif isinstance(value, str):
            try:
                dpid = int(value, 16) if value.lower().startswith("0x") else int(value)
            except ValueError:
                self.fail(path, f"{value!r} is not a datapath id (an integer or 0x-prefixed hex)")
        else:
            self.fail(path, f"{value!r} is not a datapath id (an integer or 0x-prefixed hex)")
        if not 1 <= dpid < 2**64:
            self.fail(path, f"{value!r} is out of range (a datapath id is 1..2^64-1)")
        return dpid

    def address(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"{value!r} is not a host address")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9.-]*$", value):
                self.fail(path, f"{value!r} is neither an IP address nor a host name")
        return value

    def interface(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or "/" not in value:
            self.fail(path, f"{value!r} is not an address with prefix length, e.g. 10.1.0.1/16")
        try:
            ipaddress.ip_interface(value)
        except ValueError as exc:
            self.fail(path, f"{value!r} is not an address with prefix length: {exc}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            self.fail(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def unique(self, seen: dict, key: Any, path: str, what: str) -> None:
        if key in seen:
            self.fail(path, f"duplicate {what} {key!r} (also at {seen[key]})")
        seen[key] = path


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty"}.get(
        type(value), type(value).__name__
    )


def _parse_switch(c: _Checker, raw: Any, path: str) -> Switch:
    raw = c.mapping(
        raw,
        path,
        required={"name", "dpid", "controller", "uplink_ports", "egress_port"},
        optional={"default_action"},
    )
    controller = raw["controller"]
    if not isinstance(controller, str) or not _CONTROLLER_RE.match(controller):
        c.fail(_join(path, "controller"), f"{controller!r} is not like tcp:127.0.0.1:6653")
    if not 1 <= int(_CONTROLLER_RE.match(controller).group("port")) <= 65535:
        c.fail(_join(path, "controller"), f"{controller!r} has a TCP port out of range")
    uplinks = c.sequence(raw["uplink_ports"], _join(path, "uplink_ports"))
    ports = tuple(c.port(p, f"{path}.uplink_ports[{i}]") for i, p in enumerate(uplinks))
    seen: dict = {}
    for i, p in enumerate(ports):
        c.unique(seen, p, f"{path}.uplink_ports[{i}]", "port")
    egress = c.port(raw["egress_port"], _join(path, "egress_port"))
    if egress in ports:
        c.fail(_join(path, "egress_port"), f"port {egress} is also an uplink port")
    return Switch(
        name=c.name(raw["name"], _join(path, "name")),
        dpid=c.dpid(raw["dpid"], _join(path, "dpid")),
        controller=controller,
        uplink_ports=ports,
        egress_port=egress,
        default_action=c.choice(
            raw.get("default_action", "drop"), _join(path, "default_action"), ("drop", "forward")
        ),
    )


def _parse_vf(c: _Checker, raw: Any, path: str) -> Vf:
    raw = c.mapping(raw, path, required={"mac"}, optional={"pci", "netdev"})
    if ("pci" in raw) == ("netdev" in raw):
        c.fail(path, "a VF names exactly one of pci (real hardware) or netdev (lab device)")
    pci = raw.get("pci")
    if pci is not None and (not isinstance(pci, str) or not _PCI_RE.match(pci.lower())):
        c.fail(_join(path, "pci"), f"{pci!r} is not a PCI address like 0000:03:10.0")
    netdev = raw.get("netdev")
    if netdev is not None and (not isinstance(netdev, str) or not _NETDEV_RE.match(netdev)):
        c.fail(_join(path, "netdev"), f"{netdev!r} is not a network device name (max 15 chars)")
    return Vf(mac=c.mac(raw["mac"], _join(path, "mac")), pci=pci and pci.lower(), netdev=netdev)


def _parse_worker(c: _Checker, raw: Any, path: str) -> Worker:
    raw = c.mapping(
        raw,
        path,
        required={"name", "switch", "switch_port", "management", "cores", "vfs"},
        optional=set(),
    )
    cores_raw = c.sequence(raw["cores"], _join(path, "cores"))
    cores = []
    seen: dict = {}
    for i, core in enumerate(cores_raw):
        cpath = f"{path}.cores[{i}]"
        if isinstance(core, bool) or not isinstance(core, int) or not 0 <= core < 4096:
            c.fail(cpath, f"{core!r} is not a CPU core number")
        c.unique(seen, core, cpath, "core")
        cores.append(core)
    vfs_raw = c.sequence(raw["vfs"], _join(path, "vfs"))
    vfs = tuple(_parse_vf(c, v, f"{path}.vfs[{i}]") for i, v in enumerate(vfs_raw))
    for field in ("pci", "netdev"):
        seen = {}
        for i, vf in enumerate(vfs):
            if getattr(vf, field) is not None:
                c.unique(seen, getattr(vf, field), f"{path}.vfs[{i}].{field}", field)
    return Worker(
        name=c.name(raw["name"], _join(path, "name")),
        switch=c.name(raw["switch"], _join(path, "switch")),
        switch_port=c.port(raw["switch_port"], _join(path, "switch_port")),
        management=c.address(raw["management"], _join(path, "management")),
        cores=tuple(cores),
        vfs=vfs,
    )


def _parse_host(c: _Checker, raw: Any, path: str) -> Host:
    raw = c.mapping(
        raw, path, required={"name", "role", "switch", "switch_port", "mac", "ip"}, optional=set()
    )
    return Host(
        name=c.name(raw["name"], _join(path, "name")),
        role=c.choice(raw["role"], _join(path, "role"), ("source", "sink")),
        switch=c.name(raw["switch"], _join(path, "switch")),
        switch_port=c.port(raw["switch_port"], _join(path, "switch_port")),
        mac=c.mac(raw["mac"], _join(path, "mac")),
        ip=c.interface(raw["ip"], _join(path, "ip")),
    )


def parse(data: Any, source: str = "<string>") -> Topology:
    """Validate already-parsed YAML data and build a :class:`Topology`."""
    c = _Checker(source)
    data = c.mapping(data, "", required={"name", "switches", "workers"}, optional={"hosts"})
    name = c.name(data["name"], "name")
    switches = tuple(
        _parse_switch(c, s, f"switches[{i}]")
        for i, s in enumerate(c.sequence(data["switches"], "switches"))
    )
    workers = tuple(
        _parse_worker(c, w, f"workers[{i}]")
        for i, w in enumerate(c.sequence(data["workers"], "workers"))
    )
    hosts_raw = data.get("hosts", [])
    hosts = tuple(
        _parse_host(c, h, f"hosts[{i}]")
        for i, h in enumerate(c.sequence(hosts_raw, "hosts", allow_empty=True))
    )

    # Cross-references and uniqueness across the whole file.
    names: dict = {}
    for kind, items in (("switches", switches), ("workers", workers), ("hosts", hosts)):
        for i, item in enumerate(items):
            c.unique(names, item.name, f"{kind}[{i}].name", "name")
    dpids: dict = {}
    for i, s in enumerate(switches):
        c.unique(dpids, s.dpid, f"switches[{i}].dpid", "dpid")
    by_name = {s.name: s for s in switches}
    ports: dict = {}
    for i, s in enumerate(switches):
        for j, p in enumerate(s.uplink_ports):
            ports[(s.name, p)] = f"switches[{i}].uplink_ports[{j}]"
    macs: dict = {}
    source_ports: dict = {}
    for kind, items in (("workers", workers), ("hosts", hosts)):
        for i, item in enumerate(items):
            path = f"{kind}[{i}]"
            if item.switch not in by_name:
                c.fail(f"{path}.switch", f"no switch named {item.switch!r}")
            sw = by_name[item.switch]
            port_path = f"{path}.switch_port"
            if kind == "hosts" and item.role == "sink" and item.switch_port == sw.egress_port:
                pass  # the sink sits on the egress port: that is the point of it
            elif item.switch_port == sw.egress_port:
                c.fail(port_path, f"port {item.switch_port} is the egress port of {sw.name}")
            if kind == "hosts" and item.role == "source":
                if item.switch_port not in sw.uplink_ports:
                    c.fail(port_path, f"a source host must sit on an uplink port of {sw.name}")
                c.unique(source_ports, (item.switch, item.switch_port), port_path, "switch port")
                c.unique(macs, item.mac, f"{path}.mac", "MAC")
                continue  # the uplink port itself is already counted
            c.unique(ports, (item.switch, item.switch_port), port_path, "switch port")
            if kind == "workers":
                for j, vf in enumerate(item.vfs):
                    c.unique(macs, vf.mac, f"{path}.vfs[{j}].mac", "MAC")
            else:
                c.unique(macs, item.mac, f"{path}.mac", "MAC")
    return Topology(name=name, switches=switches, workers=workers, hosts=hosts, source=source)


def load(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TopologyError(source, "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", exc)
        raise TopologyError(source, "", f"not valid YAML: {where}{problem}") from None
    return parse(data, source)
