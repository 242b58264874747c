"""A decrypting far side for a lab host: Chain 2's ``encrypt`` output, opened again
before the host's own TCP/IP stack sees it.

Chain 2 (``acl -> urlfilter -> encrypt``) delivers ciphertext to the sink.  To
let a real server in the sink's namespace (``python -m http.server``) answer a
real client (``curl`` in the source's), something must run ``decrypt`` between
the sink's lab interface and its stack.  :class:`FarSide` puts a real
``quadrant-nf`` process running the ``decrypt`` NF there, on ``net_af_packet``
ports, inside the host's namespace::

    switch --> eth0 --tc ingress redirect--> fsr0 ~~veth~~ fsr1 --[quadrant-nf decrypt]--> fss1
                                                                                        |
          host stack (10.2.0.1 on eth0; takes frames from fss0: weak host model) <-- fss0

    host stack --> eth0 --> switch          (replies leave as they always do)

* Everything that arrives on ``eth0`` is redirected (``tc`` ingress, ``u32``
  match-all, ``mirred egress redirect``) to the veth ``fsr0``, so the host's
  stack never sees a ciphertext frame.  ``decrypt`` reads it on ``fsr1``.
* ``decrypt`` sends the plain frames on ``fss1``; they arrive on its peer
  ``fss0``, which carries the host's MAC (the frames' destination), so the
  host's stack takes them as its own (Linux accepts a packet for any local
  address on any interface; reverse-path filtering is off on ``fss0``).
* Replies leave on ``eth0`` through the host's routes as before.  No DPDK
  port reads ``eth0``, so a reply is never seen (AF_PACKET sees a device's
  outgoing frames too) and turned back towards the host.

Only one DPDK process, one direction: the runtime has one RX and one TX port,
and the reverse direction needs no NF.  ``down`` removes exactly what ``up``
made (the qdisc, the two veth pairs, the process and its DPDK runtime
directory), also after ``up`` failed half way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from worker import nf_stats

ROOT = Path(__file__).resolve().parents[2]


class FarSideError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise FarSideError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class FarSide:
    """``decrypt`` in front of the stack of the host in namespace ``netns``.

    ``config``: the ``decrypt`` NF's config (docs/encrypt.rst; a relative
    ``key_file`` is taken against the checkout).  ``prefix``: the DPDK
    ``--file-prefix`` and the start of the process's name, unique per run.
    ``core``: the CPU the runtime busy-polls (not a data core of the lab's
    workers).
    """

    def __init__(self, netns: str, mac: str, config: dict, prefix: str, iface: str = "eth0",
                 core: int | None = None, duration_s: float | None = 600.0):  # fmt: skip
        self.netns, self.mac, self.iface, self.prefix = netns, mac, iface, prefix
        self.config = dict(config)
        key = self.config.get("key_file")
        if key is not None and not os.path.isabs(key):
            self.config["key_file"] = str(ROOT / key)
        self.core = min(os.sched_getaffinity(0)) if core is None else core
        self.duration_s = duration_s
        self.rx_pair = ("fsr0", "fsr1")  # eth0's redirect target, decrypt's RX
        self.tx_pair = ("fss0", "fss1")  # the host's side, decrypt's TX
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.summary: dict | None = None
        self._made: list[str] = []

    def ns(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", self.netns, *cmd, check=check)

    @property
    def stats_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "decrypt.stats"

    # -- up ---------------------------------------------------------------------------

    def up(self, timeout: float = 30.0) -> FarSide:
        try:
            self._up(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _up(self, timeout: float) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-farside-", dir="/tmp"))
        for outer, inner in (self.rx_pair, self.tx_pair):
            self._made.append(outer)
            _run("ip", "-n", self.netns, "link", "add", outer, "type", "veth", "peer", "name",
                 inner)  # fmt: skip
        _run("ip", "-n", self.netns, "link", "set", self.tx_pair[0], "address", self.mac)
        for dev in (*self.rx_pair, *self.tx_pair):
            self.ns("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            # frames cross these links as the NF wrote them: no checksum left to "hardware"
            self.ns("ethtool", "-K", dev, "tx", "off", "rx", "off", check=False)
            _run("ip", "-n", self.netns, "link", "set", dev, "up")
        self.ns("sysctl", "-qw", f"net.ipv4.conf.{self.tx_pair[0]}.rp_filter=0")
        strict = self.ns("sysctl", "-n", "net.ipv4.conf.all.rp_filter").stdout.strip()
        if strict == "1":
            raise FarSideError(
                f"{self.netns}: net.ipv4.conf.all.rp_filter is 1 (strict): "
                f"the host would drop what arrives on {self.tx_pair[0]}"
            )
        self._start_decrypt(timeout)
        self._made.append("qdisc")
        self.ns("tc", "qdisc", "add", "dev", self.iface, "ingress")
        self.ns("tc", "filter", "add", "dev", self.iface, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", self.rx_pair[0])  # fmt: skip

    def _start_decrypt(self, timeout: float) -> None:
        assert self.workdir is not None
        cfg = {
            "name": f"{self.prefix}-farside"[:48],
            "core": self.core,
            "batch": 32,
            "eal": {"file_prefix": f"{self.prefix}-farside", "hugepages": False,
                    "memory_mb": 128},
            "mempool": {"size": 2047, "cache": 32},
            "ports": {"rx": {"vdev": f"net_af_packet0,iface={self.rx_pair[1]}"},
                      "tx": {"vdev": f"net_af_packet1,iface={self.tx_pair[1]}"}},
            "nf": {"type": "decrypt", "config": self.config},
            "stats": {"path": str(self.stats_path)},
            "run": {"duration_s": self.duration_s},
        }  # fmt: skip
        conf = self.workdir / "decrypt.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        self.log = (self.workdir / "decrypt.log").open("w+")
        # a busy-polling process on the kernel's core: lower its weight (the brief's nice 10)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "nice", "-n", "10", sys.executable, "-m",
             "worker.nf_runtime", "--config", str(conf),
             "--summary", str(self.workdir / "summary.json")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FarSideError(f"decrypt exited with {self.proc.returncode}: "
                                   f"{self.output()[-2000:]}")  # fmt: skip
            try:
                if nf_stats.read(self.stats_path).state == "running":
                    return
            except (OSError, ValueError):
                pass  # not there, or its header not written yet
            if time.monotonic() > deadline:
                raise FarSideError(f"decrypt did not start in {timeout:.0f} s: "
                                   f"{self.output()[-2000:]}")  # fmt: skip
            time.sleep(0.05)

    def output(self) -> str:
        if self.workdir is None or not (self.workdir / "decrypt.log").exists():
            return ""
        return (self.workdir / "decrypt.log").read_text(errors="replace")

    def counters(self) -> dict:
        """The runtime's live counters (rx/tx packets, drops) from its counter block."""
        return nf_stats.read(self.stats_path).counters

    # -- down ---------------------------------------------------------------------------

    def down(self) -> dict | None:
        """Remove what ``up`` made; returns the runtime's summary (the decrypt NF's own
        counters in ``nf_stats``), None if it did not run to a summary."""
        if "qdisc" in self._made:  # first: the host's stack takes eth0 back
            self.ns("tc", "qdisc", "del", "dev", self.iface, "ingress", check=False)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
            path = self.workdir / "summary.json"
            if path.exists():
                self.summary = json.loads(path.read_text())
            self.proc = None
        for dev in self._made:
            if dev != "qdisc":
                _run("ip", "-n", self.netns, "link", "del", dev, check=False)
        self._made = []
        shutil.rmtree(f"/var/run/dpdk/{self.prefix}-farside", ignore_errors=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return self.summary

    def __enter__(self) -> FarSide:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m tools.lab.farside",
        description="Run decrypt in front of a lab host's stack until SIGINT/SIGTERM, "
        "then print its summary (JSON).",
    )
    ap.add_argument("--netns", required=True, help="the host's namespace, e.g. q-sink")
    ap.add_argument("--mac", required=True, help="the host's MAC (on its lab interface)")
    ap.add_argument("--iface", default="eth0", help="the host's lab interface")
    ap.add_argument("--key-file", required=True, help="the chain's encrypt key file")
    ap.add_argument("--mode", default="aead", choices=("aead", "stream"))
    ap.add_argument("--other", default="drop", choices=("drop", "pass"))
    ap.add_argument("--only-dst", action="append", default=[], metavar="PREFIX",
                    help="as the chain's encrypt has it (repeat for more)")  # fmt: skip
    ap.add_argument("--prefix", default="qfar", help="DPDK --file-prefix start")
    ap.add_argument("--core", type=int, default=None)
    args = ap.parse_args(argv)
    config = {"key_file": os.path.abspath(args.key_file), "mode": args.mode,
              "other": args.other}  # fmt: skip
    if args.only_dst:
        config["only_dst"] = args.only_dst
    far = FarSide(args.netns, args.mac, config, args.prefix, iface=args.iface, core=args.core,
                  duration_s=None)  # fmt: skip
    stop: list[int] = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: stop.append(signum))
    try:
        far.up()
        print(f"farside: decrypt in front of {args.netns}'s stack; Ctrl-C to stop", flush=True)
        while not stop and far.proc is not None and far.proc.poll() is None:
            time.sleep(0.2)
    except FarSideError as exc:
        print(f"farside: {exc}", file=sys.stderr)
        return 1
    finally:
        summary = far.down()
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
