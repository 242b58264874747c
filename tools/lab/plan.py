"""What the lab builds from a topology: a pure plan of named resources.

The plan says which namespaces, bridges, veth links and macvlan devices the
lab makes and what each is called; :mod:`tools.lab.lab` carries it out.
Names carry the lab's prefix so several labs can coexist on one machine.
"""

from __future__ import annotations

import dataclasses
import re

from quadrant_app.topology import Topology

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")

WORKER_UPLINK = "up0"  # the worker's uplink inside its namespace (the "PF")
HOST_IFACE = "eth0"  # a traffic host's interface inside its namespace


class PlanError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Bridge:
    switch: str
    name: str
    dpid: int
    controller: str


@dataclasses.dataclass(frozen=True)
class Link:
    """A veth pair: ``root`` end on the bridge at ``ofport``, ``inner`` end in ``netns``."""

    node: str  # worker or host name
    netns: str
    bridge: str
    ofport: int
    root: str
    inner: str
    mac: str | None = None  # MAC of the inner end (hosts only)
    ip: str | None = None  # address/prefix of the inner end (hosts only)


@dataclasses.dataclass(frozen=True)
class Macvlan:
    """A macvlan (mode private) on a worker's uplink: the lab's SR-IOV VF."""

    worker: str
    netns: str
    name: str
    mac: str
    parent: str = WORKER_UPLINK


@dataclasses.dataclass(frozen=True)
class Route:
    """A host's on-link route and permanent neighbour entry towards another host."""

    netns: str
    dest: str  # destination network (CIDR)
    address: str  # the other host's address
    mac: str  # ... and MAC


@dataclasses.dataclass(frozen=True)
class Plan:
    prefix: str
    bridges: tuple[Bridge, ...]
    namespaces: tuple[str, ...]
    links: tuple[Link, ...]
    macvlans: tuple[Macvlan, ...]
    routes: tuple[Route, ...]

    def netns(self, node: str) -> str:
        for link in self.links:
            if link.node == node:
                return link.netns
        raise KeyError(f"no worker or host named {node!r} in this lab")

    def bridge(self, switch: str | None = None) -> str:
        if switch is None:
            return self.bridges[0].name
        return next(b.name for b in self.bridges if b.switch == switch)


def make_plan(topo: Topology, prefix: str = "q", controller: str | None = None) -> Plan:
    """The lab for ``topo``.  ``controller`` overrides every switch's controller target."""
    if not PREFIX_RE.match(prefix):
        raise PlanError(f"lab prefix {prefix!r} must be a lower-case letter and up to 3 more")
    bridges = []
    index = {}
    for i, sw in enumerate(topo.switches):
        index[sw.name] = i
        bridges.append(Bridge(sw.name, f"{prefix}br{i}", sw.dpid, controller or sw.controller))
    namespaces = []
    links = []
    macvlans = []
    for w in topo.workers:
        ns = f"{prefix}-{w.name}"
        namespaces.append(ns)
        br = bridges[index[w.switch]].name
        links.append(
            Link(
                w.name,
                ns,
                br,
                w.switch_port,
                f"{prefix}{index[w.switch]}p{w.switch_port}",
                WORKER_UPLINK,
            )
        )
        for vf in w.vfs:
            if vf.netdev is None:
                raise PlanError(
                    f"{topo.source}: worker {w.name} VF {vf.mac} has no netdev: the lab can "
                    "only build VFs named by a lab device (netdev), not PCI addresses"
                )
            macvlans.append(Macvlan(w.name, ns, vf.netdev, vf.mac))
    for h in topo.hosts:
        ns = f"{prefix}-{h.name}"
        namespaces.append(ns)
        br = bridges[index[h.switch]].name
        links.append(
            Link(
                h.name,
                ns,
                br,
                h.switch_port,
                f"{prefix}{index[h.switch]}p{h.switch_port}",
                HOST_IFACE,
                mac=h.mac,
                ip=h.ip,
            )
        )
    routes = []
    for h in topo.hosts:
        for other in topo.hosts:
            if other is not h:
                net = _network(other.ip)
                routes.append(Route(f"{prefix}-{h.name}", net, other.address, other.mac))
    for link in links:
        if len(link.root) > 15:
            raise PlanError(f"device name {link.root!r} is longer than 15 characters")
    return Plan(
        prefix, tuple(bridges), tuple(namespaces), tuple(links), tuple(macvlans), tuple(routes)
    )


def _network(interface: str) -> str:
    import ipaddress

    return str(ipaddress.ip_interface(interface).network)
