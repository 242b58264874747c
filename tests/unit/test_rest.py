"""The REST API over a real core: every endpoint, every bad-input class, tenant isolation."""

from __future__ import annotations

import json
import re

import pytest
from scapy.all import IP, TCP, Ether, raw
from webob import Request

from quadrant_app import auth, chains, openapi, rest, topology
from quadrant_app.core import Core, Settings
from tests.unit.fakeoftable import FakeOFTable

from .test_topology import LAB

ACME, ACME2, BETA, ADMIN = (
    "acme-token-0123456789",
    "acme-2-token-012345",
    "beta-token-0123456789",
    "admin-token-0123456789",
)  # noqa: E501

CHAIN = {
    "name": "web",
    "nfs": [{"type": "tunnel", "config": {"vlan": 100}}, {"type": "ipforward"}],
    "filter": {"src": "10.1.0.0/16", "dst": "10.2.0.0/16", "proto": "tcp", "dst_ports": "80-8080"},
    "slo_us": 100,
}


class Api:
    def __init__(self, max_body=4096):
        self.core = Core(topology.load(LAB), Settings())
        self.table = FakeOFTable(core=self.core)
        self.sent = []
        self.now = 10.0
        tokens = auth.parse(
            {
                "tokens": [
                    {"token": ACME, "tenant": "acme"},
                    {"token": ACME2, "tenant": "acme"},
                    {"token": BETA, "tenant": "beta"},
                    {"token": ADMIN, "tenant": "ops", "admin": True},
                ]
            }
        )
        self.app = rest.RestApi(self.core, tokens, self._send, lambda: self.now, max_body, 50)
        self.table.apply(self.core.datapath_up(1, self.now))

    def _send(self, msgs):
        msgs = list(msgs)
        self.sent += msgs
        self.table.apply(msgs)

    def call(self, method, path, token=None, body=None, raw_body=None, ctype="application/json"):
        req = Request.blank(path, method=method)
        if token:
            req.headers["Authorization"] = f"Bearer {token}"
        if body is not None or raw_body is not None:
            req.body = raw_body if raw_body is not None else json.dumps(body).encode()
            req.content_type = ctype
        resp = req.get_response(self.app)
        data = json.loads(resp.body) if resp.content_type == "application/json" else resp.text
        return resp.status_int, data

    def chain(self, token=ACME, **changes):
        status, data = self.call("POST", "/v1/chains", token, {**CHAIN, **changes})
        assert status == 201, data
        return data

    def instance(self, chain_id, worker="w1", mac="02:00:00:00:01:01", core=0, **extra):
        body = {"chain_id": chain_id, "worker": worker, "vf_mac": mac, "core": core, **extra}
        status, data = self.call("POST", "/v1/instances", ADMIN, body)
        assert status == 201, data
        return data


@pytest.fixture
def api():
    return Api()


def test_chain_lifecycle(api):
    status, created = api.call("POST", "/v1/chains", ACME, CHAIN)
    assert status == 201
    assert created["id"] == 1 and created["tenant"] == "acme" and created["name"] == "web"
    assert created["filter"] == CHAIN["filter"] and created["nfs"][1] == {
        "type": "ipforward",
        "config": {},
    }
    assert created["scaling"] == {"alpha": 0.6, "beta": 0.9, "load_cap": 0.9}
    assert api.call("GET", "/v1/chains/1", ACME) == (200, created)
    assert api.call("GET", "/v1/chains", ACME) == (200, {"chains": [created]})
    assert api.call("DELETE", "/v1/chains/1", ACME)[0] == 204
    assert api.call("GET", "/v1/chains/1", ACME)[0] == 404
    assert api.call("GET", "/v1/chains", ACME) == (200, {"chains": []})


def test_no_or_wrong_token_is_401(api):
    for path in ("/v1/chains", "/v1/workers", "/v1/instances", "/v1/flows", "/v1/chains/1"):
        status, data = api.call("GET", path)
        assert status == 401 and data["error"]["reason"] == "missing bearer token"
        status, data = api.call("GET", path, "not-a-token-at-all-xx")
        assert status == 401 and data["error"]["reason"] == "invalid bearer token"
    req = Request.blank("/v1/chains", headers={"Authorization": f"Basic {ACME}"})
    resp = req.get_response(api.app)
    assert resp.status_int == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_tenant_isolation(api):
    mine = api.chain(ACME)
    theirs = api.chain(BETA)
    assert api.call("GET", f"/v1/chains/{theirs['id']}", ACME)[0] == 404
    assert api.call("DELETE", f"/v1/chains/{theirs['id']}", ACME)[0] == 404
    assert [c["id"] for c in api.call("GET", "/v1/chains", ACME)[1]["chains"]] == [mine["id"]]
    # another token of the same tenant sees the same chains
    assert [c["id"] for c in api.call("GET", "/v1/chains", ACME2)[1]["chains"]] == [mine["id"]]
    # admin sees everything and may delete anyone's chain
    assert len(api.call("GET", "/v1/chains", ADMIN)[1]["chains"]) == 2
    api.instance(mine["id"], "w1")
    api.instance(theirs["id"], "w2", "02:00:00:00:02:01")
    assert [i["chain_id"] for i in api.call("GET", "/v1/instances", ACME)[1]["instances"]] == [
        mine["id"]
    ]
    assert [w["name"] for w in api.call("GET", "/v1/workers", BETA)[1]["workers"]] == ["w2"]
    assert api.call("DELETE", f"/v1/chains/{theirs['id']}", ADMIN)[0] == 204
    assert api.call("GET", f"/v1/chains/{theirs['id']}", BETA)[0] == 404


def test_admin_only_endpoints_refuse_tenants(api):
    chain = api.chain()
    body = {"chain_id": chain["id"], "worker": "w1", "vf_mac": "02:00:00:00:01:01", "core": 0}
    assert api.call("POST", "/v1/instances", ACME, body)[0] == 403
    inst = api.instance(chain["id"])
    assert api.call("DELETE", f"/v1/instances/{inst['id']}", ACME)[0] == 403
    assert api.call("PUT", f"/v1/instances/{inst['id']}/stats", ACME, {"load": 0.5})[0] == 403


def test_instances_and_stats(api):
    chain = api.chain()
    inst = api.instance(chain["id"], "w2", "02:00:00:00:02:03", 1, attached=False)
    assert inst == {
        "id": 1, "chain_id": 1, "worker": "w2", "vf_mac": "02:00:00:00:02:03", "core": 1,
        "attached": False, "load": 0.0, "p99_us": 0.0, "batch_p99_us": 0.0, "pps": 0.0, "flows": 0,
        "nat_slot": None,
    }  # fmt: skip
    status, data = api.call("PUT", "/v1/instances/1/stats", ADMIN, {"load": 0.4, "p99_us": 31.5})
    assert status == 200 and data["load"] == 0.4 and data["p99_us"] == 31.5
    assert api.call("GET", "/v1/chains/1", ACME)[1]["instances"] == [1]
    workers = api.call("GET", "/v1/workers", ADMIN)[1]["workers"]
    w2 = next(w for w in workers if w["name"] == "w2")
    assert w2["switch_port"] == 12 and w2["cores"] == [0, 1] and w2["instances"] == [1]
    assert {"mac": "02:00:00:00:02:03", "instance": 1} in w2["vfs"]
    assert api.call("DELETE", "/v1/instances/1", ADMIN)[0] == 204
    assert api.call("DELETE", "/v1/instances/1", ADMIN)[0] == 404
    assert api.call("GET", "/v1/instances", ADMIN)[1] == {"instances": []}


def test_flows_are_paged_and_per_tenant(api):
    mine = api.chain(ACME, filter={"dst": "10.2.0.0/16", "proto": "tcp"})
    theirs = api.chain(BETA, filter={"dst": "10.2.0.0/16", "proto": "udp"})
    api.instance(mine["id"], "w1")
    api.instance(theirs["id"], "w2", "02:00:00:00:02:01")
    for sport in range(7):
        pkt = raw(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=sport, dport=80))
        api.table.apply(api.core.packet_in(1, 1, pkt, api.now))
    from scapy.all import UDP

    api.table.apply(
        api.core.packet_in(1, 1, raw(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / UDP()), api.now)
    )
    status, page = api.call("GET", "/v1/flows?limit=3", ACME)
    assert status == 200 and len(page["flows"]) == 3 and page["next"] == 3
    assert page["flows"][0]["sport"] == 0 and page["flows"][0]["chain_id"] == mine["id"]
    seen = [f["sport"] for f in page["flows"]]
    while page["next"] is not None:
        page = api.call("GET", f"/v1/flows?limit=3&after={page['next']}", ACME)[1]
        seen += [f["sport"] for f in page["flows"]]
    assert seen == list(range(7))  # the tenant's flows only, each once
    assert len(api.call("GET", "/v1/flows", BETA)[1]["flows"]) == 1
    assert len(api.call("GET", "/v1/flows", ADMIN)[1]["flows"]) == 8
    assert api.call("GET", "/v1/flows?limit=0", ACME)[0] == 400
    assert api.call("GET", "/v1/flows?limit=51", ACME)[1]["error"]["field"] == "limit"
    assert api.call("GET", "/v1/flows?after=x", ACME)[1]["error"]["field"] == "after"


def _bad(body_changes=None, remove=None):
    body = json.loads(json.dumps(CHAIN))
    for path, value in (body_changes or {}).items():
        target = body
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    if remove:
        del body[remove]
    return body


@pytest.mark.parametrize(
    "body,status,field,reason",
    [
        (_bad({"nfs": [{"type": "warp-drive"}]}), 400, "nfs[0].type", "unknown NF type"),
        (_bad({"colour": "blue"}), 400, "colour", "unknown field"),
        (_bad({"filter.ttl": 3}), 400, "filter.ttl", "unknown field"),
        (_bad({"slo_us": 0}), 400, "slo_us", "positive"),
        (_bad({"slo_us": -1}), 400, "slo_us", "positive"),
        (_bad(remove="slo_us"), 400, "slo_us", "missing"),
        (_bad({"filter.dst": "10.2.0.0/99"}), 400, "filter.dst", "prefix"),
        (_bad({"filter.dst": "2001:db8::/32"}), 400, "filter.dst", "same IP version"),
        (_bad({"scaling": {"alpha": 0.95}}), 400, "scaling.alpha", "below"),
        ([1, 2], 400, None, "must be an object"),
    ],
)
def test_bad_chain_bodies(api, body, status, field, reason):
    got, data = api.call("POST", "/v1/chains", ACME, body)
    assert got == status
    assert data["error"]["status"] == status and reason in data["error"]["reason"]
    assert data["error"].get("field") == field
    assert api.call("GET", "/v1/chains", ACME)[1] == {"chains": []}  # nothing half-registered


def test_malformed_json_and_content_type_and_size(api):
    status, data = api.call("POST", "/v1/chains", ACME, raw_body=b'{"name": "x",')
    assert status == 400 and data["error"]["reason"].startswith("malformed JSON")
    status, data = api.call(
        "POST", "/v1/chains", ACME, raw_body=b"\xff\xfe", ctype="application/json"
    )
    assert status == 400
    status, data = api.call("POST", "/v1/chains", ACME, CHAIN, ctype="text/plain")
    assert status == 415
    big = dict(CHAIN, nfs=[{"type": "empty", "config": {"pad": "x" * 5000}}])
    status, data = api.call("POST", "/v1/chains", ACME, big)
    assert status == 413 and "4096" in data["error"]["reason"]
    # chunked, no Content-Length: still cut off
    req = Request.blank("/v1/chains", method="POST")
    req.headers["Authorization"] = f"Bearer {ACME}"
    req.content_type = "application/json"
    req.environ["wsgi.input"] = __import__("io").BytesIO(json.dumps(big).encode())
    req.environ.pop("CONTENT_LENGTH", None)
    req.headers["Transfer-Encoding"] = "chunked"
    assert req.get_response(api.app).status_int == 413
    assert api.call("GET", "/v1/chains", ACME)[1] == {"chains": []}


def test_overlapping_filter_same_tenant_same_priority_is_409(api):
    api.chain(ACME)
    status, data = api.call("POST", "/v1/chains", ACME, _bad({"filter.dst_ports": "443"}))
    assert (
        status == 409
        and data["error"]["field"] == "filter"
        and "overlaps" in data["error"]["reason"]
    )
    assert (
        api.call("POST", "/v1/chains", ACME, {**_bad({"filter.dst_ports": "443"}), "priority": 5})[
            0
        ]
        == 201
    )
    assert api.call("POST", "/v1/chains", BETA, CHAIN)[0] == 201  # another tenant may
    assert len(api.call("GET", "/v1/chains", ACME)[1]["chains"]) == 2


@pytest.mark.parametrize(
    "changes,status,field",
    [
        ({"worker": "w7"}, 400, "worker"),
        ({"worker": ["w1"]}, 400, "worker"),
        ({"vf_mac": "02:00:00:00:02:01"}, 400, "vf_mac"),
        ({"core": 5}, 400, "core"),
        ({"core": "0"}, 400, "core"),
        ({"attached": "yes"}, 400, "attached"),
        ({"colour": 1}, 400, "colour"),
        ({"chain_id": 42}, 404, "chain_id"),
        ({"vf_mac": "02:00:00:00:01:01", "core": 1}, 409, "vf_mac"),
        ({"vf_mac": "02:00:00:00:01:02", "core": 0}, 409, "core"),
    ],
)
def test_bad_instance_bodies(api, changes, status, field):
    chain = api.chain()
    api.instance(chain["id"])
    body = {"chain_id": chain["id"], "worker": "w1", "vf_mac": "02:00:00:00:01:02", "core": 1}
    body.update(changes)
    got, data = api.call("POST", "/v1/instances", ADMIN, body)
    assert (got, data["error"]["field"]) == (status, field)
    assert len(api.call("GET", "/v1/instances", ADMIN)[1]["instances"]) == 1


def test_missing_instance_field(api):
    chain = api.chain()
    status, data = api.call(
        "POST", "/v1/instances", ADMIN, {"chain_id": chain["id"], "worker": "w1"}
    )
    assert (
        status == 400 and data["error"]["field"] == "core" and "missing" in data["error"]["reason"]
    )


def test_bad_stats_bodies(api):
    chain = api.chain()
    api.instance(chain["id"])
    for body, field in (
        ({"load": 2}, "load"),
        ({"load": -1}, "load"),
        ({"cpu": 1}, "cpu"),
        ({"p99_us": "x"}, "p99_us"),
    ):
        status, data = api.call("PUT", "/v1/instances/1/stats", ADMIN, body)
        assert status == 400 and data["error"]["field"] == field
    assert api.call("PUT", "/v1/instances/9/stats", ADMIN, {"load": 0.1})[0] == 404


def test_unknown_path_and_method(api):
    assert api.call("GET", "/v1/nothing", ACME)[0] == 404
    req = Request.blank("/v1/chains", method="PATCH")
    resp = req.get_response(api.app)
    assert resp.status_int == 405 and set(resp.headers["Allow"].split(", ")) == {"POST", "GET"}


def test_delete_chain_removes_its_flow_rules(api):
    chain = api.chain(filter={"dst": "10.2.0.0/16"})
    api.instance(chain["id"])
    pkt = raw(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=5, dport=80))
    api.table.apply(api.core.packet_in(1, 1, pkt, api.now))
    assert api.call("GET", "/v1/chains/1", ACME)[1]["flows"] == 1
    assert len(api.table.entries(1, 0x5146_0000_0000_0000)) == 1
    assert api.call("DELETE", "/v1/chains/1", ACME)[0] == 204
    assert api.table.entries(1, 0x5146_0000_0000_0000) == []


def test_shortage_is_reported(api):
    api.chain(filter={"dst": "10.2.0.0/16"})
    pkt = raw(Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=5, dport=80))
    api.table.apply(api.core.packet_in(1, 1, pkt, api.now))
    data = api.call("GET", "/v1/chains/1", ACME)[1]
    assert data["shortage"] is True and data["held_packets"] == 1
    api.instance(1)  # the held packet goes out now
    assert len(api.table.packet_outs) == 1
    assert api.call("GET", "/v1/chains/1", ACME)[1]["shortage"] is False


def test_metrics_endpoint(api):
    req = Request.blank("/metrics")
    resp = req.get_response(api.app)
    assert resp.status_int == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE quadrant_flow_setup_seconds histogram" in resp.text


def test_openapi_matches_the_implementation(api):
    status, doc = api.call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(m, p) for m, p, _, _ in rest.ROUTES}
    for method, path, handler, who in rest.ROUTES:
        op = doc["paths"][path][method.lower()]
        assert op["operationId"] == handler and hasattr(api.app, handler)
        assert ("security" in op and op["security"] == []) == (who == "public")
        assert ("403" in op["responses"]) == (who == "admin")
    schemas = doc["components"]["schemas"]
    assert set(schemas["ChainSpec"]["properties"]) == chains.CHAIN_FIELDS
    assert set(schemas["ChainSpec"]["required"]) == chains.CHAIN_REQUIRED
    assert set(schemas["Filter"]["properties"]) == chains.FILTER_FIELDS
    assert set(schemas["Scaling"]["properties"]) == chains.SCALING_FIELDS
    assert set(schemas["Scaling"]["properties"]) == set(chains.DEFAULT_SCALING) | {"max_pps"}
    assert set(schemas["InstanceSpec"]["properties"]) == rest.INSTANCE_FIELDS
    assert set(schemas["InstanceStats"]["properties"]) == rest.STATS_FIELDS
    assert set(schemas["FlowMove"]["properties"]) == rest.MOVE_FIELDS
    # every $ref resolves
    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)):
        assert ref in schemas
    # response shapes: the Instance schema names exactly what the API returns
    chain = api.chain()
    inst = api.instance(chain["id"])
    assert set(inst) == set(schemas["Instance"]["properties"])
    chain_keys = set(api.call("GET", "/v1/chains/1", ACME)[1])
    extra = schemas["Chain"]["allOf"][1]["properties"]
    assert chain_keys == chains.CHAIN_FIELDS | set(extra)
    assert openapi.OPERATIONS.keys() == {h for _, _, h, _ in rest.ROUTES}


@pytest.mark.parametrize(
    "data,message",
    [
        ({"tokens": []}, "non-empty"),
        ({"tokens": [{"token": "short", "tenant": "a"}]}, "tokens[0].token"),
        ({"tokens": [{"token": "x" * 20, "tenant": "Bad Name"}]}, "tokens[0].tenant"),
        ({"tokens": [{"token": "x" * 20, "tenant": "a", "admin": "yes"}]}, "tokens[0].admin"),
        ({"tokens": [{"token": "x" * 20, "tenant": "a", "role": "x"}]}, "tokens[0].role"),
        (
            {"tokens": [{"token": "x" * 20, "tenant": "a"}, {"token": "x" * 20, "tenant": "b"}]},
            "duplicate",
        ),
        ({"users": []}, "exactly one key"),
    ],
)
def test_tokens_file_errors(data, message):
    with pytest.raises(auth.TokensError, match=re.escape(message)):
        auth.parse(data, "tokens.yaml")


def test_tokens_load(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n  - {token: abcdefghijklmnop, tenant: acme}\n")
    tokens = auth.load(path)
    assert tokens.lookup("abcdefghijklmnop") == auth.Principal("acme", False)
    assert tokens.lookup("abcdefghijklmnoq") is None and tokens.lookup(None) is None
    with pytest.raises(auth.TokensError, match="cannot read"):
        auth.load(tmp_path / "missing.yaml")


def test_admins_see_the_events_a_workers_agent_reported(api):
    from quadrant_app.agents import AgentHub

    hub = api.app.hub = AgentHub(api.core.topology)
    hub.workers["w1"].connected = True
    hub.event("w1", {"kind": "nf_failed", "instance": 3, "reason": "third-party NF 1 failed"},
              8.5)  # fmt: skip
    workers = {w["name"]: w for w in api.call("GET", "/v1/workers", ADMIN)[1]["workers"]}
    assert workers["w1"]["events"] == [
        {"kind": "nf_failed", "instance": 3, "reason": "third-party NF 1 failed", "age_s": 1.5}
    ]
    assert workers["w2"]["events"] == []
    api.chain(ACME)
    api.instance(1, "w1")
    (mine,) = api.call("GET", "/v1/workers", ACME)[1]["workers"]
    assert "events" not in mine  # a tenant's view: its workers' names and instances only


def test_a_nat_connection_moves_by_its_outbound_flow_and_its_reply_alone_is_refused(api):
    from scapy.all import UDP

    from tests.unit.test_natpools import nat_chain

    moves = []
    api.app.mover = moves.append
    status, chain = api.call("POST", "/v1/chains", ACME, nat_chain())
    assert status == 201, chain
    a, _ = api.core.add_instance(chain["id"], "w1", "02:00:00:00:01:01", 0, True, api.now,
                                 nat_slot=0)  # fmt: skip
    b, _ = api.core.add_instance(chain["id"], "w2", "02:00:00:00:02:01", 0, True, api.now,
                                 nat_slot=1)  # fmt: skip
    api.core.instances.update_stats(b.id, api.now, p99_us=float("inf"))
    out = Ether() / IP(src="10.1.0.5", dst="10.2.0.1") / UDP(sport=4000, dport=5353)
    rep = Ether() / IP(src="10.2.0.1", dst="10.2.0.254") / UDP(sport=5353, dport=20000)
    api._send(api.core.packet_in(1, 1, raw(out), api.now))
    api._send(api.core.packet_in(1, 2, raw(rep), api.now))
    flows = {f["dst"]: f for f in api.call("GET", "/v1/flows", ADMIN)[1]["flows"]}
    fwd, back = flows["10.2.0.1"], flows["10.2.0.254"]
    assert fwd["instance_id"] == back["instance_id"] == a.id
    status, data = api.call("POST", f"/v1/flows/{back['id']}/move", ADMIN, {"to": b.id})
    assert status == 409 and "by its outbound flow" in data["error"]["reason"]
    assert moves == []
    status, data = api.call("POST", f"/v1/flows/{fwd['id']}/move", ADMIN, {"to": b.id})
    assert status == 202 and data == {"flow": fwd["id"], "from": a.id, "to": b.id}
    assert [(m.src, m.dst, m.flow_ids) for m in moves] == [(a.id, b.id, (fwd["id"],))]
