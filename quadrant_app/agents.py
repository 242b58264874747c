"""The controller's side of the agent channel: who is connected, and what they said.

:class:`AgentHub` is pure: it validates what agents send (``register``,
``heartbeat``, ``stats``, ``event``) against the topology and keeps one
:class:`WorkerState` per worker; methods take ``now``.  :class:`AgentSession`
is the I/O: one per WebSocket (eventlet), serving the agent's calls through
the hub and carrying the controller's commands (``prepare``, ``attach``,
``detach``, ``set_batch``, ``teardown``) to the agent with :meth:`call`.
:func:`wsgi_app` authenticates the upgrade request by bearer token before
any WebSocket exists, so a wrong token costs the controller one HTTP reply.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import Dispatcher, Ids, Request, Response, RpcError, require
from quadrant_app.topology import Topology

LOG = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


@dataclasses.dataclass
class WorkerState:
    name: str
    connected: bool = False
    since: float | None = None
    last_heartbeat: float | None = None
    heartbeats: int = 0
    sessions: int = 0
    inventory: dict | None = None
    instances: list = dataclasses.field(default_factory=list)  # as the agent last reported
    events: list = dataclasses.field(default_factory=list)  # the latest few
    failed: str | None = None  # why it was declared failed (until it registers again)

    def to_json(self, now: float) -> dict:
        return {
            "worker": self.name,
            "connected": self.connected,
            "sessions": self.sessions,
            "heartbeats": self.heartbeats,
            "heartbeat_age_s": None
            if self.last_heartbeat is None
            else round(now - self.last_heartbeat, 3),
            "inventory": self.inventory,
            "instances": self.instances,
            "failed": self.failed,
        }


class AgentHub:
    MAX_EVENTS = 32

    def __init__(self, topology: Topology, heartbeat_s: float = 1.0):
        self.topology = topology
        self.heartbeat_s = heartbeat_s
        self.workers = {w.name: WorkerState(w.name) for w in topology.workers}

    # -- what agents call ----------------------------------------------------------------

    def register(self, worker: str, params, now: float) -> dict:
        """Check the agent's inventory against the topology; refuse on any mismatch."""
        version = require(params, "version", int)
        if version != PROTOCOL_VERSION:
            raise RpcError(jsonrpc.REFUSED, f"params.version: {version} (this controller speaks 1)")
        inv = require(params, "inventory", dict)
        instances = require(params, "instances", list)
        spec = next((w for w in self.topology.workers if w.name == worker), None)
        if spec is None:
            raise RpcError(jsonrpc.REFUSED, f"worker {worker!r} is not in the topology")
        if inv.get("worker") != worker:
            raise RpcError(
                jsonrpc.REFUSED,
                f"params.inventory.worker: {inv.get('worker')!r}, "
                f"but the token belongs to {worker!r}",
            )
        if inv.get("switch_port") != spec.switch_port:
            raise RpcError(
                jsonrpc.REFUSED,
                f"params.inventory.switch_port: {inv.get('switch_port')!r}, the topology says "
                f"{spec.switch_port}",
            )
        cores = inv.get("cores")
        if not isinstance(cores, list) or not set(cores) <= set(spec.cores) or not cores:
            raise RpcError(
                jsonrpc.REFUSED,
                f"params.inventory.cores: {cores!r} is not a non-empty subset of the topology's "
                f"{list(spec.cores)}",
            )
        vfs = inv.get("vfs")
        want = sorted(vf.mac for vf in spec.vfs)
        got = (
            sorted(v.get("mac") for v in vfs if isinstance(v, dict))
            if isinstance(vfs, list)
            else None
        )
        if got != want:
            raise RpcError(
                jsonrpc.REFUSED,
                f"params.inventory.vfs: MACs {got} differ from the topology's {want}",
            )
        state = self.workers[worker]
        state.connected = True
        state.since = now
        state.last_heartbeat = now
        state.sessions += 1
        state.inventory = inv
        state.instances = instances
        state.failed = None
        LOG.info("agent %s registered (session %d, %d instances)", worker, state.sessions,
                 len(instances))  # fmt: skip
        return {"worker": worker, "heartbeat_s": self.heartbeat_s, "session": state.sessions}

    def heartbeat(self, worker: str, params, now: float) -> None:
        state = self._live(worker)
        require(params, "seq", int)
        state.last_heartbeat = now
        state.heartbeats += 1

    def stats(self, worker: str, params, now: float) -> list[dict]:
        """Per-instance reports; returns them validated for the core to apply."""
        state = self._live(worker)
        reports = require(params, "instances", list)
        out = []
        for i, rep in enumerate(reports):
            where = f"params.instances[{i}]"
            iid = require(rep, "id", int, where)
            row = {"id": iid}
            for key in ("pps", "load", "p99_us", "queue_len", "buffered", "drops"):
                if key in rep:
                    value = rep[key]
                    if value is None and key == "queue_len":
                        row[key] = None  # the worker cannot read its NIC's queue
                        continue
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                        raise RpcError(jsonrpc.INVALID_PARAMS, f"{where}.{key}: must be >= 0")
                    row[key] = value
            out.append(row)
        state.last_heartbeat = now
        return out

    def event(self, worker: str, params, now: float) -> dict:
        state = self._live(worker)
        kind = require(params, "kind", str)
        ev = {"t": now, "kind": kind, **{k: v for k, v in params.items() if k != "kind"}}
        state.events = (state.events + [ev])[-self.MAX_EVENTS :]
        LOG.warning("agent %s: event %s %s", worker, kind, params)
        return ev

    def disconnected(self, worker: str, now: float) -> None:
        state = self.workers.get(worker)
        if state is not None and state.connected:
            state.connected = False
            LOG.warning("agent %s disconnected", worker)

    # -- what the controller asks ----------------------------------------------------

    def lapsed(self, now: float, misses: int = 3) -> list[str]:
        """Workers not yet declared failed whose last heartbeat is older than ``misses``
        periods, connected or not: a socket that closed is not enough (the agent may be
        back in a moment, its NFs still running), silence is."""
        limit = misses * self.heartbeat_s
        return [
            w.name
            for w in self.workers.values()
            if w.failed is None and w.last_heartbeat is not None and now - w.last_heartbeat > limit
        ]

    def mark_failed(self, worker: str, reason: str) -> None:
        state = self.workers[worker]
        if state.failed is None:
            state.failed = reason
            LOG.warning("worker %s failed: %s", worker, reason)

    def _live(self, worker: str) -> WorkerState:
        state = self.workers.get(worker)
        if state is None or not state.connected:
            raise RpcError(jsonrpc.REFUSED, "call register first")
        return state


class AgentSession:
    """One agent's WebSocket: serves its calls, carries commands to it (eventlet)."""

    def __init__(self, ws, worker: str, hub: AgentHub, clock: Callable[[], float],
                 on_stats: Callable[[str, list], None] | None = None,
                 call_timeout: float = 10.0,
                 on_register: Callable[[str, list], None] | None = None,
                 on_event: Callable[[str, dict], None] | None = None):  # fmt: skip
        import eventlet.event

        self._event_cls = eventlet.event.Event
        self.ws = ws
        self.worker = worker
        self.hub = hub
        self.clock = clock
        self.on_stats = on_stats or (lambda worker, rows: None)
        self.on_register = on_register or (lambda worker, instances: None)
        self.on_event = on_event or (lambda worker, event: None)
        self.call_timeout = call_timeout
        self.ids = Ids()
        self.pending: dict[int, object] = {}
        self.dispatcher = Dispatcher()
        self.dispatcher.add("register", self._register)
        self.dispatcher.add("heartbeat", lambda p: hub.heartbeat(worker, p, clock()))
        self.dispatcher.add("stats", self._stats)
        self.dispatcher.add("event", self._event)

    def _register(self, params) -> dict:
        result = self.hub.register(self.worker, params, self.clock())
        self.on_register(self.worker, params["instances"])
        return result

    def _event(self, params) -> dict:
        ev = self.hub.event(self.worker, params, self.clock())
        self.on_event(self.worker, ev)
        return {"received": ev["kind"]}

    def _stats(self, params) -> dict:
        rows = self.hub.stats(self.worker, params, self.clock())
        self.on_stats(self.worker, rows)
        return {"accepted": len(rows)}

    def _on_response(self, resp: Response) -> None:
        ev = self.pending.pop(resp.id, None)
        if ev is not None:
            ev.send(resp)

    def serve(self) -> None:
        """Read until the socket closes (run in the WebSocket's green thread)."""
        try:
            while True:
                text = self.ws.wait()
                if text is None:
                    break
                reply = self.dispatcher.handle(text, self._on_response)
                if reply is not None:
                    self.ws.send(reply)
        finally:
            for ev in self.pending.values():
                ev.send_exception(ConnectionError(f"agent {self.worker} disconnected"))
            self.pending.clear()

    def call(self, method: str, params: dict, timeout: float | None = None):
        """A command to the agent; returns its result or raises RpcError / TimeoutError."""
        import eventlet

        msg_id = self.ids()
        ev = self._event_cls()
        self.pending[msg_id] = ev
        self.ws.send(jsonrpc.encode(Request(method, params, msg_id).to_obj()))
        try:
            with eventlet.Timeout(timeout or self.call_timeout, TimeoutError):
                resp: Response = ev.wait()
        finally:
            self.pending.pop(msg_id, None)
        if not resp.ok:
            err = resp.error
            raise RpcError(err["code"], err["message"], err.get("data"))
        return resp.result


def bearer(environ) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def wsgi_app(hub: AgentHub, worker_of_token: Callable[[str | None], str | None],
             sessions: dict, clock: Callable[[], float], on_stats=None, on_register=None,
             call_timeout: float = 10.0, on_event=None):  # fmt: skip
    """The ``/v1/agents`` endpoint: bearer token first, then the WebSocket."""
    import eventlet.websocket

    def handler(ws):
        worker = ws.environ["quadrant.worker"]
        old = sessions.get(worker)
        session = AgentSession(
            ws, worker, hub, clock, on_stats, call_timeout, on_register, on_event
        )
        sessions[worker] = session
        if old is not None:
            LOG.warning("agent %s connected again: closing its previous session", worker)
            try:
                old.ws.close()
            except OSError:
                pass
        try:
            session.serve()
        finally:
            if sessions.get(worker) is session:  # not replaced by a newer connection
                del sessions[worker]
                hub.disconnected(worker, clock())

    ws_app = eventlet.websocket.WebSocketWSGI(handler)

    def app(environ, start_response):
        worker = worker_of_token(bearer(environ))
        if worker is None:
            start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                  ("WWW-Authenticate", "Bearer")])  # fmt: skip
            return [b'{"error": {"reason": "no or unknown agent token"}}']
        environ["quadrant.worker"] = worker
        return ws_app(environ, start_response)

    return app
