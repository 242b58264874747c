"""What the lab's userspace switch carries over veth, against a direct veth link.

Offers stamped traffic at rising rates from the source namespace and counts
it at the sink, two ways in the same run:

* ``switch``: source -> veth -> userspace OVS (one forwarding entry) -> veth -> sink;
* ``direct``: source -> one veth pair -> sink, no switch (the generator's own
  limit on this machine, so a switch figure is never mistaken for it).

A rate passes when at most 0.1 % of its packets are lost.  Chain and agent
tests pace their traffic below the switch's figure so that a lost packet
means a bug.

    python -m tools.bench.lab_capacity [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.trafficgen.exchange import exchange

ROOT = Path(__file__).resolve().parents[2]
SRC_MAC, DST_MAC = "02:00:00:00:0a:01", "02:00:00:00:0b:01"


def lossless_pps(rows) -> float:
    """The highest rate achieved with at most 0.1 % loss (0 if none)."""
    ok = [r["achieved_pps"] for r in rows if r["loss"] <= 0.001]
    return max(ok) if ok else 0.0


def _run(*cmd, check=True):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def offer(src_ns: str, sink_ns: str, pps: float, seconds: float) -> dict:
    sent_by_flow, report = exchange(
        src_ns, sink_ns,
        ["--src-mac", SRC_MAC, "--dst-mac", DST_MAC, "--src", "10.1.0.0/24",
         "--dst", "10.2.0.1", "--flows", "32", "--pps", str(pps), "--size-median", "1024"],
        seconds=seconds, idle=1.0,
    )  # fmt: skip
    sent = sum(sent_by_flow.values())
    received = report["flows"]
    got = sum(r["received"] for r in received.values())
    p99 = max((r["latency_p99_us"] or 0) for r in received.values()) if received else None
    return {"offered_pps": pps, "sent": sent, "received": got,
            "achieved_pps": sent / seconds, "loss": 1 - got / sent if sent else 1.0,
            "p99_us": p99}  # fmt: skip


class DirectLink:
    """Two namespaces joined by one veth pair (the no-switch baseline)."""

    def __init__(self, prefix: str):
        self.src, self.sink = f"{prefix}-dsrc", f"{prefix}-dsink"

    def __enter__(self):
        for ns in (self.src, self.sink):
            _run("ip", "netns", "add", ns)
        _run("ip", "-n", self.src, "link", "add", "eth0", "type", "veth",
             "peer", "name", "eth0", "netns", self.sink)  # fmt: skip
        for ns, mac in ((self.src, SRC_MAC), (self.sink, DST_MAC)):
            _run("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
        return self

    def __exit__(self, *exc):
        for ns in (self.src, self.sink):
            _run("ip", "netns", "del", ns, check=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rates, 2 s each")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    rates = [5000, 10000, 20000, 40000] if args.quick else [5000, 10000, 20000, 30000, 40000,
                                                          60000, 80000]  # fmt: skip
    seconds = 2.0 if args.quick else 5.0

    from quadrant_app.topology import load
    from tools.lab import Lab

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rundir = tempfile.mkdtemp(prefix="qlab-", dir="/tmp")
    lab = Lab(load(ROOT / "topologies" / "lab.yaml"), "qbc", rundir, f"tcp:127.0.0.1:{port}")
    results = {"switch": [], "direct": []}
    try:
        lab.up(wait=600)
        lab.ofctl("add-flow", "priority=10,in_port=1,actions=output:2")
        with DirectLink("qbc") as direct:
            for pps in rates:
                for name, (src, sink) in (
                    ("switch", (lab.ns("src"), lab.ns("sink"))),
                    ("direct", (direct.src, direct.sink)),
                ):
                    r = offer(src, sink, pps, seconds)
                    results[name].append(r)
                    print(
                        f"{name:7s} offered {pps:7.0f} pps  sent {r['achieved_pps']:8.0f} pps  "
                        f"loss {100 * r['loss']:6.2f} %  p99 {r['p99_us'] or 0:8.0f} us",
                        flush=True,
                    )
    finally:
        lab.down()
        shutil.rmtree(rundir, ignore_errors=True)

    summary = {
        "switch_pps": lossless_pps(results["switch"]),
        "direct_pps": lossless_pps(results["direct"]),
        "runs": results,
    }
    print()
    print(f"{'path':8s} {'lossless pps (<=0.1% loss)':>28s}")
    print(f"{'switch':8s} {summary['switch_pps']:28.0f}")
    print(f"{'direct':8s} {summary['direct_pps']:28.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
