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

from quadrant_app import auth, config, topology
from quadrant_app.core import Core
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
        if tokens is not None:
            self.rest = RestApi(
                self.core,
                tokens,
                self.send,
                _monotonic,
                max_body=opts.max_body_bytes,
                max_page=opts.max_page,
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
            self.threads.append(hub.spawn(eventlet.wsgi.server, sock, self.rest, log_output=False))

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
                self.send(self.core.tick(_monotonic()))
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
