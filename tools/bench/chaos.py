"""The chaos suite: faults injected one after another under steady traffic, in the lab.

One stack (lab, controller with its books in a real Redis, an agent per worker), the
``tunnel -> ipforward`` chain with an instance on each worker (warm pool 2), and
stamped UDP traffic of many flows from the source to the sink, counted per flow at
the sink (sequence numbers: loss, reordering, duplicates, the longest silence).
For each fault in turn, once the system is steady again (two instances, every agent
registered, no worker failed):

``none``
    no fault: the baseline of the same run (what the lab loses and how long its
    flows go silent anyway);
``nf``
    SIGKILL of NF 1 (ipforward) of the instance serving the flows;
``agent``
    SIGKILL of that worker's agent (started again once it was declared failed);
``link``
    that worker's uplink pulled (``ip link set down`` on the switch's end of its
    veth), put back once the worker was declared failed;
``controller``
    SIGKILL of the controller, started again 1.5 s later;
``vswitchd``
    SIGKILL of ovs-vswitchd, started again at once (empty flow tables).

Each row is measured, never assumed:

``down_ms``
    how long the component was away: the controller from its kill until the
    new one had the switch connected; ovs-vswitchd from its kill until the new
    daemon was up (most of it the killed daemon's exit);

``detect_ms``
    fault -> the controller declared it (``GET /v1/failures``: its own clock,
    the same monotonic clock on this one machine); none for the controller and
    vswitchd (nothing has to detect them: the switch forwards on its own, or
    the switch reconnects);
``control_ms``
    fault -> the controller's books whole again: every flow on a live instance
    (nf, agent, link), re-adopted by the restarted controller, or its rule back
    on the restarted switch (``quadrant_resync_installed_total``);
``recover_ms``
    fault -> the last affected flow's first packet after its longest silence,
    at the sink (a flow is affected when it lost packets and that silence falls
    in the fault's window; none if no flow lost any);
``outage_ms``
    the longest silence of an affected flow at the sink (one packet interval,
    1000 / (pps / flows) ms, is no silence at all);
``lost``, ``reordered``, ``duplicates``
    over the whole traffic run, from the sink's counts;
``served_twice``
    flows whose rules on the switch name an instance other than the
    controller's, or more than one, after recovery, plus flows with duplicates;
``moved``
    flows on another instance after than before.

    python -m tools.bench.chaos [--quick] [--json PATH] [--faults nf,agent,...]

Needs root (the lab).  Hooks for what is still to come: the ``acl -> nat`` chain
and a Redis restart need stateful NFs inside chains (their state in Redis); they
are not faults of this tool yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.e2e.lab_flows import Traffic, hosts, instances, tunnel_ipforward
from tools.stack import Stack, StackError, wait_until

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ("none", "nf", "agent", "link", "controller", "vswitchd")
COLUMNS = ("fault", "down_ms", "detect_ms", "control_ms", "recover_ms", "outage_ms", "lost", "sent",
           "reordered", "duplicates", "served_twice", "moved")  # fmt: skip


def metric(stack, name: str) -> float:
    with urllib.request.urlopen(stack.admin.base + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def flow_map(stack) -> dict[tuple, int]:
    return {(f["src"], f["sport"]): f["instance_id"] for f in stack.admin.get("/v1/flows")["flows"]}


def rule_map(stack) -> dict[tuple, set]:
    """(source address, source port) -> the instances the switch's per-flow rules name."""
    out: dict[tuple, set] = {}
    for line in stack.lab.ofctl("dump-flows").splitlines():
        m = re.search(r"cookie=0x5146([0-9a-f]{12}),", line)
        src, sport = re.search(r"nw_src=([\d.]+)", line), re.search(r"tp_src=(\d+)", line)
        if m and src and sport:
            out.setdefault((src.group(1), int(sport.group(1))), set()).add(int(m.group(1), 16))
    return out


def nf_pids(stack, worker: str, iid: int) -> list[int]:
    m = re.findall(rf"prepared instance {iid} .*pids \[([0-9, ]+)\]", stack.agent_log(worker))
    if not m:
        raise StackError(f"no pids of instance {iid} in agent {worker}'s log")
    return [int(p) for p in m[-1].split(",")]


def sink_outage(report: dict, sent: dict, t0_ns: int, window_ns: float):
    """``(recover_ms, outage_ms)`` from the sink's per-flow longest silences: a flow is
    affected when it lost packets and its longest silence ended after the fault and
    began within ``window_ns`` of it (before the system said it had recovered, and a
    second more).  ``(None, None)`` if none was."""
    hit = []  # per affected flow, (its silence in the window, ms; when it ended, ns)
    for fid, r in report.items():
        if sent.get(int(fid), 0) <= r["received"]:
            continue
        inside = [(ms, end) for ms, end in r.get("gaps", ())
                  if end > t0_ns and end - ms * 1e6 < t0_ns + window_ns]  # fmt: skip
        if inside:
            hit.append(max(inside))
    if not hit:
        return None, None
    recover = max(end - t0_ns for _, end in hit) / 1e6
    return round(recover, 1), round(max(ms for ms, _ in hit), 1)


class Chaos:
    def __init__(self, stack: Stack, flows: int, pps: float, seconds: float, log=print):
        self.stack, self.flows, self.pps, self.seconds, self.log = stack, flows, pps, seconds, log
        self.chain_id: int | None = None

    def admin(self, path: str):
        return self.stack.admin.get(path)

    def setup(self) -> None:
        _src, sink = hosts(self.stack.topology)
        self.chain_id = self.stack.tenant.post("/v1/chains", tunnel_ipforward("chaos", sink))["id"]

    def steady(self, timeout: float = 180) -> None:
        def ok():
            workers = self.admin("/v1/workers")["workers"]
            if any(w["agent"]["failed"] or not w["agent"]["connected"] for w in workers):
                return False
            return len(instances(self.stack, self.chain_id)) == 2

        wait_until(ok, timeout, "two instances, every agent up, no worker failed")

    def failure_after(self, n: int, **match) -> dict | None:
        for f in self.admin("/v1/failures")["failures"][n:]:
            if all(f.get(k) == v for k, v in match.items()):
                return f
        return None

    def run(self, fault: str) -> dict:
        st = self.stack
        self.steady()
        n_fail = len(self.admin("/v1/failures")["failures"])
        setups = metric(st, "quadrant_flow_setups_total")
        traffic = Traffic(st, flows=self.flows, proto="udp", pps=self.pps,
                          seconds=self.seconds, idle=4.0).start()  # fmt: skip
        row: dict = {"fault": fault, "detect_ms": None, "control_ms": None}
        try:
            wait_until(lambda: len(flow_map(st)) >= self.flows, 30, f"{self.flows} flows")
            before = flow_map(st)
            a = max(set(before.values()), key=list(before.values()).count)
            victim = next(i["worker"] for i in instances(st, self.chain_id) if i["id"] == a)
            time.sleep(1.0)
            t0, t0_ns = time.monotonic(), time.monotonic_ns()
            self._inject(fault, row, victim, a, n_fail, t0)
        finally:
            sent, report = traffic.join()
        after = flow_map(st)
        rules = rule_map(st)
        dup_flows = sum(1 for r in report.values() if r.get("duplicates"))
        twice = sum(1 for k, iid in after.items() if rules.get(k, {iid}) != {iid})
        window_ns = ((row["control_ms"] or 0) + 1000) * 1e6
        recover, outage = sink_outage(report, sent, t0_ns, window_ns)
        total = sum(sent.values())
        row.update(
            recover_ms=recover, outage_ms=outage, sent=total,
            lost=total - sum(r["received"] for r in report.values()),
            reordered=sum(r["reordered"] for r in report.values()),
            duplicates=sum(r["duplicates"] for r in report.values()),
            served_twice=twice + dup_flows,
            moved=sum(1 for k, iid in before.items() if after.get(k, iid) != iid),
            new_setups=int(metric(st, "quadrant_flow_setups_total") - setups),
        )  # fmt: skip
        row["sink"] = {k: {"sent": sent.get(int(k)), **{c: r.get(c) for c in (
                       "received", "gaps")}} for k, r in report.items()}  # fmt: skip
        row["t0_ns"] = t0_ns
        self.log(f"chaos: {fault}: " + ", ".join(f"{k} {row.get(k)}" for k in COLUMNS[1:]))
        return row

    def _inject(self, fault, row, victim, a, n_fail, t0) -> None:
        st = self.stack

        def ms(t):
            return round((t - t0) * 1000, 1)

        def off_a():
            return a not in flow_map(st).values()

        if fault == "none":
            return
        if fault == "nf":
            os.kill(nf_pids(st, victim, a)[1], signal.SIGKILL)
            f = wait_until(lambda: self.failure_after(n_fail, instance=a), 15, "nf failure", 0.02)
            row["detect_ms"] = ms(f["t"])
            wait_until(off_a, 15, "the flows to move", 0.02)
            row["control_ms"] = ms(time.monotonic())
        elif fault in ("agent", "link"):
            if fault == "agent":
                st.agents[victim].kill()
                st.agents[victim].wait()
            else:
                st.lab.set_link(victim, False)
            cause = "heartbeats" if fault == "agent" else "link"
            f = wait_until(lambda: self.failure_after(n_fail, worker=victim, cause=cause), 15,
                           f"the worker to be failed ({cause})", 0.02)  # fmt: skip
            row["detect_ms"] = ms(f["t"])
            wait_until(off_a, 15, "the flows to move", 0.02)
            row["control_ms"] = ms(time.monotonic())
            if fault == "agent":
                st.start_agent(victim)
            else:
                time.sleep(1.0)
                st.lab.set_link(victim, True)
        elif fault == "controller":
            ctl = st.controller
            ctl.proc.kill()
            ctl.proc.wait()
            time.sleep(1.5)
            ctl.start()
            ctl.wait_connected()
            row["down_ms"] = ms(time.monotonic())
            wait_until(st.admin.up, 15, "the REST API", 0.02)
            wait_until(lambda: len(flow_map(st)) >= self.flows, 15, "the flows re-adopted", 0.02)
            row["control_ms"] = ms(time.monotonic())
        elif fault == "vswitchd":
            row["down_ms"] = round(st.lab.restart_vswitchd() * 1000, 1)
            want = flow_map(st)

            def rules_back():
                rules = rule_map(st)
                return all(rules.get(k) == {iid} for k, iid in want.items())

            wait_until(rules_back, 15, "every flow's rule back on the switch", 0.02)
            row["control_ms"] = ms(time.monotonic())
        else:
            raise ValueError(f"fault: {fault!r} is not one of {', '.join(FAULTS)}")


def table(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else str(v)

    widths = [max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(cell(r.get(c)).ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 flows, 7 s of traffic per fault")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"comma list, in order (default {','.join(FAULTS)})")  # fmt: skip
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        ap.error(f"--faults: {bad} not among {', '.join(FAULTS)}")
    if os.geteuid() != 0:
        print("chaos: needs root (the lab)", file=sys.stderr)
        return 2
    flows, pps, seconds = (8, 400, 7.0) if args.quick else (32, 800, 10.0)
    from quadrant_app.topology import load
    from worker.redis_server import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="h10c-chaos-"))
    srv = RedisServer(tmp / "redis", appendfsync="always").start()
    url = f"redis://admin:{srv.admin_password}@{srv.host}:{srv.port}/0"
    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "warm_pool": 2,
            "scaling_policy": "off", "tick_interval": 0.1, "state_redis": url}  # fmt: skip
    stack = Stack(load(ROOT / "topologies" / "lab.yaml"), prefix="h10c", controller_conf=conf,
                  heartbeat_s=0.2, log=lambda m: None)  # fmt: skip
    rows = []
    try:
        stack.up(wait=900)
        chaos = Chaos(stack, flows, pps, seconds)
        chaos.setup()
        for fault in faults:
            rows.append(chaos.run(fault))
    finally:
        stack.down()
        srv.stop(remove=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows))
    if args.json:
        doc = {"command": "python -m tools.bench.chaos " + " ".join(argv or sys.argv[1:]),
               "flows": flows, "pps": pps, "seconds": seconds, "heartbeat_s": 0.2,
               "stall_timeout_s": 0.3, "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
