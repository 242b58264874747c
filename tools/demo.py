"""``make demo``: Quadrant end to end on one machine.

Brings up the lab (topologies/lab.yaml), the controller and one agent per
worker (:mod:`tools.stack`); registers the paper's three canonical chains
over REST — those whose NFs exist in this build; it names the missing NFs
and skips that chain — sends ramping traffic from the source namespace with
the project's traffic generator while a live table shows, per chain, its
instances, cores, flows, load and p99 estimate against its SLO; then counts
what reached the sink.  Chain 3 (acl -> nat, its state in a real Redis the
demo starts) then carries UDP echo connections from the source to the sink
and back through the NAT.  Last, the scaling phase: the chains go, Chain 1
comes back with the lab's stated ceiling per instance (``scaling.max_pps``,
docs/scaling.rst *In the lab*), and a ramp of new flows takes it from one
instance to two and, as they end, back to one (the other reclaimed into the
warm pool), the live table showing it.  It tears everything down and fails if
a registered chain that got traffic delivered nothing, the NAT echo failed, or
the scaling phase saw no scale-out and reclaim, or lost a packet.

    python -m tools.demo [--seconds 20] [--quick] [--no-scaling]
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
from worker.redis_server import RedisError, RedisServer

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "tools.trafficgen"]
ECHO = [sys.executable, "-m", "tools.trafficgen.echo"]


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
    """The NF types the worker agents run (``nat`` with the state store the demo
    gives them: docs/state.rst)."""
    from worker.instances import AGENT_NF_TYPES

    return set(AGENT_NF_TYPES)


def demo_traffic(spec: dict) -> bool:
    """Does the demo send this chain traffic: the generator's (port 80) or, for a NAT
    chain, the echo connections?"""
    ports = spec["filter"].get("dst_ports")
    return nat_of(spec) is not None or ports is None or str(ports) in ("80", "0-65535")


def nat_of(spec: dict) -> dict | None:
    return next((nf["config"] for nf in spec["nfs"] if nf["type"] == "nat"), None)


def nat_echo(stack, src, sink, spec: dict, conns: int = 8) -> bool:
    """UDP echo connections through the chain's NAT and back: True if all came back,
    each behind one external port of its own."""
    ext = nat_of(spec)["external"][0]["address"]
    port = spec["filter"]["dst_ports"]
    sink_ns, src_ns = stack.lab.ns(sink.name), stack.lab.ns(src.name)
    # the sink answers the NAT's address on its own link: a neighbour entry stands in
    # for the upstream router that would know it
    subprocess.run(["ip", "-n", sink_ns, "neigh", "replace", ext, "lladdr", src.mac,
                    "dev", "eth0", "nud", "permanent"], check=True)  # fmt: skip
    server = subprocess.Popen(
        ["ip", "netns", "exec", sink_ns, *ECHO, "serve", sink.address, port],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        server.stdout.readline()
        out = subprocess.run(
            ["ip", "netns", "exec", src_ns, *ECHO, "connect", sink.address, port,
             "--tcp", "0", "--udp", str(conns), "--rounds", "5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.kill()
        server.wait()
    reports = json.loads(out.stdout) if out.returncode == 0 else []
    ok = [r for r in reports if r.get("seqs") == list(range(5)) and len(r["peers"]) == 1]
    ports = {r["peers"][0] for r in ok}
    say(f"{spec['name']}: {len(ok)} of {conns} UDP connections echoed back through the NAT, "
        f"behind {len(ports)} external ports of {ext}")  # fmt: skip
    return len(ok) == conns and len(ports) == conns


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
        if len(mine) > 1:  # several instances: one line each, so a scale-out shows
            for i in sorted(mine, key=lambda i: i["id"]):
                what = "attached" if i["attached"] else "warm"
                left = f"    instance {i['id']} on {i['worker']} core {i['core']}: {what}"
                rows.append(
                    f"{left[:48]:48s} {i['flows']:5d} {i.get('pps', 0.0):7.0f} "
                    f"{i['load']:6.3f} {i['p99_us']:7.1f}"
                )
    return rows


def watch(stack: Stack, chains: dict[int, dict], proc, seconds: float) -> list[list[str]]:
    """The live table while ``proc`` (the sender) runs; returns the rows shown."""
    start = time.monotonic()
    shown = 0
    tty = sys.stdout.isatty()
    history = []
    while proc.poll() is None:
        time.sleep(1.0 if tty else 2.0)
        elapsed = time.monotonic() - start
        rows = table(stack, chains)
        history.append(rows)
        lines = [f"  {bar(elapsed / seconds)} {elapsed:5.1f} / {seconds:.0f} s", *rows]
        if tty:  # redraw in place
            if shown:
                print(f"\x1b[{shown}A", end="")
            print("\n".join(line + "\x1b[K" for line in lines), flush=True)
            shown = len(lines)
        else:
            print("\n".join(lines), flush=True)
    return history


# The scaling phase (docs/scaling.rst, *In the lab*): Chain 1 with the lab's stated
# ceiling per instance, ten flows of 50 pps started one after another, then ended.
SCALE_FLOW_PPS = 50.0
SCALE_MAX_PPS = 300
SCALE_FLOWS = 10
SCALE_EVERY = 0.8
SCALE_PLATEAU = 4.0


def scaling_ramp(src, sink) -> list[dict]:
    """Flow 0 opens the phase; flows 1.. start ``SCALE_EVERY`` apart once the second
    instance is warm, run ``SCALE_PLATEAU`` s together and stop newest first."""
    peak = (SCALE_FLOWS - 2) * SCALE_EVERY + SCALE_PLATEAU
    return [
        {"flow_id": i, "src_ip": f"10.1.0.{10 + i}", "dst_ip": sink.address,
         "proto": "udp" if i % 2 else "tcp", "sport": 20000 + i, "dport": 80, "size": 800,
         "pps": SCALE_FLOW_PPS, "start": (i - 1) * SCALE_EVERY,
         "stop": peak + (SCALE_FLOWS - 1 - i) * SCALE_EVERY}
        for i in range(1, SCALE_FLOWS)
    ]  # fmt: skip


def scaling_phase(stack: Stack, spec: dict, src, sink, tmp: Path) -> bool:
    """Ramp one chain from one instance to two and back, the live table showing it.
    Every chain registered so far must be gone (the lab has two data cores)."""
    spec = dict(spec, name="chain1-scaling", slo_us=20000,
                scaling={"max_pps": SCALE_MAX_PPS})  # fmt: skip
    chain = stack.tenant.post("/v1/chains", spec)
    cid = chain["id"]
    say(f"scaling: registered {spec['name']} as chain {cid} (SLO {spec['slo_us']} us, "
        f"the lab's stated ceiling {SCALE_MAX_PPS} pps per instance, load_cap 0.9)")  # fmt: skip

    def insts():
        return [i for i in stack.admin.get("/v1/instances")["instances"] if i["chain_id"] == cid]

    wait_until(lambda: len(insts()) >= 1, 120, "the scaling chain's warm instance")
    rx = tmp / "scale-rx.json"
    sink_proc = subprocess.Popen(
        ["ip", "netns", "exec", stack.lab.ns(sink.name), *PY, "sink", "--iface", "eth0",
         "--seconds", "120", "--idle", "3", "--json", str(rx)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    sink_proc.stdout.readline()
    ramp = scaling_ramp(src, sink)
    seconds = max(f["stop"] for f in ramp) + 0.5
    # one short flow first: it attaches an instance, and the pool refills on the other core
    first = [{**ramp[0], "flow_id": 0, "src_ip": "10.1.0.10", "sport": 20000, "start": 0.0,
              "stop": None}]  # fmt: skip
    tx = []
    for name, flows, secs in (("first", first, 1.0), ("ramp", ramp, seconds)):
        path = tmp / f"scale-{name}.json"
        path.write_text(json.dumps(flows))
        tx.append(tmp / f"scale-{name}-tx.json")
        send = subprocess.Popen(
            ["ip", "netns", "exec", stack.lab.ns(src.name), *PY, "send", "--iface", "eth0",
             "--src-mac", src.mac, "--dst-mac", sink.mac, "--flows-file", str(path),
             "--seconds", str(secs), "--json", str(tx[-1])],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if name == "first":
            send.wait(60)
            wait_until(lambda: len(insts()) == 2 and any(i["attached"] for i in insts()), 120,
                       "one instance attached and a second one warm")  # fmt: skip
            say(f"scaling: one instance attached, one warm; {len(ramp)} flows of "
                f"{SCALE_FLOW_PPS:.0f} pps "
                f"start {SCALE_EVERY} s apart, run together, then end (newest first)")  # fmt: skip
    history = watch(stack, {cid: spec}, send, seconds)
    # the flows' rules time out at the switch; the emptied instance goes back to the pool
    reclaimed = True
    try:
        wait_until(lambda: sum(i["attached"] for i in insts()) == 1, 30, "the reclaim")
    except StackError:
        reclaimed = False
    history.append(table(stack, {cid: spec}))
    print("\n".join(history[-1]), flush=True)
    sink_proc.wait(60)
    peak = max(int(rows[1].split()[1]) for rows in history) if history else 0
    sent = sum(sum(json.loads(p.read_text())["sent"].values()) for p in tx)
    got = sum(r["received"] for r in json.loads(rx.read_text())["flows"].values())
    after = "one again after the ramp (the other reclaimed, back to the pool)"
    say(f"scaling: {peak} instances attached at the peak, {after if reclaimed else 'no reclaim'}"
        f"; sink: {got} of {sent} packets arrived ({sent - got} lost)")  # fmt: skip
    return peak == 2 and reclaimed and got == sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default=str(ROOT / "topologies" / "lab.yaml"))
    ap.add_argument("--seconds", type=float, default=20.0, help="how long traffic runs")
    ap.add_argument("--pps", type=float, default=2000.0, help="peak total packet rate")
    ap.add_argument("--flows", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="a short run (CI): 6 s, 16 flows")
    ap.add_argument("--no-scaling", dest="scaling", action="store_false",
                    help="leave out the scaling phase (one chain from one instance to two "
                    "and back under a ramp of flows, ~40 s)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.flows = 6.0, 16

    topo = load(args.topology)
    src = next(h for h in topo.hosts if h.role == "source")
    sink = next(h for h in topo.hosts if h.role == "sink")
    have = available_nf_types()
    tmp = Path(tempfile.mkdtemp(prefix="qm-demo-"))
    tmp.chmod(0o755)  # the NFs (their own uids) reach the state store's socket in it
    # the NAT's state store: AOF on, ACLs on, on the housekeeping core (not the data core)
    redis = RedisServer(tmp / "redis", appendfsync="always", core=0)
    # flow rates every second: the scaling loop picks the flows to move by them
    # (flow_stats_interval no longer than scaling_interval, docs/scaling.rst)
    stack = Stack(topo, prefix="qm", log=say, state_store=redis,
                  controller_conf={"flow_stats_interval": 1})  # fmt: skip
    failed = []
    try:
        redis.start()
        say(f"state store: redis-server, socket {redis.socket_path}")
        stack.up(wait=120)
        registered: dict[int, dict] = {}
        # one instance per data core: the lab's workers have one each
        room = len(topo.workers) * len(stack.data_cores)
        for spec in sorted(canonical_chains(sink.mac), key=lambda c: not demo_traffic(c)):
            missing = sorted({nf["type"] for nf in spec["nfs"]} - have)
            if missing:
                say(f"skipping {spec['name']}: the agents do not run NF {', '.join(missing)} yet")
                continue
            if len(registered) == room:
                say(f"skipping {spec['name']}: the lab has {room} data cores, one instance "
                    "each, and the demo sends it no traffic (its end-to-end run: "
                    "tests/e2e/test_http_chain2.py, docs/chains.rst)")  # fmt: skip
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
        watch(stack, registered, send, args.seconds)
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
                failed.append(f"{spec['name']} delivered nothing")
            say(
                f"{spec['name']}: {flows} flows steered"
                + (f", {delivered} packets delivered" if delivered is not None else "")
            )
        nat = next((s for s in registered.values() if nat_of(s)), None)
        if nat is not None and not nat_echo(stack, src, sink, nat):
            failed.append(f"{nat['name']} echo through the NAT")
        chain1 = next((s for s in registered.values() if s["name"].startswith("chain1")), None)
        if args.scaling and chain1 is not None:
            say("scaling: removing the chains so that one chain may take both data cores")
            for cid in registered:
                stack.tenant.delete(f"/v1/chains/{cid}")
            wait_until(lambda: not stack.admin.get("/v1/instances")["instances"], 60,
                       "the chains' instances to go")  # fmt: skip
            if not scaling_phase(stack, chain1, src, sink, tmp):
                failed.append("chain1-scaling: no scale-out and reclaim without loss")
    except (StackError, ApiError, RedisError, OSError, subprocess.SubprocessError) as exc:
        say(f"failed: {exc}")
        for w in topo.workers:
            tail = stack.agent_log(w.name)[-1500:]
            if tail:
                say(f"agent {w.name} log (end):\n{tail}")
        return 1
    finally:
        say("tearing down: chains, agents, controller, lab")
        stack.down()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
