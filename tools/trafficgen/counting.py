"""Per-flow accounting at the sink, and flow sets for the sender: pure logic."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import random

from tools.trafficgen.frames import MIN_FRAME, FlowSpec, Parsed

MAX_LATENCY_SAMPLES = 100_000
GAPS_KEPT = 4  # per flow, its longest silences
EVENTS_KEPT = 8  # per flow: its first late arrivals, jumps ahead and missing numbers


@dataclasses.dataclass
class FlowStats:
    received: int = 0  # distinct sequence numbers seen
    duplicates: int = 0
    reordered: int = 0  # arrived after a higher sequence number of the same flow
    max_seq: int = -1
    corrupted: int = 0
    vlans: set = dataclasses.field(default_factory=set)
    ttls: set = dataclasses.field(default_factory=set)
    dst_macs: set = dataclasses.field(default_factory=set)
    latencies_us: list = dataclasses.field(default_factory=list)
    # the longest silences between two arrivals (outages, as this flow saw them), each
    # (length, when it ended) on the receive clock (time.monotonic_ns: the same in every
    # namespace of the host), longest first
    last_ns: int = 0
    gaps: list = dataclasses.field(default_factory=list)
    # the first out-of-order arrivals, each (seq, the higher seq seen before it, rx_ns):
    # where in the flow, and when, the order broke
    late: list = dataclasses.field(default_factory=list)
    # the first jumps ahead, each (the next seq expected, the seq that came, rx_ns): when a
    # hole opened (filled later by a late packet, or one of the missing)
    jumps: list = dataclasses.field(default_factory=list)
    _seen: bytearray = dataclasses.field(default_factory=bytearray, repr=False)

    def missing(self, limit: int = EVENTS_KEPT) -> list[int]:
        """The first sequence numbers below the highest seen that never arrived."""
        out = []
        for byte, bits in enumerate(self._seen[: self.max_seq // 8 + 1]):
            if bits == 0xFF:
                continue  # all eight came: the usual byte, skipped whole
            for bit in range(8):
                seq = byte * 8 + bit
                if seq < self.max_seq and not bits & (1 << bit):
                    out.append(seq)
                    if len(out) == limit:
                        return out
        return out

    def add(self, p: Parsed, rx_ns: int) -> None:
        byte, bit = divmod(p.seq, 8)
        if byte >= len(self._seen):
            self._seen.extend(bytes(max(byte + 1 - len(self._seen), len(self._seen))))
        if self._seen[byte] & (1 << bit):
            self.duplicates += 1
            return
        self._seen[byte] |= 1 << bit
        self.received += 1
        gap = rx_ns - self.last_ns
        if self.last_ns and (len(self.gaps) < GAPS_KEPT or gap > self.gaps[-1][0]):
            self.gaps = sorted([*self.gaps, (gap, rx_ns)], reverse=True)[:GAPS_KEPT]
        self.last_ns = rx_ns
        if p.seq < self.max_seq:
            self.reordered += 1
            if len(self.late) < EVENTS_KEPT:
                self.late.append((p.seq, self.max_seq, rx_ns))
        else:
            if p.seq > self.max_seq + 1 and len(self.jumps) < EVENTS_KEPT:
                self.jumps.append((self.max_seq + 1, p.seq, rx_ns))
            self.max_seq = p.seq
        if not p.payload_ok:
            self.corrupted += 1
        self.vlans.add(p.vlan)
        self.ttls.add(p.ttl)
        self.dst_macs.add(p.dst_mac)
        if len(self.latencies_us) < MAX_LATENCY_SAMPLES:
            self.latencies_us.append((rx_ns - p.tx_ns) / 1000.0)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


class Sink:
    """Counts stamped packets per flow; ignores everything else (and counts that)."""

    def __init__(self):
        self.flows: dict[int, FlowStats] = {}
        self.foreign = 0
        self.socket_drops = 0  # set by the receiver: frames its socket had no room for

    def add(self, parsed: Parsed | None, rx_ns: int) -> None:
        if parsed is None:
            self.foreign += 1
            return
        stats = self.flows.get(parsed.flow_id)
        if stats is None:
            stats = self.flows[parsed.flow_id] = FlowStats()
        stats.add(parsed, rx_ns)

    def summary(self, sent: dict[int, int] | None = None) -> dict:
        """JSON-ready per-flow report; with the sender's counts, loss too."""
        flows = {}
        for fid, st in sorted(self.flows.items()):
            row = {
                "received": st.received,
                "duplicates": st.duplicates,
                "reordered": st.reordered,
                "last_seq": st.max_seq,  # the highest sequence number seen
                "corrupted": st.corrupted,
                "vlans": sorted(v for v in st.vlans if v is not None),
                "untagged": None in st.vlans,
                "ttls": sorted(st.ttls),
                "dst_macs": sorted(st.dst_macs),
                "latency_p50_us": percentile(st.latencies_us, 50),
                "latency_p99_us": percentile(st.latencies_us, 99),
                "max_gap_ms": round(st.gaps[0][0] / 1e6, 3) if st.gaps else 0.0,
                "gaps": [[round(g / 1e6, 3), end] for g, end in st.gaps],
                "late": [list(e) for e in st.late],
                "jumps": [list(e) for e in st.jumps],
                "missing": st.missing(),
            }
            if sent is not None:
                row["sent"] = sent.get(fid, 0)
                row["lost"] = row["sent"] - st.received
            flows[str(fid)] = row
        out = {"flows": flows, "foreign_packets": self.foreign, "socket_drops": self.socket_drops}
        if sent is not None:
            for fid, n in sent.items():
                if fid not in self.flows:
                    flows[str(fid)] = {"sent": n, "received": 0, "lost": n}
            out["sent"] = sum(sent.values())
            out["received"] = sum(st.received for st in self.flows.values())
            out["lost"] = out["sent"] - out["received"]
        return out


def make_flows(
    n: int,
    src: str,
    dst: str,
    total_pps: float,
    protos: tuple[str, ...] = ("udp", "tcp"),
    size_median: int = 1024,
    size_sigma: float = 0.35,
    seed: int = 1,
    first_port: int = 10000,
    dport: int = 80,
) -> list[FlowSpec]:
    """``n`` flows from addresses in ``src`` (a network or one address) to ``dst``.

    Frame sizes are log-normal with the given median, clipped to 78..1514;
    the rate is shared equally.  Deterministic for a seed.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    rng = random.Random(seed)
    net = ipaddress.ip_network(src if "/" in src else f"{src}/32", strict=False)
    hosts = [str(a) for a in (net.hosts() if net.num_addresses > 2 else [net.network_address])]
    flows = []
    for i in range(n):
        size = int(round(size_median * math.exp(rng.gauss(0, size_sigma))))
        flows.append(
            FlowSpec(
                flow_id=i,
                src_ip=hosts[i % len(hosts)] if len(hosts) > 1 else hosts[0],
                dst_ip=dst,
                proto=protos[i % len(protos)],
                sport=first_port + i,
                dport=dport,
                size=max(MIN_FRAME, min(1514, size)),
                pps=total_pps / n,
            )
        )
    return flows
