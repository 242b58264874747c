"""Stateful NF cost: ``acl -> nat`` with its state in Redis vs the same chain with state
kept locally.

    .venv/bin/python -m tools.bench.state [--quick] [--json PATH] [--core N] [--mode M]

``--mode chain`` (the default): one data core runs Chain 3, ``acl -> nat``, as
a chain instance (two NF processes, the cooperative scheduler, the NAT in
the stage loop with its state hook); ``--mode nf``: the ``nat`` NF alone in
``quadrant-nf`` (the single-NF runtime).  A real ``redis-server`` (AOF on,
``appendfsync`` as in the row) runs pinned to the other core.  Source:
``net_pcap`` with ``infinite_rx=1`` (saturated) over a pcap of outbound
traffic: UDP over 2000 long-lived flows (mapped in the first pass, then no
state change) and ``N`` short TCP connections per 1000 frames (SYN, an ACK 96
frames later, RST 96 frames after that): each SYN writes two keys and each RST
deletes two, and those packets, and the connection's packets until the write
is acknowledged, are held. New connections per second = packet rate x N / 1000
(the chain mode reports the rate, not this product: its NAT counters cover the
whole run).  Sink: ``net_null``.  The chain's ACL is Chain 3's rule file
behind one rule that allows the inside network.

Rows, interleaved per round so they see the same machine noise:

* ``local``: ``state.store: local`` (cache only, every write acknowledged at
  once): the baseline;
* ``redis-everysec`` / ``redis-always``: Redis with that ``appendfsync``.

Reported: Mpps (received / loop time), new connections per second, Redis
round trips per batch (fetches: one MGET per batch with misses; writes: one
pipelined group per batch with changes), p50/p99 time from RX to release of
held packets (the latency a stateful update adds), and the ratio to
``local``.  The replayed pcap repeats its 5-tuples, so after the first pass
a new connection's key is a cached "absent" entry: misses (MGETs) happen
during warm-up only; the write and its acknowledgement happen for every
connection.  Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from worker.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
MEMORY_MB = 256
MBUFS = 16383
PCAP_PACKETS = 6000  # infinite_rx keeps the whole pcap in mbufs of the port's mempool
UDP_FLOWS = 2000
GAP = 96  # frames between a connection's SYN, ACK and RST
EXTERNAL = "203.0.113.1"
STORES = ("local", "redis-everysec", "redis-always")


def make_pcap(path: Path, new_per_1000: int) -> int:
    """PCAP_PACKETS frames: UDP over UDP_FLOWS long-lived flows, and ``new_per_1000``
    short TCP connections per 1000 frames (SYN, ACK ``GAP`` frames later, RST
    ``GAP`` after that), spread evenly.  Returns the number of TCP connections."""
    from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

    def frame(l3, l4):
        hdr = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / l4
        return hdr / Raw(b"\x00" * max(0, 64 - len(hdr)))

    n_tcp = PCAP_PACKETS * new_per_1000 // 1000
    slots: list = [None] * PCAP_PACKETS
    step = PCAP_PACKETS / max(1, n_tcp)
    for c in range(n_tcp):
        ip = IP(src=f"10.1.{200 + (c >> 8 & 31)}.{c & 255}", dst="198.51.100.1")
        for j, flags in enumerate(("S", "A", "R")):
            p = (int(c * step) + j * GAP) % PCAP_PACKETS
            while slots[p] is not None:
                p = (p + 1) % PCAP_PACKETS
            slots[p] = frame(ip, TCP(sport=10000 + c, dport=80, flags=flags))
    u = 0
    for p in range(PCAP_PACKETS):
        if slots[p] is None:
            f = u % UDP_FLOWS
            ip = IP(src=f"10.1.{f >> 8}.{f & 255}", dst="198.51.100.2")
            slots[p] = frame(ip, UDP(sport=20000 + f, dport=53))
            u += 1
    wrpcap(str(path), slots)
    return n_tcp


def nat_config() -> dict:
    return {
        "internal": ["10.1.0.0/16"],
        "external": [{"address": EXTERNAL, "ports": "1024-65535"}],
    }


ACL_RULES = REPO / "examples" / "tables" / "acl-lab.rules"


def state_row(st: dict, nf: dict, batches: int) -> dict:
    """The state layer's figures of a run (its ``state`` summary, the NAT's counters)."""
    return {
        "fetch_rt_per_batch": st["fetch_round_trips"] / batches,
        "write_groups_per_batch": st["write_groups"] / batches,
        "held_per_batch": st["held"] / batches,
        "held_p50_us": st["held_p50_us"],
        "held_p99_us": st["held_p99_us"],
        "stalls": st["stalls"],
        "keys_fetched": st["fetched"],
        "evictions": st["evictions"],
        "held_dropped": st["held_dropped"],
        # Redis unreachable during the run (a fetch past state.timeout_s counts too)
        "outages": st.get("outages", 0),
        "unknown_dropped": st.get("unknown_dropped", 0),
        "pool_exhausted": nf.get("pool_exhausted"),
        "timer_reads": nf.get("timer_reads", 0),
        "batches": batches,
    }


def run_chain(pcap: Path, core: int, seconds: float, state: dict, workdir: Path, sched) -> dict:
    """``acl -> nat`` as a chain instance over ``pcap`` (saturated) for ``seconds``."""
    from worker.chain import ChainIds, ChainInstance

    tag = uuid.uuid4().hex[:6]
    acl = {"type": "acl", "config": {"rules": [{"action": "allow", "src": "10.1.0.0/16"}],
                                     "rule_file": str(ACL_RULES), "default": "deny"}}  # fmt: skip
    nat = {"type": "nat", "config": nat_config(), "state": state | {"max_held": 2048}}
    inst = ChainInstance(
        f"stc{tag}", [acl, nat], core=core,
        ports={"rx": {"vdev": f"net_pcap_stc{tag}0,rx_pcap={pcap},infinite_rx=1"},
               "tx": {"vdev": f"net_null_stc{tag}1,no-rx=1"}},
        ids=ChainIds(47510, 47510), prefix="stb", mode="coop", scheduler=sched,
        n_slots=4096, buffer_root="/dev/shm", log_dir=str(workdir),
        first_memory_mb=MEMORY_MB + 96,
    )  # fmt: skip
    try:
        inst.prepare()
        inst.attach()
        time.sleep(1.0)  # warm-up: the first pass maps the long-lived flows
        s0, t0 = inst.stats(), time.perf_counter()
        time.sleep(seconds)
        s1, t1 = inst.stats(), time.perf_counter()
        inst.detach()
    finally:
        inst.teardown()
    summary = inst.summaries[1] if len(inst.summaries) > 1 else None
    if not summary or "state" not in summary:
        raise RuntimeError(f"acl -> nat: no summary from the NAT stage; see {workdir}")
    st, nf = summary["state"], inst.final_nf_stats()[1]
    batches = max(1, s1[1]["batches"])
    elapsed = t1 - t0
    return {
        "mpps": (s1[0]["tx"] - s0[0]["tx"]) / elapsed / 1e6,
        "new_conn_per_s": None,  # the NAT's counters cover the whole run, not the window
        "new_mappings": nf.get("new_mappings"),
        **state_row(st, nf, batches),
        "pkts_per_batch": (s1[1]["pkts"] - s0[1]["pkts"])
        / max(1, s1[1]["batches"] - s0[1]["batches"]),
    }


def run_nat(pcap: Path, core: int, seconds: float, state: dict, workdir: Path) -> dict:
    tag = uuid.uuid4().hex[:6]
    cfg = {
        "name": f"st-bench-{tag}",
        "core": core,
        "eal": {
            "file_prefix": f"st-bench-{tag}",
            # no hugepages: other sessions take them between our check and the EAL's
            # (both rows alike; the ratio is what counts)
            "hugepages": False,
            "memory_mb": MEMORY_MB,
        },
        "mempool": {"size": MBUFS},
        "ports": {
            "rx": {"vdev": f"net_pcap0,rx_pcap={pcap},infinite_rx=1"},
            "tx": {"vdev": "net_null0,no-rx=1"},
        },
        "nf": {"type": "nat", "config": nat_config()},
        "state": state | {"max_held": 4096, "drain_s": 2.0},
        "stats": {"path": f"/dev/shm/quadrant-nf-st-bench-{tag}.stats"},
        "run": {"duration_s": seconds},
    }
    path = workdir / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "worker.nf_runtime", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=seconds + 90,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"quadrant-nf nat failed:\n{proc.stderr[-2000:]}")
    s = json.loads(proc.stdout)
    c, st, nf = s["counters"], s["state"], s["nf_stats"]
    batches = max(1, c["batches"])
    return {
        "mpps": c["rx_packets"] / s["elapsed_s"] / 1e6,
        "new_conn_per_s": nf["new_mappings"] / s["elapsed_s"],
        **state_row(st, nf, batches),
        "pkts_per_batch": c["rx_packets"] / batches,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 2 min in all)")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--core", type=int, help="data core (default: the last allowed CPU)")
    ap.add_argument("--seconds", type=float, help="measurement per run")
    ap.add_argument("--rounds", type=int, help="interleaved repetitions")
    ap.add_argument("--new", help="new connections per 1000 packets, comma-separated (N)")
    ap.add_argument(
        "--mode",
        choices=("chain", "nf"),
        default="chain",
        help="chain: acl -> nat as a chain instance; nf: the nat alone",
    )
    opts = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    core = opts.core if opts.core is not None else cpus[-1]
    redis_core = next((c for c in cpus if c != core), core)
    seconds = opts.seconds or (4.0 if opts.quick else 8.0)
    rounds = opts.rounds or (1 if opts.quick else 3)
    news = [int(k) for k in (opts.new or ("10" if opts.quick else "1,10,50")).split(",")]

    results: dict[int, dict[str, list[dict]]] = {}
    sched = None
    if opts.mode == "chain":
        from worker.coopsched import CoreScheduler

        sched = CoreScheduler(core, timeout=1.0, detach_timeout=10.0).start()
    with tempfile.TemporaryDirectory(prefix="st-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # the chain's NFs (their own uids) reach the Redis socket
        servers = {
            mode: RedisServer(workdir / f"redis-{mode}", appendfsync=mode, core=redis_core)
            for mode in ("everysec", "always")
        }
        try:
            for srv in servers.values():
                srv.start()
            for k in news:
                pcap = workdir / f"new{k}.pcap"
                make_pcap(pcap, k)
                runs: dict[str, list[dict]] = {s: [] for s in STORES}
                for r in range(rounds):
                    for store in STORES:
                        if store == "local":
                            state = {"store": "local"}
                        else:
                            srv = servers[store.split("-")[1]]
                            state = srv.add_nf_user(
                                f"natb{k}-{r}-{store[6:9]}", unix=sched is not None
                            ).as_config()
                        if sched is not None:
                            row = run_chain(pcap, core, seconds, state, workdir, sched)
                        else:
                            row = run_nat(pcap, core, seconds, state, workdir)
                        runs[store].append(row)
                        print(f"  N={k} round {r + 1} {store}: {row['mpps']:.3f} Mpps",
                              flush=True)  # fmt: skip
                results[k] = runs
        finally:
            for srv in servers.values():
                srv.stop()
            if sched is not None:
                sched.stop()

    out = {
        "mode": opts.mode,
        "chain": "acl -> nat" if opts.mode == "chain" else "nat",
        "core": core,
        "redis_core": redis_core,
        "seconds": seconds,
        "rounds": rounds,
        "machine": "shared (other sessions' jobs run on the same 2 cores)",
        "by_new_per_1000": {},
    }
    for k, runs in results.items():
        local = statistics.median(r["mpps"] for r in runs["local"])
        entry = {}
        for store, rs in runs.items():
            med = {}
            for key in rs[0]:
                vals = [r[key] for r in rs]
                med[key] = None if None in vals else statistics.median(vals)
            med["vs_local"] = med["mpps"] / local if local else None
            med["rounds_mpps"] = [r["mpps"] for r in rs]
            entry[store] = med
        out["by_new_per_1000"][str(k)] = entry

    print(
        f"state: {out['chain']} on core {core}, redis-server on core {redis_core}, "
        f"{rounds} round(s) x {seconds:g} s, medians over rounds (machine shared)"
    )
    print(
        f"{'store':<16}{'N':>5}{'Mpps':>8}{'vs local':>10}{'new conn/s':>12}"
        f"{'MGET/batch':>12}{'writes/batch':>14}{'held p50 us':>13}{'held p99 us':>13}"
    )
    for k, entry in out["by_new_per_1000"].items():
        for store, e in entry.items():
            print(
                f"{store:<16}{k:>5}{e['mpps']:>8.3f}{e['vs_local']:>10.2f}"
                + (
                    f"{e['new_conn_per_s']:>12.0f}"
                    if e["new_conn_per_s"] is not None
                    else f"{'-':>12}"
                )
                + f"{e['fetch_rt_per_batch']:>12.4f}"
                f"{e['write_groups_per_batch']:>14.3f}{e['held_p50_us']:>13.1f}"
                f"{e['held_p99_us']:>13.1f}"
            )
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
