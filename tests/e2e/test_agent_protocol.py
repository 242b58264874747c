"""The agent channel against the real controller: register, heartbeats, errors, reconnect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import LAB_TOPOLOGY, free_port, make_controller, wait_for

pytestmark = pytest.mark.e2e

ADMIN, TENANT = "agent-e2e-admin-token-01", "agent-e2e-tenant-token-1"
W1, W2 = "agent-e2e-w1-token-00001", "agent-e2e-w2-token-00001"


@pytest.fixture
def ctl(lab, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(json.dumps({"tokens": [
        {"token": ADMIN, "tenant": "ops", "admin": True},
        {"token": TENANT, "tenant": "acme"},
        {"token": W1, "worker": "w1"},
        {"token": W2, "worker": "w2"},
    ]}))  # fmt: skip
    rest_port = free_port()
    conf = {"tokens_file": str(tokens), "rest_port": rest_port, "heartbeat_s": 0.2}
    proc = make_controller(lab, conf)
    proc.rest_port = rest_port
    proc.start()
    try:
        proc.wait_connected()
        wait_for(lambda: _up(rest_port), 10, "the REST API")
        yield proc
    finally:
        proc.stop()


def _up(port):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/openapi.json", timeout=1)
        return True
    except OSError:
        return False


def _get(port, path, token=ADMIN):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _worker(port, name):
    return next(w for w in _get(port, "/v1/workers")["workers"] if w["name"] == name)


class AgentProc:
    def __init__(self, ctl, worker, token, tmp_path):
        self.token_file = tmp_path / f"{worker}.token"
        self.token_file.write_text(token + "\n")
        self.log = tmp_path / f"agent-{worker}.log"
        self.args = [sys.executable, "-m", "worker.agent",
                     "--controller", f"ws://127.0.0.1:{ctl.rest_port}/v1/agents",
                     "--worker-id", worker, "--token-file", str(self.token_file),
                     "--topology", str(LAB_TOPOLOGY), "--heartbeat", "0.2",
                     "--prefix", f"qp{os.getpid() % 1000}-{worker}"]  # fmt: skip
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self):
        return self.log.read_text(errors="replace")


def test_register_heartbeats_and_reconnect(ctl, lab, tmp_path):
    port = ctl.rest_port
    with AgentProc(ctl, "w1", W1, tmp_path) as agent:
        wait_for(lambda: _worker(port, "w1")["agent"]["connected"], 15, "w1 to register")
        beats = _worker(port, "w1")["agent"]["heartbeats"]
        time.sleep(1.0)
        assert _worker(port, "w1")["agent"]["heartbeats"] >= beats + 3
        assert not _worker(port, "w2")["agent"]["connected"]
        # The controller goes away and comes back: the agent registers again.
        ctl.stop()
        ctl.start()
        ctl.wait_connected()
        wait_for(lambda: _up(port), 10, "the REST API again")
        wait_for(lambda: _worker(port, "w1")["agent"]["connected"], 20, "w1 to register again")
        assert agent.proc.poll() is None
        assert agent.output().count("registered with") == 2
    wait_for(lambda: not _worker(port, "w1")["agent"]["connected"], 10, "w1 to go")


def test_refused_tokens(ctl, tmp_path):
    for token in ("not-a-token-at-all-xxxxx", TENANT):  # a tenant's token is no agent's
        with AgentProc(ctl, "w1", token, tmp_path) as agent:
            agent.proc.wait(15)
            assert agent.proc.returncode == 2
            assert "refused the token (401)" in agent.output()
    # An agent's token is refused by the REST API.
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(ctl.rest_port, "/v1/chains", token=W1)
    assert err.value.code == 401
    assert "/v1/agents only" in json.loads(err.value.read())["error"]["reason"]


def _rpc(ws, obj):
    ws.send(obj if isinstance(obj, str) else json.dumps(obj))
    return json.loads(ws.recv(timeout=5))


def test_malformed_and_refused_calls(ctl):
    url = f"ws://127.0.0.1:{ctl.rest_port}/v1/agents"
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers={"Authorization": "Bearer nope"}, proxy=None)
    with connect(url, additional_headers={"Authorization": f"Bearer {W2}"}, proxy=None) as ws:
        assert _rpc(ws, "{not json")["error"]["code"] == -32700
        assert _rpc(ws, {"jsonrpc": "2.0", "method": "nope", "id": 1})["error"]["code"] == -32601
        r = _rpc(ws, {"jsonrpc": "2.0", "method": "heartbeat", "params": {"seq": 1}, "id": 2})
        assert r["error"]["code"] == -32002 and "register first" in r["error"]["message"]
        from quadrant_app.topology import load
        from worker.agent import inventory

        inv = inventory(load(LAB_TOPOLOGY), "w2")
        bad = dict(inv, switch_port=99)
        r = _rpc(ws, {"jsonrpc": "2.0", "method": "register", "id": 3,
                      "params": {"version": 1, "inventory": bad, "instances": []}})  # fmt: skip
        assert r["error"]["code"] == -32002 and "switch_port" in r["error"]["message"]
        r = _rpc(ws, {"jsonrpc": "2.0", "method": "register", "id": 4,
                      "params": {"version": 1, "inventory": inv, "instances": []}})  # fmt: skip
        assert r["result"]["worker"] == "w2" and r["result"]["heartbeat_s"] == 0.2
        assert _worker(ctl.rest_port, "w2")["agent"]["connected"]
        # A command the agent cannot serve comes back as an error the controller logs.
        body = {"name": "c", "nfs": [{"type": "empty"}], "filter": {}, "slo_us": 100}
        req = urllib.request.Request(
            f"http://127.0.0.1:{ctl.rest_port}/v1/chains", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TENANT}", "Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(req, timeout=5).read()
        cmd = json.loads(ws.recv(timeout=10))
        assert cmd["method"] == "prepare" and cmd["params"]["chain"]["nfs"][0]["type"] == "empty"
        assert cmd["params"]["vf"].startswith("02:00:00:00:02:")
        ws.send(json.dumps({"jsonrpc": "2.0", "id": cmd["id"],
                            "error": {"code": -32002, "message": "core 1 is busy"}}))  # fmt: skip
        wait_for(lambda: "core 1 is busy" in ctl.output(), 5, "the controller to log it")
        assert _get(ctl.rest_port, "/v1/instances")["instances"] == []
