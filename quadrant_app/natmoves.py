"""The controller's memory of NAT connections moved off their address's instance.

A NAT connection moved from instance A (its mapping on A's address a) to B
keeps sending its replies to a (docs/state.rst, *Moving NAT flows*).  A
per-flow rule steers them to B; this table remembers, per switch, which
reply key belongs to which moved outbound flow, so that a reply packet-in
(its rule idled out) follows the outbound flow's instance, and which moved
connections go home to their address's instance when the instance they were
moved to goes away.  Pure bookkeeping over flow keys; the core asks it.
"""

from __future__ import annotations

from collections.abc import Iterable

from quadrant_app.flowkey import FlowKey
from quadrant_app.natpools import HANDOVER_MAX


class NatMoves:
    def __init__(self):
        self.reply_of: dict[tuple[int, FlowKey], FlowKey] = {}  # (dpid, outbound) -> reply
        self.outbound_of: dict[tuple[int, FlowKey], FlowKey] = {}  # (dpid, reply) -> outbound
        # (dpid, outbound) -> external address: its instance went away, it goes home
        self.home: dict[tuple[int, FlowKey], int] = {}

    def __bool__(self) -> bool:
        return bool(self.reply_of or self.home)

    def moved(self, dpid: int, outbound: FlowKey, reply: FlowKey) -> None:
        self.reply_of[(dpid, outbound)] = reply
        self.outbound_of[(dpid, reply)] = outbound

    def is_reply(self, dpid: int, key: FlowKey) -> bool:
        return (dpid, key) in self.outbound_of

    def outbound(self, dpid: int, reply: FlowKey) -> FlowKey | None:
        """The moved outbound flow whose reply ``reply`` is, if any."""
        return self.outbound_of.get((dpid, reply)) if self.outbound_of else None

    def forget(self, dpid: int, outbound: FlowKey) -> None:
        """The outbound flow's record is gone (the connection ended): stop steering."""
        reply = self.reply_of.pop((dpid, outbound), None)
        if reply is not None:
            self.outbound_of.pop((dpid, reply), None)

    def send_home(self, dpid_keys: Iterable[tuple[int, FlowKey]], owners: dict,
                  gone: int) -> list[tuple]:  # fmt: skip
        """Instance ``gone`` goes away with these outbound flows: the moved ones go back
        to their addresses' instances (``owners``: address -> instance), which end them
        from now on, and their next packet-ins are steered there.  Returns the agent
        requests that make each home instance the owner again (``nat_handover`` with
        owner 0, at most HANDOVER_MAX flows each)."""
        flows: dict[int, list] = {}
        workers = {}
        for dk in dpid_keys:
            reply = self.reply_of.get(dk)
            owner = owners.get(reply.dst) if reply is not None else None
            if owner is None or owner.id == gone:
                continue
            self.home[dk] = reply.dst
            flows.setdefault(owner.id, []).append(dk[1].to_json())
            workers[owner.id] = owner.worker
        return [
            ("nat_handover", iid, workers[iid], {"owner": 0, "flows": fl[k : k + HANDOVER_MAX]})
            for iid, fl in flows.items()
            for k in range(0, len(fl), HANDOVER_MAX)
        ]

    def take_home(self, dpid: int, key: FlowKey) -> int | None:
        """A packet-in of an outbound flow that went home: its address (once)."""
        return self.home.pop((dpid, key), None) if self.home else None
