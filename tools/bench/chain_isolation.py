"""Chains of 1-6 bpf_lpm NFs on one pinned core, four ways of isolating them, side by side.

    .venv/bin/python -m tools.bench.chain_isolation [--quick] [--json PATH] [--core N]

Source ``net_pcap`` with ``infinite_rx=1`` (one pcap per frame size, many
flows, made here), sink ``net_null``.  Variants, all measured in this run:

* ``coop``           Quadrant: one process per NF, the chain buffer, the
                     cooperative SCHED_FIFO scheduler (worker.coopsched);
* ``single_thread``  every NF called in sequence in one thread (no isolation);
* ``cfs``            the coop processes and buffer under SCHED_OTHER, each NF
                     yielding only when its input ring is empty;
* ``copy``           every NF after the first has its own region and each hop
                     copies the batch into the next NF's region (same core,
                     same cooperative scheduling: only the copies differ).

The third-party hop (``--thirdparty-only`` runs just that section; it also
closes the full run): ``empty -> X -> empty`` under ``coop`` with X a native
``empty`` NF, or a third-party NF behind the veth bridge (docs/thirdparty.rst):
``veth_bridge``, a Linux bridge in the NF's namespace (the bare cost of the
hop: copy to an mbuf, af_packet send, the kernel's veth and bridge path, read
back, copy into the slot), and ``veth_nft``, the shipped nftables firewall
example (br_netfilter + conntrack + its rules; every frame passes), 64 B and
1024 B, interleaved rounds.

A chain of one NF has no copy and no scheduler in any variant, so length 1
is measured once (single_thread) and reported for all four.  Also measured:
the context-switch cost (two processes on the core, SCHED_FIFO, yielding to
each other), the copy cost per packet for 64..1500 B, and per canonical
chain the throughput at the estimated batch size (worker.batching) against
fixed batches of 32, 128 and 512.  Prints tables; ``--json`` writes them.
Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cext import chainbuf  # noqa: E402
from tools.bench.single_nf import make_pcap  # noqa: E402
from worker.batching import choose_batch, fit_switch_cost  # noqa: E402
from worker.chain import ChainIds, ChainInstance  # noqa: E402
from worker.coopsched import PRIO_ATTACHED, CoreScheduler  # noqa: E402

VARIANTS = ("coop", "single_thread", "cfs", "copy")
SIZES = (64, 1024)
COPY_SIZES = (64, 128, 256, 512, 1024, 1500)
FIXED_BATCHES = (32, 128, 512)
PROBES = (16, 24, 48, 64)  # batch sizes the estimator measures the chain at (not the fixed ones)
P = 0.05  # allowed rate loss to switching
SLO_US = 10_000  # loose: the rate goal decides here (the cap is reported as max_for_slo)
IDS = ChainIds(47400, 47400)
BPF = {"type": "bpf_lpm", "config": {"lookups": 200}}


def tsc_hz() -> float:
    t0, c0 = time.perf_counter(), chainbuf.rdtsc()
    time.sleep(0.2)
    return (chainbuf.rdtsc() - c0) / (time.perf_counter() - t0)


def ctx_switch_cycles(core: int, n: int = 200_000) -> float:
    """Two processes pinned to ``core`` at the same SCHED_FIFO priority yield to each
    other ``n`` times each: each loop iteration is two switches."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {core})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIO_ATTACHED))
            os.read(go_r, 1)
            cycles = chainbuf.yield_cycles(n)
            os.write(w, f"{cycles}\n".encode())
            os._exit(0)
        pids.append(pid)
    os.write(go_w, b"xx")
    for pid in pids:
        os.waitpid(pid, 0)
    out = os.read(r, 1000).decode().split()
    for fd in (r, w, go_r, go_w):
        os.close(fd)
    # both ran side by side for the same span; take the shorter (the overlap)
    return min(int(x) for x in out) / (2 * n)


def copy_costs(work: Path, core: int) -> dict[str, float]:
    """Median of 5 runs per size, in a child pinned to the data core at SCHED_FIFO."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {core})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIO_ATTACHED))
        a = chainbuf.ChainBuffer.create(str(work / "qs-copy-a"), 2048, 1, 1)
        b = chainbuf.ChainBuffer.create(str(work / "qs-copy-b"), 2048, 1, 1)
        out = {
            str(s): round(
                statistics.median(chainbuf.copy_cycles(a, b, s, 32, 4000) for _ in range(5)), 1
            )
            for s in COPY_SIZES
        }
        for x in (a, b):
            x.close()
            os.unlink(x.path)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


class Runner:
    def __init__(self, core: int, work: Path, window: float, warmup: float, rounds: int):
        self.core = core
        self.rounds = rounds
        self.work = work
        self.window = window
        self.warmup = warmup
        # generous detach timeout: other work on a shared machine may hold the core a while
        self.sched = CoreScheduler(core, timeout=1.0, detach_timeout=10.0).start()
        self.serial = 0

    def close(self):
        self.sched.stop()

    def start(
        self, variant: str, nfs: list[dict], pcap: Path, batch: int = 32, prefix: str = "qs"
    ) -> ChainInstance:
        self.serial += 1
        name = f"b{self.serial}"
        inst = ChainInstance(
            name,
            nfs,
            core=self.core,
            ports={
                "rx": {"vdev": f"net_pcap_{name}0,rx_pcap={pcap},infinite_rx=1"},
                "tx": {"vdev": f"net_null_{name}1,no-rx=1"},
            },
            ids=IDS,
            prefix=prefix,  # names files, DPDK prefixes, a third-party NF's netns and veths
            mode=variant,
            scheduler=self.sched,
            batch=batch,
            n_slots=2048,
            buffer_root="/dev/shm",
            log_dir=str(self.work),
        )
        try:
            inst.prepare()
            if inst.scheduler is None and variant != "cfs":
                # single_thread (and any one-NF chain) at the same SCHED_FIFO priority as coop
                for t in inst.tids:
                    os.sched_setscheduler(t, os.SCHED_FIFO, os.sched_param(PRIO_ATTACHED))
            inst.attach()
        except BaseException:
            inst.teardown()
            raise
        return inst

    def measure(self, inst: ChainInstance) -> dict:
        time.sleep(self.warmup)
        s0, t0 = inst.stats(), time.perf_counter()
        time.sleep(self.window)
        s1, t1 = inst.stats(), time.perf_counter()
        pkts = s1[0]["tx"] - s0[0]["tx"]
        per_nf = []
        for a, b in zip(s0, s1, strict=True):
            dp = b["pkts"] - a["pkts"]
            per_nf.append((b["cycles"] - a["cycles"]) / dp if dp else 0.0)
        return {"kpps": pkts / (t1 - t0) / 1e3, "nf_cycles": per_nf}

    def run(self, variant: str, nfs: list[dict], pcap: Path, batch: int = 32) -> dict:
        inst = self.start(variant, nfs, pcap, batch)
        try:
            return self.measure(inst)
        finally:
            inst.teardown()

    def interleaved(
        self, variants: list[str], nfs: list[dict], pcap: Path, rounds: int, batch: int = 32
    ) -> dict:
        """Every variant up at once (parked when not measured), measured in turns,
        ``rounds`` times: the variants share the machine's noise; medians are kept."""
        insts = {}
        try:
            for v in variants:
                insts[v] = self.start(v, nfs, pcap, batch)
                insts[v].detach(timeout=10.0)
            got = {v: [] for v in variants}
            for _ in range(rounds):
                for v in variants:
                    insts[v].attach()
                    got[v].append(self.measure(insts[v]))
                    insts[v].detach(timeout=10.0)
        finally:
            for inst in insts.values():
                inst.teardown()
        out = {}
        base = got.get("single_thread")
        for v, rs in got.items():
            out[v] = {
                "kpps": statistics.median(r["kpps"] for r in rs),
                # ratio to single_thread measured in the same round (seconds apart)
                "ratio": statistics.median(
                    r["kpps"] / b["kpps"] for r, b in zip(rs, base, strict=True)
                )
                if base
                else None,
                "nf_cycles_sum": statistics.median(sum(r["nf_cycles"]) for r in rs),
                "nf_cycles": [
                    statistics.median(c) for c in zip(*(r["nf_cycles"] for r in rs), strict=True)
                ],
            }
        return out


EXAMPLES = REPO / "examples" / "thirdparty"
EMPTY = {"type": "empty"}


def thirdparty_nfs() -> dict[str, dict]:
    """The third-party hop's variants: the shipped firewall, and the same namespace
    with its Linux bridge only (no netfilter, no rules)."""
    import yaml

    nft = yaml.safe_load((EXAMPLES / "nft-firewall.yaml").read_text())["nfs"][1]
    plain = json.loads(json.dumps(nft))
    c = plain["config"]
    c["setup"] = [a for a in c["setup"] if a[0] not in ("nft", "sysctl")]
    c["files"] = {}
    c["command"] = ["sleep", "infinity"]  # a kernel-only NF: nothing to run
    c["behaviour"] = ["inline"]
    return {"native": EMPTY, "veth_bridge": plain, "veth_nft": nft}


def thirdparty_hop(runner: Runner, work: Path, hz: float, batch: int) -> dict:
    """Cost per packet of a third-party hop against a native hop in the same chain."""
    hops = thirdparty_nfs()
    out = {}
    for size in SIZES:
        pcap = work / f"{size}.pcap"
        if not pcap.exists():
            make_pcap(pcap, size, 1024)
        insts, got = {}, {v: [] for v in hops}
        try:
            for v, hop in hops.items():
                insts[v] = runner.start("coop", [EMPTY, hop, EMPTY], pcap, batch, prefix="tpb")
                insts[v].detach(timeout=10.0)
            for _ in range(runner.rounds):
                for v, inst in insts.items():
                    inst.attach()
                    b0 = inst.stats()[1].get("thirdparty", {})
                    r = runner.measure(inst)
                    b1 = inst.stats()[1].get("thirdparty", {})
                    inst.detach(timeout=10.0)
                    sent = b1.get("to_nf", 0) - b0.get("to_nf", 0)
                    lost = b1.get("expired", 0) - b0.get("expired", 0)
                    back = b1.get("passed", 0) - b0.get("passed", 0)
                    late = b1.get("late", 0) - b0.get("late", 0)
                    r["loss"] = lost / sent if sent else 0.0
                    r["late"] = late / back if back else 0.0
                    got[v].append(r)
        finally:
            for inst in insts.values():
                inst.teardown()
        rows = {}
        for v, rs in got.items():
            kpps = statistics.median(r["kpps"] for r in rs)
            rows[v] = {
                "kpps": round(kpps, 1),
                "chain_cycles_per_packet": round(hz / (kpps * 1e3), 1) if kpps else None,
                "hop_cycles_per_packet": round(statistics.median(r["nf_cycles"][1] for r in rs), 1),
                "loss": round(statistics.median(r["loss"] for r in rs), 4),
                "late": round(statistics.median(r["late"] for r in rs), 4),
            }
        base = rows["native"]["chain_cycles_per_packet"]
        for v in rows:
            c = rows[v]["chain_cycles_per_packet"]
            rows[v]["extra_cycles_vs_native"] = round(c - base, 1) if c and base else None
        out[str(size)] = rows
    return out


def report_thirdparty(res: dict) -> None:
    print(f"\nthird-party hop: empty -> X -> empty, coop, batch {res['batch_size']}")
    print(f"{'size':>6} {'X':<12} {'kpps':>9} {'cyc/pkt':>9} {'extra':>9} {'hop cyc':>9} "
          f"{'loss':>7} {'late':>7}")  # fmt: skip
    for size, rows in res["thirdparty_hop"].items():
        for v, r in rows.items():
            extra, hop = r["extra_cycles_vs_native"], r["hop_cycles_per_packet"]
            print(f"{size:>6} {v:<12} {r['kpps']:>9.1f} {r['chain_cycles_per_packet']:>9.0f} "
                  f"{extra:>9.0f} {hop:>9.0f} {r['loss']:>7.2%} {r['late']:>7.2%}")  # fmt: skip
    print("(cyc/pkt: the whole chain, from its rate; extra: over the native hop; hop cyc: "
          "the hop's own turn per packet, the kernel's path of a veth hop included; loss: "
          "slots expired per frame sent; late: frames back only at a later turn)")  # fmt: skip


def sweep(runner: Runner, inst: ChainInstance, batches) -> dict[int, float]:
    """Median kpps per batch size, the sizes taken in turns every round (shared noise)."""
    got: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(runner.rounds):
        for b in batches:
            inst.set_batch(b)
            got[b].append(runner.measure(inst)["kpps"])
    return {b: statistics.median(v) for b, v in got.items()}


def batch_row(
    runner: Runner, nfs: list[dict], pcap: Path, hz: float, ctx: float, nf_cycles: list[float]
) -> dict:
    """Table 4 for one chain: probe two batch sizes, fit the in-chain switch cost,
    pick the batch, then measure it against the fixed ones (one instance, set_batch)."""
    n = len(nfs)
    inst = runner.start("coop", nfs, pcap, batch=PROBES[0])
    try:
        probes = PROBES if runner.rounds > 1 else PROBES[::3]  # --quick: 16 and 64 only
        probe = sweep(runner, inst, probes)
        points = [(b, hz / (probe[b] * 1e3)) for b in probes]
        a, c_fit = fit_switch_cost(points, n)
        # the chain pays at least the bare switch: a noisy fit never goes below it
        est = choose_batch([a / n] * n, max(c_fit, ctx), hz, p=P, slo_us=SLO_US, alpha=0.6)
        micro = choose_batch(nf_cycles, ctx, hz, p=P, slo_us=SLO_US, alpha=0.6)
        row = {
            "estimated_batch": est.batch,
            "fitted_switch_cycles": round(c_fit, 1),
            "fitted_per_packet_cycles": round(a, 1),
            "probes": [b for b, _ in points],
            "microbench_C_batch": micro.batch,
            "max_for_slo": est.max_for_slo,
        }
        for b, k in sweep(runner, inst, sorted({est.batch, micro.batch, *FIXED_BATCHES})).items():
            row[str(b)] = round(k, 1)
    finally:
        inst.teardown()
    best = max(row[str(b)] for b in FIXED_BATCHES)
    row["estimated_vs_best_fixed"] = round(row[str(est.batch)] / best, 3)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (under 3 minutes)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--core", type=int, default=1, help="data core (default 1)")
    ap.add_argument("--max-len", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32, help="batch size of the main table")
    ap.add_argument("--thirdparty-only", action="store_true",
                    help="only the third-party hop against a native one (short)")  # fmt: skip
    opts = ap.parse_args(argv)
    # windows of a second or more: RT throttling / the fair server take up to 50 ms of
    # every 1 s period from SCHED_FIFO tasks, a shorter window catches it or not
    window, warmup, rounds = (0.4, 0.1, 1) if opts.quick else (1.0, 0.2, 5)
    hz = tsc_hz()
    work = Path(tempfile.mkdtemp(prefix="qs-bench-"))
    os.chmod(work, 0o755)
    t_start = time.monotonic()
    res: dict = {
        "batch_size": opts.batch,
        "tsc_hz": hz,
        "window_s": window,
        "rounds": rounds,
        "kpps": {},
        "nf_cycles": {},
    }
    if opts.thirdparty_only:
        runner = Runner(opts.core, work, window, warmup, rounds)
        try:
            res["thirdparty_hop"] = thirdparty_hop(runner, work, hz, opts.batch)
        finally:
            runner.close()
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        report_thirdparty(res)
        if opts.json:
            Path(opts.json).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    res["ctx_switch_cycles"] = round(
        statistics.median(ctx_switch_cycles(opts.core) for _ in range(5)), 1
    )
    res["copy_cycles"] = copy_costs(Path("/dev/shm"), opts.core)
    runner = Runner(opts.core, work, window, warmup, rounds)
    lengths = range(1, opts.max_len + 1)
    try:
        for size in SIZES:
            pcap = work / f"{size}.pcap"
            make_pcap(pcap, size, 1024)
            table = {v: [] for v in VARIANTS}
            ratios = {v: [1.0] for v in VARIANTS}
            nf_sum = {v: [] for v in VARIANTS}
            cycles = {}
            for n in lengths:
                if n == 1:
                    r = runner.interleaved(["single_thread"], [BPF], pcap, rounds, opts.batch)
                    for v in VARIANTS:
                        table[v].append(round(r["single_thread"]["kpps"], 1))
                        nf_sum[v].append(round(r["single_thread"]["nf_cycles_sum"], 1))
                    cycles["1"] = r["single_thread"]["nf_cycles"]
                    continue
                r = runner.interleaved(list(VARIANTS), [BPF] * n, pcap, rounds, opts.batch)
                for v in VARIANTS:
                    table[v].append(round(r[v]["kpps"], 1))
                    ratios[v].append(round(r[v]["ratio"], 3))
                    nf_sum[v].append(round(r[v]["nf_cycles_sum"], 1))
                cycles[str(n)] = [round(c, 1) for c in r["coop"]["nf_cycles"]]
            res["kpps"][str(size)] = table
            res["nf_cycles"][str(size)] = cycles
            res.setdefault("ratio_to_single_thread", {})[str(size)] = ratios
            res.setdefault("nf_cycles_per_packet", {})[str(size)] = nf_sum
        # Table 4: estimated batch against fixed ones, per canonical chain (64 B)
        pcap = work / "64.pcap"
        res["batch"] = {}
        canonical = (2, 6) if opts.quick else (2, 4, 6)
        for n in [n for n in canonical if n <= opts.max_len]:
            s = res["nf_cycles"]["64"][str(n)]
            res["batch"][f"bpf_lpm x{n}"] = batch_row(
                runner, [BPF] * n, pcap, hz, res["ctx_switch_cycles"], s
            )
        res["thirdparty_hop"] = thirdparty_hop(runner, work, hz, opts.batch)
    finally:
        runner.close()
    res["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report(res, lengths)
    report_thirdparty(res)
    if opts.json:
        Path(opts.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def report(res: dict, lengths) -> None:
    print(
        f"TSC {res['tsc_hz'] / 1e9:.2f} GHz; window {res['window_s']} s; "
        f"context switch {res['ctx_switch_cycles']:.0f} cycles"
    )
    print("copy cycles/packet: " + ", ".join(f"{k} B {v}" for k, v in res["copy_cycles"].items()))
    print("(* = median over rounds of the ratio measured in the same round)")
    for size, table in res["kpps"].items():
        print(
            f"\n{size} B frames, batch {res['batch_size']}, kpps "
            f"(chain length {lengths.start}..{lengths.stop - 1})"
        )
        print(f"{'variant':<14}" + "".join(f"{n:>9}" for n in lengths))
        for v, vals in table.items():
            print(f"{v:<14}" + "".join(f"{x:>9.1f}" for x in vals))
        st = table["single_thread"]
        for v in ("coop", "cfs", "copy"):
            rr = res["ratio_to_single_thread"][size][v]
            print(f"{v + '/single *':<14}" + "".join(f"{x:>9.3f}" for x in rr))
        for v in VARIANTS:
            cc = res["nf_cycles_per_packet"][size][v]
            print(f"{'NF cyc ' + v[:6]:<14}" + "".join(f"{x:>9.0f}" for x in cc))
        for v in ("coop", "cfs", "copy"):
            print(
                f"{v + '/single':<14}"
                + "".join(
                    f"{a / b:>9.3f}" if b else f"{'-':>9}"
                    for a, b in zip(table[v], st, strict=True)
                )
            )
        c = table["coop"]
        print(
            f"{'coop/cfs':<14}"
            + "".join(f"{a / b:>9.2f}" for a, b in zip(c, table["cfs"], strict=True))
        )
        print(
            f"{'coop/copy':<14}"
            + "".join(f"{a / b:>9.2f}" for a, b in zip(c, table["copy"], strict=True))
        )
    if res.get("batch"):
        print("\nbatch size (coop, 64 B), kpps")
        for label, row in res["batch"].items():
            fixed = ", ".join(f"{b}: {row[str(b)]}" for b in FIXED_BATCHES)
            eb = row["estimated_batch"]
            print(
                f"{label:<12} estimated {eb} (fitted C {row['fitted_switch_cycles']:.0f}): "
                f"{row[str(eb)]} | {fixed} | est/best {row['estimated_vs_best_fixed']} | "
                f"with microbench C: batch {row['microbench_C_batch']} "
                f"{row[str(row['microbench_C_batch'])]}"
            )
    print(f"\nelapsed {res['elapsed_s']} s")


if __name__ == "__main__":
    sys.exit(main())
