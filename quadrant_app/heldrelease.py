"""Held packets go on in order when a chain that had no instance gets one.

While a chain has no instance, its new flows' packets wait at the controller
(``Core._hold``).  When an instance comes, each such flow gets its rule; but
its packets are not all with the controller yet: the switch has sent more as
packet-ins that the controller has not read.  Sent on as packet-outs, those
would reach the instance after newer packets the rule already forwarded.

So the release runs as a flow move does (docs/reliability.rst, *Held
packets*), with the controller in the old instance's place:

1. The new instance's agent *holds* the flows, ``marked`` (worker/flowhold.py):
   its first NF sets aside every packet of them except those that carry the
   marker tag, 802.1Q VID 4095 (cext/src/qs_flowhold.h).
2. The controller sends what it held, marked, then the flows' rules and a
   barrier.  A packet-in of these flows read meanwhile goes on marked too.
3. Once the barrier's reply is in, every packet-in the switch made before the
   rules were in place has been read (they came before the reply), and a
   second barrier's reply says the last marked packet-out has left the switch.
4. The agent *releases* the flows once the first NF has received what its
   port had queued (``after_rx``): the marked packets, all older, went first.

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

    ``marking`` is false while the instance's hold is being set up (packets
    queue here, in arrival order) and true from then on (they go out marked).
    Flows are named by key: a record may be gone (and its slot reused) by then.
    """

    __slots__ = ("id", "dpid", "instance_id", "keys", "packets", "marking")
    _ids = itertools.count(1)

    def __init__(self, dpid: int, instance_id: int, keys: list, packets: list):
        self.id = next(self._ids)
        self.dpid, self.instance_id = dpid, instance_id
        self.keys = keys  # flow keys, in the order their records were made
        self.packets = packets  # [(key, in_port, data)], in arrival order
        self.marking = False

    def __repr__(self):
        return (
            f"Handover({self.id}, instance={self.instance_id}, {len(self.keys)} flows, "
            f"{len(self.packets)} packets queued, marking={self.marking})"
        )


class HeldRelease:
    """The core's side of an ordered release (see the module's docstring)."""

    handing: dict  # (dpid, key) -> Handover, while one runs

    def _hand_over(self, inst: Instance, items: list) -> list:
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

    def _handing_packet(self, rec: FlowRecord, in_port, data) -> list | None:
        """A packet of a flow in a running handover: queued, or sent on marked.
        None: the flow is in none."""
        h = self.handing.get((rec.dpid, rec.key))
        if h is None or h.instance_id != rec.instance_id:
            return None
        if not h.marking:
            if len(h.packets) >= self.settings.hold_queue_len:
                self.metrics.held_dropped.inc("full")
            else:
                h.packets.append((rec.key, in_port, bytes(data)))
            return []
        self.metrics.marked_packet_outs.value += 1
        return self._install(rec, self.instances.by_id[rec.instance_id], in_port, mark(data),
                             False)  # fmt: skip

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
        barrier (the app waits for its reply, then :meth:`handover_flush`)."""
        inst, live = self._live(h)
        queued = self._queued(h, live)
        h.marking = True
        if inst is None:
            return self.handover_flush(h)
        self.metrics.ordered_releases.inc("held")
        self.metrics.marked_packet_outs.value += len(queued)
        return self._plain(inst, queued, list(live.values()), mark) + self.handover_flush(h)

    def handover_flush(self, h: Handover) -> list:
        """A barrier on ``h``'s switch: its reply follows every message sent before."""
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
