"""OpenFlow 1.3 message builders: the one module that makes flow-mods.

Builders are pure: they take plain values and return os-ken message objects
not yet bound to a datapath (``datapath=None``); the app binds and sends them.
"""

from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

# Table layout of the base pipeline.
TABLE_CLASSIFY = 0  # by ingress port: uplink traffic on, everything else default

# Priorities inside TABLE_CLASSIFY.
PRIO_UPLINK = 100
PRIO_MISS = 0

# Cookie of the base pipeline's entries, so they can be told from per-flow ones.
COOKIE_BASE = 0x5144_0000_0000_0000  # "QD" in the top bytes


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


def delete_all():
    """Remove every entry in every table (used before (re)installing the pipeline)."""
    return parser.OFPFlowMod(
        datapath=None,
        table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(),
    )


def apply(*actions):
    return [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions))]


def to_controller():
    return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)


def base_pipeline(switch):
    """The base pipeline for one switch of the topology.

    Packets that enter on an uplink port go to the controller (packet-in of a
    new flow); every other packet hits the table-miss entry, which drops.
    """
    msgs = [delete_all()]
    for port in switch.uplink_ports:
        msgs.append(
            flow_add(
                TABLE_CLASSIFY,
                PRIO_UPLINK,
                parser.OFPMatch(in_port=port),
                apply(to_controller()),
            )
        )
    msgs.append(flow_add(TABLE_CLASSIFY, PRIO_MISS, parser.OFPMatch(), []))
    msgs.append(parser.OFPBarrierRequest(datapath=None))
    return msgs
