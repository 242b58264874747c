"""Stateful NF cost: the NAT with its state in Redis vs the same NAT with state kept locally.

    .venv/bin/python -m tools.bench.state [--quick] [--json PATH] [--core N]

One data core runs ``quadrant-nf`` with the ``nat`` NF (alone: the chain
path for NF2..n has no state support yet, so ``acl -> nat`` is not measured);
a real ``redis-server`` (AOF on, ``appendfsync`` as in the row) runs pinned
to the other core.  Source: ``net_pcap`` with ``infinite_rx=1`` (saturated)
over a pcap of outbound TCP connections, each ``K`` packets long (SYN,
``K - 2`` ACKs with data, RST), all interleaved: every K-th packet opens a
connection (two keys written, the packet held until Redis acknowledged) and
every K-th ends one (two keys deleted, held likewise), so the new-connection
rate is the packet rate / K.  Sink: ``net_null``.

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
import uuid
from pathlib import Path

import yaml

from worker.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
MEMORY_MB = 256
MBUFS = 16383
PCAP_PACKETS = 6000  # infinite_rx keeps the whole pcap in mbufs of the port's mempool
EXTERNAL = "203.0.113.1"
STORES = ("local", "redis-everysec", "redis-always")


def make_pcap(path: Path, per_conn: int) -> int:
    """Connections of ``per_conn`` packets, interleaved; returns how many connections."""
    from scapy.all import IP, TCP, Ether, Raw, wrpcap

    n = max(1, PCAP_PACKETS // per_conn)
    pkts = []
    for j in range(per_conn):
        flags = "S" if j == 0 else ("R" if j == per_conn - 1 else "A")
        for c in range(n):
            hdr = (
                Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src=f"10.1.{c >> 8 & 255}.{c & 255 or 1}", dst="198.51.100.1")
                / TCP(sport=10000 + c, dport=80, flags=flags)
            )
            pkts.append(hdr / Raw(b"\x00" * max(0, 64 - len(hdr))))
    wrpcap(str(path), pkts)
    return n


def nat_config() -> dict:
    return {
        "internal": ["10.1.0.0/16"],
        "external": [{"address": EXTERNAL, "ports": "1024-65535"}],
    }


def run_nat(pcap: Path, core: int, seconds: float, state: dict, workdir: Path) -> dict:
    from worker.nf_config import hugepages_free_mb

    tag = uuid.uuid4().hex[:6]
    cfg = {
        "name": f"st-bench-{tag}",
        "core": core,
        "eal": {
            "file_prefix": f"st-bench-{tag}",
            "hugepages": hugepages_free_mb() >= MEMORY_MB,
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
        "fetch_rt_per_batch": st["fetch_round_trips"] / batches,
        "write_groups_per_batch": st["write_groups"] / batches,
        "held_per_batch": st["held"] / batches,
        "held_p50_us": st["held_p50_us"],
        "held_p99_us": st["held_p99_us"],
        "stalls": st["stalls"],
        "held_dropped": st["held_dropped"],
        "pool_exhausted": nf["pool_exhausted"],
        "batches": c["batches"],
        "pkts_per_batch": c["rx_packets"] / batches,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 2 min in all)")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--core", type=int, help="data core (default: the last allowed CPU)")
    ap.add_argument("--seconds", type=float, help="measurement per run")
    ap.add_argument("--rounds", type=int, help="interleaved repetitions")
    ap.add_argument("--per-conn", help="packets per connection, comma-separated (K)")
    opts = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    core = opts.core if opts.core is not None else cpus[-1]
    redis_core = next((c for c in cpus if c != core), core)
    seconds = opts.seconds or (4.0 if opts.quick else 8.0)
    rounds = opts.rounds or (1 if opts.quick else 3)
    per_conn = [int(k) for k in (opts.per_conn or ("20" if opts.quick else "100,20,4")).split(",")]

    results: dict[int, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="st-bench-") as tmp:
        workdir = Path(tmp)
        servers = {
            mode: RedisServer(workdir / f"redis-{mode}", appendfsync=mode, core=redis_core)
            for mode in ("everysec", "always")
        }
        try:
            for srv in servers.values():
                srv.start()
            for k in per_conn:
                pcap = workdir / f"conn{k}.pcap"
                make_pcap(pcap, k)
                runs: dict[str, list[dict]] = {s: [] for s in STORES}
                for r in range(rounds):
                    for store in STORES:
                        if store == "local":
                            state = {"store": "local"}
                        else:
                            srv = servers[store.split("-")[1]]
                            state = srv.add_nf_user(f"natb{k}-{r}-{store[6:9]}").as_config()
                        runs[store].append(run_nat(pcap, core, seconds, state, workdir))
                results[k] = runs
        finally:
            for srv in servers.values():
                srv.stop()

    out = {
        "core": core,
        "redis_core": redis_core,
        "seconds": seconds,
        "rounds": rounds,
        "machine": "shared (other sessions' jobs run on the same 2 cores)",
        "by_per_conn": {},
    }
    for k, runs in results.items():
        local = statistics.median(r["mpps"] for r in runs["local"])
        entry = {}
        for store, rs in runs.items():
            med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            med["vs_local"] = med["mpps"] / local if local else None
            med["rounds_mpps"] = [r["mpps"] for r in rs]
            entry[store] = med
        out["by_per_conn"][str(k)] = entry

    print(
        f"state: nat on core {core}, redis-server on core {redis_core}, "
        f"{rounds} round(s) x {seconds:g} s, medians over rounds (machine shared)"
    )
    print(
        f"{'store':<16}{'K':>5}{'Mpps':>8}{'vs local':>10}{'new conn/s':>12}"
        f"{'MGET/batch':>12}{'writes/batch':>14}{'held p50 us':>13}{'held p99 us':>13}"
    )
    for k, entry in out["by_per_conn"].items():
        for store, e in entry.items():
            print(
                f"{store:<16}{k:>5}{e['mpps']:>8.3f}{e['vs_local']:>10.2f}"
                f"{e['new_conn_per_s']:>12.0f}{e['fetch_rt_per_batch']:>12.4f}"
                f"{e['write_groups_per_batch']:>14.3f}{e['held_p50_us']:>13.1f}"
                f"{e['held_p99_us']:>13.1f}"
            )
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
