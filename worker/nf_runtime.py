"""``quadrant-nf``: one NF runtime process (started by the agent, or by hand).

    quadrant-nf --config nf.yaml [--summary out.json]

It pins itself to its core, brings up the EAL (hugepages if configured or
available, else ``--no-huge``), opens its ports, builds and configures the
NF, creates the shared counter block and runs ``cext.runtime.Runtime``'s
RX -> NF -> TX loop in slices until SIGTERM/SIGINT, ``run.duration_s`` or
``run.max_packets``.  On the way out it closes the ports (a net_pcap port
writes its file then), prints a JSON summary (counters, NF counters, port
stats) and cleans up the EAL.

The loop itself and its seam for chains are described in ``cext/runtime.pyx``;
the config format and the counter block in docs/dataplane.rst.

Exit status: 0 done, 2 bad config (message names the field), 3 DPDK error,
4 the NF failed while running.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from worker import nf_stats
from worker.nf_config import (
    RuntimeConfig,
    StateSpec,
    eal_args,
    hugepages_free_mb,
    load_config,
    use_hugepages,
)
from worker.nf_errors import NFConfigError

EXIT_CONFIG, EXIT_DPDK, EXIT_NF = 2, 3, 4


class _Stop:
    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum


def run(cfg: RuntimeConfig, log=sys.stderr) -> dict:
    """Run the runtime described by ``cfg`` to the end; returns the summary.

    Raises NFConfigError (bad NF config), cext.eal.EalError (DPDK), or
    RuntimeError (the NF failed).
    """
    from cext.runtime import Runtime, tsc_hz

    from cext import eal, ethdev
    from worker.nf_registry import build_nf

    os.sched_setaffinity(0, {cfg.core})
    huge = use_hugepages(cfg, hugepages_free_mb())
    args = eal_args(cfg, huge)
    print(f"quadrant-nf {cfg.name}: EAL {' '.join(args[1:])}", file=log, flush=True)
    eal.init(args)
    rundir = eal.runtime_dir()
    ports, pool, block, rt, nf, store, stateful = [], None, None, None, None, None, False
    try:
        pool = ethdev.Mempool(f"qd_{cfg.name}"[:24], cfg.mempool_size, cfg.mempool_cache)
        rx = ethdev.Port(cfg.rx.name)
        ports.append(rx)
        rx.setup(pool)
        tx = rx
        if not cfg.same_port:
            tx = ethdev.Port(cfg.tx.name)
            ports.append(tx)
            tx.setup(pool)
        nf = build_nf(cfg.nf, cfg.base_dir)
        block = nf_stats.StatsBlock(cfg.stats_path)
        stateful = is_stateful(nf)
        if stateful:
            store = open_store(cfg.state, cfg.nf.type)
            rt = stateful_runtime(cfg, nf, rx.port_id, tx.port_id, block.map, store)
        else:
            rt = Runtime(nf, rx.port_id, tx.port_id, block.map, burst=cfg.batch, core=cfg.core)
        stop = _Stop()
        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        print(
            f"quadrant-nf {cfg.name}: running {cfg.nf.type} on core {cfg.core}, "
            f"stats {cfg.stats_path}",
            file=log,
            flush=True,
        )
        started = time.monotonic()
        reason = "signal"
        try:
            while stop.signal is None:
                left = cfg.slice_s
                if cfg.duration_s is not None:
                    left = min(left, cfg.duration_s - (time.monotonic() - started))
                    if left <= 0:
                        reason = "duration"
                        break
                why = rt.run(left, cfg.max_packets or 0)
                if why == "max_packets":
                    reason = why
                    break
                if why == "halt":
                    reason = "nf_failed"
                    break
        finally:
            elapsed = time.monotonic() - started  # the loop's time, without the drain
            if stateful:
                rt.drain(cfg.state.drain_s)
            rt.stop()
            for s, h in old.items():
                signal.signal(s, h)
        summary = {
            "name": cfg.name,
            "nf": cfg.nf.type,
            "core": cfg.core,
            "hugepages": huge,
            "reason": reason,
            "elapsed_s": elapsed,
            "tsc_hz": tsc_hz(),
            "counters": rt.counters(),
            "nf_stats": nf.stats(),
            "ports": {p.name: p.stats() for p in ports},
        }
        if stateful:
            summary["state"] = state_summary(rt, store)
            if rt.error is not None:
                raise RuntimeError(f"state store failed:\n{rt.error[1]}")
        error = getattr(nf, "error", None)
        if reason == "nf_failed":
            detail = error[1] if error else "the NF set halt"
            raise RuntimeError(f"NF {cfg.nf.type} failed:\n{detail}")
        return summary
    finally:
        # Drop the loop and the NF (its rte_lpm/rte_acl tables) while the EAL is up.
        rt = nf = None
        if store is not None:
            store.close()
        for p in ports:
            try:
                p.close()
            except eal.EalError as exc:
                print(f"quadrant-nf {cfg.name}: {exc}", file=log)
        if block is not None:
            block.close(remove=not cfg.stats_keep)
        eal.cleanup()
        eal.remove_runtime_dir(rundir)


def is_stateful(nf) -> bool:
    from cext.state import StatefulNF

    return isinstance(nf, StatefulNF)


def open_store(st: StateSpec | None, nf_type: str):
    """The NF's Redis connection (``None`` for ``state.store: local``)."""
    from worker.state_store import RedisStore

    if st is None:
        raise NFConfigError("state", f"missing: NF {nf_type} keeps state (docs/state.rst)")
    if st.store == "local":
        return None
    try:
        return RedisStore(st.host, st.port, st.user, st.password, st.prefix, st.timeout_s)
    except Exception as exc:  # noqa: BLE001 - any connection or auth failure: say where
        raise NFConfigError("state", f"cannot reach Redis at {st.host}:{st.port}: {exc}") from None


def stateful_runtime(cfg: RuntimeConfig, nf, rx_port: int, tx_port: int, stats_map, store):
    from cext.stateful import StatefulRuntime

    st = cfg.state
    return StatefulRuntime(
        nf, rx_port, tx_port, stats_map, store, burst=cfg.batch, core=cfg.core,
        max_held=st.max_held, cache_entries=st.cache_entries, retry_s=st.retry_s,
        replay_bytes=st.replay_bytes,
    )  # fmt: skip


def state_summary(rt, store) -> dict:
    from cext.runtime import tsc_hz

    out = rt.state_counters()
    batches = rt.counters()["batches"]
    out["store"] = "local" if store is None else "redis"
    out["fetch_round_trips_per_batch"] = out["fetch_round_trips"] / batches if batches else 0.0
    lat = sorted(rt.held_latencies())
    hz = tsc_hz()
    out["held_p50_us"] = lat[len(lat) // 2] * 1e6 / hz if lat else 0.0
    out["held_p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6 / hz if lat else 0.0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="quadrant-nf",
        description="Run one Quadrant NF: RX -> NF -> TX in batches on one pinned core.",
    )
    ap.add_argument("--config", required=True, help="runtime config (YAML)")
    ap.add_argument("--summary", help="also write the JSON summary to this file")
    opts = ap.parse_args(argv)
    from cext.eal import EalError

    try:
        cfg = load_config(opts.config)
        summary = run(cfg)
    except NFConfigError as exc:
        print(f"quadrant-nf: bad config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EalError as exc:
        print(f"quadrant-nf: DPDK error: {exc}", file=sys.stderr)
        return EXIT_DPDK
    except RuntimeError as exc:
        print(f"quadrant-nf: {exc}", file=sys.stderr)
        return EXIT_NF
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if opts.summary:
        with open(opts.summary, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
