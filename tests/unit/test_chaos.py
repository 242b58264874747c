"""The chaos suite's pure parts: NAT mappings from Redis, state kept, echo accounting."""

from __future__ import annotations

import ipaddress
import struct

from tools.bench.chaos import new_wave, sink_outage
from tools.bench.chaos_nat import decode_mappings, echo_counts, echo_outage, state_kept

PREFIX = "c2n1"
INSIDE = "10.1.0.1"
EXT = "10.2.0.254"


def ip(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


def in_key(ext: str, port: int, proto: int, kind: int = 2) -> bytes:
    raw = struct.pack("=IIHHBB2x", ip(ext), 0, port, 0, proto, kind)
    return f"{PREFIX}:".encode() + raw.hex().encode()


def in_val(inside: str, iport: int, rport: int, remote: str) -> bytes:
    return struct.pack("=IHHI", ip(inside), iport, rport, ip(remote))


def test_in_keys_decode_to_inside_endpoint_and_external_port():
    raw = {
        in_key(EXT, 20001, 17): in_val(INSIDE, 40000, 5353, "10.2.0.1"),
        in_key(EXT, 20002, 6): in_val(INSIDE, 40001, 5353, "10.2.0.1"),
        in_key(EXT, 20003, 6, kind=1): struct.pack("=IHH", ip(EXT), 20003, 0),  # an out key
        b"c9n1:" + in_key(EXT, 20004, 6)[5:]: in_val(INSIDE, 40002, 5353, "10.2.0.1"),
        f"{PREFIX}:zz".encode(): b"x" * 12,
    }
    assert decode_mappings(raw, PREFIX) == {
        ("udp", INSIDE, 40000): (EXT, 20001),
        ("tcp", INSIDE, 40001): (EXT, 20002),
    }


def conn(kind="udp", port=40000, ext=20001, rounds=3, **more):
    return {"kind": kind, "local_port": port, "peers": [f"{EXT}:{ext}"],
            "seqs": list(range(rounds)), "times_ns": [], **more}  # fmt: skip


def test_state_kept_needs_every_round_and_the_same_mapping_before_after_and_seen():
    m = {("udp", INSIDE, 40000): (EXT, 20001), ("tcp", INSIDE, 40001): (EXT, 20002)}
    good = [conn(), conn("tcp", 40001, 20002)]
    assert state_kept(good, m, m, INSIDE, 3) == (True, [])
    moved = {**m, ("udp", INSIDE, 40000): (EXT, 20009)}
    kept, why = state_kept(good, m, moved, INSIDE, 3)
    assert not kept and "udp:40000" in why[0]
    assert not state_kept([conn(rounds=2)], m, m, INSIDE, 3)[0]  # a round missing
    assert not state_kept([conn(error="TimeoutError: timed out")], m, m, INSIDE, 3)[0]
    assert not state_kept([{**conn(), "peers": [f"{EXT}:20001", f"{EXT}:20005"]}], m, m, INSIDE, 3)[
        0
    ]  # two external ports in one connection's life
    assert not state_kept([], m, m, INSIDE, 3)[0]
    assert not state_kept([conn(), conn(port=40001)], m, m, INSIDE, 3)[0]  # one port, two


def test_echo_counts_resends_less_late_echoes_and_tcp_retransmissions():
    reports = [conn(retries=3, late=1), conn("tcp", retrans=2), conn(rounds=2, error="x"),
               {**conn(), "seqs": [0, 2, 1]}]  # fmt: skip
    assert echo_counts(reports, 3) == {"lost": 4, "rounds": 11, "expected": 12, "failed": 1,
                                       "reordered": 1}  # fmt: skip


def test_echo_outage_finds_the_silence_across_the_fault():
    ms = 1_000_000
    steady = conn(times_ns=[0, 100 * ms, 200 * ms, 300 * ms])
    hit = conn(times_ns=[0, 100 * ms, 1600 * ms, 1700 * ms])
    later = conn(times_ns=[0, 100 * ms, 900 * ms])
    t0 = 150 * ms
    assert echo_outage([steady], t0, 1e9, 350 * ms) == (None, None)
    assert echo_outage([steady, hit, later], t0, 1e9, 350 * ms) == (1450.0, 1500.0)
    assert echo_outage([hit], t0, 1e9, 2000 * ms) == (None, None)  # within the quiet bound


def test_sink_outage_counts_only_flows_that_lost_packets():
    ms = 1_000_000
    report = {"0": {"received": 10, "gaps": [[400.0, 900 * ms]]},
              "1": {"received": 12, "gaps": [[300.0, 800 * ms]]}}  # fmt: skip
    assert sink_outage(report, {0: 12, 1: 12}, 600 * ms, 1e9) == (300.0, 400.0)
    assert sink_outage(report, {0: 10, 1: 12}, 600 * ms, 1e9) == (None, None)


def test_sink_outage_takes_the_first_silence_after_the_fault_not_the_longest():
    ms = 1_000_000
    # the loss at the fault (60 ms, ending 50 ms after it), then a longer background
    # silence later in the window, and jitter below the floor
    report = {"0": {"received": 9, "gaps": [[150.0, 900 * ms], [60.0, 650 * ms],
                                            [30.0, 620 * ms]]}}  # fmt: skip
    assert sink_outage(report, {0: 10}, 600 * ms, 1e9, floor_ms=40) == (50.0, 60.0)


def test_new_wave_times_first_echoes_from_the_component_back():
    ms = 1_000_000
    reports = [conn(times_ns=[1500 * ms, 1600 * ms]), conn(times_ns=[1200 * ms]),
               conn(times_ns=[], error="TimeoutError: timed out")]  # fmt: skip
    assert new_wave(reports, 1000 * ms) == {
        "opened": 3, "completed": 2, "errors": ["TimeoutError: timed out"],
        "first_echo_ms": 200.0, "last_first_echo_ms": 500.0,
    }  # fmt: skip
