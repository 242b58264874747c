"""One chain instance, batch by batch: the latency table the cluster model reads.

A chain instance on its core is a poll-mode server: when its queue (the VF's
rx ring) is not empty it takes ``n = min(batch_size, queued)`` packets and
runs them through all its NFs in ``(batch_cycles + sum of their cycles) /
cpu_hz``; every packet of the batch leaves when the batch ends.  An empty
poll waits for the next arrival.  Arrivals are Poisson (the superposition of
many flows), packet sizes are drawn per packet from the traffic's size
distribution, per-packet cycles follow from the chain profile.

:func:`latency_table` runs this discrete-event model (one event per batch,
vectorised over a grid of loads ``rho = rate / r_max``) and keeps, per load,
the distribution of packet latencies (queueing + batch) and the p99
per-batch execution time (what the agent reports).  The cluster model
(:mod:`tools.sim.cluster`) looks instances up in it at every time step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tools.sim.profile import ChainProfile

DX_US = 0.5  # latency axis resolution
AXIS_US = 8000.0  # latencies beyond go to the overflow (count as above any SLO)
GRID = np.concatenate([[0.002], np.arange(0.02, 0.96, 0.02), [0.96, 0.97, 0.98]])


@dataclasses.dataclass(frozen=True)
class SizeDist:
    """Packet sizes: lognormal around ``median`` bytes, clipped to [64, 1500].

    ``kind="exponential"`` (mean ``median``, unclipped) and ``sigma=0`` (all
    ``median``) are there for checks against queueing theory.
    """

    median: float = 1024.0
    sigma: float = 0.35
    kind: str = "lognormal"

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        if self.kind == "exponential":
            return rng.exponential(self.median, shape)
        if self.sigma == 0:
            return np.full(shape, float(self.median))
        return np.clip(rng.lognormal(np.log(self.median), self.sigma, shape), 64.0, 1500.0)

    def mean_cycles(self, prof: ChainProfile, rng=None, n=200_000) -> float:
        rng = rng or np.random.default_rng(12345)
        return float(prof.cycles(self.sample(rng, n)).mean())


def run_batches(arrivals: np.ndarray, cycles: np.ndarray, batch: int, batch_cycles, hz):
    """The poll-mode server on each row of ``arrivals`` (sorted times, s).

    Returns per row the packet latencies (s) and the batch execution times (s).
    """
    r, n = arrivals.shape
    rows = np.arange(r)
    span = float(arrivals[:, -1].max()) * 2 + 1.0
    offs = rows * span
    flat = (arrivals + offs[:, None]).ravel()
    pc = np.zeros((r, n + 1))
    np.cumsum(cycles, axis=1, out=pc[:, 1:])
    pcf = pc.ravel()
    base = rows * (n + 1)
    ptr = np.zeros(r, dtype=np.int64)
    s = arrivals[:, 0].copy()
    ns, ends, times = [], [], []
    while True:
        active = ptr < n
        if not active.any():
            break
        avail = np.searchsorted(flat, s + offs, side="right") - rows * n
        empty = active & (avail <= ptr)
        s = np.where(empty, arrivals[rows, np.minimum(ptr, n - 1)], s)
        avail = np.where(empty, ptr + 1, avail)
        k = np.where(active, np.minimum(batch, avail - ptr), 0)
        work = pcf[base + ptr + k] - pcf[base + ptr]
        t = np.where(active, (batch_cycles + work) / hz, 0.0)
        end = s + t
        ns.append(k)
        ends.append(end)
        times.append(t)
        ptr += k
        s = np.where(active, end, s)
    ns, ends, times = np.array(ns), np.array(ends), np.array(times)
    lat, bt = [], []
    for i in range(r):
        lat.append(np.repeat(ends[:, i], ns[:, i]) - arrivals[i])
        bt.append(times[:, i][ns[:, i] > 0])
    return lat, bt


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Per load ``rho``: CDF of latency on the axis, p99 batch time, mean latency."""

    chain: str
    rho: np.ndarray  # (G,)
    cdf: np.ndarray  # (G, L+1): share of packets with latency < k * DX_US
    batch_p99_us: np.ndarray  # (G,)
    mean_us: np.ndarray  # (G,)
    p99_us: np.ndarray  # (G,)
    full_batch_us: float
    r_max: float  # at the mean per-packet cycles of the size distribution
    mean_cycles: float

    def coords(self, rho: np.ndarray):
        """Grid index and weight of the upper neighbour for each load (clipped to the grid)."""
        # np.minimum/np.maximum: the same as np.clip, without its per-call overhead
        # (this runs at every step of the cluster model)
        x = np.minimum(np.maximum(rho, self.rho[0]), self.rho[-1])
        g = np.searchsorted(self.rho, x, side="right") - 1
        g = np.minimum(np.maximum(g, 0), len(self.rho) - 2)
        f = (x - self.rho[g]) / (self.rho[g + 1] - self.rho[g])
        return g, np.minimum(np.maximum(f, 0.0), 1.0)

    def batch_p99(self, rho: np.ndarray) -> np.ndarray:
        g, f = self.coords(rho)
        v = self.batch_p99_us[g] * (1 - f) + self.batch_p99_us[g + 1] * f
        return np.where(rho >= 1.0, np.maximum(v, self.full_batch_us), v)


def latency_table(
    prof: ChainProfile,
    sizes: SizeDist = SizeDist(),
    packets: int = 12_000,
    seed: int = 7,
    grid: np.ndarray = GRID,
    packets_high: int | None = None,
    split: float = 0.5,
) -> LatencyTable:
    """The table over ``grid``; loads from ``split`` on get ``packets_high``
    packets (default 8x): their tails need long runs, their batches are big."""
    rng = np.random.default_rng(seed)
    mean_c = sizes.mean_cycles(prof)
    r_max = prof.cpu_hz / (mean_c + prof.batch_cycles / prof.batch_size)
    high = packets * 8 if packets_high is None else packets_high
    lat, bt = [], []
    for part, n in ((grid[grid < split], packets), (grid[grid >= split], high)):
        if not len(part):
            continue
        gaps = rng.exponential(1.0, (len(part), n)) / (part * r_max)[:, None]
        arr = np.cumsum(gaps, axis=1)
        cyc = prof.cycles(sizes.sample(rng, arr.shape))
        a, b = run_batches(arr, cyc, prof.batch_size, prof.batch_cycles, prof.cpu_hz)
        lat += a
        bt += b
    nbins = int(AXIS_US / DX_US)
    edges = np.arange(nbins + 1) * DX_US
    cdf = np.empty((len(grid), nbins + 1))
    bp99, mean, p99 = (np.empty(len(grid)) for _ in range(3))
    for i in range(len(grid)):
        x = np.sort(lat[i][len(lat[i]) // 10 :] * 1e6)  # the first tenth warms up
        cdf[i] = np.searchsorted(x, edges, side="left") / len(x)
        mean[i] = x.mean()
        p99[i] = np.quantile(x, 0.99)
        bp99[i] = np.quantile(bt[i][len(bt[i]) // 10 :] * 1e6, 0.99)
    # Latency grows stochastically with load; keep sampling noise from saying otherwise.
    cdf = np.minimum.accumulate(cdf, axis=0)
    bp99 = np.maximum.accumulate(bp99)
    p99 = np.maximum.accumulate(p99)
    full = (prof.batch_cycles + prof.batch_size * mean_c) / prof.cpu_hz * 1e6
    return LatencyTable(prof.name, grid.copy(), cdf, bp99, mean, p99, full, r_max, mean_c)


_CACHE: dict = {}


def cached_table(prof: ChainProfile, sizes: SizeDist = SizeDist(), seed: int = 7) -> LatencyTable:
    key = (prof, sizes, seed)
    if key not in _CACHE:
        _CACHE[key] = latency_table(prof, sizes, seed=seed)
    return _CACHE[key]


def mixture_quantile(cdf: np.ndarray, g, shift_bins, weights, q: float = 0.99) -> float:
    """``q``-quantile (µs) of a mixture: weight ``w`` of packets whose latency has the
    CDF row ``cdf[g]``, delayed by ``shift_bins * DX_US`` more (backlog, network)."""
    g = np.asarray(g)
    sh = np.asarray(shift_bins, dtype=np.int64)
    w = np.asarray(weights, dtype=float)
    tot = w.sum()
    if tot <= 0:
        return 0.0
    nb = cdf.shape[1] - 1
    lo, hi = 0, nb + int(sh.max()) + 1
    while lo < hi:
        k = (lo + hi) // 2
        idx = np.clip(k - sh, 0, nb)
        if (w * cdf[g, idx]).sum() >= q * tot:
            hi = k
        else:
            lo = k + 1
    if lo > nb + int(sh.max()):
        return float("inf")
    return lo * DX_US
