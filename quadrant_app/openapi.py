"""The OpenAPI 3 document of the REST API, served at ``GET /v1/openapi.json``.

Paths and security come from :data:`quadrant_app.rest.ROUTES` (passed in), and
the request schemas list exactly the fields the validators accept
(``chains.CHAIN_FIELDS`` and friends), so the document cannot drift from the
code without tests/unit/test_rest.py failing.
"""

from __future__ import annotations

from quadrant_app import chains

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "reason"],
            "properties": {
                "status": {"type": "integer"},
                "field": {"type": "string", "description": "the offending field, e.g. slo_us"},
                "reason": {"type": "string"},
            },
        }
    },
}

_PORTS = {
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 65535},
        {"type": "string", "pattern": r"^\d{1,5}(-\d{1,5})?$", "example": "80-8080"},
    ]
}

SCHEMAS = {
    "Error": _ERROR,
    "Filter": {
        "type": "object",
        "additionalProperties": False,
        "description": "Every field is optional (absent = any).  Port ranges need proto "
        "tcp, udp or sctp.  IPv4 or IPv6 prefixes; src and dst of the same version.",
        "properties": {
            "src": {"type": "string", "example": "10.1.0.0/16"},
            "dst": {"type": "string", "example": "2001:db8::/32"},
            "proto": {
                "oneOf": [
                    {"type": "string", "enum": sorted(chains.PROTO_NUMBERS)},
                    {"type": "integer", "minimum": 0, "maximum": 255},
                ]
            },
            "src_ports": _PORTS,
            "dst_ports": _PORTS,
        },
    },
    "Nf": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "description": "an NF type the data plane knows"},
            "config": {"type": "object"},
        },
    },
    "Scaling": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.6},
            "beta": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.9},
            "load_cap": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.9},
            "max_pps": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "measured highest rate (packets/s) of one instance, where the "
                "NFs' cycle counters miss the limit; load is then at least pps / max_pps",
            },
        },
    },
    "ChainSpec": {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(chains.CHAIN_REQUIRED),
        "properties": {
            "name": {"type": "string", "maxLength": chains.MAX_NAME},
            "nfs": {
                "type": "array",
                "minItems": 1,
                "maxItems": chains.MAX_NFS,
                "items": {"$ref": "#/components/schemas/Nf"},
            },
            "filter": {"$ref": "#/components/schemas/Filter"},
            "slo_us": {"type": "number", "exclusiveMinimum": 0},
            "scaling": {"$ref": "#/components/schemas/Scaling"},
            "priority": {
                "type": "integer",
                "minimum": chains.MIN_PRIORITY,
                "maximum": chains.MAX_PRIORITY,
                "default": 0,
            },
            "bidirectional": {
                "type": "boolean",
                "default": False,
                "description": "replies of the chain's flows go through the same instance",
            },
        },
    },
    "Chain": {
        "allOf": [
            {"$ref": "#/components/schemas/ChainSpec"},
            {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "tenant": {"type": "string"},
                    "instances": {"type": "array", "items": {"type": "integer"}},
                    "flows": {"type": "integer"},
                    "held_packets": {"type": "integer"},
                    "shortage": {"type": "boolean"},
                },
            },
        ]
    },
    "InstanceSpec": {
        "type": "object",
        "additionalProperties": False,
        "required": ["chain_id", "worker", "vf_mac", "core"],
        "properties": {
            "chain_id": {"type": "integer"},
            "worker": {"type": "string"},
            "vf_mac": {"type": "string", "example": "02:00:00:00:01:01"},
            "core": {"type": "integer"},
            "attached": {"type": "boolean", "default": True},
        },
    },
    "Instance": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "chain_id": {"type": "integer"},
            "worker": {"type": "string"},
            "vf_mac": {"type": "string"},
            "core": {"type": "integer"},
            "attached": {"type": "boolean"},
            "load": {"type": "number"},
            "p99_us": {"type": "number", "description": "latency estimate (us) judged by"},
            "batch_p99_us": {
                "type": "number",
                "description": "p99 per-batch execution time (us) its agent last reported",
            },
            "pps": {"type": "number", "description": "packet rate its agent last reported"},
            "flows": {"type": "integer"},
            "nat_slot": {
                "type": ["integer", "null"],
                "description": "which external entry of its chain's NAT it owns (docs/state.rst)",
            },
        },
    },
    "InstanceStats": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "load": {"type": "number", "minimum": 0, "maximum": 1},
            "p99_us": {"type": "number", "minimum": 0},
        },
    },
    "FlowMove": {
        "type": "object",
        "additionalProperties": False,
        "required": ["to"],
        "properties": {"to": {"type": "integer", "description": "instance id"}},
    },
    "Flow": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "switch_dpid": {"type": "integer"},
            "chain_id": {"type": "integer"},
            "instance_id": {"type": "integer"},
            "src": {"type": "string"},
            "dst": {"type": "string"},
            "proto": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "sport": {"type": "integer"},
            "dport": {"type": "integer"},
            "created": {"type": "number"},
            "packets": {"type": "integer"},
            "bytes": {"type": "integer"},
            "pps": {"type": "number"},
            "bps": {"type": "number"},
        },
    },
    "Failure": {
        "type": "object",
        "description": "A failure the controller handled: kind nf (an instance an agent "
        "reported failed) or worker (heartbeats stopped, or its link went down).",
        "properties": {
            "t": {"type": "number", "description": "controller's monotonic clock, s"},
            "kind": {"type": "string", "enum": ["nf", "worker"]},
            "worker": {"type": "string"},
            "reason": {"type": "string"},
            "cause": {"type": "string"},
            "flows_moved": {"type": "integer"},
            "instance": {"type": "integer"},
            "instances": {"type": "array", "items": {"type": "integer"}},
            "agent_at": {
                "type": "number",
                "nullable": True,
                "description": "agent's monotonic clock when it found the NF failed",
            },
        },
    },
    "Worker": {
        "type": "object",
        "description": "Admins see every worker with ports, cores and VFs; a tenant sees the "
        "workers running its instances, with name, switch and its instance ids only.",
        "properties": {
            "name": {"type": "string"},
            "switch": {"type": "string"},
            "instances": {"type": "array", "items": {"type": "integer"}},
            "switch_port": {"type": "integer"},
            "management": {"type": "string"},
            "cores": {"type": "array", "items": {"type": "integer"}},
            "vfs": {"type": "array", "items": {"type": "object"}},
            "events": {
                "type": "array",
                "items": {"type": "object"},
                "description": "Admins: the latest events its agent reported (kind, e.g. "
                "nf_failed, with instance and reason; age_s), newest last.",
            },
        },
    },
}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema):
    return {"application/json": {"schema": schema}}


def _list_of(key, name):
    return {
        "type": "object",
        "properties": {key: {"type": "array", "items": _ref(name)}},
    }


# handler name -> (summary, request schema or None, success status, success schema or None)
OPERATIONS = {
    "get_openapi": ("This document.", None, 200, {"type": "object"}),
    "get_metrics": ("Metrics in Prometheus text format.", None, 200, None),
    "post_chain": ("Register a chain.", "ChainSpec", 201, _ref("Chain")),
    "list_chains": ("The caller's chains (an admin: all).", None, 200, _list_of("chains", "Chain")),
    "get_chain": ("One chain.", None, 200, _ref("Chain")),
    "delete_chain": ("Remove a chain, its instances' records and flow rules.", None, 204, None),
    "list_workers": ("Workers.", None, 200, _list_of("workers", "Worker")),
    "list_failures": (
        "The latest NF and worker failures handled, oldest first (admin).",
        None,
        200,
        _list_of("failures", "Failure"),
    ),
    "list_instances": ("Chain instances.", None, 200, _list_of("instances", "Instance")),
    "post_instance": (
        "Pre-define a chain instance (admin; the worker agent registers them later).",
        "InstanceSpec",
        201,
        _ref("Instance"),
    ),
    "delete_instance": ("Forget an instance; its flows re-assign (admin).", None, 204, None),
    "put_instance_stats": (
        "Set an instance's load and p99 estimate (admin; the agent's stats feed).",
        "InstanceStats",
        200,
        _ref("Instance"),
    ),
    "move_flow": (
        "Move a flow (and its reply) to another instance of its chain, keeping its "
        "packets in order; a warm-pool instance is attached first (admin; 202: the move "
        "runs with the agents).  A NAT connection moves by its outbound flow and keeps "
        "its mapping; its reply flow alone is refused with 409 (docs/state.rst).",
        "FlowMove",
        202,
        {"type": "object"},
    ),
    "list_flows": (
        "Flows, paged: pass the returned next as after.",
        None,
        200,
        {
            "type": "object",
            "properties": {
                "flows": {"type": "array", "items": _ref("Flow")},
                "next": {"type": "integer", "nullable": True},
            },
        },
    ),
}

_ERRORS = {
    "tenant": {"401": "no or wrong bearer token", "404": "no such resource (or another tenant's)"},
    "admin": {"401": "no or wrong bearer token", "403": "not an admin token", "404": "not found"},
    "public": {},
}


def document(routes) -> dict:
    paths: dict = {}
    for method, path, handler, who in routes:
        summary, req_schema, status, resp_schema = OPERATIONS[handler]
        op: dict = {"operationId": handler, "summary": summary, "responses": {}}
        if who == "public":
            op["security"] = []
        if "{id}" in path:
            op["parameters"] = [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
            ]
        if handler == "list_flows":
            op["parameters"] = [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ]
        ok: dict = {"description": "OK"}
        if resp_schema is not None:
            ok["content"] = _content(resp_schema)
        elif handler == "get_metrics":
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
        op["responses"][str(status)] = ok
        if req_schema is not None:
            op["requestBody"] = {"required": True, "content": _content(_ref(req_schema))}
            op["responses"]["400"] = {
                "description": "bad input",
                "content": _content(_ref("Error")),
            }
            op["responses"]["413"] = {"description": "body too large"}
            op["responses"]["415"] = {"description": "not application/json"}
            op["responses"]["411"] = {"description": "neither Content-Length nor chunked"}
            op["responses"]["409"] = {
                "description": "conflicts with what is registered (overlapping filter, VF in use)",
                "content": _content(_ref("Error")),
            }
        for code, text in _ERRORS[who].items():
            op["responses"][code] = {"description": text, "content": _content(_ref("Error"))}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Quadrant controller", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
