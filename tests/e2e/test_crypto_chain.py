"""encrypt and decrypt inside a multi-NF chain instance: the frames grow and shrink in
the chain buffer's slots (tailroom), after a tunnel NF pushed a tag into the headroom.

Real processes, the real cooperative scheduler on core 1, net_pcap ports.
"""

import os

import pytest

pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, Dot1Q, Ether, Raw, rdpcap, wrpcap  # noqa: E402

from tests.dataplane.xchacha_ref import open_aead  # noqa: E402
from tests.e2e.chain_fixtures import wait_for  # noqa: E402
from tests.e2e.test_chain import chain, tx  # noqa: E402
from worker.chain import ChainIds  # noqa: E402

pytestmark = [pytest.mark.dpdk, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

IDS = ChainIds(47350, 47350)
KEY = bytes(range(0x21, 0x41))
SIZES = (1, 22, 100, 982, 1472)  # 1472: a full 1514-byte frame, 1558 bytes once tagged+sealed


def frames():
    return [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=f"10.1.0.{i + 1}", dst="10.2.0.1")
        / UDP(sport=1000 + i, dport=7777)
        / Raw(bytes((i + j) & 0xFF for j in range(n)))
        for i, n in enumerate(SIZES)
    ]


def tagged(p):
    return bytes(Ether(src=p[Ether].src, dst=p[Ether].dst) / Dot1Q(vlan=100) / p[IP])


def run_chain(name, nfs, work, sched, src):
    pin, pout = work / f"{name}-in.pcap", work / f"{name}-out.pcap"
    wrpcap(str(pin), src)
    inst = chain(name, nfs, work, sched, ids=IDS, pcap=pin, out=pout)
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: tx(inst) == len(src))
        inst.detach()
        assert all(s["bad"] == 0 for s in inst.stats())
    finally:
        inst.teardown()
    return [bytes(p) for p in rdpcap(str(pout))]


def test_encrypt_after_tunnel_in_the_chain_buffer(work, sched):
    src = frames()
    enc = {"type": "encrypt", "config": {"key": KEY.hex(), "mtu": 1540}}
    out = run_chain("encc", [{"type": "tunnel", "config": {"vlan": 100}}, enc], work, sched, src)
    assert len(out) == len(src)
    for p, f in zip(src, out, strict=True):
        plain = bytes(p[UDP].payload)
        got = Ether(f)
        assert got[Dot1Q].vlan == 100 and len(f) == len(tagged(p)) + 40
        sealed = bytes(got[UDP].payload)
        body, nonce, tag = sealed[:-40], sealed[-40:-16], sealed[-16:]
        assert open_aead(KEY, nonce, body, tag) == plain
        again = got.copy()
        del again[IP].chksum, again[IP].len, again[UDP].chksum, again[UDP].len
        assert bytes(Ether(bytes(again))) == f  # lengths and checksums as scapy makes them


def test_encrypt_then_decrypt_in_one_chain_restores_every_frame(work, sched):
    src = frames()
    nfs = [
        {"type": "encrypt", "config": {"key": KEY.hex(), "mtu": 1540}},
        {"type": "tunnel", "config": {"vlan": 100}},
        {"type": "decrypt", "config": {"key": KEY.hex()}},
    ]
    assert run_chain("decc", nfs, work, sched, src) == [tagged(p) for p in src]
