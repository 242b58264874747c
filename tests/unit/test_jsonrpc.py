"""JSON-RPC 2.0 framing: every malformed message gets the standard error."""

from __future__ import annotations

import json

import pytest

from quadrant_app import jsonrpc
from quadrant_app.jsonrpc import Dispatcher, Request, Response, RpcError, decode, require


def serve(text, methods=None):
    d = Dispatcher()
    for name, fn in (methods or {}).items():
        d.add(name, fn)
    responses = []
    reply = d.handle(text, responses.append)
    return (json.loads(reply) if reply else None), responses


def test_request_and_result():
    reply, _ = serve('{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":7}',
                     {"add": lambda p: p["a"] + p["b"]})  # fmt: skip
    assert reply == {"jsonrpc": "2.0", "result": 3, "id": 7}


def test_notification_gets_no_reply():
    seen = []
    reply, _ = serve('{"jsonrpc":"2.0","method":"hb","params":{}}', {"hb": seen.append})
    assert reply is None and seen == [{}]


@pytest.mark.parametrize(
    "text,code,words",
    [
        ("{not json", jsonrpc.PARSE_ERROR, "not JSON"),
        ("[]", jsonrpc.INVALID_REQUEST, "empty batch"),
        ('"hello"', jsonrpc.INVALID_REQUEST, "JSON object"),
        ('{"method":"x","id":1}', jsonrpc.INVALID_REQUEST, '"jsonrpc" must be "2.0"'),
        ('{"jsonrpc":"2.0","method":5,"id":1}', jsonrpc.INVALID_REQUEST, "method name"),
        ('{"jsonrpc":"2.0","method":"rpc.x","id":1}', jsonrpc.INVALID_REQUEST, "method name"),
        ('{"jsonrpc":"2.0","method":"x","params":3,"id":1}', jsonrpc.INVALID_REQUEST, "params"),
        ('{"jsonrpc":"2.0","method":"x","id":[1]}', jsonrpc.INVALID_REQUEST, '"id"'),
        ('{"jsonrpc":"2.0","method":"x","id":1,"extra":1}', jsonrpc.INVALID_REQUEST, "unknown"),
        ('{"jsonrpc":"2.0","id":1}', jsonrpc.INVALID_REQUEST, '"method"'),
        ('{"jsonrpc":"2.0","method":"nope","id":1}', jsonrpc.METHOD_NOT_FOUND, "nope"),
    ],
)
def test_malformed(text, code, words):
    reply, _ = serve(text)
    assert reply["error"]["code"] == code and words in reply["error"]["message"]


def test_batch_serves_good_items_and_flags_bad_ones():
    text = json.dumps([
        {"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 1},
        {"jsonrpc": "1.0", "method": "echo", "id": 2},
        {"jsonrpc": "2.0", "method": "echo", "params": {"n": 3}},
        {"jsonrpc": "2.0", "result": "ok", "id": 9},
    ])  # fmt: skip
    reply, responses = serve(text, {"echo": lambda p: p})
    assert reply[0] == {"jsonrpc": "2.0", "result": [1], "id": 1}
    assert reply[1]["error"]["code"] == jsonrpc.INVALID_REQUEST and reply[1]["id"] == 2
    assert len(reply) == 2
    assert responses == [Response(9, "ok", None)]


def test_single_item_batch_is_answered_with_an_array():
    reply, _ = serve('[{"jsonrpc":"2.0","method":"x","id":1}]', {"x": lambda p: 1})
    assert reply == [{"jsonrpc": "2.0", "result": 1, "id": 1}]


def test_handler_errors_carry_the_request_id():
    def refuse(params):
        raise RpcError(jsonrpc.REFUSED, "core 9 is not managed here", data={"field": "core"})

    reply, _ = serve('{"jsonrpc":"2.0","method":"prepare","params":{},"id":"a"}',
                     {"prepare": refuse})  # fmt: skip
    assert reply == {"jsonrpc": "2.0", "id": "a", "error": {
        "code": jsonrpc.REFUSED, "message": "core 9 is not managed here",
        "data": {"field": "core"}}}  # fmt: skip


def test_responses_decode():
    (resp,), batch = decode('{"jsonrpc":"2.0","error":{"code":-1,"message":"m"},"id":3}')
    assert not batch and not resp.ok and resp.error["code"] == -1
    (bad,), _ = decode('{"jsonrpc":"2.0","error":{"code":"x"},"id":3}')
    assert isinstance(bad, RpcError)
    (both,), _ = decode('{"jsonrpc":"2.0","error":{"code":1,"message":"m"},"result":1,"id":3}')
    assert isinstance(both, RpcError)


def test_too_large():
    with pytest.raises(RpcError, match="larger"):
        decode("x" * (jsonrpc.MAX_MESSAGE + 1))


def test_require():
    assert require({"core": 3}, "core", int) == 3
    for params, words in (([], "must be an object"), ({}, "params.core: missing"),
                          ({"core": "3"}, "must be an integer"),
                          ({"core": True}, "must be an integer")):  # fmt: skip
        with pytest.raises(RpcError, match=words) as err:
            require(params, "core", int)
        assert err.value.code == jsonrpc.INVALID_PARAMS


def test_request_to_obj():
    assert Request("hb", {}, None).to_obj() == {"jsonrpc": "2.0", "method": "hb", "params": {}}
    assert Request("x", [1], 4).to_obj()["id"] == 4
