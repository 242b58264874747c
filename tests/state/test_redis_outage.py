"""Riding out a Redis outage: ``acl -> nat`` as a chain instance (real NF processes, the
cooperative scheduler, DPDK ``net_af_packet`` on a veth pair in the test's namespace),
its state in a real redis-server that the test SIGKILLs and starts again under
traffic.  While Redis is away, connections whose mappings are cached keep flowing
both ways and keep their ports; a packet that changes state (an RST ending its
connection) is held, never released unacknowledged, and goes on once the NAT has
reconnected and Redis has the change; a new connection's first packets are dropped
(their mapping could be in Redis); nothing acknowledged is lost (AOF ``always``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from scapy.all import TCP, Ether, Raw, raw

from tests.state.test_nat import conns, inbound, nat
from tests.state.test_stateful_chain import ACL, IDS, by_conn, outbound, tagged
from tests.state.test_stateful_chain import redis_server as redis_server  # noqa: F401
from tests.state.test_stateful_chain import sched as sched  # noqa: F401 - the fixtures
from worker.chain import ChainInstance
from worker.launcher import LocalLauncher

pytestmark = [
    pytest.mark.dpdk,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root"),
]

CORE = 1
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Wire:
    """The test's side of the veth pair (tests/state/wire.py in the namespace)."""

    def __init__(self, ns: str, iface: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.state.wire", iface],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def _ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def send(self, frames) -> None:
        self._ask({"send": [raw(f).hex() for f in frames]})

    def collect(self, n: int, timeout: float = 10.0) -> list[bytes]:
        return [bytes.fromhex(h) for h in self._ask({"collect": n, "timeout": timeout})["got"]]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def veth(veth_ns):
    """The namespace's veth pair: the chain on one end, :class:`Wire` on the other."""
    ns, a, b = veth_ns
    wire = Wire(ns, b)
    cgroups = f"qro-{ns}"
    try:
        yield ns, a, wire, cgroups
    finally:
        wire.close()
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/memory"):
            try:
                os.rmdir(f"{root}/{cgroups}")  # the NFs' cgroups' parent, empty by now
            except OSError:
                pass


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def first_ext(frames) -> dict:
    """{(proto, inside port): (ext addr, ext port)} of outbound frames."""
    return {k: v[0][0][:2] for k, v in by_conn(frames).items()}


@pytest.fixture
def nat_chain(tmp_path, veth, sched, redis_server):  # noqa: F811
    """``acl -> nat`` on the veth, 8 TCP + 8 UDP connections opened through it while
    Redis is up: yields (instance, wire, {(proto, inside port): (ext addr, port)}, the
    connections); the instance is torn down after (its summary in ``summaries``)."""
    ns, iface, wire, cgroups = veth
    os.chmod(tmp_path, 0o755)
    creds = redis_server.add_nf_user("outage", unix=True).as_config()
    inst = ChainInstance(
        "sro",
        [ACL, nat() | {"state": creds | {"retry_s": 0.02}}],
        core=CORE,
        ports={"rx": {"vdev": f"net_af_packet_sro,iface={iface}"}},
        ids=IDS, prefix="qst", mode="coop", scheduler=sched, n_slots=512,
        log_dir=str(tmp_path), netns=ns, launcher=LocalLauncher(cgroup_parent=cgroups),
    )  # fmt: skip
    cs = conns(8)
    try:
        inst.prepare()
        inst.attach()
        wire.send([outbound(c, 0) for c in cs])
        ext = first_ext(wire.collect(len(cs)))
        assert len(ext) == len(cs) and len(set(ext.values())) == len(cs)
        yield inst, wire, ext, cs
    finally:
        inst.teardown()


def resets(cs, seq=3):
    out = []
    for c in cs:
        r = outbound(c, seq)
        r[TCP].flags = "R"
        out.append(r)
    return out


def redis_keys(redis_server) -> set:
    admin = redis_server.client()
    try:
        return set(admin.keys("outage:*"))
    finally:
        admin.close()


def test_nat_rides_out_a_redis_restart(nat_chain, redis_server):
    inst, wire, ext, cs = nat_chain
    ended = [c for c in cs if c[0] == "tcp"][:3]  # reset while Redis is away
    live = [c for c in cs if c not in ended]
    late = conns(3, first=50)  # first packets while Redis is away

    redis_server.kill()  # SIGKILL: what survives is the append-only file
    # cached connections, both ways, while Redis is away
    rounds = []
    for seq in (1, 2):
        for c in live:
            rep = inbound(c, ext[(c[0], c[2])], flags="A")
            rep[Raw].load = tagged(c, 100 + seq)
            rounds += [outbound(c, seq), rep]
    rst = resets(ended)
    wire.send(rounds + rst + [outbound(c, 0) for c in late])
    during = wire.collect(len(rounds), timeout=10)
    missing = {bytes(r[Raw].load) for r in rounds} - {f[-17:] for f in during}
    assert not missing, f"cached connections stopped while Redis was away: {missing}"
    assert wait_for(lambda: inst.stats()[1]["store_wait"], 5), "the stage never saw it"
    assert not inst.progress()[1]["running"]  # the stall rule leaves it alone meanwhile
    assert inst.progress()[1]["store_down"]  # what the monitor reports as state_store
    assert wire.collect(0, timeout=0.5) == []  # the RSTs are held, the new ones dropped

    redis_server.start()
    assert wait_for(lambda: not inst.stats()[1]["store_wait"], 10), "never reconnected"
    assert not inst.stats()[1]["store_down"]
    released = wire.collect(len(rst), timeout=10)
    assert sorted(Ether(f)[TCP].sport for f in released) == sorted(
        ext[(c[0], c[2])][1] for c in ended
    )  # the RSTs, each from its connection's port, once Redis had the deletes
    # after: every live connection still has its port; new connections get one
    wire.send([outbound(c, 4) for c in live] + [outbound(c, 0) for c in late])
    after = wire.collect(len(live) + len(late))
    inst.detach()
    inst.teardown()

    got = by_conn(during + after)
    for c in live:
        pkts = got[(c[0], c[2])]
        outs = [(ep[:2], s) for ep, s in pkts if s < 100]
        assert [s for _, s in outs] == [1, 2, 4]  # in order, none lost
        assert {ep for ep, _ in outs} == {ext[(c[0], c[2])]}  # the port it had
        ins = [(ep[2:], s) for ep, s in pkts if s >= 100]
        assert ins == [((c[1], c[2]), 101), ((c[1], c[2]), 102)]  # replies translated back
    late_keys = {(c[0], c[2]) for c in late}
    late_ext = {k: v for k, v in first_ext(after).items() if k in late_keys}
    assert set(late_ext) == late_keys  # new connections are served again
    taken = {(k[0], *v) for k, v in ext.items() if k not in {(c[0], c[2]) for c in ended}}
    assert not {(k[0], *v) for k, v in late_ext.items()} & taken  # no port handed out twice
    st = inst.summaries[1]["state"]
    assert st["outages"] >= 1 and st["reconnects"] >= 1 and not st["store_down"]
    assert st["unknown_dropped"] == len(late)  # the new connections' first packets
    assert st["held_dropped"] == 0 and st["groups_resent"] >= 1
    # 2 keys per mapping: the live ones and the late ones; the reset ones deleted
    assert len(redis_keys(redis_server)) == 2 * (len(live) + len(late))


def test_writes_in_flight_when_redis_dies_are_sent_again(nat_chain, redis_server):
    """Redis stops reading (SIGSTOP) with the NAT's deletes sent and unanswered, then
    dies (SIGKILL) with them unapplied: the held RSTs stay held; after the restart
    the NAT sends the same deletes again (``bytes_resent``: bytes the dead
    connection had carried), and only then are the RSTs released."""
    inst, wire, ext, cs = nat_chain
    ended = [c for c in cs if c[0] == "tcp"][:4]
    before = redis_keys(redis_server)
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        wire.send(resets(ended))
        assert wire.collect(0, timeout=0.5) == []  # held: sent, not acknowledged
    finally:
        redis_server.kill()  # the deletes die with it, unapplied
    redis_server.start()
    assert wait_for(lambda: not inst.stats()[1]["store_wait"], 10), "never reconnected"
    released = wire.collect(len(ended), timeout=10)
    assert sorted(Ether(f)[TCP].sport for f in released) == sorted(
        ext[(c[0], c[2])][1] for c in ended
    )
    inst.detach()
    inst.teardown()
    st = inst.summaries[1]["state"]
    assert st["outages"] == 1 and st["reconnects"] == 1
    assert st["bytes_resent"] > 0 and st["groups_resent"] >= 1 and st["held_dropped"] == 0
    assert len(redis_keys(redis_server)) == len(before) - 2 * len(ended)
