"""The NF runtime's config file and EAL arguments (pure)."""

from __future__ import annotations

import pytest

from worker.nf_config import eal_args, hugepages_free_mb, parse_config, use_hugepages
from worker.nf_errors import NFConfigError

BASE = {
    "name": "fw0",
    "core": 1,
    "ports": {"rx": {"vdev": "net_pcap0,rx_pcap=in.pcap"}, "tx": {"vdev": "net_null0"}},
    "nf": {"type": "acl", "config": {"default": "allow"}},
}


def cfg(**over):
    raw = {**BASE, **over}
    return parse_config(raw)


def test_defaults():
    c = cfg()
    assert (c.name, c.core, c.batch, c.file_prefix, c.hugepages) == (
        "fw0",
        1,
        32,
        "quadrant-fw0",
        "auto",
    )
    assert c.rx.name == "net_pcap0" and c.tx.name == "net_null0" and not c.same_port
    assert str(c.stats_path) == "/dev/shm/quadrant-nf-fw0.stats"
    assert c.nf.type == "acl" and c.nf.config == {"default": "allow"}
    assert c.duration_s is None and c.max_packets is None and c.slice_s == 0.1


def test_eal_args_vdev_no_huge():
    args = eal_args(cfg(eal={"file_prefix": "qd-x", "memory_mb": 64}), hugepages=False)
    assert args == [
        "quadrant-nf",
        "-l",
        "1",
        "--file-prefix",
        "qd-x",
        "-m",
        "64",
        "--no-huge",
        "--no-pci",
        "--vdev",
        "net_pcap0,rx_pcap=in.pcap",
        "--vdev",
        "net_null0",
    ]


def test_eal_args_pci_same_port_hugepages():
    c = cfg(ports={"rx": {"pci": "03:00.1"}}, eal={"args": ["--log-level", "*:info"]})
    assert c.same_port and c.rx.devargs == "0000:03:00.1"
    assert eal_args(c, hugepages=True) == [
        "quadrant-nf",
        "-l",
        "1",
        "--file-prefix",
        "quadrant-fw0",
        "-m",
        "256",
        "--huge-unlink",
        "-a",
        "0000:03:00.1",
        "--log-level",
        "*:info",
    ]


def test_hugepage_choice():
    assert use_hugepages(cfg(), free_mb=512)
    assert not use_hugepages(cfg(), free_mb=100)
    assert use_hugepages(cfg(eal={"hugepages": True}), free_mb=0)
    assert not use_hugepages(cfg(eal={"hugepages": False}), free_mb=4096)


def test_hugepages_free_reads_meminfo(tmp_path):
    mounts, meminfo = tmp_path / "mounts", tmp_path / "meminfo"
    meminfo.write_text(
        "HugePages_Total:     256\nHugePages_Free:      100\nHugepagesize:   2048 kB\n"
    )
    mounts.write_text("nodev /dev/hugepages hugetlbfs rw,relatime 0 0\n")
    assert hugepages_free_mb(str(meminfo), str(mounts)) == 200
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert hugepages_free_mb(str(meminfo), str(mounts)) == 0


@pytest.mark.parametrize(
    ("over", "field", "reason"),
    [
        ({"name": "has space"}, "name", "must match"),
        ({"batch": 0}, "batch", "must be 1..256"),
        ({"batch": 512}, "batch", "must be 1..256"),
        ({"core": "one"}, "core", "must be an integer"),
        ({"nf": {"type": "natx"}}, "nf.type", "unknown NF type 'natx'"),
        ({"nf": {}}, "nf.type", "missing"),
        ({"nf": {"type": "python"}}, "nf.class", "needs class"),
        ({"nf": {"type": "empty", "class": "a:B"}}, "nf.class", "only for type native or python"),
        ({"nf": {"type": "empty", "config": [1]}}, "nf.config", "must be a mapping"),
        ({"ports": {}}, "ports.rx", "missing"),
        ({"ports": {"rx": {"vdev": "eth0"}}}, "ports.rx.vdev", "not a known vdev"),
        ({"ports": {"rx": {"pci": "zz:00.0"}}}, "ports.rx.pci", "not a PCI address"),
        ({"ports": {"rx": {"pci": "03:00.0", "vdev": "net_null0"}}}, "ports.rx", "exactly one"),
        (
            {"ports": {"rx": {"vdev": "net_null0"}, "tx": {"vdev": "net_null0,size=64"}}},
            "ports.tx",
            "with other devargs",
        ),
        ({"eal": {"hugepages": "maybe"}}, "eal.hugepages", "auto, true or false"),
        ({"eal": {"args": "-l 1"}}, "eal.args", "list of strings"),
        ({"mempool": {"size": 10}}, "mempool.size", "must be 1024.."),
        ({"run": {"duration_s": -1}}, "run.duration_s", "must be a number > 0"),
        ({"run": {"forever": True}}, "run.forever", "unknown option"),
        ({"stats": {"keep": "yes"}}, "stats.keep", "true or false"),
        ({"bogus": 1}, "bogus", "unknown option"),
    ],
)
def test_errors_name_the_field(over, field, reason):
    with pytest.raises(NFConfigError) as err:
        cfg(**over)
    assert err.value.field == field
    assert reason in err.value.reason


def test_not_a_mapping():
    with pytest.raises(NFConfigError, match="config: must be a mapping"):
        parse_config([1, 2])
