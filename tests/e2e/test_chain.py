"""Multi-NF chain instances on real DPDK ports (net_pcap/net_null), real processes,
the real cooperative scheduler on core 1, and isolation against malicious NFs.

Needs root (SCHED_FIFO, setuid) and the DPDK build; each test takes seconds.
"""

import json
import os
import time

import pytest

scapy = pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, Dot1Q, Ether, rdpcap, wrpcap  # noqa: E402

from cext import chainbuf  # noqa: E402
from tests.e2e.chain_fixtures import (  # noqa: E402
    CORE,
    make_chain,
    pcap_ports,
    wait_for,
)
from worker.chain import ChainIds  # noqa: E402
from worker.coopsched import PRIO_ATTACHED, PRIO_DETACHED  # noqa: E402

pytestmark = [pytest.mark.dpdk, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

IDS_A = ChainIds(47310, 47310)
IDS_B = ChainIds(47320, 47320)
NFS = "tests.e2e.chain_nfs"


def packets(n):
    return [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=f"10.1.0.{i + 1}", dst="10.2.0.1")
        / UDP(sport=1000 + i, dport=80)
        / (b"p" * 22)
        for i in range(n)
    ]


def chain(name, nfs, work, sched, *, ids=IDS_A, mode="coop", pcap=None, out=None, **kw):
    infinite = pcap is None
    if pcap is None:
        pcap = work / f"{name}-in.pcap"
        wrpcap(str(pcap), packets(64))
    ports = pcap_ports(name, pcap, out, infinite)
    return make_chain(name, nfs, work, sched, ports, ids=ids, prefix="qs", mode=mode, **kw)


def tx(inst):
    return inst.stats()[0]["tx"]


def py(cls, **config):
    return {"type": "python", "class": f"{NFS}:{cls}", "config": config}


@pytest.mark.parametrize("mode", ["coop", "copy"])
def test_chain_output_byte_for_byte(work, sched, mode):
    pin, pout = work / "in.pcap", work / "out.pcap"
    src = packets(64)
    wrpcap(str(pin), src)
    nfs = [
        {"type": "empty"},
        {"type": "tunnel", "config": {"vlan": 100}},
        py("DropOddPort"),
        {"type": "empty"},
    ]
    inst = chain(f"bb{mode}", nfs, work, sched, mode=mode, pcap=pin, out=pout)
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: tx(inst) == 32)
        inst.detach()
        st = inst.stats()
        assert [s["state"] for s in st] == ["parked"] * 4
        assert st[0]["pkts"] == 64 and st[0]["drops"] == 32 and st[0]["bad"] == 0
    finally:
        inst.teardown()
    # two MAC swaps cancel out; the tunnel NF pushed its tag into the slot's headroom
    want = [
        bytes(Ether(src=p[Ether].src, dst=p[Ether].dst) / Dot1Q(vlan=100) / p[IP])
        for p in src
        if p[UDP].sport % 2 == 0
    ]
    got = [bytes(p) for p in rdpcap(str(pout))]
    assert got == want
    # this chain's buffer files are gone (other chains' may exist: not ours to judge)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"qs-bb{mode}-")]
    assert not any(f.startswith("qs-") for f in os.listdir("/dev/hugepages"))


def test_single_nf_chain_skips_buffer_and_scheduler(work, sched):
    pin, pout = work / "in.pcap", work / "out.pcap"
    src = packets(16)
    wrpcap(str(pin), src)
    inst = chain("one", [{"type": "empty"}], work, sched, pcap=pin, out=pout)
    try:
        inst.prepare()
        assert inst.mode == "single_thread" and inst.scheduler is None
        assert "one" not in sched.groups
        assert inst.ctl.n_slots == 1
        inst.attach()
        assert wait_for(lambda: tx(inst) == 16)
    finally:
        inst.teardown()
    got = [bytes(p) for p in rdpcap(str(pout))]
    assert got == [bytes(Ether(src=p.dst, dst=p.src) / p[IP]) for p in src]


def test_batches_beyond_an_nf_call_are_split(work, sched):
    # the chain batch may be up to 1024; an NF is called with at most 256 packets
    # (issue 4's contract: acl sizes its arrays by it) -- odd sports are denied
    acl = {
        "type": "acl",
        "config": {
            "default": "allow",
            "rules": [{"action": "deny", "proto": "udp", "sport": "1001-1001"}],
        },
    }
    inst = chain("big", [{"type": "empty"}, acl, {"type": "empty"}], work, sched, batch=1000)
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] > 50_000)
        s = inst.stats()
        assert s[0]["batches"] and s[0]["pkts"] / s[0]["batches"] > 256
        assert s[1]["drops"] > 0 and inst.alive()
    finally:
        inst.teardown()


def test_quick_attach_detach_never_strands_a_batch(work, sched):
    # NFs that never woke between an attach and the next detach must not be taken
    # for parked while their predecessor fills their ring (a stale "parked")
    inst = chain("qad", [{"type": "empty"}] * 4, work, sched)
    try:
        inst.prepare()
        for _ in range(8):
            inst.attach()
            inst.detach()
            st = inst.stats()
            assert st[0]["pkts"] == st[3]["pkts"] == st[0]["tx"] + st[0]["drops"]
    finally:
        inst.teardown()


def test_attach_detach_between_batches_and_priorities(work, sched):
    inst = chain("ad", [{"type": "empty"}, {"type": "empty"}, {"type": "empty"}], work, sched)
    try:
        inst.prepare()
        for t in inst.tids:
            assert os.sched_getscheduler(t) == os.SCHED_FIFO
            assert os.sched_getparam(t).sched_priority == PRIO_DETACHED
            assert os.sched_getaffinity(t) == {CORE}
        assert tx(inst) == 0
        inst.attach()
        assert [os.sched_getparam(t).sched_priority for t in inst.tids] == [PRIO_ATTACHED] * 3
        assert wait_for(lambda: tx(inst) > 10_000)
        inst.set_batch(8)
        time.sleep(0.2)
        s0 = inst.stats()[0]
        time.sleep(0.2)
        s1 = inst.stats()[0]
        # counters are read while NF1 runs: allow the one batch in progress
        assert 0 < s1["pkts"] - s0["pkts"] <= 8 * (s1["batches"] - s0["batches"] + 1)
        inst.detach()
        st = inst.stats()
        assert all(s["state"] == "parked" for s in st)
        # drained: every packet the first NF took in went through the whole chain
        assert st[0]["pkts"] == st[1]["pkts"] == st[2]["pkts"] == st[0]["tx"] + st[0]["drops"]
        assert [os.sched_getparam(t).sched_priority for t in inst.tids] == [PRIO_DETACHED] * 3
        before = tx(inst)
        time.sleep(0.3)
        assert tx(inst) == before
        inst.attach()
        assert wait_for(lambda: tx(inst) > before + 10_000)
    finally:
        inst.teardown()
    assert inst.summaries and all(s and s["done"] for s in inst.summaries)


# --- isolation: deliberately malicious NFs ---------------------------------------


def test_malicious_nf_cannot_reach_nic_memory_other_chains_or_its_priority(work, sched):
    other = chain("vict", [{"type": "empty"}, {"type": "empty"}], work, sched, ids=IDS_B)
    other.prepare()
    mal = None
    try:
        report = work / "probe.json"
        mal = chain("mal", [{"type": "empty"}, {"type": "empty"}, {"type": "empty"}], work, sched)
        # the prober is NF2 of chain "mal"; it learns the paths the way an attacker would
        # guess them, from the naming scheme (they are no secret: access is by permission)
        mal.nfs[1] = py(
            "Prober",
            report=str(report),
            other_buffer=other.ctl.path,
            own_buffer="qs-mal-buf.chainbuf",
        )
        mal.prepare()
        mal.attach()
        assert wait_for(lambda: report.exists() and report.stat().st_size > 0)
        r = json.loads(report.read_text())
        assert r.pop("peers_seen") >= 4  # its own chain's NF1 and NF3, the victim's two
        assert r, "the prober tried nothing"
        assert {k: v for k, v in r.items() if not v.startswith("denied")} == {}
        for t in mal.tids:  # its scheduling is what the scheduler set
            assert os.sched_getparam(t).sched_priority == PRIO_ATTACHED
            assert os.sched_getaffinity(t) == {CORE}
        before = tx(mal)
        assert wait_for(lambda: tx(mal) > before + 1000)  # and the chain still works
    finally:
        if mal:
            mal.teardown()
        other.teardown()


def spy_run(work, sched, mode, name):
    report = work / f"spy-{mode}.json"
    inst = chain(
        name,
        [{"type": "empty"}, {"type": "empty"}, {"type": "empty"}],
        work,
        sched,
        mode=mode,
        batch=4,
    )
    inst.nfs[1] = py("SlowMarker", ms=2)
    # the spy maps its own chain's buffer: it may, it is that chain's NF
    inst.nfs[2] = py("Spy", buffer=f"/dev/shm/qs-{name}-buf.chainbuf", report=str(report))
    inst.buffer_root = "/dev/shm"
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: report.exists() and report.stat().st_size > 0)
        time.sleep(1.5)
        return json.loads(report.read_text())
    finally:
        inst.teardown()


def test_no_nf_sees_a_batch_before_its_predecessor_is_done(work, sched):
    coop = spy_run(work, sched, "coop", "spyc")
    assert coop["calls"] >= 50 and coop["sightings"] == 0
    # the same processes and buffer without the cooperative scheduler: the spy does
    # see half-processed batches, so the check above can fail
    cfs = spy_run(work, sched, "cfs", "spyf")
    assert cfs["calls"] >= 5 and cfs["sightings"] > 0


def test_nf_that_never_yields_is_stopped_and_reported(work, sched):
    events = []
    sched.on_event = events.append
    inst = chain("hog", [{"type": "empty"}, py("Hog"), {"type": "empty"}], work, sched)
    try:
        inst.prepare()
        t0 = time.monotonic()
        inst.attach()
        assert wait_for(lambda: any(e["chain"] == "hog" for e in events), timeout=5)
        took = time.monotonic() - t0
        ev = [e for e in events if e["chain"] == "hog"][0]
        assert ev["event"] == "chain_ended" and ev["nf"] == 1 and ev["tid"] == inst.tids[1]
        assert "did not yield" in ev["reason"] and took < 3
        assert wait_for(lambda: not any(p.poll() is None for p in inst.procs))
        assert sched.state("hog") == "ended"
    finally:
        sched.on_event = lambda ev: None
        inst.teardown()


def test_corrupt_ring_entries_are_refused(work, sched):
    inst = chain("cor", [{"type": "empty"}, {"type": "empty"}, {"type": "empty"}], work, sched)
    inst.nfs[1] = py("RingCorruptor", buffer="/dev/shm/qs-cor-buf.chainbuf", ring=2)
    inst.buffer_root = "/dev/shm"
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: inst.stats()[2]["bad"] >= 15)
        before = tx(inst)
        assert wait_for(lambda: tx(inst) > before + 1000)
        assert inst.alive()
    finally:
        inst.teardown()


def test_buffer_file_is_the_chains_alone(work, sched):
    inst = chain("perm", [{"type": "empty"}, {"type": "empty"}], work, sched)
    try:
        inst.prepare()
        path = inst.ctl.path
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, IDS_A.gid, 0o660)
    finally:
        inst.teardown()
    with pytest.raises(chainbuf.ChainBufferError, match="path"):  # teardown removed it
        chainbuf.ChainBuffer.open(path)


def test_monitor_p99_comes_from_the_nfs_batch_histograms(work, sched):
    # issue 6's monitor: p99_us of single batches (histogram deltas), not of tick means
    from worker.monitor import Rates, tsc_hz
    from worker.nf_stats import bucket_low, hist_delta, hist_quantile

    nfs = [{"type": "empty"}, py("SlowEvery", every=20, spin_us=1000), {"type": "empty"}]
    inst = chain("pfp99", nfs, work, sched)
    hz = tsc_hz()
    rates = Rates(hz)
    try:
        inst.prepare()
        before = inst.stats()
        assert [sum(s["hist"]) for s in before] == [0, 0, 0]
        rates.update({1: before}, time.monotonic())
        inst.attach()
        assert wait_for(lambda: inst.stats()[1]["batches"] > 400, timeout=10)
        mid = inst.stats()
        (row,) = rates.update({1: mid}, time.monotonic())
        assert 0 <= mid[0]["buffered"] <= 512 and row["queue_len"] is None
        inst.detach()
        after = inst.stats()
    finally:
        inst.teardown()
    # parked: every batch an NF worked on is in its histogram, once
    assert [sum(s["hist"]) for s in after] == [s["batches"] for s in after]
    assert after[0]["buffered"] == 0  # drained
    # the chain's p99 lies between the fastest and the slowest batches each NF had
    lo = hi = 0
    for b, m in zip(before, mid, strict=True):
        used = [i for i, n in enumerate(hist_delta(b["hist"], m["hist"])) if n]
        lo, hi = lo + bucket_low(used[0]), hi + bucket_low(used[-1] + 1)
    assert lo / hz * 1e6 <= row["p99_us"] <= hi / hz * 1e6
    # the slow NF's p99 sits in its slow batches (5 % of them), far above its mean
    d = hist_delta(before[1]["hist"], mid[1]["hist"])
    p99_us = hist_quantile(d, 0.99) / hz * 1e6
    mean_us = (mid[1]["cycles"] - before[1]["cycles"]) / sum(d) / hz * 1e6
    assert p99_us >= 800 and p99_us > 3 * mean_us
    assert row["p99_us"] >= p99_us
