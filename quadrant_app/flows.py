"""Flow bookkeeping: which flow goes to which instance, and its rates.

One :class:`FlowRecord` per flow steered to a chain instance, keyed by
(switch, 5-tuple).  Records are created when a flow is assigned and removed
when the switch reports the rule gone (flow-removed) or its chain or
instance goes away; per-flow packet and byte rates come from periodic flow
stats.  The records are what a switch reconnect re-syncs against, and what
migration (a later issue) moves.
"""

from __future__ import annotations

import dataclasses
import itertools

from quadrant_app.flowkey import FlowKey


@dataclasses.dataclass(eq=False, slots=True)
class FlowRecord:
    id: int
    dpid: int
    key: FlowKey
    chain_id: int
    instance_id: int
    created: float
    installed_at: float
    packets: int = 0
    bytes: int = 0
    pps: float = 0.0
    bps: float = 0.0
    stats_at: float | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "switch_dpid": self.dpid,
            "chain_id": self.chain_id,
            "instance_id": self.instance_id,
            **self.key.to_json(),
            "created": self.created,
            "packets": self.packets,
            "bytes": self.bytes,
            "pps": self.pps,
            "bps": self.bps,
        }


class FlowTable:
    def __init__(self):
        self._by_key: dict[tuple[int, FlowKey], FlowRecord] = {}
        self._by_id: dict[int, FlowRecord] = {}
        self._ids = itertools.count(1)

    def __len__(self):
        return len(self._by_key)

    def get(self, dpid: int, key: FlowKey) -> FlowRecord | None:
        return self._by_key.get((dpid, key))

    def add(self, dpid, key, chain_id, instance_id, now) -> FlowRecord:
        rec = FlowRecord(next(self._ids), dpid, key, chain_id, instance_id, now, now)
        self._by_key[(dpid, key)] = rec
        self._by_id[rec.id] = rec
        return rec

    def remove(self, rec: FlowRecord) -> None:
        del self._by_key[(rec.dpid, rec.key)]
        del self._by_id[rec.id]

    def of_switch(self, dpid: int) -> list[FlowRecord]:
        return [r for r in self._by_id.values() if r.dpid == dpid]

    def of_instance(self, instance_id: int) -> list[FlowRecord]:
        return [r for r in self._by_id.values() if r.instance_id == instance_id]

    def update_counts(self, rec: FlowRecord, packets: int, nbytes: int, now: float) -> None:
        """New absolute counters from the switch: derive the rates since the last sample."""
        if rec.stats_at is not None and now > rec.stats_at and packets >= rec.packets:
            dt = now - rec.stats_at
            rec.pps = (packets - rec.packets) / dt
            rec.bps = (nbytes - rec.bytes) * 8 / dt
        rec.packets, rec.bytes, rec.stats_at = packets, nbytes, now

    def page(self, after: int, limit: int, chain_ids=None) -> tuple[list[FlowRecord], int | None]:
        """Records with id > ``after`` in id order, at most ``limit``; and the next cursor."""
        out = []
        for fid, rec in self._by_id.items():  # insertion order is id order
            if fid <= after:
                continue
            if chain_ids is not None and rec.chain_id not in chain_ids:
                continue
            if len(out) == limit:
                return out, out[-1].id
            out.append(rec)
        return out, None
