"""The ``thirdparty`` NF type's config: an unmodified program in a network namespace.

Pure: no I/O.  Used by the NF runtime's schema (:mod:`worker.nf_config`), the
chain instance (:mod:`worker.chain`) and the controller's chain validator
(:mod:`quadrant_app.chains`), so a spec is refused with the same field and
reason wherever it comes in.  Format in docs/thirdparty.rst::

    {"type": "thirdparty", "config": {
        "command": ["nft", "monitor"],                      # runs for the NF's life
        "setup": [["nft", "-f", "firewall.nft"]],           # run once, in order, must exit 0
        "files": {"firewall.nft": "table inet fw { ... }"},  # written to the NF's directory
        "interfaces": {"in": {"name": "eth0"}, "out": {"name": "eth1"}},
        "behaviour": ["may_drop"],
        "hold_us": 1000, "stall_ms": 500}}

Also :class:`Health`: what the runtime concludes from a bridge's counters over time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from worker.liveness import Stall
from worker.nf_errors import NFConfigError

TYPE = "thirdparty"
BEHAVIOURS = ("inline", "may_drop", "may_generate")
KEYS = {"command", "image", "setup", "files", "interfaces", "behaviour", "deliver",
        "hold_us", "stall_ms"}  # fmt: skip
IF_KEYS = {"name", "mac"}
DELIVER = ("as_is", "to_nf_mac")
IFNAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ 16 with the NUL
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ARGS, MAX_ARG, MAX_SETUP, MAX_FILES, MAX_FILE = 64, 4096, 32, 16, 256 * 1024


@dataclass(frozen=True)
class Interface:
    name: str  # inside the NF's namespace
    mac: str | None  # None: the runtime derives one (locally administered)


@dataclass(frozen=True)
class ThirdPartyConfig:
    command: tuple[str, ...]
    setup: tuple[tuple[str, ...], ...]
    files: tuple[tuple[str, str], ...]
    to_nf: Interface  # the chain's packets go in here
    from_nf: Interface  # and are expected back out of here (may be the same interface)
    behaviour: frozenset[str]
    deliver: str
    hold_us: int
    stall_ms: int

    @property
    def one_interface(self) -> bool:
        return self.to_nf.name == self.from_nf.name

    @property
    def may_drop(self) -> bool:
        return "may_drop" in self.behaviour

    @property
    def may_generate(self) -> bool:
        return "may_generate" in self.behaviour


def _argv(value, fieldname: str) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value or len(value) > MAX_ARGS
            or not all(isinstance(a, str) and 0 < len(a) <= MAX_ARG for a in value)):  # fmt: skip
        raise NFConfigError(
            fieldname,
            f"must be a non-empty list of at most {MAX_ARGS} non-empty strings "
            f"(an argv, no shell), got {value!r}"[:300],
        )
    if "\0" in "".join(value):
        raise NFConfigError(fieldname, "must not contain NUL characters")
    return tuple(value)


def _interface(value, fieldname: str) -> Interface:
    if not isinstance(value, Mapping):
        raise NFConfigError(fieldname, f"must be a mapping {{name, mac}}, got {value!r}")
    unknown = sorted(set(value) - IF_KEYS)
    if unknown:
        raise NFConfigError(f"{fieldname}.{unknown[0]}", "unknown option (known: name, mac)")
    name = value.get("name")
    if not isinstance(name, str) or not IFNAME_RE.match(name) or name == "lo":
        raise NFConfigError(
            f"{fieldname}.name", f"must be an interface name (1-15 of A-Za-z0-9_.-), got {name!r}"
        )
    mac = value.get("mac")
    if mac is not None:
        if not isinstance(mac, str) or not MAC_RE.match(mac.lower()):
            raise NFConfigError(f"{fieldname}.mac", f"not a MAC address: {mac!r}")
        mac = mac.lower()
        if int(mac[:2], 16) & 1:
            raise NFConfigError(f"{fieldname}.mac", f"{mac} is a multicast address")
    return Interface(name, mac)


def _int(value, fieldname: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise NFConfigError(fieldname, f"must be an integer {lo}..{hi}, got {value!r}")
    return value


def parse_thirdparty(config, prefix: str = "nf.config") -> ThirdPartyConfig:
    """Validate a ``thirdparty`` NF's ``config``; errors name ``prefix.<field>``."""
    if not isinstance(config, Mapping):
        raise NFConfigError(prefix, f"must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise NFConfigError(
            f"{prefix}.{unknown[0]}", f"unknown option (known: {', '.join(sorted(KEYS))})"
        )
    if "image" in config:
        raise NFConfigError(
            f"{prefix}.image", "container images are not supported yet: give 'command' (an argv)"
        )
    if "command" not in config:
        raise NFConfigError(f"{prefix}.command", "missing (the NF's program, an argv)")
    command = _argv(config["command"], f"{prefix}.command")
    setup_raw = config.get("setup", [])
    if not isinstance(setup_raw, list) or len(setup_raw) > MAX_SETUP:
        raise NFConfigError(f"{prefix}.setup", f"must be a list of at most {MAX_SETUP} argvs")
    setup = tuple(_argv(a, f"{prefix}.setup[{j}]") for j, a in enumerate(setup_raw))
    files_raw = config.get("files", {})
    if not isinstance(files_raw, Mapping) or len(files_raw) > MAX_FILES:
        raise NFConfigError(
            f"{prefix}.files", f"must be a mapping of at most {MAX_FILES} file name -> text"
        )
    files = []
    for fname, text in files_raw.items():
        where = f"{prefix}.files.{fname}"
        if not isinstance(fname, str) or not FILE_RE.match(fname):
            raise NFConfigError(where, "a file name is 1-64 of A-Za-z0-9_.- (no directories)")
        if not isinstance(text, str) or len(text.encode()) > MAX_FILE:
            raise NFConfigError(where, f"must be text of at most {MAX_FILE} bytes")
        files.append((fname, text))

    ifs = config.get("interfaces")
    if not isinstance(ifs, Mapping):
        raise NFConfigError(f"{prefix}.interfaces", "missing: {in: {name}, out: {name}}")
    unknown = sorted(set(ifs) - {"in", "out"})
    if unknown:
        raise NFConfigError(f"{prefix}.interfaces.{unknown[0]}", "unknown (known: in, out)")
    if "in" not in ifs:
        raise NFConfigError(f"{prefix}.interfaces.in", "missing")
    to_nf = _interface(ifs["in"], f"{prefix}.interfaces.in")
    from_nf = _interface(ifs["out"], f"{prefix}.interfaces.out") if "out" in ifs else to_nf
    if from_nf.name == to_nf.name and from_nf != to_nf:
        raise NFConfigError(
            f"{prefix}.interfaces.out", f"names interface {to_nf.name!r} as in does, another MAC"
        )
    if to_nf.mac and from_nf.mac == to_nf.mac and from_nf.name != to_nf.name:
        raise NFConfigError(f"{prefix}.interfaces.out.mac", f"{to_nf.mac} is in's MAC too")

    raw_b = config.get("behaviour", ["inline"])
    if isinstance(raw_b, str):
        raw_b = [raw_b]
    if not isinstance(raw_b, list) or not raw_b or not all(b in BEHAVIOURS for b in raw_b):
        raise NFConfigError(
            f"{prefix}.behaviour", f"must be a list of {', '.join(BEHAVIOURS)}, got {raw_b!r}"
        )
    behaviour = frozenset(raw_b)
    if "inline" in behaviour and len(behaviour) > 1:
        raise NFConfigError(
            f"{prefix}.behaviour",
            "inline (every packet comes back, one for one) excludes may_drop and may_generate",
        )
    deliver = config.get("deliver", "as_is")
    if deliver not in DELIVER:
        raise NFConfigError(f"{prefix}.deliver", f"must be one of {', '.join(DELIVER)}")
    hold_us = _int(config.get("hold_us", 1000), f"{prefix}.hold_us", 10, 1_000_000)
    stall_ms = _int(config.get("stall_ms", 500), f"{prefix}.stall_ms", 10, 600_000)
    return ThirdPartyConfig(
        command=command,
        setup=setup,
        files=tuple(files),
        to_nf=to_nf,
        from_nf=from_nf,
        behaviour=behaviour,
        deliver=deliver,
        hold_us=hold_us,
        stall_ms=stall_ms,
    )


# -- health --------------------------------------------------------------------


class Health:
    """A third-party NF's status from its bridge counters, sampled over time (pure).

    ``failed`` (for good) once its program exited, or, for an ``inline`` NF, once
    frames went in for ``stall_ms`` while none came out.  A ``may_drop`` NF that
    says nothing for that long is only ``silent`` (a firewall may drop all).
    """

    def __init__(self, cfg: ThirdPartyConfig):
        self.cfg = cfg
        self.state = "ok"
        self.reason = ""
        # the stall rule native NFs are judged by too (worker.liveness): frames in, none out
        self._stall = Stall(cfg.stall_ms / 1000)
        self._out: int | None = None

    def update(self, counters: Mapping, exit_code: int | None, now: float) -> str:
        if self.state == "failed":
            return self.state
        if exit_code is not None:
            return self._fail(f"its program exited with status {exit_code}")
        to_nf, from_nf = int(counters["to_nf"]), int(counters["from_nf"])
        moved, self._out = from_nf != self._out, from_nf
        stalled = self._stall.update(from_nf, to_nf, None, now)
        if moved:
            self.state = "ok"  # output moved: all is well
        elif stalled is not None:  # frames went in for stall_ms and nothing came out
            if not self.cfg.may_drop:
                return self._fail(
                    f"{self._stall.waiting} frames in, none out for {self.cfg.stall_ms} ms"
                )
            self.state = "silent"
        return self.state

    def _fail(self, reason: str) -> str:
        self.state, self.reason = "failed", reason
        return self.state
