"""The lab's plan (names, ports, VFs) and its datapath lease, without root."""

from __future__ import annotations

from pathlib import Path

import pytest

from quadrant_app.topology import load
from tools.lab.lease import DatapathLease, LeaseBusy
from tools.lab.plan import PlanError, make_plan

ROOT = Path(__file__).resolve().parents[2]


def test_plan_of_lab_topology():
    plan = make_plan(load(ROOT / "topologies" / "lab.yaml"), "qz", "tcp:127.0.0.1:7000")
    assert [b.name for b in plan.bridges] == ["qzbr0"]
    assert plan.bridges[0].controller == "tcp:127.0.0.1:7000"
    assert plan.namespaces == ("qz-w1", "qz-w2", "qz-src", "qz-sink")
    ports = {lk.node: (lk.root, lk.ofport, lk.inner) for lk in plan.links}
    assert ports["w1"] == ("qz0p11", 11, "up0")
    assert ports["src"] == ("qz0p1", 1, "eth0")
    assert len(plan.macvlans) == 8
    assert {m.mac for m in plan.macvlans if m.worker == "w2"} == {
        f"02:00:00:00:02:0{i}" for i in range(1, 5)
    }
    # Each host can reach the other on-link, with a permanent neighbour entry.
    routes = {(r.netns, r.dest, r.address) for r in plan.routes}
    assert ("qz-src", "10.2.0.0/16", "10.2.0.1") in routes
    assert ("qz-sink", "10.1.0.0/16", "10.1.0.1") in routes
    assert plan.netns("sink") == "qz-sink"
    with pytest.raises(KeyError):
        plan.netns("nobody")


@pytest.mark.parametrize("prefix", ["", "Q", "toolong", "9a", "a-b"])
def test_bad_prefix(prefix):
    with pytest.raises(PlanError, match="prefix"):
        make_plan(load(ROOT / "topologies" / "lab.yaml"), prefix)


def test_pci_vfs_cannot_be_built_in_the_lab():
    with pytest.raises(PlanError, match="no netdev"):
        make_plan(load(ROOT / "topologies" / "cloudlab-10.yaml"), "q")


def test_lease_is_exclusive_while_holder_lives(tmp_path):
    alive = {tmp_path / "a": True}
    a = DatapathLease(tmp_path / "a", lambda rd: alive.get(rd, False), base=tmp_path)
    b = DatapathLease(tmp_path / "b", lambda rd: alive.get(rd, False), base=tmp_path)
    a.acquire()
    assert a.held() and a.try_acquire() is None  # re-entrant for its holder
    with pytest.raises(LeaseBusy, match=str(tmp_path / "a")):
        b.acquire(wait=0)
    alive[tmp_path / "a"] = False  # the holder's vswitchd died: the lease is free
    b.acquire()
    assert b.held() and not a.held()
    a.release()  # not the holder: no effect
    assert b.held()
    b.release()
    assert b.holder() is None
