"""Lab-in-a-box: build a topology on one machine, and take it down again.

``Lab.up`` makes a private Open vSwitch (own run directory), one userspace
bridge per switch, one network namespace per worker and per traffic host,
veth links to the bridges on the topology's port numbers, and a macvlan per
VF on each worker's uplink.  Before it makes anything it writes a journal
entry to ``state.json`` in the run directory, so ``Lab.down`` removes exactly
what was made, also after a crash half way, and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from quadrant_app.topology import Topology
from tools.lab.lease import DATAPATH_TAP, DatapathLease
from tools.lab.ovs import Ovs, OvsError
from tools.lab.plan import Plan, make_plan

LOG = logging.getLogger(__name__)


class LabError(RuntimeError):
    pass


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return run(*cmd, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


class Journal:
    """The list of what a lab made, on disk before each thing is made."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = []
        if path.exists():
            self.entries = json.loads(path.read_text())["made"]

    def add(self, **entry) -> None:
        if entry in self.entries:
            return
        self.entries.append(entry)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"made": self.entries}, indent=1))
        os.replace(tmp, self.path)


class Lab:
    def __init__(
        self,
        topology: Topology,
        prefix: str = "q",
        rundir: str | Path | None = None,
        controller: str | None = None,
    ):
        self.topology = topology
        self.plan: Plan = make_plan(topology, prefix, controller)
        self.rundir = Path(rundir or f"/run/quadrant-lab/{prefix}-{topology.name}")
        self.ovs = Ovs(self.rundir / "ovs")
        self.state_file = self.rundir / "state.json"
        self.lease = DatapathLease(self.rundir, lambda rd: Ovs(rd / "ovs").alive("ovs-vswitchd"))

    # -- queries -----------------------------------------------------------------

    def ns(self, node: str) -> str:
        """Network namespace of a worker or host."""
        return self.plan.netns(node)

    def bridge(self, switch: str | None = None) -> str:
        return self.plan.bridge(switch)

    def ofctl(self, command: str, *args: str, switch: str | None = None) -> str:
        return self.ovs.ofctl(self.bridge(switch), command, *args)

    def vsctl(self, *args: str) -> str:
        return self.ovs.vsctl(*args)

    def exec(self, node: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the namespace of a worker or host."""
        return run("ip", "netns", "exec", self.ns(node), *cmd, check=check)

    # -- up ----------------------------------------------------------------------

    def up(self, wait: float = 0.0) -> None:
        """Build the lab.  ``wait``: seconds to wait for another lab to finish first."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (namespaces, veth, Open vSwitch)")
        self.lease.acquire(wait, progress=LOG.info)
        self.rundir.mkdir(parents=True, exist_ok=True)
        journal = Journal(self.state_file)
        try:
            self._up(journal)
        except BaseException:
            LOG.error("lab up failed; removing what it made")
            self.down()
            raise

    def _up(self, journal: Journal) -> None:
        plan = self.plan
        journal.add(kind="ovs", rundir=str(self.ovs.rundir))
        self.ovs.start()
        for br in plan.bridges:
            journal.add(kind="bridge", name=br.name)
            self.ovs.vsctl(
                "--may-exist", "add-br", br.name,
                "--", "set", "bridge", br.name, "datapath_type=netdev",
                f"other-config:datapath-id={br.dpid:016x}", "fail-mode=secure",
                "protocols=OpenFlow13",
                "--", "set-controller", br.name, br.controller,
                # Reconnect within a second when the controller (re)starts.
                "--", "set", "Controller", br.name, "max_backoff=1000",
            )  # fmt: skip
        for ns in plan.namespaces:
            journal.add(kind="netns", name=ns)
            if not netns_exists(ns):
                run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        for link in plan.links:
            journal.add(kind="veth", name=link.root)
            if not link_exists(link.root):
                run("ip", "link", "add", link.root, "type", "veth",
                    "peer", "name", link.inner, "netns", link.netns)  # fmt: skip
            if link.mac:
                run("ip", "-n", link.netns, "link", "set", link.inner, "address", link.mac)
            # Userspace OVS reads frames with af_packet: checksums the kernel
            # left to "hardware" would arrive unfilled, so compute them in software.
            # Both ends: a host's kernel TCP would otherwise send every segment with a
            # checksum left for "hardware", and a real server would drop it.
            for ns_args, dev in (([], link.root),
                                 (["ip", "netns", "exec", link.netns], link.inner)):  # fmt: skip
                run(*ns_args, "ethtool", "-K", dev, "tx", "off", "rx", "off")
            run("ip", "link", "set", link.root, "up")
            run("ip", "-n", link.netns, "link", "set", link.inner, "up")
            if link.ip:
                run("ip", "-n", link.netns, "addr", "replace", link.ip, "dev", link.inner)
            self.ovs.vsctl(
                "--may-exist", "add-port", link.bridge, link.root,
                "--", "set", "Interface", link.root, f"ofport_request={link.ofport}",
            )  # fmt: skip
        for mv in plan.macvlans:
            if not link_exists(mv.name, mv.netns):
                run("ip", "-n", mv.netns, "link", "add", mv.name, "link", mv.parent,
                    "address", mv.mac, "type", "macvlan", "mode", "private")  # fmt: skip
            run("ip", "-n", mv.netns, "link", "set", mv.name, "up")
        for r in plan.routes:
            inner = next(lk.inner for lk in plan.links if lk.netns == r.netns)
            run("ip", "-n", r.netns, "route", "replace", r.dest, "dev", inner)
            run("ip", "-n", r.netns, "neigh", "replace", r.address, "lladdr", r.mac,
                "dev", inner, "nud", "permanent")  # fmt: skip
        self._check_ofports()

    def _check_ofports(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for link in self.plan.links:
            got = self.ovs.vsctl("get", "Interface", link.root, "ofport").strip()
            # "[]": vswitchd has not attached the port yet (it does so asynchronously,
            # later on a loaded machine); any other number is a conflict
            while got == "[]" and time.monotonic() < deadline:
                time.sleep(0.1)
                got = self.ovs.vsctl("get", "Interface", link.root, "ofport").strip()
            if got != str(link.ofport):
                raise LabError(
                    f"port {link.root} got OpenFlow port {got}, not {link.ofport} as the "
                    "topology asks (is the number taken?)"
                )

    # -- faults ------------------------------------------------------------------

    def restart_vswitchd(self) -> float:
        """Crash ``ovs-vswitchd`` (SIGKILL) and start it again from its database: bridges,
        ports and controller come back, flow tables empty (fail mode secure: it forwards
        nothing until the controller has put its rules back).  Done under the lease's
        lock, so no other lab takes the datapath meanwhile.  Returns the seconds it was
        down (until the new daemon wrote its pid file)."""

        def bounce():
            t0 = time.monotonic()
            self.ovs.kill_vswitchd()
            while True:  # until the dead daemon's pid file lock is gone with it
                try:
                    self.ovs.start()
                    return time.monotonic() - t0
                except OvsError as exc:
                    if "already running" not in str(exc) or time.monotonic() - t0 > 10:
                        raise
                    time.sleep(0.02)

        return self.lease._locked(bounce)

    def set_link(self, node: str, up: bool) -> None:
        """Take the switch's end of ``node``'s link down (a pulled cable) or up again."""
        link = next(lk for lk in self.plan.links if lk.netns == self.ns(node))
        run("ip", "link", "set", link.root, "up" if up else "down")

    # -- down --------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove what the journal says ``up`` made, newest first.  Returns what it removed."""
        journal = Journal(self.state_file)
        removed = []
        for entry in reversed(journal.entries):
            kind, name = entry["kind"], entry.get("name")
            if kind == "veth" and link_exists(name):
                run("ip", "link", "del", name, check=False)
                removed.append(f"link {name}")
            elif kind == "netns" and netns_exists(name):
                run("ip", "netns", "del", name, check=False)
                removed.append(f"netns {name}")
            elif kind == "bridge":
                if self.ovs.alive("ovsdb-server") and self.ovs.alive("ovs-vswitchd"):
                    self.ovs.vsctl("--if-exists", "del-br", name, check=False)
                    removed.append(f"bridge {name}")
                # A netdev bridge has a tap device of its name, which stays behind
                # when ovs-vswitchd dies before the bridge is deleted.
                if link_exists(name):
                    run("ip", "link", "del", name, check=False)
                    removed.append(f"tap {name}")
            elif kind == "ovs":
                if self.ovs.alive("ovs-vswitchd") or self.ovs.alive("ovsdb-server"):
                    self.ovs.stop()
                    removed.append("ovs-vswitchd, ovsdb-server")
                # The datapath's own tap, left behind if ovs-vswitchd was killed.
                if self.lease.held() and link_exists(DATAPATH_TAP):
                    run("ip", "link", "del", DATAPATH_TAP, check=False)
                    removed.append(f"tap {DATAPATH_TAP}")
        self.lease.release()
        if self.rundir.exists():
            shutil.rmtree(self.rundir, ignore_errors=True)
        return removed

    # -- status ------------------------------------------------------------------

    def status(self) -> dict:
        """What exists now of this lab, as a dict (for `quadrant-lab status`)."""
        plan = self.plan
        out = {
            "rundir": str(self.rundir),
            "state_file": self.state_file.exists(),
            "ovsdb-server": self.ovs.pid("ovsdb-server"),
            "ovs-vswitchd": self.ovs.pid("ovs-vswitchd"),
            "bridges": {},
            "namespaces": {ns: netns_exists(ns) for ns in plan.namespaces},
            "links": {lk.root: link_exists(lk.root) for lk in plan.links},
            "vfs": {
                f"{mv.netns}/{mv.name}": netns_exists(mv.netns) and link_exists(mv.name, mv.netns)
                for mv in plan.macvlans
            },
            "hugepages": _hugepages(),
        }
        ovs_up = out["ovsdb-server"] and out["ovs-vswitchd"]
        for br in plan.bridges:
            info = {"exists": bool(ovs_up) and self.ovs.bridge_exists(br.name)}
            if info["exists"]:
                info["controller"] = br.controller
                info["controller_connected"] = self.ovs.controller_connected(br.name)
            out["bridges"][br.name] = info
        return out


def _hugepages() -> dict:
    try:
        total = int(Path("/proc/sys/vm/nr_hugepages").read_text())
    except OSError:
        total = 0
    mounted = any(
        line.split()[2] == "hugetlbfs" for line in Path("/proc/mounts").read_text().splitlines()
    )
    return {"reserved_2mb": total, "hugetlbfs_mounted": mounted}
