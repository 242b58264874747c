"""The controller steering real flows through the lab's Open vSwitch to the workers' VFs.

A chain is registered over REST with two pre-defined instances on two
workers; a TCP and a UDP flow leave the source namespace; each must get one
MAC-rewrite rule, reach the chosen worker's macvlan (the VF stand-in) with
that VF's MAC, first packet included, and only its first packet may reach
the controller.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw, rdpcap

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, free_port, make_controller, wait_for

pytestmark = pytest.mark.e2e

TENANT, ADMIN = "qc-e2e-tenant-token-0001", "qc-e2e-admin-token-00001"
SRC_MAC, SINK_MAC = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
W1_VF0, W2_VF0 = "02:00:00:00:01:01", "02:00:00:00:02:01"
PACKETS = 6  # per flow


@pytest.fixture(scope="module")
def qc_lab():
    """The lab with this helper's prefix (qc + pid), switch aimed at a free port."""
    from quadrant_app.topology import load
    from tools.lab import Lab

    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, veth and Open vSwitch")
    port = free_port()
    rundir = tempfile.mkdtemp(prefix="qc-lab-", dir="/tmp")
    lab = Lab(load(LAB_TOPOLOGY), f"qc{os.getpid() % 100}", rundir, f"tcp:127.0.0.1:{port}")
    lab.controller_port = port
    try:
        lab.up(wait=LAB_WAIT)
        yield lab
    finally:
        lab.down()
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture(scope="module")
def ctl(qc_lab, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("qc-ctl") / "tokens.yaml"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"token": TENANT, "tenant": "e2e"},
                    {"token": ADMIN, "tenant": "ops", "admin": True},
                ]
            }
        )
    )
    rest_port = free_port()
    while rest_port == qc_lab.controller_port:
        rest_port = free_port()
    conf = {"tokens_file": str(tokens), "rest_port": rest_port, "flow_stats_interval": 1,
            "idle_timeout": 60}  # fmt: skip
    proc = make_controller(qc_lab, conf).start()
    proc.rest_port = rest_port
    try:
        proc.wait_connected()
        wait_for(lambda: "CONTROLLER" in qc_lab.ofctl("dump-flows"), 10, "the base pipeline")
        yield proc
    finally:
        proc.stop()


def rest(ctl, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{ctl.rest_port}{path}", data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
        return json.loads(body) if resp.headers["Content-Type"] == "application/json" else body


class Capture:
    """tcpdump on a VF stand-in inside a worker's namespace."""

    def __init__(self, lab, worker, iface, path: Path):
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(worker), "tcpdump", "-U", "-n", "-i", iface,
             "-w", str(path), "ip"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stderr.readline()  # "listening on vf0, ..."
        assert "listening" in line, line

    def packets(self):
        # tcpdump writes each packet as it comes (-U); let it catch up with a busy
        # machine before stopping it: wait until the file stops growing.
        size, stable = -1, 0
        while stable < 3:
            time.sleep(0.1)
            now = self.path.stat().st_size if self.path.exists() else 0
            stable, size = (stable + 1, size) if now == size else (0, now)
        self.proc.terminate()
        self.proc.wait(10)
        return [Ether(raw(p)) for p in rdpcap(str(self.path))]


SENDER = """
import socket, sys, time
frames = [bytes.fromhex(h) for h in sys.argv[2:]]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(frames[0])
time.sleep(0.3)  # the flow's second packet comes a round trip later, as TCP's would
for f in frames[1:]:
    s.send(f)
    time.sleep(0.01)
"""


def frames(l4, tag):
    return [
        raw(
            Ether(src=SRC_MAC, dst=SINK_MAC)
            / IP(src="10.1.0.1", dst="10.2.0.1")
            / l4
            / f"{tag}-{seq:03d}".encode()
        )
        for seq in range(PACKETS)
    ]


def send_flow(lab, pkts):
    out = lab.exec("src", sys.executable, "-c", SENDER, "eth0", *(p.hex() for p in pkts))
    assert out.returncode == 0, out.stderr


def payloads(pkts, tag):
    return sorted(bytes(p[IP].payload.payload) for p in pkts if tag.encode() in raw(p))


def per_flow_rules(lab):
    return [
        line for line in lab.ofctl("dump-flows", "table=1").splitlines() if "cookie=0x5146" in line
    ]


def test_flows_are_steered_to_the_chosen_vf(qc_lab, ctl, tmp_path):
    lab = qc_lab
    chain = rest(
        ctl, "POST", "/v1/chains", TENANT,
        {
            "name": "e2e",
            "nfs": [{"type": "empty"}],
            "filter": {"src": "10.1.0.0/16", "dst": "10.2.0.0/16"},
            "slo_us": 200,
        },
    )  # fmt: skip
    i1 = rest(ctl, "POST", "/v1/instances", ADMIN,
              {"chain_id": chain["id"], "worker": "w1", "vf_mac": W1_VF0, "core": 0})  # fmt: skip
    i2 = rest(ctl, "POST", "/v1/instances", ADMIN,
              {"chain_id": chain["id"], "worker": "w2", "vf_mac": W2_VF0, "core": 0})  # fmt: skip
    w1cap = Capture(lab, "w1", "vf0", tmp_path / "w1.pcap")
    w2cap = Capture(lab, "w2", "vf0", tmp_path / "w2.pcap")
    w1other = Capture(lab, "w1", "vf1", tmp_path / "w1vf1.pcap")

    # Both idle: the tie goes to the first instance (w1).
    tcp_pkts = frames(TCP(sport=40000, dport=80, flags="S"), "tcp")
    send_flow(lab, tcp_pkts)
    # w1 is now over its load cap: the next flow goes to w2.
    rest(ctl, "PUT", f"/v1/instances/{i1['id']}/stats", ADMIN, {"load": 0.95})
    udp_pkts = frames(UDP(sport=40001, dport=53), "udp")
    send_flow(lab, udp_pkts)
    time.sleep(0.5)

    # One MAC-rewrite rule per flow, to the chosen worker's VF and port.
    rules = per_flow_rules(lab)
    assert len(rules) == 2, rules
    tcp_rule = next(r for r in rules if "tcp" in r)
    udp_rule = next(r for r in rules if "udp" in r)
    assert f"set_field:{W1_VF0}->eth_dst,output:11" in tcp_rule
    assert "tp_src=40000" in tcp_rule and "idle_timeout=60" in tcp_rule
    assert f"set_field:{W2_VF0}->eth_dst,output:12" in udp_rule
    # The switch forwarded all but the first packet itself...
    assert f"n_packets={PACKETS - 1}," in tcp_rule and f"n_packets={PACKETS - 1}," in udp_rule
    # ...and only the first packet of each flow reached the controller.
    # (Other packet-ins come from the namespaces' own IPv6 chatter: no chain takes it.)
    metrics = rest(ctl, "GET", "/metrics", TENANT).decode()
    assert "quadrant_flow_setups_total 2\n" in metrics
    assert "quadrant_repeat_packet_ins_total 0\n" in metrics
    assert 'quadrant_chain_flows{chain="1",tenant="e2e"} 2' in metrics

    # Every packet, the first one (sent by packet-out) included, reached the chosen VF
    # carrying the VF's MAC; none went to the other worker or another VF.
    got1, got2, other = w1cap.packets(), w2cap.packets(), w1other.packets()
    want_tcp = sorted(bytes(p[IP].payload.payload) for p in map(Ether, tcp_pkts))
    want_udp = sorted(bytes(p[IP].payload.payload) for p in map(Ether, udp_pkts))
    assert payloads(got1, "tcp") == want_tcp
    assert payloads(got2, "udp") == want_udp
    assert all(p.dst == W1_VF0 for p in got1) and all(p.dst == W2_VF0 for p in got2)
    assert payloads(got1, "udp") == [] and payloads(got2, "tcp") == []
    assert other == []

    flows = rest(ctl, "GET", "/v1/flows", TENANT)["flows"]
    assert {(f["proto"], f["instance_id"]) for f in flows} == {("tcp", i1["id"]), ("udp", i2["id"])}
    # Flow stats reach the controller's books (polled every second here).
    wait_for(
        lambda: all(
            f["packets"] == PACKETS - 1 for f in rest(ctl, "GET", "/v1/flows", TENANT)["flows"]
        ),
        5,
        "per-flow packet counts from flow stats",
    )


def test_rest_requires_a_token_on_the_real_server(ctl):
    with pytest.raises(urllib.error.HTTPError) as err:
        rest(ctl, "GET", "/v1/chains", "wrong-token-wrong-token")
    assert err.value.code == 401
    assert json.loads(err.value.read())["error"]["reason"] == "invalid bearer token"


def metric(ctl, name):
    text = rest(ctl, "GET", "/metrics", TENANT).decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def test_switch_reconnect_resyncs_without_reassigning(qc_lab, ctl):
    """Runs after the steering test: its two flows are live (idle timeout 60 s)."""
    lab, bridge = qc_lab, qc_lab.bridge()
    flows = {f["proto"]: f for f in rest(ctl, "GET", "/v1/flows", TENANT)["flows"]}
    assert set(flows) == {"tcp", "udp"}, "run with the steering test before this one"
    # Make the other instance preferred: a controller that re-assigned would move the flow.
    w1, w2 = flows["tcp"]["instance_id"], flows["udp"]["instance_id"]
    rest(ctl, "PUT", f"/v1/instances/{w1}/stats", ADMIN, {"load": 0.1})
    rest(ctl, "PUT", f"/v1/instances/{w2}/stats", ADMIN, {"load": 0.95})
    target = lab.vsctl("get-controller", bridge).strip()
    # Point the switch elsewhere (del-controller would make OVS flush its tables).
    lab.vsctl("set", "Controller", bridge, f'target="tcp:127.0.0.1:{free_port()}"')
    wait_for(lambda: metric(ctl, 'quadrant_switch_connected{switch="tor1"}') == 0, 10, "disconnect")
    # While the controller is away the switch loses the UDP flow's rule.
    lab.ofctl(
        "del-flows",
        "--strict",
        "table=1,priority=1000,udp,nw_src=10.1.0.1,nw_dst=10.2.0.1,tp_src=40001,tp_dst=53",
    )
    assert len(per_flow_rules(lab)) == 1
    base_before = sorted(r for r in lab.ofctl("dump-flows").splitlines() if "cookie=0x5144" in r)
    lab.vsctl("set", "Controller", bridge, f'target="{target}"')
    # at its connection the switch gets every per-flow rule in the books back (both
    # flows: the kept one replaced, the lost one restored), before the base pipeline
    wait_for(lambda: metric(ctl, "quadrant_resync_installed_total") == 2, 15, "the re-sync")
    rules = per_flow_rules(lab)
    assert len(rules) == 2
    udp_rule = next(r for r in rules if "udp" in r)
    assert f"set_field:{W2_VF0}->eth_dst,output:12" in udp_rule  # same instance as before
    assert metric(ctl, "quadrant_resync_adopted_total") == 0
    assert metric(ctl, "quadrant_resync_deleted_total") == 0
    base_after = [r for r in lab.ofctl("dump-flows").splitlines() if "cookie=0x5144" in r]
    assert len(base_after) == len(base_before)  # replaced, not duplicated
    after = {f["proto"]: f["instance_id"] for f in rest(ctl, "GET", "/v1/flows", TENANT)["flows"]}
    assert after == {"tcp": w1, "udp": w2}
