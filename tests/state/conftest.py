"""Run the real NF runtime with a stateful NF against the test's real redis-server."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from scapy.all import Packet, raw

from tests.dataplane.conftest import nf_config, run_config


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """A classic pcap (Ethernet) of ``frames``: thousands of frames without scapy's cost."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", i // 1000000, i % 1000000, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(end + "IIII", data, off)[2]
        frames.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    return frames


@pytest.fixture
def run_stateful(tmp_path):
    """``run_stateful(nf, packets, state, batch=32, expect_rc=0)`` -> NFRun (output frames)."""

    def run(nf: dict, packets: list, state: dict, batch=32, expect_rc=0, **run_opts):
        tag = uuid.uuid4().hex[:8]
        inp, out = tmp_path / f"{tag}-in.pcap", tmp_path / f"{tag}-out.pcap"
        write_pcap(inp, [raw(p) if isinstance(p, Packet) else bytes(p) for p in packets])
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
        result.output = read_pcap(out) if out.exists() else []
        result.stats_path = Path(cfg["stats"]["path"])
        return result

    return run


@pytest.fixture
def nf_user(redis_server):
    """``nf_user(prefix)`` -> the runtime's ``state:`` section for a fresh ACL user."""

    def make(prefix: str, **extra) -> dict:
        return redis_server.add_nf_user(prefix).as_config() | extra

    return make
