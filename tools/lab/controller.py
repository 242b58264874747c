"""Run ``osken-manager quadrant_app`` against a lab, as the demo and tests do."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


class ControllerError(RuntimeError):
    pass


class ControllerProcess:
    """The controller in a subprocess, with its own config file and log.

    ``conf`` holds the ``[quadrant]`` options (``topology`` at least).  The
    process runs in ``workdir``, never in the checkout's root, where os-ken's
    loader would take the ``quadrant_app`` folder for a file to load.
    """

    def __init__(self, lab, conf: dict, workdir: Path | None = None, args: list | None = None):
        self.lab = lab
        self.dir = Path(workdir or Path(lab.rundir) / "controller")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "quadrant.conf"
        self.conf.write_text("[quadrant]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
        self.log = self.dir / "controller.log"
        self.port = lab.controller_port
        self.args = list(args or [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> ControllerProcess:
        self.proc = subprocess.Popen(
            [
                str(BIN / "osken-manager"),
                "--config-file", str(self.conf),
                "--ofp-listen-host", "127.0.0.1",
                "--ofp-tcp-listen-port", str(self.port),
                *self.args,
                "quadrant_app",
            ],
            cwd=self.dir,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def wait_connected(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.lab.ovs.controller_connected(self.lab.bridge()):
            if self.proc.poll() is not None:
                raise ControllerError(
                    f"controller exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise ControllerError(
                    f"the switch did not connect to port {self.port} within {timeout:.0f} s; "
                    f"the controller's output:\n{self.output()[-3000:]}"
                )
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
