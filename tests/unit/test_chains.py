"""Chain specs: validation names the field, filters match, specificity orders them."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from quadrant_app import chains
from quadrant_app.chains import SpecError, parse_chain, parse_filter
from quadrant_app.flowkey import ETH_IPV4, ETH_IPV6, FlowKey
from quadrant_app.ingress import ChainTable

GOOD = {
    "name": "web-tunnel",
    "nfs": [
        {"type": "tunnel", "config": {"vlan": 100}},
        {"type": "ipforward", "config": {"routes": []}},
    ],
    "filter": {"src": "10.1.0.0/16", "dst": "10.2.0.0/16", "proto": "tcp", "dst_ports": "80-8080"},
    "slo_us": 100,
    "scaling": {"alpha": 0.6, "beta": 0.9, "load_cap": 0.9},
}


def key4(src, dst, proto=6, sport=1000, dport=80):
    return FlowKey(
        ETH_IPV4, proto, int(ipaddress.IPv4Address(src)), int(ipaddress.IPv4Address(dst)),
        sport, dport,
    )  # fmt: skip


def key6(src, dst, proto=17, sport=1000, dport=53):
    return FlowKey(
        ETH_IPV6, proto, int(ipaddress.IPv6Address(src)), int(ipaddress.IPv6Address(dst)),
        sport, dport,
    )  # fmt: skip


def test_design_example_parses():
    spec = parse_chain(GOOD)
    assert spec.name == "web-tunnel"
    assert [nf.type for nf in spec.nfs] == ["tunnel", "ipforward"]
    assert spec.filter.dst_ports == (80, 8080) and spec.filter.proto == 6
    assert spec.slo_us == 100.0 and spec.scaling.alpha == 0.6 and spec.priority == 0
    assert chains.chain_to_json(spec)["filter"] == GOOD["filter"]


def test_defaults():
    spec = parse_chain({"name": "a", "nfs": [{"type": "empty"}], "filter": {}, "slo_us": 50})
    assert spec.scaling == chains.Scaling(0.6, 0.9, 0.9)
    assert spec.nfs[0].config == {}
    assert spec.filter.matches(key4("1.2.3.4", "5.6.7.8"))
    assert spec.filter.matches(key6("::1", "::2"))


def test_max_pps_round_trips_and_is_left_out_when_unset():
    spec = parse_chain(GOOD)
    assert spec.scaling.max_pps is None
    assert "max_pps" not in chains.chain_to_json(spec)["scaling"]
    body = copy.deepcopy(GOOD)
    body["scaling"]["max_pps"] = 600
    spec = parse_chain(body)
    assert spec.scaling == chains.Scaling(0.6, 0.9, 0.9, 600.0)
    again = parse_chain(chains.chain_to_json(spec))
    assert again.scaling.max_pps == 600.0


def _with(path, value):
    body = copy.deepcopy(GOOD)
    target = body
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DELETE = object()

BAD = [
    (_with(["name"], ""), "name", "non-empty"),
    (_with(["name"], _DELETE), "name", "missing"),
    (_with(["nfs"], []), "nfs", "non-empty"),
    (_with(["nfs", 0, "type"], "teleport"), "nfs[0].type", "unknown NF type"),
    (_with(["nfs", 1, "config"], [1]), "nfs[1].config", "must be an object"),
    (_with(["nfs", 0, "colour"], "red"), "nfs[0].colour", "unknown field"),
    (_with(["extra"], 1), "extra", "unknown field"),
    (_with(["slo_us"], 0), "slo_us", "positive"),
    (_with(["slo_us"], -5), "slo_us", "positive"),
    (_with(["slo_us"], "100"), "slo_us", "must be a number"),
    (_with(["slo_us"], True), "slo_us", "must be a number"),
    (_with(["filter", "src"], "10.1.0.0/33"), "filter.src", "not an IPv4 or IPv6 prefix"),
    (_with(["filter", "src"], "10.1.0.1/16"), "filter.src", "host bits"),
    (_with(["filter", "dst"], "2001:db8::/32"), "filter.dst", "same IP version"),
    (_with(["filter", "proto"], "gre-ish"), "filter.proto", "not one of"),
    (_with(["filter", "dst_ports"], "90-80"), "filter.dst_ports", "empty range"),
    (_with(["filter", "dst_ports"], "80-70000"), "filter.dst_ports", "out of range"),
    (_with(["filter", "dst_ports"], "http"), "filter.dst_ports", "not a port"),
    (_with(["filter", "proto"], "icmp"), "filter.dst_ports", "need proto tcp"),
    (_with(["filter", "vlan"], 5), "filter.vlan", "unknown field"),
    (_with(["scaling", "alpha"], 0.95), "scaling.alpha", "below scaling.beta"),
    (_with(["scaling", "load_cap"], 1.5), "scaling.load_cap", "(0, 1]"),
    (_with(["scaling", "gamma"], 0.5), "scaling.gamma", "unknown field"),
    (_with(["scaling", "max_pps"], 0), "scaling.max_pps", "positive rate"),
    (_with(["scaling", "max_pps"], "fast"), "scaling.max_pps", "number"),
    (_with(["priority"], 5000), "priority", "0..1000"),
    (_with(["priority"], 1.5), "priority", "integer"),
]


@pytest.mark.parametrize("body,field,reason", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_specs_name_the_field(body, field, reason):
    with pytest.raises(SpecError) as err:
        parse_chain(body)
    assert err.value.field == field
    assert reason in err.value.reason


def test_body_must_be_an_object():
    with pytest.raises(SpecError, match="must be an object"):
        parse_chain([GOOD])


def test_nf_types_are_configurable():
    body = _with(["nfs", 0, "type"], "firewall")
    with pytest.raises(SpecError):
        parse_chain(body)
    assert parse_chain(body, nf_types=("firewall", "ipforward")).nfs[0].type == "firewall"


def test_ipv4_filter_matching():
    f = parse_filter(
        {"src": "10.1.0.0/16", "dst": "10.2.0.0/16", "proto": "tcp", "dst_ports": "80-8080"}
    )
    assert f.matches(key4("10.1.5.5", "10.2.0.1", dport=80))
    assert f.matches(key4("10.1.5.5", "10.2.0.1", dport=8080))
    assert not f.matches(key4("10.1.5.5", "10.2.0.1", dport=8081))
    assert not f.matches(key4("10.3.5.5", "10.2.0.1"))
    assert not f.matches(key4("10.1.5.5", "10.2.0.1", proto=17))
    assert not f.matches(key6("::1", "::2"))  # an IPv4 filter never takes IPv6


def test_ipv6_filter_matching():
    f = parse_filter({"dst": "2001:db8:2::/48", "proto": "udp", "src_ports": 53})
    assert f.matches(key6("2001:db8:1::5", "2001:db8:2::7", sport=53))
    assert not f.matches(key6("2001:db8:1::5", "2001:db8:2::7", sport=54))
    assert not f.matches(key6("2001:db8:1::5", "2001:db8:3::7", sport=53))
    assert not f.matches(key4("10.0.0.1", "10.0.0.2", proto=17, sport=53))


def test_protocol_number_filter():
    f = parse_filter({"proto": 47})
    assert f.matches(key4("1.1.1.1", "2.2.2.2", proto=47, sport=0, dport=0))
    assert not f.matches(key4("1.1.1.1", "2.2.2.2", proto=6))


@pytest.mark.parametrize(
    "a,b,overlap",
    [
        ({"dst": "10.0.0.0/8"}, {"dst": "10.2.0.0/16"}, True),
        ({"dst": "10.1.0.0/16"}, {"dst": "10.2.0.0/16"}, False),
        ({"dst": "10.1.0.0/16"}, {"dst": "2001:db8::/32"}, False),
        ({}, {"dst": "2001:db8::/32"}, True),
        ({"proto": "tcp"}, {"proto": "udp"}, False),
        ({"proto": "tcp", "dst_ports": "80-90"}, {"proto": "tcp", "dst_ports": "91-100"}, False),
        ({"proto": "tcp", "dst_ports": "80-90"}, {"proto": "tcp", "dst_ports": "90-100"}, True),
        ({"proto": "tcp", "dst_ports": 80}, {"dst": "10.0.0.0/8"}, True),
        ({"src": "10.1.0.0/16", "dst": "10.2.0.0/16"}, {"src": "10.3.0.0/16"}, False),
    ],
)
def test_overlap(a, b, overlap):
    fa, fb = parse_filter(a), parse_filter(b)
    assert fa.overlaps(fb) is overlap
    assert fb.overlaps(fa) is overlap


def _spec(filt, priority=0, name="c"):
    return parse_chain(
        {
            "name": name,
            "nfs": [{"type": "empty"}],
            "filter": filt,
            "slo_us": 100,
            "priority": priority,
        }
    )


def test_most_specific_filter_wins():
    table = ChainTable()
    broad = table.add("a", _spec({"dst": "10.0.0.0/8"}), 0)
    dst16 = table.add("b", _spec({"dst": "10.2.0.0/16"}), 0)
    dst16_src = table.add("c", _spec({"dst": "10.2.0.0/16", "src": "10.1.0.0/16"}), 0)
    tcp = table.add("d", _spec({"dst": "10.2.0.0/16", "src": "10.1.0.0/16", "proto": "tcp"}), 0)
    narrow = table.add(
        "e", _spec({"dst": "10.2.0.0/16", "src": "10.1.0.0/16", "proto": "tcp", "dst_ports": 80}), 0
    )
    assert table.match(key4("10.1.0.1", "10.2.0.1", dport=80)) is narrow
    assert table.match(key4("10.1.0.1", "10.2.0.1", dport=81)) is tcp
    assert table.match(key4("10.1.0.1", "10.2.0.1", proto=17)) is dst16_src
    assert table.match(key4("10.9.0.1", "10.2.0.1")) is dst16
    assert table.match(key4("10.9.0.1", "10.3.0.1")) is broad
    assert table.match(key4("11.0.0.1", "12.0.0.1")) is None


def test_priority_beats_specificity_and_order_breaks_ties():
    table = ChainTable()
    specific = table.add("a", _spec({"dst": "10.2.0.0/16"}), 0)
    broad_high = table.add("b", _spec({"dst": "10.0.0.0/8"}, priority=10), 0)
    assert table.match(key4("1.1.1.1", "10.2.0.1")) is broad_high
    table.remove(broad_high.id)
    first = specific
    second = table.add("c", _spec({"dst": "10.2.0.0/16"}), 0)  # another tenant, same filter
    assert table.match(key4("1.1.1.1", "10.2.0.1")) is first
    table.remove(first.id)
    assert table.match(key4("1.1.1.1", "10.2.0.1")) is second


def test_same_tenant_same_priority_overlap_is_refused():
    table = ChainTable()
    table.add("acme", _spec({"dst": "10.0.0.0/8"}), 0)
    with pytest.raises(chains.ConflictError) as err:
        table.add("acme", _spec({"dst": "10.2.0.0/16"}), 0)
    assert err.value.field == "filter" and "overlaps" in err.value.reason
    assert len(table) == 1
    table.add("acme", _spec({"dst": "10.2.0.0/16"}, priority=1), 0)  # other priority: fine
    table.add("other", _spec({"dst": "10.2.0.0/16"}), 0)  # other tenant: fine
    assert len(table) == 3
