"""``python -m tools.sim {bench,run,scale,table,points,fit}``: see docs/scaling.rst."""

from __future__ import annotations

import argparse
import json
import sys

from tools.sim import bench, fit, profile, traffic
from tools.sim.cluster import Config
from tools.sim.runs import Setup, run_chain, run_scale


def _print_result(res) -> None:
    print(
        f"policy {res.policy}: {res.flows} flows, {res.sim_s:.0f} s simulated "
        f"in {res.wall_s:.1f} s; {res.counts}"
    )
    for c in res.chains.values():
        print(f"  {c.name}: {c.to_json()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.sim", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="Figure 5/4: p99 and cores vs SLO, Quadrant vs Metron-style")
    b.add_argument("--quick", action="store_true", help="3 SLOs, 30 s ramp + 20 s steady")
    b.add_argument("--json", metavar="PATH")
    b.add_argument("--plots", metavar="DIR", help="write PNG figures there")
    b.add_argument("--slos", type=int, nargs="+")
    b.add_argument("--chains", nargs="+", choices=profile.CANONICAL, help="default: all three")
    b.add_argument("--alpha", type=float, default=0.6)
    b.add_argument("--beta", type=float, default=0.9)
    b.add_argument("--load-cap", type=float, default=0.9)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument(
        "--consolidate", action="store_true", help="Quadrant with consolidation (not in paper)"
    )

    r = sub.add_parser("run", help="one chain, one SLO, one policy, the ramp")
    r.add_argument("chain", choices=profile.CANONICAL)
    r.add_argument("--slo", type=float, default=100.0)
    r.add_argument(
        "--policy", default="quadrant", choices=("quadrant", "quadrant-norate", "metron")
    )
    r.add_argument("--cores-at-peak", type=float, default=24.0)
    r.add_argument("--ramp", type=float, default=60.0)
    r.add_argument("--steady", type=float, default=60.0)
    r.add_argument("--down", type=float, default=0.0)
    r.add_argument("--accel", type=float, default=0.0, help="share of flows 30%% faster")
    r.add_argument("--alpha", type=float, default=0.6)
    r.add_argument("--beta", type=float, default=0.9)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--plot", metavar="PNG", help="cores and p99 over time")
    r.add_argument(
        "--consolidate", action="store_true", help="drain the least loaded instance (not in paper)"
    )

    s = sub.add_parser("scale", help="100 workers x 16 cores, 3 chains, a million flows")
    s.add_argument("--workers", type=int, default=100)
    s.add_argument("--cores", type=int, default=16)
    s.add_argument("--flows", type=int, default=1_000_000)
    s.add_argument("--slo", type=float, default=100.0)
    s.add_argument("--policy", default="quadrant", choices=("quadrant", "metron"))
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--dt-ms", type=float, default=4.0, help="time step (default 4 ms)")

    sub.add_parser("table", help="the latency tables' summary per chain")
    ft = sub.add_parser("fit", help="a chain's profile figures from a chain_isolation JSON")
    ft.add_argument("measured", help="tools.bench.chain_isolation --canonical-only --json output")
    ft.add_argument("chain", help="canonical chain name in it, e.g. chain3")
    ft.add_argument(
        "--batch-cycles",
        type=float,
        required=True,
        help="per-batch cost (NFs x the fitted in-chain switch, 4,038 cycles each here)",
    )
    pt = sub.add_parser("points", help="Quadrant's and the oracle's steady load per chain and SLO")
    pt.add_argument("--alpha", type=float, default=0.6)
    pt.add_argument("--load-cap", type=float, default=0.9)
    pt.add_argument(
        "--metron",
        metavar="BENCH_JSON",
        help="instead: Quadrant's floor of cores at SLO = Metron-style's p99, from bench --json",
    )
    a = ap.parse_args(argv)

    if a.cmd == "bench":
        return bench.main(a)
    if a.cmd == "fit":
        return fit.main(a)
    if a.cmd == "run":
        setup = Setup.load()
        tab = setup.table(a.chain)
        tr = traffic.Ramp(
            peak_pps=a.cores_at_peak * tab.r_max,
            ramp_s=a.ramp,
            steady_s=a.steady,
            down_s=a.down,
            accel_frac=a.accel,
        )
        res = run_chain(
            setup,
            a.chain,
            a.slo,
            a.policy,
            tr,
            Config(seed=a.seed),
            a.alpha,
            a.beta,
            consolidate=a.consolidate,
        )
        _print_result(res)
        wins = res.chains[a.chain].windows
        for t, p99, cores, ora, off in wins[:: max(1, len(wins) // 12)]:
            print(
                f"    t={t:5.0f}s p99={p99:7.1f}us cores={cores:6.2f} oracle={ora:6.2f} "
                f"offered={off:.3g} pps"
            )
        if a.plot:
            print(f"wrote {bench.plot_run(res.chains[a.chain], a.plot)}")
        return 0
    if a.cmd == "scale":
        res = run_scale(
            Setup.load(),
            policy=a.policy,
            workers=a.workers,
            cores=a.cores,
            flows=a.flows,
            slo_us=a.slo,
            seed=a.seed,
            dt=a.dt_ms * 1e-3,
        )
        _print_result(res)
        return 0
    if a.cmd == "points" and a.metron:
        with open(a.metron, encoding="utf-8") as f:
            rows = bench.metron_points(Setup.load(), json.load(f))
        print(bench.metron_points_table(rows))
        return 0
    if a.cmd == "points":
        rows = bench.operating_points(Setup.load(), alpha=a.alpha, load_cap=a.load_cap)
        print(bench.points_table(rows))
        return 0
    if a.cmd == "table":
        setup = Setup.load()
        for name in setup.chains:
            t = setup.table(name)
            print(
                f"{name}: r_max {t.r_max / 1e3:.0f} kpps, full batch {t.full_batch_us:.1f} us, "
                f"mean cycles/packet {t.mean_cycles:.0f}"
            )
            for rho in (0.1, 0.5, 0.8, 0.9, 0.98):
                i = int(abs(t.rho - rho).argmin())
                print(
                    f"  load {t.rho[i]:.2f}: p99 {t.p99_us[i]:6.1f} us, "
                    f"p99 batch {t.batch_p99_us[i]:5.1f} us"
                )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
