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


def label_key(label: str) -> bytes:
    """Inverse of :func:`key_label` (case-insensitive); raises DecodeError."""
    if len(label) != 56:
        raise DecodeError("a key label is 56 characters of base32")
    try:
        raw = base64.b32decode(label.upper())
    except (binascii.Error, ValueError):
        raise DecodeError("a key label is 56 characters of base32") from None
    return raw


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
