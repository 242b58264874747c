"""The agent's side of a flow move, pure: flow keys from JSON, the drain rule."""

import pytest

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import RpcError
from worker.flowhold import drain, parse_flow, parse_flows

KEY = {"src": "10.1.0.7", "dst": "10.2.0.1", "proto": "udp", "sport": 7000, "dport": 80}


def test_keys_from_the_controllers_json():
    assert parse_flow(KEY, "f") == (
        0x0800,
        17,
        bytes([10, 1, 0, 7]),
        bytes([10, 2, 0, 1]),
        7000,
        80,
    )
    v6 = parse_flow({"src": "2001:db8::1", "dst": "2001:db8::2", "proto": 6, "sport": 1,
                     "dport": 2}, "f")  # fmt: skip
    assert v6[0] == 0x86DD and len(v6[2]) == 16 and v6[4:] == (1, 2)
    # no ports for other protocols, whatever the JSON says
    assert parse_flow({"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "icmp"}, "f")[4:] == (0, 0)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({**KEY, "src": "10.1.0.300"}, "params.flows[0]"),
        ({**KEY, "dst": "2001:db8::1"}, "params.flows[0]"),
        ({k: v for k, v in KEY.items() if k != "dst"}, "params.flows[0].dst"),
        ({**KEY, "proto": "gre"}, "params.flows[0].proto"),
        ({**KEY, "sport": 70000}, "params.flows[0].sport"),
        ({**KEY, "dport": True}, "params.flows[0].dport"),
        ("10.1.0.7", "params.flows[0]"),
    ],
)
def test_bad_keys_are_refused_with_the_field(bad, field):
    with pytest.raises(RpcError) as e:
        parse_flows([bad])
    assert e.value.code == jsonrpc.INVALID_PARAMS and e.value.message.startswith(field)


def test_too_many_or_no_flows():
    with pytest.raises(RpcError, match="at most 64"):
        parse_flows([KEY] * 65)
    with pytest.raises(RpcError, match="non-empty array"):
        parse_flows([])


class Fake:
    """An instance's counters moving with a fake clock."""

    def __init__(self):
        self.t = 0.0
        self.polls, self.at_short, self.rx, self.done = 5, 100, 100, 90
        self.script = []  # (time, changes)

    def clock(self):
        return self.t

    def sleep(self, s):
        self.t += s
        while self.script and self.script[0][0] <= self.t:
            for k, v in self.script.pop(0)[1].items():
                setattr(self, k, v)

    def progress(self):
        return self.polls, self.at_short

    def counters(self):
        return self.rx, self.done


def test_drain_waits_for_a_poll_that_empties_the_queue_then_for_the_output():
    f = Fake()
    f.script = [(0.001, {"rx": 130}), (0.002, {"polls": 6, "at_short": 140, "rx": 140}),
                (0.003, {"done": 139}), (0.004, {"done": 140})]  # fmt: skip
    out = drain(f.progress, f.counters, 1.0, f.clock, f.sleep)
    assert out["drained"] and 3.9 <= out["waited_ms"] <= 4.5


def test_a_saturated_instance_drains_after_a_queue_worth_of_packets():
    f = Fake()  # never an empty poll: the mark is rx0 + bound
    f.script = [(0.001, {"rx": 100 + 4096, "done": 100 + 4095}), (0.002, {"done": 100 + 4096})]
    assert drain(f.progress, f.counters, 1.0, f.clock, f.sleep)["drained"]


def test_drain_gives_up_at_its_timeout():
    f = Fake()
    out = drain(f.progress, f.counters, 0.01, f.clock, f.sleep)
    assert out == {"drained": False, "waited_ms": pytest.approx(10.0, abs=0.5)}
