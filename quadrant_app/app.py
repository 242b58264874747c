"""The os-ken application: a thin shell that turns events into core calls.

It owns no logic of its own: each handler reads the clock once, calls the
pure :class:`~quadrant_app.core.Core` and hands the returned messages to
:meth:`QuadrantApp.send`, the only place that writes to a switch.  It also
starts the REST API (eventlet's WSGI server) and the periodic tick, both as
green threads of the same hub, so the core is never entered concurrently.
"""

from __future__ import annotations

import gc
import time

import eventlet
import eventlet.wsgi
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from quadrant_app import agents, auth, config, topology
from quadrant_app.core import Core
from quadrant_app.jsonrpc import RpcError
from quadrant_app.orchestrator import Orchestrator
from quadrant_app.rest import RestApi

_monotonic = time.monotonic


class QuadrantApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opts = opts = config.options(self.CONF)
        try:
            self.topology = topology.load(opts.topology)
            tokens = None
            if opts.rest_enabled and opts.tokens_file:
                tokens = auth.load(opts.tokens_file)
            elif opts.rest_enabled:
                self.logger.warning(
                    "quadrant: no tokens_file, so no REST API (nobody could use it)"
                )
        except (topology.TopologyError, auth.TokensError) as exc:
            raise SystemExit(f"quadrant: {exc}") from None
        self.core = Core(self.topology, config.settings(opts))
        self.datapaths = {}
        self.rest = None
        self.hub = self.orchestrator = self.agents_wsgi = None
        self.sessions: dict[str, agents.AgentSession] = {}
        if tokens is not None and opts.agents_enabled:
            unknown = tokens.workers() - {w.name for w in self.topology.workers}
            if unknown:
                raise SystemExit(
                    f"quadrant: {opts.tokens_file}: worker tokens for {sorted(unknown)}, "
                    f"which topology {self.topology.name} does not have"
                )
            self.hub = agents.AgentHub(self.topology, heartbeat_s=opts.heartbeat_s)
            self.orchestrator = Orchestrator(
                self.core, self.hub, pool_size=opts.warm_pool, batch=opts.default_batch
            )
            self.agents_wsgi = agents.wsgi_app(
                self.hub,
                tokens.worker_of,
                self.sessions,
                _monotonic,
                on_stats=self._agent_stats,
                on_register=self._agent_registered,
                call_timeout=opts.agent_call_timeout,
                on_event=self._agent_event,
            )
        if tokens is not None:
            self.rest = RestApi(
                self.core,
                tokens,
                self.send,
                _monotonic,
                max_body=opts.max_body_bytes,
                max_page=opts.max_page,
                hub=self.hub,
            )
        self.logger.info(
            "quadrant: topology %s (%d switches, %d workers) from %s",
            self.topology.name,
            len(self.topology.switches),
            len(self.topology.workers),
            opts.topology,
        )

    def start(self):
        super().start()
        if self.opts.gc_thresholds:
            gc.set_threshold(*self.opts.gc_thresholds)
        if self.opts.gc_freeze:
            gc.collect()
            gc.freeze()
        self.threads.append(hub.spawn(self._tick_loop))
        if self.rest is not None:
            sock = eventlet.listen((self.opts.rest_host, self.opts.rest_port))
            self.logger.info("quadrant: REST API on http://%s:%d", *sock.getsockname()[:2])
            self.threads.append(hub.spawn(eventlet.wsgi.server, sock, self._wsgi, log_output=False))

    def _wsgi(self, environ, start_response):
        """One server, two endpoints: the agents' WebSocket and the REST API."""
        if self.agents_wsgi is not None and environ.get("PATH_INFO") == "/v1/agents":
            return self.agents_wsgi(environ, start_response)
        return self.rest(environ, start_response)

    # -- the agents -----------------------------------------------------------------

    def _agent_stats(self, worker, rows):
        self.send(self.orchestrator.stats(worker, rows, _monotonic()))

    def _agent_event(self, worker, event):
        if event["kind"] == "nf_failed":
            self.send(self.orchestrator.failed(worker, event, _monotonic()))
            for cmd in self.orchestrator.requests():
                hub.spawn(self._command, cmd)

    def _agent_registered(self, worker, instances):
        cmds, msgs = self.orchestrator.registered(worker, instances, _monotonic())
        self.send(msgs)
        for cmd in cmds:
            hub.spawn(self._command, cmd)

    def _command(self, cmd):
        """Carry one orchestrator command to its agent (a green thread of its own)."""
        session = self.sessions.get(cmd.worker)
        result = error = None
        if session is None:
            error = f"no agent connected for worker {cmd.worker}"
        else:
            timeout = (
                self.opts.prepare_timeout
                if cmd.method == "prepare"
                else self.opts.agent_call_timeout
            )
            try:
                result = session.call(cmd.method, cmd.params, timeout)
            except RpcError as exc:
                error = exc.message
            except (TimeoutError, ConnectionError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        self.send(self.orchestrator.done(cmd, result, error, _monotonic()))

    def send(self, msgs) -> None:
        """Bind each ``(dpid, msg)`` to its datapath and send it.

        ``msg`` is an os-ken message, or ready wire bytes (the packet-in fast
        path: one buffer may hold several OpenFlow messages).
        """
        for dpid, msg in msgs:
            dp = self.datapaths.get(dpid)
            if dp is None:
                self.logger.warning("dropping a message for disconnected switch %016x", dpid)
            elif type(msg) is bytearray or type(msg) is bytes:
                dp.send(msg)
            else:
                msg.datapath = dp
                dp.send_msg(msg)

    def _tick_loop(self):
        while True:
            hub.sleep(self.opts.tick_interval)
            try:
                now = _monotonic()
                self.send(self.core.tick(now))
                if self.orchestrator is not None:
                    for cmd in self.orchestrator.tick(now):
                        hub.spawn(self._command, cmd)
                else:
                    self.core.instances.agent_requests.clear()  # nobody to tell
            except Exception:  # keep ticking: one bad tick must not stop the stats
                self.logger.exception("quadrant: periodic work failed")

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features(self, ev):
        dp = ev.msg.datapath
        self.datapaths[dp.id] = dp
        self.send(self.core.datapath_up(dp.id, _monotonic()))

    @set_ev_cls(ofp_event.EventOFPStateChange, [DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if dp.id is None or self.datapaths.get(dp.id) is not dp:
            return
        del self.datapaths[dp.id]
        self.send(self.core.datapath_down(dp.id, _monotonic()))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        now = _monotonic()
        msg = ev.msg
        dp = msg.datapath
        out = self.core.packet_in(dp.id, msg.match["in_port"], msg.data, now)
        if len(out) == 1 and out[0][0] == dp.id and type(out[0][1]) is bytearray:
            dp.send(out[0][1])  # the usual case: one buffer (flow-mod + packet-out) back
        else:
            self.send(out)
        self.core.metrics.setup_seconds.observe(_monotonic() - now)
        if self.orchestrator is not None and self.core.instances.agent_requests:
            # A flow took an instance from the warm pool: attach it now, not at the next tick.
            for cmd in self.orchestrator.requests():
                hub.spawn(self._command, cmd)

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev):
        m = ev.msg
        self.send(
            self.core.flow_removed(
                m.datapath.id,
                m.cookie,
                m.match,
                m.reason,
                m.duration_sec + m.duration_nsec / 1e9,
                _monotonic(),
            )
        )

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev):
        m = ev.msg
        more = bool(m.flags & m.datapath.ofproto.OFPMPF_REPLY_MORE)
        self.send(self.core.flow_stats_reply(m.datapath.id, m.xid, m.body, more, _monotonic()))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        m = ev.msg
        down = bool(m.desc.state & m.datapath.ofproto.OFPPS_LINK_DOWN)
        self.send(self.core.port_status(m.datapath.id, m.desc.port_no, not down, _monotonic()))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        m = ev.msg
        self.send(self.core.switch_error(m.datapath.id, m.type, m.code, bytes(m.data)))
