"""OpenFlow 1.3 message builders: the one module that makes OpenFlow messages.

Builders are pure: they take plain values and return either os-ken message
objects not yet bound to a datapath (``datapath=None``) or, on the packet-in
fast path, ready wire bytes (:class:`FlowRuleTemplate`, :func:`packet_out`).
The app binds and sends both (``QuadrantApp.send``).

Pipeline (docs/controller.rst has the picture)::

  table 0 CLASSIFY  in_port=uplink or egress -> goto 1;
                    in_port=worker, ipv4_dst in a host's subnet -> set eth_dst host, out host;
                    in_port=worker -> egress;  miss -> default
  table 1 FLOWS     per-flow 5-tuple -> set eth_dst, out worker (or deliver, if no chain);
                    IPv4/IPv6 -> controller;  miss (non-IP) -> default

Traffic from the egress side is classified too: replies of a flow follow the
flow's instance when its chain is bidirectional, and are delivered straight
to their host otherwise (core.py decides).  "Deliver" is what the switch does
as the hosts' last router hop: the destination MAC becomes the host's.
"""

from __future__ import annotations

import ipaddress
import struct

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from quadrant_app.flowkey import ETH_IPV4, ETH_IPV6, PORT_PROTOS, SCTP, TCP, UDP, FlowKey

TABLE_CLASSIFY = 0
TABLE_FLOWS = 1

# Priorities.
PRIO_PORT = 100  # table 0: by ingress port
PRIO_FLOW = 1000  # table 1: one entry per flow
PRIO_TO_CONTROLLER = 10  # table 1: IP of a new flow
PRIO_MISS = 0

# Cookies: the top 16 bits say what an entry is, the low 48 bits which one.
COOKIE_KIND_MASK = 0xFFFF_0000_0000_0000
COOKIE_BASE = 0x5144_0000_0000_0000  # "QD": base pipeline
COOKIE_DEFAULT = COOKIE_BASE | 1  # base entries that apply the default action (counted)
COOKIE_FLOW = 0x5146_0000_0000_0000  # "QF": per-flow rule, low bits = instance id
COOKIE_UNMATCHED = 0x5155_0000_0000_0000  # "QU": per-flow rule of a flow no chain takes
COOKIE_ID_MASK = 0x0000_FFFF_FFFF_FFFF
ALL_ONES = 0xFFFF_FFFF_FFFF_FFFF


class _Wire:
    """What os-ken's serializer needs of a datapath: the protocol modules."""

    ofproto = ofp
    ofproto_parser = parser


def serialize(msg) -> bytes:
    """The wire bytes of an unbound message (xid 0 unless set)."""
    bound = msg.datapath
    msg.datapath = _Wire
    if msg.xid is None:
        msg.xid = 0
    try:
        msg.serialize()
    finally:
        msg.datapath = bound
    return bytes(msg.buf)


def flow_cookie(instance_id: int) -> int:
    return COOKIE_FLOW | instance_id


def flow_add(table_id, priority, match, instructions, cookie=COOKIE_BASE, **kwargs):
    return parser.OFPFlowMod(
        datapath=None,
        cookie=cookie,
        table_id=table_id,
        command=ofp.OFPFC_ADD,
        priority=priority,
        match=match,
        instructions=instructions,
        **kwargs,
    )


def flow_delete(table_id, cookie=0, cookie_mask=0, match=None, priority=None, strict=False):
    kwargs = {"priority": priority} if priority is not None else {}
    return parser.OFPFlowMod(
        datapath=None,
        cookie=cookie,
        cookie_mask=cookie_mask,
        table_id=table_id,
        command=ofp.OFPFC_DELETE_STRICT if strict else ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match if match is not None else parser.OFPMatch(),
        **kwargs,
    )


def apply(*actions):
    return [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions))]


def to_controller():
    return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)


def default_actions(switch):
    """The topology's default for traffic no chain takes: drop, or on to egress."""
    if switch.default_action == "forward":
        return [parser.OFPActionOutput(switch.egress_port)]
    return []


def deliver_actions(switch, host):
    """Hand a packet to ``host`` (its MAC, its port); without one, the default."""
    if host is None:
        return default_actions(switch)
    return [
        parser.OFPActionSetField(eth_dst=host.mac),
        parser.OFPActionOutput(host.switch_port),
    ]


def base_pipeline(switch, worker_ports, hosts=()):
    """Replace the base pipeline of ``switch``; per-flow entries are left alone.

    ``hosts`` are the topology's hosts on this switch: a chain's output whose
    IPv4 destination is in a host's subnet goes to that host, with its MAC.

    Removes every entry of table 0 and the base entries of table 1 (by
    cookie), then installs them anew, so a reconnecting switch keeps its
    per-flow rules (the core re-syncs them from flow stats).
    """
    default = default_actions(switch)
    msgs = [
        flow_delete(TABLE_CLASSIFY),
        flow_delete(TABLE_FLOWS, cookie=COOKIE_BASE, cookie_mask=COOKIE_KIND_MASK),
    ]
    from_outside = list(switch.uplink_ports)
    if switch.egress_port not in from_outside:
        from_outside.append(switch.egress_port)
    for port in from_outside:
        msgs.append(
            flow_add(
                TABLE_CLASSIFY,
                PRIO_PORT,
                parser.OFPMatch(in_port=port),
                [parser.OFPInstructionGotoTable(TABLE_FLOWS)],
            )
        )
    for port in worker_ports:
        for h in hosts:
            net = ipaddress.IPv4Network(h.ip, strict=False)
            msgs.append(
                flow_add(
                    TABLE_CLASSIFY,
                    PRIO_PORT + 1,
                    parser.OFPMatch(
                        in_port=port,
                        eth_type=ETH_IPV4,
                        ipv4_dst=(str(net.network_address), str(net.netmask)),
                    ),
                    apply(*deliver_actions(switch, h)),
                )
            )
        msgs.append(
            flow_add(
                TABLE_CLASSIFY,
                PRIO_PORT,
                parser.OFPMatch(in_port=port),
                apply(parser.OFPActionOutput(switch.egress_port)),
            )
        )
    msgs.append(
        flow_add(TABLE_CLASSIFY, PRIO_MISS, parser.OFPMatch(), _maybe(default), COOKIE_DEFAULT)
    )
    for eth_type in (ETH_IPV4, ETH_IPV6):
        msgs.append(
            flow_add(
                TABLE_FLOWS,
                PRIO_TO_CONTROLLER,
                parser.OFPMatch(eth_type=eth_type),
                apply(to_controller()),
            )
        )
    msgs.append(
        flow_add(TABLE_FLOWS, PRIO_MISS, parser.OFPMatch(), _maybe(default), COOKIE_DEFAULT)
    )
    msgs.append(parser.OFPBarrierRequest(datapath=None))
    return msgs


def _maybe(actions):
    return apply(*actions) if actions else []


# --------------------------------------------------------------------------
# Per-flow rules.


def flow_match(key: FlowKey) -> parser.OFPMatch:
    """The OpenFlow match of exactly one flow (the 5-tuple and what it needs)."""
    fields = {"eth_type": key.eth_type, "ip_proto": key.proto}
    if key.eth_type == ETH_IPV4:
        fields["ipv4_src"], fields["ipv4_dst"] = _v4(key.src), _v4(key.dst)
    else:
        fields["ipv6_src"], fields["ipv6_dst"] = _v6(key.src), _v6(key.dst)
    if key.proto in PORT_PROTOS:
        name = _PORT_FIELDS[key.proto]
        fields[name + "_src"], fields[name + "_dst"] = key.sport, key.dport
    return parser.OFPMatch(**fields)


def key_of_match(match) -> FlowKey | None:
    """The flow key back from a per-flow entry's match (flow stats, flow removed)."""
    get = match.get
    eth_type, proto = get("eth_type"), get("ip_proto")
    if eth_type == ETH_IPV4 and get("ipv4_src") is not None:
        src, dst = _int4(get("ipv4_src")), _int4(get("ipv4_dst"))
    elif eth_type == ETH_IPV6 and get("ipv6_src") is not None:
        src, dst = _int6(get("ipv6_src")), _int6(get("ipv6_dst"))
    else:
        return None
    if proto is None or dst is None:
        return None
    sport = dport = 0
    if proto in PORT_PROTOS:
        name = _PORT_FIELDS[proto]
        sport, dport = get(name + "_src"), get(name + "_dst")
        if sport is None or dport is None:
            return None
    return FlowKey(eth_type, proto, src, dst, sport, dport)


def instance_actions(vf_mac: str, port: int):
    """Steer to a chain instance: rewrite eth_dst to its VF, out its worker's port."""
    return [parser.OFPActionSetField(eth_dst=vf_mac), parser.OFPActionOutput(port)]


def flow_rule(key: FlowKey, actions, cookie: int, idle_timeout: int, xid: int = 0):
    """A per-flow rule as an os-ken object (the reference for :class:`FlowRuleTemplate`)."""
    msg = flow_add(
        TABLE_FLOWS,
        PRIO_FLOW,
        flow_match(key),
        _maybe(actions),
        cookie,
        idle_timeout=idle_timeout,
        flags=ofp.OFPFF_SEND_FLOW_REM,
        buffer_id=ofp.OFP_NO_BUFFER,
    )
    msg.xid = xid
    return msg


# Placeholders whose bytes occur once in a serialized rule: their offsets are
# where a template is patched.
_PH_V4 = (0xA1B2C3D4, 0xE5F60718)
_PH_V6 = (0x2001_0DB8_A1B2_C3D4_E5F6_0718_293A_4B5C, 0x2001_0DB8_6D7E_8F90_A1B2_C3D4_E5F6_0719)
_PH_PORTS = (0x9ABC, 0xDEF1)
_xid_at = struct.Struct("!I").pack_into


class FlowRuleTemplate:
    """One serialized per-flow rule for a flow shape and target, patched per flow.

    A shape is (eth_type, proto); the target is the cookie and actions.  The
    template is the bytes of :func:`flow_rule` for placeholder addresses and
    ports.  os-ken writes OXM fields in field-number order, so the addresses
    and ports are consecutive TLVs (ports first for IPv6): :meth:`render`
    copies the template and rewrites that one stretch, values and the TLV
    headers between them, with one ``struct`` call.  The result equals
    ``flow_rule(...).serialize()`` byte for byte (tests/unit/test_ofbuild.py
    checks it for every shape).
    """

    __slots__ = ("buf", "v4", "start", "order", "heads", "fields")

    def __init__(self, eth_type: int, proto: int, actions, cookie: int, idle_timeout: int):
        self.v4 = eth_type == ETH_IPV4
        ph_src, ph_dst = _PH_V4 if self.v4 else _PH_V6
        has_ports = proto in PORT_PROTOS
        sport, dport = _PH_PORTS if has_ports else (0, 0)
        ph_key = FlowKey(eth_type, proto, ph_src, ph_dst, sport, dport)
        self.buf = serialize(flow_rule(ph_key, actions, cookie, idle_timeout))
        alen, addr = (4, "I") if self.v4 else (16, "16s")
        # (which key field, placeholder bytes, struct code), in the template's order
        fields = [(0, ph_src.to_bytes(alen, "big"), addr), (1, ph_dst.to_bytes(alen, "big"), addr)]
        if has_ports:
            fields += [(2, sport.to_bytes(2, "big"), "H"), (3, dport.to_bytes(2, "big"), "H")]
        fields.sort(key=lambda f: self._find(f[1]))
        self.start = self._find(fields[0][1])
        at, fmt, heads = self.start + len(fields[0][1]), "!" + fields[0][2], []
        for _, value, code in fields[1:]:
            if self.buf[at + 4 : at + 4 + len(value)] != value:
                raise AssertionError("address and port fields are not consecutive OXM TLVs")
            heads.append(struct.unpack_from("!I", self.buf, at)[0])
            fmt += "I" + code
            at += 4 + len(value)
        self.order = tuple(f[0] for f in fields)
        self.heads = tuple(heads)
        self.fields = struct.Struct(fmt)

    def _find(self, needle: bytes) -> int:
        at = self.buf.find(needle)
        if at < 0 or self.buf.find(needle, at + 1) >= 0:
            raise AssertionError(f"placeholder {needle.hex()} not unique in the flow-mod")
        return at

    def render(self, key: FlowKey, xid: int) -> bytearray:
        buf = bytearray(self.buf)
        _xid_at(buf, 4, xid)
        if self.v4:
            v = (key.src, key.dst, key.sport, key.dport)
        else:
            v = (key.src.to_bytes(16, "big"), key.dst.to_bytes(16, "big"), key.sport, key.dport)
        o, h = self.order, self.heads
        if len(o) == 4:
            self.fields.pack_into(
                buf, self.start, v[o[0]], h[0], v[o[1]], h[1], v[o[2]], h[2], v[o[3]]
            )
        else:
            self.fields.pack_into(buf, self.start, v[o[0]], h[0], v[o[1]])
        return buf


class PacketOutTemplate:
    """A packet-out with fixed actions; :meth:`render` adds xid, in_port and the packet."""

    __slots__ = ("head",)
    _head = struct.Struct("!BBHIII")  # version, type, length, xid, buffer_id, in_port

    def __init__(self, actions):
        self.head = serialize(packet_out_msg(0, actions, b""))

    def render(self, in_port: int, data, xid: int) -> bytearray:
        buf = bytearray(self.head)
        self._head.pack_into(
            buf,
            0,
            ofp.OFP_VERSION,
            ofp.OFPT_PACKET_OUT,
            len(buf) + len(data),
            xid,
            ofp.OFP_NO_BUFFER,
            in_port,
        )
        buf += data
        return buf


def packet_out_msg(in_port: int, actions, data, xid: int = 0):
    """A packet-out as an os-ken object (the reference for :class:`PacketOutTemplate`)."""
    msg = parser.OFPPacketOut(
        datapath=None, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port, actions=actions, data=data
    )
    msg.xid = xid
    return msg


def delete_flow(key: FlowKey):
    """Remove one per-flow rule (strict: exactly that match and priority)."""
    return flow_delete(TABLE_FLOWS, match=flow_match(key), priority=PRIO_FLOW, strict=True)


def delete_instance_flows(instance_id: int):
    """Remove every per-flow rule that steers to one instance (by its cookie)."""
    return flow_delete(TABLE_FLOWS, cookie=flow_cookie(instance_id), cookie_mask=ALL_ONES)


def flow_stats_request(cookie_kind: int, table_id=TABLE_FLOWS):
    """Ask for the stats of every entry whose cookie is of one kind."""
    return parser.OFPFlowStatsRequest(
        datapath=None,
        table_id=table_id,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        cookie=cookie_kind,
        cookie_mask=COOKIE_KIND_MASK,
        match=parser.OFPMatch(),
    )


def barrier():
    return parser.OFPBarrierRequest(datapath=None)


_PORT_FIELDS = {TCP: "tcp", UDP: "udp", SCTP: "sctp"}


def _v4(n: int) -> str:
    return ".".join(str(b) for b in n.to_bytes(4, "big"))


def _v6(n: int) -> str:
    h = n.to_bytes(16, "big").hex()
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


def _int4(text) -> int:
    if isinstance(text, tuple):  # (address, mask) of a masked field
        text = text[0]
    return int.from_bytes(bytes(int(x) for x in text.split(".")), "big")


def _int6(text) -> int:
    if isinstance(text, tuple):
        text = text[0]
    return int(ipaddress.IPv6Address(text))
