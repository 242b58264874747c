"""Bad config and failing NFs: a clear message naming the field, an exit code, no crash."""

from __future__ import annotations

import uuid

import pytest
from scapy.all import raw, wrpcap

from tests.dataplane.conftest import nf_config, run_config
from tests.dataplane.packets import udp


@pytest.fixture
def config_for(tmp_path):
    def make(nf):
        tag = uuid.uuid4().hex[:8]
        inp = tmp_path / f"{tag}.pcap"
        wrpcap(str(inp), [udp()] * 3)
        return nf_config(
            tmp_path, tag, nf, f"net_pcap{tag},rx_pcap={inp}", f"net_null{tag}", max_packets=3
        )

    return make


@pytest.mark.parametrize(
    ("nf", "message"),
    [
        ({"type": "firewall9000"}, "nf.type: unknown NF type 'firewall9000'"),
        (
            {"type": "ipforward", "config": {"route_file": "nope.txt"}},
            "config.route_file: no such file",
        ),
        (
            {
                "type": "ipforward",
                "config": {
                    "routes": [{"prefix": "10.0.0.0/33", "next_hop_mac": "02:00:00:00:00:01"}]
                },
            },
            "config.routes[0].prefix: not an IPv4 prefix",
        ),
        (
            {"type": "acl", "config": {"rules": [{"action": "maybe"}]}},
            "config.rules[0].action: action must be 'allow' or 'deny'",
        ),
        (
            {
                "type": "acl",
                "config": {"rules": [{"action": "deny", "proto": "icmp", "dport": 80}]},
            },
            "config.rules[0].proto: port ranges need proto tcp, udp or sctp",
        ),
        ({"type": "tunnel", "config": {"vlan": 5000}}, "config.vlan: must be 1..4094"),
        ({"type": "empty", "config": {"speed": "fast"}}, "config: EmptyNF takes no options"),
        (
            {"type": "native", "class": "worker.nf_tables:AclRule"},
            "nf.class: 'worker.nf_tables:AclRule' is not a cext.nf.NativeNF subclass",
        ),
        (
            {"type": "python", "class": "no.such.module:NF"},
            "nf.class: cannot import 'no.such.module'",
        ),
    ],
)
def test_bad_nf_config_is_refused(tmp_path, config_for, nf, message):
    result = run_config(tmp_path, config_for(nf))
    assert result.returncode == 2, result.stderr
    assert f"quadrant-nf: bad config: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_rule_file_names_the_line(tmp_path, config_for):
    (tmp_path / "rules.txt").write_text("# ok\nallow any any tcp any 80\ndeny 10.0.0.0/8 any\n")
    cfg = config_for({"type": "acl", "config": {"rule_file": "rules.txt"}})
    result = run_config(tmp_path, cfg)
    assert result.returncode == 2
    assert "rules.txt:3: expected 6 columns" in result.stderr


def test_unknown_port_is_a_dpdk_error(tmp_path, config_for):
    cfg = config_for({"type": "empty"})
    cfg["ports"]["rx"] = {"vdev": "net_pcap_x,rx_pcap=/nonexistent/in.pcap"}
    result = run_config(tmp_path, cfg)
    assert result.returncode == 3
    assert "quadrant-nf: DPDK error:" in result.stderr


def test_python_nf_exception_stops_the_runtime(tmp_path, config_for):
    cfg = config_for({"type": "python", "class": "tests.dataplane.pynfs:Explodes"})
    result = run_config(tmp_path, cfg)
    assert result.returncode == 4
    assert "ValueError: NF bug on purpose" in result.stderr


def test_top_level_typo(tmp_path, config_for):
    cfg = config_for({"type": "empty"})
    cfg["batchsize"] = 64
    result = run_config(tmp_path, cfg)
    assert result.returncode == 2
    assert "bad config: batchsize: unknown option" in result.stderr
    assert raw(udp())  # the fixture's pcap was valid: only the typo is at fault
