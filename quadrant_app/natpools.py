"""NAT external addresses: which instance owns which, and steering replies to it.

A chain with a ``nat`` NF lists its external addresses (``config.external``,
each ``{address, ports}``).  Two instances of the chain must never hand out
the same external port, and a reply to an external address must reach the
instance whose NAT holds the mapping.  So each external entry is one *slot*:
an instance of the chain takes a free slot when it is prepared and its NAT
is configured with that entry alone; every packet-in addressed to a slot's
address (the first packet of a reply flow) is steered to the instance holding
the slot.  A chain therefore runs at most as many instances as it has
external addresses; give it more addresses to let it scale out further.

A connection can still move to another instance of the chain (docs/state.rst,
*Moving NAT flows*): it keeps its mapping, its replies (to the old instance's
address) are steered to the new instance by a per-flow rule
(:func:`reply_key`), and each NAT also knows the chain's other addresses
(``adopt``) so that it translates the replies of a connection moved to it.

Pure functions over plain data (chain specs, instances); the orchestrator
and the core call them.
"""

from __future__ import annotations

import ipaddress
import math

from quadrant_app.chains import ChainSpec, SpecError
from quadrant_app.flowkey import FlowKey

NAT = "nat"
HANDOVER_MAX = 64  # flows per nat_handover call (an agent's flow list limit)
MOVE_MAX = 32  # NAT connections per move: both directions held, 64 flows per hold


def nat_position(spec: ChainSpec) -> int | None:
    """Where the chain's NAT is (None: it has none)."""
    return next((i for i, nf in enumerate(spec.nfs) if nf.type == NAT), None)


def slots(spec: ChainSpec) -> list[dict]:
    """The NAT's external entries, one per slot (empty without a NAT)."""
    pos = nat_position(spec)
    if pos is None:
        return []
    return list(spec.nfs[pos].config.get("external") or [])


def slot_address(entry: dict) -> int:
    return int(ipaddress.IPv4Address(entry["address"]))


def addresses(spec: ChainSpec) -> list[int]:
    return [slot_address(e) for e in slots(spec)]


def check(spec: ChainSpec, others: list[ChainSpec]) -> None:
    """Refuse a chain whose NAT addresses are malformed, repeat, or another chain's."""
    pos = nat_position(spec)
    if pos is None:
        return
    if sum(1 for nf in spec.nfs if nf.type == NAT) > 1:
        raise SpecError("nfs", "a chain has at most one nat NF")
    where = f"nfs[{pos}].config.external"
    ext = spec.nfs[pos].config.get("external")
    if not isinstance(ext, list) or not ext:
        raise SpecError(where, "must be a non-empty list of {address, ports}")
    seen = set()
    for i, e in enumerate(ext):
        try:
            addr = slot_address(e)
        except (TypeError, KeyError, ValueError) as exc:
            raise SpecError(f"{where}[{i}].address", f"not an IPv4 address: {exc}") from None
        if addr in seen:
            raise SpecError(f"{where}[{i}].address", f"{e['address']} is given twice")
        seen.add(addr)
    for other in others:
        common = seen & set(addresses(other))
        if common:
            a = ipaddress.IPv4Address(min(common))
            raise SpecError(where, f"{a} is an external address of chain {other.name!r}")


def free_slot(spec: ChainSpec, used: set[int]) -> int | None:
    """The lowest slot no instance (live or being prepared) holds; None if all are."""
    return next((k for k in range(len(slots(spec))) if k not in used), None)


def instance_nfs(spec: ChainSpec, slot: int | None) -> list[dict]:
    """The chain's NFs as an instance holding ``slot`` runs them: its NAT owns that
    slot's external entry only, and may adopt connections moved to it from the
    other slots' addresses (``adopt``)."""
    out = [{"type": nf.type, "config": nf.config} for nf in spec.nfs]
    pos = nat_position(spec)
    if pos is not None and slot is not None:
        cfg = dict(spec.nfs[pos].config)
        entries = slots(spec)
        cfg["external"] = [entries[slot]]
        cfg["adopt"] = [e["address"] for k, e in enumerate(entries) if k != slot]
        out[pos] = {"type": NAT, "config": cfg}
    return out


def rule_idle_s(spec: ChainSpec, proto: int, default: int) -> int:
    """The per-flow rules' idle timeout for ``spec``'s flows of ``proto``: at least the
    NAT's own idle timeout, so that a quiet connection keeps its instance (a rule that
    idled out first would re-assign its next packet as a new flow, to any instance,
    which would not end it)."""
    pos = nat_position(spec)
    if pos is None or proto not in (6, 17):
        return default
    cfg = spec.nfs[pos].config
    nat = cfg.get("tcp_idle_s", 7440) if proto == 6 else cfg.get("udp_idle_s", 300)
    try:
        return int(min(65535, max(default, math.ceil(nat))))
    except (TypeError, ValueError):  # the NAT refuses it at prepare; keep the default
        return default


def reply_key(outbound: FlowKey, address: int, port: int) -> FlowKey:
    """The key of the replies of NATed connection ``outbound`` whose mapping is
    ``(address, port)``: from the remote end to the external endpoint."""
    return FlowKey(outbound.eth_type, outbound.proto, outbound.dst, address, outbound.dport, port)
