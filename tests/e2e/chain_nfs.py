"""Python NFs for the chain tests, among them deliberately malicious ones.

They run inside confined NF processes (worker.chain_nf); ``configure`` runs
before the confinement (as root, like every NF's setup), ``process`` after.
Reports go to files the test names in the config, opened in ``configure``.
"""

import ctypes
import errno
import json
import os
import threading
import time

from cext import chainbuf


class DropOddPort:
    """Drops UDP packets whose source port is odd (verdicts travel down the chain)."""

    def process(self, packets, verdicts):
        for i, p in enumerate(packets):
            off = 18 if p[12:14] == b"\x81\x00" else 14  # behind a VLAN tag or not
            if len(p) >= off + 22 and p[off + 21] & 1:  # low byte of the UDP source port
                verdicts[i] = 1


def _attempt(fn):
    try:
        fn()
    except OSError as exc:
        return f"denied: {errno.errorcode.get(exc.errno, exc.errno)}"
    except RuntimeError as exc:  # threading: "can't start new thread"
        return f"denied: {exc}"
    return "succeeded"


class Prober:
    """On its first batch, tries every way out of its chain it can think of.

    config: {"report": path, "other_buffer": path of another chain's buffer,
             "own_buffer": path of its own chain's buffer}
    """

    def configure(self, config):
        self.cfg = dict(config)
        self.out = open(self.cfg["report"], "w")  # noqa: SIM115 (opened before confinement)
        self.done = False

    def _peers(self):
        me = os.getpid()
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != me:
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if b"worker.chain_nf" in f.read():
                            out.append(int(d))
                except OSError:
                    pass
        return out

    def process(self, packets, verdicts):
        if self.done:
            return
        self.done = True
        r = {}
        r["raise_priority"] = _attempt(
            lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
        )
        r["lower_to_other"] = _attempt(
            lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        )
        r["change_affinity"] = _attempt(lambda: os.sched_setaffinity(0, {0}))
        r["nice"] = _attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, -10))
        r["start_thread"] = _attempt(lambda: threading.Thread(target=time.sleep, args=(0,)).start())
        r["fork"] = _attempt(lambda: os.fork() == 0 and os._exit(0))
        r["other_chain_buffer"] = _attempt(lambda: open(self.cfg["other_buffer"], "rb").close())
        r["other_chain_buffer_map"] = _attempt(
            lambda: chainbuf.ChainBuffer.open(self.cfg["other_buffer"]).close()
        )
        peers = self._peers()
        r["peers_seen"] = len(peers)
        for pid in peers:
            r[f"peer_mem_{pid}"] = _attempt(lambda pid=pid: _read(f"/proc/{pid}/mem"))
            r[f"peer_maps_{pid}"] = _attempt(lambda pid=pid: _read(f"/proc/{pid}/maps"))
            r[f"peer_kill0_{pid}"] = _attempt(lambda pid=pid: os.kill(pid, 0))
            r[f"peer_vm_read_{pid}"] = _attempt(lambda pid=pid: _vm_read(pid))
        hp = "/dev/hugepages"
        for name in os.listdir(hp) if os.path.isdir(hp) else []:
            if name != os.path.basename(self.cfg["own_buffer"]):
                r[f"hugepage_{name}"] = _attempt(lambda name=name: _read(f"{hp}/{name}"))
        json.dump(r, self.out)
        self.out.close()


def _read(path):
    with open(path, "rb") as f:
        f.read(1)


def _vm_read(pid):
    libc = ctypes.CDLL(None, use_errno=True)

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    buf = ctypes.create_string_buffer(8)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = IoVec(0x400000, 8)
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class SlowMarker:
    """Marks its whole batch BUSY, works ``ms`` milliseconds, then marks it DONE."""

    def configure(self, config):
        self.s = config.get("ms", 3) / 1000

    def process(self, packets, verdicts):
        for p in packets:
            p[-4:] = b"BUSY"
        end = time.perf_counter() + self.s
        while time.perf_counter() < end:
            pass
        for p in packets:
            p[-4:] = b"DONE"


class Spy:
    """Each batch, scans its whole chain buffer for packets still marked BUSY.

    config: {"buffer": path of its own chain buffer, "report": path}
    """

    def configure(self, config):
        self.buf = chainbuf.ChainBuffer.open(config["buffer"])
        self.mem = self.buf.memory()
        self.out = open(config["report"], "w")  # noqa: SIM115 (opened before confinement)
        self.calls = 0
        self.sightings = 0

    def process(self, packets, verdicts):
        self.calls += 1
        self.sightings += bytes(self.mem).count(b"BUSY")
        self.out.seek(0)
        self.out.write(json.dumps({"calls": self.calls, "sightings": self.sightings}) + "\n")
        self.out.truncate()
        self.out.flush()


class Hog:
    """Never yields: spins forever in its first batch."""

    def process(self, packets, verdicts):
        while True:
            pass


class RingCorruptor:
    """Forwards normally, but also stuffs bogus offsets into its successor's ring
    and rewinds its own input ring's indices.

    config: {"buffer": path, "ring": ring index of the successor's input}
    """

    def configure(self, config):
        self.buf = chainbuf.ChainBuffer.open(config["buffer"])
        self.ring = config["ring"]
        self.done = 0

    def process(self, packets, verdicts):
        if self.done < 3:
            self.done += 1
            big = self.buf.n_slots * chainbuf.SLOT_SIZE
            self.buf.enqueue(self.ring, [7, big, big + chainbuf.SLOT_SIZE, 2**32 - 1, 100])


class SlowEvery:
    """Forwards everything; every ``every``-th batch it spins ``spin_us`` first (a tail)."""

    def configure(self, config):
        self.every = int(config.get("every", 20))
        self.spin = float(config.get("spin_us", 1000)) / 1e6
        self.calls = 0

    def process(self, packets, verdicts):
        self.calls += 1
        if self.calls % self.every == 0:
            end = time.perf_counter() + self.spin
            while time.perf_counter() < end:
                pass
