"""The simulator's chain profile from a ``tools.bench.chain_isolation`` measurement.

``python -m tools.bench.chain_isolation --canonical-only --json PATH`` writes,
per canonical chain and frame size (64 and 1024 B), the chain's rate on one
core (``kpps``) and each NF's own cycle counter per packet inside the running
chain (``nf_cycles``).  :func:`fit_chain` turns one chain's two rows into the
profile's figures (``tools/sim/profiles/chains.json``) the way they were
fitted for every chain:

* per NF: ``cycles + cycles_per_byte * bytes`` through the 64 and 1024 B
  points; where the 1024 B figure is not above the 64 B one, the per-byte
  cost is 0 and ``cycles`` the mean of the two (noise, not a negative cost);
* per chain, everything outside its NFs: the chain's cycles per packet
  (``tsc_hz / rate``) minus its NFs' and minus the per-batch cost spread over
  the batch (``batch_cycles / batch_size``), fitted over the two sizes the
  same way.  ``batch_cycles`` cannot come from one batch size; it is NFs x
  the in-chain switch fitted from chain1 at batch 32 against batch 128
  (``sources.overhead`` in the profile).
"""

from __future__ import annotations

import json

SIZES = (64, 1024)


def fit_line(at64: float, at1024: float) -> tuple[float, float]:
    """``(cycles, cycles_per_byte)`` through the two points, per-byte cost never < 0."""
    slope = (at1024 - at64) / (SIZES[1] - SIZES[0])
    if slope <= 0:
        return (at64 + at1024) / 2.0, 0.0
    return at64 - slope * SIZES[0], slope


def fit_chain(measured: dict, chain: str, batch_cycles: float) -> dict:
    """The profile's ``nf_cycles`` and ``overhead`` of ``chain`` from a chain_isolation JSON."""
    try:
        rows = measured["canonical"][chain]
        hz = float(measured["tsc_hz"])
        batch = int(measured["batch_size"])
        r64, r1k = rows[str(SIZES[0])], rows[str(SIZES[1])]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"canonical.{chain}: missing or bad field {exc}") from None
    nfs = list(r64["nfs"])
    if list(r1k["nfs"]) != nfs or len(r64["nf_cycles"]) != len(nfs):
        raise ValueError(f"canonical.{chain}: the two sizes list different NFs")
    nf_fit = {}
    for n, a, b in zip(nfs, r64["nf_cycles"], r1k["nf_cycles"], strict=True):
        c, pb = fit_line(float(a), float(b))
        nf_fit[n] = {"cycles": round(c, 2), "cycles_per_byte": round(pb, 5)}
    per_batch = batch_cycles / batch
    rest = []
    for size, row in ((SIZES[0], r64), (SIZES[1], r1k)):
        total = hz / (float(row["kpps"]) * 1e3)  # unrounded, unlike cycles_per_pkt
        nf = sum(f["cycles"] + f["cycles_per_byte"] * size for f in nf_fit.values())
        rest.append(total - nf - per_batch)
    c, pb = fit_line(*rest)
    return {
        "nfs": nfs,
        "batch_size": batch,
        "nf_cycles": nf_fit,
        "overhead": {
            "cycles": round(c, 1),
            "cycles_per_byte": round(pb, 4),
            "batch_cycles": batch_cycles,
        },
    }


def main(args) -> int:
    with open(args.measured, encoding="utf-8") as f:
        measured = json.load(f)
    print(json.dumps(fit_chain(measured, args.chain, args.batch_cycles), indent=2))
    return 0
