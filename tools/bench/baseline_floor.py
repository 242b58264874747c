"""Benchmark baseline: os-ken's floor.  Answers every packet-in with one pre-built message.

It parses nothing and builds nothing per packet: what it costs is os-ken's own
receive, parse (OFPPacketIn), dispatch and send.  Loaded by tools/bench/flow_setup.py
as ``osken-manager tools.bench.baseline_floor``.
"""

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from quadrant_app import ofbuild
from quadrant_app.flowkey import FlowKey

# One fixed flow-mod, serialized once.
_REPLY = ofbuild.serialize(
    ofbuild.flow_rule(
        FlowKey(0x0800, 6, 0x0A010001, 0x0A020001, 1024, 80),
        ofbuild.instance_actions("02:00:00:00:01:01", 11),
        ofbuild.flow_cookie(1),
        10,
    )
)


class FloorApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        ev.msg.datapath.send(_REPLY)
