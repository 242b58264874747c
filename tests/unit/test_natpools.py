"""NAT external addresses per instance (quadrant_app/natpools.py): slots, the checks at
registration, the orchestrator handing each instance its own, and the core steering
replies to an external address to the instance that owns it."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.all import IP, UDP, Ether

from quadrant_app import natpools, ofbuild
from quadrant_app.chains import SpecError, parse_chain
from quadrant_app.flowkey import ETH_IPV4, FlowKey

from .test_core import DPID, EGRESS, UPLINK, W1_MACS, W1_PORT, W2_MACS, W2_PORT, Lab
from .test_orchestrator import setup


def A(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def nat_chain(name="nat", addrs=("10.2.0.254", "10.2.0.253")):
    return {
        "name": name,
        "nfs": [
            {"type": "acl", "config": {"default": "allow"}},
            {"type": "nat", "config": {
                "internal": ["10.1.0.0/16"],
                "external": [{"address": a, "ports": "20000-29999"} for a in addrs]}},
        ],
        "filter": {"dst": "10.2.0.0/16", "proto": "udp", "dst_ports": "5353"},
        "slo_us": 1000,
    }  # fmt: skip


def test_slots_and_an_instances_own_nat_config():
    spec = parse_chain(nat_chain())
    assert natpools.nat_position(spec) == 1
    assert [e["address"] for e in natpools.slots(spec)] == ["10.2.0.254", "10.2.0.253"]
    assert natpools.free_slot(spec, set()) == 0
    assert natpools.free_slot(spec, {0}) == 1
    assert natpools.free_slot(spec, {0, 1}) is None
    nfs = natpools.instance_nfs(spec, 1)
    assert nfs[1]["config"]["external"] == [{"address": "10.2.0.253", "ports": "20000-29999"}]
    assert nfs[1]["config"]["internal"] == ["10.1.0.0/16"]
    assert natpools.slots(spec)[0]["address"] == "10.2.0.254"  # the spec is untouched
    plain = parse_chain(nat_chain() | {"nfs": [{"type": "empty"}]})
    assert natpools.nat_position(plain) is None and natpools.instance_nfs(plain, None) == [
        {"type": "empty", "config": {}}
    ]


@pytest.mark.parametrize(
    "addrs, field, reason",
    [
        ((), "nfs[1].config.external", "non-empty"),
        (("10.2.0.254", "10.2.0.254"), "nfs[1].config.external[1].address", "twice"),
        (("not-an-ip",), "nfs[1].config.external[0].address", "not an IPv4"),
    ],
)
def test_bad_external_lists_are_refused(addrs, field, reason):
    with pytest.raises(SpecError) as err:
        natpools.check(parse_chain(nat_chain(addrs=addrs)), [])
    assert err.value.field == field and reason in err.value.reason


def test_another_chains_external_address_is_refused_at_registration():
    lab = Lab()
    lab.core.add_chain("acme", parse_chain(nat_chain()), lab.now)
    other = nat_chain("nat2", addrs=("10.2.0.250", "10.2.0.253")) | {
        "filter": {"dst": "10.3.0.0/16"}
    }
    with pytest.raises(SpecError, match="10.2.0.253 is an external address of chain 'nat'"):
        lab.core.add_chain("other", parse_chain(other), lab.now)


def test_each_instance_gets_a_free_slot_and_no_more_instances_than_slots():
    core, hub, orch = setup(pool_size=3, cores=(0, 1))
    c = core.add_chain("acme", parse_chain(nat_chain()), 0.0)
    cmds = orch.tick(1.0)
    assert len(cmds) == 2  # two external addresses: two instances, though the pool wants 3
    got = [cmd.params["chain"]["nfs"][1]["config"]["external"][0]["address"] for cmd in cmds]
    assert sorted(got) == ["10.2.0.253", "10.2.0.254"]
    for cmd in cmds:
        orch.done(cmd, {}, None, 2.0)
    assert sorted(i.nat_slot for i in core.instances.of_chain(c.id)) == [0, 1]
    assert orch.tick(3.0) == []
    # one goes away: its slot is free again, and the refill takes it
    gone = next(i for i in core.instances.of_chain(c.id) if i.nat_slot == 0)
    core.remove_instance(gone.id, 3.0)
    (prep,) = [x for x in orch.tick(4.0) if x.method == "prepare"]
    assert prep.params["chain"]["nfs"][1]["config"]["external"][0]["address"] == "10.2.0.254"


def test_replies_to_an_external_address_go_to_its_instance_and_nat_flows_stay():
    lab = Lab()
    chain = lab.core.add_chain("acme", parse_chain(nat_chain()), lab.now)
    a, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now, nat_slot=0)
    b, _ = lab.core.add_instance(chain.id, "w2", W2_MACS[0], 0, True, lab.now, nat_slot=1)
    for addr, port, mac in (("10.2.0.254", W1_PORT, W1_MACS[0]), ("10.2.0.253", W2_PORT,
                                                                  W2_MACS[0])):  # fmt: skip
        pkt = Ether() / IP(src="10.2.0.1", dst=addr) / UDP(sport=5353, dport=20001)
        assert lab.send(pkt, in_port=EGRESS) == "controller"
        ((out_port, data),) = lab.table.packet_outs[-1:]
        assert out_port == port and data[:6] == bytes.fromhex(mac.replace(":", ""))
        assert lab.send(pkt, in_port=EGRESS)[0][0] == port  # the switch's rule now
    assert lab.core.metrics.reply_flows.values == {"nat": 2}
    assert a.flows == 1 and b.flows == 1
    # a NAT flow moves only with its mapping (the app reads it through the agent)
    rec = next(iter(lab.core.flows.of_instance(a.id)))
    assert lab.core.migrate([rec.id], a.id, b.id, lab.now) == ([], [])
    assert not lab.core.nat_outbound(rec)  # a reply (to a's address): not what a move names
    # the owner gone, its address is nobody's: no longer steered
    lab.apply(lab.core.remove_instance(a.id, lab.now))
    assert natpools.slot_address({"address": "10.2.0.254"}) not in lab.core.instances.nat_owner
    assert b in lab.core.instances.nat_owner.values()


def test_an_instances_nat_may_adopt_the_other_slots_addresses():
    spec = parse_chain(nat_chain(addrs=("10.2.0.254", "10.2.0.253", "10.2.0.252")))
    cfg = natpools.instance_nfs(spec, 1)[1]["config"]
    assert cfg["adopt"] == ["10.2.0.254", "10.2.0.252"]
    out = natpools.reply_key(FlowKey(ETH_IPV4, 17, A("10.1.0.5"), A("10.2.0.1"), 4000, 5353),
                             A("10.2.0.254"), 20007)  # fmt: skip
    assert out == FlowKey(ETH_IPV4, 17, A("10.2.0.1"), A("10.2.0.254"), 5353, 20007)


def _mac(m):
    return bytes.fromhex(m.replace(":", ""))


def test_a_moved_nat_connection_takes_its_replies_along_until_it_ends():
    """Moving a NAT connection from a (10.2.0.254) to b: its outbound rule and a rule
    for its replies (to a's address and its port) point at b, a reply packet-in goes
    to b while it lives, and once the connection is forgotten a's address is a's again."""
    lab = Lab()
    chain = lab.core.add_chain("acme", parse_chain(nat_chain()), lab.now)
    a, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now, nat_slot=0)
    b, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[1], 1, True, lab.now, nat_slot=1)
    lab.core.instances.update_stats(b.id, lab.now, p99_us=float("inf"))  # new flows: a
    out = Ether() / IP(src="10.1.0.5", dst="10.2.0.1") / UDP(sport=4000, dport=5353)
    assert lab.send(out, in_port=UPLINK) == "controller"
    (fwd,) = lab.core.flows.of_instance(a.id)
    assert lab.core.nat_outbound(fwd)
    ext = (A("10.2.0.254"), 20007)  # its mapping, as the agent reads it from Redis
    # replies so far go to a's address: a takes them
    reply = Ether() / IP(src="10.2.0.1", dst="10.2.0.254") / UDP(sport=5353, dport=20007)
    other = Ether() / IP(src="10.2.0.1", dst="10.2.0.254") / UDP(sport=5353, dport=20008)
    rkey = natpools.reply_key(fwd.key, *ext)
    assert lab.core.flow_keys([fwd.id], a.id, {fwd.key: ext}) == [fwd.key, rkey]
    moved, msgs = lab.core.migrate([fwd.id], a.id, b.id, lab.now, nat={fwd.key: ext})
    lab.apply(msgs)
    assert moved == [fwd.key, rkey] and a.flows == 0 and b.flows == 2
    assert lab.core.flows.get(DPID, rkey).instance_id == b.id
    # the switch now sends both directions to b, without asking the controller
    for pkt, port in ((out, UPLINK), (reply, EGRESS)):
        ((to, data),) = lab.send(pkt, in_port=port)
        assert to == W1_PORT and data[:6] == _mac(W1_MACS[1])
    # the reply rule expired (no reply for a while): its packet-in still goes to b
    lab.now += 12
    expire(lab, b, rkey)
    assert lab.send(reply, in_port=EGRESS) == "controller"
    assert lab.table.packet_outs[-1][1][:6] == _mac(W1_MACS[1])
    assert lab.core.flows.get(DPID, rkey).instance_id == b.id
    # another connection's reply to a's address still goes to a
    assert lab.send(other, in_port=EGRESS) == "controller"
    assert lab.table.packet_outs[-1][1][:6] == _mac(W1_MACS[0])
    assert lab.core.nat_address(b) == "10.2.0.253" and lab.core.nat_address(a) == "10.2.0.254"
    # the connection ends (its rules idle out): a's address is a's again
    lab.now += 12
    expire(lab, b, fwd.key)
    expire(lab, b, rkey)
    assert not lab.core.nat_moves
    assert lab.send(reply, in_port=EGRESS) == "controller"
    assert lab.table.packet_outs[-1][1][:6] == _mac(W1_MACS[0])


def expire(lab, inst, key):
    """The switch idles a per-flow rule out and tells the controller."""
    lab.apply([(DPID, ofbuild.delete_flow(key))])
    match = ofbuild.flow_match(key)
    lab.apply(lab.core.flow_removed(DPID, ofbuild.flow_cookie(inst.id), match, 0, 12.0, lab.now))


def test_connections_moved_to_an_instance_that_goes_away_go_home():
    """b, which had a connection moved to it from a's address, is removed: a's agent
    is asked to make a the owner again (owner 0) and the connection's next packet-in
    goes to a, not to whichever instance a new flow would get."""
    lab = Lab()
    chain = lab.core.add_chain("acme", parse_chain(nat_chain(addrs=(
        "10.2.0.254", "10.2.0.253", "10.2.0.252"))), lab.now)  # fmt: skip
    a, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now, nat_slot=0)
    b, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[1], 1, True, lab.now, nat_slot=1)
    c, _ = lab.core.add_instance(chain.id, "w2", W2_MACS[0], 0, True, lab.now, nat_slot=2)
    for i in (b, c):
        lab.core.instances.update_stats(i.id, lab.now, p99_us=float("inf"))
    out = Ether() / IP(src="10.1.0.5", dst="10.2.0.1") / UDP(sport=4000, dport=5353)
    lab.send(out, in_port=UPLINK)
    (fwd,) = lab.core.flows.of_instance(a.id)
    key, ext = fwd.key, (A("10.2.0.254"), 20007)
    lab.apply(lab.core.migrate([fwd.id], a.id, b.id, lab.now, nat={key: ext})[1])
    lab.core.instances.agent_requests.clear()
    lab.core.instances.update_stats(a.id, lab.now, p99_us=float("inf"))
    lab.core.instances.update_stats(c.id, lab.now, p99_us=10.0)  # new flows would go to c
    lab.apply(lab.core.remove_instance(b.id, lab.now))
    assert lab.core.instances.agent_requests == [
        ("teardown", b.id, "w1"),
        ("nat_handover", a.id, "w1", {"owner": 0, "flows": [key.to_json()]}),
    ]
    assert lab.send(out, in_port=UPLINK) == "controller"
    assert lab.table.packet_outs[-1][1][:6] == _mac(W1_MACS[0])  # home: a
    assert lab.core.flows.get(DPID, key).instance_id == a.id and not lab.core.nat_moves.home


def test_a_nat_chains_rules_idle_out_no_sooner_than_its_mappings():
    """A quiet NAT connection keeps its rules (and so its instance) as long as the NAT
    keeps its mapping: the rules' idle timeout is the NAT's for the protocol."""
    spec = parse_chain(nat_chain())
    assert natpools.rule_idle_s(spec, 17, 10) == 300 and natpools.rule_idle_s(spec, 6, 10) == 7440
    assert natpools.rule_idle_s(spec, 1, 10) == 10  # not translated: the default
    quick = nat_chain()
    quick["nfs"][1]["config"] |= {"udp_idle_s": 2.5, "tcp_idle_s": 99999}
    spec = parse_chain(quick)
    assert natpools.rule_idle_s(spec, 17, 10) == 10  # never below the default
    assert natpools.rule_idle_s(spec, 6, 10) == 65535  # OpenFlow's 16 bits
    plain = parse_chain(nat_chain() | {"nfs": [{"type": "empty"}]})
    assert natpools.rule_idle_s(plain, 17, 10) == 10
    lab = Lab()
    chain = lab.core.add_chain("acme", parse_chain(nat_chain()), lab.now)
    lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now, nat_slot=0)
    lab.send(Ether() / IP(src="10.1.0.5", dst="10.2.0.1") / UDP(sport=4000, dport=5353))
    lab.send(Ether() / IP(src="10.2.0.1", dst="10.2.0.254") / UDP(sport=5353, dport=20000),
             in_port=EGRESS)  # fmt: skip
    rules = lab.table.entries(ofbuild.TABLE_FLOWS, ofbuild.COOKIE_FLOW)
    assert len(rules) == 2 and {r.idle_timeout for r in rules} == {300}


def test_replies_to_an_address_whose_instance_is_gone_wait_for_its_successor():
    """a (slot 0) fails and is removed: a reply to a's address gets no default rule
    (which would drop the connection's replies for the rule's idle time after a's
    successor restored its mapping) and does not go to b (another address: b has no
    mapping for it).  It is held, and released to the instance that takes slot 0."""
    lab = Lab()
    chain = lab.core.add_chain("acme", parse_chain(nat_chain()), lab.now)
    a, _ = lab.core.add_instance(chain.id, "w1", W1_MACS[0], 0, True, lab.now, nat_slot=0)
    b, _ = lab.core.add_instance(chain.id, "w2", W2_MACS[0], 0, True, lab.now, nat_slot=1)
    lab.apply(lab.core.remove_instance(a.id, lab.now))
    reply = Ether() / IP(src="10.2.0.1", dst="10.2.0.254") / UDP(sport=5353, dport=20001)
    outs = len(lab.table.packet_outs)
    assert lab.send(reply, in_port=EGRESS) == "controller"
    assert lab.send(reply, in_port=EGRESS) == "controller"  # no rule: asked again
    assert len(lab.table.packet_outs) == outs and len(chain.held) == 2
    assert lab.core.metrics.unmatched_flows.value == 0 and b.flows == 0
    # new flows of the chain still go to b meanwhile, past the held replies
    out = Ether() / IP(src="10.1.0.5", dst="10.2.0.1") / UDP(sport=4000, dport=5353)
    lab.send(out, in_port=UPLINK)
    lab.apply(lab.core.tick(lab.now))
    assert b.flows == 1 and len(chain.held) == 2
    # a's successor takes slot 0 into the warm pool: the replies are released to it, in
    # order, and it is attached for them (its agent asked to)
    c, msgs = lab.core.add_instance(chain.id, "w1", W1_MACS[1], 1, False, lab.now, nat_slot=0)
    lab.apply(msgs)
    assert not chain.held and c.flows == 1 and c.attached
    assert lab.core.instances.agent_requests[-1] == ("attach", c.id, "w1")
    assert [d[:6] for _, d in lab.table.packet_outs[-2:]] == [_mac(W1_MACS[1])] * 2
    assert lab.send(reply, in_port=EGRESS)[0][0] == W1_PORT  # its rule now
