"""Flow bookkeeping: which flow goes to which instance, and its rates.

One record per flow steered to a chain instance, keyed by (switch, 5-tuple).
Records are created when a flow is assigned and removed when the switch
reports the rule gone (flow-removed) or its chain or instance goes away;
per-flow packet and byte rates come from periodic flow stats.  The records
are what a switch reconnect re-syncs against, and what migration moves.

The table is kept out of the garbage collector's sight, because it holds
hundreds of thousands of records: each record is one flat, exact tuple of
numbers (which CPython stops tracking the first time it looks at it; a
nested tuple, or a ``FlowKey``, a tuple subclass, it would keep tracking
for a collection longer, or for ever) plus a slot in
``array`` columns for the fields that change.  With one object per record,
a collection of the older generations had to walk them all (0.8 s at 800k
flows).  :class:`FlowRecord` is a short-lived view of one slot; do not keep
it across calls that may remove flows.
"""

from __future__ import annotations

import math
from array import array

from quadrant_app.flowkey import FlowKey

_NAN = float("nan")
# Fields of the immutable part of a record, by index: id, switch, chain,
# instance, created, then the six fields of the flow key.
_ID, _DPID, _CHAIN, _INSTANCE, _CREATED = range(5)
_KEY = slice(5, 11)


class FlowRecord:
    """A view of one flow's record in a :class:`FlowTable`."""

    __slots__ = ("_table", "_slot")

    def __init__(self, table: FlowTable, slot: int):
        self._table, self._slot = table, slot

    def __eq__(self, other):
        return (
            isinstance(other, FlowRecord)
            and other._table is self._table
            and other._slot == self._slot
        )

    def __hash__(self):
        return hash((id(self._table), self._slot))

    def __repr__(self):
        return f"FlowRecord(id={self.id}, key={self.key}, instance={self.instance_id})"

    @property
    def id(self) -> int:
        return self._table.ident[self._slot][_ID]

    @property
    def dpid(self) -> int:
        return self._table.ident[self._slot][_DPID]

    @property
    def key(self) -> FlowKey:
        return FlowKey._make(self._table.ident[self._slot][_KEY])

    @property
    def chain_id(self) -> int:
        return self._table.ident[self._slot][_CHAIN]

    @property
    def instance_id(self) -> int:
        return self._table.ident[self._slot][_INSTANCE]

    @property
    def created(self) -> float:
        return self._table.ident[self._slot][_CREATED]

    @property
    def installed_at(self) -> float:
        return self._table.installed_at[self._slot]

    @installed_at.setter
    def installed_at(self, value: float) -> None:
        self._table.installed_at[self._slot] = value

    @property
    def packets(self) -> int:
        return self._table.packets[self._slot]

    @property
    def bytes(self) -> int:
        return self._table.nbytes[self._slot]

    @property
    def pps(self) -> float:
        return self._table.pps[self._slot]

    @property
    def bps(self) -> float:
        return self._table.bps[self._slot]

    @property
    def stats_at(self) -> float | None:
        t = self._table.stats_at[self._slot]
        return None if math.isnan(t) else t

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
        self._slots: dict[tuple, int] = {}  # (dpid, *key) -> slot
        self._by_id: dict[int, int] = {}  # id -> slot, in id order
        self._free: list[int] = []
        self._next_id = 1
        self.ident: list = []  # slot -> (id, dpid, chain_id, instance_id, created, *key) or None
        self.installed_at = array("d")
        self.packets = array("q")
        self.nbytes = array("q")
        self.pps = array("d")
        self.bps = array("d")
        self.stats_at = array("d")

    def __len__(self):
        return len(self._slots)

    def get(self, dpid: int, key: FlowKey) -> FlowRecord | None:
        slot = self._slots.get((dpid, *key))
        return None if slot is None else FlowRecord(self, slot)

    def add(self, dpid, key, chain_id, instance_id, now) -> FlowRecord:
        fid = self._next_id
        self._next_id += 1
        ident = (fid, dpid, chain_id, instance_id, now, *key)
        if self._free:
            slot = self._free.pop()
            self.ident[slot] = ident
            self.installed_at[slot] = now
            self.packets[slot] = self.nbytes[slot] = 0
            self.pps[slot] = self.bps[slot] = 0.0
            self.stats_at[slot] = _NAN
        else:
            slot = len(self.ident)
            self.ident.append(ident)
            self.installed_at.append(now)
            self.packets.append(0)
            self.nbytes.append(0)
            self.pps.append(0.0)
            self.bps.append(0.0)
            self.stats_at.append(_NAN)
        self._slots[(dpid, *key)] = slot
        self._by_id[fid] = slot
        return FlowRecord(self, slot)

    def remove(self, rec: FlowRecord) -> None:
        slot = rec._slot
        ident = self.ident[slot]
        fid, dpid = ident[_ID], ident[_DPID]
        del self._slots[(dpid, *ident[_KEY])]
        del self._by_id[fid]
        self.ident[slot] = None
        self._free.append(slot)

    def by_id(self, fid: int) -> FlowRecord | None:
        slot = self._by_id.get(fid)
        return None if slot is None else FlowRecord(self, slot)

    def move(self, rec: FlowRecord, instance_id: int, now: float) -> None:
        """The flow now goes to ``instance_id`` (migration): its new rule starts counting
        from zero, so the counters restart; the last measured rate stays until the
        next sample."""
        s = rec._slot
        ident = self.ident[s]
        self.ident[s] = (*ident[:_INSTANCE], instance_id, *ident[_INSTANCE + 1 :])
        self.installed_at[s] = now
        self.packets[s] = self.nbytes[s] = 0
        self.stats_at[s] = now

    def _records(self, index: int, value: int) -> list[FlowRecord]:
        return [
            FlowRecord(self, slot)
            for slot, ident in enumerate(self.ident)
            if ident is not None and ident[index] == value
        ]

    def of_switch(self, dpid: int) -> list[FlowRecord]:
        return self._records(_DPID, dpid)

    def of_instance(self, instance_id: int) -> list[FlowRecord]:
        return self._records(_INSTANCE, instance_id)

    def update_counts(self, rec: FlowRecord, packets: int, nbytes: int, now: float) -> None:
        """New absolute counters from the switch: derive the rates since the last sample."""
        s = rec._slot
        last = self.stats_at[s]
        if not math.isnan(last) and now > last and packets >= self.packets[s]:
            dt = now - last
            self.pps[s] = (packets - self.packets[s]) / dt
            self.bps[s] = (nbytes - self.nbytes[s]) * 8 / dt
        self.packets[s], self.nbytes[s], self.stats_at[s] = packets, nbytes, now

    def page(self, after: int, limit: int, chain_ids=None) -> tuple[list[FlowRecord], int | None]:
        """Records with id > ``after`` in id order, at most ``limit``; and the next cursor."""
        out: list[FlowRecord] = []
        for fid, slot in self._by_id.items():  # insertion order is id order
            if fid <= after:
                continue
            if chain_ids is not None and self.ident[slot][_CHAIN] not in chain_ids:
                continue
            if len(out) == limit:
                return out, out[-1].id
            out.append(FlowRecord(self, slot))
        return out, None
