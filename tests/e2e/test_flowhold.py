"""Per-flow hold in a chain instance's first NF (the new side of a flow move), on real
DPDK ports and real NF processes: held flows wait, in order, until released; a hold
nobody releases ends by itself; drain sees an instance that has emitted everything;
the controller's marked packets of a held flow go through at once, unmarked.
"""

import os
import time

import pytest

pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, Dot1Q, Ether, Raw, rdpcap, wrpcap  # noqa: E402

from tests.e2e.test_chain import chain, wait_for  # noqa: E402
from worker.flowhold import parse_flows  # noqa: E402

pytestmark = [pytest.mark.dpdk, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

# sched and work: the e2e fixtures (tests/e2e/conftest.py)

HELD = {"src": "10.1.0.7", "dst": "10.2.0.1", "proto": "udp", "sport": 7000, "dport": 80}


def mixed(n, marked=0):
    """``n`` packets, every third of the held flow; the payload is the packet's number.
    The held flow's packets among the first ``marked`` carry the controller's marker
    tag (802.1Q VID 4095, cext/src/qs_flowhold.h)."""
    out = []
    for i in range(n):
        sport = 7000 if i % 3 == 0 else 7001
        src = "10.1.0.7" if i % 3 == 0 else "10.1.0.8"
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        if sport == 7000 and i < marked:
            eth = eth / Dot1Q(vlan=4095)
        out.append(eth / IP(src=src, dst="10.2.0.1") / UDP(sport=sport, dport=80)
                   / f"{i:06d}".encode())  # fmt: skip
    return out


def seqs(pkts, sport):
    return [int(bytes(p[Raw])) for p in pkts if UDP in p and p[UDP].sport == sport]


def run(work, sched, name, n=300, release_after=None, marked=0, **kw):
    pin, pout = work / f"{name}-in.pcap", work / f"{name}-out.pcap"
    wrpcap(str(pin), mixed(n, marked))
    inst = chain(name, [{"type": "empty"}], work, sched, pcap=pin, out=pout, **kw)
    early = sum(1 for i in range(min(n, marked)) if i % 3 == 0)
    held = sum(1 for i in range(n) if i % 3 == 0) - early
    try:
        inst.prepare()
        keys = parse_flows([HELD])
        assert inst.hold_flows(keys, marked=bool(marked)) == [0]
        inst.attach()
        # the others go through, and the marked ones; the held flow's packets wait
        assert wait_for(lambda: inst.stats()[0]["tx"] == n - held)
        time.sleep(0.05)
        assert inst.stats()[0]["tx"] == n - held
        (entry,) = inst.hold.entries()
        assert entry["held"] == held and entry["state"] == "held"
        if release_after is not None:
            time.sleep(release_after)
            assert inst.release_flows(keys) == 1
        assert wait_for(lambda: inst.stats()[0]["tx"] == n)
        assert wait_for(lambda: inst.hold.active == 0)
        totals = inst.hold.totals()
        assert inst.drain(1.0)["drained"]
    finally:
        inst.teardown()
    got = rdpcap(str(pout))
    return got, totals, held


def test_held_flow_waits_and_comes_out_in_order(work, sched):
    got, totals, held = run(work, sched, "fh", release_after=0.0)
    assert seqs(got, 7000) == [i for i in range(300) if i % 3 == 0]  # all, in order
    assert seqs(got, 7001) == [i for i in range(300) if i % 3]
    # every held packet left after every other one: nothing of it went early
    assert [p[UDP].sport for p in got[-held:]] == [7000] * held
    assert totals == {"held": held, "released": held, "dropped": 0, "expired": 0, "marked": 0}
    assert not os.path.exists("/dev/shm/qs-fh-hold")  # torn down with the instance


def test_marked_packets_of_a_held_flow_go_through_at_once_and_first(work, sched):
    """The controller's own packets of a flow it held (docs/reliability.rst, *Held
    packets*) are older than any its new rule forwards: they carry the marker, go
    through while the flow is held, without the marker, and before the held ones."""
    got, totals, held = run(work, sched, "fm", release_after=0.0, marked=150)
    assert seqs(got, 7000) == [i for i in range(300) if i % 3 == 0]  # all, in order
    assert seqs(got, 7001) == [i for i in range(300) if i % 3]
    assert not any(Dot1Q in p for p in got)  # the marker is stripped
    assert [p[UDP].sport for p in got[-held:]] == [7000] * held  # the unmarked waited
    assert totals == {"held": held, "released": held, "dropped": 0, "expired": 0,
                      "marked": 50}  # fmt: skip


def test_a_release_while_parked_waits_for_what_the_port_had(work, sched):
    """Released before the instance runs (a warm-pool instance the controller attaches
    for the flows it held): newer unmarked packets of the flow are queued at the port
    ahead of older marked ones.  The release takes effect only once the first NF has
    set aside what the port had, so the older ones still go first."""
    n = 300
    pkts = []
    for i in range(n):
        held = i % 3 == 0
        seq = (1000 + i if i < 150 else i - 150) if held else i
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        if held and i >= 150:
            eth = eth / Dot1Q(vlan=4095)
        ip = IP(src="10.1.0.7" if held else "10.1.0.8", dst="10.2.0.1")
        pkts.append(eth / ip / UDP(sport=7000 if held else 7001, dport=80) / f"{seq:06d}".encode())
    pin, pout = work / "fp-in.pcap", work / "fp-out.pcap"
    wrpcap(str(pin), pkts)
    inst = chain("fp", [{"type": "empty"}], work, sched, pcap=pin, out=pout)
    try:
        inst.prepare()
        keys = parse_flows([HELD])
        inst.hold_flows(keys, marked=True)
        assert inst.release_flows(keys) == 1  # parked: nothing received yet
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] == n)
        assert wait_for(lambda: inst.hold.active == 0)
        totals = inst.hold.totals()
    finally:
        inst.teardown()
    got = rdpcap(str(pout))
    mine = seqs(got, 7000)
    assert mine == sorted(mine) and len(mine) == 100  # the marked (older) ones first
    assert seqs(got, 7001) == [i for i in range(n) if i % 3]
    assert totals["marked"] == 50 and totals["held"] == 50 and totals["released"] == 50


def test_a_hold_nobody_releases_ends_by_itself(work, sched):
    got, totals, held = run(work, sched, "fx", max_hold_ms=150)
    assert seqs(got, 7000) == [i for i in range(300) if i % 3 == 0]
    assert totals["expired"] == 1 and totals["released"] == held


def test_hold_refuses_when_full_and_bad_keys(work, sched):
    inst = chain("fr", [{"type": "empty"}], work, sched)
    try:
        inst.prepare()
        many = [dict(HELD, sport=1000 + i) for i in range(64)]
        assert len(inst.hold_flows(parse_flows(many))) == 64
        with pytest.raises(RuntimeError, match="no room"):
            inst.hold_flows(parse_flows([dict(HELD, sport=9)]))
        # holding a flow again is not a new entry
        assert inst.hold_flows(parse_flows([many[0]])) == [0]
        assert inst.release_flows(parse_flows(many)) == 64
    finally:
        inst.teardown()
