"""JSON-RPC 2.0 framing for the controller–agent channel: pure, no sockets.

Both ends use it: the agent calls ``register``, ``heartbeat``, ``stats``,
``event``; the controller calls ``prepare``, ``attach``, ``detach``,
``set_batch``, ``teardown``.  :func:`decode` turns one WebSocket text message
into a :class:`Request`, a :class:`Response` or a batch of them, or raises
:class:`RpcError` with the standard code; :class:`Dispatcher` maps requests
to handler functions and builds the replies.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application errors (the -32000..-32099 range is the server's to define).
UNAUTHORIZED = -32001
REFUSED = -32002  # a well-formed command the receiver will not carry out (bad core, VF in use)

MAX_MESSAGE = 1 << 20  # bytes; a larger message is refused unread


class RpcError(Exception):
    """An error to report to the peer as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None, id: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.id = id

    def to_obj(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return {"jsonrpc": "2.0", "error": err, "id": self.id}


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    params: dict | list
    id: int | str | None  # None: a notification (no reply)

    def to_obj(self) -> dict:
        obj = {"jsonrpc": "2.0", "method": self.method, "params": self.params}
        if self.id is not None:
            obj["id"] = self.id
        return obj


@dataclasses.dataclass(frozen=True)
class Response:
    id: int | str | None
    result: Any = None
    error: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (int, str)) and not isinstance(value, bool))


def _decode_one(obj: Any) -> Request | Response:
    if not isinstance(obj, dict):
        raise RpcError(INVALID_REQUEST, "a message must be a JSON object")
    msg_id = obj.get("id")
    if obj.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'field "jsonrpc" must be "2.0"', id=_safe_id(msg_id))
    if not _valid_id(msg_id):
        raise RpcError(INVALID_REQUEST, 'field "id" must be a string, a number or null')
    if "method" in obj:
        unknown = set(obj) - {"jsonrpc", "method", "params", "id"}
        if unknown:
            raise RpcError(INVALID_REQUEST, f"unknown field {sorted(unknown)[0]!r}", id=msg_id)
        method = obj["method"]
        if not isinstance(method, str) or not method or method.startswith("rpc."):
            raise RpcError(INVALID_REQUEST, 'field "method" must be a method name', id=msg_id)
        params = obj.get("params", {})
        if not isinstance(params, (dict, list)):
            raise RpcError(INVALID_REQUEST, 'field "params" must be an object or array', id=msg_id)
        return Request(method, params, msg_id if "id" in obj else None)
    if "result" in obj or "error" in obj:
        if ("result" in obj) == ("error" in obj):
            raise RpcError(INVALID_REQUEST, "a response has exactly one of result and error")
        error = obj.get("error")
        if error is not None and (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), int)
            or not isinstance(error.get("message"), str)
        ):
            raise RpcError(INVALID_REQUEST, "an error needs an integer code and a message")
        return Response(msg_id, obj.get("result"), error)
    raise RpcError(INVALID_REQUEST, 'a message needs "method" (request) or "result"/"error"')


def _safe_id(value: Any):
    return value if _valid_id(value) else None


def decode(text: str | bytes) -> tuple[list[Request | Response | RpcError], bool]:
    """One WebSocket message as (requests, responses or per-item errors; was it a batch).

    A message that is not JSON at all raises :class:`RpcError` (``PARSE_ERROR``);
    in a batch, each malformed element becomes an :class:`RpcError` in place,
    so the well-formed ones are still served.
    """
    if len(text) > MAX_MESSAGE:
        raise RpcError(INVALID_REQUEST, f"message larger than {MAX_MESSAGE} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"not JSON: {exc}") from None
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise RpcError(INVALID_REQUEST, "an empty batch")
    out: list[Request | Response | RpcError] = []
    for item in items:
        try:
            out.append(_decode_one(item))
        except RpcError as exc:
            out.append(exc)
    return out, isinstance(obj, list)


def encode(obj: dict | list) -> str:
    return json.dumps(obj, separators=(",", ":"))


def result(msg_id, value) -> dict:
    return {"jsonrpc": "2.0", "result": value, "id": msg_id}


def require(params: Any, name: str, kind: type | tuple, where: str = "params") -> Any:
    """Fetch ``params[name]`` of type ``kind`` or raise INVALID_PARAMS naming the field."""
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, f"{where} must be an object")
    if name not in params:
        raise RpcError(INVALID_PARAMS, f"{where}.{name}: missing")
    value = params[name]
    if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
        raise RpcError(INVALID_PARAMS, f"{where}.{name}: must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise RpcError(INVALID_PARAMS, f"{where}.{name}: must be {_kind_name(kind)}")
    return value


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    names = {int: "an integer", str: "a string", dict: "an object", list: "an array",
             float: "a number", bool: "true or false"}  # fmt: skip
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


class Dispatcher:
    """Methods by name; :meth:`handle` answers one decoded message."""

    def __init__(self):
        self.methods: dict[str, Callable[[Any], Any]] = {}

    def add(self, name: str, fn: Callable[[Any], Any]) -> None:
        self.methods[name] = fn

    def call(self, req: Request) -> dict | None:
        fn = self.methods.get(req.method)
        try:
            if fn is None:
                raise RpcError(METHOD_NOT_FOUND, f"no method {req.method!r}")
            value = fn(req.params)
        except RpcError as exc:
            exc.id = req.id
            return None if req.id is None else exc.to_obj()
        return None if req.id is None else result(req.id, value)

    def handle(self, text: str | bytes, on_response: Callable[[Response], None]) -> str | None:
        """Serve the requests in one message; pass responses on; return the reply text."""
        try:
            items, batch = decode(text)
        except RpcError as exc:
            return encode(exc.to_obj())
        replies = []
        for item in items:
            if isinstance(item, RpcError):
                replies.append(item.to_obj())
            elif isinstance(item, Response):
                on_response(item)
            else:
                reply = self.call(item)
                if reply is not None:
                    replies.append(reply)
        if not replies:
            return None
        return encode(replies if batch else replies[0])


class Ids:
    """Request ids for one side of a session."""

    def __init__(self):
        self._next = itertools.count(1)

    def __call__(self) -> int:
        return next(self._next)
