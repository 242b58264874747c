"""Chain 3 (``acl -> nat``) in the lab: real TCP and UDP connections both ways.

The whole system: the lab's switch, the controller, the agents handing the NAT
its own Redis user (a real redis-server off the data core, reached over its
Unix socket from the worker's namespace), the chain registered over REST.  The
source host opens many TCP and UDP connections at once to an echo server on the
sink; the NAT rewrites them to its external address, the sink answers that
address, the controller steers those replies to the NAT's instance, and the NAT
translates them back.  Each connection must complete, in order, behind one
external port of its own, and the mappings must be in Redis.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, lab_prefix
from tests.e2e.lab_flows import hosts, instances
from tools.stack import Stack, wait_until
from worker.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = "10.2.0.254"
EXTERNAL2 = "10.2.0.253"  # a second instance's address (test_nat_connections_move...)
PORT = 5353


def chain3(sink, external=(EXTERNAL,), ports="20000-20999", **nat_extra) -> dict:
    """The lab's Chain 3: TCP and UDP to the sink's port 5353, NATed to EXTERNAL (one
    instance per address of ``external``, each with ``ports``)."""
    out = [
        {
            "action": "allow",
            "src": "10.1.0.0/16",
            "dst": f"{sink.address}/32",
            "proto": p,
            "dport": str(PORT),
        }
        for p in ("tcp", "udp")
    ]
    back = [
        {
            "action": "allow",
            "src": f"{sink.address}/32",
            "dst": f"{ext}/32",
            "proto": p,
            "sport": str(PORT),
        }
        for p in ("tcp", "udp")
        for ext in external
    ]
    return {
        "name": "chain3-lab",
        "nfs": [
            {"type": "acl", "config": {"rules": out + back, "default": "deny"}},
            {"type": "nat", "config": {
                "internal": ["10.1.0.0/16"],
                "external": [{"address": a, "ports": ports} for a in external],
                **nat_extra}},
        ],
        "filter": {"dst": f"{sink.address}/32"},
        "slo_us": 5000,
    }  # fmt: skip


@pytest.fixture
def setup(root_required, tmp_path):
    from quadrant_app.topology import load

    os.chmod(tmp_path, 0o755)  # the NFs (their own uids) reach the Unix socket inside
    srv = RedisServer(tmp_path / "redis", appendfsync="always", core=0).start()
    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "scaling_policy": "off",
            "warm_pool": 2}  # fmt: skip
    st = Stack(load(LAB_TOPOLOGY), prefix=f"n{lab_prefix()[1:]}", log=lambda m: None,
               controller_conf=conf, state_store=srv)  # fmt: skip
    server = None
    try:
        st.up(wait=LAB_WAIT)
        _src, sink = hosts(st.topology)
        ns = st.lab.ns("sink")
        # the sink answers the NAT's external address on its own link (a real
        # network's upstream router would know it): a permanent neighbour entry
        for ext in (EXTERNAL, EXTERNAL2):
            subprocess.run(["ip", "-n", ns, "neigh", "replace", ext, "lladdr",
                            "02:00:00:00:0a:01", "dev", "eth0", "nud", "permanent"],
                           check=True)  # fmt: skip
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tools.trafficgen.echo", "serve",
             sink.address, str(PORT)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout.readline().strip() == "ready"
        yield st, srv
    finally:
        if server is not None:
            server.kill()
            server.wait()
        st.down()
        srv.stop(remove=True)


def connect_cmd(st, sink, n, rounds=5, *extra) -> list[str]:
    return ["ip", "netns", "exec", st.lab.ns("src"), sys.executable, "-m",
            "tools.trafficgen.echo", "connect", sink.address, str(PORT), "--tcp", str(n),
            "--udp", str(n), "--rounds", str(rounds), *extra]  # fmt: skip


def connect(st, sink, n, rounds=5) -> list[dict]:
    out = subprocess.run(connect_cmd(st, sink, n, rounds), cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(out.stdout)


def test_acl_nat_both_directions_one_port_per_connection(setup):
    st, srv = setup
    _src, sink = hosts(st.topology)
    chain = st.tenant.post("/v1/chains", chain3(sink))
    wait_until(lambda: instances(st, chain["id"]), 180, "the agents to prepare the NAT")
    (inst,) = instances(st, chain["id"])
    assert inst["nat_slot"] == 0
    reports = connect(st, sink, n=12)
    errors = [r for r in reports if r.get("error")]
    assert not errors, errors
    ext = set()
    for r in reports:
        assert r["seqs"] == list(range(5)), r  # every echo, in order
        assert len(r["peers"]) == 1, r  # one external endpoint for the connection's life
        addr, port = r["peers"][0].split(":")
        assert addr == EXTERNAL and 20000 <= int(port) <= 20999
        ext.add((r["kind"], int(port)))
    assert len(ext) == len(reports)  # no two connections share a port
    # the replies were steered to the NAT's instance: its flows both ways
    flows = st.admin.get("/v1/flows")["flows"]
    mine = [f for f in flows if f["instance_id"] == inst["id"]]
    assert sum(1 for f in mine if f["dst"] == EXTERNAL) >= len(reports)
    # every mapping is in Redis under the NAT's own prefix (an out and an in key each)
    admin = srv.client()
    try:
        keys = admin.keys(f"c{chain['id']}n1:*")
        users = [u.decode() for u in admin.execute_command("ACL", "USERS")]
    finally:
        admin.close()
    assert len(keys) >= 2 * len(reports)
    assert f"nf-c{chain['id']}n1-i{inst['id']}" in users
    # a second wave: new UDP connections get ports the first wave's mappings (still live)
    # do not hold.  A socket the kernel gave a first-wave UDP socket's local port again is
    # the same inside endpoint to the same remote one: it has that mapping, rightly (a
    # clean-clone CI run met one).
    first_udp = {r["local_port"]: int(r["peers"][0].split(":")[1])
                 for r in reports if r["kind"] == "udp"}  # fmt: skip
    again = connect(st, sink, n=4)
    assert not [r for r in again if r.get("error")]
    for r in (r for r in again if r["kind"] == "udp"):
        port = int(r["peers"][0].split(":")[1])
        if r["local_port"] in first_udp:
            assert port == first_udp[r["local_port"]], (r, first_udp)
        else:
            assert port not in first_udp.values(), (r, first_udp)
    st.tenant.delete(f"/v1/chains/{chain['id']}")
    user = f"nf-c{chain['id']}n1-i{inst['id']}"

    def user_gone():
        admin = srv.client()
        try:
            return user not in [u.decode() for u in admin.execute_command("ACL", "USERS")]
        finally:
            admin.close()

    wait_until(user_gone, 30, "the NAT's Redis user to go with its instance")


def nat_pid(st, worker: str, iid: int) -> int:
    """The NAT's process (NF 1) of instance ``iid``, from its agent's log."""
    m = re.findall(rf"prepared instance {iid} .*pids \[([0-9, ]+)\]", st.agent_log(worker))
    return int(m[-1].split(",")[1])


def test_nat_failover_keeps_every_connections_port(setup):
    """The NAT's process is killed while connections run: the agent reports it, the
    controller removes the instance, a replacement takes the same external address
    and restores the mappings from Redis, and every connection carries on behind the
    port it had (TCP retransmits over the gap, UDP retries)."""
    st, _srv = setup
    _src, sink = hosts(st.topology)
    chain = st.tenant.post("/v1/chains", chain3(sink))
    wait_until(lambda: instances(st, chain["id"]), 180, "the agents to prepare the NAT")
    (old,) = instances(st, chain["id"])
    proc = subprocess.Popen(
        connect_cmd(st, sink, 6, 24, "--interval", "0.25", "--timeout", "15"),
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(st.admin.get("/v1/flows")["flows"]) >= 24, 30,
                   "every connection's flows, both ways")  # fmt: skip
        time.sleep(1.0)
        os.kill(nat_pid(st, old["worker"], old["id"]), signal.SIGKILL)
        new = wait_until(
            lambda: [i for i in instances(st, chain["id"]) if i["id"] != old["id"]],
            60, "a replacement NAT instance",
        )[0]  # fmt: skip
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert new["nat_slot"] == 0  # the same external address
    assert old["id"] not in {i["id"] for i in instances(st, chain["id"])}
    reports = json.loads(out)
    errors = [r for r in reports if r.get("error")]
    assert not errors, errors
    for r in reports:
        assert r["seqs"] == list(range(24)), r  # every echo, in order, across the failover
        assert len(r["peers"]) == 1, r  # the same external port before and after
    ports = {(r["kind"], r["peers"][0]) for r in reports}
    assert len(ports) == len(reports)
    failures = st.admin.get("/v1/failures")
    assert any(f.get("instance") == old["id"] for f in failures.get("failures", [])), failures


def test_nat_connections_move_mid_connection_to_the_other_workers_instance(setup):
    """Two NAT instances (one per external address, on the two workers); TCP and UDP
    connections run through whichever took them, and every one is moved mid-connection
    over REST to the other: every echo comes back in order, none is lost (no UDP
    retry), each connection keeps its external address and port, no two share one, and
    once they have ended their mappings are gone from Redis (the new instance deleted
    them; the old one kept the ports reserved meanwhile)."""
    import struct

    from worker.state_access import nat_out_key

    st, srv = setup
    src, sink = hosts(st.topology)
    spec = chain3(sink, (EXTERNAL, EXTERNAL2), "20000-20063", closing_s=0, udp_idle_s=2,
                  lent_check_s=1, adopted_max=64)  # fmt: skip
    chain = st.tenant.post("/v1/chains", spec)
    insts = wait_until(lambda: len(instances(st, chain["id"])) == 2 and instances(st, chain["id"]),
                       180, "the agents to prepare both NAT instances")  # fmt: skip
    assert {i["worker"] for i in insts} == {"w1", "w2"}  # one per worker
    other = {insts[0]["id"]: insts[1]["id"], insts[1]["id"]: insts[0]["id"]}
    addr_of = {i["id"]: (EXTERNAL, EXTERNAL2)[i["nat_slot"]] for i in insts}

    def outbound():
        return [f for f in st.admin.get("/v1/flows")["flows"] if f["dst"] == sink.address]

    def move_all(flows):
        for f in flows:
            to = other[f["instance_id"]]
            assert st.admin.post(f"/v1/flows/{f['id']}/move", {"to": to}) == {
                "flow": f["id"], "from": f["instance_id"], "to": to,
            }  # fmt: skip

    n = 4
    proc = subprocess.Popen(connect_cmd(st, sink, n, 20, "--interval", "0.15"), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = wait_until(lambda: len(outbound()) >= 2 * n and outbound(), 30,
                           "every connection's outbound flow")  # fmt: skip
        time.sleep(0.6)  # mid-connection
        move_all(first)
        was = {f["id"]: f["instance_id"] for f in first}
        wait_until(lambda: all(f["instance_id"] == other[was[f["id"]]] for f in outbound()
                               if f["id"] in was), 10, "the moves")  # fmt: skip
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reports = json.loads(out)
    assert not [r for r in reports if r.get("error")], reports
    ports = set()
    for r in reports:
        assert r["seqs"] == list(range(20)), r  # every echo, in order, across the move
        assert r.get("retries", 0) == 0, r  # not one datagram lost
        assert len(r["peers"]) == 1, r  # the same external endpoint before and after
        addr, port = r["peers"][0].split(":")
        ports.add((r["kind"], addr, int(port)))
    assert len(ports) == len(reports)  # no two connections share a port
    flows = st.admin.get("/v1/flows")["flows"]
    by_conn = {(f["proto"], f["sport"]): f for f in flows if f["dst"] == sink.address}
    for r in reports:
        f = by_conn[(r["kind"], r["local_port"])]
        addr, port = r["peers"][0].split(":")
        assert addr == addr_of[was[f["id"]]]  # the address of the instance it began on
        assert f["instance_id"] == other[was[f["id"]]]
        reply = [g for g in flows if g["dst"] == addr and g["dport"] == int(port)
                 and g["proto"] == r["kind"]]  # fmt: skip
        assert [g["instance_id"] for g in reply] == [f["instance_id"]]  # replies moved too

    # the connections have ended (TCP: FIN both ways; UDP: idle 2 s): the next sweeps of
    # both instances end them, so send a little traffic through each
    time.sleep(2.5)
    poke = subprocess.Popen(connect_cmd(st, sink, 1, 20, "--interval", "0.1"), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        pf = wait_until(lambda: [f for f in outbound() if f["id"] not in was], 30, "poke flows")
        move_all([f for f in pf if f["proto"] == "udp"][:1])
        poke.communicate(timeout=60)
    finally:
        if poke.poll() is None:
            poke.kill()
            poke.wait()
    prefix = f"c{chain['id']}n1"
    src_ip = int(ipaddress.IPv4Address(src.address))
    dst_ip = int(ipaddress.IPv4Address(sink.address))
    names = []
    for r in reports:
        proto = 6 if r["kind"] == "tcp" else 17
        addr, port = r["peers"][0].split(":")
        names.append(nat_out_key(prefix, proto, src_ip, dst_ip, r["local_port"], PORT))
        ik = struct.pack("<IIHHBB2x", int(ipaddress.IPv4Address(addr)), 0, int(port), 0,
                         proto, 2)  # fmt: skip
        names.append(f"{prefix}:{ik.hex()}".encode())
    admin = srv.client()
    try:
        left = [k for k, v in zip(names, admin.mget(names), strict=True) if v is not None]
    finally:
        admin.close()
    assert not left, f"{len(left)} keys of ended connections still in Redis"
