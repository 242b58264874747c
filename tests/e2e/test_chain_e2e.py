"""End to end: a chain registered over REST, prepared by the agents, carrying real flows.

The lab with two workers; ``tunnel -> ipforward`` registered by a tenant;
the controller has the agents prepare instances (warm pool), steers TCP and
UDP flows from the source to them through the lab's Open vSwitch; at the
sink every packet must carry the VLAN tag and a decremented TTL, none may
be lost, each flow must stay on one instance, and the switch's MAC-rewrite
rules must name the VFs of the instances the controller reports.  Traffic is
paced far below what the lab's switch carries (docs/benchmarks.rst), so a
lost packet is a bug.
"""

from __future__ import annotations

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, lab_prefix
from tests.e2e.lab_flows import tunnel_ipforward
from tools.stack import Stack, wait_until
from tools.trafficgen.exchange import exchange

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(root_required):
    from quadrant_app.topology import load

    st = Stack(load(LAB_TOPOLOGY), prefix=f"s{lab_prefix()[1:]}", log=lambda m: None,
               controller_conf={"idle_timeout": 60, "flow_stats_interval": 1})  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        logs = {w.name: st.agent_log(w.name)[-4000:] for w in st.topology.workers}
        st.down()
        st.final_logs = logs


def test_chain_carries_flows_end_to_end(stack):
    topo = stack.topology
    src = next(h for h in topo.hosts if h.role == "source")
    sink = next(h for h in topo.hosts if h.role == "sink")
    spec = tunnel_ipforward("tunnel-ipforward", sink)
    chain = stack.tenant.post("/v1/chains", spec)
    wait_until(
        lambda: [i for i in stack.admin.get("/v1/instances")["instances"]
                 if i["chain_id"] == chain["id"]],
        120, "the agents to prepare an instance",
    )  # fmt: skip

    sent, report = exchange(
        stack.lab.ns("src"), stack.lab.ns("sink"),
        ["--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
         "--dst", sink.address, "--flows", "8", "--proto", "udp,tcp", "--pps", "400"],
        seconds=4, idle=3,
    )  # fmt: skip
    report = report["flows"]
    assert sum(sent.values()) > 1000
    assert set(report) == {str(f) for f in sent}, "a flow never arrived"
    for fid, row in report.items():
        assert row["received"] == sent[int(fid)], f"flow {fid} lost packets: {row}"
        assert row["reordered"] == 0 and row["duplicates"] == 0
        assert row["vlans"] and all(v & 0xFFF == 100 for v in row["vlans"])
        assert not row["untagged"]
        assert row["ttls"] == [63]
        assert row["dst_macs"] == [sink.mac]

    # Each flow on one instance; the switch's rules rewrite to those instances' VFs.
    flows = stack.admin.get("/v1/flows?limit=1000")["flows"]
    assert len(flows) == 8
    insts = {i["id"]: i for i in stack.admin.get("/v1/instances")["instances"]}
    dump = stack.lab.ofctl("dump-flows")
    rewrites = [ln for ln in dump.splitlines() if "cookie=0x5146" in ln]  # per-flow rules
    assert len(rewrites) == 8
    for f in flows:
        vf = insts[f["instance_id"]]["vf_mac"]
        assert any(f"set_field:{vf}->eth_dst" in ln for ln in rewrites)
