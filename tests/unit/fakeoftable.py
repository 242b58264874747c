"""A fake OpenFlow 1.3 switch table for unit tests of the pure core (after Faucet's).

It takes what the core sends (os-ken objects or wire bytes), puts everything
through os-ken's own serializer and parser, so bytes built by templates are
checked as a switch would read them, and applies flow-mods to its tables.
:meth:`FakeOFTable.lookup` runs a packet through the pipeline and says where
it goes; packet-outs are recorded with their actions applied.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
import types

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from quadrant_app import flowkey, ofbuild
from quadrant_app.heldrelease import Handover


class _Dp:
    ofproto = ofp
    ofproto_parser = parser
    id = 0


@dataclasses.dataclass
class Entry:
    table_id: int
    priority: int
    match: dict
    instructions: list
    cookie: int
    idle_timeout: int
    flags: int
    packets: int = 0


def to_wire(msg) -> bytes:
    if isinstance(msg, bytes | bytearray):
        return bytes(msg)
    return ofbuild.serialize(msg)


@dataclasses.dataclass
class PacketOut:
    xid: int
    in_port: int
    actions: list
    data: bytes


@dataclasses.dataclass
class StatsRequest:
    xid: int
    table_id: int
    cookie: int
    cookie_mask: int


@dataclasses.dataclass
class Barrier:
    xid: int


def parse_wire(buf: bytes) -> list:
    """Split a byte stream into messages: flow-mods through os-ken's own parser;
    the controller-to-switch messages os-ken has no parser for, by hand."""
    out = []
    while buf:
        version, msg_type, length, xid = ofproto_parser.header(buf)
        assert version == ofp.OFP_VERSION and 8 <= length <= len(buf), (version, length)
        one = bytes(buf[:length])
        if msg_type == ofp.OFPT_FLOW_MOD:
            out.append(ofproto_parser.msg(_Dp, version, msg_type, length, xid, one))
        elif msg_type == ofp.OFPT_PACKET_OUT:
            _, in_port, alen = struct.unpack_from("!IIH", one, 8)
            actions, off = [], 24
            while off < 24 + alen:
                a = parser.OFPAction.parser(one, off)
                actions.append(a)
                off += a.len
            out.append(PacketOut(xid, in_port, actions, one[24 + alen :]))
        elif msg_type == ofp.OFPT_MULTIPART_REQUEST:
            (mp_type,) = struct.unpack_from("!H", one, 8)
            assert mp_type == ofp.OFPMP_FLOW, mp_type
            table_id = one[16]
            cookie, mask = struct.unpack_from("!QQ", one, 32)
            out.append(StatsRequest(xid, table_id, cookie, mask))
        elif msg_type == ofp.OFPT_BARRIER_REQUEST:
            out.append(Barrier(xid))
        else:
            raise AssertionError(f"unexpected message type {msg_type}")
        buf = buf[length:]
    return out


def packet_fields(data: bytes, in_port: int) -> dict:
    """The match fields of a packet, as os-ken's OFPMatch names them."""
    f = {"in_port": in_port, "eth_dst": _mac(data[0:6]), "eth_src": _mac(data[6:12])}
    f["eth_type"] = int.from_bytes(data[12:14], "big")
    key = flowkey.parse(data)
    if key is None:
        return f
    f["eth_type"], f["ip_proto"] = key.eth_type, key.proto
    make = ipaddress.IPv4Address if key.eth_type == flowkey.ETH_IPV4 else ipaddress.IPv6Address
    fam = "ipv4" if key.eth_type == flowkey.ETH_IPV4 else "ipv6"
    f[f"{fam}_src"], f[f"{fam}_dst"] = str(make(key.src)), str(make(key.dst))
    name = {6: "tcp", 17: "udp", 132: "sctp"}.get(key.proto)
    if name:
        f[f"{name}_src"], f[f"{name}_dst"] = key.sport, key.dport
    return f


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _norm(field, value):
    if isinstance(value, tuple):  # masked: (value, mask)
        return (_norm(field, value[0]), _norm(field, value[1]))
    if field.startswith("ipv6"):
        return str(ipaddress.IPv6Address(value))
    return value


def _matches(fields: dict, k: str, v) -> bool:
    got = fields.get(k)
    if not isinstance(v, tuple):
        return got == v
    if got is None:
        return False
    if k.startswith("ipv4"):
        value, mask = (int(ipaddress.IPv4Address(x)) for x in v)
        return int(ipaddress.IPv4Address(got)) & mask == value & mask
    if k.startswith("eth"):
        value, mask, got = (int(x.replace(":", ""), 16) for x in (*v, got))
        return got & mask == value & mask
    raise AssertionError(f"masked match on {k} not modelled")


class FakeOFTable:
    def __init__(self, n_tables: int = 2, core=None):
        self.core = core  # runs the Handovers it is given
        self.tables: list[list[Entry]] = [[] for _ in range(n_tables)]
        self.packet_outs: list[tuple[int, bytes]] = []  # (port, packet after actions)
        self.other: list = []  # barriers, stats requests, ...
        self.flow_mods = 0

    def apply(self, msgs) -> None:
        """Apply ``[(dpid, msg)]`` as the core returns them (one switch).  A
        :class:`Handover` (held flows released in order) runs at once on ``self.core``,
        as the app runs it when the instance's agent holds the flows."""
        for _dpid, msg in msgs:
            if isinstance(msg, Handover):
                assert self.core is not None, "a Handover: set the table's core to run it"
                self.apply(self.core.handover_held(msg))
                self.core.handover_done(msg)
                continue
            for m in parse_wire(to_wire(msg)):
                self._apply_one(m)

    def _apply_one(self, m) -> None:
        if isinstance(m, parser.OFPFlowMod):
            self.flow_mods += 1
            self._flow_mod(m)
        elif isinstance(m, PacketOut):
            outs = self._actions(m.actions, m.data)
            assert outs != "controller"
            self.packet_outs.extend(outs)
        else:
            self.other.append(m)

    def _flow_mod(self, m) -> None:
        match = {k: _norm(k, v) for k, v in m.match.items()}
        tables = range(len(self.tables)) if m.table_id == ofp.OFPTT_ALL else [m.table_id]
        if m.command == ofp.OFPFC_ADD:
            table = self.tables[m.table_id]
            table[:] = [e for e in table if not (e.priority == m.priority and e.match == match)]
            table.append(
                Entry(m.table_id, m.priority, match, m.instructions, m.cookie, m.idle_timeout,
                      m.flags)
            )  # fmt: skip
            table.sort(key=lambda e: -e.priority)
        elif m.command in (ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT):
            strict = m.command == ofp.OFPFC_DELETE_STRICT
            for t in tables:
                self.tables[t] = [
                    e for e in self.tables[t] if not self._selects(e, m, match, strict)
                ]
        else:
            raise AssertionError(f"unexpected flow-mod command {m.command}")

    @staticmethod
    def _selects(e: Entry, m, match: dict, strict: bool) -> bool:
        if m.cookie_mask and (e.cookie & m.cookie_mask) != (m.cookie & m.cookie_mask):
            return False
        if strict:
            return e.priority == m.priority and e.match == match
        return all(e.match.get(k) == v for k, v in match.items())

    def stats_reply(self, req: StatsRequest) -> list:
        """The entries a flow-stats request selects, shaped like os-ken's OFPFlowStats."""
        tables = range(len(self.tables)) if req.table_id == ofp.OFPTT_ALL else [req.table_id]
        return [
            types.SimpleNamespace(
                table_id=e.table_id,
                cookie=e.cookie,
                priority=e.priority,
                match=parser.OFPMatch(**e.match),
                packet_count=e.packets,
                byte_count=e.packets * 100,
                duration_sec=0,
            )
            for t in tables
            for e in self.tables[t]
            if (e.cookie & req.cookie_mask) == (req.cookie & req.cookie_mask)
        ]

    def stats_requests(self) -> list[StatsRequest]:
        return [m for m in self.other if isinstance(m, StatsRequest)]

    def entries(self, table_id: int, cookie_kind: int | None = None) -> list[Entry]:
        return [
            e
            for e in self.tables[table_id]
            if cookie_kind is None or e.cookie & ofbuild.COOKIE_KIND_MASK == cookie_kind
        ]

    def lookup(self, data: bytes, in_port: int):
        """Run a packet through the pipeline: ``[(port, packet)]``, or "controller"."""
        fields = packet_fields(data, in_port)
        table_id = 0
        while True:
            entry = next(
                (
                    e
                    for e in self.tables[table_id]
                    if all(_matches(fields, k, v) for k, v in e.match.items())
                ),
                None,
            )
            if entry is None:
                return []  # no table-miss entry: drop
            entry.packets += 1
            goto = None
            outs = []
            for inst in entry.instructions:
                if isinstance(inst, parser.OFPInstructionGotoTable):
                    goto = inst.table_id
                elif isinstance(inst, parser.OFPInstructionActions):
                    outs = self._actions(inst.actions, data)
            if goto is None:
                return outs
            table_id = goto

    @staticmethod
    def _actions(actions, data: bytes):
        outs = []
        for a in actions:
            if isinstance(a, parser.OFPActionSetField):
                assert a.key == "eth_dst", a.key
                data = bytes.fromhex(a.value.replace(":", "")) + data[6:]
            elif isinstance(a, parser.OFPActionOutput):
                if a.port == ofp.OFPP_CONTROLLER:
                    return "controller"
                outs.append((a.port, data))
        return outs
