"""The urlfilter's rule language and config (pure)."""

from __future__ import annotations

import re

import pytest

from worker import nf_urlrules as u
from worker.nf_errors import NFConfigError

OK = (
    'block tcp any any -> any 80 (msg:"banned; really"; content:"/banned"; http_uri; nocase;'
    " sid:1;)"
)


def test_a_full_rule():
    r = u.parse_rule(OK, "f")
    assert (r.action, r.sid, r.msg) == ("block", 1, "banned; really")
    assert r.src == (0, 0) and r.sport == (0, 65535) and r.dport == (80, 80)
    (p,) = r.patterns
    assert p.scope == "uri" and p.caseless and p.expr == u.literal_expr(b"/banned")
    assert re.fullmatch(p.expr.decode(), "/banned")  # \xHH literals are plain PCRE


def test_header_fields_contents_and_pcre():
    r = u.parse_rule(
        'alert tcp 10.1.0.0/16 1024: -> 10.2.3.4 8000:8080 (content:"a|3b 22|\\"b"; '
        'http_header; content:"x"; pcre:"/ad+min/iU"; rev:3; classtype:web;  sid:77 ;)',
        "f",
    )
    assert r.action == "alert" and r.sid == 77
    assert r.src == (0x0A010000, 16) and r.sport == (1024, 65535)
    assert r.dst == (0x0A020304, 32) and r.dport == (8000, 8080)
    a, b, c = r.patterns
    assert a.expr == u.literal_expr(b'a;""b') and a.scope == "header" and not a.caseless
    assert b.scope == "raw"
    assert (c.expr, c.caseless, c.scope) == (b"ad+min", True, "uri")
    assert u.parse_rule("  # a comment", "f") is None
    assert u.parse_rule("", "f") is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("block tcp any any -> any 80", "not a rule"),
        ('pass tcp any any -> any 80 (content:"x"; sid:1;)', "action 'pass'"),
        ('block udp any any -> any 80 (content:"x"; sid:1;)', "only tcp"),
        ('block tcp any any <> any 80 (content:"x"; sid:1;)', "only '->'"),
        ('block tcp 10.0.0.1/8 any -> any 80 (content:"x"; sid:1;)', "host bits set"),
        ('block tcp $HOME_NET any -> any 80 (content:"x"; sid:1;)', "variables unsupported"),
        ('block tcp any any -> any 90:80 (content:"x"; sid:1;)', "low <= high"),
        ('block tcp any any -> any http (content:"x"; sid:1;)', "not N, N:M"),
        ('block tcp any any -> any 80 (content:"x"; sid:1)', "not ended by ';'"),
        ('block tcp any any -> any 80 (content:"x; sid:1;)', "unterminated quoted"),
        ('block tcp any any -> any 80 (nocase; content:"x"; sid:1;)', "no content before"),
        ('block tcp any any -> any 80 (content:"x"; http_uri; http_header; sid:1;)', "a scope"),
        ('block tcp any any -> any 80 (content:"x"; nocase:1; sid:1;)', "takes no value"),
        ('block tcp any any -> any 80 (content:"x"; depth:3; sid:1;)', "'depth' is not in"),
        ('block tcp any any -> any 80 (content:"x"; colour:red; sid:1;)', "unknown option"),
        ('block tcp any any -> any 80 (content:"x";)', "sid: missing"),
        ('block tcp any any -> any 80 (content:"x"; sid:0;)', "sid: must be"),
        ('block tcp any any -> any 80 (msg:"m"; sid:1;)', "no content or pcre"),
        ('block tcp any any -> any 80 (content:""; sid:1;)', "content: empty"),
        ('block tcp any any -> any 80 (content:"|4g|"; sid:1;)', "bad hex run"),
        ('block tcp any any -> any 80 (content:"|41"; sid:1;)', "not closed"),
        ('block tcp any any -> any 80 (content:"a\\x"; sid:1;)', "bad escape"),
        ('block tcp any any -> any 80 (content:!"a"; sid:1;)', "negated content"),
        ("block tcp any any -> any 80 (content:a; sid:1;)", "needs a quoted"),
        ('block tcp any any -> any 80 (pcre:"abc"; sid:1;)', "/expression/flags"),
        ('block tcp any any -> any 80 (pcre:"/a/x"; sid:1;)', "flag 'x'"),
        ('block tcp any any -> any 80 (pcre:"/a/UH"; sid:1;)', "two scopes"),
        ('block tcp any any -> any 80 (content:"x";; sid:1;)', "empty option"),
    ],
)
def test_bad_rules_name_the_field_and_reason(line, reason):
    with pytest.raises(NFConfigError) as exc:
        u.parse_rule(line, "config.rule_file r.txt:7")
    assert exc.value.field == "config.rule_file r.txt:7"
    assert reason in exc.value.reason


def test_rule_file_line_numbers_and_duplicate_sids(tmp_path):
    (tmp_path / "r.txt").write_text(f"# rules\n\n{OK}\n{OK.replace('sid:1', 'sid:2')}\n")
    cfg = u.parse_urlfilter({"rule_file": "r.txt"}, tmp_path)
    assert [r.sid for r in cfg.rules] == [1, 2]
    assert cfg.rules[1].where.endswith("r.txt:4")
    (tmp_path / "dup.txt").write_text(f"{OK}\n\n{OK}\n")
    with pytest.raises(NFConfigError) as exc:
        u.parse_urlfilter(
            {"rules": [OK.replace("sid:1", "sid:5")], "rule_file": "dup.txt"}, tmp_path
        )
    assert exc.value.field.endswith("dup.txt:3")
    assert "sid 1 already used by" in exc.value.reason and "dup.txt:1" in exc.value.reason
    (tmp_path / "bad.txt").write_text(f"{OK}\nblock tcp any any -> any 80 (sid:9;)\n")
    with pytest.raises(NFConfigError, match=r"bad\.txt:2: no content or pcre"):
        u.parse_urlfilter({"rule_file": "bad.txt"}, tmp_path)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(NFConfigError, match="config.rule_file: cannot read"):
        u.parse_urlfilter({"rule_file": "bin.txt"}, tmp_path)


def test_config_defaults_and_errors(tmp_path):
    cfg = u.parse_urlfilter({"rules": [OK]})
    assert (cfg.reset, cfg.flows, cfg.midstream, cfg.overload) == ("both", 16384, "pickup", "drop")
    assert (cfg.ooo_flow_kb, cfg.ooo_memory_kb, cfg.max_request_head) == (64, 16384, 2048)
    for config, field in [
        ({}, "config.rules"),
        ({"rules": "x"}, "config.rules"),
        ({"rules": [OK], "reset": "yes"}, "config.reset"),
        ({"rules": [OK], "flows": 4}, "config.flows"),
        ({"rules": [OK], "idle_timeout_s": 0}, "config.idle_timeout_s"),
        ({"rules": [OK], "midstream": "maybe"}, "config.midstream"),
        ({"rules": [OK], "max_request_head": 10}, "config.max_request_head"),
        ({"rules": [OK], "rule_file": "nope.txt"}, "config.rule_file"),
        ({"rules": [OK], "colour": 1}, "config.colour"),
        ({"rules": ["block tcp any any -> any 80 (sid:1;)"]}, "config.rules[0]"),
    ]:
        with pytest.raises(NFConfigError) as exc:
            u.parse_urlfilter(config, tmp_path)
        assert exc.value.field == field, config
