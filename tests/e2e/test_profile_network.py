"""tools/profile_network.py measures a real path and writes a profile that loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quadrant_app.latency_profile import load_profile
from tests.conftest import ROOT


def _measure(tmp_path, path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "-m", "tools.profile_network", "--path", path, "--gbps", "0.02",
           "0.1", "--seconds", "0.4", "--probe-pps", "1000", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=120, capture_output=True)
    prof = load_profile(str(out))
    rows = json.loads(out.read_text())["meta"]["rows"]
    assert all(r["probes"] >= 300 for r in rows)  # the probes came through
    assert prof.source == "measured" and 1 <= len(prof.gbps) <= 2
    assert all(0 < y < 10_000 for y in prof.p99_us)
    return prof


def test_loopback_profile(tmp_path):
    _measure(tmp_path, "loopback")


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_netns_profile_cleans_up(tmp_path):
    before = {n for n in _netns() if n.startswith("qx-pn")}
    prof = _measure(tmp_path, "netns")
    assert "veth" in prof.path
    # its namespaces (and with them the veth) are gone; others' are not ours to judge
    assert {n for n in _netns() if n.startswith("qx-pn")} == before
