"""The lab-in-a-box with the real Open vSwitch and the real controller."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, free_port, lab_prefix

pytestmark = pytest.mark.e2e


def _ns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_base_pipeline_installed(controller, lab):
    flows = lab.ofctl("dump-flows")
    assert "priority=100,in_port=1 actions=goto_table:1" in flows
    assert "priority=100,in_port=11 actions=output:2" in flows
    assert "table=1," in flows and "priority=10,ip actions=CONTROLLER:65535" in flows
    assert "priority=0 actions=drop" in flows
    assert "switch tor1 (dpid 0000000000000001) connected" in controller.output()
    # The lab built what the topology asks for.
    for worker in ("w1", "w2"):
        out = lab.exec(worker, "ip", "-o", "link", "show", "type", "macvlan").stdout
        assert out.count("macvlan") == 0 or "vf0" in out
        for i in range(4):
            assert f"vf{i}@up0" in out
    assert "02:00:00:00:01:01" in lab.exec("w1", "ip", "link", "show", "vf0").stdout
    ports = lab.ofctl("dump-ports-desc")
    for n in (1, 2, 11, 12):
        assert f" {n}({lab.plan.prefix}0p{n})" in ports
    # Both ends of every link compute their checksums in software (a host's TCP would
    # otherwise leave them to "hardware", and they would cross the switch unfilled).
    for node, dev in (("src", "eth0"), ("sink", "eth0"), ("w1", "up0"), ("w2", "up0")):
        assert "tx-checksumming: off" in lab.exec(node, "ethtool", "-k", dev).stdout, node
    for link in lab.plan.links:
        out = subprocess.run(["ethtool", "-k", link.root], capture_output=True, text=True)
        assert "tx-checksumming: off" in out.stdout, link.root


def test_controller_disconnect_is_logged(lab):
    from tests.conftest import make_controller, wait_for

    ctl = make_controller(lab).start()
    try:
        ctl.wait_connected()
    finally:
        ctl.stop()
    wait_for(lambda: not lab.ovs.controller_connected(lab.bridge()), 10, "the switch to see it go")
    # fail-mode=secure: the switch keeps its table while the controller is away.
    assert "CONTROLLER:65535" in lab.ofctl("dump-flows")


def test_up_down_leaves_nothing(root_required):
    from quadrant_app.topology import load
    from tools.lab import Lab

    prefix = lab_prefix()

    def ours_ns():  # other tests on the machine may make namespaces meanwhile
        return {n for n in _ns_list() if n.startswith(f"{prefix}-")}

    def ours_links():
        return {n for n in _links() if n.startswith(prefix)}

    before_ns, before_links = ours_ns(), ours_links()
    rundir = tempfile.mkdtemp(prefix="qlab-", dir="/tmp")
    lab = Lab(load(LAB_TOPOLOGY), prefix, rundir, controller=f"tcp:127.0.0.1:{free_port()}")
    try:
        lab.up(wait=LAB_WAIT)
        assert ours_ns() - before_ns == set(lab.plan.namespaces)
        vswitchd = lab.ovs.pid("ovs-vswitchd")
        assert vswitchd
        # A crash half way: ovs-vswitchd dies before its bridge is deleted,
        # leaving the netdev bridge's tap device behind.
        os.kill(vswitchd, signal.SIGKILL)
    finally:
        removed = lab.down()
        shutil.rmtree(rundir, ignore_errors=True)
    assert f"tap {lab.bridge()}" in removed
    assert ours_ns() == before_ns
    assert ours_links() == before_links
    # The datapath's tap is gone too, unless another lab's vswitchd has made its own since.
    others = subprocess.run(["pgrep", "-x", "ovs-vswitchd"], capture_output=True).returncode == 0
    assert "ovs-netdev" not in _links() or others
    assert lab.ovs.pid("ovsdb-server") is None
    assert not lab.lease.held()


def test_cli_up_status_down(root_required):
    rundir = tempfile.mkdtemp(prefix="qlab-", dir="/tmp")
    prefix = lab_prefix()
    cli = [sys.executable, "-m", "tools.lab.cli"]
    common = [str(LAB_TOPOLOGY), "--prefix", prefix, "--rundir", rundir]
    try:
        up = subprocess.run(
            [*cli, "up", *common, "--wait", str(LAB_WAIT)], capture_output=True, text=True
        )
        assert up.returncode == 0, up.stderr
        assert f"netns {prefix}-w1" in up.stdout
        st = subprocess.run([*cli, "status", *common], capture_output=True, text=True)
        assert f'"{prefix}-sink": true' in st.stdout
    finally:
        down = subprocess.run([*cli, "down", *common], capture_output=True, text=True, timeout=60)
        shutil.rmtree(rundir, ignore_errors=True)
    assert down.returncode == 0 and "netns" in down.stdout
    assert not any(ns.startswith(f"{prefix}-") for ns in _ns_list())


def test_cli_refuses_bad_topology(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nswitches: []\nworkers: []\n")
    out = subprocess.run(
        [sys.executable, "-m", "tools.lab.cli", "up", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "switches: must not be empty" in out.stderr


def test_second_lab_is_refused_while_one_runs(lab):
    from tools.lab import Lab
    from tools.lab.lease import LeaseBusy

    other = Lab(lab.topology, "x" + lab.plan.prefix[1:], tempfile.mkdtemp(dir="/tmp"))
    try:
        with pytest.raises(LeaseBusy, match="another lab"):
            other.up(wait=0)
        assert not os.path.exists(other.rundir / "state.json")
    finally:
        shutil.rmtree(other.rundir, ignore_errors=True)
