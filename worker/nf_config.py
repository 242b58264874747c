"""The NF runtime's config file (``quadrant-nf --config nf.yaml``): load, validate, EAL args.

Pure: no DPDK.  The format is documented in docs/dataplane.rst; every error is
an :class:`~worker.nf_errors.NFConfigError` naming the field and the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from worker.nf_errors import NFConfigError
from worker.nf_registry import NF_TYPES
from worker.thirdparty_spec import TYPE as THIRDPARTY
from worker.thirdparty_spec import parse_thirdparty

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
PCI_RE = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
VDEV_DRIVERS = ("net_af_packet", "net_pcap", "net_memif", "net_null", "net_ring", "net_tap")
HUGEPAGE_MOUNT = "/dev/hugepages"

TOP_KEYS = {"name", "core", "batch", "eal", "ports", "mempool", "nf", "stats", "run", "state"}
STATE_KEYS = {
    "store", "host", "port", "user", "password", "password_file", "prefix",
    "max_held", "cache_entries", "drain_s", "retry_s", "replay_bytes", "timeout_s",
}  # fmt: skip
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class PortSpec:
    kind: str  # "vdev" | "pci"
    devargs: str  # the full --vdev / -a argument
    name: str  # the ethdev name DPDK gives the port


@dataclass(frozen=True)
class NFSpec:
    type: str
    config: dict
    cls: str | None  # "module:Class" for native/python NFs


@dataclass(frozen=True)
class StateSpec:
    """Where a stateful NF keeps its state (docs/state.rst)."""

    store: str  # "redis" | "local" (cache only: the benchmark's baseline)
    host: str
    port: int
    user: str
    password: str
    prefix: str
    max_held: int
    cache_entries: int
    drain_s: float
    retry_s: float = 0.05  # how often a lost Redis is tried again
    replay_bytes: int = 16 << 20  # unacknowledged writes kept to send again
    timeout_s: float = 0.5  # a fetch, connect or AUTH waiting longer: Redis unreachable


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    core: int
    batch: int
    file_prefix: str
    hugepages: str  # "auto" | "yes" | "no"
    memory_mb: int
    eal_args: list[str]
    rx: PortSpec
    tx: PortSpec
    mempool_size: int
    mempool_cache: int
    nf: NFSpec
    stats_path: Path
    stats_keep: bool
    duration_s: float | None
    max_packets: int | None
    slice_s: float
    base_dir: Path | None = field(default=None, compare=False)
    state: StateSpec | None = None

    @property
    def same_port(self) -> bool:
        return self.rx.name == self.tx.name


def _mapping(value, fieldname: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise NFConfigError(fieldname, f"must be a mapping, got {type(value).__name__}")
    return value


def _keys(m: Mapping, allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(m) - allowed)
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise NFConfigError(name, f"unknown option (known: {', '.join(sorted(allowed))})")


def _int(value, fieldname: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NFConfigError(fieldname, f"must be an integer {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise NFConfigError(fieldname, f"must be {lo}..{hi}, got {value}")
    return value


def _number(value, fieldname: str, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= lo:
        raise NFConfigError(fieldname, f"must be a number > {lo}, got {value!r}")
    return float(value)


def parse_port(value, fieldname: str) -> PortSpec:
    m = _mapping(value, fieldname)
    _keys(m, {"vdev", "pci"}, fieldname)
    if len(m) != 1:
        raise NFConfigError(fieldname, "give exactly one of 'vdev' or 'pci'")
    if "pci" in m:
        addr = m["pci"]
        if not isinstance(addr, str) or not PCI_RE.match(addr):
            raise NFConfigError(f"{fieldname}.pci", f"not a PCI address (0000:03:00.1): {addr!r}")
        if addr.count(":") == 1:
            addr = "0000:" + addr
        return PortSpec("pci", addr, addr.lower())
    devargs = m["vdev"]
    if not isinstance(devargs, str) or not devargs:
        raise NFConfigError(f"{fieldname}.vdev", f"must be a vdev string, got {devargs!r}")
    name = devargs.split(",", 1)[0]
    if not any(name.startswith(d) for d in VDEV_DRIVERS):
        raise NFConfigError(
            f"{fieldname}.vdev",
            f"{name!r} is not a known vdev (names start with one of {', '.join(VDEV_DRIVERS)})",
        )
    return PortSpec("vdev", devargs, name)


def parse_config(raw, base_dir: Path | None = None) -> RuntimeConfig:
    """Validate a loaded YAML document into a :class:`RuntimeConfig`."""
    top = _mapping(raw, "config")
    _keys(top, TOP_KEYS, "")
    if "name" not in top:
        raise NFConfigError("name", "missing")
    name = top["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise NFConfigError("name", f"must match {NAME_RE.pattern}, got {name!r}")
    allowed = sorted(os.sched_getaffinity(0))
    core = _int(top.get("core", allowed[0]), "core", 0, 1023)
    batch = _int(top.get("batch", 32), "batch", 1, 256)

    eal = _mapping(top.get("eal"), "eal")
    _keys(eal, {"file_prefix", "hugepages", "memory_mb", "args"}, "eal")
    prefix = eal.get("file_prefix", f"quadrant-{name}")
    if not isinstance(prefix, str) or not NAME_RE.match(prefix):
        raise NFConfigError("eal.file_prefix", f"must match {NAME_RE.pattern}, got {prefix!r}")
    huge = eal.get("hugepages", "auto")
    huge = {True: "yes", False: "no"}.get(huge, huge)
    if huge not in ("auto", "yes", "no"):
        raise NFConfigError("eal.hugepages", f"must be auto, true or false, got {huge!r}")
    memory = _int(eal.get("memory_mb", 256), "eal.memory_mb", 16, 1 << 20)
    extra = eal.get("args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise NFConfigError("eal.args", "must be a list of strings")

    ports = _mapping(top.get("ports"), "ports")
    _keys(ports, {"rx", "tx"}, "ports")
    if "rx" not in ports:
        raise NFConfigError("ports.rx", "missing")
    rx = parse_port(ports["rx"], "ports.rx")
    tx_raw = ports.get("tx", "rx")
    tx = rx if tx_raw == "rx" else parse_port(tx_raw, "ports.tx")
    if tx is not rx and tx.name == rx.name and tx.devargs != rx.devargs:
        raise NFConfigError("ports.tx", f"names port {tx.name!r} as rx does, with other devargs")

    pool = _mapping(top.get("mempool"), "mempool")
    _keys(pool, {"size", "cache"}, "mempool")
    pool_size = _int(pool.get("size", 8191), "mempool.size", 1024, 1 << 24)
    pool_cache = _int(pool.get("cache", 256), "mempool.cache", 0, 512)

    nf = _mapping(top.get("nf"), "nf")
    _keys(nf, {"type", "config", "class"}, "nf")
    if "type" not in nf:
        raise NFConfigError("nf.type", "missing")
    nf_type = nf["type"]
    if nf_type not in NF_TYPES:
        raise NFConfigError(
            "nf.type", f"unknown NF type {nf_type!r} (known: {', '.join(NF_TYPES)})"
        )
    if nf_type == THIRDPARTY:
        parse_thirdparty(nf.get("config"), "nf.config")  # its own errors first
        raise NFConfigError(
            "nf.type",
            "thirdparty runs only as a chain position after a native first NF "
            "(worker.chain, docs/thirdparty.rst); quadrant-nf runs one native NF on a port",
        )
    cls = nf.get("class")
    if nf_type in ("native", "python"):
        if not isinstance(cls, str) or ":" not in cls:
            raise NFConfigError("nf.class", f"type {nf_type} needs class: 'package.module:Class'")
    elif cls is not None:
        raise NFConfigError("nf.class", f"only for type native or python, not {nf_type}")
    nf_config = nf.get("config") or {}
    if not isinstance(nf_config, Mapping):
        raise NFConfigError("nf.config", f"must be a mapping, got {type(nf_config).__name__}")

    stats = _mapping(top.get("stats"), "stats")
    _keys(stats, {"path", "keep"}, "stats")
    stats_path = Path(stats.get("path", f"/dev/shm/quadrant-nf-{name}.stats"))
    keep = stats.get("keep", False)
    if not isinstance(keep, bool):
        raise NFConfigError("stats.keep", f"must be true or false, got {keep!r}")

    run = _mapping(top.get("run"), "run")
    _keys(run, {"duration_s", "max_packets", "slice_ms"}, "run")
    duration = run.get("duration_s")
    duration = None if duration is None else _number(duration, "run.duration_s", 0)
    max_packets = run.get("max_packets")
    if max_packets is not None:
        max_packets = _int(max_packets, "run.max_packets", 1, 1 << 62)
    slice_s = _int(run.get("slice_ms", 100), "run.slice_ms", 1, 10_000) / 1000

    state = parse_state(top["state"], batch, pool_size, base_dir) if "state" in top else None

    return RuntimeConfig(
        name=name,
        core=core,
        batch=batch,
        file_prefix=prefix,
        hugepages=huge,
        memory_mb=memory,
        eal_args=list(extra),
        rx=rx,
        tx=tx,
        mempool_size=pool_size,
        mempool_cache=pool_cache,
        nf=NFSpec(nf_type, dict(nf_config), cls),
        stats_path=stats_path,
        stats_keep=keep,
        duration_s=duration,
        max_packets=max_packets,
        slice_s=slice_s,
        base_dir=base_dir,
        state=state,
    )


def parse_state(value, batch: int, pool_size: int, base_dir: Path | None = None) -> StateSpec:
    """The ``state:`` section; held packets may take at most half the mempool."""
    m = _mapping(value, "state")
    _keys(m, STATE_KEYS, "state")
    store = m.get("store", "redis")
    if store not in ("redis", "local"):
        raise NFConfigError("state.store", f"must be redis or local, got {store!r}")
    prefix = m.get("prefix", "")
    if store == "redis" and not (isinstance(prefix, str) and PREFIX_RE.match(prefix)):
        raise NFConfigError("state.prefix", f"must match {PREFIX_RE.pattern}, got {prefix!r}")
    host = m.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise NFConfigError(
            "state.host", f"must be a host name, an address or a Unix socket's path: {host!r}"
        )
    port = _int(m.get("port", 6379), "state.port", 1, 65535)
    user = m.get("user", "")
    password = m.get("password", "")
    if "password_file" in m:
        if "password" in m:
            raise NFConfigError("state.password_file", "give password or password_file, not both")
        pf = Path(m["password_file"])
        if base_dir is not None and not pf.is_absolute():
            pf = base_dir / pf
        try:
            password = pf.read_text().strip()
        except OSError as exc:
            reason = f"cannot read {pf}: {exc.strerror}"
            raise NFConfigError("state.password_file", reason) from None
    if store == "redis":
        for fname, v in (("state.user", user), ("state.password", password)):
            if not isinstance(v, str) or not v:
                raise NFConfigError(fname, "missing: the NF's own Redis ACL user and password")
    max_held = _int(
        m.get("max_held", min(4096, pool_size // 2)), "state.max_held", batch, pool_size // 2
    )
    entries = _int(m.get("cache_entries", 65536), "state.cache_entries", 8192, 1 << 24)
    drain = m.get("drain_s", 1.0)
    drain = 0.0 if drain == 0 else _number(drain, "state.drain_s", 0)
    retry = _number(m.get("retry_s", 0.05), "state.retry_s", 0)
    if retry > 60:
        raise NFConfigError("state.retry_s", f"at most 60 s, got {retry!r}")
    replay = _int(m.get("replay_bytes", 16 << 20), "state.replay_bytes", 1 << 16, 1 << 30)
    timeout = _number(m.get("timeout_s", 0.5), "state.timeout_s", 0)
    if timeout > 60:
        raise NFConfigError("state.timeout_s", f"at most 60 s, got {timeout!r}")
    return StateSpec(
        store, host, port, user, password, prefix, max_held, entries, drain, retry, replay,
        timeout,
    )  # fmt: skip


def load_config(path: str | os.PathLike) -> RuntimeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise NFConfigError("--config", f"cannot read {p}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NFConfigError(str(p), f"not valid YAML: {exc}") from None
    return parse_config(raw, p.resolve().parent)


def hugepages_free_mb(meminfo: str = "/proc/meminfo", mounts: str = "/proc/mounts") -> int:
    """Free hugepage memory in MB if hugetlbfs is mounted at /dev/hugepages, else 0."""
    try:
        with open(mounts) as f:
            if not any(line.split()[1:3] == [HUGEPAGE_MOUNT, "hugetlbfs"] for line in f):
                return 0
        info = {}
        with open(meminfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                info[key] = value.split()
        return int(info["HugePages_Free"][0]) * int(info["Hugepagesize"][0]) // 1024
    except (OSError, KeyError, ValueError, IndexError):
        return 0


def use_hugepages(cfg: RuntimeConfig, free_mb: int) -> bool:
    if cfg.hugepages == "auto":
        return free_mb >= cfg.memory_mb
    return cfg.hugepages == "yes"


def eal_args(cfg: RuntimeConfig, hugepages: bool) -> list[str]:
    """The ``rte_eal_init`` argument vector for this runtime."""
    args = ["quadrant-nf", "-l", str(cfg.core), "--file-prefix", cfg.file_prefix]
    args += ["-m", str(cfg.memory_mb)]
    # hugepages: unlink the page files once mapped, so a killed runtime leaves none
    args.append("--huge-unlink" if hugepages else "--no-huge")
    ports = [cfg.rx] if cfg.same_port else [cfg.rx, cfg.tx]
    if not any(p.kind == "pci" for p in ports):
        args.append("--no-pci")
    for p in ports:
        args += ["--vdev", p.devargs] if p.kind == "vdev" else ["-a", p.devargs]
    return args + cfg.eal_args
