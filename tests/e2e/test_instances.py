"""The worker side of the controller's commands with real parts: NF processes in their
own containers (namespaces, cgroup on core 1) inside a worker network namespace made
here, a macvlan VF opened by the first NF as net_af_packet, the real cooperative
scheduler, traffic from tools.trafficgen, and the monitor reading the live counters.

Namespace ``qw-<tag>``: veth ``up0`` (the worker's uplink) <-> ``tg0`` (the traffic
generator's side), macvlans ``vf0``/``vf1`` on ``up0`` with the MACs of lab worker
w1's first two VFs.  Frames sent on ``tg0`` to a VF's MAC reach the chain; what the
chain sends out of the VF leaves through ``up0`` and is counted on ``tg0``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import RpcError
from tests.conftest import ROOT, wait_for

pytestmark = [
    pytest.mark.dpdk,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root"),
]

CORE = 1
VF0, VF1 = "02:00:00:00:01:01", "02:00:00:00:01:02"
NEXT_HOP = "02:00:00:00:0b:01"
SRC_MAC = "02:00:00:00:0a:01"
CHAIN1 = {
    "id": 1,
    "name": "web-tunnel",
    "nfs": [
        {"type": "tunnel", "config": {"vlan": 100}},
        {"type": "ipforward",
         "config": {"routes": [{"prefix": "10.2.0.0/16", "next_hop_mac": NEXT_HOP}]}},
    ],
}  # fmt: skip
EMPTY2 = {"id": 2, "name": "e2", "nfs": [{"type": "empty"}, {"type": "empty"}]}


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def worker_ns():
    tag = uuid.uuid4().hex[:6]
    ns = f"qw-{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "tg0")
        for dev in ("lo", "up0", "tg0"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for i, mac in enumerate((VF0, VF1)):
            sh("ip", "-n", ns, "link", "add", f"vf{i}", "link", "up0", "address", mac,
               "type", "macvlan", "mode", "bridge")  # fmt: skip
            sh("ip", "-n", ns, "link", "set", f"vf{i}", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        yield tag, ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def leftovers(prefix: str, cgroup_parent: str) -> list[str]:
    """Files, cgroups and processes a prefix's instances could leave behind."""
    found = [str(p) for d in ("/dev/shm", "/dev/hugepages") for p in Path(d).glob(f"{prefix}-*")]
    for c in ("cpuset", "memory"):
        d = Path("/sys/fs/cgroup") / c / cgroup_parent
        if d.exists():
            found += [str(x) for x in d.iterdir() if x.is_dir()]
    out = subprocess.run(["pgrep", "-f", f"{prefix}-i"], capture_output=True, text=True)
    found += [f"pid {p}" for p in out.stdout.split()]
    return found


@pytest.fixture
def manager(worker_ns, tmp_path):
    from worker.instances import InstanceManager
    from worker.launcher import LocalLauncher

    tag, ns = worker_ns
    os.chmod(tmp_path, 0o755)
    inv = {"vfs": [{"mac": VF0, "netdev": "vf0"}, {"mac": VF1, "netdev": "vf1"}]}
    m = InstanceManager(inv, [CORE], launcher=LocalLauncher(cgroup_parent=f"qw-{tag}"),
                        netns=ns, prefix=f"qw{tag}", uid_base=48100, log_dir=str(tmp_path),
                        n_slots=512)  # fmt: skip
    try:
        yield m
    finally:
        m.close()
        assert leftovers(f"qw{tag}", f"qw-{tag}") == []
        for c in ("cpuset", "memory"):
            assert not (Path("/sys/fs/cgroup") / c / f"qw-{tag}").exists()


def traffic(ns, tmp_path, dst_mac, pps=1000, seconds=2.0, flows=4):
    """Send stamped flows on tg0 to ``dst_mac``, count what comes back; the sink's report."""
    tx, rx = tmp_path / "tx.json", tmp_path / "rx.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sink = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tools.trafficgen", "sink",
         "--iface", "tg0", "--seconds", str(seconds + 8), "--idle", "1.0", "--sent", str(tx),
         "--json", str(rx)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert sink.stdout.readline().strip() == "ready"
        subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tools.trafficgen", "send",
             "--iface", "tg0", "--src-mac", SRC_MAC, "--dst-mac", dst_mac,
             "--src", "10.1.0.0/24", "--dst", "10.2.0.1", "--flows", str(flows),
             "--pps", str(pps), "--seconds", str(seconds), "--size-median", "256",
             "--json", str(tx)],
            check=True, capture_output=True, env=env, cwd=ROOT, timeout=seconds + 20,
        )  # fmt: skip
        sink.wait(seconds + 20)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return json.loads(rx.read_text())


def netns_inode(ns):
    return os.stat(f"/run/netns/{ns}").st_ino


def test_chain_instance_processes_traffic_and_leaves_nothing(manager, worker_ns, tmp_path):
    from worker.coopsched import PRIO_ATTACHED, PRIO_DETACHED
    from worker.monitor import Monitor, Rates, Significance, tsc_hz

    tag, ns = worker_ns
    res = manager.prepare({"instance": 11, "chain": CHAIN1, "core": CORE, "vf": VF0,
                           "batch": 32})  # fmt: skip
    assert res["instance"] == 11 and res["state"] == "detached" and len(res["pids"]) == 2
    inst = manager.entries[11].chain
    for pid, tid in zip(res["pids"], inst.tids, strict=True):
        # host ids, the NF in the worker's netns, in its own cgroup, confined to core 1
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode(ns)
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert f"qw-{tag}/qw{tag}-i11-nf" in Path(f"/proc/{pid}/cgroup").read_text()
        assert os.sched_getaffinity(tid) == {CORE}
        assert os.sched_getparam(tid).sched_priority == PRIO_DETACHED
    for i in range(2):  # set up on the housekeeping CPU, then confined to the core
        cpus = Path(f"/sys/fs/cgroup/cpuset/qw-{tag}/qw{tag}-i11-nf{i}/cpuset.cpus")
        assert cpus.read_text().strip() == str(CORE)
    assert manager.list() == [{"id": 11, "chain_id": 1, "core": CORE, "vf": VF0,
                               "state": "detached"}]  # fmt: skip

    assert manager.attach({"instance": 11}) == {"instance": 11, "state": "attached"}
    assert [os.sched_getparam(t).sched_priority for t in inst.tids] == [PRIO_ATTACHED] * 2
    mon = Monitor(manager, Rates(tsc_hz()), Significance(summary_s=0.01))
    mon.tick()
    rows = []
    import threading

    def sample():
        for _ in range(8):
            time.sleep(0.25)
            rows.append(mon.tick()[0])

    t = threading.Thread(target=sample)
    t.start()
    report = traffic(ns, tmp_path, VF0, pps=1000, seconds=2.0)
    t.join()

    assert report["sent"] > 1500 and report["lost"] == 0, report
    for flow in report["flows"].values():
        assert flow["vlans"] == [100] and not flow["untagged"]  # the tunnel NF's tag
        assert flow["ttls"] == [63]  # ipforward decremented it
        assert flow["dst_macs"] == [NEXT_HOP]  # and set the next hop
        assert flow["duplicates"] == 0 and flow["corrupted"] == 0
    st = inst.stats()
    assert st[0]["pkts"] == report["sent"] == st[0]["tx"]  # every packet counted, none dropped
    assert st[1]["pkts"] == report["sent"] and st[0]["drops"] == st[1]["drops"] == 0
    busy = [r[0] for r in rows if r and r[0]["pps"] > 0]
    assert busy, rows
    # 1000 pps paced by a Python sender on a loaded machine: some windows see catch-up bursts
    assert 300 < max(r["pps"] for r in busy) < 5000, busy
    assert all(r["p99_us"] > 0 and 0 < r["load"] < 1 and r["drops"] == 0 for r in busy), busy

    assert manager.set_batch({"instance": 11, "batch": 8}) == {"instance": 11, "batch": 8}
    assert inst.ctl.batch == 8
    assert manager.detach({"instance": 11}) == {"instance": 11, "state": "detached"}
    assert [s["state"] for s in inst.stats()] == ["parked", "parked"]
    gone = manager.teardown({"instance": 11})
    assert {k: gone[k] for k in ("instance", "state")} == {"instance": 11, "state": "gone"}
    assert [n["type"] for n in gone["nf_stats"]] == [n["type"] for n in CHAIN1["nfs"]]
    assert manager.list() == []
    for pid in res["pids"]:
        assert not os.path.exists(f"/proc/{pid}")
    assert leftovers(f"qw{tag}", f"qw-{tag}") == []


def refused(fn, params, field):
    with pytest.raises(RpcError) as e:
        fn(params)
    assert e.value.code == jsonrpc.REFUSED, e.value.message
    assert e.value.message.startswith(field), e.value.message
    return e.value.message


def test_every_refusal_leaves_nothing(manager, worker_ns):
    tag, _ns = worker_ns
    prep = manager.prepare
    ok = {"instance": 21, "chain": EMPTY2, "core": CORE, "vf": VF0}
    refused(prep, {**ok, "core": 0}, "params.core")  # the housekeeping core
    refused(prep, {**ok, "core": 7}, "params.core")
    refused(prep, {**ok, "vf": "02:00:00:00:09:09"}, "params.vf")
    refused(prep, {**ok, "vf": "vf0"}, "params.vf")
    refused(prep, {**ok, "mode": "fast"}, "params.mode")
    refused(prep, {**ok, "batch": 0}, "params.batch")
    bad_type = {**EMPTY2, "nfs": [{"type": "empty"}, {"type": "bogus"}]}
    assert "bogus" in refused(prep, {**ok, "chain": bad_type}, "params.chain.nfs[1].type")
    py = {**EMPTY2, "nfs": [{"type": "python", "config": {}}]}
    refused(prep, {**ok, "chain": py}, "params.chain.nfs[0].type")
    refused(prep, {**ok, "chain": {**EMPTY2, "nfs": []}}, "params.chain.nfs")
    refused(prep, {**ok, "chain": {**EMPTY2, "nfs": [{"type": "empty", "config": 3}]}},
            "params.chain.nfs[0].config")  # fmt: skip
    with pytest.raises(RpcError) as e:
        prep({k: v for k, v in ok.items() if k != "vf"})
    assert e.value.code == jsonrpc.INVALID_PARAMS and "params.vf" in e.value.message
    assert manager.entries == {} and leftovers(f"qw{tag}", f"qw-{tag}") == []

    # a config the NF refuses: found only once its process starts; nothing stays behind
    bad_cfg = {**CHAIN1, "nfs": [{"type": "tunnel", "config": {"vlan": 5000}}, CHAIN1["nfs"][1]]}
    msg = refused(prep, {**ok, "chain": bad_cfg}, "params.chain.nfs")
    assert "vlan" in msg, msg
    assert manager.entries == {} and leftovers(f"qw{tag}", f"qw-{tag}") == []
    assert manager.schedulers[CORE].groups == {}

    assert manager.prepare(ok)["state"] == "detached"
    refused(prep, {**ok, "instance": 22}, "params.vf")  # VF in use
    refused(prep, {**ok, "vf": VF1}, "params.instance")  # duplicate id
    refused(manager.attach, {"instance": 99}, "params.instance")
    assert "not attached" in refused(manager.detach, {"instance": 21}, "params.instance")
    refused(manager.set_batch, {"instance": 21, "batch": 5000}, "params.batch")
    assert [e["id"] for e in manager.list()] == [21]
    manager.teardown({"instance": 21})
    refused(manager.teardown, {"instance": 21}, "params.instance")


def test_dead_nf_is_reported_once(manager, worker_ns):
    from worker.monitor import Monitor, Rates, Significance

    res = manager.prepare({"instance": 31, "chain": EMPTY2, "core": CORE, "vf": VF1})
    manager.attach({"instance": 31})
    mon = Monitor(manager, Rates(2e9), Significance())
    first = {"id": 31, "pps": 0.0, "load": 0.0, "p99_us": 0.0, "drops": 0, "queue_len": None,
             "buffered": 0}  # fmt: skip
    assert mon.tick() == ([first], [])
    os.kill(res["pids"][1], signal.SIGKILL)
    # the core's watchdog sees the thread gone and ends the chain (every process of it)
    sched = manager.schedulers[CORE]
    wait_for(lambda: any(e["chain"] == "i31" for e in sched.events), 5, "the watchdog")
    wait_for(lambda: manager.entries[31].chain.procs[0].poll() is not None, 5, "NF 0 ended")
    events = mon.tick()[1]
    assert len(events) == 1 and events[0]["kind"] == "nf_failed", events
    assert events[0]["instance"] == 31 and events[0]["watchdog"] is True
    assert "NF" in events[0]["reason"] and events[0]["nfs"] == [0, 1]  # exited, or a zombie
    assert mon.tick()[1] == []  # once
    assert manager.list()[0]["state"] == "failed"
    refused(manager.attach, {"instance": 31}, "params.instance")
    gone = manager.teardown({"instance": 31})
    assert (gone["instance"], gone["state"]) == (31, "gone") and "nf_stats" in gone


# --- quadrant-agent itself, over the wire -------------------------------------------


class Peer:
    """Plays the controller: answers register, stats and event, sends commands."""

    def __init__(self):
        import asyncio

        self.got: list[dict] = []
        self.replies: dict[int, asyncio.Future] = {}
        self.registered = asyncio.Queue()
        self.conns = []
        self.next_id = 1000

    async def handler(self, ws):
        self.conns.append(ws)
        async for text in ws:
            msg = json.loads(text)
            self.got.append(msg)
            if msg.get("method") == "register":
                await ws.send(json.dumps(jsonrpc.result(msg["id"], {"heartbeat_s": 0.5})))
                await self.registered.put(msg["params"])
            elif msg.get("method") in ("stats", "event"):
                await ws.send(json.dumps(jsonrpc.result(msg["id"], {"accepted": 1})))
            elif "method" not in msg and msg.get("id") in self.replies:
                self.replies.pop(msg["id"]).set_result(msg)

    async def command(self, method, params, timeout=60):
        import asyncio

        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.replies[self.next_id] = fut
        ws = self.conns[-1]
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                                  "id": self.next_id}))  # fmt: skip
        return await asyncio.wait_for(fut, timeout)

    def stats_of(self, iid):
        return [r for m in self.got if m.get("method") == "stats"
                for r in m["params"]["instances"] if r["id"] == iid]  # fmt: skip


def test_quadrant_agent_serves_commands_over_the_wire(worker_ns, tmp_path):
    import asyncio

    from websockets.asyncio.server import serve

    tag, ns = worker_ns
    os.chmod(tmp_path, 0o755)
    token = tmp_path / "token"
    token.write_text("qw-token-0123456789\n")
    peer = Peer()

    async def scenario():
        async with serve(peer.handler, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.agent", "--controller",
                f"ws://127.0.0.1:{port}/v1/agents", "--worker-id", "w1",
                "--token-file", str(token), "--topology", str(ROOT / "topologies/lab.yaml"),
                "--netns", ns, "--cores", str(CORE), "--prefix", f"qw{tag}",
                "--uid-base", "48200", "--log-dir", str(tmp_path),
                "--monitor-interval", "0.2", "--summary", "1",
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )  # fmt: skip
            try:
                reg = await asyncio.wait_for(peer.registered.get(), 20)
                assert reg["inventory"]["cores"] == [CORE]  # what it manages, not [0, 1]
                assert reg["instances"] == []
                r = await peer.command("prepare", {"instance": 5, "chain": CHAIN1,
                                                   "core": CORE, "vf": VF0})  # fmt: skip
                assert r.get("result", {}).get("state") == "detached", r
                pids = r["result"]["pids"]
                r = await peer.command("prepare", {"instance": 6, "chain": CHAIN1,
                                                   "core": CORE, "vf": VF0})  # fmt: skip
                assert (
                    r["error"]["code"] == jsonrpc.REFUSED and "params.vf" in r["error"]["message"]
                )
                r = await peer.command("attach", {"instance": 5})
                assert r["result"] == {"instance": 5, "state": "attached"}
                loop = asyncio.get_running_loop()
                report = await loop.run_in_executor(
                    None, lambda: traffic(ns, tmp_path, VF0, pps=800, seconds=1.5, flows=2)
                )
                assert report["lost"] == 0 and report["sent"] > 800, report
                await asyncio.sleep(0.5)
                busy = [s for s in peer.stats_of(5) if s["pps"] > 0]
                assert busy and max(s["pps"] for s in busy) > 200, peer.stats_of(5)

                # the controller goes away and comes back: the instance keeps running
                await peer.conns[-1].close()
                reg = await asyncio.wait_for(peer.registered.get(), 20)
                assert reg["instances"] == [{"id": 5, "chain_id": 1, "core": CORE, "vf": VF0,
                                             "state": "attached"}]  # fmt: skip
                assert all(os.path.exists(f"/proc/{p}") for p in pids)

                r = await peer.command("set_batch", {"instance": 5, "batch": 16})
                assert r["result"] == {"instance": 5, "batch": 16}
                r = await peer.command("teardown", {"instance": 5})
                assert (r["result"]["instance"], r["result"]["state"]) == (5, "gone")
                assert [n["type"] for n in r["result"]["nf_stats"]] == ["tunnel", "ipforward"]
                for _ in range(50):  # reaped; the kernel may take a moment to drop the entries
                    if not any(os.path.exists(f"/proc/{p}") for p in pids):
                        break
                    await asyncio.sleep(0.05)
                assert not any(os.path.exists(f"/proc/{p}") for p in pids)
                # one left prepared: the agent's exit takes it down
                r = await peer.command("prepare", {"instance": 7, "chain": EMPTY2,
                                                   "core": CORE, "vf": VF1})  # fmt: skip
                assert r.get("result", {}).get("state") == "detached", r
                pids = r["result"]["pids"]
                os.kill(pids[1], signal.SIGKILL)  # an NF dies: the controller hears of it
                for _ in range(50):
                    events = [m["params"] for m in peer.got if m.get("method") == "event"]
                    if events:
                        break
                    await asyncio.sleep(0.1)
                assert events and events[0]["kind"] == "nf_failed", peer.got[-5:]
                assert events[0]["instance"] == 7 and events[0]["nfs"] == [1]
            finally:
                if agent.returncode is None:
                    agent.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(agent.wait(), 30) == 0
        for _ in range(50):  # no NF outlives its agent (the last ones may still be exiting)
            if not any(os.path.exists(f"/proc/{p}") for p in pids):
                break
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids)

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert leftovers(f"qw{tag}", f"qw{tag}") == []
    for c in ("cpuset", "memory"):
        assert not (Path("/sys/fs/cgroup") / c / f"qw{tag}").exists()


# --- in the lab: through the real userspace switch ---------------------------------


@pytest.mark.e2e
def test_instance_in_the_lab_behind_the_switch(lab, tmp_path):
    """The manager on lab worker w1 (its namespace, its macvlan VF); plain flow entries
    stand in for the controller's: source -> VF MAC on w1's port, w1's port -> sink."""
    from worker.instances import InstanceManager
    from worker.launcher import LocalLauncher

    os.chmod(tmp_path, 0o755)
    w1 = next(w for w in lab.topology.workers if w.name == "w1")
    src = next(h for h in lab.topology.hosts if h.role == "source")
    sink = next(h for h in lab.topology.hosts if h.role == "sink")
    vf = w1.vfs[0]
    lab.ofctl(
        "add-flow", f"priority=10,in_port=1,actions=mod_dl_dst:{vf.mac},output:{w1.switch_port}"
    )
    lab.ofctl("add-flow", f"priority=10,in_port={w1.switch_port},actions=output:2")
    tag = uuid.uuid4().hex[:6]
    inv = {"vfs": [{"mac": v.mac, "netdev": v.netdev} for v in w1.vfs]}
    m = InstanceManager(inv, [CORE], launcher=LocalLauncher(cgroup_parent=f"qw-{tag}"),
                        netns=lab.ns("w1"), prefix=f"qw{tag}", uid_base=48500,
                        log_dir=str(tmp_path), n_slots=512)  # fmt: skip
    chain = {**CHAIN1, "nfs": [CHAIN1["nfs"][0], {"type": "ipforward", "config": {
        "routes": [{"prefix": "10.2.0.0/16", "next_hop_mac": sink.mac}]}}]}  # fmt: skip
    tx, rx = tmp_path / "tx.json", tmp_path / "rx.json"
    py = [sys.executable, "-m", "tools.trafficgen"]
    try:
        m.prepare({"instance": 41, "chain": chain, "core": CORE, "vf": vf.mac})
        m.attach({"instance": 41})
        sink_proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("sink"), *py, "sink", "--iface", "eth0",
             "--seconds", "20", "--idle", "1.5", "--json", str(rx), "--sent", str(tx)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            assert sink_proc.stdout.readline().strip() == "ready"
            subprocess.run(
                ["ip", "netns", "exec", lab.ns("src"), *py, "send", "--iface", "eth0",
                 "--src-mac", src.mac, "--dst-mac", sink.mac, "--src", "10.1.0.0/24",
                 "--dst", sink.address, "--flows", "8", "--pps", "1000", "--seconds", "2",
                 "--json", str(tx)],
                check=True, capture_output=True, timeout=30, cwd=ROOT,
            )  # fmt: skip
            sink_proc.wait(30)
        finally:
            if sink_proc.poll() is None:
                sink_proc.kill()
        report = json.loads(rx.read_text())
        st = m.entries[41].chain.stats()
    finally:
        m.close()
    assert report["sent"] > 1500 and report["lost"] == 0, report
    for flow in report["flows"].values():
        assert flow["vlans"] == [100] and flow["ttls"] == [63] and flow["dst_macs"] == [sink.mac]
    # the hosts' own frames (IPv6 ND...) ride the same flow entry: every packet accounted
    assert st[0]["pkts"] >= report["sent"]
    # (NF 0 counts what a later NF dropped when the slot comes back flagged)
    assert st[0]["pkts"] == st[0]["tx"] + st[0]["drops"] and st[1]["drops"] <= st[0]["drops"], st
    assert leftovers(f"qw{tag}", f"qw-{tag}") == []
