"""The cluster model: workers, cores, chain instances, flows; the real scaling code on top.

Time advances in steps of ``dt`` (1 ms).  Per step, vectorised over every
core slot of every worker:

* flow events of the step (start, end, acceleration on/off) change the
  instances' packet rates; a new flow's instance comes from the chain's
  ingress (:mod:`quadrant_app.scaling`, unchanged);
* each attached instance's load ``rho = rate / r_max`` (its flows' own
  per-packet cycles) picks its latency distribution from the chain's
  :class:`~tools.sim.micro.LatencyTable` (queueing + batching, from the
  batch-level model), interpolated between grid loads;
* above the table's top load the rx ring fills as a fluid (``rate - r_max``)
  and drains the same way; packets that find it full are lost; the backlog's
  wait and the network latency at the worker's throughput (from the network
  profile) add to every packet of the step; a worker above its NIC's rate
  loses the excess;
* packets of the step are counted per (chain, load, delay) so that exact p99
  per chain (and per window) come out at the end.

Every ``control_s`` (100 ms) each instance reports what an agent would
(rate, cycles per packet, p99 per-batch time, flows) and the chain's policy
plans; migrations, attaches, reclaims and pool refills are applied as the
controller would (a new pool instance is ready ``prepare_s`` later).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

import numpy as np

from quadrant_app import scaling
from quadrant_app.latency_profile import NetworkProfile
from tools.sim.micro import DX_US, LatencyTable, mixture_quantile
from tools.sim.profile import ChainProfile
from tools.sim.traffic import Flows

FREE, PREP, WARM, ATT = 0, 1, 2, 3
MAX_SHIFT = 20_000  # bins of DX_US: 10 ms of backlog + network delay at most


@dataclasses.dataclass
class ChainSetup:
    name: str
    prof: ChainProfile
    params: scaling.ScalingParams
    flows: Flows
    table: LatencyTable
    oracle_pps: float | None = None  # per-core rate of the oracle, if known


@dataclasses.dataclass
class Config:
    workers: int = 8
    cores: int = 16
    nic_gbps: float = 100.0
    dt: float = 1e-3
    control_s: float = 0.1
    prepare_s: float = 1.0
    ring: int = 4096
    window_s: float = 1.0
    policy: str = "quadrant"  # quadrant | quadrant-norate | metron | static
    seed: int = 1


@dataclasses.dataclass
class ChainResult:
    name: str
    slo_us: float
    p99_us: float
    cores_avg: float
    cores_max: int
    loss: float
    oracle_cores_avg: float | None
    windows: list  # (t, p99_us, cores_avg, oracle_cores_avg, offered_pps)

    def to_json(self) -> dict:
        return {
            "p99_us": round(self.p99_us, 2),
            "slo_us": self.slo_us,
            "cores_avg": round(self.cores_avg, 3),
            "cores_max": self.cores_max,
            "loss": self.loss,
            "oracle_cores_avg": None
            if self.oracle_cores_avg is None
            else round(self.oracle_cores_avg, 3),
        }


@dataclasses.dataclass
class Result:
    policy: str
    chains: dict[str, ChainResult]
    counts: dict[str, int]
    wall_s: float
    sim_s: float
    flows: int


class _FlowsOf(Mapping):
    """The measured flows of an instance, looked up only for the instances that need them."""

    def __init__(self, sim: Cluster):
        self.sim = sim

    def __getitem__(self, slot):
        sim = self.sim
        k = sim.chain_of[slot]
        lo, hi = sim.f_block[k], sim.f_block[k + 1]  # only its chain's flows ...
        if sim.f_block_sorted[k]:  # ... and of those only the ones started so far
            hi = lo + int(np.searchsorted(sim.f_start[lo:hi], sim.placed_to, side="left"))
        idx = lo + np.flatnonzero(sim.flow_inst[lo:hi] == slot)
        pps = self.sim.pps_now[idx]
        order = np.argsort(-pps, kind="stable")  # the core sorts them again: cheap when sorted
        fr = scaling.FlowRate
        return list(map(fr, idx[order].tolist(), [slot] * len(idx), pps[order].tolist()))

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0


def _policy(cfg: Config, ch: ChainSetup, network: NetworkProfile, k: int):
    hz = ch.prof.cpu_hz
    if cfg.policy == "quadrant":
        return scaling.QuadrantPolicy(ch.params, hz, network)
    if cfg.policy == "quadrant-norate":
        p = dataclasses.replace(ch.params, rate_adapt=False)
        return scaling.QuadrantPolicy(p, hz, network)
    if cfg.policy == "metron":
        return scaling.MetronPolicy(ch.params, hz, network, seed=cfg.seed * 1000 + k)
    if cfg.policy == "static":
        return None
    raise ValueError(f"policy: unknown {cfg.policy!r}")


class Cluster:
    def __init__(self, chains: list[ChainSetup], cfg: Config, network: NetworkProfile):
        self.cfg, self.chains, self.network = cfg, chains, network
        nslot = cfg.workers * cfg.cores
        self.worker_of = np.arange(nslot) // cfg.cores
        self.state = np.zeros(nslot, dtype=np.int8)
        self.chain_of = np.full(nslot, -1, dtype=np.int64)
        self.ready_at = np.full(nslot, np.inf)
        self.q = np.zeros(nslot)  # rx backlog, packets
        self.i_pps = np.zeros(nslot)
        self.i_cyc = np.zeros(nslot)  # sum of pps * cycles/packet
        self.i_bps = np.zeros(nslot)
        self.i_nflows = np.zeros(nslot, dtype=np.int64)
        g = len(chains[0].table.rho)
        if any(len(c.table.rho) != g for c in chains):
            raise ValueError("all chains' latency tables must share one load grid")
        self.grid = g
        self.cdf = np.concatenate([c.table.cdf for c in chains])
        self.bcyc = np.array([c.prof.batch_cycles for c in chains])
        self.bsize = np.array([c.prof.batch_size for c in chains], dtype=float)
        self.hz = np.array([c.prof.cpu_hz for c in chains])
        self.per_batch = self.bcyc / self.bsize  # per-batch cycles spread over a full batch
        self.nominal = np.array([c.table.mean_cycles for c in chains])
        self.rho_top = chains[0].table.rho[-1]
        # p99 wait beyond the batch itself at the table's top load (heavy-traffic scaling)
        self.top_wait = np.array(
            [max(c.table.p99_us[-1] - c.table.full_batch_us, 0.0) for c in chains]
        )
        # flows of all chains, one array each
        self.f_chain = np.concatenate([np.full(len(c.flows), k) for k, c in enumerate(chains)])
        self.f_block = np.cumsum([0] + [len(c.flows) for c in chains])  # chain k: [b[k], b[k+1])
        self.f_block_sorted = [bool(np.all(np.diff(c.flows.start) >= 0)) for c in chains]
        self.placed_to = 0.0  # flows that start before this time have been placed
        cat = lambda a: np.concatenate([getattr(c.flows, a) for c in chains])  # noqa: E731
        self.f_start, self.f_end, self.f_pps0 = cat("start"), cat("end"), cat("pps")
        self.f_size, self.f_a0, self.f_a1 = cat("size"), cat("accel_from"), cat("accel_to")
        self.f_fac = np.concatenate([np.full(len(c.flows), c.flows.accel_factor) for c in chains])
        self.f_cyc = np.concatenate([c.prof.cycles(c.flows.size) for c in chains])
        self.pps_now = self.f_pps0.copy()
        # int32: the per-instance scans (_FlowsOf) read half the bytes of int64
        self.flow_inst = np.full(len(self.f_chain), -1, dtype=np.int32)
        self.ended = np.zeros(len(self.f_chain), dtype=bool)
        self.ev_start = np.argsort(self.f_start, kind="stable")
        self.s_start = self.f_start[self.ev_start]
        self.ev_end = np.argsort(self.f_end, kind="stable")
        self.s_end = self.f_end[self.ev_end]
        fast = np.flatnonzero(np.isfinite(self.f_a0))
        self.ev_a0 = fast[np.argsort(self.f_a0[fast], kind="stable")]
        self.ev_a1 = fast[np.argsort(self.f_a1[fast], kind="stable")]
        self.s_a0, self.s_a1 = self.f_a0[self.ev_a0], self.f_a1[self.ev_a1]
        self.ptr = [0, 0, 0, 0]
        self.policies = [_policy(cfg, c, network, k) for k, c in enumerate(chains)]
        self.ingress = [None] * len(chains)
        self.plans_at = -math.inf
        self.counts = dict.fromkeys(
            ("migrations", "attaches", "reclaims", "prepares", "shortages", "unplaced"), 0
        )
        self.net_x = np.array(network.gbps)
        self.net_y = np.array(network.p99_us)
        self.chain_pps = np.zeros(len(chains))
        self.chain_flows = np.zeros(len(chains), dtype=np.int64)
        self.core_gbps = np.array(
            [
                c.table.r_max * (c.flows.size.mean() if len(c.flows) else 1024.0) * 8 / 1e9
                for c in chains
            ]
        )
        self.expected = np.array([c.flows.pps.mean() if len(c.flows) else 0.0 for c in chains])

    # -- instances ------------------------------------------------------------------------

    def _free_slot(self, k: int) -> int | None:
        """Placement: a free core on the worker with the least NIC capacity committed.

        An instance commits its chain's full per-core throughput, so instances
        placed while empty do not overrun their NIC later; workers where the
        new one still fits come first.
        """
        free = self.state == FREE
        if not free.any():
            return None
        nw = self.cfg.workers
        nfree = np.bincount(self.worker_of[free], minlength=nw)
        busy = ~free
        committed = np.bincount(
            self.worker_of[busy], weights=self.core_gbps[self.chain_of[busy]], minlength=nw
        )
        cand = np.flatnonzero(nfree > 0)
        fits = committed[cand] + self.core_gbps[k] <= self.cfg.nic_gbps
        w = int(cand[np.lexsort((-nfree[cand], committed[cand], ~fits))[0]])
        return int(np.flatnonzero(free & (self.worker_of == w))[0])

    def _new_instance(self, k: int, st: int, now: float) -> int | None:
        s = self._free_slot(k)
        if s is None:
            return None
        self.state[s] = st
        self.chain_of[s] = k
        self.ready_at[s] = now + self.cfg.prepare_s if st == PREP else now
        return s

    def _move(self, idx, dst):
        """Put flows ``idx`` (assigned or not) on instance ``dst`` (or -1: nowhere)."""
        src = self.flow_inst[idx]
        dst = np.asarray(dst, dtype=np.int64)
        if dst.ndim == 0:
            dst = np.full(len(idx), int(dst), dtype=np.int64)
        self._carry(src, idx, -1.0)
        self._carry(dst, idx, 1.0)
        self.flow_inst[idx] = dst
        # rounding residue of many adds and subtracts: an instance without flows carries nothing
        emptied = src[(src >= 0)]
        emptied = emptied[self.i_nflows[emptied] == 0]
        self.i_pps[emptied] = self.i_cyc[emptied] = self.i_bps[emptied] = 0.0

    def _carry(self, where, idx, sign: float):
        """Add (``sign`` 1) or take off (-1) flows ``idx``'s load on instances ``where``."""
        ok = where >= 0
        if not ok.all():
            if not ok.any():
                return
            where, idx = where[ok], idx[ok]
        p = self.pps_now[idx] * sign
        np.add.at(self.i_pps, where, p)
        np.add.at(self.i_cyc, where, p * self.f_cyc[idx])
        np.add.at(self.i_bps, where, p * self.f_size[idx] * 8)
        np.add.at(self.i_nflows, where, int(sign))

    def _rate(self, idx, delta):
        """Change the rate of flows ``idx`` by ``delta`` pps each."""
        self.pps_now[idx] += delta
        np.add.at(self.chain_pps, self.f_chain[idx], delta)
        inst = self.flow_inst[idx]
        ok = inst >= 0
        np.add.at(self.i_pps, inst[ok], delta[ok])
        np.add.at(self.i_cyc, inst[ok], delta[ok] * self.f_cyc[idx][ok])
        np.add.at(self.i_bps, inst[ok], delta[ok] * self.f_size[idx][ok] * 8)

    # -- per-step model -------------------------------------------------------------------

    def _events(self, t1: float):
        p = self.ptr
        # starts: the ingress choice, flow by flow
        j = int(np.searchsorted(self.s_start, t1, side="left"))
        new = self.ev_start[p[0] : j]
        p[0] = j
        self.placed_to = t1
        if len(new):
            dst = np.empty(len(new), dtype=np.int64)
            for n, f in enumerate(new):
                dst[n] = self._place(int(self.f_chain[f]))
            np.add.at(self.chain_pps, self.f_chain[new], self.pps_now[new])
            np.add.at(self.chain_flows, self.f_chain[new], 1)
            self._move(new, dst)
        # acceleration on / off
        for k, times, ev, sign in ((1, self.s_a0, self.ev_a0, 1), (2, self.s_a1, self.ev_a1, -1)):
            j = int(np.searchsorted(times, t1, side="left"))
            idx = ev[p[k] : j]
            p[k] = j
            idx = idx[~self.ended[idx] & (self.f_start[idx] < t1)]
            if len(idx):
                self._rate(idx, sign * self.f_pps0[idx] * (self.f_fac[idx] - 1))
        # ends
        j = int(np.searchsorted(self.s_end, t1, side="left"))
        idx = self.ev_end[p[3] : j]
        p[3] = j
        if len(idx):
            np.add.at(self.chain_pps, self.f_chain[idx], -self.pps_now[idx])
            np.add.at(self.chain_flows, self.f_chain[idx], -1)
            self._move(idx, -1)
            self.ended[idx] = True

    def _heavy_wait_us(self, rho, rmax, k_of):
        """Extra wait of loads above the latency table's top load (0.98), up to a full ring.

        Heavy-traffic scaling (Kingman): the queueing wait grows as ``1 / (1 - rho)``, so
        the top row's p99 wait ``w`` becomes ``w (1 - top) / (1 - rho)``; the top row is
        shifted by the difference.  A packet never waits longer than a full rx ring,
        which is also what a load at or above 1 gets (the ring fills).  Without this a
        core at 0.999 of its rate would count with the latency of 0.98.
        """
        top = self.rho_top
        over = rho > top
        if not over.any():
            return 0.0
        ring_us = self.cfg.ring / rmax * 1e6
        gap = np.maximum(1.0 - rho, 1e-12)
        extra = self.top_wait[k_of] * ((1.0 - top) / gap - 1.0)
        return np.where(over, np.minimum(np.where(rho >= 1.0, np.inf, extra), ring_us), 0.0)

    def _next_event(self) -> float:
        p, out = self.ptr, math.inf
        for k, times in enumerate((self.s_start, self.s_a0, self.s_a1, self.s_end)):
            if p[k] < len(times):
                out = min(out, float(times[p[k]]))
        return out

    def _place(self, k: int) -> int:
        ing = self.ingress[k]
        if ing is None:  # static: everything on the chain's first attached instance
            att = np.flatnonzero((self.state == ATT) & (self.chain_of == k))
            return int(att[0]) if len(att) else -1
        dst = ing.pick(float(self.expected[k]))
        self._attach(ing)
        if dst is None:
            self.counts["unplaced"] += 1
            att = np.flatnonzero((self.state == ATT) & (self.chain_of == k))
            if not len(att):
                return -1
            dst = int(att[np.argmin(self.i_pps[att] * self.i_cyc[att])])
        return int(dst)

    def _attach(self, ing):
        for s in ing.attached:
            if self.state[s] != WARM:
                raise RuntimeError(f"attach of instance {s} in state {self.state[s]}")
            self.state[s] = ATT
            self.counts["attaches"] += 1
        ing.attached = []

    # -- control --------------------------------------------------------------------------

    def _control(self, now: float, acc):
        self.state[(self.state == PREP) & (self.ready_at <= now)] = WARM
        span = max(acc["t"], 1e-9)
        pps = acc["pk"] / span
        cyc = np.where(acc["pk"] > 0, acc["cyc"] / np.maximum(acc["pk"], 1e-9), 0)
        cyc = np.where(cyc > 0, cyc, self.nominal[np.maximum(self.chain_of, 0)])
        bps = acc["bits"] / span
        gbps_w = np.bincount(self.worker_of, weights=bps, minlength=self.cfg.workers) / 1e9
        gbps = {str(w): float(x) for w, x in enumerate(gbps_w)}
        flows_of = _FlowsOf(self)
        for k, ch in enumerate(self.chains):
            pol = self.policies[k]
            if pol is None:
                continue
            self.expected[k] = self.chain_pps[k] / max(self.chain_flows[k], 1)
            mine = np.flatnonzero(
                (self.chain_of == k) & ((self.state == WARM) | (self.state == ATT))
            )
            hz, bc, bs = ch.prof.cpu_hz, ch.prof.batch_cycles, ch.prof.batch_size
            rmax = hz / (cyc[mine] + bc / bs)
            bp99 = ch.table.batch_p99(pps[mine] / rmax)
            bp99 = np.where(acc["full"][mine] > 0, np.maximum(bp99, ch.table.full_batch_us), bp99)
            insts = [
                scaling.InstanceStats(
                    id=int(s),
                    worker=str(self.worker_of[s]),
                    attached=bool(self.state[s] == ATT),
                    pps=float(pps[s]),
                    bps=float(bps[s]),
                    cycles_per_packet=float(cyc[s]),
                    batch_cycles=bc,
                    batch_size=bs,
                    batch_p99_us=float(b),
                    flows=int(self.i_nflows[s]),
                    stats_at=now,
                )
                for s, b in zip(mine, bp99, strict=True)
            ]
            pending = int(((self.chain_of == k) & (self.state == PREP)).sum())
            plan = pol.plan(now, insts, flows_of, gbps, pending)
            self._apply(k, plan, now)
            self.ingress[k] = plan.ingress

    def _apply(self, k: int, plan, now: float):
        moves, dsts = [], []
        for d in plan.decisions:
            if isinstance(d, scaling.Attach):
                if self.state[d.instance_id] != WARM:
                    raise RuntimeError(f"attach of instance {d.instance_id}: not warm")
                self.state[d.instance_id] = ATT
                self.counts["attaches"] += 1
            elif isinstance(d, scaling.Detach):
                s = d.instance_id
                if self.i_nflows[s] != 0:
                    raise RuntimeError(f"reclaim of instance {s} with flows")
                self.i_pps[s] = self.i_cyc[s] = self.i_bps[s] = 0.0
                self.state[s] = WARM if d.keep_warm else FREE
                if not d.keep_warm:
                    self.chain_of[s] = -1
                self.counts["reclaims"] += 1
            elif isinstance(d, scaling.Migrate):
                if self.flow_inst[d.flow_id] != d.src or self.state[d.dst] != ATT:
                    raise RuntimeError(f"bad migration {d}")
                moves.append(d.flow_id)
                dsts.append(d.dst)
                self.counts["migrations"] += 1
            elif isinstance(d, scaling.Prepare):
                for _ in range(d.count):
                    if self._new_instance(k, PREP, now) is None:
                        break
                    self.counts["prepares"] += 1
            elif isinstance(d, scaling.Shortage):
                self.counts["shortages"] += 1
        if moves:
            self._move(np.array(moves, dtype=np.int64), np.array(dsts, dtype=np.int64))

    # -- the run --------------------------------------------------------------------------

    def run(self, duration: float) -> Result:
        cfg = self.cfg
        t0 = time.perf_counter()
        for k, ch in enumerate(self.chains):
            for _ in range(max(ch.params.min_attached, 1)):
                self._new_instance(k, ATT, 0.0)
            if self.policies[k] is not None:
                for _ in range(ch.params.pool_size):
                    self._new_instance(k, WARM, 0.0)
        nslot = len(self.state)
        nch = len(self.chains)
        steps = int(round(duration / cfg.dt))
        per_ctl = max(1, int(round(cfg.control_s / cfg.dt)))
        per_win = max(1, int(round(cfg.window_s / cfg.dt)))
        acc = self._zero_acc(nslot)
        keys, wts = [], []
        lost = np.zeros(nch)
        offered = np.zeros(nch)
        cores_sum = np.zeros(nch)
        cores_max = np.zeros(nch, dtype=np.int64)
        ocores_sum = np.zeros(nch)
        win_cores = np.zeros(nch)
        win_ocores = np.zeros(nch)
        win_off = np.zeros(nch)
        ora = np.array([c.oracle_pps or np.nan for c in self.chains])
        windows = [[] for _ in range(nch)]
        nx, ny = self.net_x, self.net_y
        slope = max(0.0, (ny[-1] - ny[-2]) / (nx[-1] - nx[-2])) if len(nx) > 1 else 0.0
        G = self.grid
        total = np.zeros(nch * G * MAX_SHIFT)  # packets per (chain, load, delay)
        self._control(0.0, acc)
        n_counted = 0
        ora_ok = ~np.isnan(ora)
        ora_div = np.where(ora_ok, ora, 1.0)
        step = 0
        while step < steps:
            # times from the step count, not sums: t + dt can land a rounding step past
            # the run's end, which ended every flow whose end is the run's end
            t1 = (step + 1) * cfg.dt
            self._events(t1)
            att = self.state == ATT
            k_of = np.maximum(self.chain_of, 0)
            lam = np.maximum(self.i_pps, 0.0)
            cyc = np.where(
                (lam > 0) & (self.i_cyc > 0),
                self.i_cyc / np.maximum(lam, 1e-12),
                self.nominal[k_of],
            )
            rmax = self.hz[k_of] / (cyc + self.per_batch[k_of])
            rho = lam / rmax
            # Steps with nothing changing (no flow event, no backlog) are taken at once.
            adv = 1
            if not (self.q.any() or (rho >= 1.0).any()):
                nxt = self._next_event()
                to_ev = int(nxt / cfg.dt) - step if nxt < math.inf else steps
                to_ctl = per_ctl - step % per_ctl
                to_win = per_win - step % per_win
                adv = max(1, min(to_ev, to_ctl, to_win, steps - step))
            dt = cfg.dt * adv
            t1 = (step + adv) * cfg.dt
            q = self.q + (lam - rmax) * dt
            drop = np.maximum(q - cfg.ring, 0.0)
            self.q = np.minimum(np.maximum(q, 0.0), cfg.ring)
            gbps = np.bincount(self.worker_of, weights=self.i_bps, minlength=cfg.workers) / 1e9
            nic_keep = np.minimum(1.0, cfg.nic_gbps / np.maximum(gbps, 1e-12))
            net = np.interp(gbps, nx, ny) + slope * np.maximum(gbps - nx[-1], 0.0)
            arrive = lam * dt
            served = np.maximum(arrive - drop, 0.0) * nic_keep[self.worker_of]
            wait = np.maximum(self.q / rmax * 1e6, self._heavy_wait_us(rho, rmax, k_of))
            wait += net[self.worker_of]
            shift = np.minimum(np.rint(wait / DX_US), MAX_SHIFT - 1).astype(np.int64)
            sl = np.flatnonzero(att & (lam > 0))
            n_counted += adv
            g, f = self.chains[0].table.coords(np.minimum(rho[sl], self.rho_top))
            base = (k_of[sl] * G + g) * MAX_SHIFT + shift[sl]
            keys.append(base)
            wts.append(served[sl] * (1 - f))
            keys.append(base + MAX_SHIFT)
            wts.append(served[sl] * f)
            ks, ar = k_of[sl], arrive[sl]
            lost += np.bincount(ks, weights=ar - served[sl], minlength=nch)
            placed = np.bincount(ks, weights=ar, minlength=nch)
            lost += np.maximum(self.chain_pps * dt - placed, 0.0)
            offered += self.chain_pps * dt
            nc = np.bincount(self.chain_of[att], minlength=nch)[:nch]
            cores_sum += nc * adv
            cores_max = np.maximum(cores_max, nc)
            oc = np.where(ora_ok, np.ceil(self.chain_pps / ora_div), 0.0)
            ocores_sum += oc * adv
            win_cores += nc * adv
            win_ocores += oc * adv
            win_off += self.chain_pps * adv
            acc["t"] += dt
            acc["pk"] += arrive
            acc["cyc"] += lam * cyc * dt
            acc["bits"] += self.i_bps * dt
            acc["full"] += (rho >= 1.0) | (self.q > 0)
            step += adv
            if step % per_ctl == 0:
                self._control(t1, acc)
                acc = self._zero_acc(nslot)
            if step % per_win == 0:
                wk, ww = self._histogram(keys, wts, total)
                self._window(windows, t1, wk, ww, win_cores, win_ocores, win_off, per_win)
                win_cores[:] = 0
                win_ocores[:] = 0
                win_off[:] = 0
        self._histogram(keys, wts, total)
        tk = np.flatnonzero(total)
        tw = total[tk]
        out = {}
        for k, ch in enumerate(self.chains):
            p99 = self._quantile(tk, tw, k)
            n = max(n_counted, 1)
            out[ch.name] = ChainResult(
                ch.name,
                ch.params.slo_us,
                p99,
                float(cores_sum[k] / n),
                int(cores_max[k]),
                _share(lost[k], offered[k]),
                None if np.isnan(ora[k]) else float(ocores_sum[k] / n),
                windows[k],
            )
        return Result(
            cfg.policy,
            out,
            dict(self.counts),
            time.perf_counter() - t0,
            duration,
            len(self.f_chain),
        )

    @staticmethod
    def _zero_acc(n):
        return {
            "t": 0.0,
            "pk": np.zeros(n),
            "cyc": np.zeros(n),
            "bits": np.zeros(n),
            "full": np.zeros(n),
        }

    @staticmethod
    def _histogram(keys, wts, total):
        """The packets of the steps since the last call, sparse; added into ``total``."""
        if not keys:
            return np.empty(0, np.int64), np.empty(0)
        dense = np.bincount(np.concatenate(keys), np.concatenate(wts), minlength=len(total))
        keys.clear()
        wts.clear()
        nz = np.flatnonzero(dense)
        w = dense[nz]
        total[nz] += w
        return nz, w

    def _quantile(self, keys, w, k, q=0.99) -> float:
        G = self.grid
        lo, hi = k * G * MAX_SHIFT, (k + 1) * G * MAX_SHIFT
        sel = (keys >= lo) & (keys < hi) & (w > 0)
        if not sel.any():
            return 0.0
        kk = keys[sel]
        return mixture_quantile(self.cdf, kk // MAX_SHIFT, kk % MAX_SHIFT, w[sel], q)

    def _window(self, windows, t1, wk, ww, cores, ocores, off, n):
        for k in range(len(self.chains)):
            windows[k].append(
                (
                    t1,
                    self._quantile(wk, ww, k),
                    float(cores[k] / n),
                    float(ocores[k] / n),
                    float(off[k] / n),
                )
            )


def _share(lost: float, offered: float) -> float:
    """Loss ratio; float residue of served = arrived - dropped is not loss."""
    if offered <= 0 or lost <= offered * 1e-12:
        return 0.0
    return float(lost / offered)
