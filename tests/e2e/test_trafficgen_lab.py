"""The traffic generator across the lab's real switch: every stamped packet counted."""

from __future__ import annotations

import pytest

from tools.trafficgen.exchange import exchange

pytestmark = pytest.mark.e2e


def test_flows_cross_the_switch_without_loss(lab):
    # No controller: a plain forwarding entry, source port to sink port.
    lab.ofctl("add-flow", "priority=10,in_port=1,actions=output:2")
    src = next(h for h in lab.topology.hosts if h.role == "source")
    sink = next(h for h in lab.topology.hosts if h.role == "sink")
    sent, report = exchange(
        lab.ns("src"), lab.ns("sink"),
        ["--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
         "--dst", sink.address, "--flows", "20", "--pps", "2000"],
        seconds=2,
    )  # fmt: skip
    assert sum(sent.values()) >= 3000  # about 4000 at 2000 pps for 2 s
    assert len(report["flows"]) == 20
    assert report["socket_drops"] == 0  # read from the sink's socket (PACKET_STATISTICS)
    for fid, row in report["flows"].items():
        assert row["received"] == sent[int(fid)], f"flow {fid} lost packets"
        assert row["reordered"] == 0 and row["duplicates"] == 0 and row["corrupted"] == 0
        assert row["dst_macs"] == [sink.mac] and row["ttls"] == [64] and row["untagged"]
        assert row["latency_p99_us"] is not None
