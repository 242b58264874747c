"""``python -m worker.nfinit [--hostname H] [--netns NS] -- PROGRAM ARGS...``: an NF's init.

Started by :class:`worker.launcher.LocalLauncher`.  It gives the program its
own PID, mount, IPC and UTS namespaces (``unshare(2)``), then forks: the
child is PID 1 of the new PID namespace, makes every mount private, mounts a
fresh ``/proc`` (so the NF sees only its own processes), sets the host name
and execs the program.  With ``--netns`` it first joins that named network
namespace (``/run/netns/NS``: in the lab, the worker's, where its VFs are).
The parent stays outside the new PID namespace, forwards SIGTERM, SIGINT
and SIGHUP to it, and exits with its status.  When the program (PID 1)
exits, the kernel ends everything else it started.

The program, as PID 1, receives from outside only the signals it has a
handler for (the NF runtime handles SIGTERM and SIGINT); the launcher falls
back to SIGKILL after a grace period.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def join_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"join network namespace {name}")
    finally:
        os.close(fd)


def enter_namespaces() -> None:
    _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")


def setup_child(hostname: str) -> None:
    """In the new PID namespace: private mounts, own /proc, own host name."""
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(
        _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
        "mount /proc",
    )
    name = hostname.encode()
    _check(_libc.sethostname(name, len(name)), "sethostname")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.nfinit")
    ap.add_argument("--hostname", default="nf")
    ap.add_argument("--netns", help="named network namespace to join first")
    ap.add_argument("program", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        ap.error("no program given")
    try:
        if args.netns:
            join_netns(args.netns)
        enter_namespaces()
    except OSError as exc:
        print(f"nfinit: {exc}", file=sys.stderr)
        return 125
    pid = os.fork()
    if pid == 0:
        try:
            setup_child(args.hostname)
            os.execvp(program[0], program)
        except OSError as exc:
            print(f"nfinit: {program[0]}: {exc}", file=sys.stderr)
            os._exit(127)

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if status else 0


if __name__ == "__main__":
    code = main()
    sys.exit(128 - code if code < 0 else code)
