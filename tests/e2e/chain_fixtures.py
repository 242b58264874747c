"""What the chain-instance tests share: the cooperative scheduler on the data core, a
work directory the NFs' users can read, chain instances on net_pcap/net_null ports,
polling, and the third-party examples with the nftables firewall's own counters.

The fixtures reach every test module here through tests/e2e/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from worker.chain import ChainInstance

CORE = 1  # the data core the chains' scheduler runs on
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "thirdparty"


@pytest.fixture(scope="module")
def sched():
    from worker.coopsched import CoreScheduler

    with CoreScheduler(CORE, timeout=0.3) as s:
        yield s


@pytest.fixture
def work(tmp_path):
    os.chmod(tmp_path, 0o755)  # the NFs run as their own users: they read their files here
    return tmp_path


def pcap_ports(name: str, pin, pout=None, infinite: bool = False) -> dict:
    """``rx`` from pcap ``pin`` (replayed for ever with ``infinite``), ``tx`` to pcap
    ``pout`` or, without one, to a null port."""
    rx = {"vdev": f"net_pcap_{name}0,rx_pcap={pin}" + (",infinite_rx=1" if infinite else "")}
    tx = {"vdev": f"net_pcap_{name}1,tx_pcap={pout}"} if pout else {"vdev": f"net_null_{name}1"}
    return {"rx": rx, "tx": tx}


def make_chain(name, nfs, work, sched, ports, *, ids, prefix, mode="coop", **kw):
    """A chain instance on ``CORE`` under ``sched``, 512 slots, its logs in ``work``."""
    return ChainInstance(name, nfs, core=CORE, ports=ports, ids=ids, prefix=prefix, mode=mode,
                         scheduler=sched, n_slots=512, log_dir=str(work), **kw)  # fmt: skip


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def nft_counters(netns: str) -> dict[str, int]:
    """Packets per commented rule of the nftables ruleset in ``netns``."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    counters = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            for e in rule["expr"]:
                if "counter" in e:
                    counters[rule["comment"]] = e["counter"]["packets"]
    return counters
