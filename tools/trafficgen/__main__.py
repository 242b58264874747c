"""``python -m tools.trafficgen send|sink``: run in a lab namespace.

    ip netns exec q-sink python -m tools.trafficgen sink --iface eth0 --seconds 10 --json rx.json
    ip netns exec q-src  python -m tools.trafficgen send --iface eth0 --src-mac ... \\
        --dst-mac ... --src 10.1.0.1 --dst 10.2.0.1 --flows 20 --pps 2000 --seconds 5 \\
        --json tx.json

``send`` writes the flows and the packets sent per flow; ``sink`` writes the
per-flow counts, and with ``--sent tx.json`` the loss per flow as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.trafficgen.counting import make_flows
from tools.trafficgen.frames import FlowSpec, FrameError
from tools.trafficgen.wire import receive, send


def _send(args) -> int:
    if args.flows_file:
        flows = [FlowSpec(**f) for f in json.loads(Path(args.flows_file).read_text())]
    else:
        flows = make_flows(
            args.flows, args.src, args.dst, args.pps, tuple(args.proto.split(",")),
            args.size_median, seed=args.seed, dport=args.dport,
        )  # fmt: skip

    def progress(t, n):
        print(f"\rsend: {t:5.1f} s  {n} packets", end="", file=sys.stderr, flush=True)

    sent = send(args.iface, flows, args.src_mac, args.dst_mac, args.seconds, args.ramp, progress)
    print(file=sys.stderr)
    out = {"flows": [f.__dict__ for f in flows], "sent": {str(k): v for k, v in sent.items()}}
    _write(args.json, out)
    print(f"send: {sum(sent.values())} packets in {len(flows)} flows", file=sys.stderr)
    return 0


def _sink(args) -> int:
    sink = receive(args.iface, args.seconds, args.idle, ready=lambda: print("ready", flush=True))
    sent = None
    if args.sent:
        sent = {int(k): v for k, v in json.loads(Path(args.sent).read_text())["sent"].items()}
    _write(args.json, sink.summary(sent))
    return 0


def _write(path, data):
    if path in (None, "-"):
        json.dump(data, sys.stdout, indent=1)
        print()
    else:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.trafficgen", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send stamped flows")
    s.add_argument("--iface", required=True)
    s.add_argument("--src-mac", required=True)
    s.add_argument("--dst-mac", required=True)
    s.add_argument("--flows-file", help="JSON list of flows (FlowSpec fields)")
    s.add_argument("--flows", type=int, default=10, help="number of flows to generate")
    s.add_argument("--src", default="10.1.0.1", help="source address or network")
    s.add_argument("--dst", default="10.2.0.1")
    s.add_argument("--dport", type=int, default=80)
    s.add_argument("--proto", default="udp,tcp", help="comma list, assigned round robin")
    s.add_argument("--pps", type=float, default=1000.0, help="total packets per second")
    s.add_argument("--size-median", type=int, default=1024, help="median frame size (bytes)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--seconds", type=float, default=5.0)
    s.add_argument("--ramp", type=float, default=0.0, help="seconds to ramp from 10%% to 100%%")
    s.add_argument("--json", help="write the flows and per-flow sent counts here")
    k = sub.add_parser("sink", help="count stamped flows")
    k.add_argument("--iface", required=True)
    k.add_argument("--seconds", type=float, default=10.0, help="the longest it listens")
    k.add_argument("--idle", type=float, default=1.0, help="stop this long after the last one")
    k.add_argument("--sent", help="the sender's JSON, to report loss per flow")
    k.add_argument("--json", help="write the report here (default stdout)")
    args = ap.parse_args(argv)
    try:
        return _send(args) if args.cmd == "send" else _sink(args)
    except (FrameError, ValueError, OSError) as exc:
        print(f"trafficgen: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
