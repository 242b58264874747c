"""The main job, `make demo`, in its short mode: it must deliver through every chain."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_quick(root_required):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--quick"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "registered chain1-tunnel-ipforward" in out
    assert "packets arrived (0 lost)" in out
    assert "VLAN 100 on every flow: yes" in out
    assert "scaling: 2 instances attached at the peak, one again after the ramp" in out
    assert "demo: done" in out
