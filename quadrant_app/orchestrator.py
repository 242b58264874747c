"""Chain instances on the workers: placement, the warm pool, and the agents' commands.

Pure, like the core: :meth:`Orchestrator.tick` looks at the registered
chains, the connected agents (:class:`~quadrant_app.agents.AgentHub`) and
the instance registry, and returns the :class:`Command` s to send —
``prepare`` a new instance where a chain's warm pool is short, ``attach``
one the ingress took from the pool, ``teardown`` one whose chain is gone.
The app sends each command to its agent and hands the outcome back to
:meth:`Orchestrator.done`, which records a prepared instance in the core
(detached: the warm pool) and returns any OpenFlow messages that causes.

An instance is recorded in the core only once its agent has prepared it,
so the ingress never picks an instance that does not exist yet.  Its id is
reserved up front and is the same on both sides of the channel.
"""

from __future__ import annotations

import dataclasses
import logging

from quadrant_app import natpools

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Command:
    worker: str
    method: str
    params: dict
    instance: int


@dataclasses.dataclass
class Pending:
    chain_id: int
    worker: str
    core: int
    vf: str
    since: float
    nat_slot: int | None = None  # the chain NAT's external entry it will own


def judged_load(load, pps, chain):
    """The load the controller judges an instance by: what its agent measured (the
    share of its core the NFs' own cycles took) or, for a chain whose spec states the
    measured highest rate of one instance (``scaling.max_pps``), ``pps / max_pps`` if
    that is higher -- where the limit lies outside the NFs' cycle counters (the lab's
    af_packet I/O, its shared switch and core: docs/scaling.rst, *In the lab*)."""
    max_pps = chain.spec.scaling.max_pps if chain is not None else None
    if max_pps is None or not isinstance(pps, int | float) or isinstance(pps, bool):
        return load
    by_rate = max(0.0, float(pps)) / max_pps
    return by_rate if load is None else max(float(load), by_rate)


class Orchestrator:
    def __init__(self, core, hub, pool_size: int = 1, batch: int = 32, retry_s: float = 5.0):
        self.core = core
        self.hub = hub
        self.pool_size = pool_size
        self.batch = batch
        self.retry_s = retry_s
        self.preparing: dict[int, Pending] = {}
        self.retry_after: dict[int, float] = {}  # chain id -> when to try preparing again
        self.errors: list[dict] = []  # the latest refusals, for the API and logs
        self.failures_log: list[dict] = []  # the latest failures handled (GET /v1/failures)
        # (worker, p99 per-batch us) -> the latency estimate the ingress judges by;
        # the app plugs in the autoscaler's (network profile included)
        self.latency_us = lambda worker, batch_p99_us: 2.0 * batch_p99_us

    # -- what to do now -------------------------------------------------------------

    def tick(self, now: float) -> list[Command]:
        cmds = self.requests()
        for chain in list(self.core.chains):
            if now < self.retry_after.get(chain.id, 0.0):
                continue
            warm = [i for i in self.core.instances.of_chain(chain.id) if not i.attached]
            warm += [p for p in self.preparing.values() if p.chain_id == chain.id]
            for _ in range(self.pool_size - len(warm)):
                spec = chain.spec
                slot = None
                if natpools.nat_position(spec) is not None:
                    slot = natpools.free_slot(spec, self._nat_slots_used(chain.id))
                    if slot is None:  # every external address has its instance
                        break
                place = self._place()
                if place is None:
                    break
                worker, core_id, vf = place
                iid = self.core.instances.reserve_id()
                self.preparing[iid] = Pending(chain.id, worker, core_id, vf, now, slot)
                params = {
                    "instance": iid,
                    "chain": {
                        "id": chain.id,
                        "name": spec.name,
                        "nfs": natpools.instance_nfs(spec, slot),
                    },
                    "core": core_id,
                    "vf": vf,
                    "batch": self.batch,
                }
                cmds.append(Command(worker, "prepare", params, iid))
        return cmds

    def _nat_slots_used(self, chain_id: int) -> set[int]:
        used = {i.nat_slot for i in self.core.instances.of_chain(chain_id)}
        used |= {p.nat_slot for p in self.preparing.values() if p.chain_id == chain_id}
        return used - {None}

    def preparing_for(self, chain_id: int) -> int:
        """Pool instances of ``chain_id`` asked for and not ready yet."""
        return sum(1 for p in self.preparing.values() if p.chain_id == chain_id)

    def requests(self) -> list[Command]:
        """The core's queued requests for the agents (attach from the pool, teardown)."""
        cmds = []
        reqs = self.core.instances.agent_requests
        while reqs:
            method, iid, worker, *more = reqs.pop(0)
            cmds.append(Command(worker, method, {"instance": iid, **(more[0] if more else {})},
                                iid))  # fmt: skip
        return cmds

    def _place(self) -> tuple[str, int, str] | None:
        """A free (worker, core, VF) on a connected agent: the worker with most free cores."""
        used_cores, used_vfs = set(), set()
        for inst in self.core.instances.by_id.values():
            used_cores.add((inst.worker, inst.core))
            used_vfs.add((inst.worker, inst.vf_mac))
        for p in self.preparing.values():
            used_cores.add((p.worker, p.core))
            used_vfs.add((p.worker, p.vf))
        best = None
        for state in self.hub.workers.values():
            if not state.connected or not state.inventory or state.failed is not None:
                continue
            cores = [c for c in state.inventory["cores"] if (state.name, c) not in used_cores]
            vfs = [
                v["mac"] for v in state.inventory["vfs"] if (state.name, v["mac"]) not in used_vfs
            ]
            if cores and vfs and (best is None or len(cores) > best[0]):
                best = (len(cores), state.name, min(cores), vfs[0])
        return None if best is None else best[1:]

    # -- what came of it ------------------------------------------------------------------

    def done(self, cmd: Command, result, error: str | None, now: float) -> list:
        """The agent's answer to ``cmd`` (``error`` set if it failed); returns OF messages."""
        if cmd.method == "prepare":
            pending = self.preparing.pop(cmd.instance, None)
            if pending is None:
                return []
            if error is not None:
                self._failed(cmd, error, now, chain_id=pending.chain_id)
                return []
            if pending.chain_id not in self.core.chains.by_id:
                # The chain went away while the instance was being prepared.
                self.core.instances.agent_requests.append(("teardown", cmd.instance, cmd.worker))
                return []
            _inst, msgs = self.core.add_instance(
                pending.chain_id, pending.worker, pending.vf, pending.core,
                attached=False, now=now, instance_id=cmd.instance, nat_slot=pending.nat_slot,
            )  # fmt: skip
            return msgs
        if error is not None:
            self._failed(cmd, error, now)
            if cmd.method == "attach" and cmd.instance in self.core.instances.by_id:
                # It cannot take flows: out of the candidates until someone looks.
                return self.core.detach(cmd.instance, now)
        return []

    def _failed(self, cmd: Command, error: str, now: float, chain_id: int | None = None) -> None:
        LOG.warning("%s of instance %d on %s failed: %s", cmd.method, cmd.instance, cmd.worker,
                    error)  # fmt: skip
        entry = {"t": now, "worker": cmd.worker, "method": cmd.method,
                 "instance": cmd.instance, "error": error}  # fmt: skip
        self.errors = (self.errors + [entry])[-32:]
        if chain_id is not None:
            self.retry_after[chain_id] = now + self.retry_s

    def stats(self, worker: str, rows: list[dict], now: float) -> list:
        """Per-instance reports from ``worker``'s agent into the core."""
        msgs = []
        for row in rows:
            inst = self.core.instances.by_id.get(row["id"])
            if inst is None or inst.worker != worker:
                continue  # not (or no longer) ours: ignore, never trust a report blindly
            batch = row.get("p99_us")
            chain = self.core.chains.by_id.get(inst.chain_id)
            msgs += self.core.update_stats(
                inst.id,
                now,
                load=judged_load(row.get("load"), row.get("pps"), chain),
                p99_us=None if batch is None else self.latency_us(worker, batch),
                pps=row.get("pps"),
                batch_p99_us=batch,
            )
        return msgs

    def failed(self, worker: str, event: dict, now: float) -> list:
        """An agent reports an instance failed (an NF exited, stalled or was ended by
        its core's watchdog): its flows are re-pointed at healthy instances of their
        chain now, as for a failed worker (:meth:`_evacuate`; a warm-pool instance is
        attached if needed), it is forgotten and its agent tears it down; the warm
        pool refills at the next tick.  (Moving the flows' state first is the state
        layer's part.)
        """
        iid = event.get("instance")
        inst = self.core.instances.by_id.get(iid) if isinstance(iid, int) else None
        if inst is None or inst.worker != worker:
            return []
        reason = event.get("reason", "no reason given")
        cause = event.get("cause") if isinstance(event.get("cause"), str) else "other"
        self.core.metrics.nf_failures.inc(cause)
        moved, msgs = self._evacuate([inst], now)
        msgs += self.core.remove_instance(iid, now)
        LOG.warning("instance %d on %s failed (%s): %d flows moved to other instances, "
                    "instance removed", iid, worker, reason, moved)  # fmt: skip
        self._log(now, "nf", worker, reason, moved, instance=iid, cause=cause,
                  agent_at=event.get("at"))  # fmt: skip
        return msgs

    def _evacuate(self, insts: list, now: float) -> tuple[int, list]:
        """Re-point every flow of ``insts`` (none of them a candidate any more) at a
        healthy instance of its chain on the same switch, chosen as for a new flow;
        no drain: the old side is gone.  Flows that find none are left to re-assign
        on their next packet.  Returns ``(flows moved, messages)``."""
        core = self.core
        gone = {i.id for i in insts}
        for inst in insts:
            # none of them may take a flow from here on, nor be attached from the pool:
            # attached with an infinite latency estimate, no instance picks it
            core.instances.set_attached(inst.id, True)
            core.instances.update_stats(inst.id, now, p99_us=float("inf"))
        msgs, moved = [], 0
        for inst in insts:
            chain = core.chains.by_id.get(inst.chain_id)
            if chain is not None and inst.nat_slot is not None:
                # its own NAT connections wait for the replacement that takes its address
                # and restores them; those moved to it go home (core._nat_send_home)
                continue
            for rec in core.flows.of_instance(inst.id) if chain is not None else ():
                if rec.instance_id != inst.id:
                    continue  # moved already, as the reply of a flow moved before it
                dst = core.instances.pick(chain, inst.dpid)
                if dst is None or dst.id in gone:
                    continue
                keys, m = core.migrate([rec.id], inst.id, dst.id, now)
                moved += len(keys)
                msgs += m
        return moved, msgs

    def _log(self, now: float, kind: str, worker: str, reason: str, moved: int, **more):
        entry = {"t": round(now, 6), "kind": kind, "worker": worker, "reason": reason,
                 "flows_moved": moved, **more}  # fmt: skip
        self.failures_log = (self.failures_log + [entry])[-64:]

    def failures(self, now: float) -> list:
        """Workers whose heartbeats stopped: fail them over; returns OF messages."""
        msgs = []
        for worker in self.hub.lapsed(now):
            msgs += self.worker_failed(worker, "heartbeats stopped", now, kind="heartbeats")
        return msgs

    def _worker_at(self, dpid: int, port: int) -> str | None:
        for w in self.core.topology.workers:
            if self.core.topology.switch(w.switch).dpid == dpid and w.switch_port == port:
                return w.name
        return None

    def port_down(self, dpid: int, port: int, now: float) -> list:
        """A switch port went down: if it is a worker's uplink, fail that worker over."""
        worker = self._worker_at(dpid, port)
        if worker is None:
            return []
        return self.worker_failed(worker, f"switch port {port} down", now, kind="link")

    def port_up(self, dpid: int, port: int, now: float) -> None:
        """A worker's uplink is back: it may take instances again (its agent never left)."""
        worker = self._worker_at(dpid, port)
        state = self.hub.workers.get(worker) if worker else None
        if state is not None and state.failed and state.failed.startswith("switch port"):
            LOG.info("worker %s: switch port %d is up again", worker, port)
            state.failed = None

    def worker_failed(self, worker: str, reason: str, now: float, kind: str = "other") -> list:
        """Declare ``worker`` failed: its instances' flows go to healthy instances of their
        chains now (their rules re-pointed, no drain: the old side is gone), what finds
        none re-assigns on its next packet (held at the controller until an instance
        can take it), and its instances are forgotten.  When its agent registers again
        it is reconciled (:meth:`registered`: what it still runs is torn down), so a flow
        is never served by two instances.
        """
        if worker not in self.hub.workers or self.hub.workers[worker].failed is not None:
            return []
        self.hub.mark_failed(worker, reason)
        self.core.metrics.worker_failures.inc(kind)
        # an agent still connected (a link failure) tears its instances down now; a
        # silent one is reconciled when it registers again
        tell = kind == "link" and self.hub.workers[worker].connected
        for iid in [i for i, p in self.preparing.items() if p.worker == worker]:
            del self.preparing[iid]
        core = self.core
        mine = [i for i in core.instances.by_id.values() if i.worker == worker]
        moved, msgs = self._evacuate(mine, now)
        for inst in mine:
            msgs += core.remove_instance(inst.id, now, tell_agent=tell)
        LOG.warning("worker %s failed (%s): %d flows moved to other instances, %d instances "
                    "forgotten", worker, reason, moved, len(mine))  # fmt: skip
        self._log(now, "worker", worker, reason, moved, cause=kind,
                  instances=[i.id for i in mine])  # fmt: skip
        return msgs

    def registered(self, worker: str, reported: list, now: float) -> tuple[list[Command], list]:
        """Reconcile after an agent (re)registers with the instances it still runs.

        Instances both sides know stay as they are (flows untouched).  One the
        agent runs but the controller does not know is torn down; one the
        controller knows on that worker but the agent no longer runs is
        forgotten (its flows re-assign on their next packet).  Returns the
        commands for the agent and the OpenFlow messages for the switches.
        """
        running = {r.get("id") for r in reported if isinstance(r, dict)}
        cmds = []
        for iid in sorted(i for i in running if isinstance(i, int)):
            inst = self.core.instances.by_id.get(iid)
            if (inst is None or inst.worker != worker) and iid not in self.preparing:
                cmds.append(Command(worker, "teardown", {"instance": iid}, iid))
        msgs = []
        for inst in list(self.core.instances.by_id.values()):
            if inst.worker == worker and inst.id not in running:
                LOG.warning("instance %d is gone from %s: forgetting it", inst.id, worker)
                msgs += self.core.remove_instance(inst.id, now, tell_agent=False)
        return cmds, msgs

    def to_json(self) -> dict:
        return {
            "pool_size": self.pool_size,
            "preparing": {str(k): dataclasses.asdict(v) for k, v in self.preparing.items()},
            "errors": self.errors,
        }
