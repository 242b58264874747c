"""Confine an NF process once its privileged setup is done.

An NF process starts as root (the agent's child) so that the first NF can
initialise the EAL and open its port.  Then, before any NF code runs:

1. lock its memory (``mlockall(MCL_CURRENT)``, after the chain buffer, the
   port and the NF's tables are mapped: no page fault can stall it mid-batch
   and let the next NF run while this one holds a half-processed batch);
2. lower ``RLIMIT_RTPRIO``/``RLIMIT_NICE`` to 0;
3. become the NF's own uid with the chain's gid as its only group (every
   capability is lost with root: no ``CAP_SYS_NICE``, ``CAP_SYS_PTRACE``,
   ``CAP_DAC_OVERRIDE``...), so only files of its own chain are open to it
   and it cannot signal or trace the chain's other NFs (their uids differ);
4. ``PR_SET_DUMPABLE 0``: ``/proc/PID/mem`` of this process is closed to
   everyone without ``CAP_SYS_PTRACE``;
5. a seccomp filter on every thread that fails ``sched_setscheduler``,
   ``sched_setparam``, ``sched_setattr``, ``sched_setaffinity``,
   ``setpriority``, ``ptrace``, ``process_vm_readv/writev`` and every call
   that makes a new task (``clone``, ``clone3``, ``fork``, ``vfork``,
   ``execve``, ``execveat``: a thread or child would run outside the chain's
   scheduling group) with EPERM
   (``no_new_privs`` is set first, so no setuid binary can give root back).
"""

from __future__ import annotations

import os
import resource

from cext import sandbox as _c


def lock_memory() -> None:
    """Step 1, while still root (CAP_IPC_LOCK): call once everything is mapped."""
    _c.lock_memory()


def confine(uid: int, gid: int) -> None:
    """Steps 2-5 on this process; raises OSError naming the failing step."""
    if uid <= 0 or gid <= 0:
        raise ValueError(f"uid/gid: {uid}/{gid}: an NF never runs as root")
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _c.not_dumpable()
    _c.deny_sched()


def capabilities() -> dict[str, int]:
    """This process's capability sets from /proc/self/status (tests, reports)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, val = line.split(":")
                out[key] = int(val.strip(), 16)
    return out
