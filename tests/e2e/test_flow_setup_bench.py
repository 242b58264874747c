"""The flow-setup benchmark runs end to end (its figures are not asserted: see docs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_and_every_flow_mod_names_its_flow(tmp_path):
    out = tmp_path / "flow_setup.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.flow_setup", "--quick", "--seconds", "0.5",
         "--apps", "quadrant,floor", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # The bench itself fails when a flow-mod is missing or names another flow.
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["apps"]) == {"quadrant", "floor"}
    for key in ("setups_per_s", "p50_us", "p99_us"):
        assert data[key] > 0
    assert data["apps"]["quadrant"]["flows"] > 0
    assert "quadrant" in proc.stdout and "floor" in proc.stdout
