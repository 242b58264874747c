"""The state API for Python NFs through the real runtime and Redis."""

from __future__ import annotations

from tests.dataplane.packets import udp
from tests.state.test_stateful_runtime import flow_packets, tags_by_sport

PYTAG = {"type": "python", "class": "tests.state.pystate_nfs:PyFlowTag", "config": {"first": 7}}


def test_python_nf_state_held_and_fetched_after_restart(run_stateful, nf_user):
    state = nf_user("py0-a")
    r = run_stateful(PYTAG, flow_packets(12, 3), state)
    assert tags_by_sport(r.output) == {2000 + f: {7 + f} for f in range(12)}
    s = r.summary["state"]
    assert s["updates"] == 12 and s["held"] >= 12 and s["released"] == s["held"]
    again = run_stateful(dict(PYTAG, config={"first": 900}), flow_packets(14, 1), state)
    tags = tags_by_sport(again.output)
    assert {p: tags[p] for p in range(2000, 2012)} == {2000 + f: {7 + f} for f in range(12)}
    assert tags[2012] | tags[2013] == {900, 901}
    assert again.summary["nf_stats"]["new_flows"] == 2


def test_python_nf_own_key_function(run_stateful, nf_user, redis_server):
    pkts = [udp(dst=f"10.9.0.{d}", sport=s) for s in range(5) for d in (1, 2, 3)]
    r = run_stateful(
        {"type": "python", "class": "tests.state.pystate_nfs:PyDstCounter"},
        pkts,
        nf_user("py1-b"),
    )
    assert len(r.output) == 15 and r.summary["state"]["fetched"] == 3
    admin = redis_server.client()
    for d in (1, 2, 3):
        key = b"py1-b:" + (bytes([10, 9, 0, d]) + bytes(12)).hex().encode()
        assert int.from_bytes(admin.get(key), "little") == 5
