"""The runtime on net_af_packet over a veth pair, in a namespace made by the test.

Namespace ``qd-<id>`` holds veth ``qdA<id>`` (the runtime's port) and ``qdB<id>``
(the test's side).  The runtime runs ``empty`` (MAC swap) and sends back out
its port; a scapy helper in the namespace sends frames on qdB and captures
what comes back.  The monitor's reader reads the live counter block.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import yaml

from tests.dataplane.conftest import REPO
from worker import nf_stats

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)

SENDER = textwrap.dedent(
    """
    import json, sys, threading
    from scapy.all import AsyncSniffer, Ether, IP, UDP, Raw, sendp, raw
    iface, n = sys.argv[1], int(sys.argv[2])
    out = [Ether(src="02:00:00:00:00:b0", dst="02:00:00:00:00:a0") / IP(src="10.0.0.2",
           dst="10.0.0.1") / UDP(sport=1000 + i, dport=9) / Raw(b"z" * 30) for i in range(n)]
    ready = threading.Event()
    sn = AsyncSniffer(iface=iface, lfilter=lambda p: p.src == "02:00:00:00:00:a0", count=n,
                      started_callback=ready.set)
    sn.start()
    ready.wait(10)
    sendp(out, iface=iface, verbose=False)
    sn.join(timeout=20)  # until n replies came back, or 20 s on a very busy machine
    got = sn.stop() if sn.running else sn.results
    print(json.dumps({"sent": [raw(p).hex() for p in out], "got": [raw(p).hex() for p in got]}))
    """
)


def test_af_packet_veth_roundtrip(tmp_path, veth_ns):
    ns, a, b = veth_ns
    tag = uuid.uuid4().hex[:8]
    stats = tmp_path / "rt.stats"
    cfg = {
        "name": f"qd-{tag}",
        "core": sorted(os.sched_getaffinity(0))[-1],
        "eal": {"file_prefix": f"qd-{tag}", "hugepages": False, "memory_mb": 128},
        "mempool": {"size": 2047, "cache": 32},
        "ports": {"rx": {"vdev": f"net_af_packet{tag},iface={a}"}, "tx": "rx"},
        "nf": {"type": "empty"},
        "stats": {"path": str(stats)},
        "run": {"duration_s": 30},
    }
    (tmp_path / "nf.yaml").write_text(yaml.safe_dump(cfg))
    rt = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "worker.nf_runtime",
            "--config",
            str(tmp_path / "nf.yaml"),
            "--summary",
            str(tmp_path / "sum.json"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if stats.exists() and stats.stat().st_size == nf_stats.SIZE:
                try:
                    if nf_stats.read(stats).state == "running":
                        break
                except ValueError:
                    pass  # header not written yet
            assert rt.poll() is None, rt.communicate()[1]
            time.sleep(0.05)
        else:
            pytest.fail("runtime did not start")
        helper = tmp_path / "sender.py"
        helper.write_text(SENDER)
        sent = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(helper), b, "20"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        frames = json.loads(sent.stdout)
        live = nf_stats.read(stats)
        assert live.state == "running" and live.counters["rx_packets"] >= 20
        assert live.counters["batches"] >= 1 and sum(live.hist) == live.counters["batches"]
    finally:
        rt.send_signal(signal.SIGTERM)
        out, err = rt.communicate(timeout=20)
    assert rt.returncode == 0, err
    expected = [f[12:24] + f[:12] + f[24:] for f in frames["sent"]]  # hex: MACs swapped
    assert sorted(frames["got"]) == sorted(expected)
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["reason"] == "signal"
    assert summary["counters"]["tx_packets"] >= 20
    assert not stats.exists()  # removed on exit (stats.keep false)
