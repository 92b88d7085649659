"""WireGuard keys in WireGuard's text format, and the DNS label wgsd derives from a key.

A key is 32 raw bytes (Curve25519). Its text form is standard base64 (44 characters, as
``wg genkey``/``wg pubkey`` print). Its DNS-SD instance label is the lowercase, padded
base32 of the raw key (56 characters ending in ``====``), as jwhited/wgsd publishes it.
"""

from __future__ import annotations

import base64
import binascii

from wgmesh.errors import DecodeError

KEY_LEN = 32
_B32 = bytearray(b"!" * 256)  # lowercase base32 -> the digits int(..., 32) reads; else invalid
for _i, _c in enumerate(b"abcdefghijklmnopqrstuvwxyz234567"):
    _B32[_c] = b"0123456789abcdefghijklmnopqrstuv"[_i]
_B32_DIGITS = bytes(_B32)


def decode_key(text: str) -> bytes:
    """Parse a base64 WireGuard key; raises DecodeError naming what is wrong."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise DecodeError("a WireGuard key is 44 characters of base64 ending in '='")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("a WireGuard key is 44 characters of base64 ending in '='") from None
    if len(raw) != KEY_LEN:
        raise DecodeError("a WireGuard key decodes to 32 bytes")
    return raw


def encode_key(raw: bytes) -> str:
    """The base64 text form of a raw 32-byte key."""
    if len(raw) != KEY_LEN:
        raise ValueError("a WireGuard key is 32 bytes")
    return base64.b64encode(raw).decode("ascii")


def key_label(raw: bytes) -> str:
    """wgsd's DNS label for a key: lowercase padded base32, 56 characters."""
    if len(raw) != KEY_LEN:
        raise ValueError("a WireGuard key is 32 bytes")
    return base64.b32encode(raw).decode("ascii").lower()


def label_key(label: bytes) -> bytes | None:
    """Inverse of :func:`key_label`: the key whose label is ``label``, given in lowercase as
    DNS names are compared (callers lowercase the question first); None unless ``label`` is
    exactly such a label, canonical padding included, so that one name maps to one key. Fast
    enough for the DNS hot path (one ``int(..., 32)``)."""
    if len(label) != 56 or not label.endswith(b"===="):
        return None
    try:
        value = int(label[:52].translate(_B32_DIGITS), 32)
    except ValueError:
        return None
    if value & 0xF:  # 52 characters carry 260 bits: the last 4 are zero in a canonical label
        return None
    return (value >> 4).to_bytes(32, "big")


def short_key(raw: bytes) -> str:
    """The first 8 base64 characters of a key, for log lines and tables."""
    return encode_key(raw)[:8]


def public_key(private: bytes) -> bytes:
    """The Curve25519 public key of a private key (``wg pubkey``)."""
    from nacl.public import PrivateKey

    return bytes(PrivateKey(private).public_key)


def clamp_private_key(raw: bytes) -> bytes:
    """Clamp 32 random bytes into a Curve25519 private key exactly as ``wg genkey`` does."""
    if len(raw) != KEY_LEN:
        raise ValueError("a WireGuard key is 32 bytes")
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)
