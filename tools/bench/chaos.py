"""The chaos suite: faults injected one after another under steady traffic, in the lab.

One stack (lab, controller with its books in a real Redis, an agent per worker handing
the NATs their own users of that Redis) and two chains at once:

* ``tunnel -> ipforward`` carrying stamped UDP traffic of many flows from the source
  to ``10.2.0.2`` on the sink's network, counted per flow at the sink (sequence
  numbers: loss, reordering, duplicates, the longest silence);
* ``acl -> nat`` carrying TCP and UDP echo connections from the source to the sink's
  echo server, whose replies come back through the NAT, counted per connection at
  the client (every round's echo, in order, when it came back, what was sent again,
  and the external endpoint the server saw).

The lab has two instance slots (one data core per worker, the other core is the
housekeeping one), so each chain runs one instance: the NAT chain's on one worker,
the tunnel chain's on the other, and the warm pool (1 per chain) refills into
whatever slot a fault frees.  The NAT chain has the higher priority, so a freed
slot goes to it first (the tunnel chain would otherwise take it for its pool and
the NAT would have nowhere to go); its one external address lets it run one
instance only.

For each fault in turn, once the system is steady again (both chains' instances up,
every agent registered, no worker failed):

``none``
    no fault: the baseline of the same run;
``nf``
    SIGKILL of NF 1 of both chains' instances at once (the tunnel chain's ipforward,
    the NAT chain's nat): each is replaced in a freed slot, the NAT's from its
    mappings in Redis;
``agent``
    SIGKILL of the NAT worker's agent (started again once it was declared failed);
``link``
    the NAT worker's uplink pulled (``ip link set down`` on the switch's end of its
    veth), put back 1 s after the worker was declared failed;
``controller``
    SIGKILL of the controller, started again 1.5 s later;
``redis``
    SIGKILL of redis-server (the controller's books and the NATs' state), started
    again ``REDIS_DOWN_S`` later on the same port, socket and append-only files;
``vswitchd``
    SIGKILL of ovs-vswitchd, started again at once (empty flow tables).

Each row is measured, never assumed:

``down_ms``
    how long the component was away: the controller from its kill until the new one
    had the switch connected; redis-server from its kill until the new one answered;
    ovs-vswitchd from its kill until the new daemon was up;
``detect_ms``
    fault -> the controller declared it (``GET /v1/failures``: its own clock, the same
    monotonic clock on this one machine; for ``nf`` the later of the two NFs); for
    ``redis`` the first failure of anything the controller declared; none when
    nothing was declared failed (the controller and vswitchd: nothing has to be);
``control_ms``
    fault -> the controller's books whole again: every flow on a live instance, the
    flows re-adopted by the restarted controller, every rule back on the restarted
    switch, or (``redis``) the NAT chain serving its connections' flows again;
``recover_ms``, ``outage_ms``
    the tunnel chain's flows at the sink: the fault -> the last affected flow's first
    packet after its first silence in the fault's window (longer than two packet
    intervals), and the longest such silence (a flow is affected when it lost
    packets); none if none lost any;
``lost``, ``reordered``, ``duplicates``
    the tunnel chain's flows over the whole traffic run, from the sink's counts;
``nat_recover_ms``, ``nat_outage_ms``
    the same for the NAT chain's connections from their echo times (a connection is
    affected when two echoes came back more than ``NAT_QUIET_MS`` apart);
``nat_lost``
    UDP rounds sent again after a timeout (less late echoes) plus TCP segments
    retransmitted (the kernel's count); ``nat_rounds``: echoes back / due;
``state_kept``
    yes when every NAT connection completed every round, in order, behind one
    external endpoint, the one Redis had for it before the fault and still has
    after (``tools/bench/chaos_nat.py``);
``served_twice``
    flows (both chains, both directions) whose rules on the switch name an instance
    other than the controller's, or more than one, after recovery, plus tunnel flows
    with duplicates;
``moved``
    flows on another instance after than before.

The JSON rows carry more: every connection's report, the tunnel flows' silences
shared by many flows (``silences``), the NF processes' start and end
(``nf_events``, from their cgroups), controller counters, the rules that blackhole
the NAT's replies (``blackholed``) and, for ``redis``, how new connections fared.

    python -m tools.bench.chaos [--quick] [--json PATH] [--faults nf,agent,...]
        [--prefix NAME] [--logs DIR] [--plain-release]

Needs root (the lab).
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
import threading
import time
import urllib.request
from pathlib import Path

from tests.e2e.lab_flows import (
    NAT_EXTERNAL,
    Echo,
    Traffic,
    acl_nat,
    hosts,
    instances,
    tunnel_ipforward,
)
from tools.bench.chaos_nat import echo_counts, echo_outage, redis_mappings, state_kept
from tools.stack import Stack, StackError, wait_until

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ("none", "nf", "agent", "link", "controller", "redis", "vswitchd")
COLUMNS = ("fault", "down_ms", "detect_ms", "control_ms", "recover_ms", "outage_ms", "lost", "sent",
           "reordered", "duplicates", "nat_recover_ms", "nat_outage_ms", "nat_lost", "nat_rounds",
           "state_kept", "served_twice", "moved")  # fmt: skip
TUNNEL_DST = "10.2.0.2"  # the tunnel chain's traffic: the sink's network, not its address
REDIS_DOWN_S = 1.0
COUNTERS = ("quadrant_packet_ins_total", "quadrant_repeat_packet_ins_total",
            "quadrant_held_released_total", "quadrant_marked_packet_outs_total",
            'quadrant_ordered_releases_total{result="held"}',
            'quadrant_ordered_releases_total{result="refused"}')  # fmt: skip
NAT_QUIET_MS = 250.0  # an echo this much later than its round interval: a silence


def metric(stack, name: str) -> float:
    with urllib.request.urlopen(stack.admin.base + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def flow_key(f: dict) -> tuple:
    return (f["proto"], f["src"], f.get("sport"), f["dst"], f.get("dport"))


def flows(stack) -> list[dict]:
    out, after = [], 0
    while True:
        page = stack.admin.get(f"/v1/flows?limit=100&after={after}")
        out += page["flows"]
        if not page.get("next"):
            return out
        after = page["next"]


def flow_map(stack, chain_id: int | None = None) -> dict[tuple, int]:
    """(proto, src, sport, dst, dport) -> instance, of one chain's flows or every one."""
    return {flow_key(f): f["instance_id"] for f in flows(stack)
            if chain_id is None or f["chain_id"] == chain_id}  # fmt: skip


def rule_map(stack) -> dict[tuple, set]:
    """(proto, src, sport, dst, dport) -> the instances the switch's per-flow rules name."""
    out: dict[tuple, set] = {}
    for line in stack.lab.ofctl("dump-flows").splitlines():
        m = re.search(r"cookie=0x5146([0-9a-f]{12}),", line)
        proto = re.search(r"[ ,](tcp|udp)[ ,]", line)
        f = {k: re.search(rf"{k}=([\d.]+)", line) for k in ("nw_src", "nw_dst", "tp_src", "tp_dst")}
        if m and proto and all(f.values()):
            key = (proto.group(1), f["nw_src"].group(1), int(f["tp_src"].group(1)),
                   f["nw_dst"].group(1), int(f["tp_dst"].group(1)))  # fmt: skip
            out.setdefault(key, set()).add(int(m.group(1), 16))
    return out


def nf_pids(stack, worker: str, iid: int) -> list[int]:
    m = re.findall(rf"prepared instance {iid} .*pids \[([0-9, ]+)\]", stack.agent_log(worker))
    if not m:
        raise StackError(f"no pids of instance {iid} in agent {worker}'s log")
    return [int(p) for p in m[-1].split(",")]


def sink_outage(report: dict, sent: dict, t0_ns: int, window_ns: float, floor_ms: float = 0.0):
    """``(recover_ms, outage_ms)`` from the sink's per-flow longest silences: a flow is
    affected when it lost packets; its outage is the first of its silences (longer than
    ``floor_ms``) that ended after the fault and began within ``window_ns`` of it --
    the first, not the longest: a loaded machine silences every flow for 80-150 ms now
    and then with no fault at all (the ``none`` row), and the longest silence in the
    window can be one of those.  ``(None, None)`` if no flow was affected."""
    hit = []  # per affected flow, (its silence in the window, ms; when it ended, ns)
    for fid, r in report.items():
        if sent.get(int(fid), 0) <= r["received"]:
            continue
        inside = [(end - ms * 1e6, ms, end) for ms, end in r.get("gaps", ())
                  if ms > floor_ms and end > t0_ns
                  and end - ms * 1e6 < t0_ns + window_ns]  # fmt: skip
        if inside:
            hit.append(min(inside)[1:])
    if not hit:
        return None, None
    recover = max(end - t0_ns for _, end in hit) / 1e6
    return round(recover, 1), round(max(ms for ms, _ in hit), 1)


def new_wave(reports: list[dict], back_ns: int) -> dict:
    """Connections opened during (or just after) a fault: how many completed, and their
    first echo relative to ``back_ns`` (the component back), ms."""
    firsts = [r["times_ns"][0] for r in reports if r.get("times_ns")]
    return {
        "opened": len(reports),
        "completed": sum(1 for r in reports if not r.get("error")),
        "errors": sorted({r["error"] for r in reports if r.get("error")})[:3],
        "first_echo_ms": round((min(firsts) - back_ns) / 1e6, 1) if firsts else None,
        "last_first_echo_ms": round((max(firsts) - back_ns) / 1e6, 1) if firsts else None,
    }


def blackholed(stack, address: str, younger_s: float = float("inf")) -> int:
    """Rules for flows no chain took (``_unmatched``: the default action) towards
    ``address``, installed less than ``younger_s`` ago: a NAT's replies that came while
    no instance owned its address."""
    n = 0
    for line in stack.lab.ofctl("dump-flows").splitlines():
        age = re.search(r"duration=([\d.]+)s", line)
        if ("cookie=0x5155" in line and f"nw_dst={address}," in line
                and (age is None or float(age.group(1)) < younger_s)):  # fmt: skip
            n += 1
    return n


class NfWatch:
    """When each NF process of the lab's workers started and ended, from their cgroups
    (``/sys/fs/cgroup/cpuset/<agent prefix>/<instance>-nf<k>``, polled every 10 ms in a
    thread): ``events`` is ``[(monotonic ns, "start" | "end", cgroup name)]``."""

    def __init__(self, prefixes: list[str], root: Path = Path("/sys/fs/cgroup/cpuset")):
        self.dirs = [root / p for p in prefixes]
        self.events: list[tuple[int, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _alive(self) -> set[str]:
        out = set()
        for d in self.dirs:
            try:
                for sub in d.iterdir():
                    if sub.is_dir() and (sub / "cgroup.procs").read_text().strip():
                        out.add(sub.name)
            except OSError:
                continue
        return out

    def _run(self) -> None:
        seen = self._alive()
        while not self._stop.wait(0.01):
            now = self._alive()
            t = time.monotonic_ns()
            self.events += [(t, "start", n) for n in sorted(now - seen)]
            self.events += [(t, "end", n) for n in sorted(seen - now)]
            seen = now

    def __enter__(self) -> NfWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def silences(report: dict, t0_ns: int, floor_ms: float) -> list[list]:
    """The tunnel flows' silences longer than ``floor_ms`` that ended after the fault,
    lost packets or not: ``[[ms, ended ms after the fault, flows]]``, one entry per
    (rounded) silence shared by flows, longest first."""
    shared: dict[tuple, int] = {}
    for r in report.values():
        for ms, end in r.get("gaps", ()):
            if ms > floor_ms and end > t0_ns:
                k = (round(ms, -1), round((end - t0_ns) / 1e6, -1))
                shared[k] = shared.get(k, 0) + 1
    return [[ms, end, n] for (ms, end), n in sorted(shared.items(), reverse=True)][:8]


class Chaos:
    def __init__(self, stack: Stack, redis, flows: int, pps: float, seconds: float,
                 conns: int = 8, interval: float = 0.1, log=print):  # fmt: skip
        self.stack, self.redis, self.flows, self.pps = stack, redis, flows, pps
        self.seconds, self.conns, self.interval, self.log = seconds, conns, interval, log
        self.rounds = int(seconds / interval)
        self.chain_id: int | None = None  # tunnel -> ipforward
        self.nat_id: int | None = None  # acl -> nat
        self.echo: Echo | None = None

    def admin(self, path: str):
        return self.stack.admin.get(path)

    @property
    def nat_prefix(self) -> str:
        return f"c{self.nat_id}n1"  # the NAT's key prefix in Redis (NF 1 of its chain)

    def setup(self) -> None:
        src, sink = hosts(self.stack.topology)
        self.src_addr = src.address
        tunnel = tunnel_ipforward("chaos-tunnel", sink)
        tunnel["filter"] = {"dst": f"{TUNNEL_DST}/32"}
        self.chain_id = self.stack.tenant.post("/v1/chains", tunnel)["id"]
        self.nat_id = self.stack.tenant.post("/v1/chains", acl_nat("chaos-nat", sink,
                                             priority=1))["id"]  # fmt: skip
        self.echo = Echo(self.stack, conns=self.conns, rounds=self.rounds,
                         interval=self.interval).serve()  # fmt: skip

    def close(self) -> None:
        if self.echo is not None:
            self.echo.close()

    def steady(self, timeout: float = 180) -> None:
        def ok():
            workers = self.admin("/v1/workers")["workers"]
            if any(w["agent"]["failed"] or not w["agent"]["connected"] for w in workers):
                return False
            return all(len(instances(self.stack, c)) == 1 for c in (self.chain_id, self.nat_id))

        wait_until(ok, timeout, "one instance of each chain, every agent up, no worker failed")

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
        counted = {m: metric(st, m) for m in COUNTERS}
        t_run = time.monotonic()
        traffic = Traffic(st, flows=self.flows, proto="udp", pps=self.pps, seconds=self.seconds,
                          idle=4.0, dst=TUNNEL_DST).start()  # fmt: skip
        row: dict = {"fault": fault, "detect_ms": None, "control_ms": None}
        reports = []
        watch = NfWatch([f"{st.lab.plan.prefix}-{w.name}" for w in st.topology.workers])
        watch.__enter__()
        try:
            self.echo.start(wait=30)  # every connection mapped: its first echo is back
            want = self.flows + 4 * self.conns  # the NAT's: every connection both ways
            wait_until(lambda: len(flow_map(st)) >= want, 30, f"{want} flows")

            time.sleep(1.0)
            before = flow_map(st)
            nat_before = redis_mappings(self.redis, self.nat_prefix)
            t0, t0_ns = time.monotonic(), time.monotonic_ns()
            try:
                (a,) = instances(st, self.chain_id)
                (n,) = instances(st, self.nat_id)
                self._inject(fault, row, a, n, n_fail, t0)
            except (StackError, OSError, ValueError) as exc:  # in its row; the suite goes on
                row["error"] = f"{type(exc).__name__}: {exc}"
                self.log(f"chaos: {fault}: {row['error']}")
        finally:
            sent, report = traffic.join()
            reports = self.echo.join(timeout=self.seconds + 90)
            watch.__exit__()
        after = flow_map(st)
        rules = rule_map(st)
        nat_after = redis_mappings(self.redis, self.nat_prefix)
        row["blackholed"] = blackholed(st, NAT_EXTERNAL, time.monotonic() - t_run)  # this run's
        dup_flows = sum(1 for r in report.values() if r.get("duplicates"))
        twice = sum(1 for k, iid in after.items() if rules.get(k, {iid}) != {iid})
        window_ns = ((row["control_ms"] or 0) + 1000) * 1e6
        interval_ms = 1000 * self.flows / self.pps  # one flow's packet interval
        recover, outage = sink_outage(report, sent, t0_ns, window_ns, 2 * interval_ms)
        quiet_ns = (self.interval * 1000 + NAT_QUIET_MS) * 1e6
        nat_recover, nat_outage = echo_outage(reports, t0_ns, window_ns, quiet_ns)
        kept, why = state_kept(reports, nat_before, nat_after, self.src_addr, self.rounds)
        echoes = echo_counts(reports, self.rounds)
        total = sum(sent.values())
        row.update(
            recover_ms=recover, outage_ms=outage, sent=total,
            lost=total - sum(r["received"] for r in report.values()),
            reordered=sum(r["reordered"] for r in report.values()),
            duplicates=sum(r["duplicates"] for r in report.values()),
            nat_recover_ms=nat_recover, nat_outage_ms=nat_outage, nat_lost=echoes["lost"],
            nat_rounds=f"{echoes['rounds']}/{echoes['expected']}",
            state_kept="yes" if kept else "no", state_broken=why,
            served_twice=twice + dup_flows,
            moved=sum(1 for k, iid in before.items() if after.get(k, iid) != iid),
            new_setups=int(metric(st, "quadrant_flow_setups_total") - setups),
            nat_mappings=[len(nat_before), len(nat_after)], echo=echoes,
        )  # fmt: skip
        kept_cols = ("received", "reordered", "duplicates", "gaps")
        # what the controller did meanwhile (a restarted controller counts from 0)
        row["counters"] = {m: metric(st, m) - v for m, v in counted.items()}
        row["sink"] = {k: {"sent": sent.get(int(k)), **{c: r.get(c) for c in kept_cols}}
                       for k, r in report.items()}  # fmt: skip
        row["connections"] = reports
        row["t0_ns"] = t0_ns
        # what ran on the data core meanwhile, and the tunnel flows' shared silences
        row["nf_events"] = [[round((t - t0_ns) / 1e6, 1), what, name]
                            for t, what, name in watch.events]  # fmt: skip
        row["silences"] = silences(report, t0_ns, 2 * interval_ms)
        self.log(f"chaos: {fault}: " + ", ".join(f"{k} {row.get(k)}" for k in COLUMNS[1:])
                 + (f"; state broken: {why}" if why else "")
                 + (f"; new connections: {row['new_connections']}"
                    if "new_connections" in row else ""))  # fmt: skip
        return row

    def _inject(self, fault, row, a, n, n_fail, t0) -> None:
        st = self.stack

        def ms(t):
            return round((t - t0) * 1000, 1)

        def serving():  # every flow on a live instance of its chain, both chains' flows back
            live = {i["id"] for c in (self.chain_id, self.nat_id) for i in instances(st, c)}
            now = flow_map(st)
            return len(now) >= self.flows + 4 * self.conns and set(now.values()) <= live

        if fault == "none":
            return
        if fault == "nf":
            os.kill(nf_pids(st, a["worker"], a["id"])[1], signal.SIGKILL)
            os.kill(nf_pids(st, n["worker"], n["id"])[1], signal.SIGKILL)
            fs = [wait_until(lambda i=i: self.failure_after(n_fail, instance=i), 15,
                             f"instance {i}'s failure", 0.02)
                  for i in (a["id"], n["id"])]  # fmt: skip
            row["detect_ms"] = max(ms(f["t"]) for f in fs)
            wait_until(serving, 60, "both chains' flows on their new instances", 0.02)
            row["control_ms"] = ms(time.monotonic())
        elif fault in ("agent", "link"):
            victim = n["worker"]
            if fault == "agent":
                st.agents[victim].kill()
                st.agents[victim].wait()
            else:
                st.lab.set_link(victim, False)
            cause = "heartbeats" if fault == "agent" else "link"
            f = wait_until(lambda: self.failure_after(n_fail, worker=victim, cause=cause), 15,
                           f"the worker to be failed ({cause})", 0.02)  # fmt: skip
            row["detect_ms"] = ms(f["t"])
            if fault == "agent":
                st.start_agent(victim)
            else:
                time.sleep(1.0)
                st.lab.set_link(victim, True)
            wait_until(serving, 60, "the flows on a new NAT instance", 0.02)
            row["control_ms"] = ms(time.monotonic())
        elif fault == "controller":
            ctl = st.controller
            ctl.proc.kill()
            ctl.proc.wait()
            time.sleep(1.5)
            ctl.start()
            ctl.wait_connected()
            row["down_ms"] = ms(time.monotonic())
            wait_until(st.admin.up, 15, "the REST API", 0.02)
            wait_until(serving, 15, "the flows re-adopted", 0.02)
            row["control_ms"] = ms(time.monotonic())
        elif fault == "redis":
            wave = ["--tcp", "2", "--udp", "2", "--rounds", "5", "--interval", "0.1",
                    "--timeout", "0.3", "--tries", "30"]  # fmt: skip
            self.redis.proc.kill()
            self.redis.proc.wait()
            during = self.echo.connect(wave)  # new connections while Redis is away
            time.sleep(REDIS_DOWN_S)
            self.redis.start()
            back_ns = time.monotonic_ns()
            row["down_ms"] = ms(time.monotonic())
            later = self.echo.connect(wave)  # and once it is back
            try:
                wait_until(serving, 30, "the NAT chain serving its flows again", 0.02)
                row["control_ms"] = ms(time.monotonic())
            finally:
                f = self.failure_after(n_fail)
                row["detect_ms"] = ms(f["t"]) if f else None
                row["failures"] = self.admin("/v1/failures")["failures"][n_fail:]
                row["new_connections"] = {
                    "during": new_wave(Echo.reports(during, 60), back_ns),
                    "after": new_wave(Echo.reports(later, 60), back_ns),
                }
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


class ChaosStack:
    """The suite's whole system: a Redis (the controller's books and the NATs' state,
    ``appendfsync always``), the stack over it, the two chains and the echo server;
    ``with ChaosStack(...) as chaos: chaos.run("nf")``.  Cleans up what it started."""

    def __init__(self, topology, prefix: str, flows: int, pps: float, seconds: float,
                 conns: int, lab_wait: float = 900.0, log=print, logs=None,
                 controller_conf=None):  # fmt: skip
        from worker.redis_server import RedisServer

        self.logs = Path(logs) if logs else None  # keep the agents' and controller's logs
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-chaos-"))
        os.chmod(self.tmp, 0o755)  # the NFs (their own uids) reach the Unix socket inside
        self.redis = RedisServer(self.tmp / "redis", appendfsync="always", core=0)
        self.topology, self.prefix, self.lab_wait, self.log = topology, prefix, lab_wait, log
        self.args = (flows, pps, seconds, conns)
        self.controller_conf = controller_conf or {}  # on top of the suite's own
        self.stack: Stack | None = None
        self.chaos: Chaos | None = None

    def __enter__(self) -> Chaos:
        try:
            self.redis.start()
            url = f"redis://admin:{self.redis.admin_password}@{self.redis.host}:{self.redis.port}/0"
            conf = {"idle_timeout": 60, "flow_stats_interval": 1, "warm_pool": 1,
                    "scaling_policy": "off", "tick_interval": 0.1, "state_redis": url,
                    **self.controller_conf}  # fmt: skip
            self.stack = Stack(self.topology, prefix=self.prefix, controller_conf=conf,
                               heartbeat_s=0.2, state_store=self.redis,
                               log=lambda m: None)  # fmt: skip
            self.stack.up(wait=self.lab_wait)
            flows, pps, seconds, conns = self.args
            self.chaos = Chaos(self.stack, self.redis, flows, pps, seconds, conns, log=self.log)
            self.chaos.setup()
            return self.chaos
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        try:
            if self.chaos is not None:
                self.chaos.close()
            if self.stack is not None:
                self.keep_logs()
                self.stack.down()
        finally:
            self.redis.stop(remove=True)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def keep_logs(self) -> None:
        if self.logs is None:
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        found = list(self.stack.rundir.glob("agent-*.log")) + [self.redis.dir / "redis.log"]
        if self.stack.controller is not None:
            found.append(self.stack.controller.log)
        for path in found:
            if path.exists():
                shutil.copy(path, self.logs / path.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="8 flows and 4+4 connections, 7 s of traffic per fault")  # fmt: skip
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"comma list, in order (default {','.join(FAULTS)})")  # fmt: skip
    ap.add_argument("--prefix", default="qchs", help="the lab's names (namespaces, links)")
    ap.add_argument("--logs", help="copy the agents', controller's and Redis's logs here")
    ap.add_argument("--plain-release", action="store_true",
                    help="the controller's ordered_release off: held flows' packets sent on "
                    "plainly (the comparison for docs/reliability.rst)")  # fmt: skip
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        ap.error(f"--faults: {bad} not among {', '.join(FAULTS)}")
    if os.geteuid() != 0:
        print("chaos: needs root (the lab)", file=sys.stderr)
        return 2
    flows, pps, seconds, conns = (8, 400, 7.0, 4) if args.quick else (32, 800, 10.0, 8)
    from quadrant_app.topology import load

    rows = []
    conf = {"ordered_release": False} if args.plain_release else None
    with ChaosStack(load(ROOT / "topologies" / "lab.yaml"), args.prefix, flows, pps, seconds,
                    conns, logs=args.logs, controller_conf=conf) as chaos:  # fmt: skip
        for fault in faults:
            rows.append(chaos.run(fault))
    print(table(rows))
    if args.json:
        doc = {"command": "python -m tools.bench.chaos " + " ".join(argv or sys.argv[1:]),
               "flows": flows, "pps": pps, "seconds": seconds, "connections": 2 * conns,
               "echo_interval_s": 0.1, "redis_down_s": REDIS_DOWN_S, "heartbeat_s": 0.2,
               "stall_timeout_s": 0.3, "ordered_release": not args.plain_release,
               "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
