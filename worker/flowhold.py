"""The agent's part of a flow move: hold and release flows, drain an instance.

A move of flows from instance A to instance B (docs/scaling.rst, *Migration*):
the controller asks B's agent to ``hold`` the flows (B's first NF sets their
packets aside, ``cext/src/qs_flowhold.h``), changes the switch's rules, asks A's
agent to ``drain`` A (wait until A has emitted every packet it had received
before the rules changed) and then B's agent to ``release`` the flows.

The controller's own packets take the same way when a chain that had no
instance gets one (docs/reliability.rst, *Packets held at the controller and
the flow's rule*): it holds the flows ``marked``, sends what it held with the
marker tag (let through at once), installs the rules and releases.  A release
takes effect in B once its first NF has set aside whatever of the flows its
port had queued then (the instance may have been parked until now).

Pure except for the clock and the counters passed in: :func:`parse_flows`
turns the controller's JSON flow keys into the region's keys, :func:`drain`
waits on an instance's counters.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import RpcError

PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
PORT_PROTOS = (6, 17, 132)
MAX_FLOWS = 64  # == QS_HOLD_MAX
# Packets a port's receive queue can hold at most (rx descriptors, or an
# af_packet ring): after this many more packets have been received, all that
# was queued before has been received, even if the queue never ran empty.
RX_QUEUE_BOUND = 4096


def _refuse(field: str, reason: str) -> RpcError:
    return RpcError(jsonrpc.REFUSED, f"{field}: {reason}", {"field": field})


def parse_flows(value, field: str = "params.flows") -> list[tuple]:
    """The controller's flow keys (``FlowKey.to_json``) as hold-region keys."""
    if not isinstance(value, list) or not value:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}: must be a non-empty array")
    if len(value) > MAX_FLOWS:
        raise _refuse(field, f"{len(value)} flows; an instance holds at most {MAX_FLOWS}")
    return [parse_flow(f, f"{field}[{i}]") for i, f in enumerate(value)]


def parse_flow(obj, field: str) -> tuple:
    if not isinstance(obj, dict):
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}: must be an object")
    try:
        src = ipaddress.ip_address(obj["src"])
        dst = ipaddress.ip_address(obj["dst"])
    except KeyError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}.{exc.args[0]}: missing") from None
    except ValueError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}: {exc}") from None
    if src.version != dst.version:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}: src and dst of different versions")
    proto = obj.get("proto")
    proto = PROTOS.get(proto, proto) if isinstance(proto, str) else proto
    if isinstance(proto, bool) or not isinstance(proto, int) or not 0 <= proto <= 255:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}.proto: {obj.get('proto')!r}")
    ports = []
    for name in ("sport", "dport"):
        p = obj.get(name, 0) if proto in PORT_PROTOS else 0
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{field}.{name}: {p!r}")
        ports.append(p)
    eth_type = 0x0800 if src.version == 4 else 0x86DD
    return (eth_type, proto, src.packed, dst.packed, *ports)


def drain(
    progress: Callable[[], tuple[int, int]],
    counters: Callable[[], tuple[int, int]],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    bound: int = RX_QUEUE_BOUND,
) -> dict:
    """Wait until the instance has emitted every packet queued at its port now.

    ``progress()``: ``(short_polls, rx_at_short)`` of its first NF (polls that
    emptied the port's queue; the received count at the last one);
    ``counters()``: ``(received, done)``, ``done`` = sent + dropped.  The
    packets queued now are all received once a poll after now empties the
    queue (then ``rx_at_short``), or once ``bound`` more packets have been
    received; they are all emitted once ``done`` reaches that mark.  Returns
    ``{"drained": bool, "waited_ms": ...}``; ``drained`` is false on timeout.
    """
    t0 = clock()
    polls0, _ = progress()
    rx0, _ = counters()
    mark = None
    while True:
        received, done = counters()
        if mark is None:
            polls, at_short = progress()
            if polls > polls0:
                mark = at_short
            elif received - rx0 >= bound:
                mark = rx0 + bound
        if mark is not None and done >= mark:
            return {"drained": True, "waited_ms": round((clock() - t0) * 1e3, 3)}
        if clock() - t0 >= timeout:
            return {"drained": False, "waited_ms": round((clock() - t0) * 1e3, 3)}
        sleep(0.0002)
