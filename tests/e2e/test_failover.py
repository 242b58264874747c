"""A worker's agent killed under traffic: its flows go to the other worker, and when
the agent comes back what the dead one left is removed.

``tunnel -> ipforward`` with two prepared instances (one per worker, the
scaling loop off); eight flows run on the first.  Its agent is SIGKILLed: its
heartbeats stop, the controller declares the worker failed within three
heartbeat periods (0.2 s here) and re-points the flows at the other worker's
instance, attaching it from the warm pool.  The killed agent's NF processes
live on as orphans; the restarted agent removes them before it registers,
and the controller's reconciliation means no flow is served by two instances.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, lab_prefix
from tests.e2e.lab_flows import Traffic, hosts, instances, tunnel_ipforward
from tools.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(root_required):
    from quadrant_app.topology import load

    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "warm_pool": 2,
            "scaling_policy": "off", "tick_interval": 0.1}  # fmt: skip
    st = Stack(load(LAB_TOPOLOGY), prefix=f"f{lab_prefix()[1:]}", log=lambda m: None,
               controller_conf=conf, heartbeat_s=0.2)  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        st.down()


def test_a_killed_agents_flows_move_to_the_other_worker(stack):
    _src, sink = hosts(stack.topology)
    chain = stack.tenant.post("/v1/chains", tunnel_ipforward("failover", sink))
    wait_until(lambda: len(instances(stack, chain["id"])) == 2, 180,
               "the agents to prepare two instances")  # fmt: skip
    traffic = Traffic(stack, proto="udp").start()
    try:
        wait_until(lambda: len(stack.admin.get("/v1/flows")["flows"]) >= 8, 30, "8 flows")
        (a,) = {f["instance_id"] for f in stack.admin.get("/v1/flows")["flows"]}
        victim = next(i["worker"] for i in instances(stack, chain["id"]) if i["id"] == a)
        time.sleep(1.0)
        stack.agents[victim].kill()
        killed_at = time.monotonic()
        wait_until(
            lambda: all(f["instance_id"] != a for f in stack.admin.get("/v1/flows")["flows"]),
            10, "the flows to leave the failed worker",
        )  # fmt: skip
        failover_s = time.monotonic() - killed_at
        w = next(x for x in stack.admin.get("/v1/workers")["workers"] if x["name"] == victim)
        assert w["agent"]["failed"] == "heartbeats stopped"
    finally:
        sent, report = traffic.join()
    assert failover_s < 3.0, failover_s  # 3 missed beats of 0.2 s, a tick, the REST poll
    lost = sum(sent.values()) - sum(r["received"] for r in report.values())
    # the dead agent's NFs still forwarded until the rules moved; the new instance got
    # the rest (its VF queued them while it attached): nothing should be lost
    assert lost <= 0.01 * sum(sent.values()), (lost, report)
    assert all(r["duplicates"] == 0 for r in report.values())

    # the agent comes back: what its predecessor left is removed, it registers clean
    stack.start_agent(victim)
    wait_until(stack.agents_connected, 30, "the agent to register again")
    log = stack.agent_log(victim)
    m = re.search(r"left (\d+) NF processes and (\d+) files: removed", log)
    assert m and int(m.group(1)) >= 1, log[-2000:]
    (b,) = {f["instance_id"] for f in stack.admin.get("/v1/flows")["flows"]}
    assert b != a and all(i["id"] != a for i in instances(stack, chain["id"]))
    vf_a_rules = [ln for ln in stack.lab.ofctl("dump-flows").splitlines()
                  if "cookie=0x5146" in ln and f"{a:x}," in ln.split()[0]]  # fmt: skip
    assert vf_a_rules == []
