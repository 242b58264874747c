"""Run the real NF runtime with a stateful NF against the test's real redis-server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from scapy.all import Packet, raw, rdpcap, wrpcap

from tests.dataplane.conftest import _rawpkt, nf_config, run_config


@pytest.fixture
def run_stateful(tmp_path):
    """``run_stateful(nf, packets, state, batch=32, expect_rc=0)`` -> NFRun (output frames)."""

    def run(nf: dict, packets: list, state: dict, batch=32, expect_rc=0, **run_opts):
        tag = uuid.uuid4().hex[:8]
        inp, out = tmp_path / f"{tag}-in.pcap", tmp_path / f"{tag}-out.pcap"
        frames = [p if isinstance(p, Packet) else _rawpkt(p) for p in packets]
        wrpcap(str(inp), frames, linktype=1)
        cfg = nf_config(
            tmp_path,
            f"st{tag}",
            nf,
            f"net_pcap{tag},rx_pcap={inp}",
            f"net_pcapo{tag},tx_pcap={out}",
            **({"max_packets": len(packets)} | run_opts),
        )
        cfg["batch"] = batch
        cfg["state"] = state
        result = run_config(tmp_path, cfg)
        assert result.returncode == expect_rc, result.stderr
        result.output = [raw(p) for p in rdpcap(str(out))] if out.exists() else []
        result.stats_path = Path(cfg["stats"]["path"])
        return result

    return run


@pytest.fixture
def nf_user(redis_server):
    """``nf_user(prefix)`` -> the runtime's ``state:`` section for a fresh ACL user."""

    def make(prefix: str, **extra) -> dict:
        return redis_server.add_nf_user(prefix).as_config() | extra

    return make
