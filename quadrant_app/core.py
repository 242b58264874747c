"""The controller's pure core: events in, OpenFlow messages out.

Nothing here touches a socket, reads the clock or knows os-ken's app state:
each method takes ``now`` (seconds) and returns ``[(dpid, msg), ...]`` for the
shim to send, so unit tests and the simulator drive it directly.
"""

from __future__ import annotations

import dataclasses
import logging

from quadrant_app import ofbuild
from quadrant_app.topology import Topology

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class SwitchState:
    name: str
    dpid: int
    connected_since: float | None = None


class Core:
    def __init__(self, topology: Topology):
        self.topology = topology
        self.switches = {s.dpid: SwitchState(s.name, s.dpid) for s in topology.switches}

    def datapath_up(self, dpid: int, now: float) -> list:
        """A switch connected (features reply seen): install its base pipeline."""
        state = self.switches.get(dpid)
        if state is None:
            LOG.warning("switch %016x is not in topology %s; ignoring it", dpid, self.topology.name)
            return []
        state.connected_since = now
        LOG.info("switch %s (dpid %016x) connected", state.name, dpid)
        switch = self.topology.switch(state.name)
        return [(dpid, msg) for msg in ofbuild.base_pipeline(switch)]

    def datapath_down(self, dpid: int, now: float) -> list:
        state = self.switches.get(dpid)
        if state is not None and state.connected_since is not None:
            LOG.info(
                "switch %s (dpid %016x) disconnected after %.1f s",
                state.name,
                dpid,
                now - state.connected_since,
            )
            state.connected_since = None
        return []
