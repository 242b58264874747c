"""One userspace datapath per machine: the lease that makes labs take turns.

Open vSwitch's userspace datapath always creates a tap device named
``ovs-netdev``; a second ``ovs-vswitchd`` with a netdev bridge in the same
network namespace cannot create it and fails to open its datapath.  So at
most one lab runs at a time.  The lease is a file naming the run directory
of the lab that holds it; it is free when that file is absent or its lab's
``ovs-vswitchd`` is gone.  Taking and releasing it happens under ``flock``.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from pathlib import Path

LEASE_DIR = Path("/run/quadrant-lab")
DATAPATH_TAP = "ovs-netdev"


class LeaseBusy(RuntimeError):
    pass


class DatapathLease:
    def __init__(self, rundir: Path, holder_alive: Callable[[Path], bool], base: Path = LEASE_DIR):
        self.rundir = Path(rundir).resolve()
        self.holder_alive = holder_alive
        self.file = base / "datapath.lease"
        self.lock = base / "datapath.lock"

    def holder(self) -> Path | None:
        try:
            return Path(self.file.read_text().strip())
        except OSError:
            return None

    def _locked(self, fn):
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        with self.lock.open("a") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                return fn()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def try_acquire(self) -> Path | None:
        """Take the lease; returns None on success, else the holder's run directory."""

        def take():
            holder = self.holder()
            if holder is not None and holder != self.rundir and self.holder_alive(holder):
                return holder
            self.file.write_text(f"{self.rundir}\n")
            return None

        return self._locked(take)

    def acquire(self, wait: float = 0.0, progress: Callable[[str], None] | None = None) -> None:
        deadline = time.monotonic() + wait
        said = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                return
            if time.monotonic() >= deadline:
                raise LeaseBusy(
                    f"another lab ({holder}) is running its userspace datapath; only one can run "
                    f"per machine (its tap device is always named {DATAPATH_TAP}): take it "
                    "down first (quadrant-lab down)"
                )
            if progress and not said:
                progress(f"waiting for the lab in {holder} to finish (one datapath per machine)")
                said = True
            time.sleep(0.5)

    def release(self) -> None:
        def drop():
            if self.holder() == self.rundir:
                self.file.unlink(missing_ok=True)

        self._locked(drop)

    def held(self) -> bool:
        return self.holder() == self.rundir
