"""One NF of a ``tunnel -> ipforward`` instance fails under traffic: killed (SIGKILL), then,
on the instance its flows moved to, stopped (SIGSTOP: its counters stop while its
input ring fills).  Each time the agent finds it within the bound and reports it, the
controller moves the flows to a healthy instance, the failed one is torn down and the
warm pool refilled; loss is bounded, nothing is reordered or duplicated, and no flow is
served by two instances.

The agents run with ``--stall-timeout 0.15`` and ``--watchdog-timeout 1`` (so the stopped
NF is found by the stall rule, not by the core's watchdog seeing its predecessor run
alone: with the defaults, 0.3 and 0.25 s, either may come first) and check every 0.05 s.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT
from tests.e2e.lab_flows import Traffic, hosts, instances, tunnel_ipforward
from tools.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

STALL_S = 0.15
INTERVAL_S = 0.05
PPS = 400


@pytest.fixture
def stack(root_required):
    from quadrant_app.topology import load

    conf = {"idle_timeout": 60, "flow_stats_interval": 1, "warm_pool": 2,
            "scaling_policy": "off", "tick_interval": 0.1}  # fmt: skip
    st = Stack(load(LAB_TOPOLOGY), prefix="h10n", log=lambda m: None, controller_conf=conf,
               heartbeat_s=0.2, agent_args=("--stall-timeout", str(STALL_S),
                                            "--liveness-interval", str(INTERVAL_S),
                                            "--watchdog-timeout", "1"))  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        st.down()


def nf_pids(stack, worker: str, iid: int) -> list[int]:
    m = re.findall(rf"prepared instance {iid} .*pids \[([0-9, ]+)\]", stack.agent_log(worker))
    assert m, stack.agent_log(worker)[-2000:]
    return [int(p) for p in m[-1].split(",")]


def flows_on(stack) -> set[int]:
    return {f["instance_id"] for f in stack.admin.get("/v1/flows")["flows"]}


def fail_one(stack, chain_id: int, sig: int) -> dict:
    """Under traffic, send ``sig`` to NF 1 of the instance that has the flows; returns
    what was measured (asserted by the caller)."""
    traffic = Traffic(stack, proto="udp", pps=PPS, seconds=5.0, idle=2.0).start()
    try:
        wait_until(lambda: len(stack.admin.get("/v1/flows")["flows"]) >= 8, 30, "8 flows")
        (a,) = flows_on(stack)
        victim = next(i for i in instances(stack, chain_id) if i["id"] == a)
        pids = nf_pids(stack, victim["worker"], a)
        time.sleep(1.0)
        os.kill(pids[1], sig)
        t0 = time.monotonic()
        entry = wait_until(
            lambda: next((f for f in stack.admin.get("/v1/failures")["failures"]
                          if f.get("instance") == a), None), 10, "the failure report",
            interval=0.05,
        )  # fmt: skip
        wait_until(lambda: a not in flows_on(stack), 10, "the flows to leave", interval=0.05)
    finally:
        sent, report = traffic.join()
    if sig == signal.SIGSTOP:  # fenced by the agent: SIGKILL reaches a stopped process
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10,
                   "the stopped NF's processes to be killed")  # fmt: skip
    return {"a": a, "worker": victim["worker"], "pids": pids, "entry": entry, "t0": t0,
            "sent": sent, "report": report}  # fmt: skip


def check(stack, chain_id: int, got: dict, cause: str) -> None:
    e, a = got["entry"], got["a"]
    detect = e["agent_at"] - got["t0"]
    report = e["t"] - e["agent_at"]  # both this host's monotonic clock
    assert e["kind"] == "nf" and e["cause"] == cause, e  # SIGKILL: exited, SIGSTOP: stalled
    # found within the bound (and one check interval), reported at once
    bound = STALL_S + 2 * INTERVAL_S if cause == "stalled" else 2 * INTERVAL_S + 0.1
    assert 0 <= detect < bound, (detect, e)
    assert 0 <= report < 0.5, (report, e)
    assert e["flows_moved"] >= 8, e
    (b,) = flows_on(stack)
    assert b != a and all(i["id"] != a for i in instances(stack, chain_id))
    sent, rep = got["sent"], got["report"]
    lost = sum(sent.values()) - sum(r["received"] for r in rep.values())
    assert 0 <= lost <= PPS * 1.0, (lost, rep)  # at most a second's worth of traffic
    bad = {k: r for k, r in rep.items() if r["reordered"] or r["duplicates"]}
    assert not bad, (cause, got["entry"], bad)
    # no flow served by two instances: the failed instance has no rule left on the switch,
    # every flow one rule, on the new instance
    cookies = re.findall(r"cookie=0x(5146[0-9a-f]{12})", stack.lab.ofctl("dump-flows"))
    owners = [int(c, 16) & 0xFFFFFFFFFFFF for c in cookies]
    assert a not in owners and len(owners) >= 8 and set(owners) == {b}, owners
    print(
        f"{cause}: detect {detect * 1000:.0f} ms, report {report * 1000:.0f} ms, "
        f"lost {lost} of {sum(sent.values())}"
    )


def test_a_killed_then_a_stopped_nf_is_failed_over(stack):
    _src, sink = hosts(stack.topology)
    chain = stack.tenant.post("/v1/chains", tunnel_ipforward("nf-failure", sink))
    wait_until(lambda: len(instances(stack, chain["id"])) == 2, 180, "two instances")
    # the flows set up first, apart: a flow's first packets (packet-in, packet-out) may be
    # overtaken by the packets after them; what is asserted is the failover's order
    Traffic(stack, proto="udp", pps=PPS, seconds=1.0, idle=1.0).start().join()

    killed = check_and_refill(stack, chain["id"], signal.SIGKILL, "exited")
    stopped = check_and_refill(stack, chain["id"], signal.SIGSTOP, "stalled")
    assert killed["worker"] != stopped["worker"]  # the flows went to the other worker


def check_and_refill(stack, chain_id: int, sig: int, cause: str) -> dict:
    got = fail_one(stack, chain_id, sig)
    check(stack, chain_id, got, cause)
    # the warm pool refills on the failed instance's worker
    wait_until(lambda: len(instances(stack, chain_id)) == 2, 120, "the pool to refill")
    return got
