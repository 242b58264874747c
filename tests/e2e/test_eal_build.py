"""The Cython build against libdpdk: the module loads and the EAL comes up with vdevs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.dpdk

# The EAL initialises once per process: each case runs in its own interpreter.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from cext import eal
    args = json.loads(sys.argv[1])
    n = eal.init(args)
    out = {"consumed": n, "ports": eal.ports(), "count": eal.port_count()}
    try:
        eal.init(args)
    except eal.EalError as exc:
        out["again"] = str(exc)
    eal.cleanup()
    print(json.dumps(out))
    """
)


def run_eal(args):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc


def test_eal_init_with_vdevs(dpdk_prefix):
    prefix = dpdk_prefix
    args = [
        "quadrant-test", "--no-huge", "-m", "128", "--no-pci", "--file-prefix", prefix,
        "-l", "0", "--log-level", "error",
        "--vdev", "net_null0", "--vdev", "net_ring0",
    ]  # fmt: skip
    proc = run_eal(args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["consumed"] == len(args) - 1
    assert [p["name"] for p in out["ports"]] == ["net_null0", "net_ring0"]
    assert out["count"] == 2
    assert "Operation already in progress" in out["again"]


def test_eal_error_carries_dpdks_message(dpdk_prefix):
    args = ["quadrant-test", "--no-huge", "--no-pci", "--vdev", "net_nosuchpmd0", "-l", "0"]
    proc = run_eal(args + ["--file-prefix", dpdk_prefix, "--log-level", "error"])
    assert proc.returncode != 0
    assert "EalError: rte_eal_init:" in proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/hugepages"), reason="no hugetlbfs mounted")
def test_eal_on_hugepages_when_available(dpdk_prefix):
    with open("/proc/sys/vm/nr_hugepages") as f:
        if int(f.read()) < 64:
            pytest.skip("fewer than 64 hugepages reserved")
    args = [
        "quadrant-test", "--in-memory", "-m", "64", "--no-pci", "--file-prefix", dpdk_prefix,
        "-l", "0", "--log-level", "error", "--vdev", "net_null0",
    ]  # fmt: skip
    proc = run_eal(args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["count"] == 1
