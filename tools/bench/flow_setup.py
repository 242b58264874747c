"""Flow-setup benchmark (cbench-style): the real controller app on loopback.

An emulated OpenFlow 1.3 switch (tools/bench/ofswitch.py) sends packet-ins of
new TCP flows that match a chain registered over REST with two live
instances.  A setup is the flow-mod and the packet-out for one new flow.

1. saturation: keep ``--window`` packet-ins outstanding, count setups per second;
2. latency: send at half the saturation rate, paced, and take packet-in ->
   flow-mod latency (from the scheduled send time, so a stall is not hidden).

The same run measures, side by side, two baselines loaded the same way:
``floor`` (answers each packet-in with one pre-built message: os-ken's own
cost) and ``naive`` (os_ken.lib.packet + OFPMatch/OFPFlowMod/OFPPacketOut per
flow).  Each controller runs as ``osken-manager`` pinned to one CPU, the
switch on another.

    python -m tools.bench.flow_setup [--quick] [--json PATH] [--apps quadrant,naive,floor]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from tools.bench import profile, setup_costs
from tools.bench.ofswitch import T_FLOW_MOD, T_PACKET_OUT, EmulatedSwitch

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "quadrant": "quadrant_app",
    "naive": "tools.bench.baseline_naive",
    "floor": "tools.bench.baseline_floor",
}
# Which message completes a setup, and whether answers name their flow.
DONE_TYPE = {"quadrant": T_PACKET_OUT, "naive": T_PACKET_OUT, "floor": T_FLOW_MOD}
CHECKED = {"quadrant", "naive"}
ADMIN, TENANT = "bench-admin-token-000000", "bench-tenant-token-00000"


def tight_timers() -> None:
    """Ask for 1 us timer slack (default 50 us): the paced phase's sends keep to time."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_config(rundir: Path, of_port: int, rest_port: int, opts=()) -> Path:
    topo = yaml.safe_load((ROOT / "topologies" / "lab.yaml").read_text())
    topo["switches"][0]["controller"] = f"tcp:127.0.0.1:{of_port}"
    (rundir / "topology.yaml").write_text(yaml.safe_dump(topo))
    (rundir / "tokens.yaml").write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"token": ADMIN, "tenant": "ops", "admin": True},
                    {"token": TENANT, "tenant": "bench"},
                ]
            }
        )
    )
    conf = rundir / "quadrant.conf"
    conf.write_text(
        "[quadrant]\n"
        f"topology = {rundir / 'topology.yaml'}\n"
        f"tokens_file = {rundir / 'tokens.yaml'}\n"
        f"rest_port = {rest_port}\n" + "".join(f"{o.replace('=', ' = ', 1)}\n" for o in opts)
    )
    return conf


def rest(port: int, method: str, path: str, token: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


def register_chain(rest_port: int, deadline: float) -> None:
    while True:
        try:
            rest(rest_port, "GET", "/v1/openapi.json", TENANT)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    chain = rest(
        rest_port,
        "POST",
        "/v1/chains",
        TENANT,
        {
            "name": "bench",
            "nfs": [{"type": "empty"}],
            "filter": {"src": "10.1.0.0/16", "dst": "10.2.0.0/16", "proto": "tcp"},
            "slo_us": 100,
        },
    )
    for worker, mac in (("w1", "02:00:00:00:01:01"), ("w2", "02:00:00:00:02:01")):
        body = {"chain_id": chain["id"], "worker": worker, "vf_mac": mac, "core": 0}
        rest(rest_port, "POST", "/v1/instances", ADMIN, body)


class Run:
    """One app's measurement: a controller process and the emulated switch."""

    def __init__(self, app: str, rundir: Path, cpus: tuple[int, int] | None, opts=()):
        self.app = app
        self.done_type = DONE_TYPE[app]
        self.checked = app in CHECKED
        self.rundir = rundir
        self.cpus = cpus
        self.opts = opts
        self.next_flow = 0
        self.sent_at: collections.deque = collections.deque()  # (flow, send time) per packet-in
        self.done_times: collections.deque = collections.deque()
        self.done = 0
        self.flow_mods = 0
        self.mismatches = 0
        self.latencies: list[float] = []
        self.record = False

    def start(self) -> None:
        of_port, rest_port = free_ports(2)
        conf = write_config(self.rundir, of_port, rest_port, self.opts)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        manager = shutil.which("osken-manager") or str(
            Path(sys.executable).parent / "osken-manager"
        )
        cmd = [manager, MODULES[self.app], "--ofp-listen-host", "127.0.0.1"]
        cmd += ["--ofp-tcp-listen-port", str(of_port), "--config-file", str(conf)]
        self.log = open(self.rundir / f"{self.app}.log", "w")  # noqa: SIM115
        ctrl_cpus = {self.cpus[1]} if self.cpus else None

        def preexec():
            if ctrl_cpus:
                os.sched_setaffinity(0, ctrl_cpus)

        self.proc = subprocess.Popen(
            cmd, cwd=self.rundir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )  # fmt: skip
        deadline = time.monotonic() + 60  # a loaded machine starts os-ken slowly
        if self.app == "quadrant":
            register_chain(rest_port, deadline)
        self.sw = EmulatedSwitch(dpid=1)
        self.sw.connect("127.0.0.1", of_port)
        self.sw.settle()

    def stop(self) -> None:
        """Stop what start() got to start (also when it failed half way)."""
        try:
            if getattr(self, "sw", None) is not None:
                self.sw.close()
        finally:
            proc = getattr(self, "proc", None)
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                self.log.close()

    def _on_response(self, msg_type, msg, now) -> None:
        if msg_type == T_FLOW_MOD:
            flow, t_sent = self.sent_at.popleft()
            self.flow_mods += 1
            if self.checked:
                addr, port = EmulatedSwitch.tag(flow)
                if addr not in msg or port not in msg:
                    self.mismatches += 1
            if self.record:
                self.latencies.append(now - t_sent)
        if msg_type == self.done_type:
            self.done += 1

    def _send(self, n: int, times) -> None:
        sw, i = self.sw, self.next_flow
        self.sw.send(b"".join(sw.packet_in(i + k) for k in range(n)))
        self.sent_at.extend(zip(range(i, i + n), times, strict=True))
        self.next_flow = i + n

    def _poll(self, timeout: float) -> None:
        r, _, _ = select.select([self.sw.sock], [], [], timeout)
        if r:
            self.sw.poll(time.perf_counter(), self._on_response)

    def drain(self, timeout: float = 10.0) -> None:
        deadline = time.perf_counter() + timeout
        while self.done < self.next_flow:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.app}: {self.next_flow - self.done} setups unanswered")
            self._poll(0.05)

    def saturate(self, seconds: float, window: int, warmup: float) -> tuple[float, float]:
        """Setups per second with ``window`` outstanding, and the controller's CPU share."""
        start = time.perf_counter()
        t_warm, t_end = start + warmup, start + warmup + seconds
        done_at_warm = cpu_at_warm = None
        while True:
            now = time.perf_counter()
            if done_at_warm is None and now >= t_warm:
                done_at_warm, t_warm = self.done, now
                cpu_at_warm = cpu_seconds(self.proc.pid)
            # Past the end, but nothing answered yet (a starved controller on a busy
            # machine): keep going, up to ten times as long, so the rate is not zero.
            if now >= t_end and (self.done > done_at_warm or now >= t_end + 9 * seconds):
                break
            room = window - (self.next_flow - self.done)
            if room > 0:
                n = min(room, 64)
                self._send(n, [now] * n)
            self._poll(0.0005 if room <= 0 else 0)
        elapsed = time.perf_counter() - t_warm
        rate = (self.done - done_at_warm) / elapsed
        cpu = (cpu_seconds(self.proc.pid) - cpu_at_warm) / elapsed
        self.drain()
        return rate, cpu

    def paced(self, rate: float, seconds: float) -> tuple[float, float, float]:
        rate = max(rate, 10.0)
        self.latencies, self.record = [], True
        t0 = time.perf_counter()
        k = 0
        while True:
            now = time.perf_counter()
            if now - t0 >= seconds:
                break
            due = int((now - t0) * rate) + 1 - k  # flow m is due at t0 + m / rate
            if due > 0:
                self._send(due, [t0 + (k + j) / rate for j in range(due)])
                k += due
            wait = t0 + k / rate - time.perf_counter()
            self._poll(min(max(wait, 0.0), 0.002))
        self.drain()
        self.record = False
        lat = sorted(self.latencies)
        achieved = k / seconds
        return (
            achieved,
            lat[len(lat) // 2] * 1e6,
            lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
        )


def measure(app: str, args, cpus) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"qc-bench-{app}-") as tmp:
        run = Run(app, Path(tmp), cpus, args.opt)
        if cpus:
            os.sched_setaffinity(0, {cpus[0]})
        spy = None
        try:
            run.start()
            if app in args.profile_apps:
                spy = profile.start(run.proc.pid, args.seconds, Path(tmp) / "profile.txt")
            sat, cpu = run.saturate(args.seconds, args.window, args.warmup)
            if spy is not None:
                spy.wait(30)
            if sat <= 0:
                raise RuntimeError(
                    f"{app}: no flow setup completed in the saturation phase "
                    f"({args.seconds} s): is the machine's CPU taken by something else?"
                )
            achieved, p50, p99 = run.paced(sat / 2, args.seconds)
        except BaseException:
            log = Path(tmp) / f"{app}.log"
            if log.exists():
                print(log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            run.stop()
        summary = None
        if spy is not None and (Path(tmp) / "profile.txt").exists():
            summary = profile.summarize(Path(tmp) / "profile.txt")
        flows = run.next_flow
        if run.flow_mods != flows:
            raise AssertionError(f"{app}: {run.flow_mods} flow-mods for {flows} packet-ins")
        if run.mismatches:
            raise AssertionError(f"{app}: {run.mismatches} flow-mods did not name their flow")
        return {
            "setups_per_s": round(sat),
            "controller_cpu": round(cpu, 3),
            "setups_per_cpu_s": round(sat / cpu) if cpu > 0 else None,
            "half_load_rate": round(achieved),
            "p50_us": round(p50, 1),
            "p99_us": round(p99, 1),
            "flows": flows,
            **({"profile": summary} if summary else {}),
        }


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summarize(rounds: list[dict]) -> dict:
    """Per app, the median of each figure over the rounds."""
    out = {}
    for app in rounds[0]:
        runs = [r[app] for r in rounds]
        out[app] = {k: _median([run[k] for run in runs]) for k in runs[0] if k != "profile"}
        out[app]["rounds"] = runs
    return out


COLUMNS = [
    ("setups_per_s", "setups/s", 10),
    ("controller_cpu", "ctrl CPU", 10),
    ("setups_per_cpu_s", "per CPU-s", 11),
    ("half_load_rate", "half-load/s", 13),
    ("p50_us", "p50 us", 11),
    ("p99_us", "p99 us", 11),
]


def table(results: dict) -> str:
    lines = [f"{'app':<10}" + "".join(f"{title:>{w}}" for _, title, w in COLUMNS)]
    for app, r in results.items():
        lines.append(f"{app:<10}" + "".join(f"{r[k]!s:>{w}}" for k, _, w in COLUMNS))
    return "\n".join(lines)


def where_the_time_goes(results: dict, costs: dict) -> dict:
    """Each app's CPU per setup split into os-ken's parse, the app's own work, the rest."""
    own = {"quadrant": costs["quadrant"], "naive": costs["naive"], "floor": 0.0}
    out = {}
    for app, r in results.items():
        if not r.get("setups_per_cpu_s"):
            continue
        total = 1e6 / r["setups_per_cpu_s"]
        out[app] = {
            "total": round(total, 1),
            "osken_parse": costs["osken_parse"],
            "app": own[app],
            "framework_rest": round(total - costs["osken_parse"] - own[app], 1),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round (whole run < 30 s)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--apps", default="quadrant,naive,floor", help="which apps, comma-separated")
    ap.add_argument("--seconds", type=float, help="length of each phase (default 4, quick 1.5)")
    ap.add_argument("--rounds", type=int, help="rounds, apps interleaved (default 3, quick 1)")
    ap.add_argument("--window", type=int, default=256, help="outstanding packet-ins at saturation")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the benchmark and its controllers at this niceness (negative: ahead of other "
        "jobs on a shared machine; say so when you quote the figures)",
    )
    ap.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a [quadrant] option for the Quadrant controller (repeatable)",
    )
    ap.add_argument(
        "--profile",
        default="",
        metavar="APPS",
        help="sample these apps (comma-separated) with py-spy during saturation",
    )
    args = ap.parse_args(argv)
    args.profile_apps = {a for a in args.profile.split(",") if a}
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 4.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    args.warmup = 0.3 if args.quick else 1.0
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    for a in apps:
        if a not in MODULES:
            ap.error(f"--apps: unknown app {a!r} (known: {', '.join(MODULES)})")
    if args.nice:
        os.nice(args.nice)
    tight_timers()
    avail = sorted(os.sched_getaffinity(0))
    cpus = (avail[0], avail[1]) if len(avail) >= 2 else None
    rounds = []
    for i in range(args.rounds):
        rounds.append({app: measure(app, args, cpus) for app in apps})
        if args.rounds > 1:
            print(f"round {i + 1}/{args.rounds}")
            print(table(rounds[-1]), flush=True)
    results = summarize(rounds)
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds")
    print(table(results))
    ratios = {}
    for base in ("floor", "naive"):
        if "quadrant" in results and base in results:
            for k in ("setups_per_s", "setups_per_cpu_s"):
                q, b = results["quadrant"][k], results[base][k]
                if q and b:
                    ratios[f"quadrant/{base} {k}"] = round(q / b, 2)
    for name, value in ratios.items():
        print(f"{name}: {value}")
    n, reps = (1000, 3) if args.quick else (4000, 5)
    costs = setup_costs.measure(ROOT / "topologies" / "lab.yaml", n=n, reps=reps)
    breakdown = where_the_time_goes(results, costs)
    print("CPU per setup (us), from the run and timed in-process (tools/bench/setup_costs.py):")
    print(
        f"{'app':<10}{'total':>8}{'os-ken parse':>14}{'app work':>10}{'os-ken+eventlet rest':>22}"
    )
    for app, b in breakdown.items():
        print(
            f"{app:<10}{b['total']:>8}{b['osken_parse']:>14}{b['app']:>10}{b['framework_rest']:>22}"
        )
    for app, r in results.items():
        for run in r["rounds"]:
            if "profile" in run:
                print(f"{app} " + profile.report(run["profile"]))
    if args.json:
        out = {k: v for k, v in results.get("quadrant", {}).items() if k != "rounds"}
        out["apps"] = results
        out["ratios"] = ratios
        out["cpu_us_per_setup"] = breakdown
        out["machine"] = {
            "cpus": os.cpu_count(),
            "pinned (switch, controller)": cpus,
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        }
        out["args"] = {"quick": args.quick, "seconds": args.seconds, "rounds": args.rounds,
                       "window": args.window, "nice": args.nice, "opt": args.opt}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
