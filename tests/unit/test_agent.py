"""The agent's session logic against a small in-process WebSocket peer.

These check the agent's side of the protocol quickly (register contents,
heartbeats, command dispatch, reconnect with back-off, refused tokens); the
tests against the real controller are in tests/e2e.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    @contextlib.asynccontextmanager
    async def serving(self):
        """Listen on a free loopback port while the block runs; yields the port."""
        async with serve(self.handler, "127.0.0.1", 0, process_request=self.process_request) as srv:
            yield srv.sockets[0].getsockname()[1]

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
        async with peer.serving() as port:
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
        async with peer.serving() as port:
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
        async with peer.serving() as port:
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", "wrong-token-xxxxxxxx", {})
            with pytest.raises(AgentAuthError, match="401"):
                await agent.run()

    run(scenario())


def test_register_refused_by_rpc_error():
    async def scenario():
        peer = Peer(register_error=(jsonrpc.UNAUTHORIZED, "token is not w1's"))
        async with peer.serving() as port:
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", TOKEN, {})
            with pytest.raises(AgentAuthError, match="not w1's"):
                await agent.run()

    run(scenario())


class TickingMonitor:
    """Stands in for worker.monitor.Monitor: a row per tick, one event on the second."""

    def __init__(self):
        self.ticks = []
        self.resyncs = 0

    def resync(self):
        self.resyncs += 1

    def tick(self, now=None, report=True):
        self.ticks.append(report)
        events = [{"kind": "nf_failed", "instance": 3}] if len(self.ticks) == 2 else []
        return ([{"id": 3, "pps": float(len(self.ticks))}] if report else []), events


def test_monitor_rows_go_out_as_stats_and_events_as_event_calls():
    class StatsPeer(Peer):
        async def handler(self, ws):
            self.conns.append(ws)
            async for text in ws:
                msg = json.loads(text)
                self.got.append(msg)
                if msg.get("method") == "register":
                    await ws.send(json.dumps(jsonrpc.result(msg["id"], {"heartbeat_s": 1})))
                elif msg.get("method") in ("stats", "event"):
                    await ws.send(json.dumps(jsonrpc.result(msg["id"], {"accepted": 1})))

    async def scenario():
        peer = StatsPeer()
        async with peer.serving() as port:
            mon = TickingMonitor()
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", TOKEN, {}, monitor=mon,
                          monitor_interval=0.05)  # fmt: skip
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.registered.wait(), 5)
            for _ in range(100):
                if agent.reported >= 4:
                    break
                await asyncio.sleep(0.05)
            agent.stop()
            await task
        calls = [m for m in peer.got if m.get("method") in ("stats", "event")]
        assert calls and all("id" in m for m in calls)  # requests: the controller acknowledges
        events = [m["params"] for m in calls if m["method"] == "event"]
        assert events == [{"kind": "nf_failed", "instance": 3}]
        stats = [m["params"]["instances"][0]["pps"] for m in calls if m["method"] == "stats"]
        assert len(stats) >= 4 and stats == sorted(stats)
        assert mon.resyncs >= 1  # a new session asks for a full summary

    run(scenario())


class CheckingMonitor(TickingMonitor):
    """A monitor whose liveness check finds one failure, on its third call."""

    def __init__(self):
        super().__init__()
        self.checks = 0
        self.tick_checked = []

    def tick(self, now=None, report=True, check=True):
        self.tick_checked.append(check)
        self.ticks.append(report)
        return [], []

    def check(self, now=None):
        self.checks += 1
        return (
            [{"kind": "nf_failed", "instance": 5, "cause": "stalled"}] if self.checks == 3 else []
        )


def test_liveness_checks_run_apart_from_the_stats_ticks_and_events_go_out_at_once():
    async def scenario():
        peer = Peer()
        async with peer.serving() as port:
            mon = CheckingMonitor()
            agent = Agent(f"ws://127.0.0.1:{port}/", "w1", TOKEN, {}, monitor=mon,
                          monitor_interval=5.0, liveness_interval=0.02)  # fmt: skip
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.registered.wait(), 5)
            for _ in range(100):
                if any(m.get("method") == "event" for m in peer.got):
                    break
                await asyncio.sleep(0.02)
            agent.stop()
            await task
        events = [m["params"] for m in peer.got if m.get("method") == "event"]
        assert events == [{"kind": "nf_failed", "instance": 5, "cause": "stalled"}]
        assert mon.checks >= 3 and mon.ticks == []  # sent long before the first stats tick

    run(scenario())


def test_managed_cores():
    import os

    from worker.agent import managed_cores
    from worker.coopsched import SchedError

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    assert managed_cores(allowed, None) == allowed[1:]  # all but the housekeeping CPU
    assert managed_cores(allowed, [allowed[-1]]) == [allowed[-1]]
    with pytest.raises(ValueError, match="--cores: 99"):
        managed_cores(allowed, [99])
    with pytest.raises(SchedError, match="no CPU for the kernel"):
        managed_cores(allowed, allowed)
