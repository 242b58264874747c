"""One NF process of a multi-NF chain instance (started by :mod:`worker.chain`).

    python -m worker.chain_nf < spec.json

The spec (JSON on stdin, written by :class:`worker.chain.ChainInstance`)
says which NF of which chain this is, its core, uid/gid, the chain buffer
file(s) and, for the first NF, its ports.  The process

1. pins itself to the core and brings up an EAL of its own (``--in-memory``
   or ``--no-huge --no-shconf``, its own ``--file-prefix``: no DPDK file
   another process could open);
   only the first NF gets ports (``--vdev``/``-a``) and a packet mempool;
2. builds and configures its NF(s) (issue 4's registry) and maps the chain
   buffer file(s), as root;
3. locks its memory and confines itself (:func:`worker.sandbox.confine`):
   its own uid, the chain's gid, no capabilities, not dumpable, seccomp;
4. prints ``{"ready": true, "tid": ...}`` on stdout and enters the nogil
   burst loop (parked until the scheduler attaches the chain);
   (a third-party NF's position runs the bridge loop instead, its ports the
   bridge's ends of the NF's veth pairs: docs/thirdparty.rst);
5. on STOP leaves the loop, closes its ports (a net_pcap port writes its
   file) and prints a JSON summary line.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def _eal_args(spec: dict) -> list[str]:
    e = spec.get("eal", {})
    # "lcores": the EAL thread may run on these CPUs during setup (the agent pins it to
    # the core afterwards); otherwise it is pinned to the core from the start
    lcore = (["--lcores", f"{spec['core']}@({','.join(map(str, e['lcores']))})"]
             if e.get("lcores") else ["-l", str(spec["core"])])  # fmt: skip
    args = ["quadrant-chain-nf", *lcore, "--file-prefix", e["file_prefix"]]
    args += ["--no-telemetry", "-m", str(e.get("memory_mb", 64))]
    # no file of this EAL for another process to open: hugepages through memfd
    # (--in-memory), or anonymous memory and no shared config (--no-huge --no-shconf)
    args += ["--in-memory"] if e.get("hugepages", False) else ["--no-huge", "--no-shconf"]
    ports = spec.get("ports")
    if ports:
        devs = (
            [ports["rx"]]
            if ports.get("tx", ports["rx"]) == ports["rx"]
            else [ports["rx"], ports["tx"]]
        )
        if not any("pci" in d for d in devs):
            args.append("--no-pci")
        for d in devs:
            args += ["--vdev", d["vdev"]] if "vdev" in d else ["-a", d["pci"]]
    else:
        args += ["--no-pci"]
    return args + list(e.get("args", []))


def _port_name(d: dict) -> str:
    return d["vdev"].split(",", 1)[0] if "vdev" in d else d["pci"]


def held_latency_us(cycles: list[int]) -> dict:
    """p50/p99 time (us) from a held packet's arrival at the stage to its release."""
    from cext.runtime import tsc_hz

    lat, hz = sorted(cycles), tsc_hz()
    if not lat:
        return {"held_p50_us": 0.0, "held_p99_us": 0.0}
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return {"held_p50_us": lat[len(lat) // 2] * 1e6 / hz, "held_p99_us": p99 * 1e6 / hz}


def stage_state(spec: dict, nfs: list, inp):
    """The :class:`cext.statecore.StageState` of a stateful NF at this position (its
    Redis connection opened, its mappings restored), or None for a stateless one."""
    from cext.state import StatefulNF
    from cext.statecore import StageState

    from worker.nf_config import parse_state
    from worker.nf_errors import NFConfigError
    from worker.nf_runtime import open_store

    stateful = [i for i, nf in enumerate(nfs) if isinstance(nf, StatefulNF)]
    if not stateful:
        return None
    where = f"nfs[{spec['index']}]"
    if spec["index"] == 0 or len(nfs) != 1 or spec.get("copy"):
        raise NFConfigError(
            f"{where}.type",
            f"{spec['nfs'][stateful[0]]['type']} keeps state: it runs at a chain position "
            "after the first (put a native NF before it: empty, for one that does nothing), "
            "in the coop or cfs mode",
        )
    # held slots stay in the region: at most half of it, so the chain keeps moving
    st = spec["nfs"][0].get("state")
    st = parse_state(st, 1, inp.n_slots) if st is not None else None
    store = open_store(st, spec["nfs"][0]["type"])
    return StageState(
        nfs[0], store, max_held=st.max_held, cache_entries=st.cache_entries,
        retry_s=st.retry_s, replay_bytes=st.replay_bytes,
    )  # fmt: skip


def main() -> int:
    spec = json.load(sys.stdin)
    from cext import chainbuf, eal, ethdev, flowhold
    from worker import sandbox
    from worker.nf_config import NFSpec
    from worker.nf_registry import build_nf

    # "-l core" pins this thread; the EAL's control threads stay off the data core
    eal.init(_eal_args(spec))
    ports = []
    try:
        pool_name = None
        if spec.get("ports"):
            pool_name = f"qs_{spec['chain']}"[:24]
            pool = ethdev.Mempool(pool_name, spec.get("mempool_size", 8191), 256)
            rx = ethdev.Port(_port_name(spec["ports"]["rx"]))
            rx.setup(pool)
            ports.append(rx)
            tx = rx
            txd = spec["ports"].get("tx", spec["ports"]["rx"])
            if txd != spec["ports"]["rx"]:
                tx = ethdev.Port(_port_name(txd))
                tx.setup(pool)
                ports.append(tx)
        nfs = [
            build_nf(NFSpec(n["type"], dict(n.get("config") or {}), n.get("class")))
            for n in spec["nfs"]
        ]
        bufs = spec["buffers"]
        opened = {}

        def buf(key):
            path = bufs.get(key)
            if path is None:
                return None
            if path not in opened:
                opened[path] = chainbuf.ChainBuffer.open(path)
            return opened[path]

        ctl, inp, out, ret = buf("ctl"), buf("in"), buf("out"), buf("ret")
        state = stage_state(spec, nfs, inp)
        hold = flowhold.FlowHold.open(bufs["hold"]) if bufs.get("hold") else None
        wrapped = [chainbuf.NF(n) for n in nfs]
        sandbox.lock_memory()
        sandbox.confine(spec["uid"], spec["gid"])
        print(
            json.dumps({"ready": True, "tid": threading.get_native_id(), "pid": os.getpid()}),
            flush=True,
        )
        if spec.get("bridge") is not None:
            # a third-party NF's position: ports[0] reads its output, ports[-1] feeds it
            br = spec["bridge"]
            mac = br.get("dst_mac")
            chainbuf.run_bridge(
                ctl,
                spec["index"],
                inp,
                bufs["in_ring"],
                bufs["out_ring"],
                ports[-1].port_id,
                ports[0].port_id,
                pool_name,
                hold_us=float(br.get("hold_us", 1000)),
                dst_mac=bytes.fromhex(mac.replace(":", "")) if mac else None,
            )
        elif spec["index"] == 0:
            chainbuf.run_first(
                ctl,
                wrapped,
                ports[0].port_id,
                ports[-1].port_id,
                pool_name,
                out=out,
                out_ring=bufs.get("out_ring", 1),
                ret=ret,
                ret_ring=bufs.get("ret_ring", 0),
                hold=hold,
            )
        else:
            chainbuf.run_stage(
                ctl,
                spec["index"],
                wrapped[0],
                inp,
                bufs["in_ring"],
                out=out,
                out_ring=bufs["out_ring"],
                copy=bool(spec.get("copy")),
                state=state,
            )
        summary = {"done": True, "nf_stats": [n.stats() for n in nfs]}
        if state is not None:  # the stage's state counters, also among the NF's own
            summary["state"] = state.counters() | held_latency_us(state.held_latencies())
            summary["nf_stats"][0] = dict(summary["nf_stats"][0] or {}, state=summary["state"])
        for p in ports:
            summary.setdefault("ports", {})[p.name] = p.stats()
            p.close()
        ports = []
        print(json.dumps(summary), flush=True)
        return 0
    finally:
        for p in ports:
            try:
                p.close()
            except Exception:
                pass


def run() -> int:
    """main(), with a bad config said on stdout (where the chain waits for "ready")."""
    from worker.nf_errors import NFConfigError

    try:
        return main()
    except NFConfigError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        print(f"chain_nf: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
