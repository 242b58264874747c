"""The controller killed and restarted under traffic, its books in a real Redis.

The switch keeps forwarding the established flows with the rules it has; the
new controller restores the chain and its instances from Redis, adopts the
switch's per-flow rules when the switch reconnects (no flow is reassigned) and
keeps the instances the agents report when they reconnect (none is restarted).
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, lab_prefix
from tests.e2e.lab_flows import Traffic, hosts, instances, tunnel_ipforward
from tools.stack import Stack, wait_until
from worker.redis_server import RedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(root_required, tmp_path):
    from quadrant_app.topology import load

    srv = RedisServer(tmp_path / "redis", appendfsync="always").start()
    url = f"redis://admin:{srv.admin_password}@{srv.host}:{srv.port}/0"
    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "scaling_policy": "off",
            "state_redis": url}  # fmt: skip
    st = Stack(load(LAB_TOPOLOGY), prefix=f"r{lab_prefix()[1:]}", log=lambda m: None,
               controller_conf=conf, heartbeat_s=0.2)  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        st.down()
        srv.stop(remove=True)


def metric(stack, name):
    with urllib.request.urlopen(stack.admin.base + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_a_restarted_controller_carries_on_without_reassigning(stack):
    topo = stack.topology
    _src, sink = hosts(topo)
    chain = stack.tenant.post("/v1/chains", tunnel_ipforward("restart", sink))
    wait_until(lambda: instances(stack, chain["id"]), 120, "an instance")
    # the flows set up first, apart (a flow's first packet-outs may be overtaken by the
    # packets after it, flow setup's order at the switch): what is asserted is the
    # order across the restart
    Traffic(stack, seconds=1.0, idle=1.0).start().join()
    traffic = Traffic(stack, seconds=10).start()
    try:
        wait_until(lambda: len(stack.admin.get("/v1/flows")["flows"]) >= 8, 30, "8 flows")
        before = {(f["src"], f["sport"]): f["instance_id"]
                  for f in stack.admin.get("/v1/flows")["flows"]}  # fmt: skip
        insts = {i["id"] for i in stack.admin.get("/v1/instances")["instances"]}
        time.sleep(1.0)
        ctl = stack.controller
        # when each step ended, on the sink's clock (monotonic, shared by the namespaces):
        # a failure says which step a row's "jumps", "late" or "gaps" fall in
        at: dict[str, int] = {}
        ctl.proc.kill()
        ctl.proc.wait()
        at["killed"] = time.monotonic_ns()
        time.sleep(1.5)  # down: the switch forwards on its own
        ctl.start()
        ctl.wait_connected()
        at["switch back"] = time.monotonic_ns()
        wait_until(stack.admin.up, 15, "the REST API")
        wait_until(stack.agents_connected, 30, "the agents to register again")
        at["agents back"] = time.monotonic_ns()
        wait_until(lambda: len(stack.admin.get("/v1/flows")["flows"]) >= 8, 15, "the re-sync")
        at["re-synced"] = time.monotonic_ns()
    finally:
        sent, report = traffic.join()
    assert stack.admin.get(f"/v1/chains/{chain['id']}")["name"] == "restart"
    # the same instances (the warm pool may have gained one since)
    assert insts <= {i["id"] for i in stack.admin.get("/v1/instances")["instances"]}
    after = {(f["src"], f["sport"]): f["instance_id"]
             for f in stack.admin.get("/v1/flows")["flows"]}  # fmt: skip
    assert after == before  # adopted from the switch, not reassigned
    assert metric(stack, "quadrant_flow_setups_total") == 0
    assert metric(stack, "quadrant_resync_adopted_total") >= 8
    for fid, row in report.items():
        why = f"flow {fid}: {row}; steps {at}; sink socket drops {traffic.socket_drops}"
        assert row["received"] == sent[int(fid)], f"lost packets: {why}"
        assert row["reordered"] == 0 and row["duplicates"] == 0, why
    # no instance the controller knew was torn down (one it was preparing when it died
    # is: the new controller does not know it, reconciliation removes it)
    for w in topo.workers:
        gone = {int(n) for n in re.findall(r"instance (\d+) torn down", stack.agent_log(w.name))}
        assert not gone & insts, (w.name, gone, insts)
