"""The controller core's NAT side: which instance a packet to a NAT's external
address goes to, and the records of NAT connections moved between instances
(docs/state.rst, *What the controller does for a NAT* and *Moving NAT flows*).

:class:`NatSteering` is a part of :class:`quadrant_app.core.Core` (its base
class), kept here so that the core's packet-in and migration paths read as
the general case; it uses the core's ``instances``, ``chains``, ``flows`` and
``nat_moves`` (quadrant_app/natmoves.py) and does no I/O.
"""

from __future__ import annotations

from quadrant_app import flowkey, natpools
from quadrant_app.flows import FlowRecord
from quadrant_app.ingress import Chain, Instance


class NatSteering:
    def nat_outbound(self, rec) -> bool:
        """Is flow ``rec`` a NAT instance's outbound flow (the one a move names)?"""
        inst = self.instances.by_id.get(rec.instance_id)
        return (
            inst is not None
            and inst.nat_slot is not None
            and self.instances.nat_owner.get(rec.key.dst) is None
            and not self.nat_moves.is_reply(rec.dpid, rec.key)
        )

    def _nat_reply(self, rec: FlowRecord, rkey, src: Instance, now) -> FlowRecord:
        """The reply record of NAT connection ``rec`` (on ``src``; made if none yet),
        remembered as moved: its packet-ins follow ``rec``'s instance."""
        rrec = self.flows.get(rec.dpid, rkey)
        if rrec is None:
            rrec = self.flows.add(rec.dpid, rkey, rec.chain_id, src.id, now)
            src.flows += 1
            self.chains.by_id[rec.chain_id].flows += 1
        self.nat_moves.moved(rec.dpid, rec.key, rkey)
        return rrec

    def nat_address(self, inst: Instance) -> str | None:
        """The external address ``inst``'s NAT owns (None: it has no NAT slot)."""
        chain = self.chains.by_id.get(inst.chain_id)
        if chain is None or inst.nat_slot is None:
            return None
        return natpools.slots(chain.spec)[inst.nat_slot]["address"]

    def _nat_send_home(self, inst: Instance) -> None:
        """``inst`` is going: the NAT connections moved to it go home (natmoves.py)."""
        if self.nat_moves:
            recs = [(r.dpid, r.key) for r in self.flows.of_instance(inst.id)]
            self.instances.agent_requests += self.nat_moves.send_home(
                recs, self.instances.nat_owner, inst.id
            )

    def _nat_moved_owner(self, dpid, key) -> Instance | None:
        """A moved NAT connection's reply: the instance its outbound flow is on."""
        out = self.nat_moves.outbound(dpid, key)
        rec = self.flows.get(dpid, out) if out is not None else None
        return self.instances.by_id.get(rec.instance_id) if rec is not None else None

    def _nat_vacant(self, key) -> Chain | None:
        """The chain whose NAT has ``key``'s destination as an external address that no
        instance holds now (its instance failed or went; the orchestrator prepares the
        next): a packet to it is held for that one, bounded as new flows are.  A
        default rule instead would blackhole the connection's replies for the rule's
        idle time, past the moment the successor restored its mapping."""
        if not self.chains.nat_addresses or key.eth_type != flowkey.ETH_IPV4:
            return None
        chain = self.chains.nat_addresses.get(key.dst)
        if chain is None or key.dst in self.instances.nat_owner:
            return None
        return chain

    def _nat_owner(self, key, attach=False) -> Instance | None:
        """The instance whose NAT owns ``key``'s destination as an external address;
        ``attach``: from the warm pool if it is there (a successor that restored the
        address's mappings: the replies to them are its to translate)."""
        if not self.instances.nat_owner or key.eth_type != flowkey.ETH_IPV4:
            return None
        inst = self.instances.nat_owner.get(key.dst)
        if attach and inst is not None and not inst.attached:
            self.instances.attach_from_pool(inst)
        return inst
