"""How long the agent's commands take on a chain instance, and where its NFs set up.

    sudo .venv/bin/python -m tools.bench.instance_commands [--quick] [--json PATH]

Times ``prepare``, ``attach``, ``detach`` and ``teardown`` of a ``tunnel ->
ipforward`` instance through :class:`worker.instances.InstanceManager`
(the code the agent runs), NFs launched as containers in a worker network
namespace made here, on data core 1 while another chain (``empty ->
empty``) is attached there, so the core is busy with SCHED_FIFO NFs the way
a worker's data core is.  Two variants, interleaved round by round:

* ``housekeeping`` (Quadrant): each NF sets up (interpreter, EAL, tables,
  mlockall) on the housekeeping CPUs, then its cgroup confines it to core 1;
* ``on_core`` (baseline): each NF is confined to core 1 from its start.

``--idle-core`` leaves the other chain out.  Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

CORE = 1
VFS = ("02:00:00:00:0e:01", "02:00:00:00:0e:02")
CHAIN = {
    "id": 1,
    "name": "bench",
    "nfs": [
        {"type": "tunnel", "config": {"vlan": 100}},
        {"type": "ipforward",
         "config": {"routes": [{"prefix": "10.2.0.0/16", "next_hop_mac": "02:00:00:00:0b:01"}]}},
    ],
}  # fmt: skip
LOAD = {"id": 2, "name": "load", "nfs": [{"type": "empty"}, {"type": "empty"}]}
COMMANDS = ("prepare", "attach", "detach", "teardown")
VARIANTS = ("housekeeping", "on_core")


def _sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def _round(m, iid: int) -> dict[str, float]:
    t = {}
    prep = {"instance": iid, "chain": CHAIN, "core": CORE, "vf": VFS[0]}
    steps = (
        ("prepare", lambda: m.prepare(prep)),
        ("attach", lambda: m.attach({"instance": iid})),
        ("detach", lambda: m.detach({"instance": iid})),
        ("teardown", lambda: m.teardown({"instance": iid})),
    )  # fmt: skip
    for name, fn in steps:
        t0 = time.perf_counter()
        fn()
        t[name] = time.perf_counter() - t0
    return t


def run(rounds: int, idle_core: bool) -> dict:
    from worker.instances import InstanceManager
    from worker.launcher import LocalLauncher

    tag = uuid.uuid4().hex[:6]
    ns = f"qwb-{tag}"
    logs = tempfile.mkdtemp(prefix="qwb-")
    os.chmod(logs, 0o755)
    _sh("ip", "netns", "add", ns)
    m = None
    try:
        _sh("ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "tg0")
        for i, mac in enumerate(VFS):
            _sh("ip", "-n", ns, "link", "add", f"vf{i}", "link", "up0", "address", mac,
                "type", "macvlan", "mode", "bridge")  # fmt: skip
        for dev in ("up0", "tg0", "vf0", "vf1"):
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        inv = {"vfs": [{"mac": VFS[0], "netdev": "vf0"}, {"mac": VFS[1], "netdev": "vf1"}]}
        m = InstanceManager(inv, [CORE], launcher=LocalLauncher(cgroup_parent=ns), netns=ns,
                            prefix=f"qwb{tag}", uid_base=48400, log_dir=logs,
                            n_slots=512)  # fmt: skip
        housekeeping = m.startup_cpus
        if not idle_core:
            m.prepare({"instance": 900, "chain": LOAD, "core": CORE, "vf": VFS[1]})
            m.attach({"instance": 900})
        res = {v: [] for v in VARIANTS}
        iid = 0
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for v in order:
                m.startup_cpus = housekeeping if v == "housekeeping" else ()
                iid += 1
                res[v].append(_round(m, iid))
        return {"rounds": rounds, "idle_core": idle_core, "housekeeping_cpus": list(housekeeping),
                "core": CORE, "results": res}  # fmt: skip
    finally:
        if m is not None:
            m.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", logs])


def table(out: dict) -> str:
    lines = [f"{'variant':<14}" + "".join(f"{c + ' med/max ms':>24}" for c in COMMANDS)]
    med = {}
    for v in VARIANTS:
        rows = out["results"][v]
        cells = []
        for c in COMMANDS:
            xs = [r[c] * 1e3 for r in rows]
            med[(v, c)] = statistics.median(xs)
            cells.append(f"{med[(v, c)]:>14.1f} / {max(xs):>7.1f}")
        lines.append(f"{v:<14}" + "".join(cells))
    ratio = med[("on_core", "prepare")] / med[("housekeeping", "prepare")]
    load = "idle" if out["idle_core"] else "another chain attached"
    lines.append(
        f"prepare on_core / housekeeping (median): {ratio:.1f}x   "
        f"({out['rounds']} rounds, core {out['core']} {load}, "
        f"housekeeping CPUs {out['housekeeping_cpus']})"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.instance_commands")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    ap.add_argument("--idle-core", action="store_true", help="no chain attached on the core")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("instance_commands: needs root (namespaces, cgroups, SCHED_FIFO)", file=sys.stderr)
        return 2
    out = run(2 if args.quick else args.rounds, args.idle_core)
    print(table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
