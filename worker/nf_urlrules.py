"""The ``urlfilter`` NF's config and rule language (pure: no DPDK, no Hyperscan).

Rules are a Snort-like subset, one per line (the exact subset is documented
in ``docs/urlfilter.rst``)::

    block tcp any any -> any 80 (msg:"banned"; content:"/banned"; http_uri; nocase; sid:1;)

:func:`parse_rules` turns the lines into :class:`Rule` objects whose
patterns are Hyperscan expressions (a ``content`` becomes a ``\\xHH``
literal, a ``pcre`` keeps its expression) with their scope; the native NF
(``cext/nf_urlfilter.pyx``) compiles them.  Every error is an
:class:`~worker.nf_errors.NFConfigError` naming the rule (``config.rule_file
rules.txt:12`` or ``config.rules[3]``) and the reason.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.nf_errors import NFConfigError
from worker.nf_tables import _check_keys, _resolve, parse_int

# Where a pattern is matched: the reassembled client->server byte stream
# (Hyperscan stream mode), or one parsed field of an HTTP request (block mode).
SCOPES = ("raw", "uri", "header", "method", "host")
SCOPE_KEYWORDS = {
    "http_uri": "uri",
    "http_header": "header",
    "http_method": "method",
    "http_host": "host",
}
PCRE_SCOPE_FLAGS = {"U": "uri", "H": "header", "M": "method", "W": "host"}
ACTIONS = ("block", "alert")
IGNORED_OPTIONS = {"rev", "classtype", "reference", "priority", "metadata", "gid"}
UNSUPPORTED_OPTIONS = {
    "offset",
    "depth",
    "distance",
    "within",
    "fast_pattern",
    "rawbytes",
    "http_raw_uri",
    "http_cookie",
    "http_client_body",
    "flow",
    "flowbits",
    "byte_test",
    "byte_jump",
    "isdataat",
    "dsize",
    "threshold",
}
OPTIONS = sorted({"msg", "content", "nocase", "pcre", "sid", *SCOPE_KEYWORDS, *IGNORED_OPTIONS})
RESETS = ("both", "server", "client", "none")
RULE_RE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*\((.*)\)\s*$")
MAX_RULES = 10_000
MAX_PATTERNS_PER_RULE = 16


@dataclass(frozen=True)
class Pattern:
    expr: bytes  # a Hyperscan expression (PCRE syntax), NUL-free
    caseless: bool
    dotall: bool
    multiline: bool
    scope: str  # one of SCOPES


@dataclass(frozen=True)
class Rule:
    action: str  # "block" | "alert"
    sid: int
    msg: str
    src: tuple[int, int]  # (network, prefix length); any = (0, 0)
    sport: tuple[int, int]  # inclusive range
    dst: tuple[int, int]
    dport: tuple[int, int]
    patterns: tuple[Pattern, ...]
    where: str  # the field naming this rule in errors


@dataclass(frozen=True)
class UrlFilterConfig:
    rules: list[Rule]
    reset: str
    flows: int
    idle_timeout_s: float
    handshake_timeout_s: float
    ooo_flow_kb: int
    ooo_memory_kb: int
    max_request_head: int
    midstream: str  # pickup | pass | drop
    overload: str  # drop | pass


CONFIG_KEYS = {
    "rules",
    "rule_file",
    "reset",
    "flows",
    "idle_timeout_s",
    "handshake_timeout_s",
    "ooo_flow_kb",
    "ooo_memory_kb",
    "max_request_head",
    "midstream",
    "overload",
}


def _choice(value, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise NFConfigError(field, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _seconds(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise NFConfigError(field, f"must be a number of seconds in (0, 86400], got {value!r}")
    return float(value)


def parse_urlfilter(config: Mapping, base_dir: Path | None = None) -> UrlFilterConfig:
    """The NF's ``config`` mapping (keys in docs/urlfilter.rst) -> :class:`UrlFilterConfig`."""
    _check_keys(config, CONFIG_KEYS)
    rules: list[Rule] = []
    inline = config.get("rules", [])
    if not isinstance(inline, list) or not all(isinstance(r, str) for r in inline):
        raise NFConfigError("config.rules", "must be a list of rule strings")
    for i, text in enumerate(inline):
        rule = parse_rule(text, f"config.rules[{i}]")
        if rule is not None:
            rules.append(rule)
    if "rule_file" in config:
        path = _resolve(config["rule_file"], "config.rule_file", base_dir)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise NFConfigError("config.rule_file", f"cannot read {path}: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            rule = parse_rule(line, f"config.rule_file {path}:{lineno}")
            if rule is not None:
                rules.append(rule)
    if not rules:
        raise NFConfigError("config.rules", "no rules: give rules and/or rule_file")
    if len(rules) > MAX_RULES:
        raise NFConfigError("config.rules", f"{len(rules)} rules, at most {MAX_RULES}")
    seen: dict[int, str] = {}
    for r in rules:
        if r.sid in seen:
            raise NFConfigError(r.where, f"sid {r.sid} already used by {seen[r.sid]}")
        seen[r.sid] = r.where
    flows = parse_int(config.get("flows", 16384), "config.flows", 8, 1 << 22)
    return UrlFilterConfig(
        rules=rules,
        reset=_choice(config.get("reset", "both"), "config.reset", RESETS),
        flows=flows,
        idle_timeout_s=_seconds(config.get("idle_timeout_s", 60), "config.idle_timeout_s"),
        handshake_timeout_s=_seconds(
            config.get("handshake_timeout_s", 10), "config.handshake_timeout_s"
        ),
        ooo_flow_kb=parse_int(config.get("ooo_flow_kb", 64), "config.ooo_flow_kb", 0, 1 << 14),
        ooo_memory_kb=parse_int(
            config.get("ooo_memory_kb", 16384), "config.ooo_memory_kb", 0, 1 << 22
        ),
        max_request_head=parse_int(
            config.get("max_request_head", 2048), "config.max_request_head", 128, 65535
        ),
        midstream=_choice(
            config.get("midstream", "pickup"), "config.midstream", ("pickup", "pass", "drop")
        ),
        overload=_choice(config.get("overload", "drop"), "config.overload", ("drop", "pass")),
    )


# --- one rule -------------------------------------------------------------------------


def _address(text: str, field: str) -> tuple[int, int]:
    if text == "any":
        return (0, 0)
    if text.startswith(("!", "[", "$")):
        raise NFConfigError(field, f"address {text!r}: negation, lists and variables unsupported")
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise NFConfigError(field, f"address {text!r}: {exc}") from None
    return (int(net.network_address), net.prefixlen)


def _ports(text: str, field: str) -> tuple[int, int]:
    if text == "any":
        return (0, 65535)
    if text.startswith(("!", "[", "$")):
        raise NFConfigError(field, f"port {text!r}: negation, lists and variables unsupported")
    lo, sep, hi = text.partition(":")
    try:
        lo_n = int(lo) if lo else 0
        hi_n = (int(hi) if hi else 65535) if sep else lo_n
    except ValueError:
        raise NFConfigError(field, f"port {text!r}: not N, N:M, N: or :M") from None
    if not (0 <= lo_n <= hi_n <= 65535):
        raise NFConfigError(field, f"port {text!r}: need 0 <= low <= high <= 65535")
    return (lo_n, hi_n)


def _split_options(body: str, field: str) -> list[tuple[str, str | None]]:
    """``msg:"a;b"; nocase;`` -> [("msg", '"a;b"'), ("nocase", None)]."""
    out: list[tuple[str, str | None]] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in body:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append(_option("".join(cur), field))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise NFConfigError(field, "unterminated quoted string in the options")
    if "".join(cur).strip():
        raise NFConfigError(field, f"option {''.join(cur).strip()!r} is not ended by ';'")
    return out


def _option(text: str, field: str) -> tuple[str, str | None]:
    key, sep, value = text.strip().partition(":")
    key = key.strip()
    if not key:
        raise NFConfigError(field, "empty option (two ';' in a row?)")
    return key, (value.strip() if sep else None)


def _quoted(value: str | None, key: str, field: str) -> str:
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise NFConfigError(field, f"{key}: needs a quoted string, got {value!r}")
    return value[1:-1]


def content_bytes(text: str, field: str) -> bytes:
    """Snort content syntax: ``\\"``, ``\\;``, ``\\\\`` escapes and ``|41 42|`` hex runs."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n or text[i + 1] not in '"\\;:|':
                raise NFConfigError(field, f"content: bad escape at character {i + 1}")
            out += text[i + 1].encode()
            i += 2
        elif ch == "|":
            end = text.find("|", i + 1)
            if end < 0:
                raise NFConfigError(field, "content: '|' hex run not closed")
            digits = text[i + 1 : end].replace(" ", "")
            if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
                raise NFConfigError(field, f"content: bad hex run |{text[i + 1 : end]}|")
            out += bytes.fromhex(digits)
            i = end + 1
        elif ch == '"' or ch == ";":
            raise NFConfigError(field, f"content: unescaped {ch!r} at character {i + 1}")
        else:
            out += ch.encode("utf-8")
            i += 1
    if not out:
        raise NFConfigError(field, "content: empty")
    return bytes(out)


def literal_expr(data: bytes) -> bytes:
    return b"".join(b"\\x%02x" % b for b in data)


def _pcre(value: str | None, field: str) -> Pattern:
    text = _quoted(value, "pcre", field)
    if not text.startswith("/") or text.rfind("/") == 0:
        raise NFConfigError(field, f'pcre: needs "/expression/flags", got {text!r}')
    end = text.rfind("/")
    expr, flags = text[1:end], text[end + 1 :]
    if not expr:
        raise NFConfigError(field, "pcre: empty expression")
    if "\0" in expr:
        raise NFConfigError(field, "pcre: NUL in the expression (write \\x00)")
    scope = "raw"
    for f in flags:
        if f in PCRE_SCOPE_FLAGS:
            if scope != "raw":
                raise NFConfigError(field, f"pcre: flags {flags!r} name two scopes")
            scope = PCRE_SCOPE_FLAGS[f]
        elif f not in "ism":
            raise NFConfigError(field, f"pcre: flag {f!r} unsupported (i s m U H M W)")
    return Pattern(expr.encode(), "i" in flags, "s" in flags, "m" in flags, scope)


def parse_rule(line: str, field: str) -> Rule | None:
    """One line of a rule file; None for a blank or ``#`` comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    m = RULE_RE.match(text)
    if not m:
        raise NFConfigError(
            field, "not a rule: ACTION tcp SRC SPORT -> DST DPORT (OPTION; ...) expected"
        )
    action, proto, src, sport, direction, dst, dport, body = m.groups()
    if action not in ACTIONS:
        raise NFConfigError(field, f"action {action!r}: must be one of {', '.join(ACTIONS)}")
    if proto != "tcp":
        raise NFConfigError(field, f"protocol {proto!r}: only tcp is supported")
    if direction != "->":
        raise NFConfigError(field, f"direction {direction!r}: only '->' is supported")
    msg, sid = "", None
    patterns: list[Pattern] = []
    last: dict | None = None  # the content the next modifiers apply to
    for key, value in _split_options(body, field):
        if key == "content":
            if value is not None and value.startswith("!"):
                raise NFConfigError(field, "content: negated content unsupported")
            raw = _quoted(value, "content", field)
            last = {"data": content_bytes(raw, field), "nocase": False, "scope": "raw"}
            patterns.append(last)  # type: ignore[arg-type]
        elif key == "nocase" or key in SCOPE_KEYWORDS:
            if value is not None:
                raise NFConfigError(field, f"{key}: takes no value")
            if last is None:
                raise NFConfigError(field, f"{key}: no content before it to modify")
            if key == "nocase":
                last["nocase"] = True
            else:
                if last["scope"] != "raw":
                    raise NFConfigError(field, f"{key}: this content already has a scope")
                last["scope"] = SCOPE_KEYWORDS[key]
        elif key == "pcre":
            patterns.append(_pcre(value, field))  # type: ignore[arg-type]
            last = None
        elif key == "msg":
            msg = _quoted(value, "msg", field)
        elif key == "sid":
            if value is None or not value.isdigit() or not 0 < int(value) < 1 << 31:
                raise NFConfigError(field, f"sid: must be an integer 1..{(1 << 31) - 1}")
            sid = int(value)
        elif key in IGNORED_OPTIONS:
            pass
        elif key in UNSUPPORTED_OPTIONS:
            raise NFConfigError(field, f"option {key!r} is not in the supported subset")
        else:
            raise NFConfigError(field, f"unknown option {key!r} (known: {', '.join(OPTIONS)})")
    if sid is None:
        raise NFConfigError(field, "sid: missing (every rule needs one)")
    if not patterns:
        raise NFConfigError(field, "no content or pcre: the rule would match nothing")
    if len(patterns) > MAX_PATTERNS_PER_RULE:
        raise NFConfigError(field, f"{len(patterns)} patterns, at most {MAX_PATTERNS_PER_RULE}")
    out = []
    for p in patterns:
        if isinstance(p, Pattern):
            out.append(p)
        else:
            out.append(Pattern(literal_expr(p["data"]), p["nocase"], False, False, p["scope"]))
    return Rule(
        action=action,
        sid=sid,
        msg=msg,
        src=_address(src, field),
        sport=_ports(sport, field),
        dst=_address(dst, field),
        dport=_ports(dport, field),
        patterns=tuple(out),
        where=field,
    )


def generate_rules(count: int, seed: int = 1) -> list[str]:
    """``count`` block rules over all scopes (URI paths, Host names, raw byte
    signatures, a few PCREs), for benchmarks: realistic shapes, random words."""
    rng = random.Random(seed)

    def word(n: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(n))

    lines = []
    for sid in range(1, count + 1):
        kind = rng.random()
        head = "block tcp any any -> any 80"
        if kind < 0.5:
            opts = f'content:"/{word(rng.randrange(6, 16))}"; http_uri; nocase;'
        elif kind < 0.75:
            opts = f'content:"{word(rng.randrange(5, 12))}.example"; http_host;'
        elif kind < 0.95:
            opts = f'content:"|{rng.randrange(256):02x} {rng.randrange(256):02x}|{word(6)}";'
            head = "block tcp any any -> any any"
        else:
            opts = f'pcre:"/\\/{word(5)}[0-9]+\\/{word(4)}/U";'
        lines.append(f'{head} (msg:"generated {sid}"; {opts} sid:{sid};)')
    return lines
