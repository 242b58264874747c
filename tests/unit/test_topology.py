"""The topology loader: the shipped files load, malformed ones are refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from quadrant_app import topology
from quadrant_app.topology import TopologyError

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "topologies" / "lab.yaml"


def lab_data():
    return yaml.safe_load(LAB.read_text())


def test_lab_file_loads():
    topo = topology.load(LAB)
    assert topo.name == "lab"
    (sw,) = topo.switches
    assert sw.dpid == 1 and sw.uplink_ports == (1,) and sw.egress_port == 2
    assert sw.controller_host == "127.0.0.1" and sw.controller_port == 6653
    assert [w.name for w in topo.workers] == ["w1", "w2"]
    assert all(len(w.vfs) == 4 and len(w.cores) == 2 for w in topo.workers)
    assert {h.role for h in topo.hosts} == {"source", "sink"}
    assert topo.workers_on("tor1") == topo.workers


def test_cloudlab_file_loads():
    topo = topology.load(ROOT / "topologies" / "cloudlab-10.yaml")
    assert len(topo.workers) == 10
    assert all(vf.pci and not vf.netdev for w in topo.workers for vf in w.vfs)
    macs = [vf.mac for w in topo.workers for vf in w.vfs]
    assert len(macs) == len(set(macs))


def test_every_shipped_topology_loads():
    for path in sorted((ROOT / "topologies").glob("*.yaml")):
        topology.load(path)


def _mutate(fn):
    data = copy.deepcopy(lab_data())
    fn(data)
    return data


def _set(path, value):
    def fn(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return fn


def _delete(path):
    def fn(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return fn


MALFORMED = [
    # (mutation, key path in the error, words of the reason)
    (_set(["switches", 0, "colour"], "red"), "switches[0].colour", "unknown key"),
    (_set(["extra"], 1), "extra", "unknown key"),
    (_delete(["switches", 0, "dpid"]), "switches[0].dpid", "missing required key"),
    (_delete(["workers"]), "workers", "missing required key"),
    (_set(["switches", 0, "dpid"], "0xZZ"), "switches[0].dpid", "not a datapath id"),
    (_set(["switches", 0, "dpid"], 0), "switches[0].dpid", "out of range"),
    (_set(["switches", 0, "dpid"], "0x1" + "0" * 16), "switches[0].dpid", "out of range"),
    (
        _set(["workers", 1, "vfs", 2, "mac"], "02:00:00:00:01:01"),
        "workers[1].vfs[2].mac",
        "duplicate MAC",
    ),
    (_set(["workers", 0, "vfs", 0, "mac"], "02:00:00:00:01"), "workers[0].vfs[0].mac", "not a MAC"),
    (
        _set(["workers", 0, "vfs", 0, "mac"], "01:00:5e:00:00:01"),
        "workers[0].vfs[0].mac",
        "multicast",
    ),
    (_set(["workers", 1, "switch_port"], 11), "workers[1].switch_port", "duplicate switch port"),
    (_set(["workers", 0, "switch_port"], 2), "workers[0].switch_port", "egress port"),
    (_set(["workers", 0, "switch_port"], 1), "workers[0].switch_port", "duplicate switch port"),
    (_set(["workers", 0, "switch_port"], -3), "workers[0].switch_port", "not an OpenFlow port"),
    (_set(["workers", 0, "switch_port"], "11"), "workers[0].switch_port", "not an OpenFlow port"),
    (_set(["workers", 0, "switch"], "tor9"), "workers[0].switch", "no switch named"),
    (_set(["workers", 0, "cores"], [0, 0]), "workers[0].cores[1]", "duplicate core"),
    (_set(["workers", 0, "cores"], []), "workers[0].cores", "must not be empty"),
    (_set(["workers", 0, "vfs"], {"mac": "x"}), "workers[0].vfs", "must be a list"),
    (
        _set(["workers", 0, "vfs", 0], {"mac": "02:00:00:00:01:09"}),
        "workers[0].vfs[0]",
        "exactly one of pci",
    ),
    (
        _set(["workers", 0, "vfs", 0, "pci"], "0000:03:10.0"),
        "workers[0].vfs[0]",
        "exactly one of pci",
    ),
    (
        _set(["workers", 0, "vfs", 1, "netdev"], "vf0"),
        "workers[0].vfs[1].netdev",
        "duplicate netdev",
    ),
    (_set(["workers", 1, "name"], "w1"), "workers[1].name", "duplicate name"),
    (_set(["workers", 0, "name"], "Worker_1"), "workers[0].name", "not a valid name"),
    (_set(["switches", 0, "controller"], "127.0.0.1:6653"), "switches[0].controller", "not like"),
    (
        _set(["switches", 0, "controller"], "tcp:127.0.0.1:99999"),
        "switches[0].controller",
        "out of range",
    ),
    (_set(["switches", 0, "egress_port"], 1), "switches[0].egress_port", "also an uplink"),
    (_set(["switches", 0, "default_action"], "flood"), "switches[0].default_action", "not one of"),
    (_set(["hosts", 0, "ip"], "10.1.0.1"), "hosts[0].ip", "prefix length"),
    (_set(["hosts", 0, "role"], "router"), "hosts[0].role", "not one of"),
    (_set(["hosts", 0, "switch_port"], 7), "hosts[0].switch_port", "uplink port"),
    (_set(["hosts", 1, "mac"], "02:00:00:00:0a:01"), "hosts[1].mac", "duplicate MAC"),
    (_set(["workers", 0, "management"], "not an address!"), "workers[0].management", "neither"),
]


@pytest.mark.parametrize(
    "mutate,path,reason", MALFORMED, ids=[m[1] + ":" + m[2] for m in MALFORMED]
)
def test_malformed_is_refused(tmp_path, mutate, path, reason):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_mutate(mutate)))
    with pytest.raises(TopologyError) as err:
        topology.load(bad)
    assert err.value.source == str(bad)
    assert err.value.path == path
    assert reason in err.value.reason
    assert str(bad) in str(err.value) and path in str(err.value)


def test_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("switches: [\n  - name: x\n")
    with pytest.raises(TopologyError, match="not valid YAML: line"):
        topology.load(bad)


def test_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(TopologyError, match="must be a mapping, not a list"):
        topology.load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        topology.load(tmp_path / "nope.yaml")


def test_dpid_forms():
    data = lab_data()
    for raw, want in (("0x00000000000000ff", 255), (255, 255), ("255", 255)):
        data["switches"][0]["dpid"] = raw
        assert topology.parse(data).switches[0].dpid == want
