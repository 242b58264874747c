"""A stateful NF inside a multi-NF chain: ``acl -> nat`` as a chain instance (real NF
processes, the cooperative scheduler on core 1, real DPDK pcap ports) with its state
in a real redis-server: translations, update-then-release on chain-buffer slots,
per-flow order, the held bound, and a replacing instance that finds the mappings."""

from __future__ import annotations

import os
import time

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, rdpcap, wrpcap

from tests.state.test_nat import EXT_ADDRS, checksums_ok, conns, inbound, nat
from worker.chain import ChainIds, ChainInstance
from worker.coopsched import CoreScheduler
from worker.redis_server import RedisServer

pytestmark = [pytest.mark.dpdk, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CORE = 1
IDS = ChainIds(47410, 47410)
ACL = {
    "type": "acl",
    "config": {
        "rules": [
            {"action": "deny", "proto": "tcp", "dport": "23"},
            {"action": "allow", "src": "10.1.0.0/16"},
            {"action": "allow", "dst": "203.0.113.0/24"},
        ],
        "default": "deny",
    },
}


@pytest.fixture(scope="module")
def sched():
    with CoreScheduler(CORE, timeout=0.3) as s:
        yield s


@pytest.fixture
def redis_server(tmp_path):
    """The real Redis off the data core: on core 1 it would get only what the chain's
    SCHED_FIFO NFs leave, and the NAT would wait for its replies (docs/state.rst)."""
    srv = RedisServer(tmp_path / "redis", appendfsync="always", core=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(remove=True)


@pytest.fixture
def work(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path


def tagged(c, seq: int) -> bytes:
    """Payload naming the connection (its inside port) and the packet's place in it."""
    return b"%05d-%03d-payload" % (c[2], seq)


def outbound(c, seq: int):
    proto, host, port, remote, rport = c
    if proto == "tcp":
        l4 = TCP(sport=port, dport=rport, flags="S" if seq == 0 else "A")
    else:
        l4 = UDP(sport=port, dport=rport)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    return eth / IP(src=host, dst=remote) / l4 / Raw(tagged(c, seq))


def run_chain(name, work, sched, frames, state, *, max_held=None, expect=None):
    """``acl -> nat`` over ``frames`` until ``expect`` packets left (default: all of
    them); returns (output frames, the nat stage's state counters)."""
    pin, pout = work / f"{name}-in.pcap", work / f"{name}-out.pcap"
    wrpcap(str(pin), frames)
    st = dict(state) | ({"max_held": max_held} if max_held else {})
    inst = ChainInstance(
        name,
        [ACL, nat() | {"state": st}],
        core=CORE,
        ports={"rx": {"vdev": f"net_pcap_{name}0,rx_pcap={pin}"},
               "tx": {"vdev": f"net_pcap_{name}1,tx_pcap={pout}"}},
        ids=IDS, prefix="qst", mode="coop", scheduler=sched, n_slots=512,
        log_dir=str(work),
    )  # fmt: skip
    want = len(frames) if expect is None else expect
    try:
        inst.prepare()
        inst.attach()
        end = time.monotonic() + 20
        while inst.stats()[0]["tx"] < want and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.2)  # nothing more than expected comes out
        inst.detach()
    finally:
        inst.teardown()
    summary = inst.summaries[1]
    assert summary is not None, (work / f"{name}-nf1.log").read_text()
    return [bytes(p) for p in rdpcap(str(pout))], summary["state"]


def by_conn(frames):
    """{(proto, inside port): [(src or dst endpoint, seq), ...]} in output order."""
    out: dict = {}
    for f in frames:
        p = Ether(f)
        assert checksums_ok(f), p.summary()
        tag = f[-17:]  # tagged(): the frame's last bytes (scapy reads UDP/53 as DNS)
        port, seq = int(tag[:5]), int(tag[6:9])
        proto = "tcp" if TCP in p else "udp"
        l4 = p[TCP] if TCP in p else p[UDP]
        out.setdefault((proto, port), []).append(((p[IP].src, l4.sport, p[IP].dst, l4.dport), seq))
    return out


def test_acl_nat_chain_translates_holds_until_acked_and_keeps_order(work, sched, redis_server):
    """40 connections x 3 packets, plus telnet the ACL drops: every connection gets one
    external port, its packets leave in order, and each mapping is in Redis before the
    packet that made it leaves (the stage held it: held == mappings written)."""
    cs = conns(20)  # 20 TCP + 20 UDP
    frames = [outbound(c, s) for s in range(3) for c in cs]
    telnet = ("tcp", "10.1.9.9", 5555, "198.51.100.1", 23)
    frames += [outbound(telnet, 0)]
    creds = redis_server.add_nf_user("chainnat", unix=True).as_config()
    assert creds["host"].endswith("redis.sock")  # through the Unix socket
    out, st = run_chain("scn", work, sched, frames, creds, expect=len(cs) * 3)
    got = by_conn(out)
    assert len(out) == len(cs) * 3 and ("tcp", 5555) not in got
    ports = set()
    for c in cs:
        pkts = got[(c[0], c[2])]
        assert [s for _, s in pkts] == [0, 1, 2]  # per-connection order kept
        eps = {(src, sport) for (src, sport, _, _), _ in pkts}
        assert len(eps) == 1  # one external endpoint for the connection's life
        ((ea, ep),) = eps
        assert ea in EXT_ADDRS
        ports.add((c[0], ea, ep))
    assert len(ports) == len(cs)
    # update-then-release: the first packet of each connection waited for its write
    assert st["write_groups"] >= 1 and st["acked_groups"] == st["write_groups"]
    assert st["held"] >= len(cs) and st["released"] == st["held"] and st["held_dropped"] == 0
    assert st["fetch_round_trips"] <= st["fetch_batches"]
    admin = redis_server.client()
    try:
        keys = admin.keys("chainnat:*")
    finally:
        admin.close()
    assert len(keys) == 2 * len(cs)  # an out and an in key per mapping


def test_replacing_instance_fetches_the_mappings_before_the_first_packet(work, sched, redis_server):
    """The state handoff through Redis: a second instance with the same prefix
    translates replies and later packets of the first one's connections exactly as
    the first did, fetching each flow's mapping before it processes the packet."""
    cs = conns(10)
    creds = redis_server.add_nf_user("handoff").as_config()
    out1, _ = run_chain("sha", work, sched, [outbound(c, 0) for c in cs], creds)
    first = {k: v[0][0] for k, v in by_conn(out1).items()}
    # the replacement: replies to the external endpoints, and more packets outbound
    frames = []
    for c in cs:
        src, sport, _, _ = first[(c[0], c[2])]
        rep = inbound(c, (src, sport), flags="A")
        rep[Raw].load = tagged(c, 1)
        frames += [rep, outbound(c, 2)]
    out2, st = run_chain("shb", work, sched, frames, creds)
    got = by_conn(out2)
    for c in cs:
        src, sport, _, _ = first[(c[0], c[2])]
        pkts = dict((seq, ep) for ep, seq in got[(c[0], c[2])])
        assert pkts[1][2:] == (c[1], c[2])  # the reply went to the inside endpoint
        assert pkts[2][:2] == (src, sport)  # and the connection kept its port
    assert st["fetched"] >= len(cs) and st["held"] == 0  # nothing new to write


def test_held_bound_back_pressures_and_loses_nothing(work, sched, redis_server):
    """max_held 8 with 60 new connections arriving at once: the stage never holds
    more than 8 slots, takes fewer packets while at the bound, and drops none."""
    cs = conns(30)
    creds = redis_server.add_nf_user("bound").as_config()
    out, st = run_chain("sbd", work, sched, [outbound(c, 0) for c in cs], creds, max_held=8)
    assert len(out) == len(cs)
    assert 0 < st["max_held_seen"] <= 8 and st["held_dropped"] == 0


def test_unreachable_store_fails_the_prepare_with_the_reason(work, sched, redis_server):
    creds = redis_server.add_nf_user("wrong").as_config() | {"password": "not-it"}
    with pytest.raises(Exception, match="cannot reach Redis|WRONGPASS|invalid"):
        run_chain("sur", work, sched, [outbound(conns(1)[0], 0)], creds)


def test_stateful_nf_first_in_a_chain_is_refused(work, sched, redis_server):
    creds = redis_server.add_nf_user("first").as_config()
    inst = ChainInstance(
        "sfi",
        [nat() | {"state": creds}, {"type": "empty"}],
        core=CORE, ports={"rx": {"vdev": "net_null_sfi0"}, "tx": {"vdev": "net_null_sfi1"}},
        ids=IDS, prefix="qst", mode="coop", scheduler=sched, n_slots=512, log_dir=str(work),
    )  # fmt: skip
    try:
        with pytest.raises(Exception, match="after the first"):
            inst.prepare()
    finally:
        inst.teardown()
