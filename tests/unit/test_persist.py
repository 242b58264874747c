"""The controller's books through a real Redis: a restarted core carries on where the
old one stopped, adopting the switch's per-flow rules without reassigning a flow."""

from scapy.all import raw

from quadrant_app import flowkey, persist
from quadrant_app.core import Core, Settings
from quadrant_app.topology import load
from tests.unit.test_core import W1_PORT, Lab, tcp
from tests.unit.test_topology import LAB


def books(lab, redis_server):
    store = persist.RedisStore(redis_server.client(), "quadrant:controller:test")
    return persist.Persister(lab.core, store), store


def test_a_restarted_core_has_the_chains_instances_and_flows_back(redis_server):
    lab = Lab()
    p, store = books(lab, redis_server)
    c1 = lab.chain({"dst": "10.2.0.0/16", "proto": "tcp"}, bidirectional=True)
    c2 = lab.chain({"dst": "10.3.0.0/16"}, tenant="other", priority=5)
    a = lab.instance(c1, "w1", core=0)
    lab.instance(c1, "w2", core=0, attached=False)
    assert p.sync() and not p.sync()  # written once; nothing changed since
    lab.send(tcp(sport=7))
    lab.send(tcp(sport=8))
    lab.core.remove_chain(c2.id, lab.now)
    assert p.sync()

    # a new controller: a fresh core from the store, then the switch reconnects
    core = Core(load(LAB), Settings())
    chains, insts, meta = store.read()
    assert persist.restore(core, chains, insts, meta, Settings().nf_types) == (1, 2)
    (chain,) = list(core.chains)
    assert (chain.id, chain.tenant, chain.spec) == (c1.id, "acme", c1.spec)
    assert chain.spec.bidirectional
    assert {i.id: i.attached for i in core.instances.by_id.values()} == {a.id: True, 2: False}
    lab.core, old = core, lab.core
    lab.apply(core.datapath_up(1, lab.now))
    lab.answer_stats()
    for sport in (7, 8):
        rec = core.flows.get(1, flowkey.parse(raw(tcp(sport=sport))))
        assert rec is not None and rec.instance_id == a.id  # adopted, not reassigned
    assert core.metrics.resync_adopted.value == 2 and core.metrics.flow_setups.value == 0
    assert lab.send(tcp(sport=7))[0][0] == W1_PORT
    # ids are never handed out twice
    assert lab.chain({"dst": "10.4.0.0/16"}).id > max(c1.id, c2.id)
    assert core.instances.reserve_id() > max(i.id for i in old.instances.by_id.values())


def test_a_record_that_no_longer_validates_is_skipped(redis_server):
    lab = Lab()
    p, store = books(lab, redis_server)
    c = lab.chain({"dst": "10.2.0.0/16"})
    lab.instance(c, "w1", core=0)
    p.sync()
    core = Core(load(LAB), Settings())
    chains, insts, meta = store.read()
    # this controller does not know the chain's NF type any more: chain and instance skipped
    assert persist.restore(core, chains, insts, meta, ("tunnel",)) == (0, 0)
