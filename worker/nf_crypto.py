"""The ``encrypt`` / ``decrypt`` NFs' config and wire format (pure: no DPDK, no crypto).

The format (docs/encrypt.rst says it in full): the L4 payload ``P`` (n bytes)
of an IPv4 or IPv6 TCP or UDP packet becomes ``C || nonce || tag`` where ``C`` is
``P`` encrypted in place with XChaCha20 (libsodium), ``nonce`` the 24-byte
XChaCha20 nonce and ``tag`` the 16-byte Poly1305 tag (``mode: aead``, the
default: XChaCha20-Poly1305-IETF, tampering is detected) or nothing
(``mode: stream``: ChaCha20 alone, malleable).  The nonce is
``salt (16 bytes, random per NF process start) || counter (8 bytes,
big-endian, per packet)``.

Every error is an :class:`~worker.nf_errors.NFConfigError` naming the field
and the reason; a key is never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worker.nf_errors import NFConfigError
from worker.nf_tables import _check_keys, _resolve, parse_int, parse_prefix

KEY_BYTES = 32
SALT_BYTES = 16
COUNTER_BYTES = 8
NONCE_BYTES = SALT_BYTES + COUNTER_BYTES  # XChaCha20: 192-bit nonce
TAG_BYTES = 16  # Poly1305
MODES = {"aead": NONCE_BYTES + TAG_BYTES, "stream": NONCE_BYTES}  # mode -> trailer bytes
OTHER = ("drop", "pass")
MTU_MIN, MTU_MAX = 576, 9216
MAX_ONLY_DST = 64
HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
B64_RE = re.compile(r"^[A-Za-z0-9+/]{43}=?$")
ROLE_KEYS = {
    "encrypt": {"key", "key_file", "mode", "mtu", "other", "clamp_mss", "only_dst"},
    "decrypt": {"key", "key_file", "mode", "other", "only_dst"},
}


@dataclass(frozen=True)
class CryptoConfig:
    key: bytes = field(repr=False)
    mode: str  # "aead" | "stream"
    mtu: int  # largest IPv4 total length the encrypted packet may have
    other: str  # what to do with packets that cannot be encrypted: "drop" | "pass"
    clamp_mss: bool  # lower the MSS option of TCP SYNs so encrypted segments fit the MTU
    # IPv4 destinations to work on, as (network, prefix length); empty: all.  Packets to
    # other destinations pass untouched (the other direction of a two-way chain).
    only_dst: tuple[tuple[int, int], ...] = ()

    @property
    def trailer(self) -> int:
        return MODES[self.mode]

    @property
    def mss_limit(self) -> int:
        """The largest MSS a SYN may announce: 20 B IPv4 + 20 B TCP + data + trailer <= MTU."""
        return self.mtu - 40 - self.trailer


def decode_key(text: str, fieldname: str) -> bytes:
    """64 hex digits or base64 (44 characters) of a 32-byte key; whitespace is ignored."""
    s = "".join(text.split())
    if HEX_RE.match(s):
        return bytes.fromhex(s)
    if B64_RE.match(s):
        try:
            key = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) == KEY_BYTES:
            return key
    hint = ""
    if re.fullmatch(r"[0-9a-fA-F]*", s) and s:
        hint = f" ({len(s)} hex digits = {len(s) / 2:g} bytes)"
    else:
        try:
            hint = f" (base64 of {len(base64.b64decode(s + '=' * (-len(s) % 4)))} bytes)"
        except (binascii.Error, ValueError):
            hint = f" ({len(s)} characters, neither hex nor base64)"
    raise NFConfigError(
        fieldname,
        f"must be a {KEY_BYTES}-byte key as 64 hex digits or 44 base64 characters{hint}",
    )


def load_key(config: Mapping, base_dir: Path | None) -> bytes:
    if ("key" in config) == ("key_file" in config):
        raise NFConfigError("config.key_file", "give exactly one of 'key_file' or 'key'")
    if "key" in config:
        if not isinstance(config["key"], str):
            raise NFConfigError("config.key", "must be a string (hex or base64)")
        return decode_key(config["key"], "config.key")
    path = _resolve(config["key_file"], "config.key_file", base_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NFConfigError("config.key_file", f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise NFConfigError(
            "config.key_file", f"{path}: not text (write the key as hex or base64)"
        ) from None
    return decode_key(text, f"config.key_file {path}")


def parse_crypto(
    config: Mapping, base_dir: Path | None = None, role: str = "encrypt"
) -> CryptoConfig:
    """``{key_file: k.hex, mode: aead, mtu: 1500, other: drop, clamp_mss: true, only_dst: []}``.

    ``role`` is ``encrypt`` or ``decrypt``; ``decrypt`` takes no ``mtu`` or
    ``clamp_mss`` (it only shrinks packets).
    """
    _check_keys(config, ROLE_KEYS[role])
    key = load_key(config, base_dir)
    if key == bytes(KEY_BYTES):
        where = "config.key" if "key" in config else "config.key_file"
        raise NFConfigError(where, "the all-zero key is refused")
    mode = config.get("mode", "aead")
    if mode not in MODES:
        raise NFConfigError("config.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    mtu = parse_int(config.get("mtu", 1500), "config.mtu", MTU_MIN, MTU_MAX)
    other = config.get("other", "drop")
    if other not in OTHER:
        raise NFConfigError("config.other", f"must be one of {', '.join(OTHER)}, got {other!r}")
    clamp = config.get("clamp_mss", True)
    if not isinstance(clamp, bool):
        raise NFConfigError("config.clamp_mss", f"must be true or false, got {clamp!r}")
    only = config.get("only_dst", [])
    if not isinstance(only, list) or len(only) > MAX_ONLY_DST:
        raise NFConfigError(
            "config.only_dst", f"must be a list of at most {MAX_ONLY_DST} IPv4 prefixes"
        )
    only_dst = tuple(parse_prefix(p, f"config.only_dst[{i}]") for i, p in enumerate(only))
    return CryptoConfig(
        key=key, mode=mode, mtu=mtu, other=other, clamp_mss=clamp, only_dst=only_dst
    )


def split_trailer(l4_payload: bytes, mode: str = "aead") -> tuple[bytes, bytes, bytes]:
    """An encrypted L4 payload -> ``(ciphertext, nonce, tag)`` (tag empty in stream mode)."""
    t = MODES[mode]
    if len(l4_payload) < t:
        raise ValueError(f"{len(l4_payload)} bytes: shorter than the {t}-byte trailer")
    body, trailer = l4_payload[: len(l4_payload) - t], l4_payload[len(l4_payload) - t :]
    return body, trailer[:NONCE_BYTES], trailer[NONCE_BYTES:]
