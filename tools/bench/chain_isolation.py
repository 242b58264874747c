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
fixed batches of 32, 128 and 512.  Last, the paper's canonical chains as
shipped in ``examples/chains/`` (those whose NFs this build has; plus
``acl → encrypt``, Chain 2 without its urlfilter, while urlfilter is missing;
and ``encrypt → decrypt`` for the two crypto NFs' own cost) at 64 and
1024 B: kpps per core and cycles per packet, coop against single_thread,
next to the paper's Table 4 per-core figures (``--canonical-only`` runs just
that part).  Prints tables; ``--json`` writes
them.  Nothing here asserts a speed.
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
from worker.state_access import STATEFUL_NF_TYPES  # noqa: E402

VARIANTS = ("coop", "single_thread", "cfs", "copy")
SIZES = (64, 1024)
COPY_SIZES = (64, 128, 256, 512, 1024, 1500)
FIXED_BATCHES = (32, 128, 512)
PROBES = (16, 24, 48, 64)  # batch sizes the estimator measures the chain at (not the fixed ones)
P = 0.05  # allowed rate loss to switching
SLO_US = 10_000  # loose: the rate goal decides here (the cap is reported as max_for_slo)
IDS = ChainIds(47400, 47400)
BPF = {"type": "bpf_lpm", "config": {"lookups": 200}}
# the paper's Table 4, kpps per core on its 2.4 GHz testbed
PAPER_KPPS = {"chain1": 306, "chain2": 116, "chain3": 322}
PAPER_GHZ = 2.4
CANONICAL = {  # label -> (spec in examples/chains, traffic its filter takes: proto, dport)
    "chain1": ("chain1-tunnel-ipforward.json", "udp", 5000),
    "chain2": ("chain2-acl-urlfilter-encrypt.json", "tcp", 8080),
    "chain3": ("chain3-acl-nat.json", "udp", 5353),
    "encrypt": (None, "tcp", 8080),  # encrypt-decrypt: Chain 2's traffic
}


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
    def __init__(
        self, core: int, work: Path, window: float, warmup: float, rounds: int, prefix="qs"
    ):
        self.core = core
        self.prefix = prefix  # start of every instance's files and DPDK --file-prefix
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
        self, variant: str, nfs: list[dict], pcap: Path, batch: int = 32, prefix: str = ""
    ) -> ChainInstance:
        prefix = prefix or self.prefix
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


def make_chain_pcap(path: Path, size: int, flows: int, proto: str, dport: int) -> None:
    """Lab traffic for a canonical chain: 10.1.0.0/16 -> 10.2.0.0/16, ``flows`` 5-tuples;
    TCP segments carry an HTTP request head (what Chain 2's urlfilter parses)."""
    from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

    pkts = []
    for i in range(flows):
        ip = IP(src=f"10.1.{i >> 8 & 255}.{i & 255 or 1}", dst=f"10.2.{i * 7 & 255}.{i & 255 or 1}")
        l4 = (TCP(sport=20000 + i, dport=dport, flags="PA", seq=1) if proto == "tcp"
              else UDP(sport=20000 + i, dport=dport))  # fmt: skip
        hdr = Ether(src="02:00:00:00:0a:01", dst="02:00:00:00:01:01") / ip / l4
        body = b"GET /index.html HTTP/1.1\r\nHost: sink\r\n\r\n" if proto == "tcp" else b""
        room = max(0, size - len(hdr))
        pkts.append(hdr / Raw((body + b"x" * room)[:room]))
    wrpcap(str(path), pkts)


def canonical_chains() -> dict[str, list[dict]]:
    """The example specs whose NF types this build registers (label -> NF list)."""
    from tools.demo import canonical_chains as load_examples
    from worker.nf_registry import NF_TYPES

    specs = {s["name"]: s for s in load_examples("02:00:00:00:0b:01")}
    out = {}
    for label, (fname, _, _) in CANONICAL.items():
        if fname is None:
            continue
        nfs = specs[fname.removesuffix(".json")]["nfs"]
        if all(NF_TYPES.get(nf["type"]) for nf in nfs):
            out[label] = nfs
        elif label == "chain2":  # its cost without the URL filter, labelled as such
            out["chain2-no-urlfilter"] = [nf for nf in nfs if nf["type"] != "urlfilter"]
    # Chain 2's encrypt with the decrypt of the far side: both NFs' own cost per packet
    enc = next(nf for nf in specs["chain2-acl-urlfilter-encrypt"]["nfs"] if nf["type"] == "encrypt")
    key = {"key_file": enc["config"]["key_file"]}
    out["encrypt-decrypt"] = [enc, {"type": "decrypt", "config": key}]
    return out


def canonical_rows(
    runner: Runner, work: Path, hz: float, rounds: int, batch: int, only=None
) -> dict:
    rows: dict = {}
    redis = None
    try:
        for label, nfs in canonical_chains().items():
            if only and label not in only:
                continue
            if any(nf["type"] in STATEFUL_NF_TYPES for nf in nfs):
                # a real Redis on the other core, reached over its Unix socket; stateful
                # NFs run only in the stage loop: no single_thread baseline for them
                if redis is None:
                    redis = start_redis(work)
                nfs = [dict(nf, state=redis.add_nf_user(f"ci{label}{i}", unix=True).as_config())
                       if nf["type"] in STATEFUL_NF_TYPES else nf
                       for i, nf in enumerate(nfs)]  # fmt: skip
                variants = ["coop"]
            else:
                variants = ["coop", "single_thread"] if len(nfs) > 1 else ["single_thread"]
            _, proto, dport = CANONICAL[label.split("-")[0]]
            for size in SIZES:
                pcap = work / f"{label}-{size}.pcap"
                make_chain_pcap(pcap, size, 1024, proto, dport)
                r = runner.interleaved(variants, nfs, pcap, rounds, batch)
                kpps = r[variants[0]]["kpps"]
                single = r.get("single_thread")
                rows.setdefault(label, {})[str(size)] = {
                    "nfs": [nf["type"] for nf in nfs],
                    "kpps": round(kpps, 1),
                    "cycles_per_pkt": round(hz / (kpps * 1e3)) if kpps else None,
                    "single_thread_kpps": round(single["kpps"], 1) if single else None,
                    "nf_cycles": [round(c, 1) for c in r[variants[0]]["nf_cycles"]],
                }
    finally:
        if redis is not None:
            redis.stop()
    for label in rows:
        paper = PAPER_KPPS.get(label)
        if paper:
            rows[label]["paper_kpps"] = paper
            rows[label]["paper_cycles_per_pkt"] = round(PAPER_GHZ * 1e9 / (paper * 1e3))
    return rows


def start_redis(work: Path):
    """The state store of the stateful canonical chain (Chain 3's NAT): AOF always, on a
    CPU other than the data core, its socket where the NFs' uids can reach it."""
    from worker.redis_server import RedisServer

    cpus = sorted(os.sched_getaffinity(0))
    d = work / "redis"
    work.chmod(0o755)
    return RedisServer(d, appendfsync="always", core=cpus[0]).start()


def report_canonical(rows: dict) -> None:
    print("\ncanonical chains (examples/chains), coop, kpps per core and cycles/packet")
    print(
        f"{'chain':<22}{'size':>6}{'kpps':>9}{'cyc/pkt':>9}{'single':>9}"
        f"{'paper kpps':>12}{'paper cyc':>11}  NF cycles/pkt"
    )
    for label, by_size in rows.items():
        for size in SIZES:
            e = by_size[str(size)]
            if "paper_kpps" in by_size:
                paper = f"{by_size['paper_kpps']:>12}{by_size['paper_cycles_per_pkt']:>11}"
            else:
                paper = f"{'-':>12}{'-':>11}"
            cyc = f"{e['cycles_per_pkt']:>9}" if e["cycles_per_pkt"] else f"{'-':>9}"
            st = e["single_thread_kpps"]
            single = f"{st:>9.1f}" if st is not None else f"{'-':>9}"
            per_nf = " + ".join(
                f"{t} {c:.0f}" for t, c in zip(e["nfs"], e["nf_cycles"], strict=True)
            )
            print(f"{label:<22}{size:>6}{e['kpps']:>9.1f}{cyc}{single}{paper}  {per_nf}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (under 3 minutes)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--core", type=int, default=1, help="data core (default 1)")
    ap.add_argument("--max-len", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32, help="batch size of the main table")
    ap.add_argument("--thirdparty-only", action="store_true",
                    help="only the third-party hop against a native one (short)")  # fmt: skip
    ap.add_argument(
        "--canonical-only", action="store_true", help="only the canonical chains' section"
    )
    ap.add_argument(
        "--only", help="with --canonical-only: these labels only (comma-separated, e.g. chain1)"
    )
    ap.add_argument(
        "--prefix", default="qs", help="start of the instances' files and DPDK --file-prefix"
    )
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
    runner = Runner(opts.core, work, window, warmup, rounds, opts.prefix)
    if opts.thirdparty_only or opts.canonical_only:
        try:
            if opts.thirdparty_only:
                res["thirdparty_hop"] = thirdparty_hop(runner, work, hz, opts.batch)
            if opts.canonical_only:
                only = set(opts.only.split(",")) if opts.only else None
                res["canonical"] = canonical_rows(runner, work, hz, rounds, opts.batch, only)
        finally:
            runner.close()
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        print(f"TSC {hz / 1e9:.2f} GHz; window {window} s; {rounds} round(s)")
        if opts.thirdparty_only:
            report_thirdparty(res)
        if opts.canonical_only:
            report_canonical(res["canonical"])
        if opts.json:
            Path(opts.json).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    res["ctx_switch_cycles"] = round(
        statistics.median(ctx_switch_cycles(opts.core) for _ in range(5)), 1
    )
    res["copy_cycles"] = copy_costs(Path("/dev/shm"), opts.core)
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
        res["canonical"] = canonical_rows(runner, work, hz, rounds, opts.batch)
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
    if res.get("canonical"):
        report_canonical(res["canonical"])
    print(f"\nelapsed {res['elapsed_s']} s")


if __name__ == "__main__":
    sys.exit(main())
