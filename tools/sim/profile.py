"""Service-time profile of the simulated chains: per-NF cycles, context switches, batches.

The file (``profiles/chains.json``, format ``quadrant-sim-profile/1``) gives
the core clock, the cost of one context switch between NF processes, the
per-batch poll cost, the framework's per-packet cost (rx/tx, and the copy into
the chain's packet buffer for chains of two or more NFs), and per NF
``cycles + cycles_per_byte * packet_bytes``.  A chain may carry its own
measured ``overhead`` (``cycles``, ``cycles_per_byte``, ``batch_cycles``):
everything outside its NFs, per packet and per batch, as measured on the
running chain; it then replaces the framework, poll and switch figures for
that chain.  A chain may also carry ``nf_cycles``: per NF, the figures
measured inside that chain, used for it instead of the shared ``nfs`` entry
(the same NF costs differently next to different neighbours: caches, rule
sets).  Its ``sources`` object says where every number comes from.
"""

from __future__ import annotations

import dataclasses
import json
import os

FORMAT = "quadrant-sim-profile/1"
DEFAULT = os.path.join(os.path.dirname(__file__), "profiles", "chains.json")
NETWORK_DEFAULT = os.path.join(os.path.dirname(__file__), "profiles", "network-model-100g.json")

# The paper's three canonical chains, by the names the benchmark prints.
CANONICAL = ("chain1", "chain2", "chain3")


class ProfileError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class ChainProfile:
    name: str
    nfs: tuple[str, ...]
    cpu_hz: float
    batch_size: int
    batch_cycles: float  # per non-empty batch: poll + one context switch per NF (2+ NFs)
    base_cycles: float  # per packet, size-independent
    byte_cycles: float  # per packet byte

    def cycles(self, size_bytes):
        """Per-packet cycles at ``size_bytes`` (a number or a numpy array)."""
        return self.base_cycles + self.byte_cycles * size_bytes

    def r_max(self, size_bytes: float) -> float:
        return self.cpu_hz / (self.cycles(size_bytes) + self.batch_cycles / self.batch_size)


def _num(obj, key, where):
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise ProfileError(f"{where}.{key}", f"must be a number >= 0, not {v!r}")
    return float(v)


def parse(obj) -> dict[str, ChainProfile]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ProfileError("format", f"must be {FORMAT!r}")
    hz = _num(obj, "cpu_hz", "profile")
    if hz <= 0:
        raise ProfileError("cpu_hz", "must be > 0")
    switch = _num(obj, "context_switch_us", "profile") * 1e-6 * hz
    poll = _num(obj, "poll_cycles_per_batch", "profile")
    fw = obj.get("framework") or {}
    rxtx = _num(fw, "rxtx_cycles", "framework")
    copy = _num(fw, "copy_cycles", "framework")
    copy_b = _num(fw, "copy_cycles_per_byte", "framework")
    nfs = obj.get("nfs")
    if not isinstance(nfs, dict):
        raise ProfileError("nfs", "must be an object of NF name -> cycles")
    chains = obj.get("chains")
    if not isinstance(chains, dict) or not chains:
        raise ProfileError("chains", "must be a non-empty object")
    out = {}
    for name, c in chains.items():
        where = f"chains.{name}"
        seq = c.get("nfs") if isinstance(c, dict) else None
        if not isinstance(seq, list) or not seq:
            raise ProfileError(f"{where}.nfs", "must be a non-empty list of NF names")
        over = c.get("overhead")
        if over is not None and not isinstance(over, dict):
            raise ProfileError(f"{where}.overhead", "must be an object")
        if over is None:
            base, per_byte = rxtx, 0.0
            if len(seq) > 1:
                base += copy
                per_byte += copy_b
            batch = poll + (len(seq) * switch if len(seq) > 1 else 0.0)
        else:  # measured on the running chain: replaces framework, poll and switches
            base = _num(over, "cycles", f"{where}.overhead")
            per_byte = _num(over, "cycles_per_byte", f"{where}.overhead")
            batch = _num(over, "batch_cycles", f"{where}.overhead")
        own = c.get("nf_cycles") or {}
        if not isinstance(own, dict):
            raise ProfileError(f"{where}.nf_cycles", "must be an object of NF name -> cycles")
        for n in own:
            if n not in seq:
                raise ProfileError(f"{where}.nf_cycles", f"NF {n!r} is not in the chain")
        for n in seq:
            if n in own:  # measured inside this chain: its figure, not the shared one
                fig, at = own[n], f"{where}.nf_cycles.{n}"
            elif n in nfs:
                fig, at = nfs[n], f"nfs.{n}"
            else:
                raise ProfileError(f"{where}.nfs", f"unknown NF {n!r} (not in nfs)")
            if not isinstance(fig, dict):
                raise ProfileError(at, "must be an object with cycles and cycles_per_byte")
            base += _num(fig, "cycles", at)
            per_byte += _num(fig, "cycles_per_byte", at)
        b = c.get("batch_size", 32)
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 1024:
            raise ProfileError(f"{where}.batch_size", f"must be an integer in 1..1024, not {b!r}")
        out[name] = ChainProfile(name, tuple(seq), hz, b, batch, base, per_byte)
    return out


def load(path: str = DEFAULT) -> dict[str, ChainProfile]:
    with open(path, encoding="utf-8") as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as exc:
            raise ProfileError(path, f"not JSON: {exc}") from None
    try:
        return parse(obj)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc.field}", str(exc)) from None
