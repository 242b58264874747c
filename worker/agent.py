"""``quadrant-agent``: one per worker machine, connected back to the controller.

    quadrant-agent --controller ws://HOST:PORT/v1/agents --worker-id w1 \\
        --token-file /etc/quadrant/agent.token --topology topologies/lab.yaml

The agent opens one WebSocket to the controller and speaks JSON-RPC 2.0 over
it (:mod:`quadrant_app.jsonrpc`).  It authenticates with a bearer token in
the upgrade request, calls ``register`` with its inventory (managed cores,
VFs with MACs, switch port; taken from the worker's entry in the topology
file) and the chain instances it is running, then sends ``heartbeat``
notifications.  The controller's commands arrive on the same socket and are
served by the methods registered on :attr:`Agent.dispatcher`, each in a
worker thread so a slow command (starting NF processes) never stalls
heartbeats.  When the connection drops the agent reconnects with capped
exponential back-off and registers again, listing the instances it still
runs, so a controller that comes back finds healthy chains untouched.

Exit status: 0 stopped by signal, 2 bad arguments or refused token.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import Dispatcher, Ids, Request, Response, RpcError

LOG = logging.getLogger("quadrant.agent")

PROTOCOL_VERSION = 1


class AgentAuthError(RuntimeError):
    """The controller refused this agent's token: retrying will not help."""


def inventory(topology, worker_id: str) -> dict:
    """The worker's inventory, from its entry in the topology file."""
    worker = next((w for w in topology.workers if w.name == worker_id), None)
    if worker is None:
        names = ", ".join(w.name for w in topology.workers)
        raise ValueError(f"worker {worker_id!r} is not in {topology.source} (it has {names})")
    return {
        "worker": worker.name,
        "switch": worker.switch,
        "switch_port": worker.switch_port,
        "cores": list(worker.cores),
        "vfs": [
            {k: v for k, v in (("mac", vf.mac), ("pci", vf.pci), ("netdev", vf.netdev)) if v}
            for vf in worker.vfs
        ],
    }


class Backoff:
    """Capped exponential back-off with jitter: 0.5 s, 1 s, 2 s ... ``cap``."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, rng: random.Random | None = None):
        self.first, self.cap = first, cap
        self.rng = rng or random.Random()
        self.n = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.n)
        self.n += 1
        return delay * self.rng.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.n = 0


class Agent:
    def __init__(
        self,
        url: str,
        worker_id: str,
        token: str,
        inventory: dict,
        heartbeat_s: float = 1.0,
        call_timeout: float = 10.0,
        instances: Callable[[], list] = list,
        monitor=None,
        monitor_interval: float = 0.5,
        liveness_interval: float | None = None,
    ):
        self.url = url
        self.worker_id = worker_id
        self.token = token
        self.inventory = inventory
        self.heartbeat_s = heartbeat_s
        self.call_timeout = call_timeout
        self.instances = instances  # what this worker runs now, for register
        self.dispatcher = Dispatcher()
        self.ids = Ids()
        self.pending: dict[int, asyncio.Future] = {}
        self.ws = None
        self.registered = asyncio.Event()
        self.sessions = 0  # how many times it registered (tests, logs)
        self.backoff = Backoff()
        self.monitor = monitor  # worker.monitor.Monitor, or None
        self.monitor_interval = monitor_interval
        # None: the monitor's tick checks liveness too; else Monitor.check this often
        self.liveness_interval = liveness_interval
        self._events_lock = asyncio.Lock()
        self.events: deque = deque(maxlen=256)  # nf_failed & co. not yet delivered
        self.reported = 0  # stats calls the controller accepted (tests, logs)
        self._stop = asyncio.Event()

    # -- calls to the controller ---------------------------------------------------

    async def call(self, method: str, params: dict) -> object:
        """Call a controller method and wait for its result (raises RpcError on error)."""
        msg_id = self.ids()
        fut = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        try:
            await self.ws.send(jsonrpc.encode(Request(method, params, msg_id).to_obj()))
            resp: Response = await asyncio.wait_for(fut, self.call_timeout)
        finally:
            self.pending.pop(msg_id, None)
        if not resp.ok:
            raise RpcError(resp.error["code"], resp.error["message"], resp.error.get("data"))
        return resp.result

    async def notify(self, method: str, params: dict) -> None:
        await self.ws.send(jsonrpc.encode(Request(method, params, None).to_obj()))

    # -- the session ------------------------------------------------------------------

    def _on_response(self, resp: Response) -> None:
        fut = self.pending.get(resp.id)
        if fut is not None and not fut.done():
            fut.set_result(resp)
        else:
            LOG.warning("response to no pending call: id %r", resp.id)

    async def _serve(self, text) -> None:
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, self.dispatcher.handle, text, self._on_response)
        if reply is not None:
            await self.ws.send(reply)

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            seq += 1
            await self.notify("heartbeat", {"worker": self.worker_id, "seq": seq})

    async def _monitor_loop(self) -> None:
        """Every ``monitor_interval``: read the counters (executor thread), send what is
        significant and every pending event while a session is up."""
        loop = asyncio.get_running_loop()
        separate = self.liveness_interval is not None
        while True:
            await asyncio.sleep(self.monitor_interval)
            up = self.registered.is_set()
            try:
                if separate:
                    rows, events = await loop.run_in_executor(
                        None, self.monitor.tick, None, up, False
                    )
                else:
                    rows, events = await loop.run_in_executor(None, self.monitor.tick, None, up)
            except Exception:
                LOG.exception("monitor tick failed")
                continue
            self.events.extend(events)
            if not self.registered.is_set():
                continue
            try:
                await self._flush_events()
                if rows:
                    await self.call("stats", {"instances": rows})
                    self.reported += 1
            except (RpcError, ConnectionError, TimeoutError, OSError) as exc:
                LOG.warning("report to the controller failed: %s", exc)
                self.monitor.resync()  # send everything again once it works

    async def _liveness_loop(self) -> None:
        """Every ``liveness_interval``: :meth:`worker.monitor.Monitor.check` (NF processes
        that exited, watchdog ends, stalls), its events sent at once."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.liveness_interval)
            try:
                events = await loop.run_in_executor(None, self.monitor.check, None)
            except Exception:
                LOG.exception("liveness check failed")
                continue
            if not events:
                continue
            self.events.extend(events)
            if self.registered.is_set():
                try:
                    await self._flush_events()
                except (RpcError, ConnectionError, TimeoutError, OSError) as exc:
                    LOG.warning("event report to the controller failed: %s", exc)

    async def _flush_events(self) -> None:
        """Send the pending events in order, each once (both loops may call this)."""
        async with self._events_lock:
            while self.events and self.registered.is_set():
                await self.call("event", self.events[0])
                self.events.popleft()

    async def _session(self, ws) -> None:
        self.ws = ws
        reader = asyncio.create_task(self._reader(ws))
        try:
            result = await self.call(
                "register",
                {
                    "version": PROTOCOL_VERSION,
                    "inventory": self.inventory,
                    "instances": self.instances(),
                },
            )
        except RpcError as exc:
            reader.cancel()
            if exc.code == jsonrpc.UNAUTHORIZED:
                raise AgentAuthError(exc.message) from None
            raise
        if isinstance(result, dict) and isinstance(result.get("heartbeat_s"), (int, float)):
            self.heartbeat_s = float(result["heartbeat_s"])
        self.sessions += 1
        if self.monitor is not None:
            self.monitor.resync()
        self.registered.set()
        self.backoff.reset()
        LOG.info("registered with %s as %s (session %d)", self.url, self.worker_id, self.sessions)
        beats = asyncio.create_task(self._heartbeats())
        try:
            await reader
        finally:
            beats.cancel()
            self.registered.clear()

    async def _reader(self, ws) -> None:
        try:
            async for text in ws:
                asyncio.create_task(self._serve(text))
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection to the controller lost"))

    async def run(self) -> None:
        """Stay connected until :meth:`stop`; raises AgentAuthError if the token is refused."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        tasks = []
        if self.monitor:
            tasks.append(asyncio.create_task(self._monitor_loop()))
            if self.liveness_interval is not None:
                tasks.append(asyncio.create_task(self._liveness_loop()))
        try:
            await self._connect_loop(connect, InvalidStatus, WebSocketException)
        finally:
            for t in tasks:
                t.cancel()

    async def _connect_loop(self, connect, InvalidStatus, WebSocketException) -> None:  # noqa: N803
        while not self._stop.is_set():
            try:
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    compression=None,
                    proxy=None,
                    open_timeout=5,
                    ping_interval=None,
                ) as ws:
                    session = asyncio.create_task(self._session(ws))
                    stop = asyncio.create_task(self._stop.wait())
                    done, _ = await asyncio.wait({session, stop}, return_when="FIRST_COMPLETED")
                    if session in done:
                        session.result()
                    else:
                        session.cancel()
                        return
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise AgentAuthError(
                        f"{self.url} refused the token ({exc.response.status_code})"
                    ) from None
                LOG.warning("controller %s answered %s", self.url, exc.response.status_code)
            except (TimeoutError, OSError, WebSocketException, RpcError) as exc:
                LOG.warning("connection to %s lost: %s", self.url, exc or type(exc).__name__)
            self._fail_pending()
            delay = self.backoff.next()
            LOG.info("reconnecting in %.1f s", delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()


def managed_cores(topology_cores: list[int], wanted: list[int] | None) -> list[int]:
    """The data cores this agent manages: ``wanted`` (each in the topology's list) or the
    topology's cores except the lowest CPU this process may use (the housekeeping core);
    refused by :func:`worker.coopsched.check_cores` if none would be left for housekeeping."""
    from worker.coopsched import check_cores

    if wanted is None:
        housekeeping = min(os.sched_getaffinity(0))
        wanted = [c for c in topology_cores if c != housekeeping]
    for c in wanted:
        if c not in topology_cores:
            raise ValueError(f"--cores: {c} is not one of the worker's cores {topology_cores}")
    if not wanted:
        raise ValueError(f"--cores: no data core left in {topology_cores}")
    check_cores(wanted)
    return sorted(set(wanted))


def default_uid_base(topology, worker_id: str) -> int:
    """Disjoint NF uid ranges for the workers of one topology (the lab runs them all on
    one machine): 256 instances of 16 uids each per worker."""
    names = [w.name for w in topology.workers]
    return 480000 + 4096 * names.index(worker_id)


def _cores(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of cores") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="quadrant-agent", description=__doc__.splitlines()[0])
    ap.add_argument("--controller", required=True, help="ws://HOST:PORT/v1/agents")
    ap.add_argument("--worker-id", required=True, help="this worker's name in the topology")
    ap.add_argument("--token-file", required=True, help="file holding the agent's bearer token")
    ap.add_argument("--topology", required=True, help="topology file (for the inventory)")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    ap.add_argument("--netns", help="network namespace the NFs run in (the lab's worker)")
    ap.add_argument("--cores", type=_cores, help="data cores to manage (default: the worker's "
                    "cores but the housekeeping one)")  # fmt: skip
    ap.add_argument("--prefix", help="names of cgroups, buffer files, DPDK file prefixes "
                    "(default quadrant-WORKER)")  # fmt: skip
    ap.add_argument("--uid-base", type=int,
                    help="NF uids/gids are allocated from here, 16 per instance (default "
                    "480000 + 4096 x the worker's position in the topology)")  # fmt: skip
    ap.add_argument("--log-dir", help="NF logs (default /tmp/PREFIX-nf-logs)")
    ap.add_argument("--watchdog-timeout", type=float, default=0.25,
                    help="seconds an NF may hold its core without yielding")  # fmt: skip
    ap.add_argument("--prepare-timeout", type=float, default=8.0,
                    help="seconds for a prepare's NFs to be ready (below the controller's call "
                    "timeout)")  # fmt: skip
    ap.add_argument("--monitor-interval", type=float, default=0.5,
                    help="seconds between counter readings")  # fmt: skip
    ap.add_argument("--stall-timeout", type=float, default=0.3,
                    help="seconds an attached NF may take no packet while packets wait for it "
                    "before it is declared failed (docs/reliability.rst)")  # fmt: skip
    ap.add_argument("--liveness-interval", type=float,
                    help="seconds between liveness checks (default: a third of "
                    "--stall-timeout)")  # fmt: skip
    ap.add_argument("--report-fraction", type=float, default=0.2,
                    help="report a value that changed by more than this fraction")  # fmt: skip
    ap.add_argument("--p99-threshold", type=float, action="append", default=[],
                    help="report when p99_us crosses this (µs; repeatable)")  # fmt: skip
    ap.add_argument("--summary", type=float, default=10.0,
                    help="seconds between full summaries")  # fmt: skip
    ap.add_argument("--state-redis", metavar="HOST:PORT|unix:PATH",
                    help="the state store stateful NFs (nat) use, as they reach it from "
                    "their network namespace (a Unix socket reaches it from any)")  # fmt: skip
    ap.add_argument(
        "--state-admin-user",
        default="admin",
        help="the store's user that may create ACL users (default admin)",
    )
    ap.add_argument(
        "--state-admin-password-file",
        help="file holding that user's password (required with --state-redis)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"quadrant-agent {args.worker_id}: %(message)s",
    )
    from quadrant_app.topology import TopologyError, load
    from worker.coopsched import SchedError

    if not args.controller.startswith(("ws://", "wss://")):
        ap.error(f"--controller {args.controller!r}: must be a ws:// or wss:// URL")
    if args.monitor_interval <= 0:
        ap.error("--monitor-interval: must be > 0")
    if not 0 < args.stall_timeout <= 60:
        ap.error("--stall-timeout: seconds in (0, 60]")
    if args.liveness_interval is None:
        args.liveness_interval = args.stall_timeout / 3
    if not 0 < args.liveness_interval <= args.stall_timeout:
        ap.error("--liveness-interval: must be > 0 and at most --stall-timeout")
    if args.netns and not os.path.exists(f"/run/netns/{args.netns}"):
        ap.error(f"--netns {args.netns!r}: no such network namespace (/run/netns)")
    try:
        token = Path(args.token_file).read_text().strip()
        topo = load(args.topology)
        inv = inventory(topo, args.worker_id)
        cores = managed_cores(inv["cores"], args.cores)
    except (OSError, TopologyError, ValueError, SchedError) as exc:
        print(f"quadrant-agent: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"quadrant-agent: {args.token_file} is empty", file=sys.stderr)
        return 2
    inv["cores"] = cores  # what it manages: the controller places instances only there
    state_access = None
    if args.state_redis:
        from worker.state_access import StateAccess, StateAccessError

        if not args.state_admin_password_file:
            ap.error("--state-redis: needs --state-admin-password-file")
        try:
            password = Path(args.state_admin_password_file).read_text().strip()
            state_access = StateAccess(args.state_redis, args.state_admin_user, password)
            state_access.check()
        except (OSError, ValueError, StateAccessError) as exc:
            print(f"quadrant-agent: --state-redis: {exc}", file=sys.stderr)
            return 2

    from worker.instances import InstanceManager
    from worker.launcher import LocalLauncher
    from worker.liveness import ChainLiveness
    from worker.monitor import Monitor, Rates, Significance, tsc_hz

    prefix = args.prefix or f"quadrant-{args.worker_id}"
    manager = InstanceManager(
        inv,
        cores,
        launcher=LocalLauncher(cgroup_parent=prefix),
        netns=args.netns,
        prefix=prefix,
        uid_base=args.uid_base
        if args.uid_base is not None
        else default_uid_base(topo, args.worker_id),
        log_dir=args.log_dir,
        watchdog_timeout=args.watchdog_timeout,
        prepare_timeout=args.prepare_timeout,
        state_access=state_access,
    )
    monitor = Monitor(
        manager,
        Rates(tsc_hz()),
        Significance(
            fraction=args.report_fraction,
            summary_s=args.summary,
            thresholds={"p99_us": args.p99_threshold},
        ),  # fmt: skip
        liveness=ChainLiveness(args.stall_timeout),
    )
    agent = Agent(args.controller, args.worker_id, token, inv, heartbeat_s=args.heartbeat,
                  instances=manager.list, monitor=monitor,
                  monitor_interval=args.monitor_interval,
                  liveness_interval=args.liveness_interval)  # fmt: skip
    manager.register(agent.dispatcher)
    manager.reap_leftovers()
    try:
        manager.start_schedulers()
    except SchedError as exc:
        manager.close()
        print(f"quadrant-agent: {exc}", file=sys.stderr)
        return 2
    # the agent and its monitor stay off the data cores (the schedulers' enforcer threads
    # pinned themselves to theirs; their master threads to the housekeeping cores)
    os.sched_setaffinity(0, os.sched_getaffinity(0) - set(cores))

    async def run():
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, agent.stop)
        await agent.run()

    try:
        asyncio.run(run())
    except AgentAuthError as exc:
        print(f"quadrant-agent: {exc}", file=sys.stderr)
        return 2
    finally:
        manager.close()  # no NF outlives its agent (nor its watchdog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
