"""urlfilter as a later NF of a chain (``acl -> urlfilter``): it works on chain-buffer
slots, and its RST rewrites (which shorten frames) leave the chain intact.

Real processes, the real cooperative scheduler on core 1, net_pcap in and out.
"""

import os

import pytest

scapy = pytest.importorskip("scapy.all")
from scapy.all import IP, TCP, Ether, conf, raw, rdpcap, wrpcap  # noqa: E402

from tests.dataplane.tcpflows import CLI_IP, SRV_IP, Conn, request  # noqa: E402
from tests.e2e.test_chain import chain, wait_for  # noqa: E402  (sched, work: conftest.py)
from worker.chain import ChainIds  # noqa: E402

pytestmark = [pytest.mark.dpdk, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

IDS = ChainIds(47350, 47350)
RULE = 'block tcp any any -> any 80 (msg:"banned"; content:"/banned"; http_uri; sid:1;)'


@pytest.mark.parametrize("mode", ["coop", "copy"])
def test_acl_then_urlfilter(work, sched, mode):  # noqa: F811
    ok, bad = Conn(41001), Conn(41002)
    good_req, bad_req = request("/fine/page"), request("/x/banned/page")
    frames = [*ok.handshake(), *bad.handshake()]
    frames += [ok.seg(0, good_req[:7]), bad.seg(0, bad_req[:7]), ok.seg(7, good_req[7:])]
    frames += [bad.seg(7, bad_req[7:]), bad.seg(7, bad_req[7:]), *ok.fin(len(good_req))]
    frames += [bad.seg(7, bad_req[7:])]  # blocked: dropped
    pin, pout = work / f"uf{mode}-in.pcap", work / f"uf{mode}-out.pcap"
    wrpcap(str(pin), [conf.raw_layer(f) for f in frames], linktype=1)
    nfs = [
        {"type": "acl", "config": {"default": "deny", "rules": [{"action": "allow"}]}},
        {"type": "urlfilter", "config": {"rules": [RULE], "reset": "both", "flows": 1024}},
    ]
    inst = chain(f"uf{mode}", nfs, work, sched, ids=IDS, mode=mode, pcap=pin, out=pout)
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] + inst.stats()[0]["drops"] == len(frames))
        inst.detach()
    finally:
        inst.teardown()
    got = [raw(p) for p in rdpcap(str(pout))]
    passed = frames[:9] + frames[11:13]  # the allowed connection and bad's head
    assert [f for f in got if f in frames] == passed
    rsts = [Ether(f) for f in got if f not in frames]
    assert len(rsts) == 2 and len(got) == len(passed) + 2
    to_srv, to_cli = rsts
    assert (to_srv[IP].src, to_srv[IP].dst, str(to_srv[TCP].flags)) == (CLI_IP, SRV_IP, "RA")
    assert (to_srv[TCP].seq, to_srv[TCP].ack) == (bad.isn + 8, bad.srv_isn + 1)
    assert (to_cli[IP].src, to_cli[IP].dst, str(to_cli[TCP].flags)) == (SRV_IP, CLI_IP, "RA")
    assert (to_cli[TCP].seq, to_cli[TCP].ack) == (bad.srv_isn + 1, bad.isn + 1 + len(bad_req))
    for p in rsts:  # checksums: scapy recomputes them from scratch
        q = p.copy()
        del q[IP].chksum, q[TCP].chksum
        assert raw(q) == raw(p) and len(raw(p)) == 54
