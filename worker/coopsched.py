"""The cooperative scheduler: runs the NFs of a chain one after another on one core.

Run by the agent, as root, one :class:`CoreScheduler` per managed core:

* a **master thread** (on the housekeeping core, SCHED_OTHER) serves the
  requests -- register, attach, detach, unregister -- one at a time, so
  they never race each other;
* an **enforcer thread** pinned to the managed core at the highest
  SCHED_FIFO priority: the watchdog.  It wakes every ``period`` and, for
  each attached group, reads each NF thread's ``/proc/<tid>/schedstat``.  An
  NF that ran the whole time without the core ever passing to another task
  has not yielded; once that lasts ``timeout`` the chain is ended (every
  process of the group SIGKILLed, the group demoted) and reported through
  ``on_event``.

A **scheduling group** is one chain instance: its NF thread ids in chain
order and its chain buffer (whose control word the NFs' runtimes check
between batches).  A group is

* *detached*: control word PARK, every NF parked on the futex (no CPU) at
  the lowest SCHED_FIFO priority;
* *attached*: control word RUN, every NF at ``PRIO_ATTACHED``, put on the
  core's run queue in chain order (raising a SCHED_FIFO task's priority
  puts it at the tail of its new priority's list), so when NF i yields
  after its batch NF i+1 runs.

Attach and detach take effect between batches only: the runtimes read the
control word at batch boundaries, and detach waits until every NF of the
chain has parked (in-flight batches drained) before lowering priorities.

NF processes cannot undo any of this: :mod:`worker.sandbox` drops their
capabilities and filters the scheduling system calls.  RT throttling
(``kernel.sched_rt_runtime_us``) is left as it is (checked, never changed),
and a core set that would leave no CPU for the kernel, the agent and the
monitor is refused.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from cext import chainbuf

PRIO_DETACHED = 1
PRIO_ATTACHED = 50
PRIO_ENFORCER = os.sched_get_priority_max(os.SCHED_FIFO)

RT_RUNTIME = "/proc/sys/kernel/sched_rt_runtime_us"


class SchedError(RuntimeError):
    """A scheduler request was refused; the message names the field and the reason."""


def rt_throttling() -> tuple[int, int]:
    """``(sched_rt_runtime_us, sched_rt_period_us)``; -1 runtime means throttling is off."""
    with open(RT_RUNTIME) as f:
        runtime = int(f.read())
    with open("/proc/sys/kernel/sched_rt_period_us") as f:
        period = int(f.read())
    return runtime, period


def check_cores(cores: Sequence[int]) -> None:
    """Refuse managed cores that are offline/not ours or leave no housekeeping CPU."""
    allowed = os.sched_getaffinity(0)
    for c in cores:
        if c not in allowed:
            raise SchedError(f"cores: {c} is not a CPU this agent may use ({sorted(allowed)})")
    if not set(allowed) - set(cores):
        raise SchedError(
            f"cores: {sorted(cores)} would leave no CPU for the kernel, agent and monitor"
        )
    runtime, _period = rt_throttling()
    if runtime < 0:
        raise SchedError(
            "kernel.sched_rt_runtime_us is -1 (RT throttling disabled): a stuck SCHED_FIFO "
            "NF could starve the core's kernel threads; re-enable it (default 950000)"
        )


def schedstat(tid: int) -> tuple[int, int]:
    """``(ns on CPU, times run)`` of thread ``tid`` from /proc/<tid>/schedstat."""
    with open(f"/proc/{tid}/schedstat") as f:
        run_ns, _wait_ns, pcount = f.read().split()
    return int(run_ns), int(pcount)


def thread_state(tid: int) -> str:
    """The one-letter state of /proc/<tid>/stat ('R', 'S', 'Z'...), 'X' if gone."""
    try:
        with open(f"/proc/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "X"


def tgid_of(tid: int) -> int | None:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


@dataclass
class Group:
    name: str
    tids: list[int]
    buffer: chainbuf.ChainBuffer
    state: str = "detached"  # detached | attached | ended
    reason: str = ""
    # watchdog bookkeeping per tid: (run_ns, pcount, ns run without a switch)
    watch: dict[int, tuple[int, int, int]] = field(default_factory=dict)


class CoreScheduler:
    """The cooperative scheduler of one managed core (master + enforcer threads)."""

    def __init__(
        self,
        core: int,
        *,
        timeout: float = 0.25,
        period: float | None = None,
        detach_timeout: float = 2.0,
        on_event: Callable[[dict], None] | None = None,
        housekeeping: set[int] | None = None,
    ):
        check_cores([core])
        if timeout <= 0:
            raise SchedError(f"timeout: {timeout!r} is not a positive number of seconds")
        self.core = core
        self.timeout = timeout
        self.period = period if period is not None else timeout / 4
        self.detach_timeout = detach_timeout
        self.on_event = on_event or (lambda ev: None)
        self.housekeeping = housekeeping or (os.sched_getaffinity(0) - {core})
        self.groups: dict[str, Group] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._master = threading.Thread(target=self._serve, name=f"qs-master-{core}", daemon=True)
        self._enforcer = threading.Thread(
            target=self._enforce, name=f"qs-enforcer-{core}", daemon=True
        )
        self._enforcer_ready = threading.Event()
        self._enforcer_error: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> CoreScheduler:
        self._master.start()
        self._enforcer.start()
        self._enforcer_ready.wait(5)
        if self._enforcer_error is not None:
            self.stop()
            raise SchedError(
                f"enforcer: cannot run at SCHED_FIFO {PRIO_ENFORCER} on core "
                f"{self.core}: {self._enforcer_error}"
            )
        return self

    def stop(self) -> None:
        self._stop.set()
        self._requests.put(None)
        for t in (self._master, self._enforcer):
            if t.is_alive() and t is not threading.current_thread():
                t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- requests (any thread; served by the master thread) ----------------
    def _call(self, fn, *args):
        if self._stop.is_set():
            raise SchedError(f"scheduler of core {self.core} is stopped")
        fut: Future = Future()
        self._requests.put((fn, args, fut))
        return fut.result()

    def register(self, name: str, tids: Sequence[int], buffer: chainbuf.ChainBuffer) -> None:
        """Make ``tids`` (chain order) a detached group on this core."""
        return self._call(self._register, name, list(tids), buffer)

    def attach(self, name: str) -> None:
        return self._call(self._attach, name)

    def detach(self, name: str) -> None:
        return self._call(self._detach, name)

    def unregister(self, name: str) -> None:
        return self._call(self._unregister, name)

    def state(self, name: str) -> str:
        with self._lock:
            g = self.groups.get(name)
            return g.state if g else "unknown"

    def _serve(self):
        os.sched_setaffinity(0, self.housekeeping)
        while True:
            req = self._requests.get()
            if req is None:
                return
            fn, args, fut = req
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed back to the caller
                fut.set_exception(exc)

    # -- the operations (master thread only) --------------------------------
    def _group(self, name: str) -> Group:
        g = self.groups.get(name)
        if g is None:
            raise SchedError(f"group: no chain {name!r} on core {self.core}")
        if g.state == "ended":
            raise SchedError(f"group: chain {name!r} was ended: {g.reason}")
        return g

    def _register(self, name, tids, buffer):
        if name in self.groups:
            raise SchedError(f"group: {name!r} is already registered on core {self.core}")
        if not 2 <= len(tids) <= chainbuf.MAX_NFS:
            raise SchedError(
                f"tids: a scheduled chain has 2..{chainbuf.MAX_NFS} NFs, got {len(tids)} "
                "(a single-NF chain runs without the scheduler)"
            )
        if len(set(tids)) != len(tids):
            raise SchedError(f"tids: {tids} has duplicates")
        for t in tids:
            if thread_state(t) in ("X", "Z"):
                raise SchedError(f"tids: thread {t} does not exist")
        for t in tids:
            os.sched_setaffinity(t, {self.core})
            os.sched_setscheduler(t, os.SCHED_FIFO, os.sched_param(PRIO_DETACHED))
        with self._lock:
            self.groups[name] = Group(name, tids, buffer)

    def _attach(self, name):
        g = self._group(name)
        if g.state == "attached":
            return
        g.buffer.ctl = chainbuf.CTL_RUN  # wakes the parked NFs (still at the lowest priority)
        for t in g.tids:  # chain order: each raise appends to the run queue's tail
            os.sched_setscheduler(t, os.SCHED_FIFO, os.sched_param(PRIO_ATTACHED))
        with self._lock:
            g.watch = {}
            g.state = "attached"

    def _detach(self, name):
        g = self._group(name)
        if g.state == "detached":
            return
        g.buffer.ctl = chainbuf.CTL_PARK
        deadline = time.monotonic() + self.detach_timeout
        while True:
            if g.buffer.parked(len(g.tids)):
                break
            states = [g.buffer.nf_stats(i)["state"] for i in range(len(g.tids))]
            if time.monotonic() > deadline:
                self._end(g, f"detach: NFs did not park within {self.detach_timeout}s ({states})")
                raise SchedError(f"detach: chain {name!r} did not drain; ended it")
            time.sleep(0.001)
        for t in g.tids:
            os.sched_setscheduler(t, os.SCHED_FIFO, os.sched_param(PRIO_DETACHED))
        with self._lock:
            g.state = "detached"

    def _unregister(self, name):
        with self._lock:
            g = self.groups.pop(name, None)
        if g is None:
            return
        for t in g.tids:
            try:
                os.sched_setscheduler(t, os.SCHED_OTHER, os.sched_param(0))
            except (ProcessLookupError, PermissionError):
                pass

    # -- ending a chain (master or enforcer) ---------------------------------
    def _end(self, g: Group, reason: str, **detail) -> None:
        with self._lock:
            if g.state == "ended":
                return
            g.state = "ended"
            g.reason = reason
        for t in g.tids:  # first take the core back, then kill
            try:
                os.sched_setscheduler(t, os.SCHED_OTHER, os.sched_param(0))
            except (ProcessLookupError, PermissionError, OSError):
                pass
        for t in g.tids:
            pid = tgid_of(t)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        ev = {"event": "chain_ended", "chain": g.name, "core": self.core, "reason": reason}
        ev.update(detail)
        self.events.append(ev)
        try:
            self.on_event(ev)
        except Exception:  # a reporting failure must not stop the watchdog
            pass

    # -- the watchdog (enforcer thread, SCHED_FIFO max on the managed core) --
    def _enforce(self):
        try:
            os.sched_setaffinity(0, {self.core})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIO_ENFORCER))
        except OSError as exc:
            self._enforcer_error = exc
            self._enforcer_ready.set()
            return
        self._enforcer_ready.set()
        while not self._stop.wait(self.period):
            with self._lock:
                attached = [g for g in self.groups.values() if g.state == "attached"]
            for g in attached:
                self._check(g)

    def _check(self, g: Group) -> None:
        for i, t in enumerate(g.tids):
            try:
                run_ns, pcount = schedstat(t)
            except (FileNotFoundError, ProcessLookupError):
                self._end(g, f"NF {i} (thread {t}) exited", nf=i, tid=t)
                return
            prev = g.watch.get(t)
            if prev is None:
                g.watch[t] = (run_ns, pcount, 0)
                continue
            p_run, p_count, streak = prev
            ran = run_ns - p_run
            # Our own wake-ups preempt the running NF (+1 pcount each); more than
            # that means the core passed to another task: the NF yielded.
            switched = pcount - p_count > 2
            streak = 0 if switched or ran < self.period * 1e9 / 2 else streak + ran
            g.watch[t] = (run_ns, pcount, streak)
            if streak >= self.timeout * 1e9:
                others = [thread_state(o) for o in g.tids if o != t]
                if all(s == "R" for s in others):
                    self._end(
                        g,
                        f"NF {i} (thread {t}) did not yield for {streak / 1e6:.0f} ms",
                        nf=i,
                        tid=t,
                        ran_ms=round(streak / 1e6, 1),
                    )
                else:
                    self._end(
                        g,
                        f"NF {i} (thread {t}) ran alone: the chain's other NFs are not "
                        f"runnable ({others})",
                        nf=i,
                        tid=t,
                    )
                return
