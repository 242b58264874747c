"""SLO-aware auto-scaling (the paper's §5) and a Metron-style baseline, as pure code.

Nothing here reads a clock, opens a socket or keeps os-ken state: the
controller's scaling loop and the simulator (``tools/sim``) call the same
functions with the same plain data and get the same decisions back.

Per chain instance, from the stats its agent reports (:class:`InstanceStats`):

* ``r_max = cpu_hz / (cycles_per_packet + batch_cycles / batch_size)``: the
  highest packet rate one core sustains, from the measured cycles;
* ``load = pps / r_max``;
* latency estimate ``t = 2 * p99 per-batch execution time + network p99`` at
  the worker's throughput, from the offline profile
  (:mod:`quadrant_app.latency_profile`).  A packet waits at most for the
  batch in progress, then for its own batch.

Rules of :class:`QuadrantPolicy` (``0 < alpha < beta < 1``):

* new flows go to the **most loaded** instance with ``t < alpha*SLO`` and
  ``load < load_cap``; none to the others;
* an instance with ``t > beta*SLO`` sheds flows whose measured rates sum to
  ``dr = r * (t - alpha*SLO) / t * (r_max / r - 1)`` (eq. 4), the
  rate-adapting term bounded below by 0.25 when ``r >= 0.8 r_max``
  (:func:`migration_amount`); ``rate_adapt=False`` drops that term;
* an instance above ``load_cap`` sheds at least what is above it (not in the
  paper: its estimate cannot exceed two full batches, so for a light chain
  under a loose SLO the rule above never fires while the rx ring overflows);
* no instance below ``alpha*SLO`` left: attach one from the warm pool, and
  ask for the pool to be refilled (:class:`Prepare`);
* an instance with no flows left is detached and its core released.

:class:`MetronPolicy` is the comparison: an instance is overloaded when its
load passes 80 %, new and migrated flows go by power-of-two choices, and the
SLO plays no part.
"""

from __future__ import annotations

import dataclasses
import operator
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from quadrant_app.latency_profile import NetworkProfile


class ScalingError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# -- plain data -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScalingParams:
    """One chain's knobs (``slo_us`` and ``scaling.*`` of its spec, plus pool sizing)."""

    slo_us: float
    alpha: float = 0.6
    beta: float = 0.9
    load_cap: float = 0.9
    rate_adapt: bool = True  # eq. 4 with its rate-adapting term (the paper's default)
    adapt_floor: float = 0.25  # lower bound of that term ...
    adapt_from: float = 0.8  # ... once r >= adapt_from * r_max
    pool_size: int = 1  # warm (detached) instances kept ready
    min_attached: int = 1  # never reclaim below this many attached instances
    consolidate: bool = False  # drain the least loaded instance when the others have room

    def __post_init__(self):
        if not self.slo_us > 0:
            raise ScalingError("slo_us", f"must be > 0, not {self.slo_us!r}")
        if not 0 < self.alpha < self.beta < 1:
            raise ScalingError("alpha", f"need 0 < alpha < beta < 1, not {self.alpha}, {self.beta}")
        if not 0 < self.load_cap <= 1:
            raise ScalingError("load_cap", f"must be in (0, 1], not {self.load_cap!r}")
        if self.adapt_floor < 0 or not 0 < self.adapt_from <= 1:
            raise ScalingError("adapt_floor", "must be >= 0 with adapt_from in (0, 1]")
        if self.pool_size < 0 or self.min_attached < 0:
            raise ScalingError("pool_size", "pool_size and min_attached must be >= 0")

    @classmethod
    def from_spec(cls, spec, **extra) -> ScalingParams:
        """From a chain spec with ``slo_us`` and ``scaling.{alpha,beta,load_cap}``."""
        s = spec.scaling
        return cls(spec.slo_us, s.alpha, s.beta, s.load_cap, **extra)

    @property
    def low_us(self) -> float:
        return self.alpha * self.slo_us

    @property
    def high_us(self) -> float:
        return self.beta * self.slo_us


@dataclasses.dataclass
class InstanceStats:
    """What the controller knows of one chain instance (registry + last agent stats)."""

    id: int
    worker: str
    attached: bool = True
    pps: float = 0.0  # measured packet rate
    bps: float = 0.0  # measured bit rate (for the worker's throughput)
    cycles_per_packet: float = 0.0  # measured, all NFs of the chain
    batch_cycles: float = 0.0  # per-batch fixed cost (poll, context switches)
    batch_size: int = 32
    batch_p99_us: float = 0.0  # p99 per-batch execution time
    flows: int = 0
    stats_at: float | None = None


class FlowRate(NamedTuple):
    """One flow's measured rate (a tuple: instances carry thousands of them)."""

    id: int
    instance_id: int
    pps: float  # measured (switch flow stats)


@dataclasses.dataclass(frozen=True)
class Estimate:
    id: int
    latency_us: float
    load: float
    r_max: float
    pps: float
    headroom_pps: float  # rate at which new flows stop going here


@dataclasses.dataclass(frozen=True)
class Migrate:
    flow_id: int
    src: int
    dst: int
    pps: float


@dataclasses.dataclass(frozen=True)
class Attach:
    """Take a warm-pool instance into service (scale-out)."""

    instance_id: int


@dataclasses.dataclass(frozen=True)
class Detach:
    """Reclaim: no flows left; release the core (keep the instance warm if the pool is short)."""

    instance_id: int
    keep_warm: bool


@dataclasses.dataclass(frozen=True)
class Prepare:
    """Deploy ``count`` new detached instances of the chain to refill its warm pool."""

    count: int


@dataclasses.dataclass(frozen=True)
class Shortage:
    """Capacity was needed and the warm pool was empty."""

    pps: float


# -- formulas -------------------------------------------------------------------------------


def max_rate(cycles_per_packet: float, batch_cycles: float, batch_size: int, cpu_hz: float):
    """Highest rate (pps) of one core: full batches, per-packet plus amortised batch cost."""
    if cycles_per_packet <= 0 or batch_size < 1 or cpu_hz <= 0:
        raise ScalingError("cycles_per_packet", "cycles, batch size and clock must be positive")
    return cpu_hz / (cycles_per_packet + batch_cycles / batch_size)


def latency_estimate_us(batch_p99_us: float, network_us: float) -> float:
    return 2.0 * batch_p99_us + network_us


def zone(latency_us: float, p: ScalingParams) -> str:
    """``below`` alpha*SLO (takes new flows), ``above`` beta*SLO (sheds), else ``between``."""
    if latency_us < p.low_us:
        return "below"
    if latency_us > p.high_us:
        return "above"
    return "between"


def rate_adapting_term(r: float, r_max: float, floor: float = 0.25, start: float = 0.8):
    """``r_max/r - 1``, bounded below by ``floor`` once ``r >= start * r_max`` (eq. 4's note)."""
    term = r_max / r - 1.0
    if r >= start * r_max:
        term = max(term, floor)
    return term


def migration_amount(r: float, r_max: float, t_us: float, p: ScalingParams) -> float:
    """Eq. 4: the rate (pps) to move off an instance at rate ``r`` with estimate ``t_us``."""
    if r <= 0 or t_us <= p.low_us:
        return 0.0
    dr = r * (t_us - p.low_us) / t_us
    if p.rate_adapt:
        dr *= rate_adapting_term(r, r_max, p.adapt_floor, p.adapt_from)
    return min(dr, r)


_flow_id = operator.attrgetter("id")
_flow_pps = operator.attrgetter("pps")


def select_flows(flows: Iterable[FlowRate], amount: float) -> list[FlowRate]:
    """Flows whose measured rates sum to at most ``amount``, largest first (fewest moves).

    If no flow is small enough, the smallest one, so that an instance above
    its threshold always sheds something.
    """
    if amount <= 0:
        return []
    # largest rate first, lower id first among equal rates: two stable C-keyed sorts
    # (instances carry thousands of flows and the plan runs every stats interval)
    ordered = [f for f in flows if f.pps > 0]
    ordered.sort(key=_flow_id)
    ordered.sort(key=_flow_pps, reverse=True)
    chosen, left = [], amount
    slack = amount * 1e-9  # rounding: flows that sum to exactly ``amount`` all fit
    for f in ordered:
        if f.pps <= left + slack:
            chosen.append(f)
            left -= f.pps
            if left <= slack:
                break
    if not chosen and ordered:
        chosen.append(ordered[-1])
    return chosen


def headroom_pps(inst: InstanceStats, p: ScalingParams, cpu_hz: float, network_us: float):
    """Rate up to which new flows may go to ``inst`` before its next stats report.

    Between two reports the controller cannot see the latency it adds, so it
    projects it with the fluid model of poll-mode batching: a batch that takes
    ``T`` carries the packets that came during the previous one, ``T = o / (1 -
    pps * c)`` with ``c`` the per-packet time; ``o`` is fitted to the measured
    p99 batch time.  The result is the rate at which ``2 T + network`` reaches
    ``alpha * SLO``, never above ``load_cap * r_max``.  A batch holds at most
    ``batch_size`` packets, so ``T`` never exceeds a full batch's time: when
    even a full batch (or the measured p99 batch, if longer) keeps ``2 T +
    network`` below ``alpha * SLO``, latency sets no limit and the headroom is
    the cap.
    """
    r_max = max_rate(inst.cycles_per_packet, inst.batch_cycles, inst.batch_size, cpu_hz)
    cap = p.load_cap * r_max
    c = inst.cycles_per_packet / cpu_hz
    busy = min(inst.pps * c, 0.999)
    o = max(inst.batch_p99_us * 1e-6 * (1.0 - busy), inst.batch_cycles / cpu_hz)
    target = (p.low_us - network_us) / 2.0 * 1e-6
    if target <= o:
        return min(inst.pps, cap)
    # a full batch; never shorter than the p99 batch measured (the controller's stats
    # carry no per-batch cost, and a measured batch is one that did happen)
    full = (inst.batch_cycles + inst.batch_size * inst.cycles_per_packet) / cpu_hz
    full = max(full, inst.batch_p99_us * 1e-6)
    if target > full:
        return cap
    return min((1.0 - o / target) / c, cap)


def worker_gbps(instances: Iterable[InstanceStats]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in instances:
        out[i.worker] = out.get(i.worker, 0.0) + i.bps / 1e9
    return out


def estimate(
    inst: InstanceStats,
    p: ScalingParams,
    cpu_hz: float,
    network: NetworkProfile,
    gbps: float,
) -> Estimate:
    r_max = max_rate(inst.cycles_per_packet, inst.batch_cycles, inst.batch_size, cpu_hz)
    net = network.latency_us(gbps)
    return Estimate(
        inst.id,
        latency_estimate_us(inst.batch_p99_us, net),
        inst.pps / r_max,
        r_max,
        inst.pps,
        headroom_pps(inst, p, cpu_hz, net),
    )


# -- ingress choice -------------------------------------------------------------------------


class MostLoadedIngress:
    """New flows of one chain between two stats reports (Quadrant's ingress choice).

    Candidates are the attached instances whose estimate is below
    ``alpha*SLO`` and load below ``load_cap``, most loaded first; each pick
    adds the flow's expected rate to the head's projected rate and drops the
    head once that reaches its headroom.  With no candidate left it attaches
    the next warm-pool instance (recorded in :attr:`attached` for the caller
    to carry out, like the controller's agent requests); ``None`` when the
    pool is empty too.
    """

    def __init__(self, estimates: Iterable[Estimate], p: ScalingParams, pool: Sequence = ()):
        self.p = p
        self.proj: dict[int, float] = {}
        self.cands: list[Estimate] = []
        for e in sorted(estimates, key=lambda e: (-e.load, e.id)):
            self.add(e)
        self.pool = list(pool)  # Estimates of warm instances, in attach order
        self.attached: list[int] = []

    def eligible(self, e: Estimate) -> bool:
        return e.latency_us < self.p.low_us and e.load < self.p.load_cap and e.pps < e.headroom_pps

    def add(self, e: Estimate, scale_out: bool = False) -> None:
        """A candidate; ``scale_out``: just attached, goes first whatever its estimate."""
        if scale_out:
            self.proj[e.id] = e.pps
            self.cands.insert(0, e)
        elif self.eligible(e):
            self.proj[e.id] = e.pps
            self.cands.append(e)

    def _take(self, pps: float, exclude: int | None) -> int | None:
        i = 0
        while i < len(self.cands):
            e = self.cands[i]
            if e.id == exclude:
                i += 1
                continue
            if self.proj[e.id] + pps <= e.headroom_pps or self.proj[e.id] == 0:
                self.proj[e.id] += pps
                return e.id
            del self.cands[i]  # full until the next stats report
        return None

    def pick(self, pps: float = 0.0, exclude: int | None = None) -> int | None:
        got = self._take(pps, exclude)
        while got is None and self.pool:
            e = self.pool.pop(0)
            self.attached.append(e.id)
            self.add(e, scale_out=True)
            got = self._take(pps, exclude)
        return got

    def has_candidate(self) -> bool:
        return bool(self.cands)


class PowerOfTwoIngress(MostLoadedIngress):
    """Metron-style: two random instances under the load threshold, the less loaded one."""

    def __init__(self, estimates, threshold: float, rng: random.Random, pool: Sequence = ()):
        self.p = None
        self.threshold = threshold
        self.rng = rng
        self.proj = {}
        self.cands = []
        for e in sorted(estimates, key=lambda e: e.id):
            self.add(e)
        self.pool = list(pool)
        self.attached = []

    def eligible(self, e: Estimate) -> bool:
        return e.load < self.threshold

    def add(self, e: Estimate, scale_out: bool = False) -> None:
        if scale_out or self.eligible(e):
            self.proj[e.id] = e.load
            self.cands.append(e)

    def _take(self, pps: float, exclude: int | None) -> int | None:
        while True:
            live = [e for e in self.cands if e.id != exclude] if exclude is not None else self.cands
            if not live:
                return None
            two = self.rng.sample(live, 2) if len(live) > 1 else live
            e = min(two, key=lambda e: (self.proj[e.id], e.id))
            add = pps / e.r_max
            if self.proj[e.id] + add < self.threshold or self.proj[e.id] == 0:
                self.proj[e.id] += add
                return e.id
            self.cands.remove(e)


# -- policies -------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    decisions: list
    ingress: MostLoadedIngress  # for the chain's new flows until the next plan


class _Policy:
    name = "base"

    def __init__(self, params: ScalingParams, cpu_hz: float, network: NetworkProfile):
        self.p = params
        self.cpu_hz = cpu_hz
        self.network = network
        self._moved_at: dict[int, float] = {}

    def estimates(self, instances, gbps: Mapping[str, float]) -> dict[int, Estimate]:
        return {
            i.id: estimate(i, self.p, self.cpu_hz, self.network, gbps.get(i.worker, 0.0))
            for i in instances
        }

    def _ingress(self, estimates, pool) -> MostLoadedIngress:
        raise NotImplementedError

    def _hot(self, e: Estimate) -> bool:
        raise NotImplementedError

    def _amount(self, e: Estimate) -> float:
        raise NotImplementedError

    def plan(
        self,
        now: float,
        instances: Sequence[InstanceStats],
        flows_of: Mapping[int, Sequence[FlowRate]],
        gbps: Mapping[str, float] | None = None,
        pending: int = 0,
    ) -> Plan:
        """Decisions for one chain at ``now``.

        ``instances``: the chain's instances, attached and warm; ``flows_of``:
        measured flows per attached instance; ``gbps``: each worker's
        throughput (default: summed from ``instances``); ``pending``: pool
        instances asked for and not ready yet.  Applying the decisions in order
        is the caller's job; the returned ingress takes the new flows until
        the next plan.
        """
        if gbps is None:
            gbps = worker_gbps(instances)
        attached = sorted((i for i in instances if i.attached), key=lambda i: i.id)
        pool = sorted((i for i in instances if not i.attached), key=lambda i: i.id)
        est = self.estimates(instances, gbps)
        decisions: list = []

        # Reclaim: no flows left, core released; warm again if the pool is short.
        warm = len(pool) + pending
        live = []
        for n, i in enumerate(attached):
            if i.flows == 0 and len(live) + len(attached) - n > self.p.min_attached:
                keep = warm < self.p.pool_size
                warm += keep
                decisions.append(Detach(i.id, keep))
                self._moved_at.pop(i.id, None)
            else:
                live.append(i)

        ingress = self._ingress([est[i.id] for i in live], [est[i.id] for i in pool])

        # Shed flows off hot instances, hottest first; destinations as for new flows.
        hot = [i for i in live if self._hot(est[i.id])]
        hot.sort(key=lambda i: (-est[i.id].latency_us, -est[i.id].load, i.id))
        short = 0.0
        for i in hot:
            moved = self._moved_at.get(i.id)
            if moved is not None and (i.stats_at is None or i.stats_at <= moved):
                continue  # its stats do not show the last migration yet
            e = est[i.id]
            for f in select_flows(flows_of.get(i.id, ()), self._amount(e)):
                dst = ingress.pick(f.pps, exclude=i.id)
                if dst is None:
                    short += f.pps
                    continue
                decisions.append(Migrate(f.id, i.id, dst, f.pps))
                self._moved_at[i.id] = now

        if self.p.consolidate and not hot and len(live) >= 2:
            decisions += self._drain(now, live, est, flows_of, ingress)

        # Scale out ahead of new flows when nothing can take them.
        if not ingress.has_candidate() and ingress.pool:
            ingress.pick(0.0)
        attaches = [Attach(x) for x in ingress.attached]
        ingress.attached = []
        if short > 0:
            decisions.append(Shortage(short))
        # The pool after this plan: what is left of it, what is coming, what was reclaimed warm.
        need = self.p.pool_size - (warm - len(attaches))
        if need > 0:
            decisions.append(Prepare(need))
        # Attaches first: migrations may target the instances they bring in.
        return Plan(attaches + decisions, ingress)

    def _drain(self, now, live, est, flows_of, ingress) -> list:
        """Consolidation (not in the paper, off by default): when nothing is hot and the
        other candidates' headroom can take all of the least loaded instance's rate
        with one instance's worth to spare, move its flows there so that the next
        plan reclaims its core."""
        victim = min(live, key=lambda i: (est[i.id].pps, i.id))
        if victim.flows == 0:
            return []
        others = [e for e in ingress.cands if e.id != victim.id]
        if not others:
            return []
        room = sum(max(0.0, e.headroom_pps - ingress.proj[e.id]) for e in others)
        # keep a whole instance's headroom spare after the drain: no drain on the way up
        spare = sum(e.headroom_pps for e in others) / len(others)
        if room - est[victim.id].pps < spare:
            return []
        ingress.cands = [e for e in ingress.cands if e.id != victim.id]
        pool, ingress.pool = ingress.pool, []  # never scale out to consolidate
        out = []
        for f in flows_of.get(victim.id, ()):
            dst = ingress.pick(f.pps, exclude=victim.id)
            if dst is None:
                break
            out.append(Migrate(f.id, victim.id, dst, f.pps))
        ingress.pool = pool
        if out:
            self._moved_at[victim.id] = now
        return out


class QuadrantPolicy(_Policy):
    name = "quadrant"

    def _ingress(self, estimates, pool) -> MostLoadedIngress:
        return MostLoadedIngress(estimates, self.p, pool)

    def _hot(self, e: Estimate) -> bool:
        return zone(e.latency_us, self.p) == "above" or e.load > self.p.load_cap

    def _amount(self, e: Estimate) -> float:
        over_cap = max(0.0, e.pps - self.p.load_cap * e.r_max)
        return max(migration_amount(e.pps, e.r_max, e.latency_us, self.p), over_cap)


class MetronPolicy(_Policy):
    """Scale on load > ``threshold`` (80 %), power-of-two choices, no SLO.

    An overloaded instance sheds the rate above ``target`` (70 %) of its
    core, so it does not bounce on the threshold.  ``params`` is used for the
    pool sizing and ``min_attached`` only.
    """

    name = "metron"

    def __init__(self, params, cpu_hz, network, seed: int = 1, threshold=0.8, target=0.7):
        super().__init__(params, cpu_hz, network)
        self.rng = random.Random(seed)
        self.threshold = threshold
        self.target = target

    def _ingress(self, estimates, pool) -> PowerOfTwoIngress:
        return PowerOfTwoIngress(estimates, self.threshold, self.rng, pool)

    def _hot(self, e: Estimate) -> bool:
        return e.load > self.threshold

    def _amount(self, e: Estimate) -> float:
        return max(0.0, e.pps - self.target * e.r_max)
