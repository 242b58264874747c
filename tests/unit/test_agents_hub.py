"""The controller's agent registry: what a register may say, and what it refuses."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from quadrant_app import jsonrpc
from quadrant_app.agents import AgentHub, bearer
from quadrant_app.jsonrpc import RpcError
from quadrant_app.topology import load
from worker.agent import PROTOCOL_VERSION, inventory

ROOT = Path(__file__).resolve().parents[2]
TOPO = load(ROOT / "topologies" / "lab.yaml")


def reg(inv=None, **kw):
    return {"version": PROTOCOL_VERSION, "inventory": inv or inventory(TOPO, "w1"),
            "instances": [], **kw}  # fmt: skip


def test_agent_and_controller_agree_on_the_version():
    from quadrant_app import agents

    assert agents.PROTOCOL_VERSION == PROTOCOL_VERSION


def test_register_heartbeat_stats_event():
    hub = AgentHub(TOPO, heartbeat_s=0.5)
    out = hub.register("w1", reg(instances=[{"id": 3}]), now=10.0)
    assert out == {"worker": "w1", "heartbeat_s": 0.5, "session": 1}
    st = hub.workers["w1"]
    assert st.connected and st.instances == [{"id": 3}]
    hub.heartbeat("w1", {"seq": 1}, now=10.4)
    assert st.heartbeats == 1 and st.last_heartbeat == 10.4
    rows = hub.stats("w1", {"instances": [{"id": 3, "pps": 1000.0, "p99_us": 12.5, "x": 1}]}, 10.5)
    assert rows == [{"id": 3, "pps": 1000.0, "p99_us": 12.5}]
    ev = hub.event("w1", {"kind": "nf_failed", "instance": 3}, 10.6)
    assert ev["kind"] == "nf_failed" and st.events[-1] is ev
    assert hub.lapsed(11.0) == [] and hub.lapsed(12.1) == ["w1"]
    hub.disconnected("w1", 12.2)
    # a closed socket is not a failure; silence is, connected or not, and only once
    assert not st.connected and hub.lapsed(20.0) == ["w1"]
    hub.mark_failed("w1", "heartbeats stopped")
    assert hub.lapsed(21.0) == [] and st.to_json(21.0)["failed"] == "heartbeats stopped"
    assert hub.register("w1", reg(), now=30.0)["session"] == 2
    assert st.failed is None  # registered again: healthy
    assert st.to_json(31.0)["heartbeat_age_s"] == 1.0


def _bad_inventory(change):
    inv = copy.deepcopy(inventory(TOPO, "w1"))
    change(inv)
    return inv


@pytest.mark.parametrize(
    "worker,params,words",
    [
        ("w9", reg(), "not in the topology"),
        ("w2", reg(), "the token belongs to 'w2'"),
        ("w1", reg(version=2), "params.version"),
        ("w1", {"inventory": {}, "instances": []}, "params.version: missing"),
        ("w1", reg(_bad_inventory(lambda i: i.update(switch_port=99))), "switch_port"),
        ("w1", reg(_bad_inventory(lambda i: i.update(cores=[0, 7]))), "cores"),
        ("w1", reg(_bad_inventory(lambda i: i.update(cores=[]))), "cores"),
        ("w1", reg(_bad_inventory(lambda i: i["vfs"].pop())), "vfs"),
        ("w1", reg(_bad_inventory(lambda i: i.update(vfs="x"))), "vfs"),
    ],
)
def test_register_refusals(worker, params, words):
    hub = AgentHub(TOPO)
    with pytest.raises(RpcError, match=words) as err:
        hub.register(worker, params, 0.0)
    assert err.value.code in (jsonrpc.REFUSED, jsonrpc.INVALID_PARAMS)
    assert not any(w.connected for w in hub.workers.values())


def test_calls_before_register_are_refused():
    hub = AgentHub(TOPO)
    for call in (lambda: hub.heartbeat("w1", {"seq": 1}, 0),
                 lambda: hub.stats("w1", {"instances": []}, 0),
                 lambda: hub.event("w1", {"kind": "x"}, 0)):  # fmt: skip
        with pytest.raises(RpcError, match="register first"):
            call()


def test_bad_stats():
    hub = AgentHub(TOPO)
    hub.register("w1", reg(), 0.0)
    with pytest.raises(RpcError, match=r"instances\[0\].id: missing"):
        hub.stats("w1", {"instances": [{"pps": 1}]}, 0)
    with pytest.raises(RpcError, match=r"instances\[0\].pps: must be >= 0"):
        hub.stats("w1", {"instances": [{"id": 1, "pps": -1}]}, 0)
    with pytest.raises(RpcError, match="must be >= 0"):
        hub.stats("w1", {"instances": [{"id": 1, "load": True}]}, 0)
    with pytest.raises(RpcError, match=r"instances\[0\].p99_us: must be >= 0"):
        hub.stats("w1", {"instances": [{"id": 1, "p99_us": None}]}, 0)  # only queue_len may be null
    rows = hub.stats("w1", {"instances": [{"id": 1, "queue_len": None, "buffered": 3}]}, 0)
    assert rows == [{"id": 1, "queue_len": None, "buffered": 3}]


def test_bearer():
    assert bearer({"HTTP_AUTHORIZATION": "Bearer abc"}) == "abc"
    assert bearer({"HTTP_AUTHORIZATION": "bearer  abc "}) == "abc"
    assert bearer({"HTTP_AUTHORIZATION": "Basic abc"}) is None
    assert bearer({}) is None
