"""The oracle: the highest per-core rate that keeps p99 under the SLO at steady load.

For a chain and an SLO, :func:`oracle_rate` bisects on the rate of one
instance running alone at constant load in the cluster model (same latency
table, same network profile at that instance's own throughput) for the
highest rate whose p99 is at most the SLO.  The benchmark's oracle then packs
the offered load at that rate at every instant: ``ceil(offered / rate)``
cores, no migration cost, no warm-up, perfect knowledge.
"""

from __future__ import annotations

from quadrant_app.latency_profile import NetworkProfile
from quadrant_app.scaling import ScalingParams
from tools.sim.cluster import ChainSetup, Cluster, Config
from tools.sim.micro import LatencyTable
from tools.sim.profile import ChainProfile
from tools.sim.traffic import constant


def mean_size(prof: ChainProfile, table: LatencyTable) -> float:
    """The packet size whose cycles are the table's mean cycles (1024 B if size-free)."""
    if prof.byte_cycles <= 0:
        return 1024.0
    return (table.mean_cycles - prof.base_cycles) / prof.byte_cycles


def steady_p99(prof, table, network, pps: float, duration: float = 0.3) -> float:
    flows = constant(pps, duration + 1.0, mean_size(prof, table))
    ch = ChainSetup(prof.name, prof, ScalingParams(1000.0, pool_size=0), flows, table)
    cfg = Config(workers=1, cores=1, policy="static", window_s=duration)
    res = Cluster([ch], cfg, network).run(duration)
    return res.chains[prof.name].p99_us


def oracle_rate(
    prof: ChainProfile,
    table: LatencyTable,
    network: NetworkProfile,
    slo_us: float,
    rel_tol: float = 0.002,
) -> float:
    """Highest pps with steady p99 <= ``slo_us`` (0 if even a trickle misses it)."""
    lo, hi = 0.0, 1.2 * table.r_max
    if steady_p99(prof, table, network, table.r_max * 0.002) > slo_us:
        return 0.0
    while hi - lo > rel_tol * table.r_max:
        mid = (lo + hi) / 2
        if steady_p99(prof, table, network, mid) <= slo_us:
            lo = mid
        else:
            hi = mid
    return lo
