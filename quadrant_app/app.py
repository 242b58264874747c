"""The os-ken application: a thin shell that turns events into core calls.

It owns no logic of its own: each handler reads the clock once, calls the
pure :class:`~quadrant_app.core.Core` and hands the returned messages to
:meth:`QuadrantApp.send`, the only place that writes to a switch.
"""

from __future__ import annotations

import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from quadrant_app import config, topology
from quadrant_app.core import Core


class QuadrantApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        opts = config.options()
        self.topology = topology.load(opts.topology)
        self.core = Core(self.topology)
        self.datapaths = {}
        self.logger.info(
            "quadrant: topology %s (%d switches, %d workers) from %s",
            self.topology.name,
            len(self.topology.switches),
            len(self.topology.workers),
            opts.topology,
        )

    def send(self, msgs) -> None:
        """Bind each ``(dpid, msg)`` to its datapath and send it."""
        for dpid, msg in msgs:
            dp = self.datapaths.get(dpid)
            if dp is None:
                self.logger.warning("dropping %s for disconnected switch %016x", msg, dpid)
                continue
            msg.datapath = dp
            dp.send_msg(msg)

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features(self, ev):
        dp = ev.msg.datapath
        self.datapaths[dp.id] = dp
        self.send(self.core.datapath_up(dp.id, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPStateChange, [DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if dp.id is None or self.datapaths.get(dp.id) is not dp:
            return
        del self.datapaths[dp.id]
        self.send(self.core.datapath_down(dp.id, time.monotonic()))
