"""Fixtures shared by the real-component tests: the lab and the controller."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tools.stack import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
LAB_TOPOLOGY = ROOT / "topologies" / "lab.yaml"
# Labs take turns on a machine (one userspace datapath): how long a test waits.
LAB_WAIT = 900.0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """:func:`tools.stack.wait_until`, polling a little faster."""
    return wait_until(predicate, timeout, what, interval)


def lab_prefix() -> str:
    """A lab prefix unique to this test process, so concurrent runs do not collide."""
    return f"e{os.getpid() % 1000}"


@pytest.fixture
def dpdk_prefix(request):
    """A DPDK ``--file-prefix`` unique to this test; its runtime files are removed after."""
    prefix = f"{lab_prefix()}{request.node.name[-12:]}".replace("[", "").replace("]", "")
    try:
        yield prefix
    finally:
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
        for f in Path("/dev/hugepages").glob(f"{prefix}map_*"):
            f.unlink(missing_ok=True)


@pytest.fixture
def root_required():
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, veth and Open vSwitch")


@pytest.fixture
def lab(root_required):
    """The lab from topologies/lab.yaml, with its switch aimed at a free controller port."""
    from quadrant_app.topology import load
    from tools.lab import Lab

    port = free_port()
    rundir = tempfile.mkdtemp(prefix="qlab-", dir="/tmp")
    lab = Lab(load(LAB_TOPOLOGY), lab_prefix(), rundir, controller=f"tcp:127.0.0.1:{port}")
    lab.controller_port = port
    try:
        lab.up(wait=LAB_WAIT)
        yield lab
    finally:
        lab.down()
        shutil.rmtree(rundir, ignore_errors=True)


def make_controller(lab, extra_conf: dict | None = None, extra_args: list | None = None):
    """The controller for ``lab``, not started yet (see tools.lab.controller)."""
    from tools.lab.controller import ControllerProcess

    conf = {"topology": str(LAB_TOPOLOGY), **(extra_conf or {})}
    return ControllerProcess(lab, conf, args=extra_args)


@pytest.fixture
def controller(lab):
    ctl = make_controller(lab).start()
    try:
        ctl.wait_connected()
        yield ctl
    finally:
        ctl.stop()


from tests.redis_fixture import redis_server  # noqa: E402,F401  (a fixture for every test)


@pytest.fixture
def veth_ns():
    """A network namespace ``qd-<id>`` of the test's own with a veth pair ``qdA<id>``
    / ``qdB<id>`` in it, both up (no IPv6: no kernel chatter): (ns, a, b)."""

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True)

    tag = uuid.uuid4().hex[:6]
    ns, a, b = f"qd-{tag}", f"qdA{tag}", f"qdB{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", ns)
        for dev in (a, b):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield ns, a, b
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
