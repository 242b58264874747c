"""Offline network-latency profile: a worker's throughput -> p99 network latency.

The scaling estimate (:mod:`quadrant_app.scaling`) adds to an instance's
processing time the network transmission latency at its worker's current
throughput: switch to VF, through the NIC's L2 switch, and back.  That part
is not measured online; it is profiled once per kind of worker (or lab) with
``tools/profile_network.py`` and stored as a JSON file::

    {
      "format": "quadrant-network-profile/1",
      "source": "measured",            # or "model"
      "path": "veth qx-pn-a -> qx-pn-b",
      "packet_bytes": 1024,
      "points": [{"gbps": 0.0, "p99_us": 21.4}, {"gbps": 1.0, "p99_us": 25.0}]
    }

``points`` is sorted by strictly increasing ``gbps`` (the worker uplink's
offered throughput, Gbit/s) and gives the p99 one-way latency in
microseconds measured at that throughput.  Between points the latency is
interpolated linearly; beyond the last point it is extrapolated with the last
segment's slope (never below the last value), so an estimate never
undershoots by clamping.  Pure: no I/O except :func:`load_profile`.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math

FORMAT = "quadrant-network-profile/1"
SOURCES = ("measured", "model")


class ProfileError(ValueError):
    """A profile that is wrong, with the field and the reason."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class NetworkProfile:
    gbps: tuple[float, ...]
    p99_us: tuple[float, ...]
    source: str = "measured"
    path: str = ""
    packet_bytes: int = 1024

    def latency_us(self, gbps: float) -> float:
        """p99 network latency (µs) at a worker throughput of ``gbps``."""
        xs, ys = self.gbps, self.p99_us
        if gbps <= xs[0] or len(xs) == 1:
            return ys[0] if gbps <= xs[0] else ys[-1]
        i = bisect.bisect_right(xs, gbps)
        if i >= len(xs):
            slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
            return ys[-1] + slope * (gbps - xs[-1])
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (gbps - x0) / (x1 - x0)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "source": self.source,
            "path": self.path,
            "packet_bytes": self.packet_bytes,
            "points": [
                {"gbps": x, "p99_us": y} for x, y in zip(self.gbps, self.p99_us, strict=True)
            ],
        }


def _number(value, field: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(field, f"must be a number, not {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ProfileError(field, f"must be a finite number >= {minimum}, not {value!r}")
    return float(value)


def parse_profile(obj) -> NetworkProfile:
    """Validate a decoded profile completely, or raise :class:`ProfileError`."""
    if not isinstance(obj, dict):
        raise ProfileError("profile", "must be a JSON object")
    if obj.get("format") != FORMAT:
        raise ProfileError("format", f"must be {FORMAT!r}, not {obj.get('format')!r}")
    unknown = set(obj) - {"format", "source", "path", "packet_bytes", "points", "meta"}
    if unknown:
        raise ProfileError(sorted(unknown)[0], "unknown field")
    source = obj.get("source", "measured")
    if source not in SOURCES:
        raise ProfileError("source", f"must be one of {', '.join(SOURCES)}, not {source!r}")
    path = obj.get("path", "")
    if not isinstance(path, str):
        raise ProfileError("path", "must be a string")
    size = obj.get("packet_bytes", 1024)
    if isinstance(size, bool) or not isinstance(size, int) or not 60 <= size <= 9216:
        raise ProfileError("packet_bytes", f"must be an integer in 60..9216, not {size!r}")
    points = obj.get("points")
    if not isinstance(points, list) or not points:
        raise ProfileError("points", "must be a non-empty list")
    xs, ys = [], []
    for n, p in enumerate(points):
        where = f"points[{n}]"
        if not isinstance(p, dict) or set(p) != {"gbps", "p99_us"}:
            raise ProfileError(where, "must be an object with exactly gbps and p99_us")
        x = _number(p["gbps"], f"{where}.gbps")
        y = _number(p["p99_us"], f"{where}.p99_us")
        if xs and x <= xs[-1]:
            raise ProfileError(f"{where}.gbps", f"must be above the previous point's {xs[-1]}")
        xs.append(x)
        ys.append(y)
    return NetworkProfile(tuple(xs), tuple(ys), source, path, size)


def load_profile(path: str) -> NetworkProfile:
    """Read and validate a profile file; errors name the file and the field."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        raise ProfileError(path, f"not JSON: {exc}") from None
    try:
        return parse_profile(obj)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc.field}", exc.reason) from None
