"""Starting NF processes, each as its own small container.

:class:`Launcher` is the interface the agent uses; :class:`LocalLauncher`
runs an NF on this machine with its own PID, mount, IPC and UTS namespaces
(:mod:`worker.nfinit`) in a cgroup that pins it to its core and bounds its
memory.  A Kubernetes launcher (NFs as pods) would implement the same
interface.  Capabilities are dropped by the NF runtime itself once its
privileged setup is done (see the sandbox in the chain work): DPDK needs
root to open its port and map hugepages first.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")


class LaunchError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    name: str  # unique on this worker; names the cgroup and the host name
    argv: tuple[str, ...]
    core: int
    memory_bytes: int = 1 << 30
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    log: str | None = None  # stdout+stderr go here (default: inherited)
    netns: str | None = None  # a named network namespace to run in (the lab's worker)
    # CPUs it may also use until Handle.settle() confines it to ``core``: its privileged
    # setup (interpreter, EAL, tables, mlockall) then runs off a data core whose
    # SCHED_FIFO chains would leave it only the RT-throttling remainder
    startup_cpus: tuple[int, ...] = ()

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise LaunchError(f"name {self.name!r}: letters, digits, '_', '.', '-' (max 64)")
        if not self.argv:
            raise LaunchError(f"{self.name}: argv is empty")
        if self.core < 0:
            raise LaunchError(f"{self.name}: core {self.core} is not a core number")
        if any(c < 0 for c in self.startup_cpus):
            raise LaunchError(f"{self.name}: startup_cpus {self.startup_cpus} are not cores")
        if self.memory_bytes < 16 << 20:
            raise LaunchError(f"{self.name}: memory_bytes below 16 MiB")


class Handle(abc.ABC):
    spec: LaunchSpec
    pid: int

    @abc.abstractmethod
    def poll(self) -> int | None: ...

    @abc.abstractmethod
    def stop(self, grace: float = 5.0) -> int: ...

    def settle(self) -> None:  # noqa: B027 (optional: a launcher without startup CPUs)
        """Confine the NF to its core once its setup is done (see LaunchSpec.startup_cpus)."""

    def unsettle(self) -> None:  # noqa: B027
        """Give it its startup CPUs back to shut down on (no longer scheduled: SCHED_OTHER)."""


class Launcher(abc.ABC):
    @abc.abstractmethod
    def start(self, spec: LaunchSpec) -> Handle: ...


# -- cgroups -------------------------------------------------------------------


class Cgroup:
    """One NF's cgroup: cpuset (its core) and memory, on cgroup v1 or v2."""

    def __init__(self, parent: str, name: str, root: Path = Path("/sys/fs/cgroup")):
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()
        if self.v2:
            self.dirs = {"unified": root / parent / name}
        else:
            self.dirs = {c: root / c / parent / name for c in ("cpuset", "memory")}

    def create(self, core: int, memory_bytes: int, startup_cpus=()) -> None:
        if not os.access(self.root, os.W_OK) and not self.v2:
            raise LaunchError(f"{self.root} is not writable: the agent needs root for cgroups")
        for kind, d in self.dirs.items():
            if kind == "unified":
                parent = d.parent
                parent.mkdir(exist_ok=True)
                _write(self.root / "cgroup.subtree_control", "+cpuset +memory", ignore=True)
                _write(parent / "cgroup.subtree_control", "+cpuset +memory", ignore=True)
            else:
                d.parent.mkdir(exist_ok=True)
                if kind == "cpuset":
                    # A v1 cpuset child needs cpus and mems set before tasks join.
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        if not (d.parent / f).read_text().strip():
                            _write(d.parent / f, (d.parent.parent / f).read_text().strip())
            d.mkdir(exist_ok=True)
        if self.v2:
            d = self.dirs["unified"]
            _write(d / "cpuset.cpus", _cpus(core, startup_cpus))
            _write(d / "memory.max", str(memory_bytes))
        else:
            _write(self.dirs["cpuset"] / "cpuset.cpus", _cpus(core, startup_cpus))
            _write(self.dirs["cpuset"] / "cpuset.mems", _mems(self.dirs["cpuset"].parent))
            _write(self.dirs["memory"] / "memory.limit_in_bytes", str(memory_bytes))

    def set_cpus(self, core: int, extra=()) -> None:
        """Set the cpuset to ``core`` and ``extra`` (moves every task of the cgroup)."""
        d = self.dirs.get("unified") or self.dirs["cpuset"]
        _write(d / "cpuset.cpus", _cpus(core, extra))

    def join(self) -> None:
        """Move the calling process in (run in the child before exec)."""
        for d in self.dirs.values():
            with open(d / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last task is still leaving

    def procs(self) -> list[int]:
        d = next(iter(self.dirs.values()))
        try:
            return [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []


def _cpus(core: int, extra=()) -> str:
    return ",".join(str(c) for c in sorted({core, *extra}))


def _mems(parent: Path) -> str:
    value = (parent / "cpuset.mems").read_text().strip()
    return value or "0"


def _write(path: Path, value: str, ignore: bool = False) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        if not ignore:
            raise LaunchError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


# -- the local launcher -------------------------------------------------------------


class LocalHandle(Handle):
    def __init__(self, spec: LaunchSpec, proc: subprocess.Popen, cgroup: Cgroup):
        self.spec = spec
        self.proc = proc
        self.pid = proc.pid
        self.cgroup = cgroup

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            self.cgroup.remove()
        return code

    def settle(self) -> None:
        if self.spec.startup_cpus:
            self.cgroup.set_cpus(self.spec.core)

    def unsettle(self) -> None:
        if self.spec.startup_cpus and self.proc.poll() is None:
            self.cgroup.set_cpus(self.spec.core, self.spec.startup_cpus)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                for pid in self.cgroup.procs():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait()
        self.cgroup.remove()
        return self.proc.returncode


class LocalLauncher(Launcher):
    """NFs on this machine: namespaces via :mod:`worker.nfinit`, a cgroup each."""

    def __init__(self, cgroup_parent: str = "quadrant"):
        self.cgroup_parent = cgroup_parent

    def start(self, spec: LaunchSpec) -> LocalHandle:
        """Start the NF, its output to ``spec.log`` (or inherited)."""
        out = open(spec.log, "ab") if spec.log else None  # noqa: SIM115 (child keeps it)
        try:
            return self.popen(spec, stdout=out, stderr=subprocess.STDOUT if out else None)
        finally:
            if out:
                out.close()

    def popen(self, spec: LaunchSpec, **popen_kwargs) -> LocalHandle:
        """Start the NF with the given ``subprocess.Popen`` arguments (pipes, ...)."""
        cgroup = Cgroup(self.cgroup_parent, spec.name)
        cgroup.create(spec.core, spec.memory_bytes, spec.startup_cpus)
        argv = [sys.executable, "-m", "worker.nfinit", "--hostname", spec.name]
        if spec.netns:
            argv += ["--netns", spec.netns]
        argv += ["--", *spec.argv]
        env = dict(os.environ)
        env.update(dict(spec.env))
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=spec.cwd,
                preexec_fn=cgroup.join,
                start_new_session=True,
                **popen_kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            cgroup.remove()
            raise LaunchError(f"{spec.name}: cannot start {spec.argv[0]}: {exc}") from None
        return LocalHandle(spec, proc, cgroup)


def host_tid(outer_pid: int, local_tid: int) -> int:
    """The host's id of thread ``local_tid`` of the NF that nfinit ``outer_pid`` started.

    An NF in its own PID namespace reports its thread ids as it sees them;
    the scheduler needs the host's (``NSpid:`` in /proc/PID/task/TID/status
    lists a thread's id in every namespace, outermost first).
    """
    try:
        children = Path(f"/proc/{outer_pid}/task/{outer_pid}/children").read_text().split()
    except OSError:
        raise LaunchError(f"nfinit {outer_pid} is gone") from None
    for child in children:
        for task in Path(f"/proc/{child}/task").iterdir():
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        ids = [int(x) for x in line.split()[1:]]
                        if ids[-1] == local_tid:
                            return ids[0]
            except OSError:
                continue
    raise LaunchError(f"no thread {local_tid} under nfinit {outer_pid}")
