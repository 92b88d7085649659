"""STUN message codec (RFC 8489), sans-IO. The wire format is described in docs/protocol.md.

RFC 8489 sections followed:

- 5 (header): two zero bits, 14-bit type, 16-bit length of the body (a multiple of 4), the
  magic cookie 0x2112A442, a 96-bit transaction id.
- 14 (attributes): type, length, value, padded to a multiple of 4 bytes. Padding bytes are not
  checked (section 14: they "MUST be ignored by the receiver"; the RFC 5769 vectors pad with
  spaces); we pad with zeros.
- 14.1 MAPPED-ADDRESS, 14.2 XOR-MAPPED-ADDRESS (the port is XORed with the top 16 bits of the
  cookie, an IPv4 address with the cookie, an IPv6 address with cookie || transaction id),
  14.7 FINGERPRINT (CRC-32 of the message up to it, XOR 0x5354554E; always last), 14.8
  ERROR-CODE, 14.14 SOFTWARE.
- 6.3.1 (unknown comprehension-required attributes): kept, listed by :func:`unknown_required`;
  the server decides what to do with them.
- 12 (RFC 3489 clients, no magic cookie): :func:`classic_binding_success`.
- RFC 5780 section 7.2, CHANGE-REQUEST (flags: change IP 0x04, change port 0x02), used by the
  NAT behaviour tests (:mod:`wgmesh.proto.changerequest` answers it, :mod:`wgmesh.proto.netcheck`
  sends it).
- 7.3.1 again, fast: :class:`PlainBindingResponder` answers the commonest request, a Binding
  Request with no attributes but FINGERPRINT, from a template, byte for byte what
  :func:`binding_success` gives, without decoding the request or building an ``Endpoint``.

Decoded messages keep every attribute but FINGERPRINT as raw ``(type, value)`` pairs in wire
order. Typed values are packed and unpacked on demand by the functions in :data:`CODECS`, one
table after aioice's. Our own attributes are comprehension-optional (0x8000-0xFFFF), so other
STUN software ignores them: :data:`ATTR_WG_PUBLIC_KEY` (the sender's WireGuard public key) and
:data:`ATTR_WG_SEALED` (a NaCl box; its payloads are in :mod:`wgmesh.proto.sealed`).

Hostile input: :func:`decode` raises :class:`~wgmesh.errors.DecodeError` and nothing else, with
short fixed messages that tests check. Datagrams over :data:`MAX_DATAGRAM` bytes are refused
before parsing, messages with more than :data:`MAX_ATTRIBUTES` attributes while parsing.
Encoding something we could not decode ourselves raises
:class:`~wgmesh.errors.LocalProtocolError`.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from wgmesh import __version__
from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto.endpoint import Endpoint

MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LEN = 20
TRANSACTION_ID_LEN = 12
MAX_DATAGRAM = 1280
"""Larger datagrams are never parsed. 1280 is the IPv6 minimum MTU, so no message we or a
standard client send is refused (ours stay under 600 bytes; RFC 8489 section 6.1 asks for
messages under the path MTU, 576 bytes for IPv4 when it is unknown)."""
MAX_ATTRIBUTES = 32
"""Attributes per message, FINGERPRINT included (a Binding Request has fewer than 10)."""
FINGERPRINT_XOR = 0x5354554E
MAX_TEXT = 763
"""SOFTWARE, ERROR-CODE reason: under 128 characters, at most 763 bytes (14.8, 14.14)."""

BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003
"""RFC 5780 section 7.2: answer from another address and/or port."""
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_WG_PUBLIC_KEY = 0xC0A1
"""Comprehension-optional: the sender's WireGuard public key, 32 raw bytes."""
ATTR_WG_SEALED = 0xC0A2
"""Comprehension-optional: a 24-byte nonce, then a NaCl box (16-byte MAC + payload)."""
WG_KEY_LEN = 32
SEALED_NONCE_LEN = 24
MIN_SEALED = SEALED_NONCE_LEN + 16
"""A nonce and an empty box (its MAC alone)."""
MAX_SEALED = 600
"""Nonce, MAC and a payload of at most 512 bytes (``sealed.MAX_PAYLOAD``) fit, with room."""

SOFTWARE = f"wgmesh/{__version__}"
"""The SOFTWARE value we send."""

_TYPE_LEN = struct.Struct("!HH")
_FINGERPRINT_TLV = _TYPE_LEN.pack(ATTR_FINGERPRINT, 4)


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One STUN message."""

    msg_type: int
    """Method and class, e.g. :data:`BINDING_REQUEST` (14 bits)."""
    transaction_id: bytes
    """96 bits chosen by the requester, echoed in the response."""
    attributes: tuple[tuple[int, bytes], ...] = ()
    """``(type, value)`` in wire order, without padding and without FINGERPRINT."""

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of that type, or None."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None


# -- the message ------------------------------------------------------------------------------


def is_stun(data: bytes) -> bool:
    """Cheap sniff: long enough, top two bits zero, length a multiple of 4, magic cookie.

    WireGuard messages start with a type byte 1-4 then three zero bytes: they never match.
    """
    return (
        len(data) >= HEADER_LEN
        and data[0] & 0xC0 == 0
        and data[3] & 0x03 == 0
        and data[4:8] == COOKIE_BYTES
    )


def decode(data: bytes) -> StunMessage:
    """Parse a STUN message; raises DecodeError (and only that) on anything malformed.

    A FINGERPRINT, when present, must be the last attribute and must match.
    """
    data = bytes(data)  # no copy for bytes; a bytearray or memoryview must not leak into values
    size = len(data)
    if size > MAX_DATAGRAM:
        raise DecodeError("STUN message too large")
    if size < HEADER_LEN:
        raise DecodeError("STUN message too short")
    msg_type, length = _TYPE_LEN.unpack_from(data, 0)
    if msg_type & 0xC000:
        raise DecodeError("not STUN: first two bits are not zero")
    if data[4:8] != COOKIE_BYTES:
        raise DecodeError("not STUN: bad magic cookie")
    if length % 4:
        raise DecodeError("STUN length not a multiple of 4")
    if HEADER_LEN + length != size:
        raise DecodeError("STUN length mismatch")
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER_LEN
    # pos and size are multiples of 4, so an attribute header always fits when pos < size,
    # and so does the padding of a value that fits.
    while pos < size:
        if len(attrs) == MAX_ATTRIBUTES:
            raise DecodeError("too many STUN attributes")
        attr_type, attr_len = _TYPE_LEN.unpack_from(data, pos)
        start = pos + 4
        end = start + attr_len
        if end > size:
            raise DecodeError("truncated STUN attribute")
        if attr_type == ATTR_FINGERPRINT:
            if attr_len != 4:
                raise DecodeError("bad FINGERPRINT length")
            if end != size:
                raise DecodeError("FINGERPRINT not last")
            if data[start:end] != _fingerprint(memoryview(data)[:pos]):
                raise DecodeError("bad FINGERPRINT")
            break
        attrs.append((attr_type, data[start:end]))
        pos = end + (-attr_len % 4)
    return StunMessage(msg_type, data[8:20], tuple(attrs))


def _fingerprint(prefix: bytes | memoryview) -> bytes:
    """FINGERPRINT of ``prefix``, the message up to it, whose header length already counts the
    FINGERPRINT attribute (section 14.7)."""
    return ((zlib.crc32(prefix) ^ FINGERPRINT_XOR) & 0xFFFFFFFF).to_bytes(4, "big")


def encode(msg: StunMessage, *, fingerprint: bool = True) -> bytes:
    """Serialize ``msg``, adding FINGERPRINT last unless told not to.

    Raises LocalProtocolError for a message :func:`decode` would refuse.
    """
    if len(msg.transaction_id) != TRANSACTION_ID_LEN:
        raise LocalProtocolError("a STUN transaction id is 12 bytes")
    if not 0 <= msg.msg_type <= 0x3FFF:
        raise LocalProtocolError("a STUN message type has 14 bits")
    if len(msg.attributes) + fingerprint > MAX_ATTRIBUTES:
        raise LocalProtocolError("too many STUN attributes")
    parts: list[bytes] = []
    for attr_type, value in msg.attributes:
        if attr_type == ATTR_FINGERPRINT:
            raise LocalProtocolError("FINGERPRINT is added by encode(), not passed in")
        if not 0 <= attr_type <= 0xFFFF or len(value) > 0xFFFF:
            raise LocalProtocolError("STUN attribute type or length out of range")
        parts += (_TYPE_LEN.pack(attr_type, len(value)), value, b"\x00" * (-len(value) % 4))
    body = b"".join(parts)
    length = len(body) + (8 if fingerprint else 0)
    if HEADER_LEN + length > MAX_DATAGRAM:
        raise LocalProtocolError("STUN message too large")
    out = _TYPE_LEN.pack(msg.msg_type, length) + COOKIE_BYTES + msg.transaction_id + body
    if fingerprint:
        out += _FINGERPRINT_TLV + _fingerprint(out)
    return out


def unknown_required(msg: StunMessage) -> tuple[int, ...]:
    """Comprehension-required attribute types (below 0x8000) that :data:`CODECS` lacks,
    in wire order: what an UNKNOWN-ATTRIBUTES error (section 6.3.1) would list."""
    return tuple(t for t, _ in msg.attributes if t < 0x8000 and t not in CODECS)


# -- typed attributes -------------------------------------------------------------------------


def _check_tid(transaction_id: bytes) -> None:
    if len(transaction_id) != TRANSACTION_ID_LEN:
        raise LocalProtocolError("a STUN transaction id is 12 bytes")


def pack_address(ep: Endpoint) -> bytes:
    """MAPPED-ADDRESS value (section 14.1): zero, family (1 IPv4, 2 IPv6), port, address."""
    family = 1 if ep.ip.version == 4 else 2
    return bytes((0, family)) + ep.port.to_bytes(2, "big") + ep.ip.packed


def unpack_address(value: bytes) -> Endpoint:
    """Inverse of :func:`pack_address`; the first byte is ignored, as section 14.1 asks."""
    if len(value) < 4:
        raise DecodeError("address attribute too short")
    family, port, raw = value[1], int.from_bytes(value[2:4], "big"), value[4:]
    if family == 1:
        if len(raw) != 4:
            raise DecodeError("bad address length")
        return Endpoint(ipaddress.IPv4Address(raw), port)
    if family == 2:
        if len(raw) != 16:
            raise DecodeError("bad address length")
        return Endpoint.of(ipaddress.IPv6Address(raw), port)
    raise DecodeError("bad address family")


def _xor_mask(transaction_id: bytes) -> bytes:
    # Lined up with MAPPED-ADDRESS: reserved and family untouched, port ^ cookie's top 16 bits,
    # address ^ cookie (IPv4) or cookie || transaction id (IPv6).
    return b"\x00\x00" + COOKIE_BYTES[:2] + COOKIE_BYTES + transaction_id


def _xor(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask[:n], "big")).to_bytes(n, "big")


def pack_xor_address(ep: Endpoint, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (section 14.2)."""
    _check_tid(transaction_id)
    return _xor(pack_address(ep), _xor_mask(transaction_id))


def unpack_xor_address(value: bytes, transaction_id: bytes) -> Endpoint:
    """Inverse of :func:`pack_xor_address`."""
    _check_tid(transaction_id)
    if len(value) > 20:
        raise DecodeError("bad address length")
    return unpack_address(_xor(value, _xor_mask(transaction_id)))


def _pack_text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(text) >= 128 or len(raw) > MAX_TEXT:
        raise LocalProtocolError(f"{what} is limited to 127 characters")
    return raw


def _unpack_text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not UTF-8") from None
    if len(raw) > MAX_TEXT:
        raise DecodeError(f"{what} too long")
    return text


def pack_software(text: str) -> bytes:
    """SOFTWARE value (section 14.14): UTF-8, fewer than 128 characters."""
    return _pack_text(text, "SOFTWARE")


def unpack_software(value: bytes) -> str:
    """Inverse of :func:`pack_software`."""
    return _unpack_text(value, "SOFTWARE")


def pack_error(code: int, reason: str) -> bytes:
    """ERROR-CODE value (section 14.8): 21 zero bits, class (3-6), number (0-99), reason."""
    if not 300 <= code <= 699:
        raise LocalProtocolError("a STUN error code is 300-699")
    return bytes((0, 0, code // 100, code % 100)) + _pack_text(reason, "ERROR-CODE reason")


def unpack_error(value: bytes) -> tuple[int, str]:
    """Inverse of :func:`pack_error`: ``(code, reason)``."""
    if len(value) < 4:
        raise DecodeError("ERROR-CODE too short")
    cls, number = value[2] & 0x07, value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise DecodeError("bad ERROR-CODE")
    return cls * 100 + number, _unpack_text(value[4:], "ERROR-CODE reason")


def pack_public_key(key: bytes) -> bytes:
    """WG-PUBLIC-KEY value: the raw 32-byte key."""
    if len(key) != WG_KEY_LEN:
        raise LocalProtocolError("a WireGuard key is 32 bytes")
    return bytes(key)


def unpack_public_key(value: bytes) -> bytes:
    """Inverse of :func:`pack_public_key`."""
    if len(value) != WG_KEY_LEN:
        raise DecodeError("bad WG-PUBLIC-KEY length")
    return value


def pack_sealed(box: bytes) -> bytes:
    """WG-SEALED value: nonce || box, :data:`MIN_SEALED` to :data:`MAX_SEALED` bytes."""
    if not MIN_SEALED <= len(box) <= MAX_SEALED:
        raise LocalProtocolError("WG-SEALED length out of range")
    return bytes(box)


def unpack_sealed(value: bytes) -> bytes:
    """Inverse of :func:`pack_sealed`."""
    if not MIN_SEALED <= len(value) <= MAX_SEALED:
        raise DecodeError("bad WG-SEALED length")
    return value


CHANGE_IP = 0x04
"""CHANGE-REQUEST flag A: answer from the other address."""
CHANGE_PORT = 0x02
"""CHANGE-REQUEST flag B: answer from the other port."""


def pack_change_request(flags: int) -> bytes:
    """CHANGE-REQUEST value (RFC 5780 section 7.2): 32 bits, of which only A and B are set."""
    if flags & ~(CHANGE_IP | CHANGE_PORT):
        raise LocalProtocolError("CHANGE-REQUEST has only the change IP and change port flags")
    return _U32.pack(flags)


def unpack_change_request(value: bytes) -> int:
    """Inverse of :func:`pack_change_request`: the flags, other bits ignored (they are to be
    zero, and a server has nothing to do with them)."""
    if len(value) != 4:
        raise DecodeError("bad CHANGE-REQUEST length")
    flags: int = _U32.unpack(value)[0]
    return flags & (CHANGE_IP | CHANGE_PORT)


class AttributeCodec(NamedTuple):
    """One row of :data:`CODECS`."""

    name: str
    """The name RFC 8489 (or docs/protocol.md, for ours) gives it."""
    pack: Callable[..., bytes]
    """Typed value(s) -> attribute value; LocalProtocolError if they break a limit."""
    unpack: Callable[..., object]
    """Attribute value -> typed value; DecodeError (only) if malformed."""


CODECS: dict[int, AttributeCodec] = {
    ATTR_MAPPED_ADDRESS: AttributeCodec("MAPPED-ADDRESS", pack_address, unpack_address),
    ATTR_CHANGE_REQUEST: AttributeCodec(
        "CHANGE-REQUEST", pack_change_request, unpack_change_request
    ),
    ATTR_ERROR_CODE: AttributeCodec("ERROR-CODE", pack_error, unpack_error),
    ATTR_XOR_MAPPED_ADDRESS: AttributeCodec(
        "XOR-MAPPED-ADDRESS", pack_xor_address, unpack_xor_address
    ),
    ATTR_SOFTWARE: AttributeCodec("SOFTWARE", pack_software, unpack_software),
    ATTR_FINGERPRINT: AttributeCodec("FINGERPRINT", _fingerprint, bytes),  # encode/decode only
    ATTR_WG_PUBLIC_KEY: AttributeCodec("WG-PUBLIC-KEY", pack_public_key, unpack_public_key),
    ATTR_WG_SEALED: AttributeCodec("WG-SEALED", pack_sealed, unpack_sealed),
}
"""Attribute type -> (name, pack, unpack): every attribute this codec understands."""


def attribute_name(attr_type: int) -> str:
    """A readable name for log lines: the table's, else the type in hex."""
    codec = CODECS.get(attr_type)
    return codec.name if codec is not None else f"0x{attr_type:04X}"


# -- responses --------------------------------------------------------------------------------


def binding_success(
    request: StunMessage,
    observed: Endpoint,
    extra: Iterable[tuple[int, bytes]] = (),
    software: str = SOFTWARE,
) -> bytes:
    """The wire bytes of a Binding Success answering ``request`` (section 7.3.1).

    XOR-MAPPED-ADDRESS of ``observed``, then ``extra`` in order, SOFTWARE and FINGERPRINT;
    same transaction id as the request.
    """
    return success_for(request.transaction_id, observed, extra, software)


def success_for(
    transaction_id: bytes,
    observed: Endpoint,
    extra: Iterable[tuple[int, bytes]] = (),
    software: str = SOFTWARE,
) -> bytes:
    """:func:`binding_success` for a request's transaction id: the bytes
    ``encode(StunMessage(BINDING_SUCCESS, transaction_id, attributes))`` gives, packed
    directly (every sealed answer of the registrar is one; tests/test_watchpath.py checks the
    two agree). Raises LocalProtocolError where :func:`encode` would."""
    _check_tid(transaction_id)
    parts = [_xor_address_tlv(observed, transaction_id)]
    count = 3  # XOR-MAPPED-ADDRESS, SOFTWARE, FINGERPRINT
    for attr_type, value in extra:
        if attr_type == ATTR_FINGERPRINT:
            raise LocalProtocolError("FINGERPRINT is added by encode(), not passed in")
        if not 0 <= attr_type <= 0xFFFF or len(value) > 0xFFFF:
            raise LocalProtocolError("STUN attribute type or length out of range")
        parts += (_TYPE_LEN.pack(attr_type, len(value)), value, _PADDING[-len(value) % 4])
        count += 1
    if count > MAX_ATTRIBUTES:
        raise LocalProtocolError("too many STUN attributes")
    parts.append(_software_tlv(software))
    body = b"".join(parts)
    length = len(body) + 8
    if HEADER_LEN + length > MAX_DATAGRAM:
        raise LocalProtocolError("STUN message too large")
    out = b"".join((_TYPE_LEN.pack(BINDING_SUCCESS, length), COOKIE_BYTES, transaction_id, body))
    return out + _FINGERPRINT_TLV + _fingerprint(out)


_PADDING = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")
_XOR_V4 = struct.Struct("!HHBBHI")


def _xor_address_tlv(ep: Endpoint, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS attribute of ``ep``, type and length included."""
    ip = ep.ip
    if ip.version == 4:
        return _XOR_V4.pack(ATTR_XOR_MAPPED_ADDRESS, 8, 0, 1, ep.port ^ (MAGIC_COOKIE >> 16),
                            int(ip) ^ MAGIC_COOKIE)  # fmt: skip
    value = pack_xor_address(ep, transaction_id)
    return _TYPE_LEN.pack(ATTR_XOR_MAPPED_ADDRESS, len(value)) + value


@functools.lru_cache(maxsize=16)
def _software_tlv(software: str) -> bytes:
    """The SOFTWARE attribute, type, length and padding included (a registrar sends one)."""
    value = pack_software(software)
    return _TYPE_LEN.pack(ATTR_SOFTWARE, len(value)) + value + _PADDING[-len(value) % 4]


def classic_binding_success(data: bytes, observed: Endpoint) -> bytes | None:
    """The answer to an RFC 3489 Binding Request (no magic cookie: a 128-bit transaction id):
    MAPPED-ADDRESS, as RFC 8489 section 12 asks. None when ``data`` is not such a request or
    ``observed`` is IPv6 (RFC 3489 has no IPv6)."""
    if not HEADER_LEN <= len(data) <= MAX_DATAGRAM or observed.ip.version != 4:
        return None
    msg_type, length = _TYPE_LEN.unpack_from(data, 0)
    if msg_type != BINDING_REQUEST or HEADER_LEN + length != len(data):
        return None
    value = pack_address(observed)
    body = _TYPE_LEN.pack(ATTR_MAPPED_ADDRESS, len(value)) + value
    return _TYPE_LEN.pack(BINDING_SUCCESS, len(body)) + bytes(data[4:20]) + body


_PLAIN_REQUEST = _TYPE_LEN.pack(BINDING_REQUEST, 0) + COOKIE_BYTES
_PLAIN_REQUEST_FP = _TYPE_LEN.pack(BINDING_REQUEST, 8) + COOKIE_BYTES
_XOR_PORT = MAGIC_COOKIE >> 16
_XOR_TLV = (ATTR_XOR_MAPPED_ADDRESS << 16) | 8
_FINGERPRINT_HEAD = (ATTR_FINGERPRINT << 16) | 4
_U32 = struct.Struct("!I")


def _is_plain(data: bytes) -> bool:
    """A plain Binding Request: the 20-byte header alone, or followed by a correct FINGERPRINT."""
    size = len(data)
    if size == HEADER_LEN:
        return data[:8] == _PLAIN_REQUEST
    return (
        size == HEADER_LEN + 8
        and data[:8] == _PLAIN_REQUEST_FP
        and data[20:24] == _FINGERPRINT_TLV
        and _U32.unpack_from(data, 24)[0] == zlib.crc32(data[:20]) ^ FINGERPRINT_XOR
    )


class PlainBindingResponder:
    """The fast path of a STUN server: ``answer(data, host, port)`` returns the Binding Success
    for a plain Binding Request (a 20-byte header with no attributes, or followed only by a
    correct FINGERPRINT) from an IPv4 source, the same bytes as
    ``binding_success(decode(data), Endpoint.of(host, port), software=software)``; None for
    anything else (IPv6 sources included), which the caller hands to the general path.

    ``host`` and ``port`` are the socket address as the event loop gives it (a dotted-quad
    string, an int). The answer's bytes after the port (the XORed address, SOFTWARE) are kept
    per source address, at most ``max_sources`` of them (the table is emptied when full), so a
    repeat source costs no address parsing.

    :meth:`answer_in_place` is the same answer for a batched socket: it overwrites the request
    where it was received, given the source as two integers, so no bytes object is made for the
    request, the address or the answer.
    """

    __slots__ = ("_head", "_in_place_head", "_in_place_tail", "_pack", "_pack_fingerprint",
                 "_software", "_sources", "_success", "answer_size", "max_sources")  # fmt: skip

    def __init__(self, software: str = SOFTWARE, max_sources: int = 4096) -> None:
        text = pack_software(software)
        self._software = (
            _TYPE_LEN.pack(ATTR_SOFTWARE, len(text)) + text + b"\x00" * (-len(text) % 4)
        )
        # type, length | cookie, transaction id | XOR-MAPPED-ADDRESS type, length, family |
        # port | address, SOFTWARE; then FINGERPRINT over all of that
        layout = struct.Struct(f"!4s16s6sH{4 + len(self._software)}s")
        self._pack = layout.pack
        self._pack_fingerprint = struct.Struct(f"!{layout.size}s4sI").pack
        self._head = (
            _TYPE_LEN.pack(BINDING_SUCCESS, layout.size - HEADER_LEN + 8),
            _TYPE_LEN.pack(ATTR_XOR_MAPPED_ADDRESS, 8) + b"\x00\x01",
        )
        # answer_in_place(): type and length; after the transaction id, XOR-MAPPED-ADDRESS
        # (type and length, family, port, address), SOFTWARE, FINGERPRINT's type and length
        self.answer_size = layout.size + 8
        """The length of every answer: :meth:`answer_in_place` needs this much room."""
        self._success = (BINDING_SUCCESS << 16) | (self.answer_size - HEADER_LEN)
        self._in_place_head = _U32
        self._in_place_tail = struct.Struct(f"!IHHI{len(self._software)}sI")
        self._sources: dict[str, bytes] = {}
        self.max_sources = max_sources

    def answer(self, data: bytes, host: str, port: int) -> bytes | None:
        """The answer to ``data`` from ``host``:``port``, or None when the fast path does not
        apply (the general path then decides, and refuses what it must)."""
        if not _is_plain(data):
            return None
        tail = self._sources.get(host)
        if tail is None:
            tail = self._learn(host)
            if tail is None:
                return None
        success, xor_tlv = self._head
        msg = self._pack(success, data[4:20], xor_tlv, port ^ _XOR_PORT, tail)
        return self._pack_fingerprint(msg, _FINGERPRINT_TLV, zlib.crc32(msg) ^ FINGERPRINT_XOR)

    def answer_in_place(
        self, buf: memoryview, at: int, length: int, port: int, address: int
    ) -> int:
        """:meth:`answer` in place, for a batched socket: the request is
        ``buf[at : at + length]`` from the IPv4 ``address`` (an integer) and ``port``, and the
        answer overwrites it from ``buf[at]`` on (:attr:`answer_size` bytes, which must fit;
        the request's transaction id is already where the answer's goes). Returns the
        answer's length, or 0 when the fast path does not apply (``buf`` is untouched then)."""
        if length == HEADER_LEN:
            if buf[at : at + 8] != _PLAIN_REQUEST:
                return 0
        elif length != HEADER_LEN + 8 or not _is_plain(buf[at : at + length].tobytes()):
            return 0
        size = self.answer_size
        self._in_place_head.pack_into(buf, at, self._success)
        self._in_place_tail.pack_into(
            buf, at + HEADER_LEN, _XOR_TLV, 1, port ^ _XOR_PORT, address ^ MAGIC_COOKIE,
            self._software, _FINGERPRINT_HEAD,
        )  # fmt: skip
        end = at + size - 4
        self._in_place_head.pack_into(buf, end, zlib.crc32(buf[at : end - 4]) ^ FINGERPRINT_XOR)
        return size

    def _learn(self, host: str) -> bytes | None:
        if ":" in host:  # IPv6, or IPv4-mapped IPv6: the general path normalises those
            return None
        try:
            packed = ipaddress.IPv4Address(host).packed
        except ValueError:
            return None
        if len(self._sources) >= self.max_sources:
            self._sources.clear()
        tail = _xor(packed, COOKIE_BYTES) + self._software
        self._sources[host] = tail
        return tail
