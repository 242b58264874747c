"""cext bindings: DPDK failures become EalError with DPDK's message; ports on
net_ring/net_null/net_memif open and burst.  Runs in a subprocess (one EAL per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

from tests.dataplane.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from cext import eal, ethdev
    from cext.eal import EalError
    prefix, sock = sys.argv[1], sys.argv[2]
    out = {}
    eal.init(["t", "-l", "0", "--no-huge", "-m", "128", "--no-pci", "--file-prefix", prefix,
              "--vdev", "net_ring0", "--vdev", "net_null0", "--vdev",
              f"net_memif0,role=server,socket={sock},socket-abstract=no"])
    def err(fn):
        try:
            fn()
        except EalError as exc:
            return str(exc)
        return None
    out["again"] = err(lambda: eal.init(["t", "--no-huge", "--file-prefix", prefix]))
    out["no_port"] = err(lambda: ethdev.Port("net_nope"))
    out["huge_pool"] = err(lambda: ethdev.Mempool("qd_too_big", 50_000_000))
    pool = ethdev.Mempool("qd_pool", 2047, 32)
    out["ports"] = sorted(p["name"] for p in eal.ports())
    drivers, qcount = {}, {}
    for name in ("net_ring0", "net_null0", "net_memif0"):
        port = ethdev.Port(name)
        port.setup(pool)
        drivers[name] = port.driver()
        qcount[name] = port.rx_queue_count()
        port.close()
    out["drivers"] = drivers
    out["rx_queue_count"] = qcount
    out["dup_pool"] = err(lambda: ethdev.Mempool("qd_pool", 2047, 32))
    rundir = eal.runtime_dir()
    eal.cleanup()
    eal.remove_runtime_dir(rundir)
    out["rundir"] = rundir
    print(json.dumps(out))
    """
)


def test_dpdk_errors_and_vdev_ports(tmp_path):
    script = tmp_path / "b.py"
    script.write_text(SCRIPT)
    prefix = f"qd-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, str(script), prefix, str(tmp_path / "memif.sock")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["again"].startswith("rte_eal_init: ")
    assert "no DPDK port named 'net_nope'" in out["no_port"]
    assert "rte_pktmbuf_pool_create('qd_too_big'" in out["huge_pool"]
    assert "Cannot allocate memory" in out["huge_pool"]
    assert "File exists" in out["dup_pool"]
    assert out["rundir"].endswith(prefix) and not os.path.exists(out["rundir"])
    assert out["ports"] == ["net_memif0", "net_null0", "net_ring0"]
    assert out["drivers"] == {
        "net_ring0": "net_ring",
        "net_null0": "net_null",
        "net_memif0": "net_memif",
    }
    # none of these drivers can count its RX queue (rte_eth_rx_queue_count: -ENOTSUP)
    assert out["rx_queue_count"] == {"net_ring0": None, "net_null0": None, "net_memif0": None}
