"""The whole system on one machine: the lab, the controller and one agent per worker.

The demo and the end-to-end tests use it::

    with Stack(load("topologies/lab.yaml"), prefix="qm") as st:
        st.tenant.post("/v1/chains", spec)
        ...

``up`` brings up the lab, writes a tokens file (a tenant, an admin and one
token per worker, fresh random secrets), starts ``osken-manager
quadrant_app`` and waits for the switch and the REST API, then starts
``quadrant-agent`` for every worker (in the root namespace, its NFs in the
worker's namespace; with ``state_store``, a running RedisServer, the agents
hand their stateful NFs users of it) and waits until each has registered.  ``down`` removes
every chain (so the agents tear their instances down), stops the agents and
the controller and takes the lab down, also after a failure half way.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.client import ApiError, Client
from tools.lab import Lab
from tools.lab.controller import ControllerProcess

BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    pass


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range: the controller
    binds it only later, and a port the kernel hands out for outgoing connections
    (every REST client, agent and Redis client here makes some) could be taken by
    one of them in between."""
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, lo))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Stack:
    def __init__(
        self,
        topology,
        prefix: str = "qm",
        rundir: str | Path | None = None,
        data_cores: tuple[int, ...] = (1,),
        controller_conf: dict | None = None,
        heartbeat_s: float = 0.5,
        state_store=None,
        log=print,
        agent_args: tuple[str, ...] = (),
    ):
        self.topology = topology
        self.rundir = Path(rundir or tempfile.mkdtemp(prefix=f"{prefix}-stack-", dir="/tmp"))
        self.of_port = free_port()
        self.rest_port = free_port()
        self.lab = Lab(topology, prefix, self.rundir / "lab", f"tcp:127.0.0.1:{self.of_port}")
        self.lab.controller_port = self.of_port
        self.data_cores = data_cores
        self.controller_conf = dict(controller_conf or {})
        self.heartbeat_s = heartbeat_s
        self.agent_args = tuple(agent_args)  # more quadrant-agent options, for every agent
        # a running worker.redis_server.RedisServer: the agents' state store for stateful
        # NFs, reached over its Unix socket from the workers' namespaces
        self.state_store = state_store
        self.log = log
        self.tokens = {
            "tenant": secrets.token_hex(16),
            "admin": secrets.token_hex(16),
            **{w.name: secrets.token_hex(16) for w in topology.workers},
        }
        base = f"http://127.0.0.1:{self.rest_port}"
        self.tenant = Client(base, self.tokens["tenant"])
        self.admin = Client(base, self.tokens["admin"])
        self.controller: ControllerProcess | None = None
        self.agents: dict[str, subprocess.Popen] = {}

    # -- up ---------------------------------------------------------------------------

    def up(self, wait: float = 600.0) -> Stack:
        try:
            self._up(wait)
        except BaseException:
            self.down()
            raise
        return self

    def _up(self, wait: float) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.log(f"lab: building {self.topology.name} ({len(self.topology.workers)} workers)")
        self.lab.up(wait=wait)
        tokens = self.rundir / "tokens.yaml"
        entries = [
            {"token": self.tokens["tenant"], "tenant": "demo"},
            {"token": self.tokens["admin"], "tenant": "ops", "admin": True},
        ] + [{"token": self.tokens[w.name], "worker": w.name} for w in self.topology.workers]
        tokens.write_text(json.dumps({"tokens": entries}))
        tokens.chmod(0o600)
        conf = {
            "topology": str(self.topology.source),
            "tokens_file": str(tokens),
            "rest_port": self.rest_port,
            "heartbeat_s": self.heartbeat_s,
            **self.controller_conf,
        }
        self.log(f"controller: osken-manager quadrant_app (OpenFlow :{self.of_port}, "
                 f"REST :{self.rest_port})")  # fmt: skip
        self.controller = ControllerProcess(self.lab, conf, self.rundir / "controller").start()
        self.controller.wait_connected()
        wait_until(self.admin.up, 15, "the REST API")
        for w in self.topology.workers:
            self.start_agent(w.name)
        wait_until(self.agents_connected, 30, "every agent to register")

    def start_agent(self, worker: str) -> subprocess.Popen:
        token_file = self.rundir / f"{worker}.token"
        token_file.write_text(self.tokens[worker] + "\n")
        token_file.chmod(0o600)
        log = (self.rundir / f"agent-{worker}.log").open("ab")
        cmd = [
            str(BIN / "quadrant-agent"),
            "--controller", f"ws://127.0.0.1:{self.rest_port}/v1/agents",
            "--worker-id", worker,
            "--token-file", str(token_file),
            "--topology", str(self.topology.source),
            "--heartbeat", str(self.heartbeat_s),
            "--netns", self.lab.ns(worker),
            "--cores", ",".join(str(c) for c in self.data_cores),
            # the lab's names: an agent removes what an earlier one of its prefix left
            "--prefix", f"{self.lab.plan.prefix}-{worker}",
            *self.agent_args,
        ]  # fmt: skip
        if self.state_store is not None:
            pw = self.state_store.dir / "admin.password"
            cmd += ["--state-redis", f"unix:{self.state_store.socket_path}",
                    "--state-admin-password-file", str(pw)]  # fmt: skip
        self.log(f"agent {worker}: NFs in netns {self.lab.ns(worker)}, cores {self.data_cores}")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.agents[worker] = proc
        return proc

    def agents_connected(self) -> bool:
        for name, proc in self.agents.items():
            if proc.poll() is not None:
                raise StackError(f"agent {name} exited with {proc.returncode}:\n"
                                 f"{self.agent_log(name)[-3000:]}")  # fmt: skip
        workers = self.admin.get("/v1/workers")["workers"]
        return all(w["agent"]["connected"] for w in workers if w["name"] in self.agents)

    def agent_log(self, worker: str) -> str:
        path = self.rundir / f"agent-{worker}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- down ---------------------------------------------------------------------------

    def down(self) -> None:
        if self.controller is not None and self.controller.proc.poll() is None:
            try:
                for chain in self.admin.get("/v1/chains")["chains"]:
                    self.admin.delete(f"/v1/chains/{chain['id']}")
                wait_until(lambda: not self.admin.get("/v1/instances")["instances"], 30,
                           "the instances to go")  # fmt: skip
                time.sleep(1.0)  # the teardowns reach the agents
            except (ApiError, OSError, StackError) as exc:
                self.log(f"stack: could not remove the chains cleanly: {exc}")
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # whatever an agent could not tear down (killed, or timed out): ours to remove
        from worker.instances import reap_prefix

        for w in self.topology.workers:
            left = reap_prefix(f"{self.lab.plan.prefix}-{w.name}")
            if left["killed"] or left["files"]:
                self.log(f"stack: removed what agent {w.name} left: {left}")
            # the agent's NF logs (its default --log-dir), like its own log in the rundir
            shutil.rmtree(f"/tmp/{self.lab.plan.prefix}-{w.name}-nf-logs", ignore_errors=True)
        if self.controller is not None:
            self.controller.stop()
        self.lab.down()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
