"""What one chain instance carries in the lab, against the lab's switch alone.

The scaling loop judges an instance by its load, ``pps / r_max``, with
``r_max`` from the cycles its NFs measure.  In the lab the NFs' cycles are
not the limit: the first NF's af_packet port (a syscall per TX burst, the
kernel's macvlan and veth path) and one userspace switch and physical core
shared by both workers are.  This benchmark measures where the lab's limit
lies, so that a lab chain can state it (``scaling.max_pps``,
docs/scaling.rst *In the lab*).  The whole stack (lab, controller, agents,
:mod:`tools.stack`) with the lab's ``tunnel -> ipforward`` chain (scaling
off, one instance), then at each rate, in the same run:

* ``chain``: source -> switch -> the instance (macvlan, af_packet) -> switch -> sink;
* ``switch``: source -> switch -> sink, one static entry (the baseline: what the
  lab's path carries without an instance).

Per rate: packets sent and received (a rate passes at <= 0.1 % loss), and
for ``chain`` what the agent reported meanwhile (median over the step): its
pps, its load (the NFs' share of the core) and p99 per-batch time, and the
``r_max = pps / load`` the controller would derive from them.

    python -m tools.bench.lab_chain [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from tools.bench.lab_capacity import lossless_pps
from tools.trafficgen.exchange import exchange

ROOT = Path(__file__).resolve().parents[2]
BASELINE_DST = "10.3.0.1"  # matches no chain; one static entry sends it to the sink


def offer(stack, src, sink, dst: str, pps: float, seconds: float) -> dict:
    args = ["--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
            "--dst", dst, "--flows", "8", "--pps", str(pps), "--size-median", "1024"]  # fmt: skip
    sent_by_flow, report = exchange(stack.lab.ns(src.name), stack.lab.ns(sink.name), args,
                                    seconds=seconds, idle=1.5)  # fmt: skip
    sent = sum(sent_by_flow.values())
    got = sum(r["received"] for r in report["flows"].values())
    return {"offered_pps": pps, "sent": sent, "received": got,
            "achieved_pps": sent / seconds, "loss": 1 - got / sent if sent else 1.0}  # fmt: skip


def sample(stack, chain_id: int, stop: threading.Event, rows: list) -> None:
    while not stop.wait(0.5):
        for i in stack.admin.get("/v1/instances")["instances"]:
            if i["chain_id"] == chain_id and i["attached"] and i["pps"] > 0:
                rows.append((i["pps"], i["load"], i["batch_p99_us"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three rates, 3 s each")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    rates = [500, 1000, 2000, 4000] if args.quick else [500, 1000, 2000, 3000, 4000, 6000, 8000]
    seconds = 3.0 if args.quick else 5.0

    from quadrant_app.topology import load
    from tools.stack import Stack, wait_until

    topo = load(ROOT / "topologies" / "lab.yaml")
    conf = {"idle_timeout": 30, "flow_stats_interval": 1, "warm_pool": 1,
            "scaling_policy": "off"}  # fmt: skip
    stack = Stack(topo, prefix="qbl", log=lambda m: None, controller_conf=conf)
    src = next(h for h in topo.hosts if h.role == "source")
    sink = next(h for h in topo.hosts if h.role == "sink")
    results = {"chain": [], "switch": []}
    try:
        stack.up(wait=600)
        spec = json.loads((ROOT / "examples" / "chains" / "chain1-tunnel-ipforward.json")
                          .read_text())  # fmt: skip
        for nf in spec["nfs"]:
            for route in nf.get("config", {}).get("routes", []):
                route["next_hop_mac"] = sink.mac
        chain = stack.tenant.post("/v1/chains", spec)
        wait_until(lambda: stack.admin.get("/v1/instances")["instances"], 180, "an instance")
        stack.lab.ofctl("add-flow", f"priority=65000,ip,nw_dst={BASELINE_DST},actions=output:2")
        for pps in rates:
            for name in ("chain", "switch"):
                stats: list = []
                stop = threading.Event()
                t = threading.Thread(target=sample, args=(stack, chain["id"], stop, stats))
                t.start()
                try:
                    dst = sink.address if name == "chain" else BASELINE_DST
                    r = offer(stack, src, sink, dst, pps, seconds)
                finally:
                    stop.set()
                    t.join()
                if name == "chain" and stats:
                    ipps, iload, ip99 = (statistics.median(c) for c in zip(*stats, strict=True))
                    r.update(instance_pps=ipps, load=iload, batch_p99_us=ip99,
                             r_max_from_cycles=ipps / iload if iload > 0 else None)  # fmt: skip
                results[name].append(r)
                extra = ""
                if "load" in r:
                    extra = (f"  load {r['load']:.5f}  batch p99 {r['batch_p99_us']:6.1f} us"
                             f"  r_max {r['r_max_from_cycles'] or 0:10.0f} pps")  # fmt: skip
                print(f"{name:6s} offered {pps:6.0f} pps  sent {r['achieved_pps']:7.0f} pps  "
                      f"loss {100 * r['loss']:6.2f} %{extra}", flush=True)  # fmt: skip
                time.sleep(0.5)
    finally:
        stack.down()

    r_maxes = [r["r_max_from_cycles"] for r in results["chain"] if r.get("r_max_from_cycles")]
    summary = {
        "chain_pps": lossless_pps(results["chain"]),
        "switch_pps": lossless_pps(results["switch"]),
        "r_max_from_cycles_pps": statistics.median(r_maxes) if r_maxes else None,
        "runs": results,
    }
    print()
    print(f"{'path':8s} {'lossless pps (<=0.1% loss)':>28s}")
    print(f"{'chain':8s} {summary['chain_pps']:28.0f}")
    print(f"{'switch':8s} {summary['switch_pps']:28.0f}")
    if summary["r_max_from_cycles_pps"]:
        print(f"r_max the NFs' cycles imply: {summary['r_max_from_cycles_pps']:.0f} pps")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
