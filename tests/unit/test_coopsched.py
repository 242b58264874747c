"""Checks the cooperative scheduler makes before it touches a core (worker/coopsched.py)."""

import os
import threading

import pytest

from worker import coopsched
from worker.coopsched import SchedError, check_cores, schedstat, thread_state


def test_refuses_to_take_every_cpu():
    with pytest.raises(SchedError, match="no CPU for the kernel"):
        check_cores(sorted(os.sched_getaffinity(0)))


def test_refuses_unknown_cpu():
    with pytest.raises(SchedError, match="cores: 4096"):
        check_cores([4096])


def test_refuses_rt_throttling_off(monkeypatch, tmp_path):
    f = tmp_path / "rt"
    f.write_text("-1\n")
    monkeypatch.setattr(coopsched, "RT_RUNTIME", str(f))
    cpu = sorted(os.sched_getaffinity(0))[-1]
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    with pytest.raises(SchedError, match="sched_rt_runtime_us"):
        check_cores([cpu])


def test_rt_throttling_is_read_not_changed():
    runtime, period = coopsched.rt_throttling()
    assert period > 0 and runtime <= period
    assert coopsched.rt_throttling() == (runtime, period)


def test_thread_probes():
    tid = threading.get_native_id()
    run_ns, pcount = schedstat(tid)
    assert run_ns > 0 and pcount > 0
    assert thread_state(tid) == "R"
    assert thread_state(2**22 + 12345) == "X"


def test_bad_timeout_is_refused():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    with pytest.raises(SchedError, match="timeout"):
        coopsched.CoreScheduler(sorted(os.sched_getaffinity(0))[-1], timeout=0)
