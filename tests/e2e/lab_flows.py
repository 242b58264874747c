"""What the lab's end-to-end tests share: the ``tunnel -> ipforward`` and ``acl -> nat``
chains, their instances, steady stamped traffic from the source to the sink and echo
connections through a NAT, both in the background."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tools.trafficgen.exchange import exchange

ROOT = Path(__file__).resolve().parents[2]


def hosts(topology):
    """``(source, sink)`` hosts of the lab topology."""
    src = next(h for h in topology.hosts if h.role == "source")
    sink = next(h for h in topology.hosts if h.role == "sink")
    return src, sink


def tunnel_ipforward(name: str, sink) -> dict:
    """Chain 1 of the paper for the lab: VLAN 100, then routed to the sink's MAC."""
    return {
        "name": name,
        "nfs": [
            {"type": "tunnel", "config": {"vlan": 100}},
            {"type": "ipforward",
             "config": {"routes": [{"prefix": "10.2.0.0/16", "next_hop_mac": sink.mac}]}},
        ],
        "filter": {"dst": "10.2.0.0/16"},
        "slo_us": 5000,
    }  # fmt: skip


NAT_EXTERNAL = "10.2.0.254"  # acl_nat's external address, on the sink's network
ECHO_PORT = 5353  # the sink's echo server (tools/trafficgen/echo.py)


def acl_nat(name: str, sink, external: str = NAT_EXTERNAL, port: int = ECHO_PORT,
            priority: int = 0) -> dict:  # fmt: skip
    """Chain 3 of the paper for the lab: TCP and UDP from the source's network to the
    sink's ``port`` (and their replies) allowed, NATed to ``external`` (ports
    20000-20999); it takes the traffic to the sink's own address."""
    rules = [{"action": "allow", "src": "10.1.0.0/16", "dst": f"{sink.address}/32",
              "proto": p, "dport": str(port)} for p in ("tcp", "udp")]  # fmt: skip
    rules += [{"action": "allow", "src": f"{sink.address}/32", "dst": f"{external}/32",
               "proto": p, "sport": str(port)} for p in ("tcp", "udp")]  # fmt: skip
    return {
        "name": name,
        "nfs": [
            {"type": "acl", "config": {"rules": rules, "default": "deny"}},
            {"type": "nat", "config": {
                "internal": ["10.1.0.0/16"],
                "external": [{"address": external, "ports": "20000-20999"}]}},
        ],
        "filter": {"dst": f"{sink.address}/32"},
        "slo_us": 5000,
        "priority": priority,
    }  # fmt: skip


def instances(stack, chain_id: int) -> list[dict]:
    return [i for i in stack.admin.get("/v1/instances")["instances"]
            if i["chain_id"] == chain_id]  # fmt: skip


class Traffic:
    """``exchange`` in a thread: start it, act on the system meanwhile, then ``join``.

    ``specs`` (FlowSpec fields, one dict per flow) replaces the generated flows;
    ``reverse`` sends from the sink host to the source host (a flow's replies);
    ``dst`` is the flows' destination address (default the sink's own).
    """

    def __init__(self, stack, flows=8, proto="udp,tcp", pps=400, seconds=6.0, idle=3.0,
                 specs=None, reverse=False, dst=None):  # fmt: skip
        src, sink = hosts(stack.topology)
        if reverse:
            src, sink = sink, src
        args = ["--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
                "--dst", dst or sink.address, "--flows", str(flows), "--proto", proto,
                "--pps", str(pps)]  # fmt: skip
        self.out: dict = {}
        self.tmp = None
        if specs is not None:
            self.tmp = tempfile.TemporaryDirectory(prefix="qtg-flows-")
            path = Path(self.tmp.name) / "flows.json"
            path.write_text(json.dumps(list(specs)))
            args = ["--src-mac", src.mac, "--dst-mac", sink.mac, "--flows-file", str(path)]

        def run():
            self.out["sent"], self.out["report"] = exchange(
                stack.lab.ns(src.name), stack.lab.ns(sink.name), args, seconds=seconds,
                idle=idle,
            )  # fmt: skip

        self.thread = threading.Thread(target=run)

    def start(self) -> Traffic:
        self.thread.start()
        return self

    def join(self, timeout: float = 120) -> tuple[dict, dict]:
        """``(sent per flow, the sink's per-flow report)``."""
        self.thread.join(timeout)
        if self.tmp is not None:
            self.tmp.cleanup()
        assert not self.thread.is_alive(), "the traffic did not end"
        # frames the sink's socket had no room for (a starved receiver): said with a loss
        self.socket_drops = self.out["report"].get("socket_drops")
        return self.out["sent"], self.out["report"]["flows"]


class Echo:
    """Echo connections through a NAT chain (``acl_nat``) in the background: ``serve``
    starts the echo server on the sink (once; the sink answers the NAT's external
    address on its own link, as a real network's upstream router would, through a
    permanent neighbour entry), ``start`` opens ``conns`` TCP and ``conns`` UDP
    connections from the source, ``join`` returns their reports
    (``tools/trafficgen/echo.py``), ``close`` stops the server."""

    def __init__(self, stack, conns=8, rounds=50, interval=0.1, timeout=0.3, tries=100,
                 external=NAT_EXTERNAL, port=ECHO_PORT):  # fmt: skip
        self.stack, self.external, self.port = stack, external, port
        self.args = ["--tcp", str(conns), "--udp", str(conns), "--rounds", str(rounds),
                     "--interval", str(interval), "--timeout", str(timeout),
                     "--tries", str(tries)]  # fmt: skip
        self.server: subprocess.Popen | None = None
        self.client: subprocess.Popen | None = None
        self.extra: list[subprocess.Popen] = []

    def _exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.stack.lab.ns(host), sys.executable, "-m",
                "tools.trafficgen.echo"]  # fmt: skip

    def serve(self) -> Echo:
        if self.server is not None:
            return self
        _src, sink = hosts(self.stack.topology)
        subprocess.run(["ip", "-n", self.stack.lab.ns(sink.name), "neigh", "replace",
                        self.external, "lladdr", "02:00:00:00:0a:01", "dev", "eth0", "nud",
                        "permanent"], check=True)  # fmt: skip
        self.server = subprocess.Popen([*self._exec(sink.name), "serve", sink.address,
                                        str(self.port)], cwd=ROOT, stdout=subprocess.PIPE,
                                       text=True)  # fmt: skip
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo server on the sink did not start")
        return self

    def start(self, wait: float | None = 30.0) -> Echo:
        """Open the connections; with ``wait``, return once every one has its first echo
        back (its mapping made), or raise after ``wait`` seconds."""
        self.client = self.connect([*self.args, "--announce"])
        if wait is not None:
            ready, _, _ = select.select([self.client.stdout], [], [], wait)
            line = self.client.stdout.readline() if ready else ""
            if line.strip() != "connected":
                raise RuntimeError(f"the echo connections did not all connect in {wait} s")
        return self

    def join(self, timeout: float = 120) -> list[dict]:
        return self.reports(self.client, timeout)

    def connect(self, args: list[str]) -> subprocess.Popen:
        """Another set of connections (``echo connect`` options), beside ``start``'s."""
        src, sink = hosts(self.stack.topology)
        self.serve()
        proc = subprocess.Popen(
            [*self._exec(src.name), "connect", sink.address, str(self.port), *args],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.extra.append(proc)
        return proc

    @staticmethod
    def reports(proc: subprocess.Popen, timeout: float = 120) -> list[dict]:
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return json.loads(out)

    def close(self) -> None:
        for proc in (*self.extra, self.server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
