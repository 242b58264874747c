"""What the lab's end-to-end tests share: the ``tunnel -> ipforward`` chain, its
instances, and steady traffic from the source to the sink in the background."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

from tools.trafficgen.exchange import exchange


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


def instances(stack, chain_id: int) -> list[dict]:
    return [i for i in stack.admin.get("/v1/instances")["instances"]
            if i["chain_id"] == chain_id]  # fmt: skip


class Traffic:
    """``exchange`` in a thread: start it, act on the system meanwhile, then ``join``.

    ``specs`` (FlowSpec fields, one dict per flow) replaces the generated flows;
    ``reverse`` sends from the sink host to the source host (a flow's replies).
    """

    def __init__(self, stack, flows=8, proto="udp,tcp", pps=400, seconds=6.0, idle=3.0,
                 specs=None, reverse=False):  # fmt: skip
        src, sink = hosts(stack.topology)
        if reverse:
            src, sink = sink, src
        args = ["--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
                "--dst", sink.address, "--flows", str(flows), "--proto", proto,
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
        return self.out["sent"], self.out["report"]["flows"]
