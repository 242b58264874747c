"""Benchmark baseline: the straightforward flow-setup app.

Per packet-in it parses the frame with ``os_ken.lib.packet``, builds an
``OFPMatch`` on the 5-tuple, an ``OFPFlowMod`` (set eth_dst, output) and an
``OFPPacketOut``, and sends both with ``send_msg``: the way most os-ken apps
are written.  Loaded by tools/bench/flow_setup.py as
``osken-manager tools.bench.baseline_naive``.
"""

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls
from os_ken.lib.packet import ipv4, packet, tcp, udp
from os_ken.ofproto import ofproto_v1_3

VF_MAC, WORKER_PORT = "02:00:00:00:01:01", 11


class NaiveApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        pkt = packet.Packet(msg.data)
        ip = pkt.get_protocol(ipv4.ipv4)
        if ip is None:
            return
        fields = {"eth_type": 0x0800, "ip_proto": ip.proto, "ipv4_src": ip.src, "ipv4_dst": ip.dst}
        l4 = pkt.get_protocol(tcp.tcp) or pkt.get_protocol(udp.udp)
        if l4 is not None:
            name = "tcp" if isinstance(l4, tcp.tcp) else "udp"
            fields[name + "_src"], fields[name + "_dst"] = l4.src_port, l4.dst_port
        actions = [parser.OFPActionSetField(eth_dst=VF_MAC), parser.OFPActionOutput(WORKER_PORT)]
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(
            parser.OFPFlowMod(
                datapath=dp,
                table_id=1,
                priority=1000,
                match=parser.OFPMatch(**fields),
                instructions=inst,
                idle_timeout=10,
                flags=ofp.OFPFF_SEND_FLOW_REM,
                cookie=1,
            )
        )
        dp.send_msg(
            parser.OFPPacketOut(
                datapath=dp,
                buffer_id=ofp.OFP_NO_BUFFER,
                in_port=msg.match["in_port"],
                actions=actions,
                data=msg.data,
            )
        )
