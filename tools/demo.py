"""``make demo``: Quadrant end to end on one machine.

Brings up the lab (topologies/lab.yaml), the controller and one agent per
worker (:mod:`tools.stack`); registers the paper's three canonical chains
over REST — those whose NFs exist in this build; it names the missing NFs
and skips that chain — sends ramping traffic from the source namespace with
the project's traffic generator while a live table shows, per chain, its
instances, cores, flows, load and p99 estimate against its SLO; then counts
what reached the sink, tears everything down, and fails if a registered
chain delivered nothing.

    python -m tools.demo [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quadrant_app.topology import load
from tools.client import ApiError
from tools.stack import Stack, StackError, wait_until

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "tools.trafficgen"]


CHAIN_DIR = ROOT / "examples" / "chains"


def canonical_chains(sink_mac: str, chain_dir: Path = CHAIN_DIR) -> list[dict]:
    """The paper's Chains 1-3 from ``examples/chains/*.json`` (made for topologies/lab.yaml),
    with ipforward's inline routes pointed at this topology's sink."""
    specs = []
    for path in sorted(chain_dir.glob("*.json")):
        spec = json.loads(path.read_text())
        for nf in spec["nfs"]:
            if nf["type"] == "ipforward":
                for route in nf.get("config", {}).get("routes", []):
                    route["next_hop_mac"] = sink_mac
        specs.append(spec)
    return specs


def available_nf_types() -> set[str]:
    """The NF types the worker agents run (a stateful NF such as ``nat`` needs the
    agent to hand it Redis credentials, which it does not do yet: docs/state.rst)."""
    from worker.instances import AGENT_NF_TYPES

    return set(AGENT_NF_TYPES)


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def bar(fraction: float, width: int = 30) -> str:
    n = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * n + "." * (width - n) + "]"


def table(stack: Stack, chains: dict[int, dict]) -> list[str]:
    insts = stack.admin.get("/v1/instances")["instances"]
    rows = [f"  {'chain':30s} {'inst':>4s} {'warm':>4s} {'cores':>5s} {'flows':>5s} "
            f"{'pps':>7s} {'load':>6s} {'p99 us':>7s} {'SLO us':>7s}"]  # fmt: skip
    for cid, spec in chains.items():
        mine = [i for i in insts if i["chain_id"] == cid]
        att = [i for i in mine if i["attached"]]
        chain = stack.admin.get(f"/v1/chains/{cid}")
        p99 = max((i["p99_us"] for i in att), default=0.0)
        load = sum(i["load"] for i in att)
        pps = sum(i.get("pps", 0.0) for i in att)
        rows.append(
            f"  {spec['name'][:30]:30s} {len(att):4d} {len(mine) - len(att):4d} "
            f"{len({(i['worker'], i['core']) for i in mine}):5d} {chain['flows']:5d} "
            f"{pps:7.0f} {load:6.3f} {p99:7.1f} {spec['slo_us']:7d}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default=str(ROOT / "topologies" / "lab.yaml"))
    ap.add_argument("--seconds", type=float, default=20.0, help="how long traffic runs")
    ap.add_argument("--pps", type=float, default=2000.0, help="peak total packet rate")
    ap.add_argument("--flows", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="a short run (CI): 6 s, 16 flows")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.flows = 6.0, 16

    topo = load(args.topology)
    src = next(h for h in topo.hosts if h.role == "source")
    sink = next(h for h in topo.hosts if h.role == "sink")
    have = available_nf_types()
    stack = Stack(topo, prefix="qm", log=say)
    tmp = Path(tempfile.mkdtemp(prefix="qm-demo-"))
    failed = []
    try:
        stack.up(wait=120)
        registered: dict[int, dict] = {}
        for spec in canonical_chains(sink.mac):
            missing = sorted({nf["type"] for nf in spec["nfs"]} - have)
            if missing:
                say(f"skipping {spec['name']}: the agents do not run NF {', '.join(missing)} yet")
                continue
            chain = stack.tenant.post("/v1/chains", spec)
            registered[chain["id"]] = spec
            say(f"registered {spec['name']} as chain {chain['id']} over REST")
        if not registered:
            say("no chain could be registered")
            return 1
        say("waiting for the agents to prepare the warm pool")
        wait_until(
            lambda: {i["chain_id"] for i in stack.admin.get("/v1/instances")["instances"]}
            >= set(registered),
            120, "an instance of every chain",
        )  # fmt: skip

        rx, tx = tmp / "rx.json", tmp / "tx.json"
        sink_proc = subprocess.Popen(
            ["ip", "netns", "exec", stack.lab.ns(sink.name), *PY, "sink", "--iface", "eth0",
             "--seconds", str(args.seconds + 30), "--idle", "3", "--json", str(rx)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        sink_proc.stdout.readline()
        say(
            f"traffic: {args.flows} flows, UDP and TCP, 1024 B median, ramping to "
            f"{args.pps:.0f} pps over {args.seconds / 2:.0f} s, for {args.seconds:.0f} s"
        )
        send = subprocess.Popen(
            ["ip", "netns", "exec", stack.lab.ns(src.name), *PY, "send", "--iface", "eth0",
             "--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
             "--dst", sink.address, "--flows", str(args.flows), "--pps", str(args.pps),
             "--seconds", str(args.seconds), "--ramp", str(args.seconds / 2),
             "--json", str(tx)],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        start = time.monotonic()
        shown = 0
        tty = sys.stdout.isatty()
        while send.poll() is None:
            time.sleep(1.0 if tty else 2.0)
            elapsed = time.monotonic() - start
            rows = table(stack, registered)
            lines = [f"  {bar(elapsed / args.seconds)} {elapsed:5.1f} / {args.seconds:.0f} s",
                     *rows]  # fmt: skip
            if tty:  # redraw in place
                if shown:
                    print(f"\x1b[{shown}A", end="")
                print("\n".join(line + "\x1b[K" for line in lines), flush=True)
                shown = len(lines)
            else:
                print("\n".join(lines), flush=True)
        sink_proc.wait(60)
        sent = json.loads(tx.read_text())
        report = json.loads(rx.read_text())
        sent_n = sum(sent["sent"].values())
        got = sum(r["received"] for r in report["flows"].values())
        tagged = all(100 in (r["vlans"] or []) for r in report["flows"].values())
        say(f"sink: {got} of {sent_n} packets arrived ({sent_n - got} lost), "
            f"VLAN 100 on every flow: {'yes' if tagged else 'no'}")  # fmt: skip
        for cid, spec in registered.items():
            flows = stack.admin.get(f"/v1/chains/{cid}")["flows"]
            delivered = got if len(registered) == 1 else None
            if delivered == 0:
                failed.append(spec["name"])
            say(
                f"{spec['name']}: {flows} flows steered"
                + (f", {delivered} packets delivered" if delivered is not None else "")
            )
    except (StackError, ApiError, OSError, subprocess.SubprocessError) as exc:
        say(f"failed: {exc}")
        for w in topo.workers:
            tail = stack.agent_log(w.name)[-1500:]
            if tail:
                say(f"agent {w.name} log (end):\n{tail}")
        return 1
    finally:
        say("tearing down: chains, agents, controller, lab")
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        say(f"FAILED: {', '.join(failed)} delivered nothing")
        return 1
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
