"""``make demo``: the lab, the controller against it, and what they do.

For now: bring up the lab from ``topologies/lab.yaml``, start the controller
(``osken-manager quadrant_app``), show the switch connected and the base
pipeline it installed, send a few packets from the source host so the
packet-in counter moves, and take everything down again.  Later work grows
this into the full chain demo.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

from quadrant_app.topology import load
from tools.lab import Lab
from tools.lab.controller import ControllerProcess

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="quadrant-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default=str(ROOT / "topologies" / "lab.yaml"))
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to show it running")
    ap.add_argument("--wait", type=float, default=60.0, help="wait this long for another lab")
    args = ap.parse_args(argv)

    topo = load(args.topology)
    port = _free_port()
    rundir = Path(tempfile.mkdtemp(prefix="qdemo-", dir="/tmp"))
    lab = Lab(topo, "qm", rundir, controller=f"tcp:127.0.0.1:{port}")
    lab.controller_port = port
    ctl = None
    ok = False
    try:
        say(f"bringing up the lab from {args.topology} in {rundir}")
        lab.up(wait=args.wait)
        st = lab.status()
        say(
            f"lab up: {len(st['namespaces'])} namespaces, {len(st['vfs'])} VFs, "
            f"bridge {lab.bridge()} (hugepages: {st['hugepages']['reserved_2mb']} x 2 MB)"
        )
        say(f"starting the controller: osken-manager quadrant_app (OpenFlow on port {port})")
        ctl = ControllerProcess(lab, {"topology": args.topology}).start()
        ctl.wait_connected()
        say("switch connected; its flow table:")
        for line in lab.ofctl("dump-flows").splitlines()[1:]:
            print("    " + line.strip(), flush=True)
        src = next(h for h in topo.hosts if h.role == "source")
        sink = next(h for h in topo.hosts if h.role == "sink")
        deadline = time.monotonic() + args.seconds
        say(f"pinging {sink.address} from {src.name} for {args.seconds:.0f} s (no chain yet)")
        while time.monotonic() < deadline:
            lab.exec(src.name, "ping", "-c", "1", "-W", "0.2", sink.address, check=False)
            flows = lab.ofctl("dump-flows")
            to_ctl = next(ln for ln in flows.splitlines() if "CONTROLLER" in ln)
            n = to_ctl.split("n_packets=")[1].split(",")[0]
            print(f"\r    packets sent to the controller: {n}", end="", flush=True)
            time.sleep(0.5)
        print(flush=True)
        if int(n) == 0:
            say("no packet reached the controller: the uplink pipeline is broken")
            return 1
        ok = True
    finally:
        if ctl:
            ctl.stop()
        say("taking the lab down")
        removed = lab.down()
        say(f"removed {len(removed)} things; done" + ("" if ok else " (with errors)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
