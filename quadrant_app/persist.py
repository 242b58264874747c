"""The controller's books in Redis, so that a restarted controller carries on.

What is kept: every chain (id, tenant, spec, registration order), every
instance (id, chain, worker, VF, core, attached) and the id counters.  Flow
assignments are not written per flow: the switch holds them (each per-flow
rule names its instance in its cookie), and a controller that knows the
instances again adopts them from flow stats when the switch reconnects
(``Core._adopt_or_delete``), without reassigning a flow.  The agents, when
they register again, keep the instances both sides know.

:class:`Persister` writes what changed since its last look (:meth:`sync`):
the app calls it after every REST call that changes something, before the
answer goes out (a chain the API acknowledged is stored), and on its tick
(instances the orchestrator added or attached).  :func:`restore` puts a
snapshot back into a fresh core at start-up.  Serialisation is pure; the
Redis calls are in :class:`RedisStore` (one hash per kind under a prefix).
"""

from __future__ import annotations

import json
import logging

from quadrant_app.chains import chain_to_json, parse_chain

LOG = logging.getLogger(__name__)
FORMAT = 1


def chain_record(chain) -> dict:
    return {
        "id": chain.id,
        "tenant": chain.tenant,
        "seq": chain.seq,
        "created": chain.created,
        "spec": chain_to_json(chain.spec),
    }


def instance_record(inst) -> dict:
    return {
        "id": inst.id,
        "chain_id": inst.chain_id,
        "worker": inst.worker,
        "vf_mac": inst.vf_mac,
        "core": inst.core,
        "attached": inst.attached,
        "nat_slot": inst.nat_slot,
    }


class RedisStore:
    """``<prefix>:chains`` and ``<prefix>:instances`` (hashes id -> JSON), ``<prefix>:meta``."""

    def __init__(self, client, prefix: str):
        self.r = client
        self.prefix = prefix

    def write(self, chains: dict, instances: dict, gone_chains, gone_instances, meta: dict):
        p = self.r.pipeline(transaction=True)
        if chains:
            p.hset(f"{self.prefix}:chains", mapping={k: json.dumps(v) for k, v in chains.items()})
        if gone_chains:
            p.hdel(f"{self.prefix}:chains", *gone_chains)
        if instances:
            p.hset(
                f"{self.prefix}:instances",
                mapping={k: json.dumps(v) for k, v in instances.items()},
            )
        if gone_instances:
            p.hdel(f"{self.prefix}:instances", *gone_instances)
        p.hset(f"{self.prefix}:meta", mapping={k: json.dumps(v) for k, v in meta.items()})
        p.execute()

    def read(self) -> tuple[list[dict], list[dict], dict]:
        def load(key):
            return {k.decode() if isinstance(k, bytes) else k: json.loads(v)
                    for k, v in self.r.hgetall(f"{self.prefix}:{key}").items()}  # fmt: skip

        chains, insts, meta = load("chains"), load("instances"), load("meta")
        return list(chains.values()), list(insts.values()), meta


class Persister:
    def __init__(self, core, store):
        self.core = core
        self.store = store
        self._chains: dict[str, dict] = {}
        self._instances: dict[str, dict] = {}

    def sync(self) -> bool:
        """Write what changed since the last call; ``True`` if anything was written."""
        core = self.core
        chains = {str(c.id): chain_record(c) for c in core.chains}
        insts = {str(i.id): instance_record(i) for i in core.instances.by_id.values()}
        changed_c = {k: v for k, v in chains.items() if self._chains.get(k) != v}
        changed_i = {k: v for k, v in insts.items() if self._instances.get(k) != v}
        gone_c = [k for k in self._chains if k not in chains]
        gone_i = [k for k in self._instances if k not in insts]
        if not (changed_c or changed_i or gone_c or gone_i):
            return False
        meta = {
            "format": FORMAT,
            "next_chain_id": core.chains.peek_ids()[0],
            "next_seq": core.chains.peek_ids()[1],
            "next_instance_id": core.instances.peek_id(),
        }
        self.store.write(changed_c, changed_i, gone_c, gone_i, meta)
        self._chains, self._instances = chains, insts
        return True

    def mark_saved(self) -> None:
        """After :func:`restore`: what is in the core now is what the store has."""
        self._chains = {str(c.id): chain_record(c) for c in self.core.chains}
        self._instances = {
            str(i.id): instance_record(i) for i in self.core.instances.by_id.values()
        }


def restore(core, chains: list[dict], instances: list[dict], meta: dict, nf_types) -> tuple:
    """Put a snapshot back into a fresh ``core``: ``(chains, instances)`` restored.

    A record that no longer validates (an NF type this controller lacks, a worker
    or VF gone from the topology) is skipped with a warning, never half-restored.
    """
    n_c = n_i = 0
    for rec in sorted(chains, key=lambda r: r["seq"]):
        try:
            spec = parse_chain(rec["spec"], nf_types)
        except ValueError as exc:
            LOG.warning("stored chain %s not restored: %s", rec.get("id"), exc)
            continue
        core.chains.restore(rec["id"], rec["tenant"], spec, rec["seq"], rec["created"])
        n_c += 1
    for rec in sorted(instances, key=lambda r: r["id"]):
        try:
            core.instances.add(rec["chain_id"], rec["worker"], rec["vf_mac"], rec["core"],
                               rec["attached"], instance_id=rec["id"],
                               nat_slot=rec.get("nat_slot"))  # fmt: skip
        except ValueError as exc:
            LOG.warning("stored instance %s not restored: %s", rec.get("id"), exc)
            continue
        n_i += 1
    core.chains.set_ids(meta.get("next_chain_id", 1), meta.get("next_seq", 0))
    core.instances.set_next_id(meta.get("next_instance_id", 1))
    return n_c, n_i
