"""Where a flow setup's time goes, measured in-process with CPU time (no sockets).

Sampling profilers are unreliable under eventlet (greenlet stacks confuse
them), so the parts are timed directly, each the minimum over repetitions of
``time.process_time()`` per packet-in (CPU time, so other processes on the
machine matter less):

* ``osken_parse``: os-ken turning the packet-in bytes into ``OFPPacketIn``
  (``ofproto_parser.msg``), which every app pays;
* ``quadrant``: ``Core.packet_in`` on it, to the wire bytes of the flow-mod
  and packet-out (5-tuple, chain, instance, flow record, templates);
* ``naive``: the straightforward app's work (``os_ken.lib.packet`` parse,
  ``OFPMatch``/``OFPFlowMod``/``OFPPacketOut`` built and serialized).

``tools/bench/flow_setup.py`` sets these beside each app's measured CPU per
setup; the difference is os-ken's receive loop, event dispatch and send
queue, and eventlet's hub.
"""

from __future__ import annotations

import gc
import time

from os_ken.lib.packet import ipv4, packet, tcp
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from quadrant_app import chains, ofbuild, topology
from quadrant_app.core import Core
from tools.bench.ofswitch import EmulatedSwitch


class _Dp:
    ofproto = ofp
    ofproto_parser = parser
    id = 1
    xid = 0

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)


def _core(topo_path) -> Core:
    core = Core(topology.load(topo_path))
    core.datapath_up(1, 0.0)
    spec = chains.parse_chain(
        {
            "name": "bench",
            "nfs": [{"type": "empty"}],
            "filter": {"src": "10.1.0.0/16", "dst": "10.2.0.0/16", "proto": "tcp"},
            "slo_us": 100,
        }
    )
    chain = core.add_chain("bench", spec, 0.0)
    core.add_instance(chain.id, "w1", "02:00:00:00:01:01", 0, True, 0.0)
    core.add_instance(chain.id, "w2", "02:00:00:00:02:01", 0, True, 0.0)
    return core


def _naive(msg) -> None:
    pkt = packet.Packet(msg.data)
    ip = pkt.get_protocol(ipv4.ipv4)
    l4 = pkt.get_protocol(tcp.tcp)
    match = parser.OFPMatch(
        eth_type=0x0800, ip_proto=ip.proto, ipv4_src=ip.src, ipv4_dst=ip.dst,
        tcp_src=l4.src_port, tcp_dst=l4.dst_port,
    )  # fmt: skip
    actions = ofbuild.instance_actions("02:00:00:00:01:01", 11)
    inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
    dp = _Dp()
    for m in (
        parser.OFPFlowMod(dp, table_id=1, priority=1000, match=match, instructions=inst,
                          idle_timeout=10, flags=ofp.OFPFF_SEND_FLOW_REM, cookie=1),
        parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=msg.match["in_port"],
                            actions=actions, data=msg.data),
    ):  # fmt: skip
        dp.set_xid(m)
        m.serialize()


def measure(topo_path, n: int = 4000, reps: int = 5) -> dict:
    """Microseconds of CPU per packet-in for each part (min over ``reps``)."""
    sw = EmulatedSwitch(dpid=1)
    best = {"osken_parse": float("inf"), "quadrant": float("inf"), "naive": float("inf")}
    gc.collect()
    for rep in range(reps):
        raws = [bytearray(sw.packet_in(rep * n + i)) for i in range(n)]
        t0 = time.process_time()
        msgs = [ofproto_parser.msg(_Dp, 4, ofp.OFPT_PACKET_IN, len(r), 0, r) for r in raws]
        t1 = time.process_time()
        core = _core(topo_path)
        t2 = time.process_time()
        for m in msgs:
            for _dpid, buf in core.packet_in(1, m.match["in_port"], m.data, 1.0):
                bytes(buf)
        t3 = time.process_time()
        for m in msgs[: n // 4]:
            _naive(m)
        t4 = time.process_time()
        best["osken_parse"] = min(best["osken_parse"], (t1 - t0) / n * 1e6)
        best["quadrant"] = min(best["quadrant"], (t3 - t2) / n * 1e6)
        best["naive"] = min(best["naive"], (t4 - t3) / (n // 4) * 1e6)
    return {k: round(v, 2) for k, v in best.items()}
