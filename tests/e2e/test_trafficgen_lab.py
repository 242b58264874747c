"""The traffic generator across the lab's real switch: every stamped packet counted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_flows_cross_the_switch_without_loss(lab, tmp_path):
    # No controller: a plain forwarding entry, source port to sink port.
    lab.ofctl("add-flow", "priority=10,in_port=1,actions=output:2")
    src = next(h for h in lab.topology.hosts if h.role == "source")
    sink = next(h for h in lab.topology.hosts if h.role == "sink")
    tx, rx = tmp_path / "tx.json", tmp_path / "rx.json"
    py = [sys.executable, "-m", "tools.trafficgen"]
    sink_proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("sink"), *py, "sink", "--iface", "eth0",
         "--seconds", "20", "--idle", "1.5", "--json", str(rx)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sink_proc.stdout.readline().strip() == "ready"
        send = subprocess.run(
            ["ip", "netns", "exec", lab.ns("src"), *py, "send", "--iface", "eth0",
             "--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
             "--dst", sink.address, "--flows", "20", "--pps", "2000", "--seconds", "2",
             "--json", str(tx)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert send.returncode == 0, send.stderr
        sink_proc.wait(30)
    finally:
        if sink_proc.poll() is None:
            sink_proc.kill()
    sent = {int(k): v for k, v in json.loads(tx.read_text())["sent"].items()}
    report = json.loads(rx.read_text())
    assert sum(sent.values()) >= 3000  # about 4000 at 2000 pps for 2 s
    assert len(report["flows"]) == 20
    for fid, row in report["flows"].items():
        assert row["received"] == sent[int(fid)], f"flow {fid} lost packets"
        assert row["reordered"] == 0 and row["duplicates"] == 0 and row["corrupted"] == 0
        assert row["dst_macs"] == [sink.mac] and row["ttls"] == [64] and row["untagged"]
        assert row["latency_p99_us"] is not None
