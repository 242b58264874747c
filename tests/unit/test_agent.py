"""The agent's session logic against a small in-process WebSocket peer.

These check the agent's side of the protocol quickly (register contents,
heartbeats, command dispatch, reconnect with back-off, refused tokens); the
tests against the real controller are in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from quadrant_app import jsonrpc
from quadrant_app.topology import load
from worker.agent import Agent, AgentAuthError, Backoff, inventory

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "agent-token-0123456789"


class Peer:
    """Plays the controller: checks the token, answers register, records what it got."""

    def __init__(self, register_result=None, register_error=None):
        self.got: list[dict] = []
        self.register_result = register_result or {"heartbeat_s": 0.05}
        self.register_error = register_error
        self.conns = []

    def process_request(self, conn, request):
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return conn.respond(401, "Unauthorized\n")
        return None

    async def handler(self, ws):
        self.conns.append(ws)
        async for text in ws:
            msg = json.loads(text)
            self.got.append(msg)
            if msg.get("method") == "register":
                if self.register_error:
                    err = jsonrpc.RpcError(*self.register_error, id=msg["id"]).to_obj()
                    await ws.send(json.dumps(err))
                else:
                    await ws.send(json.dumps(jsonrpc.result(msg["id"], self.register_result)))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_inventory_from_topology():
    inv = inventory(load(ROOT / "topologies" / "lab.yaml"), "w2")
    assert inv["switch_port"] == 12 and inv["cores"] == [0, 1]
    assert inv["vfs"][0] == {"mac": "02:00:00:00:02:01", "netdev": "vf0"}
    with pytest.raises(ValueError, match="not in"):
        inventory(load(ROOT / "topologies" / "lab.yaml"), "w9")


def test_backoff_grows_to_cap():
    b = Backoff(first=0.5, cap=4.0)
    delays = [b.next() for _ in range(6)]
    assert 0.4 <= delays[0] <= 0.6 and all(3.2 <= d <= 4.8 for d in delays[3:])
    b.reset()
    assert b.next() <= 0.6


def test_register_heartbeat_and_command():
    async def scenario():
        peer = Peer()
        async with serve(peer.handler, "127.0.0.1", 0, process_request=peer.process_request) as srv:
            port = srv.sockets[0].getsockname()[1]
            agent = Agent(f"ws://127.0.0.1:{port}/v1/agents", "w1", TOKEN, {"worker": "w1"},
                          instances=lambda: [{"id": "i-1"}])  # fmt: skip
            agent.dispatcher.add("ping", lambda params: {"pong": params.get("n")})
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.registered.wait(), 5)
            await asyncio.sleep(0.3)
            ws = peer.conns[0]
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": "ping", "params": {"n": 4},
                                      "id": 99}))  # fmt: skip
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": "nope", "id": 100}))
            await asyncio.sleep(0.3)
            agent.stop()
            await task
        reg = peer.got[0]
        assert reg["method"] == "register"
        assert reg["params"]["inventory"] == {"worker": "w1"}
        assert reg["params"]["instances"] == [{"id": "i-1"}]
        beats = [m for m in peer.got if m.get("method") == "heartbeat"]
        assert len(beats) >= 3 and "id" not in beats[0]  # notifications
        assert [b["params"]["seq"] for b in beats[:3]] == [1, 2, 3]
        replies = {m["id"]: m for m in peer.got if "id" in m and "method" not in m}
        assert replies[99]["result"] == {"pong": 4}
        assert replies[100]["error"]["code"] == jsonrpc.METHOD_NOT_FOUND

    run(scenario())


def test_reconnects_and_registers_again():
    async def scenario():
        peer = Peer()
        async with serve(peer.handler, "127.0.0.1", 0, process_request=peer.process_request) as srv:
            port = srv.sockets[0].getsockname()[1]
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", TOKEN, {"worker": "w1"})
            agent.backoff = Backoff(first=0.05, cap=0.2)
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.registered.wait(), 5)
            await peer.conns[0].close()
            for _ in range(100):
                if agent.sessions >= 2:
                    break
                await asyncio.sleep(0.05)
            agent.stop()
            await task
        assert agent.sessions == 2
        assert [m["method"] for m in peer.got if m.get("method") == "register"] == ["register"] * 2

    run(scenario())


def test_refused_token_ends_the_agent():
    async def scenario():
        peer = Peer()
        async with serve(peer.handler, "127.0.0.1", 0, process_request=peer.process_request) as srv:
            port = srv.sockets[0].getsockname()[1]
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", "wrong-token-xxxxxxxx", {})
            with pytest.raises(AgentAuthError, match="401"):
                await agent.run()

    run(scenario())


def test_register_refused_by_rpc_error():
    async def scenario():
        peer = Peer(register_error=(jsonrpc.UNAUTHORIZED, "token is not w1's"))
        async with serve(peer.handler, "127.0.0.1", 0, process_request=peer.process_request) as srv:
            port = srv.sockets[0].getsockname()[1]
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", TOKEN, {})
            with pytest.raises(AgentAuthError, match="not w1's"):
                await agent.run()

    run(scenario())
