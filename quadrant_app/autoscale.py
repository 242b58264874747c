"""The scaling loop: :mod:`quadrant_app.scaling`'s policy run on the live controller.

Pure, like the core: :meth:`Autoscaler.tick` reads the instance registry
(the agents' latest stats) and the flow table (the switch's per-flow rates),
asks the chain's policy for a plan, carries out the parts that are the
core's (attach from the warm pool, detach or tear down an idle instance)
and returns the rest: the OpenFlow messages, the agent requests it queued in
``core.instances.agent_requests``, and the flow moves, grouped by
(source, destination) instance as :class:`Move`, for the app to sequence
with the agents (``hold`` at the destination, rule change, ``drain`` at the
source, ``release``: docs/scaling.rst, *Migration*).

Two figures tie the registry's ingress to the policy:

* the latency estimate an instance is judged by, everywhere, is
  :meth:`Autoscaler.latency_us`: twice its agent's p99 per-batch time plus
  the network p99 at its worker's throughput from the offline profile
  (``latency_profile`` option); the registry's candidate rule (most loaded
  under ``alpha * slo_us`` and ``load_cap``) is the policy's
  :class:`~quadrant_app.scaling.MostLoadedIngress` rule, so new flows between
  two plans go where the plan's ingress would send them;
* an instance's maximum rate comes from its measured load: ``load`` is the
  share of its core's cycles its NFs used, so ``r_max = pps / load``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable

from quadrant_app import natpools, scaling
from quadrant_app.latency_profile import NetworkProfile

LOG = logging.getLogger(__name__)

# The policies work in cycles; with r_max = pps / load only the ratio matters,
# so a nominal clock is enough (the agents report load, not cycles).
_NOMINAL_HZ = 1e9
NO_NETWORK = NetworkProfile((0.0,), (0.0,), "model", "none")
POLICIES = ("quadrant", "metron")


@dataclasses.dataclass(frozen=True)
class Move:
    """Flows to move from instance ``src`` to ``dst`` (one sequence with the agents)."""

    chain_id: int
    src: int
    dst: int
    flow_ids: tuple[int, ...]
    pps: float


@dataclasses.dataclass
class Settings:
    policy: str = "quadrant"
    interval: float = 1.0
    pool_size: int = 1
    # an instance attached this recently is not reclaimed for having no flows yet
    reclaim_grace: float = 5.0
    # cycles per packet assumed for an instance that has not carried traffic yet
    default_cycles_per_packet: float = 1000.0
    batch: int = 32
    rate_adapt: bool = True
    network: NetworkProfile = NO_NETWORK


class Autoscaler:
    def __init__(
        self,
        core,
        settings: Settings | None = None,
        managed: Callable[[str], bool] = lambda worker: True,
        pending: Callable[[int], int] = lambda chain_id: 0,
    ):
        """``managed(worker)``: does an agent run that worker (only those instances are
        scaled); ``pending(chain_id)``: pool instances being prepared for the chain."""
        self.core = core
        self.s = settings or Settings()
        if self.s.policy not in POLICIES:
            raise ValueError(f"scaling policy {self.s.policy!r} is not one of {POLICIES}")
        self.managed = managed
        self.pending = pending
        self.next_at = 0.0
        self.gbps: dict[str, float] = {}
        # instances in a move now (how many moves each): no new plan touches them
        self.moving: collections.Counter = collections.Counter()
        self._policies: dict[int, scaling._Policy] = {}
        self._attached_since: dict[int, float] = {}

    # -- the latency estimate, for the registry too -----------------------------------

    def latency_us(self, worker: str, batch_p99_us: float) -> float:
        net = self.s.network.latency_us(self.gbps.get(worker, 0.0))
        return scaling.latency_estimate_us(batch_p99_us, net)

    # -- one round ----------------------------------------------------------------------

    def tick(self, now: float) -> tuple[list, list[Move]]:
        """``(OpenFlow messages, moves)`` of one scaling round (none before ``interval``)."""
        if now < self.next_at:
            return [], []
        self.next_at = now + self.s.interval
        core = self.core
        flows_of: dict[int, list[scaling.FlowRate]] = {}
        bps: dict[str, float] = {}
        workers = {i.id: i.worker for i in core.instances.by_id.values()}
        for rec in core.flows.page(0, len(core.flows) + 1)[0]:
            iid = rec.instance_id
            if iid in workers:
                flows_of.setdefault(iid, []).append(scaling.FlowRate(rec.id, iid, rec.pps))
                w = workers[iid]
                bps[w] = bps.get(w, 0.0) + rec.bps
        self.gbps = {w: b / 1e9 for w, b in bps.items()}
        for iid in [i for i in self._attached_since if i not in core.instances.by_id]:
            del self._attached_since[iid]
        for pid in [c for c in self._policies if c not in core.chains.by_id]:
            del self._policies[pid]
        msgs: list = []
        moves: list[Move] = []
        for chain in list(core.chains):
            insts = [
                i
                for i in core.instances.of_chain(chain.id)
                if self.managed(i.worker) and i.id not in self.moving
            ]
            if not insts:
                continue
            m, mv = self._chain(chain, insts, flows_of, now)
            msgs += m
            moves += mv
        return msgs, moves

    def _chain(self, chain, insts, flows_of, now):
        policy = self._policies.get(chain.id)
        if policy is None:
            params = scaling.ScalingParams.from_spec(
                chain.spec, pool_size=self.s.pool_size, rate_adapt=self.s.rate_adapt
            )
            cls = scaling.QuadrantPolicy if self.s.policy == "quadrant" else scaling.MetronPolicy
            policy = self._policies[chain.id] = cls(params, _NOMINAL_HZ, self.s.network)
        stats = []
        for i in insts:
            if i.attached:
                self._attached_since.setdefault(i.id, now)
            else:
                self._attached_since.pop(i.id, None)
            young = i.attached and now - self._attached_since[i.id] < self.s.reclaim_grace
            stats.append(self._stats(i, max(i.flows, 1) if young else i.flows, chain))
        plan = policy.plan(
            now,
            stats,
            {i.id: flows_of.get(i.id, ()) for i in insts if i.attached},
            self.gbps,
            self.pending(chain.id),
        )
        msgs: list = []
        groups: dict[tuple[int, int], list] = {}
        m = self.core.metrics
        reqs = self.core.instances.agent_requests
        nat = natpools.nat_position(chain.spec) is not None
        for d in plan.decisions:
            if isinstance(d, scaling.Attach):
                inst = self.core.instances.by_id[d.instance_id]
                LOG.info("chain %d: scale out, attaching instance %d", chain.id, inst.id)
                msgs += self.core.attach(inst.id, now)
                reqs.append(("attach", inst.id, inst.worker))
                self._attached_since[inst.id] = now
                m.scale_outs.value += 1
            elif isinstance(d, scaling.Detach):
                inst = self.core.instances.by_id[d.instance_id]
                if inst.flows:
                    continue  # a flow came in since the stats were read
                LOG.info("chain %d: reclaiming idle instance %d (%s)", chain.id, inst.id,
                         "back to the warm pool" if d.keep_warm else "torn down")  # fmt: skip
                if d.keep_warm:
                    msgs += self.core.detach(inst.id, now)
                    reqs.append(("detach", inst.id, inst.worker))
                else:
                    msgs += self.core.remove_instance(inst.id, now)
                m.reclaims.inc("warm" if d.keep_warm else "torn_down")
            elif isinstance(d, scaling.Migrate):
                rec = self.core.flows.by_id(d.flow_id) if nat else None
                if rec is not None and not self.core.nat_outbound(rec):
                    continue  # a NAT connection's reply: it moves with its outbound flow
                groups.setdefault((d.src, d.dst), []).append(d)
            elif isinstance(d, scaling.Shortage):
                LOG.warning("chain %d: %.0f pps could not be shed: no instance to take it",
                            chain.id, d.pps)  # fmt: skip
                m.scaling_shortage_pps.value += int(d.pps)
            # Prepare: the orchestrator keeps the same pool_size warm on its tick.
        moves = [
            Move(chain.id, src, dst, tuple(d.flow_id for d in ds), sum(d.pps for d in ds))
            for (src, dst), ds in groups.items()
        ]
        return msgs, moves

    def _stats(self, i, flows: int, chain=None) -> scaling.InstanceStats:
        max_pps = chain.spec.scaling.max_pps if chain is not None else None
        if i.pps > 0 and i.load > 0:
            cpp = i.load * _NOMINAL_HZ / i.pps
        elif max_pps:  # not measured yet: the chain's stated ceiling (scaling.max_pps)
            cpp = _NOMINAL_HZ / max_pps
        else:
            cpp = self.s.default_cycles_per_packet
        return scaling.InstanceStats(
            id=i.id,
            worker=i.worker,
            attached=i.attached,
            pps=i.pps,
            cycles_per_packet=cpp,
            batch_size=self.s.batch,
            batch_p99_us=i.batch_p99_us,
            flows=flows,
            stats_at=i.stats_at,
        )
