"""NF processes as small containers: own namespaces, pinned, memory-bounded, cleaned up."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import lab_prefix, wait_for
from worker.launcher import LaunchError, LaunchSpec, LocalLauncher

PROBE = textwrap.dedent(
    """
    import json, os, signal, socket, sys, time
    out = {"pid": os.getpid(), "hostname": socket.gethostname(),
           "affinity": sorted(os.sched_getaffinity(0)),
           "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
           "cgroup": open("/proc/self/cgroup").read()}
    open(sys.argv[1], "w").write(json.dumps(out))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
    time.sleep(60)
    """
)


@pytest.fixture
def launcher(root_required):
    return LocalLauncher(cgroup_parent=f"quadrant-test-{lab_prefix()}")


def _cleanup_parent(launcher):
    for ctl in ("cpuset", "memory", ""):
        d = f"/sys/fs/cgroup/{ctl}/{launcher.cgroup_parent}".replace("//", "/")
        if os.path.isdir(d):
            os.rmdir(d)


def test_nf_runs_in_its_own_namespaces_and_cgroup(launcher, tmp_path):
    report = tmp_path / "probe.json"
    spec = LaunchSpec("nf-probe", (sys.executable, "-c", PROBE, str(report)), core=1,
                      memory_bytes=256 << 20, log=str(tmp_path / "nf.log"))  # fmt: skip
    handle = launcher.start(spec)
    try:
        wait_for(lambda: report.exists() and report.stat().st_size, 10, "the probe's report")
        seen = json.loads(report.read_text())
        assert seen["pid"] == 1  # PID 1 of its own PID namespace
        assert seen["procs"] == [1]  # sees no other process: its own /proc
        assert seen["hostname"] == "nf-probe"  # its own UTS namespace
        assert seen["affinity"] == [1]  # the cpuset pins it to its core
        assert f"{launcher.cgroup_parent}/nf-probe" in seen["cgroup"]
        own = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("pid", "mnt", "ipc", "uts")}
        child = wait_for(lambda: _child_of(handle.pid), 5, "the NF process")
        for k, v in own.items():
            assert os.readlink(f"/proc/{child}/ns/{k}") != v, f"{k} namespace is shared"
        if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            limit = f"/sys/fs/cgroup/memory/{launcher.cgroup_parent}/nf-probe/memory.limit_in_bytes"
            assert int(Path(limit).read_text()) == 256 << 20
    finally:
        code = handle.stop(grace=5)
        _cleanup_parent(launcher)
    assert code == 7  # SIGTERM reached the NF's handler through nfinit
    assert not os.path.exists(f"/sys/fs/cgroup/cpuset/{launcher.cgroup_parent}/nf-probe")


def test_nf_that_ignores_sigterm_is_killed(launcher, tmp_path):
    spec = LaunchSpec("nf-stubborn", (sys.executable, "-c",
                      "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "time.sleep(60)"), core=0)  # fmt: skip
    handle = launcher.start(spec)
    try:
        time.sleep(0.5)
        start = time.monotonic()
        code = handle.stop(grace=1)
        assert time.monotonic() - start < 5
        assert code != 0
    finally:
        handle.stop(grace=0)
        _cleanup_parent(launcher)


def test_missing_program_exits_127(launcher):
    handle = launcher.start(LaunchSpec("nf-missing", ("/nonexistent/nf",), core=0))
    try:
        wait_for(lambda: handle.poll() is not None, 10, "nfinit to give up")
        assert handle.poll() == 127
    finally:
        handle.stop()
        _cleanup_parent(launcher)


def test_bad_specs():
    with pytest.raises(LaunchError, match="name"):
        LaunchSpec("bad name!", ("x",), core=0)
    with pytest.raises(LaunchError, match="argv"):
        LaunchSpec("ok", (), core=0)
    with pytest.raises(LaunchError, match="core"):
        LaunchSpec("ok", ("x",), core=-1)
    with pytest.raises(LaunchError, match="16 MiB"):
        LaunchSpec("ok", ("x",), core=0, memory_bytes=1024)


def _child_of(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def test_nf_joins_a_named_netns_and_its_threads_map_to_host_ids(launcher, tmp_path):
    import subprocess

    from worker.launcher import host_tid

    ns = f"{lab_prefix()}-lnch"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
            check=True,
        )
        script = (
            "import json, os, socket, threading, sys; "
            "print(json.dumps({'tid': threading.get_native_id(), "
            "'links': sorted(socket.if_nameindex())}), flush=True); sys.stdin.read()"
        )
        handle = launcher.popen(
            LaunchSpec("nf-netns", (sys.executable, "-c", script), core=0, netns=ns),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            seen = json.loads(handle.proc.stdout.readline())
            assert any(name == "probe0" for _, name in seen["links"])  # the namespace's device
            assert seen["tid"] == 1  # PID 1 inside its PID namespace ...
            host = host_tid(handle.pid, seen["tid"])
            assert host not in (1, handle.pid)  # ... another id outside
            status = Path(f"/proc/{host}/status").read_text()
            assert f"NSpid:\t{host}\t1" in status
        finally:
            handle.proc.stdin.close()
            handle.stop()
            _cleanup_parent(launcher)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
