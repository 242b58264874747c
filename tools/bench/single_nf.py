"""Single-NF throughput: each basic NF on one pinned core vs dpdk-testpmd macswap.

    .venv/bin/python -m tools.bench.single_nf [--quick] [--json PATH] [--core N] [--prefix P]

Source: ``net_pcap`` with ``infinite_rx=1`` over a pcap of UDP frames across
many flows (one pcap per frame size, 64 and 1024 bytes; ``urlfilter`` gets
HTTP-over-TCP connections instead, see :func:`make_http_pcap`); sink: ``net_null``
with ``no-rx=1``.  For every frame size, ``dpdk-testpmd --forward-mode=macswap``
runs on the same vdevs and the same data core (forwarding lcore = --core,
its main lcore on another one), then ``quadrant-nf`` once per NF type, and
the pair is repeated ``--rounds`` times, interleaved, so both see the same
machine noise.  Reported: the best and the median Mpps over the rounds,
cycles per packet at the best rate (TSC Hz / pps: every cycle of the data
core, polls included) and the ratio to testpmd (per round against that
round's testpmd run, median over the rounds).  Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import yaml

from worker import nf_stats

REPO = Path(__file__).resolve().parents[2]
NFS = ("empty", "tunnel", "ipforward", "acl", "bpf_lpm", "urlfilter")
HTTP_NFS = ("urlfilter",)  # these NFs get the HTTP/TCP pcap
PAPER_CHAIN2_KPPS = 116  # Table 4, acl -> urlfilter -> encrypt, per core
SIZES = (64, 1024)
PAPER_BPF_LPM_MPPS, PAPER_GHZ = 4.7, 2.4  # SoCC '22, 2.4 GHz Haswell
MEMORY_MB = 256
MBUFS = 16383
HTTP_PCAP_FRAMES = 8000  # well below MBUFS: the pcap stays in mbufs
PREFIX = "qd-bench"  # DPDK --file-prefix and stats file names start with this (--prefix)


def make_pcap(path: Path, size: int, flows: int) -> None:
    from scapy.all import IP, UDP, Ether, Raw, wrpcap

    pkts = []
    for i in range(flows):
        hdr = (
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(
                src=f"10.1.{i >> 8 & 255}.{i & 255}",
                dst=f"10.{2 + (i % 7)}.{i * 7 & 255}.{i & 255}",
            )
            / UDP(sport=1024 + i, dport=80 + i % 1000)
        )
        pkts.append(hdr / Raw(b"\x00" * (size - len(hdr))))
    wrpcap(str(path), pkts)


def http_connection(i: int, size: int) -> list:
    """Connection ``i`` of :func:`make_http_pcap`, every frame ``size`` bytes."""
    from scapy.all import IP, TCP, Ether, Raw, raw

    room = size - 54  # Ethernet + IPv4 + TCP headers
    cli, srv = f"10.1.{i >> 8 & 255}.{i & 255}", f"10.2.{i % 7}.{i * 7 & 255}"
    sport, isn, sisn = 1024 + i, 1000 * i, 7000 * i + 1

    def frame(c2s: bool, seq: int, ack: int, flags: str, data: bytes = b""):
        ips, ports = ((cli, srv), (sport, 80)) if c2s else ((srv, cli), (80, sport))
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=ips[0], dst=ips[1])
        p = p / TCP(sport=ports[0], dport=ports[1], seq=seq, ack=ack, flags=flags) / Raw(data)
        b = raw(p)
        return Ether(b + b"\x00" * (size - len(b)))  # short frames: an Ethernet trailer

    head = (
        f"GET /static/{i % 97}/item-{i}.html?session={i * 7919} HTTP/1.1\r\n"
        f"Host: www.site{i % 13}.example\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
    ).encode()
    req = head + b"Cookie: id=" + b"c" * (1200 - len(head) - 15) + b"\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2350\r\n\r\n".ljust(2400, b"r")
    end = isn + 1 + len(req)
    pkts = [frame(True, isn, 0, "S"), frame(False, sisn, isn + 1, "SA")]
    pkts.append(frame(True, isn + 1, sisn + 1, "A"))
    for o in range(0, len(req), room):
        pkts.append(frame(True, isn + 1 + o, sisn + 1, "PA", req[o : o + room]))
    for o in range(0, len(resp), room):
        pkts.append(frame(False, sisn + 1 + o, end, "PA", resp[o : o + room]))
    pkts.append(frame(True, end, sisn + 1 + len(resp), "FA"))
    pkts.append(frame(False, sisn + 1 + len(resp), end + 1, "FA"))
    return pkts


def make_http_pcap(path: Path, size: int, max_frames: int, max_conns: int = 256) -> int:
    """Interleaved HTTP/1.1 connections, as many as fit in ``max_frames`` (net_pcap's
    infinite_rx keeps the whole pcap in mbufs): SYN, SYN-ACK, ACK, a 1.2 KB request
    head (a big cookie) in segments of what fits in ``size``, a 2.4 KB response,
    FIN, FIN.  They close each time round, so every replay of the pcap is new
    connections for the filter: reassembly, parsing and matching.  Returns the
    number of connections."""
    from scapy.all import wrpcap

    per_conn = len(http_connection(0, size))
    conns = max(1, min(max_conns, max_frames // per_conn))
    flows = [http_connection(i, size) for i in range(conns)]
    out = []
    for t in range(max(len(f) for f in flows)):  # round robin: all connections live at once
        out += [f[t] for f in flows if t < len(f)]
    wrpcap(str(path), out)
    return conns


def nf_configs(workdir: Path) -> dict[str, dict]:
    from worker import nf_tables, nf_urlrules

    routes = workdir / "routes.txt"
    routes.write_text(
        "0.0.0.0/0 02:00:00:00:00:99\n"
        + nf_tables.format_routes(nf_tables.generate_routes(10_000, seed=1))
    )
    rules = workdir / "acl.txt"
    rules.write_text("\n".join(nf_tables.generate_acl_rules(1500, seed=1)) + "\n")
    url_rules = workdir / "url.rules"
    url_rules.write_text("\n".join(nf_urlrules.generate_rules(500, seed=1)) + "\n")
    return {
        "empty": {},
        "tunnel": {"vlan": 100},
        "ipforward": {"route_file": str(routes)},
        "acl": {"rule_file": str(rules), "default": "allow"},
        "bpf_lpm": {"lookups": 200, "table_size": 1024},
        "urlfilter": {"rule_file": str(url_rules), "flows": 4096},
    }


def hugepages_ok() -> bool:
    from worker.nf_config import hugepages_free_mb

    return hugepages_free_mb() >= MEMORY_MB  # the runs come one after another


def dpdk_runtime_dir(prefix: str) -> Path:
    """Where an EAL primary with ``--file-prefix prefix`` keeps its files (DPDK's rule)."""
    if os.geteuid() == 0:
        return Path("/var/run/dpdk") / prefix
    return Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "dpdk" / prefix


def run_testpmd(
    pcap: Path, core: int, main_core: int, seconds: float, huge: bool, prefix: str = PREFIX
) -> float:
    prefix = f"{prefix}-tp-{uuid.uuid4().hex[:6]}"
    cmd = [
        "stdbuf",  # line-buffered stdout: we timestamp the start of forwarding
        "-oL",
        "dpdk-testpmd",
        "-l",
        f"{main_core},{core}",
        "--main-lcore",
        str(main_core),
        "--file-prefix",
        prefix,
        "-m",
        str(MEMORY_MB),
        "--no-pci",
        "--vdev",
        f"net_pcap0,rx_pcap={pcap},infinite_rx=1",
        "--vdev",
        "net_null0,no-rx=1",
    ]
    # no hugepages: --no-huge; hugepages: unlink their files (leave nothing behind)
    cmd.append("--huge-unlink" if huge else "--no-huge")
    cmd += [
        "--",
        "--forward-mode=macswap",
        "--nb-cores=1",
        f"--total-num-mbufs={MBUFS}",
        "--stats-period",
        "1",
        "--burst=32",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    lines: list[str] = []
    started = threading.Event()
    enough = threading.Event()
    periods = max(1, round(seconds))  # full one-second periods to measure
    blocks = 0

    def reader():
        nonlocal blocks
        for line in proc.stdout:
            lines.append(line)
            if "packet forwarding - ports=" in line:  # printed as forwarding starts
                started.set()
            elif "NIC statistics for port 1" in line:
                blocks += 1
                if blocks >= periods + 2:  # the first is partial; +1 to end the last
                    enough.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if not started.wait(30):
            raise RuntimeError("testpmd did not start forwarding:\n" + "".join(lines[-30:]))
        if not enough.wait(seconds + 30):
            raise RuntimeError("testpmd printed too few statistics:\n" + "".join(lines[-30:]))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        t.join(timeout=10)
        shutil.rmtree(dpdk_runtime_dir(prefix), ignore_errors=True)
    # testpmd's own per-period rate (its TSC) of port 1, the sink; the first
    # period after start-up is partial, so it is left out
    out = "".join(lines)
    rates = [int(r) for r in re.findall(r"statistics for port 1 .*?Tx-pps:\s+(\d+)", out, re.S)]
    rates = [r for r in rates[1:] if r > 0]
    if not rates:
        raise RuntimeError(f"testpmd printed no rate:\n{out[-2000:]}")
    return statistics.median(rates) / 1e6


def run_nf(
    nf: str,
    config: dict,
    pcap: Path,
    core: int,
    seconds: float,
    huge: bool,
    workdir: Path,
    prefix: str = PREFIX,
) -> dict:
    tag = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cfg = {
        "name": tag,
        "core": core,
        "eal": {"file_prefix": tag, "hugepages": huge, "memory_mb": MEMORY_MB},
        "mempool": {"size": MBUFS},
        "ports": {
            "rx": {"vdev": f"net_pcap0,rx_pcap={pcap},infinite_rx=1"},
            "tx": {"vdev": "net_null0,no-rx=1"},
        },
        "nf": {"type": nf, "config": config},
        # the default place, /dev/shm (tmpfs: no writeback faults on the data core)
        "stats": {"path": f"/dev/shm/quadrant-nf-{tag}.stats", "keep": True},
        "run": {"duration_s": seconds},
    }
    path = workdir / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "worker.nf_runtime", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    stats = Path(cfg["stats"]["path"])
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"quadrant-nf {nf} failed:\n{proc.stderr[-2000:]}")
        snap = nf_stats.read(stats)  # the block the monitor reads, after the run
    finally:
        stats.unlink(missing_ok=True)
    s = json.loads(proc.stdout)
    c = s["counters"]
    pps = c["rx_packets"] / s["elapsed_s"]
    return {
        "mpps": pps / 1e6,
        "cycles_per_pkt": s["tsc_hz"] / pps,
        "busy_cycles_per_pkt": c["busy_cycles"] / max(1, c["rx_packets"]),
        "p99_batch_cycles": snap.percentile_cycles(0.99),
        "tsc_hz": s["tsc_hz"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 60 s in all)")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--core", type=int, help="data core (default: the last allowed CPU)")
    ap.add_argument("--seconds", type=float, help="measurement per run")
    ap.add_argument("--rounds", type=int, help="interleaved repetitions")
    ap.add_argument("--nfs", default=",".join(NFS), help="comma-separated NF types")
    ap.add_argument("--prefix", default=PREFIX, help="start of every DPDK --file-prefix")
    opts = ap.parse_args(argv)
    if shutil.which("dpdk-testpmd") is None:
        sys.exit("dpdk-testpmd not found (Debian package dpdk; tools/setup-host installs it)")
    cpus = sorted(os.sched_getaffinity(0))
    core = opts.core if opts.core is not None else cpus[-1]
    main_core = next((c for c in cpus if c != core), core)
    seconds = opts.seconds or (1.0 if opts.quick else 2.0)
    rounds = opts.rounds or (2 if opts.quick else 5)
    sizes = (64,) if opts.quick else SIZES
    nfs = [n for n in opts.nfs.split(",") if n]
    huge = hugepages_ok()

    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="qd-bench-") as tmp:
        workdir = Path(tmp)
        configs = nf_configs(workdir)
        for size in sizes:
            pcap = workdir / f"udp{size}.pcap"
            make_pcap(pcap, size, flows=1024)
            http = workdir / f"http{size}.pcap"
            if any(nf in HTTP_NFS for nf in nfs):
                make_http_pcap(http, size, max_frames=HTTP_PCAP_FRAMES)
            runs = {"testpmd": [], **{nf: [] for nf in nfs}}
            for _ in range(rounds):
                runs["testpmd"].append(
                    run_testpmd(pcap, core, main_core, seconds, huge, opts.prefix)
                )
                for nf in nfs:
                    src = http if nf in HTTP_NFS else pcap
                    runs[nf].append(
                        run_nf(nf, configs[nf], src, core, seconds, huge, workdir, opts.prefix)
                    )
            results[size] = runs

    hz = next(iter(results[sizes[0]][nfs[0]]))["tsc_hz"] if nfs else 0
    out = {
        "core": core,
        "hugepages": huge,
        "seconds": seconds,
        "rounds": rounds,
        "tsc_hz": hz,
        "nf": {},
        "testpmd_macswap_by_size": {},
    }
    for size in sizes:
        tps = results[size]["testpmd"]
        tp = max(tps)
        out["testpmd_macswap_by_size"][str(size)] = {
            "mpps": tp,
            "mpps_median": statistics.median(tps),
            "cycles_per_pkt": hz / (tp * 1e6) if hz else None,
            "rounds": tps,
        }
        for nf in nfs:
            rates = [r["mpps"] for r in results[size][nf]]
            best = max(rates)
            entry = out["nf"].setdefault(nf, {"by_size": {}})
            entry["by_size"][str(size)] = {
                "mpps": best,
                "mpps_median": statistics.median(rates),
                "cycles_per_pkt": hz / (best * 1e6),
                # per round against the testpmd run of the same round, then the median
                "vs_testpmd": statistics.median(r / t for r, t in zip(rates, tps, strict=True)),
                "vs_testpmd_best": best / tp,
                # histogram upper bound of the 99th percentile batch (32 packets), median round
                "p99_batch_cycles": statistics.median(
                    r["p99_batch_cycles"] for r in results[size][nf]
                ),
                "rounds": rates,
            }
    first = str(sizes[0])
    out["testpmd_macswap_mpps"] = out["testpmd_macswap_by_size"][first]["mpps"]
    for entry in out["nf"].values():
        entry.update({k: entry["by_size"][first][k] for k in ("mpps", "cycles_per_pkt")})
    if "bpf_lpm" in out["nf"]:
        out["paper_bpf_lpm_cycles_per_pkt"] = PAPER_GHZ * 1e9 / (PAPER_BPF_LPM_MPPS * 1e6)
    if "urlfilter" in out["nf"]:
        out["paper_chain2_cycles_per_pkt"] = PAPER_GHZ * 1e9 / (PAPER_CHAIN2_KPPS * 1e3)

    print(
        f"single_nf: core {core}, hugepages {huge}, {rounds} round(s) x {seconds:g} s, "
        f"TSC {hz / 1e9:.2f} GHz"
    )
    print("best of the rounds; 'vs testpmd' = median over rounds of NF / same-round testpmd")
    print(
        f"{'NF':<16}{'size':>6}{'Mpps':>9}{'median':>9}{'cyc/pkt':>9}{'vs testpmd':>12}"
        f"{'p99 batch cyc':>15}"
    )
    for size in sizes:
        tp = out["testpmd_macswap_by_size"][str(size)]
        print(
            f"{'testpmd macswap':<16}{size:>6}{tp['mpps']:>9.2f}{tp['mpps_median']:>9.2f}"
            f"{tp['cycles_per_pkt']:>9.0f}"
            f"{'1.00':>12}"
        )
        for nf in nfs:
            e = out["nf"][nf]["by_size"][str(size)]
            print(
                f"{nf:<16}{size:>6}{e['mpps']:>9.2f}{e['mpps_median']:>9.2f}"
                f"{e['cycles_per_pkt']:>9.0f}"
                f"{e['vs_testpmd']:>12.2f}{e['p99_batch_cycles']:>15.0f}"
            )
    if "paper_bpf_lpm_cycles_per_pkt" in out:
        print(
            f"paper bpf_lpm: {PAPER_BPF_LPM_MPPS} Mpps at {PAPER_GHZ} GHz = "
            f"{out['paper_bpf_lpm_cycles_per_pkt']:.0f} cycles/pkt"
        )
    if "paper_chain2_cycles_per_pkt" in out:
        print(
            f"paper chain 2 (acl -> urlfilter -> encrypt): {PAPER_CHAIN2_KPPS} kpps at "
            f"{PAPER_GHZ} GHz = {out['paper_chain2_cycles_per_pkt']:.0f} cycles/pkt"
        )
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
