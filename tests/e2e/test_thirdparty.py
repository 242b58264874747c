"""Third-party NFs in chains: the shipped examples (nftables firewall, Linux router)
between native NFs, on real DPDK ports (net_pcap in, net_pcap out), the real bridge
process on net_af_packet over veth pairs into the NF's own network namespace, the
real cooperative scheduler on core 1 -- and a killed program detected.

Needs root (namespaces, SCHED_FIFO, setuid) and the DPDK build; seconds per test.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

scapy = pytest.importorskip("scapy.all")
from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, rdpcap, wrpcap  # noqa: E402

from quadrant_app.jsonrpc import RpcError  # noqa: E402
from tests.e2e.chain_fixtures import (  # noqa: E402
    CORE,
    EXAMPLES,
    make_chain,
    nft_counters,
    pcap_ports,
    wait_for,
)
from worker.chain import ChainError, ChainIds  # noqa: E402

pytestmark = [pytest.mark.dpdk, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

IDS = ChainIds(47510, 47510)
SRC, DST = "02:00:00:00:00:01", "02:00:00:00:00:02"


def example(name):
    return yaml.safe_load((EXAMPLES / name).read_text())


def chain(name, nfs, work, sched, pin, pout=None, infinite=False, mode="coop"):
    ports = pcap_ports(name, pin, pout, infinite)
    return make_chain(name, nfs, work, sched, ports, ids=IDS, prefix="tp", mode=mode)


def tcp(src, sport, dst, dport, flags, seq, ack=0, load=b""):
    return (
        Ether(src=SRC, dst=DST)
        / IP(src=src, dst=dst, ttl=64)
        / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535)
        / load
    )


def firewall_traffic():
    """(frames, allowed?): one TCP connection both ways, then what the rules refuse."""
    c, s = ("10.1.0.5", 40000), ("10.2.0.1", 80)
    flow = [
        tcp(*c, *s, "S", 1000),
        tcp(*s, *c, "SA", 5000, 1001),
        tcp(*c, *s, "A", 1001, 5001),
        tcp(*c, *s, "PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n"),
        tcp(*s, *c, "PA", 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\nhello"),
        tcp(*c, *s, "FA", 1019, 5025),
    ]
    refused = [
        tcp("10.1.0.6", 40001, "10.2.0.1", 23, "S", 7000),  # telnet
        tcp("10.2.0.9", 5555, "10.1.0.5", 22, "S", 9000),  # a new connection from outside
        tcp("10.1.0.7", 40002, "10.2.0.1", 80, "SF", 3000),  # SYN+FIN: ct state invalid
    ]
    # established: the outside's packets of the inside's connection pass (above); the
    # same port from the outside without it does not (a reply-looking packet is new)
    refused.append(tcp("10.2.0.1", 80, "10.1.0.5", 40111, "S", 1))
    frames = flow[:3] + refused[:2] + flow[3:5] + refused[2:] + flow[5:]
    allowed = [f for f in frames if f in flow]
    return frames, allowed


def via_ipforward_and_tunnel(p, vlan):
    hop = "02:00:00:00:02:01" if p[IP].dst.startswith("10.2.") else "02:00:00:00:01:01"
    ip = p[IP].copy()
    ip.ttl -= 1
    del ip.chksum
    return bytes(Ether(src=p[Ether].src, dst=hop) / Dot1Q(vlan=vlan) / ip)


@pytest.mark.parametrize("mode", ["coop", "cfs"])
def test_nftables_firewall_in_a_chain(work, sched, mode):
    spec = example("nft-firewall.yaml")
    frames, allowed = firewall_traffic()
    pin, pout = work / "in.pcap", work / "out.pcap"
    wrpcap(str(pin), frames)
    inst = chain(f"fw{mode}", spec["nfs"], work, sched, pin, pout, mode=mode)
    try:
        inst.prepare()
        assert [n["type"] for n in inst.nfs] == ["ipforward", "thirdparty", "tunnel"]
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] == len(allowed))
        # the refused frames' slots come back empty once their hold is over
        assert wait_for(lambda: inst.stats()[1]["thirdparty"]["held"] == 0)
        inst.detach()
        st = inst.stats()
        counters = nft_counters(f"tp-fw{mode}-nf1")
        bridge = st[1]["thirdparty"]
    finally:
        inst.teardown()
    # the chain's counters account for every frame, the NF's drops included
    assert st[0]["pkts"] == len(frames) and st[0]["tx"] == len(allowed)
    assert st[1]["pkts"] == len(frames) and st[1]["tx"] == len(allowed)
    # (what its kernel sends on its own -- an IGMP report -- is read and dropped: chatter)
    assert bridge["to_nf"] == len(frames)
    assert bridge["from_nf"] - bridge["chatter"] == len(allowed)
    assert bridge["passed"] == len(allowed)
    assert bridge["expired"] == len(frames) - len(allowed) == st[1]["drops"]
    assert bridge["overflow"] == bridge["reverse"] == bridge["to_nf_fail"] == 0
    # the kernel's own counters of the veths agree: nothing else went to the NF (what it
    # sent itself while its bridge was not yet reading, an IGMP report, is not passed on)
    assert bridge["kernel_to_nf"] == len(frames) and bridge["kernel_from_nf"] >= len(allowed)
    assert bridge["status"] == "ok" and bridge["exit_code"] is None
    assert st[2]["pkts"] == len(allowed)
    assert sum(st[1]["hist"]) == st[1]["batches"]  # its turns in the monitor's histogram
    # the firewall's own counters say which rule refused what
    assert counters["telnet"] == 1
    assert counters["new from outside"] == 2
    assert counters["invalid"] == 1
    assert counters["established"] == 5  # SYN-ACK, ACK, request, response, FIN
    assert counters["new from inside"] == 1  # the SYN
    # allowed frames arrive intact: only the native NFs changed them
    got = [bytes(p) for p in rdpcap(str(pout))]
    assert got == [via_ipforward_and_tunnel(p, 100) for p in allowed]
    # its namespace and veths are gone
    assert f"tp-fw{mode}-nf1" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                             text=True).stdout  # fmt: skip


def test_linux_router_in_a_chain(work, sched):
    spec = example("linux-router.yaml")
    frames = [
        Ether(src=SRC, dst=DST) / IP(src=f"10.1.0.{i + 1}", dst=dst, ttl=ttl) / UDP(dport=port)
        / (b"r" * 30)
        for i, (dst, ttl, port) in enumerate([("10.2.0.7", 64, 80), ("10.3.1.1", 9, 443),
                                              ("10.2.9.9", 64, 53), ("10.2.0.8", 1, 80),
                                              ("10.3.0.1", 30, 8080)])
    ]  # fmt: skip
    pin, pout = work / "in.pcap", work / "out.pcap"
    wrpcap(str(pin), frames)
    inst = chain("rt", spec["nfs"], work, sched, pin, pout)
    try:
        inst.prepare()
        inst.attach()
        # the acl drops port 53; the kernel drops TTL 1 and answers with an ICMP error
        assert wait_for(lambda: inst.stats()[0]["tx"] == 4)
        inst.detach()
        st = inst.stats()
    finally:
        inst.teardown()
    bridge = st[1]["thirdparty"]
    assert st[0]["pkts"] == 5 and st[0]["drops"] == 1  # the acl, in the first NF's process
    # one frame in was dropped, one was made: the counters show both only as in == out,
    # the frames below tell them apart
    assert bridge["to_nf"] == 4 and bridge["from_nf"] - bridge["chatter"] == 4
    assert bridge["passed"] == 4
    assert bridge["expired"] == bridge["overflow"] == bridge["reverse"] == 0
    got = rdpcap(str(pout))
    hop2, hop3, hop1 = "02:00:00:00:02:01", "02:00:00:00:03:01", "02:00:00:00:01:01"
    want = [("10.2.0.7", hop2, 63), ("10.3.1.1", hop3, 8), ("10.1.0.4", hop1, 64),
            ("10.3.0.1", hop3, 29)]  # fmt: skip
    assert [p[IP].dst for p in got] == [w[0] for w in want]
    for p, (_, hop, ttl) in zip(got, want, strict=True):
        # routed by the kernel: its eth1 as the source, the route's next hop as the
        # destination, TTL decremented with a valid checksum; then the tunnel's tag
        assert p[Ether].src == "02:51:00:00:00:11" and p[Ether].dst == hop
        assert p[Dot1Q].vlan == 200
        fixed = p[IP].copy()
        del fixed.chksum
        assert IP(bytes(fixed)).chksum == p[IP].chksum
        if p[IP].dst == "10.1.0.4":  # the kernel's own: time exceeded, quoting the frame
            assert p[ICMP].type == 11 and p[ICMP].payload.dst == "10.2.0.8"
        else:
            assert p[IP].ttl == ttl and bytes(p[UDP].payload) == b"r" * 30


def test_killed_thirdparty_nf_is_detected_and_fenced(work, sched):
    spec = example("nft-firewall.yaml")
    frames, _ = firewall_traffic()
    pin = work / "in.pcap"
    wrpcap(str(pin), frames[:3])
    inst = chain("kill", spec["nfs"], work, sched, pin, infinite=True)
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] > 1000)
        assert inst.failures() == []
        tp = inst.thirdparty[1]
        os.kill(tp.pid, signal.SIGKILL)
        assert wait_for(lambda: inst.failures() != [], timeout=2)
        ((i, reason),) = inst.failures()
        assert i == 1 and "exited with status -9" in reason
        s = inst.stats()[1]["thirdparty"]
        assert s["status"] == "failed" and s["exit_code"] == -9
        # fenced: its links are down, nothing reaches the namespace any more, and the
        # chain sends nothing the dead firewall did not pass
        time.sleep(0.1)
        tx0, fail0 = inst.stats()[0]["tx"], inst.stats()[1]["thirdparty"]["to_nf_fail"]
        time.sleep(0.3)
        assert inst.stats()[0]["tx"] == tx0
        assert inst.stats()[1]["thirdparty"]["to_nf_fail"] > fail0
        assert inst.alive()  # the chain's processes run on: the agent decides
    finally:
        inst.teardown()


def test_thirdparty_nf_first_runs_behind_the_port_stage(work, sched):
    # the firewall first: the runtime's port stage (a first process with no NF) owns the port
    fw = example("nft-firewall.yaml")["nfs"][1]
    frames, allowed = firewall_traffic()
    pin, pout = work / "in.pcap", work / "out.pcap"
    wrpcap(str(pin), frames)
    inst = chain("first", [fw, {"type": "tunnel", "config": {"vlan": 7}}], work, sched, pin,
                 pout)  # fmt: skip
    try:
        assert [n["type"] for n in inst.nfs] == ["port_stage", "thirdparty", "tunnel"]
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] == len(allowed))
        assert wait_for(lambda: inst.stats()[1]["thirdparty"]["held"] == 0)
        st = inst.stats()
        got = [bytes(p) for p in rdpcap(str(pout))]
        assert inst.failures() == []
        os.kill(inst.thirdparty[1].pid, signal.SIGKILL)
        assert wait_for(lambda: inst.failures() != [], timeout=2)
        # named by its place in the spec, as errors are
        ((i, reason),) = inst.failures()
        assert i == 0 and reason.startswith("third-party NF 0 failed: its program exited")
    finally:
        inst.teardown()
    b = st[1]["thirdparty"]
    assert st[0]["pkts"] == len(frames) and st[0]["drops"] == len(frames) - len(allowed)
    assert b["to_nf"] == len(frames) and b["passed"] == len(allowed)
    assert b["expired"] == len(frames) - len(allowed)
    assert got == [bytes(Ether(src=p[Ether].src, dst=p[Ether].dst) / Dot1Q(vlan=7) / p[IP])
                   for p in allowed]  # fmt: skip


INLINE_BRIDGE = {
    "type": "thirdparty",
    "config": {
        "command": ["sleep", "infinity"],  # a kernel-only NF: nothing else to run
        "setup": [["ip", "link", "add", "name", "br0", "type", "bridge"],
                  ["ip", "link", "set", "eth0", "master", "br0"],
                  ["ip", "link", "set", "eth1", "master", "br0"],
                  ["bridge", "link", "set", "dev", "eth0", "learning", "off"],
                  ["bridge", "link", "set", "dev", "eth1", "learning", "off"],
                  ["ip", "link", "set", "br0", "up"]],
        "interfaces": {"in": {"name": "eth0"}, "out": {"name": "eth1"}},
        "behaviour": "inline",
        "stall_ms": 100,
    },
}  # fmt: skip


def test_inline_nf_that_stops_forwarding_is_detected(work, sched):
    pin = work / "in.pcap"
    wrpcap(str(pin), firewall_traffic()[0][:4])
    inst = chain("stall", [{"type": "empty"}, INLINE_BRIDGE], work, sched, pin, infinite=True)
    try:
        inst.prepare()
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] > 1000)
        assert inst.failures() == [] and inst.stats()[1]["thirdparty"]["status"] == "ok"
        # the program lives on, the NF stops passing frames: an inline NF has failed
        subprocess.run(["ip", "netns", "exec", "tp-stall-nf1", "ip", "link", "set", "br0",
                        "down"], check=True)  # fmt: skip
        assert wait_for(lambda: inst.failures() != [], timeout=3)
        ((i, reason),) = inst.failures()
        assert i == 1 and "none out for 100 ms" in reason
        s = inst.stats()[1]["thirdparty"]
        assert s["exit_code"] is None and s["status"] == "failed" and s["expired"] > 0
    finally:
        inst.teardown()


def test_user_space_program_output_carries_over_to_later_turns(work, sched):
    # a program in user space answers after the bridge's send has returned: its frames
    # are collected at the bridge's later turns, in order, none lost within the hold
    relay = {
        "type": "thirdparty",
        "config": {
            "command": [sys.executable, "l2relay.py", "eth0", "eth1"],
            "files": {"l2relay.py": (EXAMPLES / "l2relay.py").read_text()},
            "interfaces": {"in": {"name": "eth0"}, "out": {"name": "eth1"}},
            "hold_us": 500_000,
        },
    }
    src = [
        Ether(src=SRC, dst=DST) / IP(src="10.1.0.1", dst="10.2.0.1") / UDP(sport=7, dport=i)
        for i in range(1, 41)
    ]
    pin, pout = work / "in.pcap", work / "out.pcap"
    wrpcap(str(pin), src)
    inst = chain("relay", [{"type": "empty"}, relay, {"type": "empty"}], work, sched, pin, pout)
    try:
        inst.prepare()
        assert wait_for(lambda: "relaying" in (work / "relay-nf1-program.log").read_text())
        inst.attach()
        assert wait_for(lambda: inst.stats()[0]["tx"] == len(src))
        s = inst.stats()[1]
        inst.detach()
    finally:
        inst.teardown()
    b = s["thirdparty"]
    assert b["to_nf"] == b["from_nf"] - b["chatter"] == b["passed"] == len(src)
    assert b["expired"] == b["overflow"] == 0
    # the output came back after the turn that sent it (a kernel NF's comes in the same)
    assert b["late"] > 0
    got = rdpcap(str(pout))
    assert [p[UDP].dport for p in got] == list(range(1, 41))  # the order kept
    assert [bytes(p) for p in got] == [bytes(p) for p in src]  # two MAC swaps, no change


def test_thirdparty_spec_errors_name_the_field(work, sched):
    good = example("nft-firewall.yaml")["nfs"][1]
    pin = work / "in.pcap"
    wrpcap(str(pin), firewall_traffic()[0][:1])
    first = {"type": "thirdparty", "config": {**good["config"], "stall_ms": 1}}
    with pytest.raises(ChainError, match=r"nfs\[0\].config.stall_ms"):  # the spec's index
        chain("bad0", [first, {"type": "empty"}], work, sched, pin)
    bad = {"type": "thirdparty", "config": {**good["config"], "behaviour": ["inline", "x"]}}
    with pytest.raises(ChainError, match=r"nfs\[1\].config.behaviour"):
        chain("bad1", [{"type": "empty"}, bad], work, sched, pin)
    # a setup command that fails is refused with its index; nothing is left behind
    broken = {
        "type": "thirdparty",
        "config": {**good["config"], "setup": [["ip", "link", "set", "nosuch", "up"]]},
    }
    inst = chain("bad2", [{"type": "empty"}, broken], work, sched, pin)
    with pytest.raises(ChainError, match=r"nfs\[1\].config.setup\[0\]: .* exited 1"):
        inst.prepare()
    assert "tp-bad2-nf1" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                               text=True).stdout  # fmt: skip
    assert not any(n.startswith("tp") and "bad2" in n for n in os.listdir("/sys/class/net"))


@pytest.fixture
def agent(tmp_path):
    """The agent's instance manager, NFs as containers in a worker namespace made here
    (a macvlan VF on a veth uplink, as tests/e2e/test_instances.py builds it)."""
    from worker.instances import InstanceManager
    from worker.launcher import LocalLauncher

    tag = uuid.uuid4().hex[:5]
    ns = f"tp-w{tag}"
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run(["ip", "netns", "add", ns])
    m = None
    try:
        run(["ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "tg0"])
        run(["ip", "-n", ns, "link", "add", "vf0", "link", "up0", "address", VF,
             "type", "macvlan", "mode", "bridge"])  # fmt: skip
        for dev in ("lo", "up0", "tg0", "vf0"):
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        os.chmod(tmp_path, 0o755)
        m = InstanceManager({"vfs": [{"mac": VF, "netdev": "vf0"}]}, [CORE],
                            launcher=LocalLauncher(cgroup_parent=f"tp-{tag}"), netns=ns,
                            prefix=f"tp{tag}", uid_base=47600, log_dir=str(tmp_path),
                            n_slots=512)  # fmt: skip
        yield m, ns, tag
    finally:
        if m is not None:
            m.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


VF = "02:00:00:00:51:01"


def test_agent_runs_the_bridge_in_the_worker_namespace_and_reports_a_dead_nf(agent):
    m, ns, tag = agent
    spec = example("nft-firewall.yaml")
    bad = json.loads(json.dumps(spec["nfs"]))
    bad[1]["config"]["behaviour"] = "often"
    with pytest.raises(RpcError, match=r"params.chain.nfs: nfs\[1\].config.behaviour: must be"):
        m.prepare({"instance": 6, "core": CORE, "vf": VF,
                   "chain": {"id": 3, "name": spec["name"], "nfs": bad}})  # fmt: skip
    assert 6 not in m.entries
    m.prepare({"instance": 7, "core": CORE, "vf": VF,
               "chain": {"id": 3, "name": spec["name"], "nfs": spec["nfs"]}})  # fmt: skip
    inst = m.entries[7].chain
    tp = inst.thirdparty[1]
    # the bridge's ends are in the worker's namespace, with the bridge process
    links = subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True)
    assert tp.bridge_to in links.stdout and tp.bridge_from in links.stdout
    netns_of = lambda pid: os.stat(f"/proc/{pid}/ns/net").st_ino  # noqa: E731
    assert netns_of(inst.pids[1]) == os.stat(f"/run/netns/{ns}").st_ino
    assert netns_of(tp.pid) == os.stat(f"/run/netns/{tp.netns}").st_ino
    m.attach({"instance": 7})
    time.sleep(0.2)
    s = inst.stats()[1]["thirdparty"]
    assert s["kernel_to_nf"] == 0 and s["kernel_from_nf"] >= 0  # read in the worker's ns
    # nothing reached the NF or came from it but the chain's (none yet): the frames the
    # bridge's sockets saw before they were bound are flushed, not passed on
    # (its kernel's own multicast chatter is read, counted and dropped)
    assert s["to_nf"] == s["passed"] == 0 and s["from_nf"] == s["chatter"]
    assert inst.stats()[0]["tx"] == 0
    assert m.check_alive() == []
    os.kill(tp.pid, signal.SIGKILL)
    events = []
    assert wait_for(lambda: events.extend(m.check_alive()) or events, timeout=3)
    (ev,) = events
    assert ev["kind"] == "nf_failed" and ev["instance"] == 7 and ev["nfs"] == [1]
    assert "third-party NF 1 failed: its program exited with status -9" in ev["reason"]
    m.teardown({"instance": 7})
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tp.netns not in names


def test_agent_runs_a_chain_whose_first_nf_is_thirdparty(agent):
    m, _ns, _tag = agent
    fw = example("nft-firewall.yaml")["nfs"][1]
    nfs = [fw, {"type": "tunnel", "config": {"vlan": 7}}]
    m.prepare({"instance": 8, "core": CORE, "vf": VF,
               "chain": {"id": 4, "name": "fw-first", "nfs": nfs}})  # fmt: skip
    inst = m.entries[8].chain
    assert [n["type"] for n in inst.nfs] == ["port_stage", "thirdparty", "tunnel"]
    assert len(inst.pids) == 3  # the port stage's process owns the VF
    m.attach({"instance": 8})
    assert m.check_alive() == []
    os.kill(inst.thirdparty[1].pid, signal.SIGKILL)
    events = []
    assert wait_for(lambda: events.extend(m.check_alive()) or events, timeout=3)
    (ev,) = events
    assert ev["kind"] == "nf_failed" and ev["instance"] == 8 and ev["nfs"] == [0]
    assert "third-party NF 0 failed: its program exited with status -9" in ev["reason"]
    m.teardown({"instance": 8})
