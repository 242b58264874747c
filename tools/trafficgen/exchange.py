"""One send/count exchange between two namespaces: what the tests and benchmarks repeat.

:func:`exchange` starts the sink in ``sink_ns``, waits until it listens,
runs the sender in ``src_ns`` to its end, waits for the sink to go idle and
returns ``(sent, report)``: packets sent per flow id, and the sink's per-flow
report (``tools.trafficgen.counting.Sink.summary``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PY = [sys.executable, "-m", "tools.trafficgen"]


class ExchangeError(RuntimeError):
    pass


def exchange(
    src_ns: str,
    sink_ns: str,
    send_args: list[str],
    seconds: float,
    idle: float = 1.5,
    iface: str = "eth0",
) -> tuple[dict[int, int], dict]:
    """``send_args``: the sender's options after ``--iface`` (MACs, flows, rate, ...)."""
    with tempfile.TemporaryDirectory(prefix="qtg-") as tmp:
        tx, rx = Path(tmp) / "tx.json", Path(tmp) / "rx.json"
        sink = subprocess.Popen(
            ["ip", "netns", "exec", sink_ns, *PY, "sink", "--iface", iface,
             "--seconds", str(seconds + 30), "--idle", str(idle), "--json", str(rx)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            if sink.stdout.readline().strip() != "ready":
                raise ExchangeError(f"the sink in {sink_ns} did not start")
            send = subprocess.run(
                ["ip", "netns", "exec", src_ns, *PY, "send", "--iface", iface,
                 "--seconds", str(seconds), *send_args, "--json", str(tx)],
                capture_output=True, text=True, timeout=seconds + 60,
            )  # fmt: skip
            if send.returncode != 0:
                raise ExchangeError(f"the sender in {src_ns} failed: {send.stderr.strip()}")
            sink.wait(seconds + 60)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait()
        sent = {int(k): v for k, v in json.loads(tx.read_text())["sent"].items()}
        return sent, json.loads(rx.read_text())
