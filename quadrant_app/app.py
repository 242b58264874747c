"""The os-ken application: a thin shell that turns events into core calls.

It owns no logic of its own: each handler reads the clock once, calls the
pure :class:`~quadrant_app.core.Core` and hands the returned messages to
:meth:`QuadrantApp.send`, the only place that writes to a switch.  It also
starts the REST API (eventlet's WSGI server) and the periodic tick, both as
green threads of the same hub, so the core is never entered concurrently.
"""

from __future__ import annotations

import collections
import gc
import ipaddress
import time

import eventlet
import eventlet.event
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

from quadrant_app import agents, auth, config, natpools, ofbuild, topology
from quadrant_app.autoscale import Autoscaler
from quadrant_app.core import Core
from quadrant_app.heldrelease import Handover
from quadrant_app.jsonrpc import RpcError
from quadrant_app.latency_profile import ProfileError
from quadrant_app.orchestrator import Orchestrator
from quadrant_app.rest import RestApi

_monotonic = time.monotonic
_RELEASE_POLL_S = 0.005  # how often an ordered release sends on what came meanwhile


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
            scaling_settings = config.scaling_settings(opts)
        except (topology.TopologyError, auth.TokensError, ProfileError) as exc:
            raise SystemExit(f"quadrant: {exc}") from None
        except OSError as exc:
            raise SystemExit(f"quadrant: {exc.filename}: {exc.strerror}") from None
        self.core = Core(self.topology, config.settings(opts))
        self.persister = None
        if opts.state_redis:
            self.persister = self._restore(opts)
        self.datapaths = {}
        self.rest = None
        self.hub = self.orchestrator = self.agents_wsgi = self.autoscaler = None
        self.sessions: dict[str, agents.AgentSession] = {}
        self._barriers: dict[tuple[int, int], eventlet.event.Event] = {}
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
            if opts.scaling_policy != "off":
                self.autoscaler = Autoscaler(
                    self.core,
                    scaling_settings,
                    managed=lambda w: w in self.sessions,
                    pending=self.orchestrator.preparing_for,
                )
                self.orchestrator.latency_us = self.autoscaler.latency_us
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
                mover=self._start_move if self.orchestrator is not None else None,
                failures=(lambda: self.orchestrator.failures_log)
                if self.orchestrator is not None
                else None,
            )
        self.logger.info(
            "quadrant: topology %s (%d switches, %d workers) from %s",
            self.topology.name,
            len(self.topology.switches),
            len(self.topology.workers),
            opts.topology,
        )

    def _restore(self, opts):
        """Connect to the controller's store and put back what it holds."""
        import redis

        from quadrant_app import persist

        prefix = opts.state_prefix or f"quadrant:controller:{self.topology.name}"
        try:
            client = redis.Redis.from_url(opts.state_redis, socket_timeout=5)
            store = persist.RedisStore(client, prefix)
            chains, instances, meta = store.read()
        except (redis.RedisError, ValueError) as exc:
            raise SystemExit(f"quadrant: state_redis: {exc}") from None
        n_c, n_i = persist.restore(self.core, chains, instances, meta, tuple(opts.nf_types))
        self.logger.info("quadrant: restored %d chains and %d instances from %s", n_c, n_i,
                         prefix)  # fmt: skip
        p = persist.Persister(self.core, store)
        p.mark_saved()
        return p

    def _persist(self) -> None:
        """Write what changed to the store; on failure, say so and retry at the next tick."""
        if self.persister is None:
            return
        import redis

        try:
            self.persister.sync()
        except redis.RedisError as exc:
            self.core.metrics.persist_failures.value += 1
            self.logger.error("quadrant: could not store the controller's books (retrying "
                              "every tick): %s", exc)  # fmt: skip

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
        out = self.rest(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            self._persist()  # what the answer acknowledges is stored before it leaves
        return out

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

    def _call(self, worker, method, params, timeout=None):
        """``(result, error)`` of one call to ``worker``'s agent; never raises."""
        session = self.sessions.get(worker)
        if session is None:
            return None, f"no agent connected for worker {worker}"
        try:
            return session.call(method, params, timeout or self.opts.agent_call_timeout), None
        except RpcError as exc:
            return None, exc.message
        except (TimeoutError, ConnectionError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _command(self, cmd):
        """Carry one orchestrator command to its agent (a green thread of its own)."""
        timeout = self.opts.prepare_timeout if cmd.method == "prepare" else None
        result, error = self._call(cmd.worker, cmd.method, cmd.params, timeout)
        self.send(self.orchestrator.done(cmd, result, error, _monotonic()))

    def _move(self, move):
        """Move flows between two instances, in the order that keeps each flow's packets
        in order and loses none (docs/scaling.rst, *Migration*): the new instance holds
        the flows' packets, the switch's rules change (barrier), the old instance emits
        what it had of them, the new one releases what it held.  A green thread of its own.
        """
        core = self.core
        try:
            src, dst = core.instances.by_id.get(move.src), core.instances.by_id.get(move.dst)
            if src is None or dst is None:
                return
            nat = None
            if src.nat_slot is not None:  # NAT connections: their mappings give the replies
                nat = self._nat_mappings(src, move.flow_ids)
                if not nat:
                    return
            keys = core.flow_keys(move.flow_ids, move.src, nat)
            if not keys:
                return
            flows = [k.to_json() for k in keys]
            if not dst.attached:  # from the warm pool (an operator's move): attach it first
                self.send(core.attach(dst.id, _monotonic()))
                _, err = self._call(dst.worker, "attach", {"instance": dst.id})
                if err is not None:
                    self.logger.warning("quadrant: move to instance %d not started: attach "
                                        "failed: %s", dst.id, err)  # fmt: skip
                    self.send(core.detach(dst.id, _monotonic()))
                    return
            _, err = self._call(dst.worker, "hold", {"instance": dst.id, "flows": flows})
            if err is not None:
                self.logger.warning("quadrant: move of %d flows %d -> %d not started: hold "
                                    "failed: %s", len(keys), src.id, dst.id, err)  # fmt: skip
                return
            try:
                if nat is not None:  # the new instance ends them from now on: its own
                    _, err = self._call(src.worker, "nat_handover", {
                        "instance": src.id, "owner": dst.id, "home": core.nat_address(dst),
                        "flows": [k.to_json() for k in nat]})  # fmt: skip
                    if err is not None:
                        self.logger.warning("quadrant: move of NAT flows %d -> %d not done: "
                                            "owner not written: %s",
                                            src.id, dst.id, err)  # fmt: skip
                        return
                _moved, msgs = core.migrate(
                    move.flow_ids, move.src, move.dst, _monotonic(), nat=nat
                )
                if msgs and not self._send_and_wait_barrier(msgs):
                    self.logger.warning("quadrant: no barrier reply from %016x in time", dst.dpid)
                res, err = self._call(
                    src.worker, "drain",
                    {"instance": src.id, "timeout": self.opts.drain_timeout},
                    timeout=self.opts.drain_timeout + self.opts.agent_call_timeout,
                )  # fmt: skip
                if err is None and not (isinstance(res, dict) and res.get("drained")):
                    err = f"not drained within drain_timeout ({self.opts.drain_timeout} s)"
                if err is not None:
                    core.metrics.drain_failures.value += 1
                    self.logger.warning("quadrant: drain of instance %d failed (%s); releasing "
                                        "the moved flows anyway", src.id, err)  # fmt: skip
            finally:
                _, err = self._call(dst.worker, "release", {"instance": dst.id, "flows": flows})
                if err is not None:
                    self.logger.warning("quadrant: release at instance %d failed: %s (its "
                                        "runtime releases by itself after its hold limit)",
                                        dst.id, err)  # fmt: skip
        finally:
            if self.autoscaler is not None:
                self.autoscaler.moving.subtract((move.src, move.dst))
                self.autoscaler.moving += collections.Counter()  # drop the zeros

    def _hand_over(self, h: Handover):
        """Release flows the controller held to their new instance in order
        (quadrant_app/heldrelease.py): hold them there, marked; the marked packets,
        the rules and a barrier; what still comes as packet-ins, marked, until the
        flows are quiet; a last barrier; release.  A green thread of its own."""
        core = self.core
        inst = core.instances.by_id.get(h.instance_id)
        flows = [k.to_json() for k in h.keys]
        if inst is None:
            err = "the instance is gone"
        else:
            _, err = self._call(inst.worker, "hold",
                                {"instance": inst.id, "flows": flows, "marked": True})  # fmt: skip
        if err is not None:
            self.send(core.handover_failed(h, err))
            return
        try:
            t0 = _monotonic()
            if not self._send_and_wait_barrier(core.handover_held(h), joined=True):
                self.logger.warning("quadrant: no barrier reply from %016x in time", h.dpid)
            # packet-ins of the flows may still come (the switch's cached flows are
            # revalidated after its reply): send them on, marked, until they stop
            ruled, end = _monotonic(), t0 + self.opts.release_wait_s
            while True:
                quiet_at = max(ruled, h.last_in or ruled) + self.opts.release_quiet_s
                if _monotonic() >= min(quiet_at, end):
                    break
                hub.sleep(_RELEASE_POLL_S)
                self._send_joined(core.handover_take(h))
            self._send_and_wait_barrier(core.handover_flush(h), joined=True)
        finally:
            core.handover_done(h)
            res, err = self._call(inst.worker, "release",
                                  {"instance": inst.id, "flows": flows})  # fmt: skip
            if err is not None:
                self.logger.warning("quadrant: release at instance %d failed: %s (its "
                                    "runtime releases by itself after its hold limit)",
                                    inst.id, err)  # fmt: skip
            else:
                self.logger.info("quadrant: %d held flows released in order to instance %d "
                                 "(%s)", len(flows), inst.id, res)  # fmt: skip

    def _nat_mappings(self, src, flow_ids) -> dict | None:
        """``{outbound key: (external address, port)}`` of the NAT connections among
        ``flow_ids`` (src's agent reads them from the state store); None on failure."""
        recs = [r for r in map(self.core.flows.by_id, flow_ids)
                if r is not None and self.core.nat_outbound(r)]  # fmt: skip
        if not recs:
            return None
        if len(recs) > natpools.MOVE_MAX:  # both directions of each are held: 64 at most
            self.logger.info("quadrant: moving %d of %d NAT connections of instance %d now",
                             natpools.MOVE_MAX, len(recs), src.id)  # fmt: skip
            recs = recs[: natpools.MOVE_MAX]
        res, err = self._call(
            src.worker,
            "nat_handover",
            {"instance": src.id, "flows": [r.key.to_json() for r in recs]},
        )
        if err is not None or not isinstance(res, dict):
            self.logger.warning("quadrant: move of NAT flows of instance %d not started: "
                                "reading their mappings failed: %s", src.id, err)  # fmt: skip
            return None
        out = {}
        for rec, m in zip(recs, res.get("mappings") or [], strict=False):
            if isinstance(m, dict):  # null: no mapping (the connection ended)
                out[rec.key] = (int(ipaddress.IPv4Address(m["address"])), int(m["port"]))
        return out

    def _start_move(self, move):
        if self.autoscaler is not None:
            self.autoscaler.moving.update((move.src, move.dst))
        hub.spawn(self._move, move)

    def _send_and_wait_barrier(self, msgs, timeout=1.0, joined=False) -> bool:
        """Send ``msgs`` (the last one a barrier; ``joined``: in one buffer) and wait
        for the barrier's reply."""
        dpid, barrier = msgs[-1]
        key = (dpid, barrier.xid)
        ev = self._barriers[key] = eventlet.event.Event()  # before the reply can come
        try:
            self._send_joined(msgs) if joined else self.send(msgs)
            with eventlet.Timeout(timeout, False):
                ev.wait()
                return True
            return False
        finally:
            self._barriers.pop(key, None)

    def _send_joined(self, msgs) -> None:
        """Send ``msgs`` (all for one switch) as one buffer: one place in os-ken's send
        queue, so no other green thread's message lands between them."""
        if not msgs:
            return
        buf = bytearray()
        for _dpid, msg in msgs:
            buf += msg if type(msg) is bytearray or type(msg) is bytes else ofbuild.serialize(msg)
        self.send([(msgs[0][0], buf)])

    def send(self, msgs) -> None:
        """Bind each ``(dpid, msg)`` to its datapath and send it.

        ``msg`` is an os-ken message, or ready wire bytes (the packet-in fast
        path: one buffer may hold several OpenFlow messages), or a
        :class:`Handover` to run (:meth:`_hand_over`).
        """
        for dpid, msg in msgs:
            dp = self.datapaths.get(dpid)
            if type(msg) is Handover:
                hub.spawn(self._hand_over, msg)
            elif dp is None:
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
                self._persist()
                if self.autoscaler is not None:
                    msgs, moves = self.autoscaler.tick(now)
                    self.send(msgs)
                    for move in moves:
                        self._start_move(move)
                if self.orchestrator is not None:
                    self.send(self.orchestrator.failures(now))
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

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev):
        waiter = self._barriers.get((ev.msg.datapath.id, ev.msg.xid))
        if waiter is not None and not waiter.ready():
            waiter.send(True)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        m = ev.msg
        down = bool(m.desc.state & m.datapath.ofproto.OFPPS_LINK_DOWN)
        now = _monotonic()
        self.send(self.core.port_status(m.datapath.id, m.desc.port_no, not down, now))
        if self.orchestrator is not None and down:
            self.send(self.orchestrator.port_down(m.datapath.id, m.desc.port_no, now))
        elif self.orchestrator is not None:
            self.orchestrator.port_up(m.datapath.id, m.desc.port_no, now)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        m = ev.msg
        self.send(self.core.switch_error(m.datapath.id, m.type, m.code, bytes(m.data)))
