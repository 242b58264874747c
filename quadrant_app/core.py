"""The controller's pure core: events in, OpenFlow messages out.

Nothing here touches a socket, reads the clock or knows os-ken's app state:
each method takes ``now`` (seconds, monotonic) and returns ``[(dpid, msg),
...]`` for the shim to send, where ``msg`` is an os-ken message object or, on
the packet-in fast path, ready wire bytes, or a
:class:`~quadrant_app.heldrelease.Handover` for the shim to run (held packets
released in order, with the instance's agent).  Unit tests and the simulator
drive it directly.

Internal API for instances (the REST admin endpoint uses it now; the worker
agent feeds the same calls later): :meth:`Core.add_instance`,
:meth:`Core.remove_instance`, :meth:`Core.update_stats`, :meth:`Core.attach`,
:meth:`Core.detach`.  Requests for the agents (attach a warm-pool instance)
collect in ``core.instances.agent_requests``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging

from quadrant_app import flowkey, natpools, ofbuild
from quadrant_app.chains import DEFAULT_NF_TYPES, ChainSpec
from quadrant_app.flows import FlowRecord, FlowTable
from quadrant_app.heldrelease import HeldRelease
from quadrant_app.ingress import Chain, ChainTable, Instance, InstanceRegistry
from quadrant_app.metrics import Metrics
from quadrant_app.natmoves import NatMoves
from quadrant_app.natsteer import NatSteering
from quadrant_app.topology import Topology

LOG = logging.getLogger(__name__)

_REMOVED_REASONS = {0: "idle_timeout", 1: "hard_timeout", 2: "delete", 3: "group_delete"}
# A flow-removed whose rule was installed this much before the record's last
# install is about an older copy of the rule (see flow_removed).
_STALE_S = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
    """The core's knobs (config.py declares the options that fill them)."""

    idle_timeout: int = 10
    hold_queue_len: int = 1024
    hold_timeout: float = 2.0
    flow_stats_interval: float = 10.0  # 0: no periodic flow stats
    reinstall_after: float = 1.0
    ordered_release: bool = True  # held packets go on in order (heldrelease.py)
    nf_types: tuple[str, ...] = DEFAULT_NF_TYPES


@dataclasses.dataclass
class SwitchState:
    name: str
    dpid: int
    connected_since: float | None = None
    next_poll: float = 0.0
    default_packets: int = 0
    default_acc: int = 0
    base_poll_xid: int | None = None
    ports_down: set = dataclasses.field(default_factory=set)


class Core(NatSteering, HeldRelease):
    def __init__(self, topology: Topology, settings: Settings | None = None):
        self.topology = topology
        self.settings = settings or Settings()
        self.metrics = Metrics()
        self.switches = {s.dpid: SwitchState(s.name, s.dpid) for s in topology.switches}
        self.chains = ChainTable()
        self.instances = InstanceRegistry(topology, self.chains, self._pool_attached)
        self.flows = FlowTable()
        self._xids = itertools.count(1)
        self._rule_templates: dict[tuple, ofbuild.FlowRuleTemplate] = {}
        self._out_templates: dict[object, ofbuild.PacketOutTemplate] = {}
        self._resync: dict[int, tuple[int, set]] = {}  # dpid -> (xid, keys seen)
        self.nat_moves = NatMoves()  # NAT connections moved off their address's instance
        self.handing = {}  # (dpid, key) -> Handover: held flows being released in order
        # dpid -> [(network, netmask, host)]: where the switch delivers by IPv4 destination
        self._hosts = {
            s.dpid: [
                (int(n.network_address), int(n.netmask), h)
                for h in topology.hosts_on(s.name)
                for n in [ipaddress.IPv4Network(h.ip, strict=False)]
            ]
            for s in topology.switches
        }
        self._wire_metrics()

    # ------------------------------------------------------------------
    # Switch events.

    def datapath_up(self, dpid: int, now: float) -> list:
        """A switch connected: the per-flow rules the books hold for it, the base pipeline,
        then a re-sync of its per-flow rules from flow stats.

        The rules go first: a switch that restarted with empty tables forwards its
        live flows on their instances as soon as the base pipeline is in, with no
        packet-in (and no packet-out overtaken by the flow's later packets) in between.
        A switch that kept them gets them replaced (same match, same instance)."""
        state = self.switches.get(dpid)
        if state is None:
            LOG.warning("switch %016x is not in topology %s; ignoring it", dpid, self.topology.name)
            return []
        state.connected_since = now
        state.next_poll = now + self.settings.flow_stats_interval
        LOG.info("switch %s (dpid %016x) connected", state.name, dpid)
        switch = self.topology.switch(state.name)
        ports = [w.switch_port for w in self.topology.workers_on(switch.name)]
        hosts = self.topology.hosts_on(switch.name)
        msgs = []
        for rec in self.flows.of_switch(dpid):
            rec.installed_at = now  # a flow-removed of the replaced copy is stale news
            msgs += self._install(rec, self.instances.by_id[rec.instance_id], 0, None)
            self.metrics.resync_installed.value += 1
        msgs += [(dpid, m) for m in ofbuild.base_pipeline(switch, ports, hosts)]
        req = self._xid(ofbuild.flow_stats_request(ofbuild.COOKIE_FLOW))
        self._resync[dpid] = (req.xid, set())
        msgs.append((dpid, req))
        return msgs

    def datapath_down(self, dpid: int, now: float) -> list:
        state = self.switches.get(dpid)
        if state is not None and state.connected_since is not None:
            LOG.info(
                "switch %s (dpid %016x) disconnected after %.1f s; keeping its %d flows",
                state.name,
                dpid,
                now - state.connected_since,
                len(self.flows.of_switch(dpid)),
            )
            state.connected_since = None
        self._resync.pop(dpid, None)
        return []

    def packet_in(self, dpid: int, in_port: int, data, now: float) -> list:
        """A packet of a flow with no rule yet: steer the flow, send the packet on."""
        self.metrics.packet_ins.value += 1
        if dpid not in self.switches:
            return []
        key = flowkey.parse(data)
        if key is None:
            self.metrics.non_ip_packet_ins.value += 1
            return []
        rec = self.flows.get(dpid, key)
        if rec is not None:
            return self._repeat(rec, in_port, data, now)
        fwd = self.flows.get(dpid, key.reverse())
        if fwd is not None:
            return self._reply(fwd, dpid, key, in_port, data, now)
        owner = self._nat_moved_owner(dpid, key) or self._nat_owner(key, attach=True)
        if owner is None and self.nat_moves:
            owner = self.instances.nat_owner.get(self.nat_moves.take_home(dpid, key))
        if owner is not None:  # towards a NAT's external address: its mappings' replies
            self.metrics.reply_flows.inc("nat")
            return self._assign(self.chains.by_id[owner.chain_id], owner, dpid, key, in_port,
                                data, now)  # fmt: skip
        nat = self._nat_vacant(key)
        if nat is not None:  # a NAT address whose instance is gone: wait for its successor
            why = f"no instance for its NAT address {ipaddress.IPv4Address(key.dst)}"
            return self._hold(nat, dpid, in_port, key, data, now, why)
        chain = self.chains.match(key)
        if chain is None:
            return self._unmatched(dpid, key, in_port, data)
        if chain.held:  # earlier flows are waiting: this one queues behind them
            return self._hold(chain, dpid, in_port, key, data, now) + self._release(chain, now)
        inst = self.instances.pick(chain, dpid)
        if inst is None:
            return self._hold(chain, dpid, in_port, key, data, now)
        return self._assign(chain, inst, dpid, key, in_port, data, now)

    def flow_removed(self, dpid, cookie, match, reason, duration_s, now) -> list:
        """The switch removed a per-flow rule: forget the flow (unless it is stale news)."""
        if cookie & ofbuild.COOKIE_KIND_MASK != ofbuild.COOKIE_FLOW:
            return []
        self.metrics.flow_removed.inc(_REMOVED_REASONS.get(reason, str(reason)))
        key = ofbuild.key_of_match(match)
        rec = self.flows.get(dpid, key) if key is not None else None
        if rec is None or rec.instance_id != cookie & ofbuild.COOKIE_ID_MASK:
            return []
        if rec.installed_at - (now - duration_s) > _STALE_S:
            return []  # an older copy of a rule we have since re-installed
        self._forget(rec)
        return []

    def flow_stats_reply(self, dpid: int, xid: int, entries, more: bool, now: float) -> list:
        """Flow stats (one part of a multipart reply): rates, default counters, re-sync.

        ``entries`` are os-ken ``OFPFlowStats`` (or anything with ``cookie``,
        ``match``, ``packet_count``, ``byte_count``).
        """
        state = self.switches.get(dpid)
        if state is None:
            return []
        resync = self._resync.get(dpid)
        seen = resync[1] if resync is not None and resync[0] == xid else None
        msgs = []
        for e in entries:
            kind = e.cookie & ofbuild.COOKIE_KIND_MASK
            if e.cookie == ofbuild.COOKIE_DEFAULT:
                state.default_acc += e.packet_count
                continue
            if kind != ofbuild.COOKIE_FLOW:
                continue
            key = ofbuild.key_of_match(e.match)
            if key is None:
                continue
            iid = e.cookie & ofbuild.COOKIE_ID_MASK
            rec = self.flows.get(dpid, key)
            if rec is not None and rec.instance_id == iid:
                self.flows.update_counts(rec, e.packet_count, e.byte_count, now)
                if seen is not None:
                    seen.add(key)
            elif seen is not None and rec is None:
                msgs += self._adopt_or_delete(dpid, key, iid, e, now, seen)
        if not more:
            if seen is not None:
                del self._resync[dpid]
                msgs += self._reinstall_missing(dpid, seen, now)
            elif xid == state.base_poll_xid:
                state.default_packets, state.default_acc = state.default_acc, 0
                state.base_poll_xid = None
        return msgs

    def port_status(self, dpid: int, port: int, up: bool, now: float) -> list:
        """A port changed state.  Recorded and logged; failover is the scaling loop's job."""
        state = self.switches.get(dpid)
        if state is None:
            return []
        was_down = port in state.ports_down
        (state.ports_down.discard if up else state.ports_down.add)(port)
        if was_down != (not up):
            workers = [
                w.name for w in self.topology.workers_on(state.name) if w.switch_port == port
            ]
            LOG.warning(
                "switch %s port %d%s is %s",
                state.name,
                port,
                f" (worker {workers[0]})" if workers else "",
                "up" if up else "down",
            )
        return []

    def switch_error(self, dpid: int, err_type: int, code: int, data: bytes) -> list:
        self.metrics.switch_errors.value += 1
        LOG.warning("switch %016x: OpenFlow error type %d code %d", dpid, err_type, code)
        return []

    def tick(self, now: float) -> list:
        """Periodic work: expire held packets (or send them on), poll flow stats."""
        msgs = []
        for chain in self.chains:
            held = chain.held
            while held and held[0][4] + self.settings.hold_timeout < now:
                held.popleft()
                self.metrics.held_dropped.inc("timeout")
            if held:
                msgs += self._release(chain, now)
            else:
                chain.shortage_since = None
        interval = self.settings.flow_stats_interval
        for state in self.switches.values():
            if state.connected_since is None or not interval or now < state.next_poll:
                continue
            state.next_poll = now + interval
            state.default_acc = 0
            flows = self._xid(ofbuild.flow_stats_request(ofbuild.COOKIE_FLOW))
            base = self._xid(ofbuild.flow_stats_request(ofbuild.COOKIE_BASE, ofbuild.ofp.OFPTT_ALL))
            state.base_poll_xid = base.xid
            msgs += [(state.dpid, flows), (state.dpid, base)]
        return msgs

    # ------------------------------------------------------------------
    # Chains and instances (REST and, later, the agent).

    def add_chain(self, tenant: str, spec: ChainSpec, now: float) -> Chain:
        natpools.check(spec, [c.spec for c in self.chains])
        chain = self.chains.add(tenant, spec, now)
        LOG.info("chain %d %r of tenant %s registered", chain.id, spec.name, tenant)
        return chain

    def remove_chain(self, chain_id: int, now: float) -> list:
        chain = self.chains.by_id[chain_id]
        msgs = []
        for inst in self.instances.of_chain(chain_id):
            msgs += self.remove_instance(inst.id, now)
        if chain.held:
            self.metrics.held_dropped.inc("chain_deleted", len(chain.held))
            chain.held.clear()
        self.chains.remove(chain_id)
        LOG.info("chain %d %r removed", chain_id, chain.spec.name)
        return msgs

    def add_instance(
        self, chain_id, worker, vf_mac, core, attached=True, now=0.0, instance_id=None,
        nat_slot=None,
    ):  # fmt: skip
        """Record an instance; returns ``(instance, msgs)`` (held flows it now takes).

        ``nat_slot``: the external entry of the chain's NAT it owns (natpools.py)."""
        inst = self.instances.add(chain_id, worker, vf_mac, core, attached, instance_id, nat_slot)
        LOG.info(
            "instance %d of chain %d on %s core %d (%s, %s)",
            inst.id, chain_id, worker, core, inst.vf_mac, "attached" if attached else "warm pool",
        )  # fmt: skip
        return inst, self._release(self.chains.by_id[chain_id], now)

    def remove_instance(self, instance_id: int, now: float, tell_agent: bool = True) -> list:
        """Forget an instance; its flows' rules are deleted (their next packets re-assign).

        With ``tell_agent`` a ``teardown`` for its worker's agent is queued.
        """
        inst = self.instances.remove(instance_id)
        if tell_agent:
            self.instances.agent_requests.append(("teardown", inst.id, inst.worker))
        self._nat_send_home(inst)
        for rec in self.flows.of_instance(instance_id):
            self._forget(rec)
        for k in [k for k in self._rule_templates if k[0] == instance_id]:
            del self._rule_templates[k]
        self._out_templates.pop(instance_id, None)
        return [(inst.dpid, ofbuild.delete_instance_flows(instance_id))]

    def update_stats(
        self, instance_id: int, now: float, load=None, p99_us=None, pps=None, batch_p99_us=None
    ):
        """An instance's latest figures; returns the messages for flows it can now take.

        ``p99_us`` is the latency estimate the candidate rule judges;
        ``batch_p99_us`` the agent's p99 per-batch time it was made from.
        """
        inst = self.instances.update_stats(
            instance_id, now, load=load, p99_us=p99_us, pps=pps, batch_p99_us=batch_p99_us
        )
        return self._release(self.chains.by_id[inst.chain_id], now)

    def attach(self, instance_id: int, now: float) -> list:
        inst = self.instances.set_attached(instance_id, True)
        return self._release(self.chains.by_id[inst.chain_id], now)

    def flow_keys(self, flow_ids, instance_id: int, nat=None) -> list:
        """The keys of those flows still on ``instance_id``, with their replies' keys.

        ``nat`` (a NAT instance's flows): ``{outbound key: (external address, port)}``,
        their mappings, which give their replies' keys (:func:`natpools.reply_key`)."""
        keys = []
        for fid in flow_ids:
            rec = self.flows.by_id(fid)
            if rec is None or rec.instance_id != instance_id:
                continue
            keys.append(rec.key)
            if nat is not None:
                if rec.key in nat:
                    keys.append(natpools.reply_key(rec.key, *nat[rec.key]))
                continue
            rev = self.flows.get(rec.dpid, rec.key.reverse())
            if rev is not None and rev.instance_id == instance_id:
                keys.append(rev.key)
        return keys

    def migrate(
        self, flow_ids, src_id: int, dst_id: int, now: float, nat=None
    ) -> tuple[list, list]:
        """Move flows of instance ``src_id`` to ``dst_id``: their rules now rewrite to
        ``dst_id``'s VF and port (an add that replaces the entry; the flow's packets
        are never sent to the controller meanwhile).  The reply direction of a
        moved flow moves with it.  Returns ``(keys moved, messages)``, the messages
        ending with a barrier: once its reply is in, the switch sends every later
        packet of these flows to ``dst_id``.  Flows gone or no longer on ``src_id``
        are skipped.

        A NAT instance's flows move only with ``nat``, their mappings (as for
        :meth:`flow_keys`): a moved connection's replies come to its mapping's
        address, so a per-flow rule steers them to ``dst`` (installed now, its
        record made if no reply came yet), and until the connection ends a
        packet-in of them goes to ``dst`` too, not to the address's instance.
        Flows without a mapping stay.
        """
        src = self.instances.by_id.get(src_id)
        dst = self.instances.by_id.get(dst_id)
        if src is None or dst is None or src.chain_id != dst.chain_id or src.dpid != dst.dpid:
            return [], []
        if src.nat_slot is not None and nat is None:  # replies: to src's external address
            return [], []
        moved, msgs = [], []
        for fid in flow_ids:
            rec = self.flows.by_id(fid)
            if rec is None or rec.instance_id != src_id:
                continue
            if nat is None:
                pair = (rec, self.flows.get(rec.dpid, rec.key.reverse()))
            elif rec.key in nat:
                pair = (rec, self._nat_reply(rec, natpools.reply_key(rec.key, *nat[rec.key]),
                                             src, now))  # fmt: skip
            else:
                continue
            for r in pair:
                if r is None or r.instance_id != src_id:
                    continue
                self.flows.move(r, dst_id, now)
                src.flows -= 1
                dst.flows += 1
                moved.append(r.key)
                msgs += self._install(r, dst, 0, None)
        if moved:
            self.metrics.migrated_flows.value += len(moved)
            msgs.append((dst.dpid, self._xid(ofbuild.barrier())))
            LOG.info("moved %d flows of chain %d from instance %d to %d",
                     len(moved), src.chain_id, src_id, dst_id)  # fmt: skip
        return moved, msgs

    def detach(self, instance_id: int, now: float) -> list:
        """Take an instance out of the candidates; its live flows stay on it."""
        self.instances.set_attached(instance_id, False)
        return []

    # ------------------------------------------------------------------
    # Internals.

    def _pool_attached(self, inst: Instance) -> None:
        self.metrics.pool_attaches.value += 1
        LOG.info("instance %d of chain %d attached from the warm pool", inst.id, inst.chain_id)

    def _xid(self, msg):
        msg.xid = next(self._xids) & 0xFFFFFFFF
        return msg

    def _assign(self, chain: Chain, inst: Instance, dpid, key, in_port, data, now) -> list:
        return self._install(self._record(chain, inst, dpid, key, now), inst, in_port, data)

    def _record(self, chain: Chain, inst: Instance, dpid, key, now) -> FlowRecord:
        rec = self.flows.add(dpid, key, chain.id, inst.id, now)
        inst.flows += 1
        inst.setups += 1
        chain.flows += 1
        chain.setups += 1
        self.metrics.flow_setups.value += 1
        return rec

    def _install(self, rec: FlowRecord, inst: Instance, in_port, data, rule=True) -> list:
        """Wire bytes: if ``data``, its packet-out, then the flow's rule (if ``rule``).

        Both messages go in one buffer so they leave in one write; the packet-out
        first, so that no packet the rule forwards can overtake it (the switch
        handles a connection's messages in order).
        """
        xid = next(self._xids) & 0xFFFFFFFF
        buf = bytearray()
        if data is not None:
            out = self._out_templates.get(inst.id)
            if out is None:
                out = self._out_templates[inst.id] = ofbuild.PacketOutTemplate(
                    ofbuild.instance_actions(inst.vf_mac, inst.port)
                )
            buf += out.render(in_port, data, xid)
        if rule:
            key = rec.key
            tkey = (inst.id, key.eth_type, key.proto)
            tpl = self._rule_templates.get(tkey)
            if tpl is None:
                chain = self.chains.by_id.get(inst.chain_id)
                tpl = self._rule_templates[tkey] = ofbuild.FlowRuleTemplate(
                    key.eth_type,
                    key.proto,
                    ofbuild.instance_actions(inst.vf_mac, inst.port),
                    ofbuild.flow_cookie(inst.id),
                    natpools.rule_idle_s(chain.spec, key.proto, self.settings.idle_timeout)
                    if chain is not None
                    else self.settings.idle_timeout,
                )
            buf += tpl.render(key, xid)
        return [(rec.dpid, buf)]

    def _repeat(self, rec: FlowRecord, in_port, data, now) -> list:
        """Another packet-in of an assigned flow (its rule is not in place yet)."""
        self.metrics.repeat_packet_ins.value += 1
        if self.handing:
            out = self._handing_packet(rec, in_port, data, now)
            if out is not None:
                return out
        inst = self.instances.by_id[rec.instance_id]
        if now - rec.installed_at < self.settings.reinstall_after:
            return self._install(rec, inst, in_port, data, rule=False)  # rule on its way
        rec.installed_at = now  # the rule went missing: install it again
        return self._install(rec, inst, in_port, data)

    def _reply(self, fwd: FlowRecord, dpid, key, in_port, data, now) -> list:
        """The first packet of a known flow's other direction (``key`` reversed is ``fwd``).

        A bidirectional chain's instance takes the reply too (NAT, firewalls
        with connection tracking need both directions); a one-way chain's reply
        goes straight to its host.  Either way it never starts a flow of its own.
        """
        chain = self.chains.by_id.get(fwd.chain_id)
        inst = self.instances.by_id.get(fwd.instance_id)
        if chain is not None and inst is not None and chain.spec.bidirectional:
            self.metrics.reply_flows.inc("chain")
            return self._assign(chain, inst, dpid, key, in_port, data, now)
        self.metrics.reply_flows.inc("direct")
        return self._unmatched(dpid, key, in_port, data, deliver=True)

    def _host_of(self, dpid: int, key) -> object | None:
        if key.eth_type != flowkey.ETH_IPV4:
            return None
        return next((h for net, mask, h in self._hosts[dpid] if key.dst & mask == net), None)

    def _unmatched(self, dpid, key, in_port, data, deliver=False) -> list:
        """A per-flow rule for a flow no chain takes: deliver it, or the default action.

        ``deliver`` (replies of one-way chains' flows) hands the flow to the host
        that owns its destination whatever the default; the default ``forward``
        does the same, falling back to the egress port for unknown destinations.
        """
        switch = self.topology.switch(self.switches[dpid].name)
        if not deliver:
            self.metrics.unmatched_flows.value += 1
        host = self._host_of(dpid, key) if deliver or switch.default_action == "forward" else None
        name = host.name if host is not None else None
        tkey = ("default", dpid, key.eth_type, key.proto, name)
        tpl = self._rule_templates.get(tkey)
        okey = ("default", dpid, name)
        if tpl is None:
            actions = ofbuild.deliver_actions(switch, host)
            tpl = self._rule_templates[tkey] = ofbuild.FlowRuleTemplate(
                key.eth_type, key.proto, actions, ofbuild.COOKIE_UNMATCHED,
                self.settings.idle_timeout,
            )  # fmt: skip
            if actions and okey not in self._out_templates:
                self._out_templates[okey] = ofbuild.PacketOutTemplate(actions)
        xid = next(self._xids) & 0xFFFFFFFF
        out = self._out_templates.get(okey)
        buf = out.render(in_port, data, xid) if out is not None else bytearray()
        buf += tpl.render(key, xid)  # after the packet-out, as in _install
        return [(dpid, buf)]

    def _hold(self, chain: Chain, dpid, in_port, key, data, now, why=None) -> list:
        if chain.shortage_since is None:
            chain.shortage_since = now
            self.metrics.shortages.value += 1
            LOG.warning(
                "chain %d %r has %s; holding up to %d packets for %.1f s",
                chain.id,
                chain.spec.name,
                why or "no instance to take new flows (no candidate, warm pool empty)",
                self.settings.hold_queue_len,
                self.settings.hold_timeout,
            )
        if len(chain.held) >= self.settings.hold_queue_len:
            self.metrics.held_dropped.inc("full")
            return []
        chain.held.append((dpid, in_port, key, bytes(data), now))
        return []

    def _release(self, chain: Chain, now: float) -> list:
        """Send held packets of ``chain`` on, now that it may have an instance.

        The flows this assigns are handed over in order (heldrelease.py): no
        packet their rules forward reaches the NFs before one the controller had.
        """
        msgs, kept = [], []
        fresh: dict[int, list] = {}  # instance id -> [(rec, in_port, data)] assigned now
        made = set()
        held = chain.held
        while held:
            dpid, in_port, key, data, _t = held[0]
            rec = self.flows.get(dpid, key)
            if rec is not None:
                held.popleft()
                self.metrics.held_released.value += 1
                if rec in made:
                    fresh[rec.instance_id].append((rec, in_port, data))
                    continue
                out = self._handing_packet(rec, in_port, data, now) if self.handing else None
                if out is None:
                    inst = self.instances.by_id[rec.instance_id]
                    out = self._install(rec, inst, in_port, data, False)
                msgs += out
                continue
            if self._nat_vacant(key) is not None:  # its address's instance is not back yet
                kept.append(held.popleft())
                continue
            inst = self._nat_owner(key, attach=True) or self.instances.pick(chain, dpid)
            if inst is None:
                break
            held.popleft()
            rec = self._record(chain, inst, dpid, key, now)
            made.add(rec)
            fresh.setdefault(inst.id, []).append((rec, in_port, data))
            self.metrics.held_released.value += 1
        for iid, items in fresh.items():
            msgs += self._handover_start(self.instances.by_id[iid], items)
        held.extendleft(reversed(kept))
        if not held:
            chain.shortage_since = None
        return msgs

    def _forget(self, rec: FlowRecord) -> None:
        if self.nat_moves:  # a moved NAT connection's outbound flow ends its steering
            self.nat_moves.forget(rec.dpid, rec.key)
        inst = self.instances.by_id.get(rec.instance_id)
        if inst is not None:
            inst.flows -= 1
        chain = self.chains.by_id.get(rec.chain_id)
        if chain is not None:
            chain.flows -= 1
        self.flows.remove(rec)

    def _adopt_or_delete(self, dpid, key, iid, entry, now, seen) -> list:
        """A per-flow rule on the switch we have no record of (controller restart)."""
        inst = self.instances.by_id.get(iid)
        if inst is None or inst.dpid != dpid or inst.chain_id not in self.chains.by_id:
            self.metrics.resync_deleted.value += 1
            return [(dpid, self._xid(ofbuild.delete_flow(key)))]
        rec = self.flows.add(dpid, key, inst.chain_id, inst.id, now)
        rec.installed_at = now - getattr(entry, "duration_sec", 0)
        self.flows.update_counts(rec, entry.packet_count, entry.byte_count, now)
        inst.flows += 1
        self.chains.by_id[inst.chain_id].flows += 1
        seen.add(key)
        self.metrics.resync_adopted.value += 1
        return []

    def _reinstall_missing(self, dpid, seen, now) -> list:
        msgs = []
        for rec in self.flows.of_switch(dpid):
            if rec.key not in seen:
                rec.installed_at = now
                msgs += self._install(rec, self.instances.by_id[rec.instance_id], 0, None)
                self.metrics.resync_installed.value += 1
        return msgs

    def _wire_metrics(self) -> None:
        m = self.metrics
        m.chain_flows.collect = lambda: [
            ({"chain": str(c.id), "tenant": c.tenant}, c.flows) for c in self.chains
        ]
        m.instance_flows.collect = lambda: [
            ({"instance": str(i.id), "chain": str(i.chain_id)}, i.flows)
            for i in self.instances.by_id.values()
        ]
        m.held_packets.collect = lambda: [({"chain": str(c.id)}, len(c.held)) for c in self.chains]
        m.default_packets.collect = lambda: [
            ({"switch": s.name}, s.default_packets) for s in self.switches.values()
        ]
        m.switches_connected.collect = lambda: [
            ({"switch": s.name}, int(s.connected_since is not None)) for s in self.switches.values()
        ]
