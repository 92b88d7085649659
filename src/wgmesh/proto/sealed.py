"""Payloads inside ATTR_WG_SEALED, and the NaCl box that seals them (docs/protocol.md).

The box is ``crypto_box`` (X25519 + XSalsa20-Poly1305) between the sender's WireGuard private
key and the receiver's public key; the attribute value is the 24-byte nonce followed by the
ciphertext. Plaintext layout, network byte order::

    u8 version (1) | u8 kind | 12 bytes STUN transaction id | u64 timestamp_ms | u64 counter | body

    Register  u8 flags (bit 0: secondary) | u8 len + UTF-8 name (<= 63) |
              u8 len + ASCII software (<= 32) | u8 count (<= 8) + address * count
    Watch     u64 register_counter
    Status    u64 watch_counter | u64 register_counter | u8 has_observed [+ address] |
              u8 nat (0 unknown, 1 none, 2 cone, 3 symmetric) | u32 serial
    Push      u32 serial | u8 count (<= 32) + 32-byte key * count
    address = u8 family (4 or 6) | 4 or 16 bytes | u16 port

The transaction id inside the box binds it to its STUN message: a box cannot be replayed inside
another message. Nonces are passed in (the adapters draw them from os.urandom).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from wgmesh.errors import DecodeError
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint

VERSION = 1
MAX_PAYLOAD = 512
MAX_NAME = 63
MAX_SOFTWARE = 32
MAX_ADDRESSES = 8
MAX_CHANGED = 32
NONCE_LEN = 24
_HEADER = struct.Struct("!BB12sQQ")


class Kind(IntEnum):
    """What a sealed payload is."""

    REGISTER = 1
    WATCH = 2
    STATUS = 3
    PUSH = 4


class NatKind(StrEnum):
    """A peer's NAT as the registrar classified it."""

    UNKNOWN = "unknown"
    NONE = "none"
    CONE = "cone"
    SYMMETRIC = "symmetric"


_NAT_CODES = [NatKind.UNKNOWN, NatKind.NONE, NatKind.CONE, NatKind.SYMMETRIC]


@dataclass(frozen=True, slots=True)
class Register:
    """Peer -> registrar, from the WireGuard port: its source is the peer's endpoint."""

    timestamp_ms: int
    """Sender's wall clock, milliseconds since the epoch (freshness)."""
    counter: int
    """Strictly increasing per sender (replay protection)."""
    name: str
    """The peer's name (the admission file's name wins)."""
    addresses: tuple[Endpoint, ...]
    """The peer's own addresses with its WireGuard port (LAN and IPv6 candidates)."""
    software: str
    """e.g. ``wgmesh/0.1.0``."""
    secondary: bool = False
    """A NAT-classification probe to the alternate port, not an endpoint."""


@dataclass(frozen=True, slots=True)
class Watch:
    """Peer -> registrar from the control socket: 'tell me what you saw, and push me changes'."""

    timestamp_ms: int
    """Sender's wall clock, ms."""
    counter: int
    """Strictly increasing per sender."""
    register_counter: int
    """The Register this refers to."""


@dataclass(frozen=True, slots=True)
class Status:
    """Registrar -> peer, the answer to a Watch."""

    timestamp_ms: int
    """Registrar's wall clock, ms."""
    counter: int
    """Strictly increasing per registrar."""
    watch_counter: int
    """The Watch answered."""
    register_counter: int
    """The highest Register counter accepted for this peer (0: none yet)."""
    observed: Endpoint | None
    """The public mapping recorded for the peer's WireGuard port."""
    nat: NatKind
    """The peer's NAT class."""
    serial: int
    """The zone's SOA serial: when it changes, re-read the zone."""


@dataclass(frozen=True, slots=True)
class Push:
    """Registrar -> peer control address: these peers changed; re-resolve them now."""

    timestamp_ms: int
    """Registrar's wall clock, ms."""
    counter: int
    """Strictly increasing per registrar."""
    serial: int
    """Zone serial after the change."""
    changed: tuple[bytes, ...]
    """Public keys of the peers that were added, moved or withdrawn."""


Payload = Register | Watch | Status | Push


def _pack_address(ep: Endpoint) -> bytes:
    return struct.pack("!B", ep.ip.version) + ep.ip.packed + struct.pack("!H", ep.port)


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError("sealed payload truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack("!I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack("!Q", self.take(8))[0]
        return value

    def text(self, limit: int, what: str) -> str:
        n = self.u8()
        if n > limit:
            raise DecodeError(f"{what} longer than {limit} bytes")
        try:
            value = self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{what} is not UTF-8") from None
        if not value.isprintable():
            raise DecodeError(f"{what} has control characters")
        return value

    def address(self) -> Endpoint:
        family = self.u8()
        if family == 4:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(self.take(4))
        elif family == 6:
            ip = ipaddress.IPv6Address(self.take(16))
        else:
            raise DecodeError("bad address family")
        return Endpoint.of(ip, struct.unpack("!H", self.take(2))[0])


def encode_payload(p: Payload, transaction_id: bytes) -> bytes:
    """Serialize a payload bound to a STUN transaction id; ValueError if it breaks a limit."""
    kind = {Register: Kind.REGISTER, Watch: Kind.WATCH, Status: Kind.STATUS, Push: Kind.PUSH}[
        type(p)
    ]
    out = bytearray(_HEADER.pack(VERSION, kind, transaction_id, p.timestamp_ms, p.counter))
    if isinstance(p, Register):
        name, software = p.name.encode(), p.software.encode()
        if len(name) > MAX_NAME or len(software) > MAX_SOFTWARE:
            raise ValueError("name or software too long")
        if len(p.addresses) > MAX_ADDRESSES:
            raise ValueError(f"at most {MAX_ADDRESSES} addresses")
        out += struct.pack("!BB", int(p.secondary), len(name)) + name
        out += struct.pack("!B", len(software)) + software
        out += struct.pack("!B", len(p.addresses))
        for ep in p.addresses:
            out += _pack_address(ep)
    elif isinstance(p, Watch):
        out += struct.pack("!Q", p.register_counter)
    elif isinstance(p, Status):
        out += struct.pack("!QQ", p.watch_counter, p.register_counter)
        if p.observed is None:
            out += b"\x00"
        else:
            out += b"\x01" + _pack_address(p.observed)
        out += struct.pack("!BI", _NAT_CODES.index(p.nat), p.serial)
    else:
        if len(p.changed) > MAX_CHANGED or any(len(k) != 32 for k in p.changed):
            raise ValueError(f"at most {MAX_CHANGED} 32-byte keys")
        out += struct.pack("!IB", p.serial, len(p.changed)) + b"".join(p.changed)
    if len(out) > MAX_PAYLOAD:
        raise ValueError("sealed payload too large")
    return bytes(out)


def decode_payload(data: bytes, transaction_id: bytes) -> Payload:
    """Parse a plaintext payload; raises DecodeError (and only that) when malformed."""
    if len(data) > MAX_PAYLOAD:
        raise DecodeError("sealed payload too large")
    if len(data) < _HEADER.size:
        raise DecodeError("sealed payload truncated")
    version, kind, tid, ts, counter = _HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError(f"unknown sealed payload version {version}")
    if tid != transaction_id:
        raise DecodeError("sealed payload bound to another transaction")
    r = _Reader(data, _HEADER.size)
    p: Payload
    if kind == Kind.REGISTER:
        flags = r.u8()
        name = r.text(MAX_NAME, "name")
        software = r.text(MAX_SOFTWARE, "software")
        count = r.u8()
        if count > MAX_ADDRESSES:
            raise DecodeError(f"more than {MAX_ADDRESSES} addresses")
        addresses = tuple(r.address() for _ in range(count))
        p = Register(ts, counter, name, addresses, software, bool(flags & 1))
    elif kind == Kind.WATCH:
        p = Watch(ts, counter, r.u64())
    elif kind == Kind.STATUS:
        watch_counter, register_counter = r.u64(), r.u64()
        has = r.u8()
        if has > 1:
            raise DecodeError("bad observed flag")
        observed = r.address() if has else None
        nat = r.u8()
        if nat >= len(_NAT_CODES):
            raise DecodeError("unknown NAT class")
        p = Status(ts, counter, watch_counter, register_counter, observed, _NAT_CODES[nat], r.u32())
    elif kind == Kind.PUSH:
        serial, count = r.u32(), r.u8()
        if count > MAX_CHANGED:
            raise DecodeError(f"more than {MAX_CHANGED} changed keys")
        p = Push(ts, counter, serial, tuple(r.take(32) for _ in range(count)))
    else:
        raise DecodeError(f"unknown sealed payload kind {kind}")
    if r.pos != len(data):
        raise DecodeError("trailing bytes after sealed payload")
    return p


class Sealer:
    """Seals and opens boxes between our private key and remote public keys.

    One ``Box`` (the X25519 shared key) is cached per remote key in a capped LRU: opening a box
    costs about 44 us with X25519 each time and a few us with the shared key cached.
    """

    def __init__(self, private_key: bytes, cache_size: int = 65536) -> None:
        self._private = PrivateKey(private_key)
        self.public_key = bytes(self._private.public_key)
        self._boxes: OrderedDict[bytes, Box] = OrderedDict()
        self._cache_size = cache_size

    def _box(self, remote_key: bytes) -> Box:
        box = self._boxes.get(remote_key)
        if box is None:
            box = Box(self._private, PublicKey(remote_key))
            self._boxes[remote_key] = box
            if len(self._boxes) > self._cache_size:
                self._boxes.popitem(last=False)
        else:
            self._boxes.move_to_end(remote_key)
        return box

    def seal(self, remote_key: bytes, plaintext: bytes, nonce: bytes) -> bytes:
        """nonce || ciphertext."""
        return bytes(self._box(remote_key).encrypt(plaintext, nonce))

    def open(self, remote_key: bytes, sealed: bytes) -> bytes:
        """The plaintext, or DecodeError("sealed box does not open")."""
        if len(remote_key) != 32 or len(sealed) < NONCE_LEN + 16 or len(sealed) > stun.MAX_SEALED:
            raise DecodeError("sealed box does not open")
        try:
            return bytes(self._box(remote_key).decrypt(sealed[NONCE_LEN:], sealed[:NONCE_LEN]))
        except (CryptoError, ValueError, TypeError):
            raise DecodeError("sealed box does not open") from None


def build_sealed_request(
    sealer: Sealer,
    own_public_key: bytes | None,
    remote_key: bytes,
    payload: Payload,
    transaction_id: bytes,
    nonce: bytes,
    msg_type: int = stun.BINDING_REQUEST,
) -> bytes:
    """A whole STUN message carrying ``payload`` sealed to ``remote_key``; ATTR_WG_PUBLIC_KEY
    names the sender unless ``own_public_key`` is None (the receiver knows who it is)."""
    box = sealer.seal(remote_key, encode_payload(payload, transaction_id), nonce)
    attrs: list[tuple[int, bytes]] = []
    if own_public_key is not None:
        attrs.append((stun.ATTR_WG_PUBLIC_KEY, own_public_key))
    attrs.append((stun.ATTR_WG_SEALED, box))
    return stun.encode(stun.StunMessage(msg_type, transaction_id, tuple(attrs)))


def open_sealed(
    sealer: Sealer, msg: stun.StunMessage, expected_sender: bytes | None
) -> tuple[bytes, Payload]:
    """Open a message's sealed payload: returns (sender key, payload); DecodeError otherwise.

    The sender is ATTR_WG_PUBLIC_KEY, or ``expected_sender`` when that attribute is absent.
    """
    sender = msg.get(stun.ATTR_WG_PUBLIC_KEY) or expected_sender
    box = msg.get(stun.ATTR_WG_SEALED)
    if sender is None or box is None:
        raise DecodeError("no sealed payload")
    if expected_sender is not None and sender != expected_sender:
        raise DecodeError("sealed by an unexpected key")
    plaintext = sealer.open(sender, box)
    return sender, decode_payload(plaintext, msg.transaction_id)
