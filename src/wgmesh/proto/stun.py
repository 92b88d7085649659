"""STUN message codec (RFC 8489), sans-IO.

Section 5 (header: two zero bits, type, length, magic cookie, 96-bit transaction id),
section 14 (attributes: TLV padded to 4 bytes; MAPPED-ADDRESS 14.1, XOR-MAPPED-ADDRESS 14.2,
ERROR-CODE 14.8, SOFTWARE 14.14, FINGERPRINT 14.7: CRC-32 of the message up to it, XOR
0x5354554e, always last). Attributes are kept as raw ``(type, value)`` pairs in wire order; the
typed ones are packed and unpacked by the functions in :data:`CODECS`.

Our own attributes are comprehension-optional (0xC000-0xFFFF), so any STUN server or client
ignores them: ATTR_WG_PUBLIC_KEY (the sender's WireGuard public key, 32 bytes) and
ATTR_WG_SEALED (a 24-byte nonce and a NaCl box; the payloads are in :mod:`wgmesh.proto.sealed`).

Hostile input: datagrams over MAX_DATAGRAM bytes, more than MAX_ATTRIBUTES attributes, a bad
cookie, lengths that disagree, or a bad FINGERPRINT raise :class:`DecodeError`, nothing else.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wgmesh.errors import DecodeError
from wgmesh.proto.endpoint import Endpoint

MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_LEN = 20
MAX_DATAGRAM = 1280
"""Larger datagrams are never parsed (an IPv6 minimum-MTU packet; ours are under 700 bytes)."""
MAX_ATTRIBUTES = 32
FINGERPRINT_XOR = 0x5354554E

BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_WG_PUBLIC_KEY = 0xC0A1
ATTR_WG_SEALED = 0xC0A2
MAX_SEALED = 600


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One STUN message."""

    msg_type: int
    """Method and class (e.g. BINDING_REQUEST)."""
    transaction_id: bytes
    """96 bits chosen by the requester."""
    attributes: tuple[tuple[int, bytes], ...] = ()
    """(type, value) in wire order, without padding and without FINGERPRINT."""

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of that type, or None."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None


def is_stun(data: bytes) -> bool:
    """Cheap sniff: long enough, top two bits zero, length a multiple of 4, magic cookie."""
    return (
        len(data) >= HEADER_LEN
        and data[0] & 0xC0 == 0
        and data[3] & 0x03 == 0
        and data[4:8] == COOKIE_BYTES
    )


def decode(data: bytes) -> StunMessage:
    """Parse a STUN message; raises DecodeError (and only that) on anything malformed."""
    if len(data) > MAX_DATAGRAM:
        raise DecodeError("STUN message too large")
    if len(data) < HEADER_LEN:
        raise DecodeError("STUN message too short")
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if msg_type & 0xC000:
        raise DecodeError("not STUN: first two bits are not zero")
    if data[4:8] != COOKIE_BYTES:
        raise DecodeError("not STUN: bad magic cookie")
    if length % 4 or HEADER_LEN + length != len(data):
        raise DecodeError("STUN length mismatch")
    tid = bytes(data[8:20])
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER_LEN
    while pos < len(data):
        if len(attrs) >= MAX_ATTRIBUTES:
            raise DecodeError("too many STUN attributes")
        if pos + 4 > len(data):
            raise DecodeError("truncated STUN attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        end = start + attr_len
        if end > len(data):
            raise DecodeError("truncated STUN attribute")
        value = bytes(data[start:end])
        if attr_type == ATTR_FINGERPRINT:
            if attr_len != 4 or end + (-attr_len % 4) != len(data):
                raise DecodeError("FINGERPRINT must be last and 4 bytes")
            expected = _fingerprint(data[:pos], len(data) - HEADER_LEN)
            if value != expected:
                raise DecodeError("bad FINGERPRINT")
            break
        attrs.append((attr_type, value))
        pos = end + (-attr_len % 4)
    return StunMessage(msg_type, tid, tuple(attrs))


def _fingerprint(prefix: bytes, length_with_fp: int) -> bytes:
    """CRC-32 over the message up to FINGERPRINT, with the header length covering it."""
    header = prefix[:2] + struct.pack("!H", length_with_fp) + prefix[4:HEADER_LEN]
    crc = zlib.crc32(header + prefix[HEADER_LEN:]) ^ FINGERPRINT_XOR
    return struct.pack("!I", crc & 0xFFFFFFFF)


def encode(msg: StunMessage, *, fingerprint: bool = True) -> bytes:
    """Serialize, adding a FINGERPRINT last unless told not to."""
    if len(msg.transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    body = bytearray()
    for attr_type, value in msg.attributes:
        if len(value) > 0xFFFF:
            raise ValueError("STUN attribute too long")
        body += struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)
    header = struct.pack("!HHI", msg.msg_type, len(body), MAGIC_COOKIE) + msg.transaction_id
    out = header + bytes(body)
    if fingerprint:
        fp = _fingerprint(out, len(body) + 8)
        out = (
            out[:2] + struct.pack("!H", len(body) + 8) + out[4:]
            + struct.pack("!HH", ATTR_FINGERPRINT, 4) + fp
        )  # fmt: skip
    return out


# -- typed attributes -------------------------------------------------------------------------


def pack_address(ep: Endpoint) -> bytes:
    """MAPPED-ADDRESS value (RFC 8489 section 14.1)."""
    family = 1 if ep.ip.version == 4 else 2
    return struct.pack("!BBH", 0, family, ep.port) + ep.ip.packed


def unpack_address(value: bytes) -> Endpoint:
    if len(value) < 4:
        raise DecodeError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value, 0)
    raw = value[4:]
    if family == 1 and len(raw) == 4:
        return Endpoint(ipaddress.IPv4Address(raw), port)
    if family == 2 and len(raw) == 16:
        return Endpoint(ipaddress.IPv6Address(raw), port)
    raise DecodeError("bad address family or length")


def pack_xor_address(ep: Endpoint, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 8489 section 14.2)."""
    plain = pack_address(ep)
    mask = b"\x00\x00" + COOKIE_BYTES[:2] + COOKIE_BYTES + transaction_id
    return bytes(a ^ b for a, b in zip(plain, mask, strict=False))


def unpack_xor_address(value: bytes, transaction_id: bytes) -> Endpoint:
    mask = b"\x00\x00" + COOKIE_BYTES[:2] + COOKIE_BYTES + transaction_id
    if len(value) not in (8, 20):
        raise DecodeError("bad XOR-MAPPED-ADDRESS length")
    return unpack_address(bytes(a ^ b for a, b in zip(value, mask, strict=False)))


def pack_error(code: int, reason: str) -> bytes:
    """ERROR-CODE value (RFC 8489 section 14.8)."""
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()[:763]


def unpack_error(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise DecodeError("ERROR-CODE too short")
    cls, num = value[2] & 0x07, value[3]
    return cls * 100 + num, value[4:].decode("utf-8", "replace")


CODECS: dict[int, tuple[str, Callable[..., bytes], Callable[..., object]]] = {
    ATTR_MAPPED_ADDRESS: ("MAPPED-ADDRESS", pack_address, unpack_address),
    ATTR_XOR_MAPPED_ADDRESS: ("XOR-MAPPED-ADDRESS", pack_xor_address, unpack_xor_address),
    ATTR_ERROR_CODE: ("ERROR-CODE", pack_error, unpack_error),
    ATTR_SOFTWARE: ("SOFTWARE", str.encode, lambda v: v.decode("utf-8", "replace")),
    ATTR_WG_PUBLIC_KEY: ("WG-PUBLIC-KEY", bytes, bytes),
    ATTR_WG_SEALED: ("WG-SEALED", bytes, bytes),
}
"""One table per format (after aioice): attribute type -> (name, pack, unpack)."""


def binding_success(
    request: StunMessage,
    observed: Endpoint,
    extra: Sequence[tuple[int, bytes]] = (),
    software: str = "wgmesh",
) -> bytes:
    """The wire bytes of a Binding Success answering ``request`` (section 7.3.1)."""
    attrs = (
        (ATTR_XOR_MAPPED_ADDRESS, pack_xor_address(observed, request.transaction_id)),
        *extra,
        (ATTR_SOFTWARE, software.encode()),
    )
    return encode(StunMessage(BINDING_SUCCESS, request.transaction_id, attrs))


def classic_binding_success(data: bytes, observed: Endpoint) -> bytes | None:
    """RFC 3489 clients (no magic cookie) get MAPPED-ADDRESS, as RFC 8489 section 12 asks;
    None when ``data`` is not such a Binding Request."""
    if len(data) < HEADER_LEN or len(data) > MAX_DATAGRAM:
        return None
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if msg_type != BINDING_REQUEST or HEADER_LEN + length != len(data) or observed.ip.version != 4:
        return None
    value = pack_address(observed)
    body = struct.pack("!HH", ATTR_MAPPED_ADDRESS, len(value)) + value
    return struct.pack("!HH", BINDING_SUCCESS, len(body)) + data[4:20] + body
