"""A third-party NF's surroundings: its network namespace, veth pairs, files and program.

:class:`ThirdPartyNF` is used by :class:`worker.chain.ChainInstance` (as root,
the agent) for each ``thirdparty`` position of a chain.  ``up()`` makes

* a network namespace of its own (``ip netns add``), IPv6 off in it (no router
  solicitations or MLD reports of its own: the NF sees only its chain's frames);
* per interface of the spec a veth pair: the NF's end in its namespace under
  the spec's name and MAC, the bridge's end in the bridge process's namespace
  (the worker's), where the bridge opens it with DPDK ``net_af_packet``;
* the spec's ``files`` in a private directory, its ``setup`` commands run in
  the namespace (each must exit 0), then its ``command``, which runs for the
  NF's life: its exit is the NF's death.

``fence()`` takes the bridge's ends down (a dead NF's namespace would still
forward: a firewall that died must not become a hole), ``down()`` removes
everything.  The spec format is :mod:`worker.thirdparty_spec` (docs/thirdparty.rst).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import zlib

from worker.thirdparty_spec import Interface, ThirdPartyConfig


class ThirdPartyError(RuntimeError):
    """Setting up a third-party NF failed; the message names the field and the reason."""


def derived_mac(seed: str) -> str:
    """A stable locally administered unicast MAC for ``seed``."""
    h = zlib.crc32(seed.encode()).to_bytes(4, "big")
    return "02:" + ":".join(f"{b:02x}" for b in (0x51, *h))


class ThirdPartyNF:
    def __init__(
        self,
        cfg: ThirdPartyConfig,
        *,
        netns: str,
        tag: str,
        where: str,
        bridge_netns: str | None = None,
        log_path: str | None = None,
        cpus: tuple[int, ...] = (),
    ):
        if len(tag) > 13:
            raise ThirdPartyError(f"{where}: interface tag {tag!r} longer than 13 characters")
        self.cfg = cfg
        self.netns = netns  # the NF's namespace (made here)
        self.bridge_netns = bridge_netns  # where the bridge process runs (None: ours)
        self.where = where  # "nfs[i]" for errors
        self.tag = tag
        self.bridge_to = f"{tag}i"  # the bridge's end towards the NF's "in" interface
        self.bridge_from = self.bridge_to if cfg.one_interface else f"{tag}o"
        self.log_path = log_path
        self.cpus = cpus  # where the program may run (off the chain's core)
        self.macs = {
            cfg.to_nf.name: cfg.to_nf.mac or derived_mac(f"{netns}/{cfg.to_nf.name}"),
            cfg.from_nf.name: cfg.from_nf.mac or derived_mac(f"{netns}/{cfg.from_nf.name}"),
        }
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.made_netns = False
        self.fenced = False

    # -- what the bridge process needs -------------------------------------------------
    def ports(self) -> dict:
        """The bridge process's ports: ``rx`` reads the NF's output, ``tx`` feeds it."""
        to = {"vdev": f"net_af_packet_to,iface={self.bridge_to},qpairs=1"}
        if self.cfg.one_interface:
            return {"rx": to, "tx": to}
        return {"rx": {"vdev": f"net_af_packet_from,iface={self.bridge_from},qpairs=1"}, "tx": to}

    @property
    def dst_mac(self) -> str | None:
        """The destination the bridge writes into every frame (``deliver: to_nf_mac``)."""
        return self.macs[self.cfg.to_nf.name] if self.cfg.deliver == "to_nf_mac" else None

    # -- life cycle ---------------------------------------------------------------------
    def up(self, timeout: float = 10.0) -> None:
        """Namespace, interfaces, files, setup commands, program; undone on failure."""
        try:
            self._run(["ip", "netns", "add", self.netns], "netns")
            self.made_netns = True
            self._in_ns(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"], "netns")  # fmt: skip
            self._in_ns(["ip", "link", "set", "lo", "up"], "netns")
            self._veth(self.bridge_to, self.cfg.to_nf, "interfaces.in")
            if not self.cfg.one_interface:
                self._veth(self.bridge_from, self.cfg.from_nf, "interfaces.out")
            self.dir = tempfile.mkdtemp(prefix=f"{self.netns}-")
            for name, text in self.cfg.files:
                with open(os.path.join(self.dir, name), "w") as f:
                    f.write(text)
            for j, argv in enumerate(self.cfg.setup):
                self._in_ns(list(argv), f"config.setup[{j}]", timeout=timeout)
            self._start()
        except BaseException:
            self.down()
            raise

    def _start(self) -> None:
        log = open(self.log_path or os.path.join(self.dir, "program.log"), "ab")  # noqa: SIM115
        argv = ["ip", "netns", "exec", self.netns, *self.cfg.command]
        if self.cpus:
            argv = ["taskset", "-c", ",".join(map(str, self.cpus)), *argv]
        try:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        except OSError as exc:
            raise ThirdPartyError(
                f"{self.where}.config.command: cannot start {self.cfg.command[0]}: {exc.strerror}"
            ) from None
        finally:
            log.close()
        time.sleep(0.05)
        code = self.proc.poll()
        if code is not None:
            raise ThirdPartyError(
                f"{self.where}.config.command: {self.cfg.command[0]} exited at once "
                f"(status {code}); see {log.name}"
            )

    def exit_code(self) -> int | None:
        """None while the program runs; its status once it has exited."""
        if self.proc is None:
            return None
        return self.proc.poll()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def fence(self) -> None:
        """Take the bridge's ends down: nothing more reaches the NF or comes from it."""
        if self.fenced:
            return
        self.fenced = True
        for dev in {self.bridge_to, self.bridge_from}:
            self._run(self._ip(["link", "set", dev, "down"]), "fence", check=False)

    def down(self) -> None:
        """Stop the program (its whole session), delete the namespace (and so the veths)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(2)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if self.made_netns:
            self._run(["ip", "netns", "del", self.netns], "netns", check=False)
            self.made_netns = False
        for dev in {self.bridge_to, self.bridge_from}:  # gone with their peers; in case not
            r = self._run(self._ip(["link", "show", dev]), "interfaces", check=False)
            if r is not None and r.returncode == 0:
                self._run(self._ip(["link", "del", dev]), "interfaces", check=False)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def interface_counters(self, pid: int | str = "self") -> dict[str, int]:
        """The kernel's counters of the bridge's ends (frames to and from the NF), read in
        the network namespace of process ``pid`` (the bridge's: ``/proc/PID/net/dev``)."""
        out = {"kernel_to_nf": -1, "kernel_from_nf": -1}
        try:
            with open(f"/proc/{pid}/net/dev") as f:
                lines = f.read().splitlines()[2:]
        except OSError:
            return out
        for line in lines:
            name, _, rest = line.partition(":")
            cols = rest.split()  # rx: bytes packets errs drop fifo frame compressed multicast
            if len(cols) < 10:
                continue
            if name.strip() == self.bridge_to:
                out["kernel_to_nf"] = int(cols[9])  # tx packets
            if name.strip() == self.bridge_from:
                out["kernel_from_nf"] = int(cols[1])  # rx packets
        return out

    # -- helpers ------------------------------------------------------------------------
    def _ip(self, args: list[str]) -> list[str]:
        return ["ip", *(["-n", self.bridge_netns] if self.bridge_netns else []), *args]

    def _veth(self, bridge_end: str, iface: Interface, field: str) -> None:
        mac = self.macs[iface.name]
        self._run(self._ip(["link", "add", bridge_end, "type", "veth", "peer", "name",
                            iface.name, "address", mac, "netns", self.netns]), field)  # fmt: skip
        # no IPv6 on the bridge's end either: the worker's kernel must not talk to the NF
        sysctl = ["sysctl", "-qw", f"net.ipv6.conf.{bridge_end}.disable_ipv6=1"]
        if self.bridge_netns:
            sysctl = ["ip", "netns", "exec", self.bridge_netns, *sysctl]
        self._run(sysctl, field)
        self._run(self._ip(["link", "set", bridge_end, "up"]), field)
        self._in_ns(["ip", "link", "set", iface.name, "up"], field)

    def _in_ns(self, argv: list[str], field: str, timeout: float = 10.0) -> None:
        self._run(["ip", "netns", "exec", self.netns, *argv], field, timeout=timeout)

    def _run(self, argv: list[str], field: str, check: bool = True, timeout: float = 10.0):
        try:
            r = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True,
                               timeout=timeout)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            if not check:
                return None
            raise ThirdPartyError(f"{self.where}.{field}: {argv[0]}: {exc}") from None
        if check and r.returncode != 0:
            err = (r.stderr or r.stdout).strip().splitlines()
            raise ThirdPartyError(
                f"{self.where}.{field}: {' '.join(argv[-len(argv) :])[:200]} exited "
                f"{r.returncode}: {err[-1] if err else ''}"
            )
        return r
