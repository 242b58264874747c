"""The encrypt/decrypt NFs' config parsing and trailer layout (pure)."""

from __future__ import annotations

import base64

import pytest

from worker import nf_crypto as c
from worker.nf_errors import NFConfigError

KEY = bytes(range(1, 33))


def test_key_hex_base64_inline_and_file(tmp_path):
    assert c.parse_crypto({"key": KEY.hex()}).key == KEY
    assert c.parse_crypto({"key": KEY.hex().upper()}).key == KEY
    b64 = base64.b64encode(KEY).decode()
    assert c.parse_crypto({"key": b64}).key == KEY
    assert c.parse_crypto({"key": b64.rstrip("=")}).key == KEY
    (tmp_path / "k.hex").write_text(KEY.hex()[:32] + "\n" + KEY.hex()[32:] + "\n")
    (tmp_path / "k.b64").write_text(b64 + "\n")
    assert c.parse_crypto({"key_file": "k.hex"}, tmp_path).key == KEY
    assert c.parse_crypto({"key_file": str(tmp_path / "k.b64")}).key == KEY
    shown = repr(c.parse_crypto({"key": KEY.hex()}))
    assert repr(KEY) not in shown and "key=" not in shown


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({}, "config.key_file: give exactly one of 'key_file' or 'key'"),
        ({"key": KEY.hex(), "key_file": "k"}, "exactly one of"),
        ({"key": KEY.hex()[:-2]}, r"config.key: .*\(62 hex digits = 31 bytes\)"),
        ({"key": KEY.hex() + "00"}, r"\(66 hex digits = 33 bytes\)"),
        ({"key": base64.b64encode(KEY[:24]).decode()}, r"\(base64 of 24 bytes\)"),
        ({"key": "secret!"}, "neither hex nor base64"),
        ({"key": 12345}, "config.key: must be a string"),
        ({"key": "00" * 32}, "config.key: the all-zero key is refused"),
        ({"key_file": "nope.key"}, "config.key_file: no such file"),
        ({"key": KEY.hex(), "mode": "gcm"}, "config.mode: must be one of aead, stream"),
        ({"key": KEY.hex(), "mtu": 100}, "config.mtu: must be 576..9216"),
        ({"key": KEY.hex(), "other": "encrypt"}, "config.other: must be one of drop, pass"),
        ({"key": KEY.hex(), "clamp_mss": "yes"}, "config.clamp_mss: must be true or false"),
        ({"key": KEY.hex(), "nonce": 1}, r"config.nonce: unknown option"),
        ({"key": KEY.hex(), "only_dst": "10.2.0.0/16"}, "config.only_dst: must be a list"),
        ({"key": KEY.hex(), "only_dst": ["10.2.0.1/16"]}, r"config.only_dst\[0\]: not an IPv4"),
        ({"key": KEY.hex(), "only_dst": ["10.0.0.0/8"] * 65}, "at most 64 IPv4 prefixes"),
    ],
)
def test_refused(config, match, tmp_path):
    with pytest.raises(NFConfigError, match=match) as err:
        c.parse_crypto(config, tmp_path)
    assert KEY.hex()[:16] not in str(err.value)  # a key is never echoed


def test_key_file_contents_refused(tmp_path):
    (tmp_path / "bin.key").write_bytes(bytes(range(200, 232)))  # raw bytes, not text
    with pytest.raises(NFConfigError, match=r"config.key_file: .*bin.key: not text"):
        c.parse_crypto({"key_file": "bin.key"}, tmp_path)
    (tmp_path / "zero.key").write_text("00" * 32)
    with pytest.raises(NFConfigError, match="config.key_file: the all-zero key"):
        c.parse_crypto({"key_file": "zero.key"}, tmp_path)
    (tmp_path / "short.key").write_text("ab" * 16)
    with pytest.raises(NFConfigError, match=r"config.key_file .*short.key: .*16 bytes"):
        c.parse_crypto({"key_file": "short.key"}, tmp_path)


def test_decrypt_takes_no_encrypt_only_options():
    for opt, value in (("mtu", 1500), ("clamp_mss", True)):
        with pytest.raises(NFConfigError, match=f"config.{opt}: unknown option"):
            c.parse_crypto({"key": KEY.hex(), opt: value}, role="decrypt")
    d = c.parse_crypto({"key": KEY.hex(), "mode": "stream", "other": "pass"}, role="decrypt")
    assert (d.mode, d.other, d.trailer) == ("stream", "pass", 24)


def test_defaults_trailer_and_mss():
    cfg = c.parse_crypto({"key": KEY.hex()})
    assert (cfg.mode, cfg.mtu, cfg.other, cfg.clamp_mss) == ("aead", 1500, "drop", True)
    assert cfg.trailer == 40 and cfg.mss_limit == 1420 and cfg.only_dst == ()
    only = c.parse_crypto({"key": KEY.hex(), "only_dst": ["10.2.0.0/16", "192.0.2.7"]})
    assert only.only_dst == ((0x0A020000, 16), (0xC0000207, 32))
    assert c.parse_crypto({"key": KEY.hex(), "mode": "stream", "mtu": 9000}).mss_limit == 8936
    body, nonce, tag = c.split_trailer(b"p" * 5 + b"n" * 24 + b"t" * 16)
    assert (body, nonce, tag) == (b"p" * 5, b"n" * 24, b"t" * 16)
    assert c.split_trailer(b"n" * 24, "stream") == (b"", b"n" * 24, b"")
    with pytest.raises(ValueError, match="shorter than the 40-byte trailer"):
        c.split_trailer(b"x" * 39)
