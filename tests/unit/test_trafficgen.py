"""Stamped frames and per-flow counting, checked against scapy's reading of them."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tools.trafficgen.counting import Sink, make_flows, percentile
from tools.trafficgen.frames import FlowSpec, FrameError, Template, parse

SRC_MAC, DST_MAC = "02:00:00:00:0a:01", "02:00:00:00:01:01"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("size", [78, 333, 1024, 1514])
def test_frames_are_valid_and_checksums_right(proto, size):
    flow = FlowSpec(7, "10.1.0.1", "10.2.0.1", proto, 10007, 80, size, 100.0)
    tpl = Template(flow, SRC_MAC, DST_MAC)
    for seq in (0, 1, 65535, 2**40 + 3):
        frame = bytes(tpl.stamp(seq, 123456789 + seq))
        assert len(frame) == size
        pkt = Ether(frame)
        l4 = pkt[UDP] if proto == "udp" else pkt[TCP]
        got_ip, got_l4 = pkt[IP].chksum, l4.chksum
        del pkt[IP].chksum
        del l4.chksum
        again = Ether(bytes(pkt))
        assert again[IP].chksum == got_ip
        want = (again[UDP] if proto == "udp" else again[TCP]).chksum
        assert want == got_l4 or (proto == "udp" and want == 0 and got_l4 == 0xFFFF)
        p = parse(frame)
        assert (p.flow_id, p.seq, p.tx_ns, p.vlan, p.ttl) == (7, seq, 123456789 + seq, None, 64)
        assert p.payload_ok and p.dst_mac == DST_MAC


def test_parse_tagged_and_foreign():
    flow = FlowSpec(3, "10.1.0.1", "10.2.0.1", "udp", 10003, 80, 200, 1.0)
    frame = bytes(Template(flow, SRC_MAC, DST_MAC).stamp(5, 1))
    pkt = Ether(frame)
    tagged = Ether(dst=pkt.dst, src=pkt.src) / Dot1Q(vlan=100) / pkt[IP]
    p = parse(bytes(tagged))
    assert p.vlan & 0xFFF == 100 and p.seq == 5
    assert parse(frame, vlan_tci=42).vlan == 42
    assert parse(b"\x00" * 10) is None
    assert parse(bytes(Ether() / IP() / UDP() / b"not ours, not at all")) is None
    corrupt = bytearray(frame)
    corrupt[14 + 20 + 8 + 24] ^= 0xFF
    assert parse(bytes(corrupt)).payload_ok is False


def test_bad_flow_specs():
    with pytest.raises(FrameError, match="proto"):
        FlowSpec(1, "10.1.0.1", "10.2.0.1", "sctp", 1, 1, 100, 1.0)
    with pytest.raises(FrameError, match="size"):
        FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 1, 1, 40, 1.0)
    with pytest.raises(FrameError, match="dst_ip"):
        FlowSpec(1, "10.1.0.1", "nowhere", "udp", 1, 1, 100, 1.0)
    with pytest.raises(FrameError, match="sport"):
        FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 0, 1, 100, 1.0)


def test_sink_counts_loss_reorder_duplicates():
    flow = FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 10001, 80, 100, 1.0)
    tpl = Template(flow, SRC_MAC, DST_MAC)
    sink = Sink()
    for n, seq in enumerate((0, 1, 3, 2, 3, 5)):  # 4 lost, 2 reordered, 3 duplicated
        sink.add(parse(bytes(tpl.stamp(seq, 1000 + n))), 3000 + n)
    sink.add(None, 0)
    out = sink.summary({1: 6, 2: 4})
    row = out["flows"]["1"]
    assert (row["received"], row["lost"], row["reordered"], row["duplicates"]) == (5, 1, 1, 1)
    assert row["last_seq"] == 5
    assert row["late"] == [[2, 3, 3003]] and row["missing"] == [4]
    assert row["jumps"] == [[2, 3, 3002], [4, 5, 3005]]
    assert row["latency_p50_us"] == 2.0 and row["untagged"] and row["ttls"] == [64]
    assert out["flows"]["2"] == {"sent": 4, "received": 0, "lost": 4}
    assert (out["sent"], out["received"], out["lost"], out["foreign_packets"]) == (10, 5, 5, 1)
    assert out["socket_drops"] == 0  # the receiver sets it from its socket's statistics


def test_make_flows_is_deterministic_with_median_size():
    a = make_flows(400, "10.1.0.0/16", "10.2.0.1", 4000.0, seed=3)
    assert a == make_flows(400, "10.1.0.0/16", "10.2.0.1", 4000.0, seed=3)
    sizes = sorted(f.size for f in a)
    assert 900 <= sizes[200] <= 1150
    assert {f.proto for f in a} == {"udp", "tcp"}
    assert len({(f.src_ip, f.sport) for f in a}) == 400
    assert sum(f.pps for f in a) == pytest.approx(4000.0)


def test_percentile():
    assert percentile([], 99) is None
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0


def test_sink_finds_each_flows_longest_silence():
    flow = FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 10001, 80, 100, 1.0)
    tpl = Template(flow, SRC_MAC, DST_MAC)
    sink = Sink()
    for seq, rx in ((0, 1_000_000), (1, 2_000_000), (2, 250_000_000), (3, 251_000_000)):
        sink.add(parse(bytes(tpl.stamp(seq, 0))), rx)
    row = sink.summary()["flows"]["1"]
    assert row["max_gap_ms"] == 248.0
    assert row["gaps"] == [[248.0, 250_000_000], [1.0, 251_000_000], [1.0, 2_000_000]]


def test_echo_udp_round_retries_and_skips_a_late_echo():
    """A round whose echo comes after the timeout is sent again; the late echo of the
    first send is skipped, not taken for the next round's."""
    import socket
    import threading
    import time

    from tools.trafficgen.echo import _udp_round

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))

    def serve():  # the first datagram answered late (after the client's timeout), twice
        for n in range(3):
            data, peer = srv.recvfrom(2048)
            if n == 0:
                time.sleep(0.3)
                srv.sendto(data.rstrip(b"\n") + b" 10.2.0.254:20001\n", peer)
            srv.sendto(data.rstrip(b"\n") + b" 10.2.0.254:20001\n", peer)

    threading.Thread(target=serve, daemon=True).start()
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.settimeout(0.2)
    try:
        addr, port = srv.getsockname()
        text, peer, late, retries = _udp_round(cli, b"udp-1-0\n", addr, port, 0, tries=5)
        assert (text, peer.strip(), retries) == ("udp-1-0", "10.2.0.254:20001", 1)
        # round 1: the echoes of round 0 still queued are skipped
        text, _, late1, retries1 = _udp_round(cli, b"udp-1-1\n", addr, port, 1, tries=5)
        assert text == "udp-1-1" and late + late1 >= 1 and retries1 == 0
    finally:
        cli.close()
        srv.close()


def test_flow_start_and_stop():
    f = FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 1, 1, 100, 1.0, start=2.5, stop=4.0)
    assert (f.start, f.stop) == (2.5, 4.0)
    assert FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 1, 1, 100, 1.0).stop is None
    with pytest.raises(FrameError, match="start"):
        FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 1, 1, 100, 1.0, start=-1.0)
    with pytest.raises(FrameError, match="stop must be after start"):
        FlowSpec(1, "10.1.0.1", "10.2.0.1", "udp", 1, 1, 100, 1.0, start=3.0, stop=3.0)
