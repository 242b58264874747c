"""Run the real NF runtime (``python -m worker.nf_runtime``) on net_pcap files.

Each run is a subprocess (the EAL initialises once per process) with its own
``--file-prefix`` (prefix ``qd``), ``--no-huge`` and a private stats file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from scapy.all import Packet, raw, rdpcap, wrpcap

REPO = Path(__file__).resolve().parents[2]


@dataclass
class NFRun:
    returncode: int
    stdout: str
    stderr: str
    summary: dict | None
    output: list[bytes]
    stats_path: Path | None = None


def nf_config(tmp: Path, tag: str, nf: dict, rx: str, tx: str | None, **run) -> dict:
    cfg = {
        "name": f"qd-{tag}",
        "core": sorted(os.sched_getaffinity(0))[-1],
        "eal": {"file_prefix": f"qd-{tag}", "hugepages": False, "memory_mb": 128},
        "mempool": {"size": 2047, "cache": 32},
        "ports": {"rx": {"vdev": rx}},
        "nf": nf,
        "stats": {"path": str(tmp / f"{tag}.stats")},
        "run": {"duration_s": 10, **run},
    }
    if tx is not None:
        cfg["ports"]["tx"] = {"vdev": tx}
    return cfg


def run_config(tmp: Path, cfg: dict, timeout: float = 60) -> NFRun:
    path = tmp / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary_path = tmp / f"{cfg['name']}.summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.nf_runtime",
            "--config",
            str(path),
            "--summary",
            str(summary_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return NFRun(proc.returncode, proc.stdout, proc.stderr, summary, [])


@pytest.fixture
def run_nf(tmp_path):
    """``run_nf(nf_section, packets)`` -> NFRun with the output frames as bytes."""

    def run(nf: dict, packets: list[Packet | bytes], keep_stats=False, batch=32) -> NFRun:
        tag = uuid.uuid4().hex[:8]
        inp, out = tmp_path / f"{tag}-in.pcap", tmp_path / f"{tag}-out.pcap"
        wrpcap(str(inp), [p if isinstance(p, Packet) else _rawpkt(p) for p in packets], linktype=1)
        cfg = nf_config(
            tmp_path,
            tag,
            nf,
            f"net_pcap{tag},rx_pcap={inp}",
            f"net_pcapo{tag},tx_pcap={out}",
            max_packets=len(packets),
        )
        cfg["batch"] = batch
        cfg["stats"]["keep"] = keep_stats
        result = run_config(tmp_path, cfg)
        assert result.returncode == 0, result.stderr
        result.output = [raw(p) for p in rdpcap(str(out))] if out.exists() else []
        result.stats_path = Path(cfg["stats"]["path"])
        return result

    return run


def _rawpkt(b: bytes):
    from scapy.all import conf

    return conf.raw_layer(b)
