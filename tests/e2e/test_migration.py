"""Flows moved between instances on two workers under traffic, through the lab's switch.

``tunnel -> ipforward`` on two prepared instances (warm pool 2, the scaling loop
off so that only this test moves flows); eight flows start on the first
instance; half of them are moved to the second one over REST while the traffic
runs.  At the sink no packet may be lost, duplicated or reordered within its
flow, and the moved flows' rules must name the second instance's VF.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, lab_prefix
from tools.stack import Stack, wait_until
from tools.trafficgen.exchange import exchange

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(root_required):
    from quadrant_app.topology import load

    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "warm_pool": 2,
            "scaling_policy": "off"}  # fmt: skip
    st = Stack(load(LAB_TOPOLOGY), prefix=f"m{lab_prefix()[1:]}", log=lambda m: None,
               controller_conf=conf)  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        st.down()


def metric(stack, name):
    with urllib.request.urlopen(stack.admin.base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_flows_move_under_traffic_without_loss_or_reordering(stack):
    topo = stack.topology
    src = next(h for h in topo.hosts if h.role == "source")
    sink = next(h for h in topo.hosts if h.role == "sink")
    spec = {
        "name": "moving",
        "nfs": [
            {"type": "tunnel", "config": {"vlan": 100}},
            {"type": "ipforward",
             "config": {"routes": [{"prefix": "10.2.0.0/16", "next_hop_mac": sink.mac}]}},
        ],
        "filter": {"dst": "10.2.0.0/16"},
        "slo_us": 5000,
    }  # fmt: skip
    chain = stack.tenant.post("/v1/chains", spec)

    def instances():
        return [i for i in stack.admin.get("/v1/instances")["instances"]
                if i["chain_id"] == chain["id"]]  # fmt: skip

    wait_until(lambda: len(instances()) == 2, 180, "the agents to prepare two instances")
    out = {}

    def traffic():
        out["sent"], out["report"] = exchange(
            stack.lab.ns("src"), stack.lab.ns("sink"),
            ["--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
             "--dst", sink.address, "--flows", "8", "--proto", "udp,tcp", "--pps", "800"],
            seconds=6, idle=3,
        )  # fmt: skip

    t = threading.Thread(target=traffic)
    t.start()
    try:
        wait_until(lambda: len(stack.admin.get("/v1/flows")["flows"]) >= 8, 30, "8 flows")
        flows = stack.admin.get("/v1/flows")["flows"]
        first = {f["instance_id"] for f in flows}
        assert len(first) == 1, flows  # the most loaded candidate took them all
        (a,) = first
        (b,) = [i["id"] for i in instances() if i["id"] != a]
        time.sleep(1.0)  # mid-flow
        moved = sorted(f["id"] for f in flows)[::2]
        for fid in moved:
            assert stack.admin.post(f"/v1/flows/{fid}/move", {"to": b}) == {
                "flow": fid, "from": a, "to": b,
            }  # fmt: skip
        wait_until(
            lambda: all(f["instance_id"] == b for f in stack.admin.get("/v1/flows")["flows"]
                        if f["id"] in moved),
            10, "the moves",
        )  # fmt: skip
    finally:
        t.join(120)
    assert not t.is_alive()
    sent, report = out["sent"], out["report"]["flows"]
    assert sum(sent.values()) > 3000
    for fid, row in report.items():
        assert row["received"] == sent[int(fid)], f"flow {fid} lost packets: {row}"
        assert row["reordered"] == 0 and row["duplicates"] == 0, row
        assert row["ttls"] == [63] and row["vlans"]
    after = {f["id"]: f["instance_id"] for f in stack.admin.get("/v1/flows")["flows"]}
    assert {fid for fid, i in after.items() if i == b} == set(moved)
    vf_b = next(i["vf_mac"] for i in instances() if i["id"] == b)
    rules = [ln for ln in stack.lab.ofctl("dump-flows").splitlines() if "cookie=0x5146" in ln]
    assert sum(f"set_field:{vf_b}->eth_dst" in ln for ln in rules) == len(moved)
    assert metric(stack, "quadrant_migrated_flows_total") == len(moved)
    assert metric(stack, "quadrant_drain_failures_total") == 0
