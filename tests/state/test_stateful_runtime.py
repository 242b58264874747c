"""The state API through the real runtime and a real Redis: cache, one round trip, holding."""

from __future__ import annotations

import threading
import time

from cext.state import key_bytes
from scapy.all import Ether, raw

from tests.dataplane.packets import non_ip, udp
from worker import nf_stats

FLOWTAG = {"type": "native", "class": "cext.nf_flowtag:FlowTagNF", "config": {"first": 100}}


def ip(s: str) -> int:
    a, b, c, d = (int(x) for x in s.split("."))
    return a << 24 | b << 16 | c << 8 | d


def tag_of(frame: bytes) -> int:
    return int.from_bytes(frame[8:12], "big")


_TEMPLATE = bytearray(raw(udp(sport=0, dport=53)))
_TEMPLATE[40:42] = b"\0\0"  # no UDP checksum: the source port can be patched in


def flow_packets(nflows: int, per_flow: int, base_port=2000) -> list[bytes]:
    """``per_flow`` rounds over ``nflows`` UDP flows (10.1.0.1 -> 10.2.0.1:53), interleaved."""
    out = []
    for _ in range(per_flow):
        for f in range(nflows):
            frame = bytearray(_TEMPLATE)
            frame[34:36] = (base_port + f).to_bytes(2, "big")
            out.append(bytes(frame))
    return out


def tags_by_sport(frames) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for f in frames:
        if f[12:14] == b"\x08\x00" and f[23] == 17:
            out.setdefault(int.from_bytes(f[34:36], "big"), set()).add(tag_of(f))
    return out


def redis_key(prefix: str, sport: int) -> bytes:
    k = key_bytes(ip("10.1.0.1"), ip("10.2.0.1"), sport, 53, 17)
    return f"{prefix}:{k.hex()}".encode()


def test_misses_fetched_once_per_batch_and_written(run_stateful, nf_user, redis_server):
    pkts = flow_packets(40, 4) + [Ether(raw_frame) for raw_frame in non_ip().values()]
    r = run_stateful(FLOWTAG, pkts, nf_user("tag0-a"), batch=32)
    st = r.summary["state"]
    assert len(r.output) == len(pkts)  # all released: every write acknowledged
    tags = tags_by_sport(r.output)
    assert tags == {2000 + f: {100 + f} for f in range(40)}  # one number per flow, kept
    # 40 keys, each fetched once (misses), then cache hits; one MGET per batch with misses
    assert st["fetched"] == 40 and st["updates"] == 40
    assert st["fetch_round_trips"] == st["fetch_batches"] == 2  # flows 0-31, then 32-39
    assert st["hits"] == 160 - 40
    assert st["held"] >= 40 and st["released"] == st["held"] and st["held_dropped"] == 0
    assert r.summary["nf_stats"]["new_flows"] == 40
    admin = redis_server.client()
    assert int.from_bytes(admin.get(redis_key("tag0-a", 2000)), "little") == 100
    assert int.from_bytes(admin.get(redis_key("tag0-a", 2039)), "little") == 139


def test_restarted_instance_fetches_state_from_redis(run_stateful, nf_user):
    state = nf_user("tag1-b")
    first = run_stateful(FLOWTAG, flow_packets(20, 1), state)
    assert first.summary["nf_stats"]["new_flows"] == 20
    # a new runtime process with the same prefix: an empty cache, the state in Redis
    nf = dict(FLOWTAG, config={"first": 5000})
    again = run_stateful(nf, flow_packets(25, 2), state)
    tags = tags_by_sport(again.output)
    assert {s: tags[s] for s in range(2000, 2020)} == {2000 + f: {100 + f} for f in range(20)}
    assert set().union(*(tags[s] for s in range(2020, 2025))) == set(range(5000, 5005))
    s = again.summary["state"]
    assert s["fetched"] == 25 and s["updates"] == 5
    assert again.summary["nf_stats"]["new_flows"] == 5


def test_held_packets_wait_for_the_write_ack(run_stateful, nf_user, redis_server):
    state = nf_user("tag2-c")
    run_stateful(FLOWTAG, flow_packets(10, 1), state)  # flows 2000-2009 known
    admin = redis_server.client()
    # Redis executes no writes (reads go on) until the run is over: nothing is acked
    admin.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
    try:
        pkts = flow_packets(10, 1) + flow_packets(10, 1, base_port=3000)
        r = run_stateful(FLOWTAG, pkts, state | {"drain_s": 0.5})
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    s = r.summary["state"]
    # the known flows went out; the new ones were held and, never acknowledged, never sent
    assert [tag_of(f) for f in r.output] == list(range(100, 110))
    assert s["held"] == 10 and s["released"] == 0 and s["held_dropped"] == 10


def _unpause_when_received(tmp_path, admin, packets: int, hold_s: float):
    """Lift the write pause ``hold_s`` after the runtime has received ``packets``."""

    def run():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in tmp_path.glob("st*.stats"):
                try:
                    if nf_stats.read(path).counters["rx_packets"] >= packets:
                        time.sleep(hold_s)
                        admin.execute_command("CLIENT", "UNPAUSE")
                        return
                except (OSError, ValueError, TimeoutError):
                    pass  # not written yet
            time.sleep(0.01)
        admin.execute_command("CLIENT", "UNPAUSE")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_held_packets_released_when_acked_later(run_stateful, nf_user, redis_server, tmp_path):
    state = nf_user("tag3-d")
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
    waiter = _unpause_when_received(tmp_path, redis_server.client(), 8, 0.3)
    try:
        r = run_stateful(FLOWTAG, flow_packets(8, 1), state | {"drain_s": 60.0})
    finally:
        waiter.join(130)
        admin.execute_command("CLIENT", "UNPAUSE")
    s = r.summary["state"]
    assert len(r.output) == 8 and s["released"] == 8 and s["held_dropped"] == 0
    # they waited (at least the 0.3 s) for the pause to end: released after the ack
    assert s["held_p99_us"] > 250_000


def test_bound_on_held_packets_stalls_rx_loses_nothing(run_stateful, nf_user):
    # every packet is a new flow: every packet is held; at most one batch may be held
    pkts = flow_packets(600, 1)
    r = run_stateful(FLOWTAG, pkts, nf_user("tag4-e", max_held=32), batch=32)
    s = r.summary["state"]
    assert len(r.output) == 600 and s["released"] == 600
    assert s["max_held_seen"] <= 32 and s["stalls"] > 0
    assert sorted(tag_of(f) for f in r.output) == list(range(100, 700))


def test_local_store_holds_nothing(run_stateful):
    r = run_stateful(FLOWTAG, flow_packets(30, 3), {"store": "local"})
    s = r.summary["state"]
    assert len(r.output) == 90 and s["held"] == 0 and s["fetch_round_trips"] == 0
    assert s["fetched"] == 30 and s["updates"] == 30


def test_another_nfs_prefix_is_refused_by_redis(run_stateful, nf_user):
    mine = nf_user("tag5-f")
    nf_user("tag6-g")
    stolen = mine | {"prefix": "tag6-g"}  # my user, the other NF's key space
    r = run_stateful(FLOWTAG, flow_packets(4, 1), stolen, expect_rc=4)
    assert "no permissions to access one of the keys" in r.stderr and not r.output


def test_missing_state_section_is_a_config_error(tmp_path):
    from tests.dataplane.conftest import nf_config, run_config

    cfg = nf_config(tmp_path, "stnostate", FLOWTAG, "net_null0", None, max_packets=1)
    r = run_config(tmp_path, cfg)
    assert r.returncode == 2 and "state: missing" in r.stderr


def test_write_refused_stops_the_runtime_nothing_released(run_stateful, nf_user, redis_server):
    state = nf_user("tag7-h")
    # the NF's user may read but no longer write: the first write group is refused
    redis_server.client().execute_command("ACL", "SETUSER", state["user"], "-mset")
    r = run_stateful(FLOWTAG, flow_packets(6, 2), state, expect_rc=4)
    assert "write refused" in r.stderr and "no permissions" in r.stderr
    assert r.output == []  # every packet of those flows waited for the write


def test_cache_eviction_refetches_from_redis(run_stateful, nf_user):
    # 7000 flows in a cache of 8192 entries: it evicts clean entries as it nears full;
    # flows seen again keep their numbers (fetched again from Redis)
    pkts = flow_packets(7000, 1, base_port=1000) + flow_packets(300, 1, base_port=1000)
    r = run_stateful(FLOWTAG, pkts, nf_user("tag8-i", cache_entries=8192), batch=64)
    s = r.summary["state"]
    assert s["evictions"] > 0 and s["fetched"] > 7000 and s["updates"] == 7000
    tags = tags_by_sport(r.output)
    assert all(tags[1000 + f] == {100 + f} for f in range(300))
    assert len(r.output) == 7300
