"""Every metric the controller exports, declared here; Prometheus text format.

The packet-in path only does ``counter.value += 1`` and one histogram
``observe`` (a bisect), so metrics cost well under a microsecond per setup.
Gauges that describe state (flows per chain, held packets...) are not kept up
to date on the fast path; :meth:`Metrics.render` asks the core for them at
scrape time.  Exposed at ``GET /metrics`` (docs/controller.rst lists them).
"""

from __future__ import annotations

import bisect

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Counter:
    __slots__ = ("name", "help", "value")
    kind = "counter"

    def __init__(self, name: str, help: str):
        self.name, self.help, self.value = name, help, 0

    def samples(self):
        yield self.name, {}, self.value


class LabeledCounter:
    __slots__ = ("name", "help", "label", "values")
    kind = "counter"

    def __init__(self, name: str, help: str, label: str):
        self.name, self.help, self.label, self.values = name, help, label, {}

    def inc(self, label_value: str, n: int = 1) -> None:
        self.values[label_value] = self.values.get(label_value, 0) + n

    def samples(self):
        for v, n in sorted(self.values.items()):
            yield self.name, {self.label: v}, n


class Histogram:
    __slots__ = ("name", "help", "bounds", "counts", "sum", "count")
    kind = "histogram"

    def __init__(self, name: str, help: str, bounds):
        self.name, self.help = name, help
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self):
        cum = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cum += n
            yield self.name + "_bucket", {"le": _num(bound)}, cum
        yield self.name + "_bucket", {"le": "+Inf"}, self.count
        yield self.name + "_sum", {}, self.sum
        yield self.name + "_count", {}, self.count


class Gauge:
    """A gauge whose samples are computed at scrape time by ``collect()``."""

    __slots__ = ("name", "help", "collect")
    kind = "gauge"

    def __init__(self, name: str, help: str, collect=None):
        self.name, self.help, self.collect = name, help, collect

    def samples(self):
        for labels, value in self.collect() if self.collect else ():
            yield self.name, labels, value


SETUP_BUCKETS_S = (
    10e-6, 20e-6, 30e-6, 50e-6, 75e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3, 20e-3, 100e-3,
)  # fmt: skip


class Metrics:
    """The controller's metrics.  One object per core (tests get fresh ones)."""

    def __init__(self):
        self.packet_ins = Counter("quadrant_packet_ins_total", "Packet-ins handled.")
        self.flow_setups = Counter(
            "quadrant_flow_setups_total", "New flows steered to a chain instance."
        )
        self.setup_seconds = Histogram(
            "quadrant_flow_setup_seconds",
            "Controller time from packet-in to the flow-mod and packet-out being queued.",
            SETUP_BUCKETS_S,
        )
        self.repeat_packet_ins = Counter(
            "quadrant_repeat_packet_ins_total",
            "Packet-ins of flows already assigned (rule not yet in place); sent to the same "
            "instance.",
        )
        self.unmatched_flows = Counter(
            "quadrant_unmatched_flows_total",
            "New flows no chain's filter takes; given the topology's default action.",
        )
        self.reply_flows = LabeledCounter(
            "quadrant_reply_flows_total",
            "Reply directions of known flows: path=chain (a bidirectional chain's instance), "
            "direct (delivered to their host, bypassing a one-way chain) or nat (towards a "
            "NAT's external address: the instance owning it).",
            "path",
        )
        self.migrated_flows = Counter(
            "quadrant_migrated_flows_total",
            "Flow rules moved from one instance to another (scaling, reclaim).",
        )
        self.drain_failures = Counter(
            "quadrant_drain_failures_total",
            "Flow moves whose old instance did not confirm it had emitted their packets "
            "(agent error or drain_timeout); the flows moved all the same.",
        )
        self.worker_failures = LabeledCounter(
            "quadrant_worker_failures_total",
            "Workers declared failed and failed over: reason=heartbeats (stopped) or "
            "link (its switch port went down).",
            "reason",
        )
        self.nf_failures = LabeledCounter(
            "quadrant_nf_failures_total",
            "Chain instances an agent reported failed and the controller failed over: "
            "cause=exited (an NF process died), stalled (an NF took no packet while "
            "packets waited for it), watchdog (an NF held its core), thirdparty.",
            "cause",
        )
        self.persist_failures = Counter(
            "quadrant_persist_failures_total",
            "Times the controller's books could not be written to state_redis (retried "
            "every tick).",
        )
        self.scale_outs = Counter(
            "quadrant_scale_outs_total",
            "Warm-pool instances the scaling loop attached ahead of new flows.",
        )
        self.reclaims = LabeledCounter(
            "quadrant_reclaims_total",
            "Instances with no flows left taken out of service: kept=warm (back to the "
            "pool) or torn down.",
            "kept",
        )
        self.scaling_shortage_pps = Counter(
            "quadrant_scaling_shortage_pps_total",
            "Rate (pps, summed over scaling rounds) that hot instances could not shed "
            "for lack of an instance to take it.",
        )
        self.non_ip_packet_ins = Counter(
            "quadrant_non_ip_packet_ins_total", "Packet-ins that were not IPv4/IPv6 (ignored)."
        )
        self.pool_attaches = Counter(
            "quadrant_pool_attaches_total", "Warm-pool instances attached for lack of a candidate."
        )
        self.shortages = Counter(
            "quadrant_instance_shortages_total",
            "Times a chain ran out of instances (no candidate, empty warm pool).",
        )
        self.held_dropped = LabeledCounter(
            "quadrant_held_dropped_total",
            "Packets of unassigned flows dropped: reason=full (hold queue full), "
            "timeout (waited longer than hold_timeout), chain_deleted, instance_gone.",
            "reason",
        )
        self.ordered_releases = LabeledCounter(
            "quadrant_ordered_releases_total",
            "Releases of held flows to a new instance: result=started, held (its agent "
            "holds them: in order), refused (no hold: sent plainly, may reorder).",
            "result",
        )
        self.marked_packet_outs = Counter(
            "quadrant_marked_packet_outs_total",
            "Packet-outs with the marker tag: held flows' packets during an ordered release.",
        )
        self.held_released = Counter(
            "quadrant_held_released_total", "Held packets sent on once an instance was available."
        )
        self.flow_removed = LabeledCounter(
            "quadrant_flow_removed_total", "Per-flow rules the switch removed, by reason.", "reason"
        )
        self.resync_installed = Counter(
            "quadrant_resync_installed_total",
            "Per-flow rules put back on a switch: at its (re)connection, from the books, and "
            "after the re-sync, those its flow stats lacked.",
        )
        self.resync_adopted = Counter(
            "quadrant_resync_adopted_total",
            "Per-flow rules found on a switch and adopted (controller restart).",
        )
        self.resync_deleted = Counter(
            "quadrant_resync_deleted_total",
            "Per-flow rules found on a switch that steer to no known instance; deleted.",
        )
        self.switch_errors = Counter(
            "quadrant_switch_errors_total", "OpenFlow error messages received from switches."
        )
        self.chain_flows = Gauge("quadrant_chain_flows", "Live flows per chain.")
        self.instance_flows = Gauge("quadrant_instance_flows", "Live flows per chain instance.")
        self.held_packets = Gauge("quadrant_held_packets", "Packets held per chain.")
        self.default_packets = Gauge(
            "quadrant_default_packets",
            "Packets that got the topology's default action (base entries' counters, from the "
            "last flow stats), per switch.",
        )
        self.switches_connected = Gauge("quadrant_switch_connected", "1 if the switch is up.")

    def all(self):
        return [v for v in vars(self).values() if hasattr(v, "samples")]

    def render(self) -> str:
        lines = []
        for m in self.all():
            lines.append(f"# HELP {m.name} {m.help}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            for name, labels, value in m.samples():
                if labels:
                    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                    lines.append(f"{name}{{{inner}}} {_num(value)}")
                else:
                    lines.append(f"{name} {_num(value)}")
        return "\n".join(lines) + "\n"


def _num(value) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
