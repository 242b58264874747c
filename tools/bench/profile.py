"""Where a controller process spends its time: py-spy samples, summed by layer.

Used by ``tools/bench/flow_setup.py --profile``.  py-spy is an optional tool
(``pip install py-spy``), not a dependency of the project; without it the
option says so and the benchmark runs as usual.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

# Layer of a sampled frame, by the file it is in (first match wins).
LAYERS = [
    ("quadrant_app/", "quadrant: core and shim"),
    ("tools/bench/baseline_", "baseline app"),
    ("os_ken/ofproto/", "os-ken: message parse/serialize"),
    ("os_ken/", "os-ken: receive loop, dispatch, send queue"),
    ("eventlet/", "eventlet: hub, green sockets, queues"),
]


def py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy")
        if (Path(sys.executable).parent / "py-spy").exists()
        else None
    )


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    exe = py_spy()
    if exe is None:
        print("--profile: py-spy is not installed (pip install py-spy); not profiling")
        return None
    cmd = [exe, "record", "-p", str(pid), "-o", str(out), "--format", "raw"]
    cmd += ["-d", str(max(1, int(seconds))), "-r", "1000", "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def layer_of(frame: str) -> str:
    for needle, name in LAYERS:
        if needle in frame:
            return name
    return "other (interpreter, stdlib)"


def summarize(path: Path, top: int = 12) -> dict:
    """Self time per layer and the functions with the most self time."""
    layers: collections.Counter = collections.Counter()
    funcs: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        total += n
        layers[layer_of(leaf)] += n
        funcs[leaf.split(" (")[0] + " (" + leaf.rsplit("/", 1)[-1]] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "layers": {k: round(100 * v / total, 1) for k, v in layers.most_common()},
        "functions": {k: round(100 * v / total, 1) for k, v in funcs.most_common(top)},
    }


def report(summary: dict) -> str:
    if not summary.get("samples"):
        return "profile: no samples"
    lines = [f"profile: {summary['samples']} samples, self time by layer"]
    lines += [f"  {pct:5.1f} %  {name}" for name, pct in summary["layers"].items()]
    lines.append("  functions with the most self time")
    lines += [f"  {pct:5.1f} %  {name}" for name, pct in summary["functions"].items()]
    return "\n".join(lines)
