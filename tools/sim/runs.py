"""Building and running simulations: one chain under a policy, the cluster-scale run."""

from __future__ import annotations

import dataclasses

import numpy as np

from quadrant_app.latency_profile import NetworkProfile, load_profile
from quadrant_app.scaling import ScalingParams
from tools.sim import micro, oracle, profile, traffic
from tools.sim.cluster import ChainSetup, Cluster, Config, Result


@dataclasses.dataclass
class Setup:
    """Everything a run needs that comes from files."""

    chains: dict[str, profile.ChainProfile]
    network: NetworkProfile
    sizes: micro.SizeDist = micro.SizeDist()

    @classmethod
    def load(cls, chains_path=profile.DEFAULT, network_path=profile.NETWORK_DEFAULT):
        return cls(profile.load(chains_path), load_profile(network_path))

    def table(self, name: str) -> micro.LatencyTable:
        return micro.cached_table(self.chains[name], self.sizes)

    def oracle_pps(self, name: str, slo_us: float) -> float:
        key = (name, slo_us)
        cache = self.__dict__.setdefault("_oracle", {})
        if key not in cache:
            cache[key] = oracle.oracle_rate(
                self.chains[name], self.table(name), self.network, slo_us
            )
        return cache[key]


def run_chain(
    setup: Setup,
    name: str,
    slo_us: float,
    policy: str,
    ramp: traffic.Ramp,
    cfg: Config,
    alpha: float = 0.6,
    beta: float = 0.9,
    pool_size: int = 2,
    with_oracle: bool = True,
    load_cap: float = 0.9,
    tail_s: float = 0.0,
    consolidate: bool = False,
) -> Result:
    """One chain alone on the cluster, the ramp as traffic (and ``tail_s`` more without)."""
    tab = setup.table(name)
    flows = traffic.ramp(ramp, np.random.default_rng(cfg.seed))
    params = ScalingParams(
        slo_us,
        alpha=alpha,
        beta=beta,
        load_cap=load_cap,
        pool_size=pool_size,
        consolidate=consolidate,
    )
    ora = setup.oracle_pps(name, slo_us) if with_oracle else None
    ch = ChainSetup(name, setup.chains[name], params, flows, tab, ora or None)
    return Cluster([ch], dataclasses.replace(cfg, policy=policy), setup.network).run(
        ramp.duration + tail_s
    )


def run_scale(
    setup: Setup,
    policy: str = "quadrant",
    workers: int = 100,
    cores: int = 16,
    flows: int = 1_000_000,
    slo_us: float = 100.0,
    ramp_s: float = 60.0,
    steady_s: float = 60.0,
    mean_flow_s: float = 60.0,
    load: float = 0.6,
    seed: int = 1,
    dt: float = 4e-3,
    control_s: float = 0.2,
    pool_size: int = 16,
    nic_gbps: float = 100.0,
) -> Result:
    """The three canonical chains at once on ``workers x cores``, ``flows`` flows in all.

    The peak offers ``load`` of the cluster's NIC capacity (``workers *
    nic_gbps``), split evenly (in bits) between the chains; with 1 KB packets
    the NICs, not the cores, are the scarce resource for the light chains.
    Flow counts follow from the ramp (``N_peak * (1 + (ramp/2 + steady) / D)``
    arrivals per chain).

    Steps of 4 ms (the benchmark's runs: 1 ms): an rx ring of 4096 fills in
    about 1 ms at these chains' rates, so neither 2 nor 4 ms resolves its
    filling; the fluid ring model and the latency tables are what count, and
    flows last a minute, stats come every 200 ms.  Against 2 ms steps the
    results agree within 1.5 µs of p99, 0.11 % of cores and 6 % of loss
    (``docs/benchmarks.rst``, "Cluster scale"), on about 25 % less CPU.
    """
    names = list(profile.CANONICAL)
    per_chain = flows / len(names)
    n_peak = per_chain / (1 + (ramp_s / 2 + steady_s) / mean_flow_s)
    chains = []
    for k, name in enumerate(names):
        tab = setup.table(name)
        ora = setup.oracle_pps(name, slo_us)
        bits = oracle.mean_size(setup.chains[name], tab) * 8
        peak = load * workers * nic_gbps * 1e9 / len(names) / bits
        tr = traffic.Ramp(
            peak_pps=peak,
            ramp_s=ramp_s,
            steady_s=steady_s,
            growth=n_peak / ramp_s,
            mean_flow_s=mean_flow_s,
        )
        fl = traffic.ramp(tr, np.random.default_rng(seed * 100 + k))
        params = ScalingParams(slo_us, pool_size=pool_size)
        chains.append(ChainSetup(name, setup.chains[name], params, fl, tab, ora or None))
    cfg = Config(
        workers=workers,
        cores=cores,
        policy=policy,
        seed=seed,
        dt=dt,
        nic_gbps=nic_gbps,
        control_s=control_s,
    )
    return Cluster(chains, cfg, setup.network).run(ramp_s + steady_s)
