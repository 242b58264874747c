"""An independent reference for the encrypt NF's wire format (tests only).

HChaCha20 written from draft-irtf-cfrg-xchacha-03 section 2.2, then RFC 8439
ChaCha20(-Poly1305) from pyca/cryptography (OpenSSL): not libsodium, so a
test that decrypts the NF's output with this checks the documented format,
not the NF against itself.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

MASK = 0xFFFFFFFF


def _rotl(v: int, n: int) -> int:
    return ((v << n) & MASK) | (v >> (32 - n))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def open_aead(key: bytes, nonce24: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF, empty associated data; raises InvalidTag on a forgery."""
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).decrypt(b"\0" * 4 + nonce24[16:], ciphertext + tag, None)


def xor_stream(key: bytes, nonce24: bytes, data: bytes) -> bytes:
    """XChaCha20 from block 0 (cryptography's 16-byte nonce: counter LE || 96-bit nonce)."""
    sub = hchacha20(key, nonce24[:16])
    enc = Cipher(algorithms.ChaCha20(sub, b"\0" * 8 + nonce24[16:]), mode=None).encryptor()
    return enc.update(data)
