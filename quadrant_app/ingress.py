"""Which chain takes a new flow, and which of its instances gets it.

:class:`ChainTable` holds the registered chains in :func:`~quadrant_app.chains.precedence`
order; the first whose filter matches a flow takes it.

:class:`InstanceRegistry` holds every chain instance the controller knows,
attached ones (taking flows) and detached ones (the warm pool).  It is the one
place instances are added, removed, attached, detached and given stats; the
worker agent feeds the same calls.  For each (chain, switch) it keeps the
candidate list: attached instances on that switch whose estimated p99 is below
``alpha * slo_us`` and whose load is below ``load_cap``, most loaded first, so
a packet-in takes the head in O(1); the list is rebuilt only when an
instance's stats or state change.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque

from quadrant_app import natpools
from quadrant_app.chains import ChainSpec, ConflictError, SpecError, precedence
from quadrant_app.topology import Topology


@dataclasses.dataclass(eq=False)
class Chain:
    id: int
    tenant: str
    spec: ChainSpec
    seq: int
    created: float
    sort_key: tuple = ()
    flows: int = 0
    setups: int = 0
    held: deque = dataclasses.field(default_factory=deque)
    shortage_since: float | None = None

    @property
    def threshold_us(self) -> float:
        return self.spec.scaling.alpha * self.spec.slo_us


class ChainTable:
    def __init__(self):
        self.by_id: dict[int, Chain] = {}
        self._ordered: list[Chain] = []
        # every NAT external address (int) -> its chain, held by an instance or not
        self.nat_addresses: dict[int, Chain] = {}
        self._next_id = 1
        self._next_seq = 0

    def __iter__(self):
        return iter(self._ordered)

    def __len__(self):
        return len(self._ordered)

    def conflict(self, tenant: str, spec: ChainSpec) -> Chain | None:
        """A chain of the same tenant at the same priority whose filter overlaps."""
        for chain in self._ordered:
            if (
                chain.tenant == tenant
                and chain.spec.priority == spec.priority
                and chain.spec.filter.overlaps(spec.filter)
            ):
                return chain
        return None

    def add(self, tenant: str, spec: ChainSpec, now: float) -> Chain:
        other = self.conflict(tenant, spec)
        if other is not None:
            raise ConflictError(
                "filter",
                f"overlaps the filter of chain {other.id} ({other.spec.name!r}) at the same "
                f"priority {spec.priority}; give one of them another priority",
            )
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        cid, self._next_id = self._next_id, self._next_id + 1
        return self._insert(Chain(cid, tenant, spec, seq, now, precedence(spec, seq)))

    def _insert(self, chain: Chain) -> Chain:
        self.by_id[chain.id] = chain
        for addr in natpools.addresses(chain.spec):
            self.nat_addresses[addr] = chain
        bisect.insort(self._ordered, chain, key=lambda c: c.sort_key)
        return chain

    def restore(self, chain_id: int, tenant: str, spec: ChainSpec, seq: int, created: float):
        """A chain from the controller's store, with its id and registration order."""
        if chain_id in self.by_id:
            raise ConflictError("id", f"chain {chain_id} exists")
        self._next_id = max(self._next_id, chain_id + 1)
        self._next_seq = max(self._next_seq, seq + 1)
        return self._insert(Chain(chain_id, tenant, spec, seq, created, precedence(spec, seq)))

    def peek_ids(self) -> tuple[int, int]:
        """The next chain id and registration number (for the store)."""
        return self._next_id, self._next_seq

    def set_ids(self, next_id: int, next_seq: int) -> None:
        """Never hand out an id or a number again that a stored chain had."""
        self._next_id = max(self._next_id, int(next_id))
        self._next_seq = max(self._next_seq, int(next_seq))

    def remove(self, chain_id: int) -> Chain:
        chain = self.by_id.pop(chain_id)
        self._ordered.remove(chain)
        for addr in natpools.addresses(chain.spec):
            self.nat_addresses.pop(addr, None)
        return chain

    def match(self, key) -> Chain | None:
        for chain in self._ordered:
            if chain.spec.filter.matches(key):
                return chain
        return None


@dataclasses.dataclass(eq=False)
class Instance:
    id: int
    chain_id: int
    worker: str
    vf_mac: str
    core: int
    dpid: int
    port: int  # the worker's switch port
    attached: bool
    load: float = 0.0  # share of the core's capacity, 0..1
    p99_us: float = 0.0  # estimated p99 latency (what the candidate rule judges)
    batch_p99_us: float = 0.0  # p99 per-batch execution time its agent last reported
    pps: float = 0.0  # packet rate its agent last reported
    stats_at: float | None = None
    flows: int = 0
    setups: int = 0
    nat_slot: int | None = None  # the chain NAT's external entry it owns (natpools.py)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "chain_id": self.chain_id,
            "worker": self.worker,
            "vf_mac": self.vf_mac,
            "core": self.core,
            "attached": self.attached,
            "load": self.load,
            "p99_us": self.p99_us,
            "batch_p99_us": self.batch_p99_us,
            "pps": self.pps,
            "flows": self.flows,
            "nat_slot": self.nat_slot,
        }


class InstanceRegistry:
    def __init__(self, topology: Topology, chains: ChainTable, on_pool_attach=None):
        self.topology = topology
        self.on_pool_attach = on_pool_attach
        self.chains = chains
        self.by_id: dict[int, Instance] = {}
        self._next_id = 1
        self._candidates: dict[tuple[int, int], list[Instance]] = {}
        self._workers = {w.name: w for w in topology.workers}
        self._dpids = {s.name: s.dpid for s in topology.switches}
        # Requests for the worker agents, (method, instance id, worker): attach
        # a warm-pool instance, tear down a removed one; the orchestrator drains it.
        self.agent_requests: list[tuple[str, int, str]] = []
        # a NAT external address (IPv4, int) -> the instance owning it (natpools.py)
        self.nat_owner: dict[int, Instance] = {}

    def of_chain(self, chain_id: int) -> list[Instance]:
        return [i for i in self.by_id.values() if i.chain_id == chain_id]

    def reserve_id(self) -> int:
        """An instance id for an instance still being prepared (see :meth:`add`)."""
        iid, self._next_id = self._next_id, self._next_id + 1
        return iid

    def peek_id(self) -> int:
        return self._next_id

    def set_next_id(self, next_id: int) -> None:
        self._next_id = max(self._next_id, int(next_id))

    def add(
        self,
        chain_id: int,
        worker: str,
        vf_mac: str,
        core: int,
        attached: bool,
        instance_id: int | None = None,
        nat_slot: int | None = None,
    ) -> Instance:
        """Record an instance (validated against the topology and the other instances).

        ``instance_id``: one from :meth:`reserve_id`, when the agent already
        knows the instance by it.
        """
        if instance_id is not None and instance_id in self.by_id:
            raise ConflictError("instance_id", f"instance {instance_id} exists")
        if instance_id is not None:
            self._next_id = max(self._next_id, instance_id + 1)
        if chain_id not in self.chains.by_id:
            raise SpecError("chain_id", f"no chain {chain_id}")
        w = self._workers.get(worker) if isinstance(worker, str) else None
        if w is None:
            raise SpecError("worker", f"no worker {worker!r} in topology {self.topology.name}")
        if not isinstance(vf_mac, str) or vf_mac.lower() not in {vf.mac for vf in w.vfs}:
            raise SpecError("vf_mac", f"{vf_mac!r} is not a VF of worker {worker}")
        vf_mac = vf_mac.lower()
        if core not in w.cores:
            raise SpecError("core", f"{core!r} is not a core worker {worker} manages")
        if nat_slot is not None:
            pool = natpools.slots(self.chains.by_id[chain_id].spec)
            if not 0 <= nat_slot < len(pool):
                raise SpecError("nat_slot", f"chain {chain_id}'s NAT has {len(pool)} slots")
        for other in self.by_id.values():
            if other.worker == worker and other.vf_mac == vf_mac:
                raise ConflictError("vf_mac", f"{vf_mac} is already used by instance {other.id}")
            if other.worker == worker and other.core == core:
                raise ConflictError("core", f"core {core} of {worker} runs instance {other.id}")
            if nat_slot is not None and other.chain_id == chain_id and other.nat_slot == nat_slot:
                raise ConflictError("nat_slot", f"NAT slot {nat_slot} is instance {other.id}'s")
        inst = Instance(
            id=self.reserve_id() if instance_id is None else instance_id,
            chain_id=chain_id,
            worker=worker,
            vf_mac=vf_mac,
            core=core,
            dpid=self._dpids[w.switch],
            port=w.switch_port,
            attached=bool(attached),
            nat_slot=nat_slot,
        )
        self.by_id[inst.id] = inst
        if nat_slot is not None:
            self.nat_owner[natpools.slot_address(pool[nat_slot])] = inst
        self.refresh(chain_id)
        return inst

    def remove(self, instance_id: int) -> Instance:
        inst = self.by_id.pop(instance_id)
        for addr in [a for a, i in self.nat_owner.items() if i is inst]:
            del self.nat_owner[addr]
        self.refresh(inst.chain_id)
        return inst

    def set_attached(self, instance_id: int, attached: bool) -> Instance:
        inst = self.by_id[instance_id]
        inst.attached = attached
        self.refresh(inst.chain_id)
        return inst

    def update_stats(
        self, instance_id: int, now: float, load=None, p99_us=None, pps=None, batch_p99_us=None
    ) -> Instance:
        inst = self.by_id[instance_id]
        if batch_p99_us is not None:
            inst.batch_p99_us = float(batch_p99_us)
        if pps is not None:
            inst.pps = float(pps)
        if load is not None:
            inst.load = float(load)
        if p99_us is not None:
            inst.p99_us = float(p99_us)
        inst.stats_at = now
        self.refresh(inst.chain_id)
        return inst

    def eligible(self, inst: Instance, chain: Chain) -> bool:
        return (
            inst.attached
            and inst.p99_us < chain.threshold_us
            and inst.load < chain.spec.scaling.load_cap
        )

    def refresh(self, chain_id: int) -> None:
        """Rebuild the candidate lists of one chain (after any change to its instances)."""
        for k in [k for k in self._candidates if k[0] == chain_id]:
            del self._candidates[k]
        chain = self.chains.by_id.get(chain_id)
        if chain is None:
            return
        for inst in sorted(self.of_chain(chain_id), key=lambda i: (-i.load, i.id)):
            if self.eligible(inst, chain):
                self._candidates.setdefault((chain_id, inst.dpid), []).append(inst)

    def candidates(self, chain_id: int, dpid: int) -> list[Instance]:
        return self._candidates.get((chain_id, dpid), [])

    def pick(self, chain: Chain, dpid: int) -> Instance | None:
        """The instance for a new flow of ``chain`` seen on switch ``dpid``.

        The most loaded eligible attached instance; failing that, a detached
        instance from the warm pool, which is attached (and an ``attach``
        request queued for its agent); failing that, ``None``.
        """
        cands = self._candidates.get((chain.id, dpid))
        if cands:
            return cands[0]
        pool = [
            i
            for i in self.by_id.values()
            if i.chain_id == chain.id and i.dpid == dpid and not i.attached
        ]
        if not pool:
            return None
        inst = min(pool, key=lambda i: i.id)
        self.attach_from_pool(inst)
        return inst if self.eligible(inst, chain) else None

    def attach_from_pool(self, inst: Instance) -> None:
        """Attach warm instance ``inst`` now (an ``attach`` request queued for its agent)."""
        self.set_attached(inst.id, True)
        self.agent_requests.append(("attach", inst.id, inst.worker))
        if self.on_pool_attach is not None:
            self.on_pool_attach(inst)
