# cython: language_level=3
"""Confine an NF process after its privileged setup (see worker/sandbox.py)."""

import os


cdef extern from "src/qs_sandbox.h" nogil:
    int qs_lock_memory()
    int qs_deny_sched()
    int qs_not_dumpable()


cdef extern from "errno.h":
    int errno


def lock_memory():
    """``mlockall(MCL_CURRENT)``; OSError on failure."""
    if qs_lock_memory() != 0:
        e = errno
        raise OSError(e, f"mlockall: {os.strerror(e)}")


def deny_sched():
    """Install the seccomp filter on every thread (no_new_privs is set first)."""
    ret = qs_deny_sched()
    if ret != 0:
        raise OSError(-ret, f"seccomp: {os.strerror(-ret)}")


def not_dumpable():
    """``PR_SET_DUMPABLE 0``: /proc/PID/mem and ptrace need CAP_SYS_PTRACE."""
    ret = qs_not_dumpable()
    if ret != 0:
        raise OSError(-ret, f"prctl(PR_SET_DUMPABLE): {os.strerror(-ret)}")
