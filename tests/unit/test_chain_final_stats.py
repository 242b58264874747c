"""ChainInstance.final_nf_stats: the NF processes' own counters, from the summaries
their processes print at teardown, in chain order whatever the isolation mode."""

from __future__ import annotations

import pytest

pytest.importorskip("cext.chainbuf")
from worker.chain import ChainIds, ChainInstance  # noqa: E402

NFS = [{"type": "acl", "config": {}}, {"type": "urlfilter", "config": {}},
       {"type": "encrypt", "config": {}}]  # fmt: skip


def inst(mode: str) -> ChainInstance:
    return ChainInstance("i7", NFS, core=1, ports={"rx": {"vdev": "net_null0"}},
                         ids=ChainIds(47000, 47000), mode=mode)  # fmt: skip


def test_empty_before_a_teardown():
    assert inst("cfs").final_nf_stats() == []


def test_one_process_per_nf():
    c = inst("cfs")
    c.summaries = [{"done": True, "nf_stats": [{"denied": 1}]},
                   {"done": True, "nf_stats": [{"blocked": 2}]},
                   {"done": True, "nf_stats": [{"encrypted": 3}]}]  # fmt: skip
    assert c.final_nf_stats() == [{"type": "acl", "denied": 1},
                                  {"type": "urlfilter", "blocked": 2},
                                  {"type": "encrypt", "encrypted": 3}]  # fmt: skip


def test_one_process_for_all_nfs():
    c = inst("single_thread")
    c.summaries = [{"done": True, "nf_stats": [{"denied": 1}, {"blocked": 2}, {"n": 3}]}]
    assert [s.get("blocked") for s in c.final_nf_stats()] == [None, 2, None]


def test_a_process_without_a_summary_keeps_its_place():
    c = inst("cfs")
    c.summaries = [{"done": True, "nf_stats": [{"denied": 1}]}, None,
                   {"done": True, "nf_stats": [{"encrypted": 3}]}]  # fmt: skip
    assert c.final_nf_stats() == [{"type": "acl", "denied": 1}, {"type": "urlfilter"},
                                  {"type": "encrypt", "encrypted": 3}]  # fmt: skip
