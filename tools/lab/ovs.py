"""A private Open vSwitch: its own database, ovsdb-server and ovs-vswitchd.

Everything lives in one run directory, never the system's, so several labs
(and the system's own OVS) can coexist.  The userspace datapath is used
(``datapath_type=netdev``): no kernel module is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class OvsError(RuntimeError):
    pass


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a dead daemon nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Ovs:
    def __init__(self, rundir: Path):
        self.rundir = Path(rundir)
        self.db = self.rundir / "conf.db"
        self.sock = self.rundir / "db.sock"
        if len(str(self.sock)) > 100:
            raise OvsError(f"run directory {rundir} is too long for a unix socket path")

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            OVS_RUNDIR=str(self.rundir),
            OVS_DBDIR=str(self.rundir),
            OVS_LOGDIR=str(self.rundir),
            OVS_SYSCONFDIR=str(self.rundir),
        )
        return env

    def _run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        proc = subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise OvsError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    # -- the daemons -----------------------------------------------------------

    def start(self) -> None:
        """Create the database and start both daemons (each detached, pid file in rundir)."""
        if not SCHEMA.exists():
            raise OvsError(f"{SCHEMA} not found: install openvswitch-switch (tools/setup-host)")
        self.rundir.mkdir(parents=True, exist_ok=True)
        if not self.db.exists():
            self._run("ovsdb-tool", "create", str(self.db), str(SCHEMA))
        if not self.alive("ovsdb-server"):
            self._run(
                "ovsdb-server",
                str(self.db),
                f"--remote=punix:{self.sock}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={self.pidfile('ovsdb-server')}",
                f"--unixctl={self.rundir / 'ovsdb-server.ctl'}",
                f"--log-file={self.rundir / 'ovsdb-server.log'}",
                "--detach",
            )
            self.vsctl("--no-wait", "init")
        if not self.alive("ovs-vswitchd"):
            self._run(
                "ovs-vswitchd",
                f"unix:{self.sock}",
                f"--pidfile={self.pidfile('ovs-vswitchd')}",
                f"--unixctl={self.rundir / 'ovs-vswitchd.ctl'}",
                f"--log-file={self.rundir / 'ovs-vswitchd.log'}",
                "--detach",
            )

    def pidfile(self, daemon: str) -> Path:
        return self.rundir / f"{daemon}.pid"

    def pid(self, daemon: str) -> int | None:
        """The daemon's pid if its pid file names a live process of that program."""
        try:
            pid = int(self.pidfile(daemon).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # ovs daemons rename themselves "ovs-vswitchd: monitoring pid" etc.;
        # argv[0] still names the program.
        return pid if cmdline and Path(cmdline[0].decode()).name == daemon else None

    def alive(self, daemon: str) -> bool:
        return self.pid(daemon) is not None

    def stop(self) -> None:
        """Stop ovs-vswitchd, then ovsdb-server; wait for them to exit."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pid = self.pid(daemon)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def kill_vswitchd(self, timeout: float = 10.0) -> int | None:
        """SIGKILL ovs-vswitchd (a crash: it saves nothing) and wait until it is gone;
        returns the pid it had.  ``start()`` brings it back from the database."""
        pid = self.pid("ovs-vswitchd")
        if pid is None:
            return None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        return pid

    # -- the tools, aimed at this instance ---------------------------------------

    def vsctl(self, *args: str, check: bool = True) -> str:
        return self._run("ovs-vsctl", f"--db=unix:{self.sock}", "--timeout=20", *args, check=check)

    def bridge_exists(self, bridge: str) -> bool:
        proc = subprocess.run(
            ["ovs-vsctl", f"--db=unix:{self.sock}", "--timeout=20", "br-exists", bridge],
            env=self.env,
            capture_output=True,
        )
        return proc.returncode == 0

    def controller_connected(self, bridge: str) -> bool:
        """Whether the bridge's (first) controller connection is up."""
        uuids = self.vsctl("get", "Bridge", bridge, "controller").strip("[] \n")
        if not uuids:
            return False
        uuid = uuids.split(",")[0].strip()
        return self.vsctl("get", "Controller", uuid, "is_connected").strip() == "true"

    def ofctl(self, bridge: str, command: str, *args: str, check: bool = True) -> str:
        """``ovs-ofctl -O OpenFlow13 COMMAND BRIDGE ARGS`` over the bridge's mgmt socket."""
        target = str(self.rundir / f"{bridge}.mgmt")
        return self._run("ovs-ofctl", "-O", "OpenFlow13", command, target, *args, check=check)

    def appctl(self, *args: str, check: bool = True) -> str:
        target = str(self.rundir / "ovs-vswitchd.ctl")
        return self._run("ovs-appctl", "-t", target, *args, check=check)
