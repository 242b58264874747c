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


@pytest.mark.parametrize("marked", ["yes", 1, None])
def test_holds_marked_option_is_checked(manager, marked):
    with pytest.raises(RpcError) as e:
        manager.hold({"instance": 4, "flows": [], "marked": marked})
    assert e.value.code == jsonrpc.INVALID_PARAMS and e.value.message.startswith("params.marked")


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


def _failed_entry(manager, iid=7):
    from worker.instances import Entry

    e = Entry(iid, 1, "c", 1, VF, chain=None, slot=0, failed="NF 1 exited", ready=True)
    manager.entries[iid] = e
    return e


def test_a_prepare_waits_for_a_failed_instances_teardown_to_free_its_vf(manager):
    import threading
    import time

    _failed_entry(manager)
    threading.Timer(0.1, lambda: manager.entries.pop(7)).start()  # the teardown, side by side
    t0 = time.monotonic()
    assert manager._await_vf(VF)
    assert 0.05 < time.monotonic() - t0 < 2.0


def test_a_failed_instance_that_stays_is_waited_for_a_bounded_time_then_refused(manager):
    import time

    _failed_entry(manager)
    manager.vf_release_s = 0.1
    t0 = time.monotonic()
    with pytest.raises(RpcError) as e:
        manager.prepare(OK)
    assert 0.1 <= time.monotonic() - t0 < 1.0
    assert e.value.message == f"params.vf: {VF} is in use by instance 7"


def test_a_live_instance_on_the_vf_is_refused_at_once(manager):
    import time

    _failed_entry(manager).failed = ""
    t0 = time.monotonic()
    with pytest.raises(RpcError) as e:
        manager.prepare(OK)
    assert time.monotonic() - t0 < 0.05
    assert "is in use by instance 7" in e.value.message


def test_a_prepare_also_waits_for_an_instance_being_torn_down(manager):
    import threading

    e = _failed_entry(manager)
    e.failed, e.removing = "", True  # a failed worker's instance: torn down, not failed
    threading.Timer(0.1, lambda: manager.entries.pop(7)).start()
    assert manager._await_vf(VF)
