"""The chain instances one worker runs, and the controller's commands on them.

:class:`InstanceManager` is what ``quadrant-agent`` registers on its
JSON-RPC dispatcher: ``prepare``, ``attach``, ``detach``, ``set_batch`` and
``teardown`` (params and results in docs/protocol.rst).  Each instance is a
:class:`worker.chain.ChainInstance` on one managed core and one VF of the
worker's inventory, its NF processes started through the launcher (own
namespaces, a cgroup on the core, the worker's network namespace), its NFs
scheduled by the core's :class:`worker.coopsched.CoreScheduler`.

Every refusal is checked before anything starts, and a prepare that fails
later (an NF that does not come up: bad config, no memory) tears down what
it started, so a refused command leaves nothing behind.  Commands run in the
agent's executor threads: one lock serialises them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import RpcError
from worker import flowhold
from worker.chain import MODES, ChainError, ChainIds, ChainInstance
from worker.launcher import Launcher, LaunchError
from worker.nf_registry import NF_TYPES
from worker.state_access import STATEFUL_NF_TYPES, StateAccess, StateAccessError

LOG = logging.getLogger("quadrant.instances")

# The NF types a controller may ask for: the runtime's built-in ones.  ``python``
# and ``native`` import a class named in the config, i.e. run code the
# controller names: they are for the standalone runtime, not for remote commands.
# (``nat`` keeps state: the agent needs a state store, --state-redis, docs/state.rst.)
AGENT_NF_TYPES = tuple(t for t in NF_TYPES if t not in ("native", "python"))
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_BATCH = 1024
# how long a prepare waits for a failed or departing instance to free its VF (_await_vf);
# what it waits comes off the prepare's own timeout, so both stay below the controller's
VF_RELEASE_S = 3.0
UIDS_PER_INSTANCE = 16  # NF i of an instance runs as uid_base + i; at most 8 NFs


def reap_prefix(prefix: str, cgroup_root: Path = Path("/sys/fs/cgroup")) -> dict:
    """Kill every task of the cgroups under ``prefix`` and remove those cgroups, and the
    files an agent of that prefix makes (chain buffers, hold regions, DPDK runtime
    directories).  ``{"killed": n, "files": n}``."""
    killed, files = 0, 0
    parents = [cgroup_root / prefix] + [cgroup_root / c / prefix for c in ("cpuset", "memory")]
    for parent in parents:
        if not parent.is_dir():
            continue
        for d in [x for x in parent.iterdir() if x.is_dir()]:
            try:
                pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, 9)
                    killed += 1
                except ProcessLookupError:
                    pass
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the killed tasks are still leaving
        try:
            parent.rmdir()
        except OSError:
            pass
    for root in ("/dev/shm", "/dev/hugepages", "/var/run/dpdk"):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix + "-"):
                continue
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    continue
            files += 1
    return {"killed": killed, "files": files}


def refuse(field: str, reason: str) -> RpcError:
    return RpcError(jsonrpc.REFUSED, f"{field}: {reason}")


def _int(params: dict, name: str, lo: int, hi: int, where: str = "params") -> int:
    value = jsonrpc.require(params, name, int, where)
    if not lo <= value <= hi:
        raise refuse(f"{where}.{name}", f"{value} is outside {lo}..{hi}")
    return value


@dataclass
class Entry:
    """One instance as the controller knows it."""

    id: int
    chain_id: int
    chain_name: str
    core: int
    vf: str
    chain: ChainInstance
    slot: int  # which uid/gid range it holds
    failed: str = ""  # why it died, once it has
    ready: bool = False  # prepared (until then it only reserves its id, VF and uids)
    removing: bool = False  # its teardown has begun (it frees the VF when it is done)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one command at a time


class InstanceManager:
    def __init__(
        self,
        inventory: dict,
        cores: list[int],
        *,
        launcher: Launcher | None,
        netns: str | None = None,
        prefix: str = "quadrant",
        uid_base: int = 480000,
        log_dir: str | None = None,
        n_slots: int = 2048,
        scheduler_factory: Callable | None = None,
        watchdog_timeout: float = 0.25,
        prepare_timeout: float = 8.0,
        on_event: Callable[[dict], None] | None = None,
        state_access: StateAccess | None = None,
    ):
        self.vfs = {vf["mac"].lower(): vf for vf in inventory.get("vfs", [])}
        self.cores = sorted(cores)
        # NFs set up on the housekeeping CPUs, not on a data core busy with SCHED_FIFO chains
        self.startup_cpus = tuple(sorted(os.sched_getaffinity(0) - set(self.cores)))
        self.launcher = launcher
        self.netns = netns
        self.prefix = prefix
        self.uid_base = uid_base
        self.log_dir = log_dir or f"/tmp/{prefix}-nf-logs"
        self.n_slots = n_slots
        self.scheduler_factory = scheduler_factory
        self.watchdog_timeout = watchdog_timeout
        # below the controller's call timeout (10 s): a prepare the controller gave up on
        # must not live on here as an instance it does not know
        self.prepare_timeout = prepare_timeout
        self.vf_release_s = VF_RELEASE_S
        self.on_event = on_event or (lambda ev: None)
        # where stateful NFs keep their state; the agent creates each one's ACL user
        self.state_access = state_access
        self.entries: dict[int, Entry] = {}
        self.schedulers: dict[int, object] = {}
        self.lock = threading.RLock()
        self._ended: deque = deque()  # chains a core's watchdog ended, not yet reported

    def start_schedulers(self) -> None:
        """One cooperative scheduler per managed core, now (the agent calls this before it
        pins itself to the housekeeping cores: a scheduler checks its core is usable)."""
        with self.lock:
            for core in self.cores:
                self._scheduler(core)

    # -- registration on the agent ------------------------------------------------
    def register(self, dispatcher) -> None:
        for name in ("prepare", "attach", "detach", "set_batch", "teardown", "hold", "release",
                     "drain", "nat_handover"):  # fmt: skip
            dispatcher.add(name, self._guarded(name, getattr(self, name)))

    @staticmethod
    def _guarded(name: str, fn):
        """Every command gets an answer: an unexpected failure is an internal error."""

        def call(params):
            try:
                return fn(params)
            except RpcError:
                raise
            except Exception as exc:
                LOG.exception("%s failed", name)
                raise RpcError(jsonrpc.INTERNAL_ERROR, f"{name}: {exc}") from None

        return call

    def list(self) -> list[dict]:
        """What runs here, for ``register``'s ``instances``."""
        with self.lock:
            return [
                {
                    "id": e.id,
                    "chain_id": e.chain_id,
                    "core": e.core,
                    "vf": e.vf,
                    "state": "failed" if e.failed else e.chain.state,
                }  # fmt: skip
                for e in self.entries.values()
                if e.ready
            ]

    # -- commands ---------------------------------------------------------------
    def prepare(self, params) -> dict:
        p = self._params(params)
        iid = _int(p, "instance", 0, 2**53, "params")
        chain = jsonrpc.require(p, "chain", dict)
        chain_id = _int(chain, "id", 0, 2**53, "params.chain")
        chain_name = jsonrpc.require(chain, "name", str, "params.chain")
        nfs = self._nfs(jsonrpc.require(chain, "nfs", list, "params.chain"))
        core = jsonrpc.require(p, "core", int)
        mac = jsonrpc.require(p, "vf", str).lower()
        batch = _int(p, "batch", 1, MAX_BATCH) if "batch" in p else 32
        mode = jsonrpc.require(p, "mode", str) if "mode" in p else "coop"
        if mode not in MODES:
            raise refuse("params.mode", f"{mode!r} is not one of {', '.join(MODES)}")
        if core not in self.cores:
            raise refuse("params.core", f"{core} is not a core this agent manages {self.cores}")
        for i, nf in enumerate(nfs):
            if nf["type"] in STATEFUL_NF_TYPES and self.state_access is None:
                raise refuse(
                    f"params.chain.nfs[{i}].type",
                    f"{nf['type']} keeps state: this agent has no state store (--state-redis)",
                )
        if not MAC_RE.match(mac):
            raise refuse("params.vf", f"{mac!r} is not a MAC address")
        t_wait = time.monotonic()
        self._await_vf(mac)
        waited = time.monotonic() - t_wait
        with self.lock:
            if mac not in self.vfs:
                raise refuse("params.vf", f"{mac} is not a VF of this worker")
            if iid in self.entries:
                raise refuse("params.instance", f"{iid} already exists on this worker")
            for e in self.entries.values():
                if e.vf == mac:
                    raise refuse("params.vf", f"{mac} is in use by instance {e.id}")
            slot = self._free_slot()
            try:
                for i, nf in enumerate(nfs):
                    if nf["type"] in STATEFUL_NF_TYPES:
                        nf["state"] = self.state_access.nf_state(chain_id, i, iid)
                    if nf["type"] == "nat":  # its identity: the owner it writes and looks for
                        nf["config"] = {"instance": iid, **(nf.get("config") or {})}
            except StateAccessError as exc:
                raise refuse(f"params.chain.nfs[{i}]", str(exc)) from None
            try:
                sched = self._scheduler(core) if len(nfs) > 1 and mode in ("coop", "copy") else None
            except Exception as exc:
                raise refuse("params.core", f"no scheduler on core {core}: {exc}") from None
            os.makedirs(self.log_dir, mode=0o755, exist_ok=True)
            uid = self.uid_base + slot * UIDS_PER_INSTANCE
            try:
                inst = ChainInstance(
                    f"i{iid}",
                    nfs,
                    core=core,
                    ports={"rx": self._port(self.vfs[mac], iid)},
                    ids=ChainIds(uid, uid),
                    prefix=self.prefix,
                    mode=mode,
                    scheduler=sched,
                    n_slots=self.n_slots,
                    batch=batch,
                    log_dir=self.log_dir,
                    launcher=self.launcher,
                    netns=self.netns,
                    startup_cpus=self.startup_cpus if self.launcher is not None else (),
                )
            except ChainError as exc:  # a bad NF config (a third-party NF's spec)
                raise refuse("params.chain.nfs", str(exc)) from None
            # reserve the id, the VF and the uids; start the processes outside the manager's
            # lock, so commands on other instances (an attach from the warm pool) never wait
            e = Entry(iid, chain_id, chain_name, core, mac, inst, slot)
            e.lock.acquire()
            self.entries[iid] = e
        try:
            t0 = time.monotonic()
            try:
                inst.prepare(timeout=max(1.0, self.prepare_timeout - waited))
            except Exception as exc:  # prepare() has torn down what it started
                with self.lock:
                    self.entries.pop(iid, None)
                self._drop_users(e)
                if not isinstance(exc, (ChainError, LaunchError, OSError)):
                    raise
                raise refuse("params.chain.nfs", f"{exc}{self._log_tail(inst, str(exc))}") from None
            e.ready = True
        finally:
            e.lock.release()
        LOG.info("prepared instance %d (chain %s) on core %d, VF %s in %.1f s: pids %s", iid,
                 chain_name, core, mac, time.monotonic() - t0, inst.pids)  # fmt: skip
        return {"instance": iid, "state": inst.state, "pids": list(inst.pids)}

    def _await_vf(self, mac: str) -> bool:
        """Wait (at most ``vf_release_s``) while a failed instance, or one being torn
        down, holds ``mac``: the controller tears a failed instance (or a failed
        worker's) down and may prepare its replacement on the freed VF in the same
        breath, the two commands running side by side here; refusing the prepare
        would cost a whole retry period.  True once no such instance holds it (a live
        one is refused by the caller at once, as before)."""
        deadline = time.monotonic() + self.vf_release_s
        while True:
            with self.lock:
                if not any(e.vf == mac and (e.failed or e.removing)
                           for e in self.entries.values()):  # fmt: skip
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def attach(self, params) -> dict:
        e = self._entry(params)
        self._run(e, "attach", e.chain.attach)
        return {"instance": e.id, "state": e.chain.state}

    def detach(self, params) -> dict:
        e = self._entry(params)
        self._run(e, "detach", e.chain.detach)
        return {"instance": e.id, "state": e.chain.state}

    def set_batch(self, params) -> dict:
        p = self._params(params)
        e = self._entry(p)
        batch = _int(p, "batch", 1, MAX_BATCH)
        self._run(e, "set_batch", lambda: e.chain.set_batch(batch))
        return {"instance": e.id, "batch": batch}

    def hold(self, params) -> dict:
        """Set the flows' packets aside until ``release`` (the new side of a move)."""
        p = self._params(params)
        marked = p.get("marked", False)
        if not isinstance(marked, bool):
            raise RpcError(jsonrpc.INVALID_PARAMS, "params.marked: must be true or false")
        e = self._entry(p)
        keys = flowhold.parse_flows(p.get("flows"))
        out = {}
        self._run(e, "hold", lambda: out.update(entries=e.chain.hold_flows(keys, marked)))
        return {"instance": e.id, "held": len(keys)}

    def release(self, params) -> dict:
        p = self._params(params)
        e = self._entry(p)
        keys = flowhold.parse_flows(p.get("flows"))
        out = {}
        self._run(e, "release", lambda: out.update(n=e.chain.release_flows(keys)))
        return {"instance": e.id, "released": out["n"]}

    def drain(self, params) -> dict:
        """Return once the instance has emitted what its port had queued (the old
        side of a move), or after ``timeout`` seconds with ``drained: false``."""
        p = self._params(params)
        e = self._entry(p)
        timeout = p.get("timeout", 0.5)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (0 < timeout <= 10)
        ):
            raise RpcError(jsonrpc.INVALID_PARAMS, "params.timeout: seconds in (0, 10]")
        out = {}
        self._run(e, "drain", lambda: out.update(e.chain.drain(float(timeout))))
        return {"instance": e.id, **out}

    def nat_handover(self, params) -> dict:
        """The NAT mappings of outbound ``flows`` of an instance's chain (the external
        address and port of each, or null), and with ``owner`` that instance written as
        their owner (0 for those on ``home``, the owner's own address, and with owner 0):
        the controller's part of moving NAT connections (docs/state.rst)."""
        p = self._params(params)
        e = self._entry(p)
        keys = flowhold.parse_flows(p.get("flows"))
        owner = p.get("owner")
        if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int)
                                  or not 0 <= owner < 2**32):  # fmt: skip
            raise refuse("params.owner", f"must be an instance id (0: the address's), got "
                         f"{owner!r}")  # fmt: skip
        home = p.get("home")
        try:
            home = None if home is None else int(ipaddress.IPv4Address(home))
        except (ValueError, TypeError):
            raise refuse("params.home", f"must be an IPv4 address, got {home!r}") from None
        nat = next((nf for nf in e.chain.nfs if nf.get("type") == "nat" and "state" in nf), None)
        if nat is None or self.state_access is None:
            raise refuse("params.instance", f"instance {e.id} has no NAT with a state store")
        flows = []
        for i, (eth, proto, src, dst, sport, dport) in enumerate(keys):
            if eth != 0x0800:
                raise refuse(f"params.flows[{i}]", "the NAT translates IPv4 only")
            flows.append((proto, int.from_bytes(src, "big"), int.from_bytes(dst, "big"),
                          sport, dport))  # fmt: skip
        try:
            got = self.state_access.nat_handover(nat["state"]["prefix"], flows, owner, home)
        except StateAccessError as exc:
            raise refuse("params.flows", str(exc)) from None
        out = [None if m is None else {"address": str(ipaddress.IPv4Address(m[0])), "port": m[1]}
               for m in got]  # fmt: skip
        return {"instance": e.id, "mappings": out}

    def teardown(self, params) -> dict:
        e = self._entry(params)
        self._remove(e)
        # each NF's own counters at its end (a NAT's mappings, a urlfilter's blocks)
        return {"instance": e.id, "state": "gone", "nf_stats": e.chain.final_nf_stats()}

    # -- used by the monitor and the agent ----------------------------------------
    def snapshot(self) -> list[tuple[int, ChainInstance]]:
        with self.lock:
            return [(e.id, e.chain) for e in self.entries.values() if e.ready and not e.failed]

    def check_alive(self) -> list[dict]:
        """Mark instances whose processes died or whose core's watchdog ended them;
        return one ``nf_failed`` event each (the monitor calls this every tick)."""
        ended = {}
        while self._ended:
            ev = self._ended.popleft()
            ended.setdefault(ev.get("chain", ""), ev)
        events = []
        with self.lock:
            entries = list(self.entries.values())
        for e in entries:
            if not e.lock.acquire(blocking=False):
                if e.chain.name in ended:  # busy (a command): look again next tick
                    self._ended.append(ended[e.chain.name])
                continue
            try:
                if not e.ready or e.failed or e.chain.state not in ("detached", "attached"):
                    continue
                ev = ended.get(e.chain.name)
                dead = [i for i, p in enumerate(e.chain.procs) if p.poll() is not None]
                if ev is not None:
                    e.failed = ev.get("reason", "ended by the watchdog")
                    events.append(self._failed_event(e, e.failed, watchdog=True, nfs=dead))
                elif dead:
                    e.failed = f"NF process(es) {dead} exited"
                    events.append(self._failed_event(e, e.failed, nfs=dead))
                elif failed := e.chain.failures():  # a third-party NF's program or output
                    e.failed = "; ".join(reason for _, reason in failed)
                    events.append(self._failed_event(e, e.failed, nfs=[i for i, _ in failed]))
            finally:
                e.lock.release()
        return events

    def _on_sched_event(self, ev: dict) -> None:
        """From a core's watchdog or master thread (it ended a chain).  Only queued:
        the thread may be serving a request of a command that holds the lock."""
        self._ended.append(ev)

    def reap_leftovers(self) -> dict:
        """Remove what an earlier agent of this prefix left when it was killed: its NF
        processes, their cgroups, the chain buffer and hold files, the DPDK runtime
        directories.  Run at start, before anything of our own exists: an agent that
        comes back after a crash starts clean, so no chain it no longer knows keeps
        serving a flow."""
        out = reap_prefix(self.prefix)
        if out["killed"] or out["files"]:
            LOG.warning("an earlier agent of %s left %d NF processes and %d files: removed",
                        self.prefix, out["killed"], out["files"])  # fmt: skip
        return out

    def close(self) -> None:
        """Tear down every instance and stop the schedulers (agent exit)."""
        with self.lock:
            entries = list(self.entries.values())
        for e in entries:
            self._remove(e)
        with self.lock:
            for s in self.schedulers.values():
                s.stop()
            self.schedulers = {}
        if self.state_access is not None:
            self.state_access.close()
        parent = getattr(self.launcher, "cgroup_parent", None)
        if parent:
            for d in (Path("/sys/fs/cgroup") / c / parent for c in ("cpuset", "memory", "")):
                try:
                    d.rmdir()
                except OSError:
                    pass

    # -- helpers ------------------------------------------------------------------
    @staticmethod
    def _params(params) -> dict:
        if not isinstance(params, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS, "params: must be an object")
        return params

    def _entry(self, params) -> Entry:
        iid = jsonrpc.require(self._params(params), "instance", int)
        with self.lock:
            e = self.entries.get(iid)
        if e is None:
            raise refuse("params.instance", f"no instance {iid} on this worker")
        return e

    def _run(self, e: Entry, what: str, fn) -> None:
        with e.lock:
            if not e.ready:
                raise refuse("params.instance", f"instance {e.id} failed to prepare")
            if e.failed:
                raise refuse("params.instance", f"instance {e.id} failed: {e.failed}")
            try:
                fn()
            except (ChainError, ValueError, OSError, RuntimeError) as exc:
                raise refuse("params.instance", f"{what}: {exc}") from None

    def _remove(self, e: Entry) -> None:
        e.removing = True
        with e.lock:
            try:
                e.chain.teardown()
            finally:
                with self.lock:
                    self.entries.pop(e.id, None)
                self._drop_users(e)
        LOG.info("instance %d torn down", e.id)

    def _drop_users(self, e: Entry) -> None:
        for i, nf in enumerate(e.chain.nfs):
            if "state" in nf and self.state_access is not None:
                self.state_access.drop_user(e.chain_id, i, e.id)

    def _nfs(self, raw: list) -> list[dict]:
        if not raw:
            raise refuse("params.chain.nfs", "a chain has at least one NF")
        if len(raw) > 8:
            raise refuse("params.chain.nfs", f"{len(raw)} NFs, at most 8")
        out = []
        for i, nf in enumerate(raw):
            where = f"params.chain.nfs[{i}]"
            if not isinstance(nf, dict):
                raise refuse(where, "must be an object {type, config}")
            unknown = set(nf) - {"type", "config"}
            if unknown:
                raise refuse(where, f"unknown field(s) {sorted(unknown)}")
            t = jsonrpc.require(nf, "type", str, where)
            if t not in AGENT_NF_TYPES:
                raise refuse(
                    f"{where}.type", f"unknown NF type {t!r} ({', '.join(AGENT_NF_TYPES)})"
                )
            config = nf.get("config", {})
            if config is None:
                config = {}
            if not isinstance(config, dict):
                raise refuse(f"{where}.config", "must be an object")
            out.append({"type": t, "config": config})
        return out

    def _free_slot(self) -> int:
        used = {e.slot for e in self.entries.values()}
        return next(k for k in range(len(used) + 1) if k not in used)

    def _port(self, vf: dict, iid: int) -> dict:
        if vf.get("pci"):
            return {"pci": vf["pci"]}
        return {"vdev": f"net_af_packet{iid % 1000},iface={vf['netdev']}"}

    def _scheduler(self, core: int):
        s = self.schedulers.get(core)
        if s is None:
            if self.scheduler_factory is not None:
                s = self.scheduler_factory(core, self._on_sched_event)
            else:
                from worker.coopsched import CoreScheduler

                s = CoreScheduler(
                    core, timeout=self.watchdog_timeout, on_event=self._on_sched_event
                )
                s.start()
            self.schedulers[core] = s
        return s

    def _log_tail(self, inst: ChainInstance, error: str) -> str:
        """The last line the failed NF wrote (its error), for the refusal."""
        lines = []
        named = re.match(r"nfs\[(\d+)\]", error)
        for i in [int(named.group(1))] if named else range(len(inst.nfs)):
            path = os.path.join(self.log_dir, f"{inst.name}-nf{i}.log")
            try:
                text = Path(path).read_text().strip().splitlines()
            except OSError:
                continue
            if text:
                lines.append(f"nf{i}: {text[-1]}")
        return ("; " + "; ".join(lines)) if lines else ""

    def _failed_event(self, e: Entry, reason: str, **detail) -> dict:
        LOG.warning("instance %d failed: %s", e.id, reason)
        return {"kind": "nf_failed", "instance": e.id, "chain_id": e.chain_id, "core": e.core,
                "vf": e.vf, "reason": reason, **detail}  # fmt: skip
