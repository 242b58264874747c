"""The northbound REST API: a WSGI application (webob) over the pure core.

The app serves it with eventlet's WSGI server in a green thread of the same
hub as the OpenFlow handlers, so a request runs between two events and never
sees the core half-changed.  Every error is JSON::

    {"error": {"status": 400, "field": "filter.dst_ports", "reason": "..."}}

Routes are in :data:`ROUTES`; ``GET /v1/openapi.json`` describes them
(:mod:`quadrant_app.openapi`).  docs/controller.rst has examples.
"""

from __future__ import annotations

import json
import logging
import re

from webob import Request, Response

from quadrant_app import chains as chainspec
from quadrant_app import openapi
from quadrant_app.auth import Principal, Tokens
from quadrant_app.chains import ConflictError, SpecError

LOG = logging.getLogger(__name__)

DEFAULT_PAGE = 100


class HttpError(Exception):
    def __init__(self, status: int, reason: str, field: str | None = None, headers=None):
        super().__init__(reason)
        self.status, self.reason, self.field = status, reason, field or None
        self.headers = headers or {}


# (method, path pattern, handler name, who may call it: "public", "tenant" or "admin")
ROUTES = [
    ("GET", "/v1/openapi.json", "get_openapi", "public"),
    ("GET", "/metrics", "get_metrics", "public"),
    ("POST", "/v1/chains", "post_chain", "tenant"),
    ("GET", "/v1/chains", "list_chains", "tenant"),
    ("GET", "/v1/chains/{id}", "get_chain", "tenant"),
    ("DELETE", "/v1/chains/{id}", "delete_chain", "tenant"),
    ("GET", "/v1/workers", "list_workers", "tenant"),
    ("GET", "/v1/instances", "list_instances", "tenant"),
    ("POST", "/v1/instances", "post_instance", "admin"),
    ("DELETE", "/v1/instances/{id}", "delete_instance", "admin"),
    ("PUT", "/v1/instances/{id}/stats", "put_instance_stats", "admin"),
    ("GET", "/v1/flows", "list_flows", "tenant"),
    ("POST", "/v1/flows/{id}/move", "move_flow", "admin"),
    ("GET", "/v1/failures", "list_failures", "admin"),
]

INSTANCE_FIELDS = {"chain_id", "worker", "vf_mac", "core", "attached"}
STATS_FIELDS = {"load", "p99_us"}
MOVE_FIELDS = {"to"}


def _compile(pattern: str):
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[0-9]{1,18})", pattern) + "$")


_COMPILED = [(m, _compile(p), h, who) for m, p, h, who in ROUTES]


class RestApi:
    """WSGI callable.  ``send`` takes the core's ``[(dpid, msg)]``; ``clock`` gives ``now``."""

    def __init__(
        self, core, tokens: Tokens, send, clock, max_body=65536, max_page=1000, hub=None,
        mover=None, failures=None,
    ):  # fmt: skip
        self.core = core
        # failures(): the orchestrator's latest failures handled (None without agents)
        self.failures = failures
        # mover(Move): start a flow move with the agents (the app's; None without agents)
        self.mover = mover
        self.hub = hub  # the agents' registry, when agents are enabled
        self.tokens = tokens
        self.send = send
        self.clock = clock
        self.max_body = max_body
        self.max_page = max_page

    def __call__(self, environ, start_response):
        req = Request(environ)
        try:
            resp = self._dispatch(req)
        except HttpError as exc:
            resp = _error(exc.status, exc.reason, exc.field)
            for k, v in exc.headers.items():
                resp.headers[k] = v
        except Exception:
            LOG.exception("REST %s %s failed", req.method, req.path)
            resp = _error(500, "internal error (see the controller's log)")
        return resp(environ, start_response)

    def _dispatch(self, req: Request) -> Response:
        allowed = []
        for method, regex, handler, who in _COMPILED:
            m = regex.match(req.path_info)
            if not m:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            principal = None if who == "public" else self._authenticate(req)
            if who == "admin" and not principal.admin:
                raise HttpError(403, "this endpoint needs an admin token")
            args = {k: int(v) for k, v in m.groupdict().items()}
            return getattr(self, handler)(req, principal, **args)
        if allowed:
            raise HttpError(
                405, f"method {req.method} not allowed", headers={"Allow": ", ".join(allowed)}
            )
        raise HttpError(404, f"no such resource {req.path_info}")

    def _authenticate(self, req: Request) -> Principal:
        header = req.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        principal = self.tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None or principal.worker is not None:
            reason = "missing bearer token" if not header else "invalid bearer token"
            if principal is not None:
                reason = "an agent's token is good for /v1/agents only"
            raise HttpError(401, reason, headers={"WWW-Authenticate": 'Bearer realm="quadrant"'})
        return principal

    def _body(self, req: Request):
        if req.content_length is not None and req.content_length > self.max_body:
            raise HttpError(413, f"body larger than {self.max_body} bytes")
        ctype = req.content_type or ""
        if ctype != "application/json":
            raise HttpError(415, f"content type must be application/json, not {ctype or 'none'}")
        if req.content_length is not None:
            raw = req.body_file.read(self.max_body + 1)
        elif "chunked" in req.headers.get("Transfer-Encoding", "").lower():
            raw = req.body_file_raw.read(self.max_body + 1)  # the server de-chunks it
        else:
            raise HttpError(411, "a body needs Content-Length or chunked transfer encoding")
        if len(raw) > self.max_body:
            raise HttpError(413, f"body larger than {self.max_body} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"malformed JSON: {exc}") from None

    # ------------------------------------------------------------------
    # Handlers.

    def get_openapi(self, req, _p):
        return _json(openapi.document(ROUTES))

    def get_metrics(self, req, _p):
        resp = Response(body=self.core.metrics.render().encode())
        resp.content_type = "text/plain"
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp

    def _chain(self, principal: Principal, chain_id: int):
        chain = self.core.chains.by_id.get(chain_id)
        if chain is None or not (principal.admin or chain.tenant == principal.tenant):
            raise HttpError(404, f"no chain {chain_id}")  # another tenant's: also 404
        return chain

    def _visible_chain_ids(self, principal: Principal):
        if principal.admin:
            return None
        return {c.id for c in self.core.chains if c.tenant == principal.tenant}

    def chain_json(self, chain) -> dict:
        insts = self.core.instances.of_chain(chain.id)
        return {
            "id": chain.id,
            "tenant": chain.tenant,
            **chainspec.chain_to_json(chain.spec),
            "instances": [i.id for i in insts],
            "flows": chain.flows,
            "held_packets": len(chain.held),
            "shortage": chain.shortage_since is not None,
        }

    def post_chain(self, req, principal):
        body = self._body(req)
        try:
            spec = chainspec.parse_chain(body, self.core.settings.nf_types)
        except SpecError as exc:
            raise HttpError(400, exc.reason, exc.field) from None
        try:
            chain = self.core.add_chain(principal.tenant, spec, self.clock())
        except ConflictError as exc:  # overlap with another chain of the tenant
            raise HttpError(409, exc.reason, exc.field) from None
        resp = _json(self.chain_json(chain), 201)
        resp.location = f"/v1/chains/{chain.id}"
        return resp

    def list_chains(self, req, principal):
        visible = self._visible_chain_ids(principal)
        return _json(
            {
                "chains": [
                    self.chain_json(c)
                    for c in self.core.chains
                    if visible is None or c.id in visible
                ]
            }
        )

    def get_chain(self, req, principal, id):
        return _json(self.chain_json(self._chain(principal, id)))

    def delete_chain(self, req, principal, id):
        self._chain(principal, id)
        self.send(self.core.remove_chain(id, self.clock()))
        return Response(status=204)

    def list_workers(self, req, principal):
        visible = self._visible_chain_ids(principal)
        insts = [
            i
            for i in self.core.instances.by_id.values()
            if visible is None or i.chain_id in visible
        ]
        out = []
        for w in self.core.topology.workers:
            mine = [i for i in insts if i.worker == w.name]
            if visible is not None and not mine:
                continue  # a tenant sees the workers that run its instances
            entry = {"name": w.name, "switch": w.switch, "instances": [i.id for i in mine]}
            if self.hub is not None:
                st = self.hub.workers[w.name]
                entry["agent"] = {
                    k: v
                    for k, v in st.to_json(self.clock()).items()
                    if k in ("connected", "sessions", "heartbeats", "heartbeat_age_s", "failed")
                }
            if principal.admin:
                used = {i.vf_mac: i.id for i in self.core.instances.by_id.values()
                        if i.worker == w.name}  # fmt: skip
                entry.update(
                    switch_port=w.switch_port,
                    management=w.management,
                    cores=list(w.cores),
                    vfs=[{"mac": vf.mac, "instance": used.get(vf.mac)} for vf in w.vfs],
                )
                if self.hub is not None:  # what its agent reported (nf_failed...), newest last
                    now = self.clock()
                    entry["events"] = [
                        {**{k: v for k, v in e.items() if k != "t"},
                         "age_s": round(now - e["t"], 3)}
                        for e in self.hub.workers[w.name].events
                    ]  # fmt: skip
            out.append(entry)
        return _json({"workers": out})

    def list_instances(self, req, principal):
        visible = self._visible_chain_ids(principal)
        return _json(
            {
                "instances": [
                    i.to_json()
                    for i in self.core.instances.by_id.values()
                    if visible is None or i.chain_id in visible
                ]
            }
        )

    def post_instance(self, req, principal):
        body = self._body(req)
        if not isinstance(body, dict):
            raise HttpError(400, "must be an object {chain_id, worker, vf_mac, core, attached}")
        for k in body:
            if k not in INSTANCE_FIELDS:
                raise HttpError(
                    400, f"unknown field (allowed: {', '.join(sorted(INSTANCE_FIELDS))})", k
                )
        for k in sorted(INSTANCE_FIELDS - {"attached"}):
            if k not in body:
                raise HttpError(400, "missing required field", k)
        for k in ("chain_id", "core"):
            if isinstance(body[k], bool) or not isinstance(body[k], int):
                raise HttpError(400, "must be an integer", k)
        attached = body.get("attached", True)
        if not isinstance(attached, bool):
            raise HttpError(400, "must be true or false", "attached")
        if body["chain_id"] not in self.core.chains.by_id:
            raise HttpError(404, f"no chain {body['chain_id']}", "chain_id")
        try:
            inst, msgs = self.core.add_instance(
                body["chain_id"], body["worker"], body["vf_mac"], body["core"], attached,
                self.clock(),
            )  # fmt: skip
        except SpecError as exc:
            status = 409 if isinstance(exc, ConflictError) else 400
            raise HttpError(status, exc.reason, exc.field) from None
        self.send(msgs)
        resp = _json(inst.to_json(), 201)
        resp.location = f"/v1/instances/{inst.id}"
        return resp

    def delete_instance(self, req, principal, id):
        if id not in self.core.instances.by_id:
            raise HttpError(404, f"no instance {id}")
        self.send(self.core.remove_instance(id, self.clock()))
        return Response(status=204)

    def put_instance_stats(self, req, principal, id):
        if id not in self.core.instances.by_id:
            raise HttpError(404, f"no instance {id}")
        body = self._body(req)
        if not isinstance(body, dict) or not body:
            raise HttpError(400, "must be an object with load and/or p99_us")
        values = {}
        for k, v in body.items():
            if k not in STATS_FIELDS:
                raise HttpError(400, "unknown field (allowed: load, p99_us)", k)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise HttpError(400, "must be a non-negative number", k)
            values[k] = v
        if values.get("load", 0) > 1:
            raise HttpError(400, "must be in 0..1 (share of the core)", "load")
        self.send(self.core.update_stats(id, self.clock(), **values))
        return _json(self.core.instances.by_id[id].to_json())

    def list_failures(self, req, principal):
        """The latest NF and worker failures the controller handled, oldest first; ``t``
        is the controller's monotonic clock (seconds), ``agent_at`` the agent's when it
        found an NF failed (the same clock when both run on one host)."""
        return _json({"failures": list(self.failures()) if self.failures else []})

    def list_flows(self, req, principal):
        limit = _int_param(req, "limit", DEFAULT_PAGE, 1, self.max_page)
        after = _int_param(req, "after", 0, 0, 2**63)
        recs, nxt = self.core.flows.page(after, limit, self._visible_chain_ids(principal))
        return _json({"flows": [r.to_json() for r in recs], "next": nxt})

    def move_flow(self, req, principal, id):
        """Move one flow (and its reply) to another instance of its chain, in order."""
        from quadrant_app.autoscale import Move

        rec = self.core.flows.by_id(id)
        if rec is None:
            raise HttpError(404, f"no flow {id}")
        body = self._body(req)
        if not isinstance(body, dict) or set(body) - MOVE_FIELDS or "to" not in body:
            raise HttpError(400, "must be an object {to: instance id}", "to")
        to = body["to"]
        if isinstance(to, bool) or not isinstance(to, int):
            raise HttpError(400, "must be an instance id", "to")
        dst = self.core.instances.by_id.get(to)
        if dst is None:
            raise HttpError(404, f"no instance {to}", "to")
        src = self.core.instances.by_id.get(rec.instance_id)
        if dst.id == rec.instance_id:
            raise HttpError(409, f"flow {id} is on instance {to} already", "to")
        if src is None or dst.chain_id != src.chain_id or dst.dpid != src.dpid:
            raise HttpError(409, "must be an instance of the flow's chain on its switch", "to")
        if src.nat_slot is not None and not self.core.nat_outbound(rec):
            raise HttpError(409, f"flow {id} is the reply of a NAT connection: move the "
                            "connection by its outbound flow (its reply moves with it)",
                            "id")  # fmt: skip
        if self.mover is None:
            raise HttpError(409, "flows move through the agents; none are enabled")
        self.mover(Move(src.chain_id, src.id, dst.id, (id,), rec.pps))
        return _json({"flow": id, "from": src.id, "to": dst.id}, status=202)


def _int_param(req, name, default, lo, hi) -> int:
    raw = req.GET.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise HttpError(400, f"must be an integer in {lo}..{hi}", name)
    return int(raw)


def _json(data, status=200) -> Response:
    resp = Response(status=status, body=json.dumps(data).encode())
    resp.content_type = "application/json"
    return resp


def _error(status: int, reason: str, field: str | None = None) -> Response:
    err = {"status": status, "reason": reason}
    if field is not None:
        err["field"] = field
    return _json({"error": err}, status)
