"""The switch's ovs-vswitchd crashes and comes back under traffic: it returns with empty
flow tables (fail mode secure: it forwards nothing meanwhile), reconnects, and the
controller puts back the base pipeline and every live flow's rule on the instance it
had -- no flow reassigned, none set up again, every flow served again within seconds,
and no packet reordered or duplicated."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT
from tests.e2e.lab_flows import Traffic, hosts, instances, tunnel_ipforward
from tests.e2e.test_controller_restart import metric
from tools.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(root_required):
    from quadrant_app.topology import load

    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "scaling_policy": "off"}
    st = Stack(load(LAB_TOPOLOGY), prefix="h10s", log=lambda m: None, controller_conf=conf,
               heartbeat_s=0.2)  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        st.down()


def flow_rules(stack) -> list[int]:
    """The instance ids the switch's per-flow rules name."""
    cookies = re.findall(r"cookie=0x(5146[0-9a-f]{12})", stack.lab.ofctl("dump-flows"))
    return [int(c, 16) & 0xFFFFFFFFFFFF for c in cookies]


def test_a_restarted_vswitchd_gets_its_pipeline_and_flows_back_unchanged(stack):
    _src, sink = hosts(stack.topology)
    chain = stack.tenant.post("/v1/chains", tunnel_ipforward("reconnect", sink))
    wait_until(lambda: instances(stack, chain["id"]), 120, "an instance")
    # the flows set up first, apart (a flow's first packet-out may be overtaken by the
    # packets after it): what is asserted is the order across the switch's restart
    Traffic(stack, seconds=1.0, idle=1.0).start().join()
    traffic = Traffic(stack, seconds=6).start()
    try:
        wait_until(lambda: len(stack.admin.get("/v1/flows")["flows"]) >= 8, 30, "8 flows")
        before = {(f["src"], f["sport"]): f["instance_id"]
                  for f in stack.admin.get("/v1/flows")["flows"]}  # fmt: skip
        setups = metric(stack, "quadrant_flow_setups_total")
        reinstalled = metric(stack, "quadrant_resync_installed_total") or 0
        pid = stack.lab.ovs.pid("ovs-vswitchd")
        time.sleep(1.0)
        down_s = stack.lab.restart_vswitchd()
        t0 = time.monotonic()
        assert stack.lab.ovs.pid("ovs-vswitchd") not in (None, pid)
        # the new daemon came back with empty tables: the controller put every rule back
        wait_until(lambda: (metric(stack, "quadrant_resync_installed_total") or 0)
                   >= reinstalled + 8 and len(flow_rules(stack)) >= 8, 15,
                   "the flows' rules back", interval=0.05)  # fmt: skip
        back_s = time.monotonic() - t0
    finally:
        sent, report = traffic.join()
    after = {(f["src"], f["sport"]): f["instance_id"]
             for f in stack.admin.get("/v1/flows")["flows"]}  # fmt: skip
    assert after == before  # every flow on the instance it had
    assert metric(stack, "quadrant_flow_setups_total") == setups  # none set up again
    assert set(flow_rules(stack)) == set(before.values())
    assert back_s < 5.0, back_s
    total = sum(sent.values())
    lost = total - sum(r["received"] for r in report.values())
    # what the switch dropped while it was down and reconnecting: a bounded window
    assert 0 <= lost <= 400 * (down_s + back_s + 1.0), (lost, down_s, back_s)
    for fid, row in report.items():
        assert row["reordered"] == 0 and row["duplicates"] == 0, (fid, row)
        assert row["received"] > 0
    print(
        f"vswitchd down {down_s * 1000:.0f} ms, rules back {back_s * 1000:.0f} ms later, "
        f"lost {lost} of {total}"
    )
