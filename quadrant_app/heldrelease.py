"""Held packets go on in order when a chain that had no instance gets one.

While a chain has no instance, its new flows' packets wait at the controller
(``Core._hold``).  When an instance comes, each such flow gets its rule; but
its packets are not all with the controller yet: the switch has sent more as
packet-ins that the controller has not read, and goes on sending some for a
while after it has the rule.  Sent on as packet-outs, those would reach the
instance after newer packets the rule already forwarded.

So the release runs as a flow move does (docs/reliability.rst, *Packets
held at the controller and the flow's rule*), with the controller in the old
instance's place:

1. The new instance's agent *holds* the flows, ``marked`` (worker/flowhold.py):
   its first NF sets aside every packet of them except those that carry the
   marker tag, 802.1Q VID 4095 (cext/src/qs_flowhold.h).
2. The controller sends what it held, marked, then the flows' rules and a
   barrier.
3. A barrier's reply says the switch has the rules.  It may still send
   packet-ins of these flows for a while: Open vSwitch revalidates the
   datapath's cached flows after it replies (10 to 20 ms on this loaded
   machine), and a cached miss goes on sending packets to the controller
   meanwhile.  Those queue here too and go on marked, in order, every few
   milliseconds, until the flows have had no packet-in for
   ``release_quiet_s`` (at most ``release_wait_s``); then a last barrier's
   reply says the last marked packet-out has left the switch.
4. The agent *releases* the flows.  The release takes effect in the first NF
   once it has set aside what of them its port had queued then (it may have
   been parked until now): the marked packets, all older, went first.

Only the app's handover thread sends marked packets, each batch in one
buffer: a packet-in handler sending one of its own could overtake a batch
still waiting for room in os-ken's send queue (seen: a flow's 153rd packet
reached the instance between its 66th and 67th).

If the hold fails (no agent, no room, an old agent), the release falls back
to sending the packets plainly, as before: it may then reorder, never lose.

:class:`HeldRelease` is a part of :class:`quadrant_app.core.Core` (its base
class), using the core's ``instances``, ``flows``, ``metrics`` and
``_install``; it does no I/O.  The app runs the steps (``QuadrantApp._hand_over``).
"""

from __future__ import annotations

import itertools
import logging

from quadrant_app import ofbuild
from quadrant_app.flows import FlowRecord
from quadrant_app.ingress import Instance

LOG = logging.getLogger("quadrant.core")

MARK_TAG = b"\x81\x00\x0f\xff"  # 802.1Q, PCP 0, VID 4095: "for implementation use"
HOLD_MAX = 64  # flows an instance holds at once (QS_HOLD_MAX)


def mark(data) -> bytes:
    """``data`` (an Ethernet frame) with the marker tag after its MAC addresses."""
    data = bytes(data)
    return data[:12] + MARK_TAG + data[12:]


class Handover:
    """One release to one instance: its flows and, until the hold is on, their packets.

    Its flows' packets queue here, in arrival order, until the app's thread
    sends them (:meth:`HeldRelease.handover_take`).  Flows are named by key: a
    record may be gone (and its slot reused) by then.
    """

    __slots__ = ("id", "dpid", "instance_id", "keys", "packets", "held", "last_in")
    _ids = itertools.count(1)

    def __init__(self, dpid: int, instance_id: int, keys: list, packets: list):
        self.id = next(self._ids)
        self.dpid, self.instance_id = dpid, instance_id
        self.keys = keys  # flow keys, in the order their records were made
        self.packets = packets  # [(key, in_port, data)], in arrival order
        self.held = False  # the instance holds the flows: packets go marked
        self.last_in: float | None = None  # when the last packet-in of its flows came

    def __repr__(self):
        return (
            f"Handover({self.id}, instance={self.instance_id}, {len(self.keys)} flows, "
            f"{len(self.packets)} packets queued, held={self.held})"
        )


class HeldRelease:
    """The core's side of an ordered release (see the module's docstring)."""

    handing: dict  # (dpid, key) -> Handover, while one runs

    def _handover_start(self, inst: Instance, items: list) -> list:
        """Messages that release ``items`` (``(record, in_port, data)`` of flows just
        assigned to ``inst``, in arrival order): a :class:`Handover` for the app to run,
        and for flows past the hold's room or with ordering off, the plain sending."""
        flows = list(dict.fromkeys(rec for rec, _p, _d in items))
        if not self.settings.ordered_release:
            return self._plain(inst, items, flows)
        ordered = set(flows[:HOLD_MAX])
        h = Handover(inst.dpid, inst.id, [r.key for r in flows[:HOLD_MAX]],
                     [(r.key, p, d) for r, p, d in items if r in ordered])  # fmt: skip
        for key in h.keys:
            self.handing[(h.dpid, key)] = h
        self.metrics.ordered_releases.inc("started")
        rest = [it for it in items if it[0] not in ordered]
        return [(inst.dpid, h)] + self._plain(inst, rest, flows[HOLD_MAX:])

    def _plain(self, inst: Instance, items, flows, data_of=bytes) -> list:
        """Packet-outs of ``items`` (``(rec, in_port, data)``), in order, then ``flows``'
        rules: the release without the instance's hold."""
        msgs = []
        for rec, in_port, data in items:
            msgs += self._install(rec, inst, in_port, data_of(data), False)
        for rec in flows:
            msgs += self._install(rec, inst, None, None)
        return msgs

    def _handing_packet(self, rec: FlowRecord, in_port, data, now: float) -> list | None:
        """A packet of a flow in a running handover: queued for the app's thread.
        None: the flow is in none."""
        h = self.handing.get((rec.dpid, rec.key))
        if h is None or h.instance_id != rec.instance_id:
            return None
        h.last_in = now
        if len(h.packets) >= self.settings.hold_queue_len:
            self.metrics.held_dropped.inc("full")
        else:
            h.packets.append((rec.key, in_port, bytes(data)))
        return []

    def _live(self, h: Handover) -> tuple[Instance | None, dict]:
        """``h``'s instance and ``{key: record}`` of its flows still assigned to it."""
        inst = self.instances.by_id.get(h.instance_id)
        live = {}
        if inst is not None:
            for key in h.keys:
                rec = self.flows.get(h.dpid, key)
                if rec is not None and rec.instance_id == h.instance_id:
                    live[key] = rec
        return inst, live

    def _queued(self, h: Handover, live: dict) -> list:
        """``h``'s queued packets of live flows as ``(rec, in_port, data)``; counts the
        others dropped."""
        out = [(live[k], p, d) for k, p, d in h.packets if k in live]
        if len(out) < len(h.packets):
            self.metrics.held_dropped.inc("instance_gone", len(h.packets) - len(out))
        h.packets = []
        return out

    def handover_held(self, h: Handover) -> list:
        """The instance holds ``h``'s flows: the queued packets marked, the rules, a
        barrier (the app waits for its reply, then sends :meth:`handover_take` until
        the flows are quiet, then :meth:`handover_flush`)."""
        inst, live = self._live(h)
        queued = self._queued(h, live)
        h.held = True
        if inst is None:
            return self._barrier(h)
        self.metrics.ordered_releases.inc("held")
        self.metrics.marked_packet_outs.value += len(queued)
        return self._plain(inst, queued, list(live.values()), mark) + self._barrier(h)

    def handover_take(self, h: Handover) -> list:
        """The packets queued since, marked, in order."""
        inst, live = self._live(h)
        queued = self._queued(h, live)
        if inst is None or not queued:
            return []
        self.metrics.marked_packet_outs.value += len(queued)
        return self._plain(inst, queued, [], mark)

    def handover_flush(self, h: Handover) -> list:
        """The last queued packets and a barrier: its reply follows all of them."""
        return self.handover_take(h) + self._barrier(h)

    def _barrier(self, h: Handover) -> list:
        return [(h.dpid, self._xid(ofbuild.barrier()))]

    def handover_failed(self, h: Handover, why: str) -> list:
        """The hold could not be set up: send ``h``'s packets and rules plainly."""
        LOG.warning("instance %d: held flows released without ordering (%s): %d flows",
                    h.instance_id, why, len(h.keys))  # fmt: skip
        self.metrics.ordered_releases.inc("refused")
        self._handover_end(h)
        inst, live = self._live(h)
        queued = self._queued(h, live)
        return self._plain(inst, queued, list(live.values())) if inst is not None else []

    def handover_done(self, h: Handover) -> None:
        """The last marked packet has left the switch: the flows run as any other."""
        self._handover_end(h)

    def _handover_end(self, h: Handover) -> None:
        for key in h.keys:
            if self.handing.get((h.dpid, key)) is h:
                del self.handing[(h.dpid, key)]
