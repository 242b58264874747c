"""Placement, the warm pool and reconciliation, driving the real core and agent hub."""

from __future__ import annotations

import copy

import pytest

from quadrant_app import topology
from quadrant_app.agents import AgentHub
from quadrant_app.chains import parse_chain
from quadrant_app.core import Core, Settings
from quadrant_app.orchestrator import Orchestrator
from worker.agent import PROTOCOL_VERSION, inventory

from .test_topology import LAB

TOPO = topology.load(LAB)


def setup(pool_size=1, cores=(1,)):
    core = Core(TOPO, Settings())
    hub = AgentHub(TOPO)
    orch = Orchestrator(core, hub, pool_size=pool_size, batch=64, retry_s=5.0)
    for w in ("w1", "w2"):
        inv = copy.deepcopy(inventory(TOPO, w))
        inv["cores"] = list(cores)
        hub.register(w, {"version": PROTOCOL_VERSION, "inventory": inv, "instances": []}, 0.0)
    return core, hub, orch


def chain(core, name="c", port=80, scaling=None):
    body = {"name": name, "nfs": [{"type": "tunnel", "config": {"vlan": 100}}, {"type": "empty"}],
            "filter": {"dst": "10.2.0.0/16", "proto": "tcp", "dst_ports": str(port)},
            "slo_us": 100}  # fmt: skip
    if scaling is not None:
        body["scaling"] = scaling
    return core.add_chain("acme", parse_chain(body), 0.0)


def test_prepare_fills_the_pool_then_records_the_instance():
    core, hub, orch = setup()
    c = chain(core)
    (cmd,) = orch.tick(1.0)
    assert cmd.method == "prepare" and cmd.worker in ("w1", "w2")
    assert cmd.params["chain"]["nfs"] == [{"type": "tunnel", "config": {"vlan": 100}},
                                          {"type": "empty", "config": {}}]  # fmt: skip
    assert cmd.params["core"] == 1 and cmd.params["batch"] == 64
    assert cmd.params["instance"] == cmd.instance
    assert core.instances.of_chain(c.id) == []  # not in the core until prepared
    assert orch.tick(1.5) == []  # already preparing: the pool is full
    orch.done(cmd, {"state": "detached"}, None, 2.0)
    (inst,) = core.instances.of_chain(c.id)
    assert inst.id == cmd.instance and not inst.attached and inst.worker == cmd.worker
    assert inst.vf_mac == cmd.params["vf"]
    assert orch.tick(3.0) == []  # one warm instance: enough


def test_pool_attach_becomes_an_attach_command_and_the_pool_refills():
    core, hub, orch = setup()
    c = chain(core)
    (prep,) = orch.tick(1.0)
    orch.done(prep, {}, None, 1.0)
    (inst,) = core.instances.of_chain(c.id)
    picked = core.instances.pick(c, inst.dpid)  # what a packet-in does with an empty list
    assert picked is inst and inst.attached
    cmds = orch.tick(2.0)
    assert [(x.method, x.instance) for x in cmds][0] == ("attach", inst.id)
    (refill,) = [x for x in cmds if x.method == "prepare"]
    assert refill.worker != inst.worker  # the other worker: its core 1 is the free one


def test_no_room_no_command_and_failures_back_off():
    core, hub, orch = setup()
    a, b = chain(core, "a", 80), chain(core, "b", 81)
    cmds = orch.tick(1.0)
    assert sorted(x.params["chain"]["id"] for x in cmds) == [a.id, b.id]
    assert {x.worker for x in cmds} == {"w1", "w2"}
    chain(core, "c", 82)
    assert orch.tick(1.5) == []  # two workers, one data core each: the third chain waits
    failed = next(x for x in cmds if x.params["chain"]["id"] == a.id)
    orch.done(failed, None, "core 1 is busy", 1.0)
    assert orch.errors[-1]["error"] == "core 1 is busy"
    # The freed slot goes to the waiting chain c; a backs off until t = 6.
    (retry_c,) = orch.tick(2.0)
    assert retry_c.params["chain"]["name"] == "c"
    orch.done(retry_c, None, "still busy", 2.0)
    assert orch.tick(3.0) == []  # both back off
    (again,) = orch.tick(6.5)
    assert again.params["chain"]["id"] == a.id


def test_disconnected_agents_get_nothing():
    core, hub, orch = setup()
    hub.disconnected("w1", 0.5)
    hub.disconnected("w2", 0.5)
    chain(core)
    assert orch.tick(1.0) == []


def test_removed_chain_tears_down_its_instances():
    core, hub, orch = setup()
    c = chain(core)
    (prep,) = orch.tick(1.0)
    orch.done(prep, {}, None, 1.0)
    core.remove_chain(c.id, 2.0)
    (cmd,) = orch.tick(2.0)
    assert (cmd.method, cmd.instance, cmd.worker) == ("teardown", prep.instance, prep.worker)


def test_chain_removed_while_preparing():
    core, hub, orch = setup()
    c = chain(core)
    (prep,) = orch.tick(1.0)
    core.remove_chain(c.id, 1.5)
    assert orch.done(prep, {}, None, 2.0) == []
    (cmd,) = orch.tick(2.0)
    assert cmd.method == "teardown" and cmd.instance == prep.instance


def test_stats_only_from_the_instances_own_worker():
    core, hub, orch = setup()
    c = chain(core)
    (prep,) = orch.tick(1.0)
    orch.done(prep, {}, None, 1.0)
    other = "w2" if prep.worker == "w1" else "w1"
    orch.stats(other, [{"id": prep.instance, "load": 0.7, "p99_us": 50.0}], 2.0)
    inst = core.instances.by_id[prep.instance]
    assert inst.load == 0.0
    orch.stats(prep.worker, [{"id": prep.instance, "load": 0.7, "p99_us": 50.0}, {"id": 999}], 2.0)
    assert (inst.load, inst.batch_p99_us, inst.p99_us) == (0.7, 50.0, 100.0)  # 2 x p99 batch
    assert c.id == inst.chain_id


def test_a_stated_max_pps_sets_the_load_where_the_cycles_miss_the_limit():
    core, hub, orch = setup()
    chain(core, scaling={"max_pps": 500})
    (prep,) = orch.tick(1.0)
    orch.done(prep, {}, None, 1.0)
    inst = core.instances.by_id[prep.instance]
    # the NFs' cycles say 0.1 % of the core; 450 pps of a stated 500 is 0.9
    orch.stats(prep.worker, [{"id": prep.instance, "load": 0.001, "pps": 450.0}], 2.0)
    assert inst.load == pytest.approx(0.9) and inst.pps == 450.0
    # above the stated rate the load passes 1: r_max = pps / load stays 500
    orch.stats(prep.worker, [{"id": prep.instance, "load": 0.002, "pps": 600.0}], 3.0)
    assert inst.load == pytest.approx(1.2)
    # where the cycles show more than the rate does, they win; no rate: the cycles
    orch.stats(prep.worker, [{"id": prep.instance, "load": 0.5, "pps": 100.0}], 4.0)
    assert inst.load == 0.5
    orch.stats(prep.worker, [{"id": prep.instance, "load": 0.3}], 5.0)
    assert inst.load == 0.3


def test_reconcile_after_reregister():
    core, hub, orch = setup()
    chain(core)
    (prep,) = orch.tick(1.0)
    orch.done(prep, {}, None, 1.0)
    # The agent comes back still running the instance and a stray one.
    cmds, msgs = orch.registered(prep.worker, [{"id": prep.instance}, {"id": 77}], 3.0)
    assert [(x.method, x.instance) for x in cmds] == [("teardown", 77)]
    assert prep.instance in core.instances.by_id and msgs == []
    # It comes back having lost the instance: the controller forgets it.
    cmds, msgs = orch.registered(prep.worker, [], 4.0)
    assert cmds == [] and prep.instance not in core.instances.by_id
    assert msgs  # the instance's flow rules are deleted on the switch


def test_failed_instance_is_removed_and_torn_down():
    core, hub, orch = setup()
    c = chain(core)
    (prep,) = orch.tick(1.0)
    orch.done(prep, {}, None, 1.0)
    other = "w2" if prep.worker == "w1" else "w1"
    assert orch.failed(other, {"instance": prep.instance}, 2.0) == []  # not its instance
    assert prep.instance in core.instances.by_id
    msgs = orch.failed(prep.worker, {"kind": "nf_failed", "instance": prep.instance}, 2.0)
    assert msgs and prep.instance not in core.instances.by_id
    cmds = orch.tick(2.0)
    assert ("teardown", prep.instance) in [(x.method, x.instance) for x in cmds]
    assert any(x.method == "prepare" and x.params["chain"]["id"] == c.id for x in cmds)


def two_instances():
    """A chain with an attached instance on each worker, and a flow on each."""
    from scapy.all import IP, TCP, Ether, raw

    core, hub, orch = setup()
    c = chain(core)
    insts = []
    for w, mac in (("w1", "02:00:00:00:01:01"), ("w2", "02:00:00:00:02:01")):
        inst, _ = core.add_instance(c.id, w, mac, 1, attached=True, now=1.0)
        insts.append(inst)
    for sport, inst in ((1000, insts[0]), (1001, insts[1])):
        for other in insts:  # only ``inst`` takes new flows for this one
            core.update_stats(other.id, 1.0, load=0.5, p99_us=1 if other is inst else 1e6)
        pkt = raw(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=sport, dport=80))
        core.packet_in(1, 1, pkt, 1.0)
    for inst in insts:
        core.update_stats(inst.id, 1.0, load=0.5, p99_us=1)
    return core, hub, orch, c, insts


def test_a_silent_worker_is_failed_over_and_reconciled_when_it_returns():
    core, hub, orch, c, (a, b) = two_instances()
    assert {r.instance_id for r in core.flows.of_switch(1)} == {a.id, b.id}
    for w in ("w1", "w2"):
        hub.heartbeat(w, {"seq": 1}, 5.0)
    hub.heartbeat("w2", {"seq": 2}, 9.0)
    assert orch.failures(8.0) == []  # 3 s without: not yet (3 missed beats of 1 s)
    msgs = orch.failures(8.5)
    assert hub.workers["w1"].failed == "heartbeats stopped"
    assert a.id not in core.instances.by_id  # forgotten ...
    assert {r.instance_id for r in core.flows.of_switch(1)} == {b.id}  # ... its flow moved
    assert any(type(m).__name__ == "OFPBarrierRequest" for _, m in msgs)
    assert core.metrics.worker_failures.values == {"heartbeats": 1}
    hub.heartbeat("w2", {"seq": 3}, 19.5)
    assert orch.failures(20.0) == []  # once
    assert all(cmd.worker != "w1" for cmd in orch.tick(20.0))  # no new instance there
    # it comes back still running the old instance: torn down, nothing double-served
    cmds, _ = orch.registered("w1", [{"id": a.id}], 21.0)
    hub.register("w1", {"version": PROTOCOL_VERSION, "inventory": inventory(TOPO, "w1"),
                        "instances": [{"id": a.id}]}, 21.0)  # fmt: skip
    assert [(x.method, x.instance) for x in cmds] == [("teardown", a.id)]
    assert hub.workers["w1"].failed is None


def test_a_worker_whose_link_goes_down_is_failed_over_and_told_to_tear_down():
    core, hub, orch, c, (a, b) = two_instances()
    assert orch.port_down(1, 7, 2.0) == []  # not a worker's port
    orch.port_down(1, 11, 2.0)  # w1's
    assert hub.workers["w1"].failed.startswith("switch port 11")
    assert ("teardown", a.id, "w1") in core.instances.agent_requests
    assert {r.instance_id for r in core.flows.of_switch(1)} == {b.id}
    orch.port_up(1, 11, 3.0)
    assert hub.workers["w1"].failed is None


def test_flows_with_nowhere_to_go_reassign_on_their_next_packet():
    core, hub, orch, c, (a, b) = two_instances()
    orch.worker_failed("w2", "test", 2.0)
    orch.worker_failed("w1", "test", 2.0)
    assert len(core.flows) == 0 and not core.instances.by_id  # rules deleted, not moved


def test_a_failed_nf_instance_flows_move_to_a_healthy_one_and_it_is_torn_down():
    core, hub, orch, c, (a, b) = two_instances()
    ev = {"kind": "nf_failed", "instance": a.id, "reason": "NF 1 stalled", "cause": "stalled",
          "at": 1.9}  # fmt: skip
    msgs = orch.failed("w1", ev, 2.0)
    assert a.id not in core.instances.by_id
    assert {r.instance_id for r in core.flows.of_switch(1)} == {b.id}  # moved, not deleted
    assert any(type(m).__name__ == "OFPBarrierRequest" for _, m in msgs)
    assert ("teardown", a.id, "w1") in core.instances.agent_requests
    assert core.metrics.nf_failures.values == {"stalled": 1}
    (entry,) = orch.failures_log
    assert entry["kind"] == "nf" and entry["instance"] == a.id and entry["flows_moved"] == 1
    assert entry["t"] == 2.0 and entry["agent_at"] == 1.9


def test_a_failed_nf_instance_never_takes_its_own_flows_back_from_the_pool():
    # the failed instance is the only one attached and has the lowest id: its flows must go
    # to the warm pool instance, which is attached for them
    core, hub, orch = setup()
    c = chain(core)
    from scapy.all import IP, TCP, Ether, raw

    a, _ = core.add_instance(c.id, "w1", "02:00:00:00:01:01", 1, attached=True, now=1.0)
    core.update_stats(a.id, 1.0, load=0.5, p99_us=1)
    core.packet_in(1, 1, raw(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=9, dport=80)),
                   1.0)  # fmt: skip
    warm, _ = core.add_instance(c.id, "w2", "02:00:00:00:02:01", 1, attached=False, now=1.0)
    orch.failed("w1", {"kind": "nf_failed", "instance": a.id, "cause": "exited"}, 2.0)
    assert {r.instance_id for r in core.flows.of_switch(1)} == {warm.id}
    assert ("attach", warm.id, "w2") in core.instances.agent_requests
    assert not any(r[1] == a.id and r[0] == "attach" for r in core.instances.agent_requests)
