"""The instance manager's checks that come before anything starts (no root needed).

The same refusals with real processes, and the ones that need a running
instance (VF in use, duplicate id), are in tests/e2e/test_instances.py.
"""

from __future__ import annotations

import pytest

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import Dispatcher, RpcError
from worker.instances import InstanceManager

VF = "02:00:00:00:01:01"
OK = {"instance": 1, "chain": {"id": 1, "name": "c", "nfs": [{"type": "empty"}]}, "core": 1,
      "vf": VF}  # fmt: skip


@pytest.fixture
def manager():
    return InstanceManager({"vfs": [{"mac": VF, "netdev": "vf0"}]}, [1], launcher=None)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"core": 0}, "params.core"),
        ({"vf": "02:00:00:00:09:09"}, "params.vf"),
        ({"vf": "not-a-mac"}, "params.vf"),
        ({"mode": "turbo"}, "params.mode"),
        ({"batch": 2000}, "params.batch"),
        ({"instance": -1}, "params.instance"),
        ({"chain": {"id": 1, "name": "c", "nfs": []}}, "params.chain.nfs"),
        ({"chain": {"id": 1, "name": "c", "nfs": [{"type": "nat"}]}}, "params.chain.nfs[0].type"),
        ({"chain": {"id": 1, "name": "c", "nfs": [{"type": "native", "config": {}}]}},
         "params.chain.nfs[0].type"),
        ({"chain": {"id": 1, "name": "c", "nfs": [{"type": "empty", "class": "x:Y"}]}},
         "params.chain.nfs[0]"),
        ({"chain": {"id": 1, "name": "c", "nfs": [{"type": "empty", "config": []}]}},
         "params.chain.nfs[0].config"),
        ({"chain": {"id": 1, "name": "c", "nfs": [{"type": "empty"}] * 9}}, "params.chain.nfs"),
    ],
)  # fmt: skip
def test_prepare_refusals_name_the_field(manager, change, field):
    with pytest.raises(RpcError) as e:
        manager.prepare({**OK, **change})
    assert e.value.code == jsonrpc.REFUSED
    assert e.value.message.split(":")[0] == field, e.value.message
    assert manager.entries == {} and manager.schedulers == {}


@pytest.mark.parametrize("drop", ["instance", "chain", "core", "vf"])
def test_missing_fields_are_invalid_params(manager, drop):
    with pytest.raises(RpcError) as e:
        manager.prepare({k: v for k, v in OK.items() if k != drop})
    assert e.value.code == jsonrpc.INVALID_PARAMS and f"params.{drop}" in e.value.message


def test_commands_on_unknown_instances_and_registration(manager):
    d = Dispatcher()
    manager.register(d)
    assert set(d.methods) == {
        "prepare", "attach", "detach", "set_batch", "teardown", "hold", "release", "drain",
        "nat_handover",
    }  # fmt: skip
    for method in ("attach", "detach", "teardown", "hold", "release", "drain", "nat_handover"):
        with pytest.raises(RpcError, match="params.instance: no instance 4"):
            getattr(manager, method)({"instance": 4})
    with pytest.raises(RpcError) as e:
        manager.attach(["not", "an", "object"])
    assert e.value.code == jsonrpc.INVALID_PARAMS
    assert manager.list() == []


def test_a_scheduler_that_cannot_start_refuses_the_core(manager):
    manager.scheduler_factory = lambda core, on_event: 1 / 0
    multi = {**OK, "chain": {"id": 1, "name": "c", "nfs": [{"type": "empty"}] * 2}}
    with pytest.raises(RpcError) as e:
        manager.prepare(multi)
    assert e.value.code == jsonrpc.REFUSED and "no scheduler on core 1" in e.value.message
    assert manager.entries == {}


def test_an_unexpected_failure_is_still_answered():
    guarded = InstanceManager._guarded("attach", lambda params: params["missing"])
    with pytest.raises(RpcError) as e:
        guarded({})
    assert e.value.code == jsonrpc.INTERNAL_ERROR and e.value.message.startswith("attach:")
