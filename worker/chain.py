"""A multi-NF chain instance on one core: its buffer(s), its NF processes, its life cycle.

What the agent (issue 6) calls, in order::

    inst = ChainInstance(name, nfs, core=1, ports={...}, ids=ChainIds(uid_base, gid),
                         scheduler=core_sched)
    inst.prepare()      # buffer + NF processes up, confined, parked (a warm, detached instance)
    inst.attach()       # on the core's run queue in chain order
    inst.set_batch(64)  # takes effect at the next batch
    inst.stats()        # per-NF counters from the buffer header
    inst.detach()       # drains in-flight batches, parks every NF
    inst.teardown()     # STOP, processes reaped, buffer files removed

The agent adds ``launcher=`` (each NF a container: namespaces, a cgroup on
the core), ``netns=`` (the worker's network namespace) and ``startup_cpus=``
(where the NFs set up before their cgroup confines them to the core).

``mode`` picks how the NFs are isolated (the variants of
tools/bench/chain_isolation.py):

* ``coop`` (Quadrant): one chain buffer, NF2..NFn in place, cooperative
  SCHED_FIFO scheduling through :class:`worker.coopsched.CoreScheduler`;
* ``cfs``: the same processes and buffer under SCHED_OTHER, each NF
  yielding only when its input ring is empty;
* ``copy``: every NF after the first has a region of its own and every hop
  copies the batch into the next NF's region (EdgeOS/NFVnice-style
  isolation by copying), same core, same cooperative scheduling;
* ``single_thread``: every NF in sequence in the first NF's thread (no
  isolation: the upper bound).

A chain of one NF always runs as ``single_thread`` with one NF: no buffer
slots, no copy, no scheduler.

The first NF's process owns the port and the port's mempool and is the only
process that transmits: the last NF's output comes back to it through the
buffer's return ring, and it copies that into fresh mbufs.  So no other
process ever maps NIC memory (see docs/chains.rst).  A chain whose first NF is
a third-party one gets a *port stage* before it: a first process of the
runtime's that owns the port and runs no NF (``{"type": "port_stage"}``).
Per-process lists (``nfs``, ``stats()``, ``procs``, ``pids``) then have one
entry more than the spec (``offset``); errors and ``failures()`` name the
spec's positions.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from cext import chainbuf, flowhold
from worker import flowhold as holds
from worker.coopsched import CoreScheduler, thread_state
from worker.launcher import Launcher, LaunchSpec, host_tid
from worker.nf_errors import NFConfigError
from worker.thirdparty import ThirdPartyError, ThirdPartyNF
from worker.thirdparty_spec import TYPE as THIRDPARTY
from worker.thirdparty_spec import Health, ThirdPartyConfig, parse_thirdparty

LOG = logging.getLogger("quadrant.chain")

MODES = ("coop", "cfs", "copy", "single_thread")
# what runs first when a chain's first NF is third-party: the first process owns the port
# (and only the platform's own code may), a bridge never does; it runs no NF, so frames
# pass it unchanged
PORT_STAGE = {"type": "port_stage"}
ROOT = Path(__file__).resolve().parent.parent


class ChainError(RuntimeError):
    """A chain instance request failed; the message names the field and the reason."""


@dataclass(frozen=True)
class ChainIds:
    """Credentials: NF ``i`` runs as ``uid_base + i``, every NF of the chain in ``gid``."""

    uid_base: int
    gid: int

    def uid(self, i: int) -> int:
        return self.uid_base + i


def hugepages_free() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def buffer_dir(size: int, reserve_pages: int = 32) -> str:
    """hugetlbfs when it has room for ``size`` beyond ``reserve_pages``, else tmpfs."""
    pages = (size + chainbuf.HUGEPAGE - 1) // chainbuf.HUGEPAGE
    if os.path.ismount("/dev/hugepages") and hugepages_free() >= pages + reserve_pages:
        return "/dev/hugepages"
    return "/dev/shm"


class ChainInstance:
    def __init__(
        self,
        name: str,
        nfs: list[dict],
        *,
        core: int,
        ports: dict,
        ids: ChainIds,
        prefix: str = "quadrant",
        mode: str = "coop",
        scheduler: CoreScheduler | None = None,
        n_slots: int = 2048,
        batch: int = 32,
        buffer_root: str | None = None,
        memory_mb: int = 160,
        first_memory_mb: int | None = None,
        log_dir: str | None = None,
        launcher: Launcher | None = None,
        netns: str | None = None,
        startup_cpus: tuple[int, ...] = (),
        max_hold_ms: int = 1000,
    ):
        if not nfs:
            raise ChainError("nfs: a chain has at least one NF")
        # a third-party NF first: the runtime's own port stage (a native empty NF) runs
        # before it and owns the port, so the spec's NF j is process j + offset
        self.offset = 1 if nfs[0].get("type") == THIRDPARTY else 0
        if len(nfs) + self.offset > chainbuf.MAX_NFS:
            more = " (and the port stage before a third-party NF first)" if self.offset else ""
            raise ChainError(f"nfs: {len(nfs)} NFs{more}, at most {chainbuf.MAX_NFS}")
        if mode not in MODES:
            raise ChainError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        if mode in ("coop", "copy") and len(nfs) + self.offset > 1 and scheduler is None:
            raise ChainError(f"scheduler: mode {mode} needs the core's CoreScheduler")
        if scheduler is not None and scheduler.core != core:
            raise ChainError(f"scheduler: runs core {scheduler.core}, the chain core {core}")
        if "rx" not in ports:
            raise ChainError("ports.rx: missing")
        # third-party NFs (docs/thirdparty.rst): a bridge process at their position
        # (keyed by process position; errors name the spec's)
        self.thirdparty_cfg: dict[int, ThirdPartyConfig] = {}
        for j, nf in enumerate(nfs):
            if nf.get("type") != THIRDPARTY:
                continue
            if mode not in ("coop", "cfs"):
                raise ChainError(f"mode: {mode} cannot run third-party NFs (coop or cfs)")
            try:
                cfg = parse_thirdparty(nf.get("config"), f"nfs[{j}].config")
            except NFConfigError as exc:
                raise ChainError(str(exc)) from None
            self.thirdparty_cfg[j + self.offset] = cfg
        self.name = name
        # one entry per process: the port stage first if there is one, then the spec's NFs
        self.nfs = [dict(PORT_STAGE)] * self.offset + [dict(n) for n in nfs]
        self.core = core
        self.ports = ports
        self.ids = ids
        self.prefix = prefix
        self.mode = "single_thread" if len(self.nfs) == 1 else mode
        self.scheduler = scheduler if self.mode in ("coop", "copy") else None
        self.n_slots = n_slots
        self.batch = batch
        self.buffer_root = buffer_root
        self.memory_mb = memory_mb
        # an rte_lpm table takes 64 MB (tbl24); the first process also holds the mempool
        n_first = len(self.nfs) if self.mode == "single_thread" else 1
        self.first_memory_mb = first_memory_mb or 96 + 96 * n_first
        self.log_dir = log_dir
        # with a launcher every NF process is a container of its own (namespaces, a
        # cgroup on its core, ``netns``): tids it reports are mapped to the host's
        self.launcher = launcher
        self.netns = netns
        # CPUs (off the data core) the NFs set up on before the launcher confines them
        self.startup_cpus = tuple(c for c in startup_cpus if c != core)
        if (netns or self.startup_cpus) and launcher is None:
            raise ChainError("netns, startup_cpus: need a launcher")
        self.handles: list = []
        self.pids: list[int] = []
        self.buffers: dict[str, chainbuf.ChainBuffer] = {}
        self.procs: list[subprocess.Popen] = []
        self.tids: list[int] = []
        self.summaries: list[dict | None] = []
        self.thirdparty: dict[int, ThirdPartyNF] = {}
        self.health: dict[int, Health] = {}
        self.stalled: list[tuple[int, str]] = []  # native NFs the agent's monitor found stalled
        self.state = "new"
        self._ctl_path = ""
        # flows held for a move (cext/src/qs_flowhold.h): a hold the controller never
        # releases ends by itself after this long
        self.max_hold_ms = max_hold_ms
        self.hold: flowhold.FlowHold | None = None

    # -- layout ---------------------------------------------------------------
    def _path(self, tag: str, size: int) -> str:
        root = self.buffer_root or buffer_dir(size)
        return os.path.join(root, f"{self.prefix}-{self.name}-{tag}.chainbuf")

    def _make(self, tag: str, n_slots: int, n_rings: int, fill: bool) -> str:
        size = chainbuf.region_size(n_slots, n_rings)
        path = self._path(tag, size)
        b = chainbuf.ChainBuffer.create(
            path,
            n_slots,
            n_rings,
            len(self.nfs),
            f"{self.name}/{tag}",
            mode=0o660,
            uid=0,
            gid=self.ids.gid,
        )
        if fill:
            b.fill_free(0)
        self.buffers[path] = b
        return path

    def _layout(self) -> list[dict]:
        """Per NF: which buffer files it maps, which rings it reads and writes."""
        n = len(self.nfs)
        if self.mode == "single_thread":
            ctl = self._make("ctl", 1, 1, False)
            return [{"ctl": ctl}]
        if self.mode in ("coop", "cfs"):
            # ring 0 free slots (NF1 only), ring i NF i -> NF i+1, ring n NF n -> NF1
            p = self._make("buf", self.n_slots, n + 1, True)
            out = [{"ctl": p, "out": p, "out_ring": 1, "ret": p, "ret_ring": n}]
            for i in range(1, n):
                out.append({"ctl": p, "in": p, "in_ring": i, "out": p, "out_ring": i + 1})
            return out
        # copy: region k is NF k's own input (ring 0 its free slots, ring 1 the batches)
        ctl = self._make("ctl", 1, 1, False)
        regions = [self._make(f"nf{k}", self.n_slots, 2, True) for k in range(1, n)]
        regions.append(self._make("ret", self.n_slots, 2, True))
        out = [{"ctl": ctl, "out": regions[0], "out_ring": 1, "ret": regions[-1], "ret_ring": 1}]
        for k in range(1, n):
            out.append(
                {"ctl": ctl, "in": regions[k - 1], "in_ring": 1, "out": regions[k], "out_ring": 1}
            )
        return out

    def _make_hold(self) -> str:
        """The per-flow hold region NF1 maps: small, so tmpfs (a hugetlbfs file would
        take a 2 MB page), unless the caller chose a root that is not hugetlbfs."""
        root = self.buffer_root
        if not root or chainbuf._on_hugetlbfs(os.path.join(root, "x")):
            root = "/dev/shm"
        path = os.path.join(root, f"{self.prefix}-{self.name}-hold")
        self.hold = flowhold.FlowHold.create(
            path, self.max_hold_ms, mode=0o660, uid=0, gid=self.ids.gid
        )
        return path

    @property
    def ctl(self) -> chainbuf.ChainBuffer:
        """The region whose header holds the control word and the NFs' counters."""
        return self.buffers[self._ctl_path]

    # -- life cycle ---------------------------------------------------------
    def prepare(self, timeout: float = 60.0) -> None:
        """Make the buffer(s), start and confine every NF process; leave them parked.
        ``timeout``: seconds for every NF of the chain to be ready."""
        if self.state != "new":
            raise ChainError(f"prepare: instance {self.name} is {self.state}")
        self.state = "preparing"
        try:
            layout = self._layout()
            layout[0]["hold"] = self._make_hold()
            self._ctl_path = layout[0]["ctl"]
            ctl = self.buffers[self._ctl_path]
            ctl.batch = self.batch
            ctl.yield_after_batch = self.mode != "cfs"
            self._thirdparty_up()
            specs = []
            if self.mode == "single_thread":
                specs.append(self._spec(0, self.nfs, layout[0]))
            else:
                for i, nf in enumerate(self.nfs):
                    specs.append(self._spec(i, [nf] if i >= self.offset else [], layout[i]))
            for spec in specs:
                self._spawn(spec)
            deadline = time.monotonic() + timeout  # for the whole chain: NFs start together
            self.tids = [
                self._await_ready(i, p, max(0.1, deadline - time.monotonic()))
                for i, p in enumerate(self.procs)
            ]
            for h in self.handles:  # set up: now onto the core, every thread of it
                h.settle()
            if self.scheduler is not None:
                self.scheduler.register(self.name, self.tids, ctl)
            else:
                for t in self.tids:  # the agent pins them: the NFs themselves cannot
                    os.sched_setaffinity(t, {self.core})
            self.state = "detached"
        except BaseException:
            self.teardown()
            raise

    def _thirdparty_up(self) -> None:
        """Namespace, veths, setup and program of each third-party NF (before its bridge)."""
        for i, cfg in self.thirdparty_cfg.items():
            tag = f"{self.prefix[:4]}{zlib.crc32(f'{self.prefix}/{self.name}'.encode()):08x}{i}"
            log = (
                os.path.join(self.log_dir, f"{self.name}-nf{i}-program.log")
                if self.log_dir
                else None
            )
            tp = ThirdPartyNF(
                cfg,
                netns=f"{self.prefix}-{self.name}-nf{i}",
                tag=tag,
                where=self.where(i),
                bridge_netns=self.netns,
                log_path=log,
                # never the chain's core: its SCHED_FIFO NFs would starve a program there
                cpus=self.startup_cpus or tuple(sorted(os.sched_getaffinity(0) - {self.core})),
            )
            self.thirdparty[i] = tp  # down() in teardown, whatever up() got to
            try:
                tp.up()
            except ThirdPartyError as exc:
                raise ChainError(str(exc)) from None
            self.health[i] = Health(cfg)

    def _spec(self, i: int, nfs: list[dict], bufs: dict) -> dict:
        spec = {
            "chain": self.name,
            "index": i,
            "core": self.core,
            "nfs": nfs,
            "buffers": bufs,
            "uid": self.ids.uid(i),
            "gid": self.ids.gid,
            "copy": self.mode == "copy" and i > 0,
            "eal": {
                "file_prefix": f"{self.prefix}-{self.name}-nf{i}",
                "memory_mb": self.first_memory_mb if i == 0 else self.memory_mb,
            },
        }
        if self.startup_cpus:
            spec["eal"]["lcores"] = sorted({self.core, *self.startup_cpus})
        if i == 0:
            spec["ports"] = self.ports
        tp = self.thirdparty.get(i)
        if tp is not None:  # the bridge process: the NF's interfaces instead of an NF
            spec["nfs"] = []
            spec["ports"] = tp.ports()
            spec["mempool_size"] = 4095
            spec["bridge"] = {"hold_us": tp.cfg.hold_us, "dst_mac": tp.dst_mac}
        return spec

    def _spawn(self, spec: dict) -> None:
        log = None
        if self.log_dir:
            path = os.path.join(self.log_dir, f"{self.name}-nf{spec['index']}.log")
            log = open(path, "w")  # noqa: SIM115 (handed to the child, closed below)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "worker.chain_nf"]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                 "stderr": log or subprocess.DEVNULL, "text": True}  # fmt: skip
        try:
            if self.launcher is None:
                p = subprocess.Popen(argv, cwd=str(ROOT), env=env, **pipes)
            else:
                mb = spec["eal"]["memory_mb"] + 256  # the EAL's memory + the interpreter
                handle = self.launcher.popen(
                    LaunchSpec(
                        name=f"{self.prefix}-{self.name}-nf{spec['index']}",
                        argv=tuple(argv),
                        core=self.core,
                        memory_bytes=mb << 20,
                        env=(("PYTHONPATH", env["PYTHONPATH"]),),
                        cwd=str(ROOT),
                        netns=self.netns,
                        startup_cpus=self.startup_cpus,
                    ),
                    **pipes,
                )
                self.handles.append(handle)
                p = handle.proc
        finally:
            if log:
                log.close()
        self.procs.append(p)
        p.stdin.write(json.dumps(spec))
        p.stdin.close()
        p.stdin = None

    def _await_ready(self, i: int, p: subprocess.Popen, timeout: float) -> int:
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise ChainError(f"{self.where(i)}: not ready within {timeout}s")
            line = p.stdout.readline()
        finally:
            sel.close()
        try:
            msg = json.loads(line)
        except ValueError:
            msg = {}
        if not msg.get("ready"):
            p.wait(5)
            why = f": {msg['error']}" if msg.get("error") else "; see its log"
            raise ChainError(
                f"{self.where(i)} ({self.nfs[min(i, len(self.nfs) - 1)]['type']}): "
                f"exited before ready (status {p.returncode}){why}"
            )
        if self.launcher is None:
            self.pids.append(int(msg.get("pid", p.pid)))
            return int(msg["tid"])
        # the NF saw its ids inside its own PID namespace; the scheduler needs the host's
        self.pids.append(host_tid(p.pid, int(msg["pid"])))
        return host_tid(p.pid, int(msg["tid"]))

    def attach(self) -> None:
        self._need("detached", "attach")
        if self.scheduler is not None:
            self.scheduler.attach(self.name)
        else:
            self.ctl.ctl = chainbuf.CTL_RUN
        self.state = "attached"

    def detach(self, timeout: float = 2.0) -> None:
        self._need("attached", "detach")
        if self.scheduler is not None:
            self.scheduler.detach(self.name)
        else:
            c = self.ctl
            c.ctl = chainbuf.CTL_PARK
            deadline = time.monotonic() + timeout
            n = len(self.procs)
            while not c.parked(n):
                if time.monotonic() > deadline:
                    raise ChainError(f"detach: {self.name} did not park within {timeout}s")
                time.sleep(0.001)
        self.state = "detached"

    def set_batch(self, batch: int) -> None:
        if self.state not in ("detached", "attached"):
            raise ChainError(f"set_batch: instance {self.name} is {self.state}")
        self.ctl.batch = batch  # validated there; the first NF reads it between batches

    def hold_flows(self, keys: list[tuple], marked: bool = False) -> list[int]:
        """NF1 sets these flows' packets aside until :meth:`release_flows`;
        ``marked``: but lets the controller's marked ones through (qs_flowhold.h)."""
        if self.state not in ("detached", "attached") or self.hold is None:
            raise ChainError(f"hold: instance {self.name} is {self.state}")
        return self.hold.hold(keys, marked)

    def release_flows(self, keys: list[tuple]) -> int:
        if self.state not in ("detached", "attached") or self.hold is None:
            raise ChainError(f"release: instance {self.name} is {self.state}")
        return self.hold.release(keys)

    def drain(self, timeout: float) -> dict:
        """Wait until this instance has emitted what its port had queued now."""
        if self.state not in ("detached", "attached") or self.hold is None:
            raise ChainError(f"drain: instance {self.name} is {self.state}")
        ctl, hold = self.ctl, self.hold

        def counters():
            s = ctl.nf_stats(0)
            return s["pkts"], s["tx"] + s["drops"]

        return holds.drain(hold.progress, counters, timeout)

    def stats(self) -> list[dict]:
        """Per NF process: its counters and its cycles-per-batch histogram (``hist``)
        from the buffer header; the first also ``buffered``, the packets waiting in
        the chain buffer's rings between the NFs.  A third-party position adds
        ``thirdparty``: its bridge's counters, the kernel's on its interfaces, its
        program and its health (docs/thirdparty.rst)."""
        c = self.ctl
        n = 1 if self.mode == "single_thread" else len(self.nfs)
        out = [{**c.nf_stats(i), "hist": c.nf_hist(i)} for i in range(n)]
        out[0]["buffered"] = self.buffered()
        for i in self.thirdparty:
            if i < n and i in self.health:
                out[i]["thirdparty"] = self._thirdparty_status(i)
        return out

    def buffered(self) -> int:
        """Packets in the rings from each NF to the next and from the last back to the
        first (ring 0 of a region holds free slots, not packets)."""
        n = len(self.nfs)
        if self.mode == "single_thread":
            return 0
        if self.mode in ("coop", "cfs"):
            return sum(self.ctl.ring_count(r) for r in range(1, n + 1))
        # copy: every region after the control one carries its batches on ring 1
        return sum(b.ring_count(1) for p, b in self.buffers.items() if p != self._ctl_path)

    def _thirdparty_status(self, i: int) -> dict:
        tp, h = self.thirdparty[i], self.health[i]
        b = self.ctl.bridge_stats(i)
        code = tp.exit_code()
        h.update(b, code, time.monotonic())
        if h.state == "failed":
            tp.fence()  # fail closed: a dead firewall must not keep forwarding
        kernel = tp.interface_counters(self.pids[i] if i < len(self.pids) else "self")
        return {**b, **kernel, "pid": tp.pid, "exit_code": code,
                "status": h.state, "reason": h.reason}  # fmt: skip

    def progress(self) -> list[dict]:
        """What :class:`worker.liveness.ChainLiveness` judges, one dict per NF process:
        ``own`` (packets it took), ``input`` (NF 0: the kernel's RX count of its VF
        netdev, when it is one), ``queued`` (its input ring; NF 0: the ring the last NF
        returns slots on), ``running`` (attached and the NF's runtime running, and not a
        stateful stage waiting on Redis: unreachable, or every held slot taken),
        ``store_down`` (a stateful stage finds Redis unreachable), ``skip``
        (a third-party position: its bridge's health judges it), ``alive`` (False once
        the NF's process is gone or a zombie: before its parent has reaped it, neither
        ``poll()`` nor the watchdog sees it)."""
        c = self.ctl
        n = 1 if self.mode == "single_thread" else len(self.nfs)
        attached = self.state == "attached"
        rings = self.mode in ("coop", "cfs")
        out = []
        for i in range(n):
            s = c.nf_stats(i)
            queued = None
            if rings and n > 1:
                queued = c.ring_count(n if i == 0 else i)
            alive = thread_state(self.pids[i]) not in ("Z", "X") if i < len(self.pids) else True
            # a stateful stage waiting on Redis is not hung: the rule starts over
            out.append({"own": s["pkts"], "input": None, "queued": queued,
                        "running": attached and s["state"] == "running"
                        and not s["store_wait"], "store_down": s["store_down"],
                        "skip": i in self.thirdparty, "alive": alive})  # fmt: skip
        if out and self.pids:
            out[0]["input"] = self._port_rx_count(self.pids[0])
        return out

    def _port_rx_count(self, pid: int) -> int | None:
        """Frames the kernel received on the first NF's netdev (an ``iface=`` vdev), read
        in that process's network namespace; None for a PCI port or if unreadable."""
        vdev = self.ports.get("rx", {}).get("vdev", "")
        iface = next((kv[6:] for kv in vdev.split(",") if kv.startswith("iface=")), None)
        if iface is None:
            return None
        try:
            with open(f"/proc/{pid}/net/dev") as f:
                for line in f.read().splitlines()[2:]:
                    name, _, rest = line.partition(":")
                    if name.strip() == iface:
                        return int(rest.split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return None

    def note_stall(self, i: int, reason: str) -> None:
        """The monitor found native NF ``i`` stalled: :meth:`failures` reports it."""
        if all(j != i for j, _ in self.stalled):
            self.stalled.append((i, reason))

    def _kill_nfs(self) -> None:
        """SIGKILL every NF process (and whatever else is in its cgroup) now, without
        waiting for them (teardown reaps them): a stalled NF that resumed after its
        flows moved would serve them a second time."""
        for k, p in enumerate(self.procs):
            cgroup = getattr(self.handles[k], "cgroup", None) if k < len(self.handles) else None
            pids = set(cgroup.procs()) if cgroup is not None else set()
            for pid in pids | {p.pid, *self.pids[k : k + 1]}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def failures(self) -> list[tuple[int, str]]:
        """NFs found failed: native ones the monitor found stalled (their processes are
        killed here), third-party ones whose program exited or that stalled
        (:class:`Health`): ``[(index, reason)]``, the index of the NF in the chain
        spec.  The agent's monitor calls this every tick."""
        if self.state not in ("detached", "attached"):
            return []
        if self.stalled:
            self._kill_nfs()
            # process positions -> spec positions (a port stage before a third-party first)
            return [(max(i - self.offset, 0), r) for i, r in self.stalled]
        if not self.thirdparty:
            return []
        out = []
        for i in self.thirdparty:
            if self._thirdparty_status(i)["status"] == "failed":
                j = i - self.offset
                out.append((j, f"third-party NF {j} failed: {self.health[i].reason}"))
        return out

    def final_nf_stats(self) -> list[dict]:
        """After :meth:`teardown`: each NF's own counters (its ``stats()``: a urlfilter's
        ``blocked``, a decrypt's ``auth_failed``, ...) in chain order, each with its
        ``type``; an NF whose process ended without a summary has ``{"type": ...}``
        only.  Empty before a teardown."""
        if not self.summaries:
            return []
        flat: list[dict | None] = []
        for s in self.summaries:
            own = s.get("nf_stats") if s else None
            flat.extend(own or [None])  # a process without them keeps its place
        out = []
        for i, nf in enumerate(self.nfs):
            if i < self.offset:
                continue  # the port stage before a third-party first NF: not the spec's
            own = flat[i] if i < len(flat) and isinstance(flat[i], dict) else {}
            out.append({"type": nf.get("type"), **own})
        return out

    def where(self, i: int) -> str:
        """How errors name process ``i``: the spec's ``nfs[j]``, or the port stage."""
        if i < self.offset:
            return "port stage (the runtime's first NF, before a third-party NF first)"
        return f"nfs[{i - self.offset}]"

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def teardown(self, timeout: float = 10.0) -> None:
        """STOP every NF, reap the processes (SIGKILL if they do not stop), remove the files."""
        if self.state == "gone":
            return
        if self.buffers:
            try:
                self.ctl.ctl = chainbuf.CTL_STOP
            except (chainbuf.ChainBufferError, AttributeError, KeyError, StopIteration):
                pass
        if self.scheduler is not None:
            try:
                self.scheduler.unregister(self.name)
            except Exception:
                pass
        for h in self.handles:  # off SCHED_FIFO now: shut down on the startup CPUs
            try:
                h.unsettle()
            except Exception:
                pass
        deadline = time.monotonic() + timeout
        self.summaries = []
        for k, p in enumerate(self.procs):
            try:
                out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if k < len(self.handles):  # every process of its container, not only nfinit
                    self.handles[k].stop(grace=0)
                else:
                    p.send_signal(signal.SIGKILL)
                out, _ = p.communicate()
            summary = None
            for line in (out or "").splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("done"):
                    summary = msg
            self.summaries.append(summary)
        final = self.final_nf_stats()
        if final:  # the NFs' own counters exist only now: the operator's one look at them
            LOG.info("instance %s final NF counters: %s", self.name,
                     json.dumps(final, sort_keys=True, default=str))  # fmt: skip
        for h in self.handles:  # whatever is left in each NF's cgroup, then the cgroup
            h.stop(grace=0.5)
        self.handles = []
        for path, b in self.buffers.items():
            b.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.buffers = {}
        for tp in self.thirdparty.values():
            tp.down()
        self.thirdparty = {}
        if self.hold is not None:
            path = self.hold.path
            self.hold.close()
            self.hold = None
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        # Each NF's EAL made its runtime directory as root, before the NF gave root
        # up, so the NF cannot remove it on its way out: the agent does.
        for i in range(len(self.nfs)):
            shutil.rmtree(f"/var/run/dpdk/{self.prefix}-{self.name}-nf{i}", ignore_errors=True)
        self.state = "gone"

    def _need(self, state: str, what: str) -> None:
        if self.state != state:
            raise ChainError(f"{what}: instance {self.name} is {self.state}, not {state}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()
