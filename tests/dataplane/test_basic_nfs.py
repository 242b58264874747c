"""empty and tunnel through the real runtime on net_pcap, byte for byte."""

from __future__ import annotations

from scapy.all import IP, Dot1Q, Ether, raw

from tests.dataplane.packets import icmp, malformed, non_ip, tcp, udp


def swap_macs(frame: bytes) -> bytes:
    return frame[6:12] + frame[0:6] + frame[12:]


def test_empty_swaps_macs_and_survives_malformed(run_nf):
    good = [raw(udp(dport=p)) for p in range(5)] + [raw(tcp()), raw(icmp())]
    odd = list(malformed().values()) + list(non_ip().values())
    odd.append(good[0][:15])  # 14 and 15 bytes take the scalar swap, 16 and up SSE
    frames = good + odd
    result = run_nf({"type": "empty"}, frames)
    # empty only needs a MAC header: everything of 14 bytes and more goes out, swapped
    expected = [swap_macs(f) for f in frames if len(f) >= 14]
    assert result.output == expected
    c = result.summary["counters"]
    assert c["rx_packets"] == len(frames)
    assert c["tx_packets"] == len(expected)
    assert c["drops_nf"] == len(frames) - len(expected)
    assert c["rx_bytes"] == sum(map(len, frames))
    assert c["tx_bytes"] == sum(map(len, expected))
    assert c["batches"] >= 1 and c["busy_cycles"] > 0


def tagged(frame: bytes, vlan: int, pcp: int = 0) -> bytes:
    pkt = Ether(frame)
    inner = pkt.payload
    return raw(
        Ether(src=pkt.src, dst=pkt.dst, type=0x8100)
        / Dot1Q(vlan=vlan, prio=pcp, type=pkt.type)
        / inner
    )


def test_tunnel_fixed_vlan(run_nf):
    good = [raw(udp()), raw(tcp()), raw(icmp())]
    arp = non_ip()["arp"]
    bad = list(malformed().values())
    result = run_nf({"type": "tunnel", "config": {"vlan": 100, "pcp": 5}}, good + [arp] + bad)
    assert result.output == [tagged(f, 100, 5) for f in good + [arp]]
    assert result.summary["counters"]["drops_nf"] == len(bad)


def test_tunnel_by_destination_prefix(run_nf):
    config = {
        "by_dst": [
            {"prefix": "10.2.0.0/16", "vlan": 200},
            {"prefix": "10.2.3.0/24", "vlan": 230},
            {"prefix": "192.168.0.0/16", "vlan": 300},
        ],
        "default_vlan": 7,
    }
    frames = [
        raw(udp(dst="10.2.0.9")),
        raw(udp(dst="10.2.3.4")),  # longest prefix wins
        raw(tcp(dst="192.168.1.1")),
        raw(udp(dst="172.16.0.1")),  # no prefix: default
        non_ip()["ipv6"],  # non-IPv4: default
    ]
    result = run_nf({"type": "tunnel", "config": config}, frames)
    vlans = [200, 230, 300, 7, 7]
    assert result.output == [tagged(f, v) for f, v in zip(frames, vlans, strict=True)]


def test_tunnel_untagged_without_default(run_nf):
    frames = [raw(udp(dst="10.2.0.9")), raw(udp(dst="172.16.0.1"))]
    config = {"by_dst": [{"prefix": "10.2.0.0/16", "vlan": 200}]}
    result = run_nf({"type": "tunnel", "config": config}, frames)
    assert result.output == [tagged(frames[0], 200), frames[1]]
    # the tag went in front of the original IP header, untouched
    assert raw(Ether(result.output[0])[IP]) == raw(Ether(frames[0])[IP])


def test_counter_block_after_a_run(run_nf, tmp_path):
    from worker import nf_stats

    frames = [raw(udp(sport=s)) for s in range(100)]
    result = run_nf({"type": "empty"}, frames, keep_stats=True, batch=8)
    snap = nf_stats.read(result.stats_path)
    c = snap.counters
    assert snap.state == "stopped" and snap.tsc_hz == result.summary["tsc_hz"]
    assert c["rx_packets"] == c["tx_packets"] == 100 and c["seq"] % 2 == 0
    assert c["batches"] >= 100 // 8 and sum(snap.hist) == c["batches"]
    assert len(snap.samples) == c["batches"] == c["sample_head"]
    assert sum(p for _, _, p in snap.samples) == 100
    assert max(cyc for _, cyc, _ in snap.samples) == c["max_batch_cycles"]
    assert sum(cyc for _, cyc, _ in snap.samples) == c["busy_cycles"]
    tscs = [t for t, _, _ in snap.samples]
    assert tscs == sorted(tscs) and tscs[-1] <= c["last_tsc"]
