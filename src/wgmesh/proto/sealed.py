"""Payloads inside ATTR_WG_SEALED, and the NaCl box that seals them (docs/protocol.md).

The box is ``crypto_box`` (X25519, XSalsa20-Poly1305) between the sender's WireGuard private
key and the receiver's public key; the attribute value is the 24-byte nonce followed by the
ciphertext (16-byte MAC, then the payload). Plaintext layout, network byte order, at most
:data:`MAX_PAYLOAD` bytes::

    header    u8 version (1) | u8 kind | 12-byte STUN transaction id | u64 timestamp_ms |
              u64 counter                                                      (30 bytes)
    Register  u8 flags (bit 0: secondary; others zero) | u8 n + n bytes UTF-8 name (n <= 63,
              printable) | u8 n + n bytes ASCII software (n <= 32, printable) |
              u8 count (<= 8) + count * address
    Watch     u64 register_counter | 16-byte cookie (zeros: none yet) |
              optional: u8 count (<= 56) + count * 8-byte key id (the peers whose changes
              this watcher wants pushed: the first 8 bytes of their keys; absent: every peer)
    Status    u64 watch_counter | u64 register_counter | u8 count (<= 2) + count * address
              (the observed mappings: at most one per family, IPv4 first) |
              u8 nat (0 unknown, 1 none, 2 cone, 3 symmetric) | u32 serial |
              u8 flags (bit 0: the Watch's cookie was valid: its source is a push target) |
              16-byte cookie for the Watch's source address
    Push      u32 serial | u8 count (<= 14) + count * 32-byte key
    RosterQuery  u32 offset
    Roster    u64 query_counter | u32 version | u32 total | u32 offset |
              u8 count + count * (32-byte key | u8 n (<= 16) + n * network)
    RelayRequest  32-byte key of the other peer | u8 op (1 allocate, 2 release)
    RelayGrant    32-byte key of the other peer | u8 state (0 refused, 1 allocated: bind now,
                  2 ready: both bound, 3 released) | u8 reason (refusals; 0 otherwise) |
                  u8 flags (bit 0: your bind was seen) | address (the relay address and port
                  this peer sends to; family 0 and no address bytes when refused or released)
    RelayBind     32-byte key of the other peer (sent from the WireGuard port to the relay port)
    Repunch   u8 count (1..14) + count * 32-byte key: peer -> registrar "my path to these
              stalled: ask them to send toward me"; registrar -> peer "send toward these now"
    PathReport  u8 count (1..12) + count * (32-byte key | u8 path (1 direct, 2 relay, 3 none) |
              u8 reason (PathReason) | u32 seconds since the latest handshake (2^32-1: never))
    network   u8 family (4|6) | u8 prefix length | 4|16 address bytes
    address   u8 family (4|6) | 4|16 address bytes | u16 port   (no IPv4-mapped IPv6)

Decoding is strict and canonical: whatever :func:`decode_payload` accepts, :func:`encode_payload`
gives back byte for byte. The transaction id inside the box binds it to its STUN message, so a
box cannot be replayed inside another message. Freshness (timestamp, counter) is the caller's
job. Nonces are passed in (sans-IO; the adapters draw them from ``os.urandom``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum

from nacl.bindings import (
    crypto_box_beforenm,
    crypto_box_easy_afternm,
    crypto_box_open_easy_afternm,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey

from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind

VERSION = 1
MAX_PAYLOAD = 512
"""Plaintext bytes; sealed with nonce and MAC that is 552, under ``stun.MAX_SEALED``."""
MAX_NAME = 63
MAX_SOFTWARE = 32
MAX_ADDRESSES = 8
MAX_OBSERVED = 2
"""Observed mappings in a Status: one per address family."""
KEY_LEN = 32
NONCE_LEN = 24
COOKIE_LEN = 16
_PROVEN = 0x01
_HEADER = struct.Struct("!BB12sQQ")
HEADER_LEN = _HEADER.size
MAX_CHANGED = (MAX_PAYLOAD - HEADER_LEN - 5) // KEY_LEN
"""14: as many keys as fit in MAX_PAYLOAD after the header, serial and count."""
KEY_ID_LEN = 8
"""Bytes of a key that name it in a Watch's interest (a collision only costs a spare Push)."""
MAX_INTEREST = (MAX_PAYLOAD - HEADER_LEN - 8 - COOKIE_LEN - 1) // KEY_ID_LEN
"""57: the key ids one Watch can name; a daemon with more peers asks for every peer."""
MAX_MEMBER_NETWORKS = 16
"""Allowed-IP networks one Roster entry carries (a member with more is left out and logged by
the registrar: see wgmesh.proto.roster)."""
ROSTER_HEAD = HEADER_LEN + 8 + 4 + 4 + 4 + 1
"""Bytes of a Roster before its members."""
_SECONDARY = 0x01
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_PORT = struct.Struct("!H")


class Kind(IntEnum):
    """What a sealed payload is (its second byte)."""

    REGISTER = 1
    WATCH = 2
    STATUS = 3
    PUSH = 4
    ROSTER_QUERY = 5
    ROSTER = 6
    RELAY_REQUEST = 7
    RELAY_GRANT = 8
    RELAY_BIND = 9
    REPUNCH = 10
    PATH_REPORT = 11


class RelayOp(IntEnum):
    """What a RelayRequest asks."""

    ALLOCATE = 1
    RELEASE = 2


class RelayState(IntEnum):
    """Where an allocation stands, as a RelayGrant tells it."""

    REFUSED = 0
    ALLOCATED = 1
    """Ports reserved: send RelayBinds from the WireGuard port to the relay address."""
    READY = 2
    """Both sides are bound: WireGuard traffic to the relay address reaches the peer."""
    RELEASED = 3
    """Gone (released by either side, expired, or a peer withdrawn)."""


class RelayRefusal(IntEnum):
    """Why a RelayGrant says REFUSED."""

    NONE = 0
    OFF = 1
    """This registrar does not relay."""
    UNKNOWN_PEER = 2
    """The other peer is not admitted, not registered, or not watching (cannot be told)."""
    PEER_LIMIT = 3
    """The asking peer (or the other) holds as many allocations as allowed."""
    EXHAUSTED = 4
    """No relay ports left."""
    SELF = 5
    """A relay to oneself."""


class PathKind(IntEnum):
    """A path as a PathReport tells it (``wgmesh peers``' words)."""

    DIRECT = 1
    RELAY = 2
    NONE = 3


class PathReason(IntEnum):
    """Why a reported path is not direct (or what is wrong with a direct one), as a code: the
    registrar shows the words of :data:`PATH_REASONS`, never text a peer sent."""

    NONE = 0
    NOT_REGISTERED = 1
    SHARED_NAT = 2
    BOTH_SYMMETRIC = 3
    PEER_SYMMETRIC = 4
    OURS_SYMMETRIC = 5
    DIRECT_FAILED = 6
    TRYING = 7
    STALE = 8
    NO_HANDSHAKE = 9
    OTHER = 15


PATH_REASONS: dict[PathReason, str] = {
    PathReason.NONE: "",
    PathReason.NOT_REGISTERED: "the peer is not registered",
    PathReason.SHARED_NAT: "both peers share one NAT and one WireGuard port",
    PathReason.BOTH_SYMMETRIC: "both peers are behind symmetric NATs",
    PathReason.PEER_SYMMETRIC: "the peer is behind a symmetric NAT, the reporter a filtering one",
    PathReason.OURS_SYMMETRIC: "the reporter is behind a symmetric NAT, the peer a filtering one",
    PathReason.DIRECT_FAILED: "every direct candidate failed",
    PathReason.TRYING: "trying candidates",
    PathReason.STALE: "the last handshake is stale",
    PathReason.NO_HANDSHAKE: "no handshake yet",
    PathReason.OTHER: "another reason (wgmesh peers on the reporter says)",
}
"""What each reason code means, in the registrar's words."""
MAX_PATHS = (MAX_PAYLOAD - HEADER_LEN - 1) // (KEY_LEN + 6)
"""12: the peers one PathReport can name."""
NEVER = 0xFFFFFFFF
"""A PathReport's handshake age when there was none."""

_RELAY_OPS = frozenset(int(o) for o in RelayOp)
_RELAY_STATES = frozenset(int(s) for s in RelayState)
_RELAY_REFUSALS = frozenset(int(r) for r in RelayRefusal)
_PATH_KINDS = frozenset(int(k) for k in PathKind)
_PATH_REASONS = frozenset(int(r) for r in PathReason)
_NAT_CODES = (NatKind.UNKNOWN, NatKind.NONE, NatKind.CONE, NatKind.SYMMETRIC)
_NAT_INDEX = {nat: code for code, nat in enumerate(_NAT_CODES)}


@dataclass(frozen=True, slots=True)
class Register:
    """Peer -> registrar, from the WireGuard port: its source is the peer's endpoint."""

    timestamp_ms: int
    """Sender's wall clock, milliseconds since the epoch (freshness)."""
    counter: int
    """Strictly increasing per sender (replay protection)."""
    name: str
    """The peer's name, may be empty (the admission file's name wins)."""
    addresses: tuple[Endpoint, ...]
    """The peer's own addresses with its WireGuard port (LAN and IPv6 candidates), <= 8."""
    software: str
    """e.g. ``wgmesh/0.1.0`` (printable ASCII)."""
    secondary: bool = False
    """A NAT-classification probe to the alternate port, not an endpoint."""


@dataclass(frozen=True, slots=True)
class Watch:
    """Peer -> registrar from the control socket: 'tell me what you saw, and push me changes'."""

    timestamp_ms: int
    """Sender's wall clock, milliseconds since the epoch."""
    counter: int
    """Strictly increasing per sender."""
    register_counter: int
    """The Register this refers to."""
    cookie: bytes = bytes(COOKIE_LEN)
    """The cookie of the registrar's last Status to this source address (return routability:
    only a Watch that echoes it makes its source a push target); zeros when there is none."""
    interest: tuple[bytes, ...] | None = None
    """Key ids (:func:`key_id`) of the peers whose changes to push here; None: every peer."""


@dataclass(frozen=True, slots=True)
class Status:
    """Registrar -> peer, the answer to a Watch."""

    timestamp_ms: int
    """Registrar's wall clock, milliseconds since the epoch."""
    counter: int
    """Strictly increasing per registrar."""
    watch_counter: int
    """The Watch answered."""
    register_counter: int
    """The highest Register counter accepted for this peer (0: none yet)."""
    observed: tuple[Endpoint, ...]
    """The public mappings recorded for the peer's WireGuard port: at most one per address
    family, IPv4 first (empty: none yet)."""
    nat: NatKind
    """The peer's NAT class."""
    serial: int
    """The zone's SOA serial (u32): when it changes, re-read the zone."""
    proven: bool = False
    """The Watch echoed a valid cookie: its source receives pushes (and rosters)."""
    cookie: bytes = bytes(COOKIE_LEN)
    """The cookie the next Watch from this source address must echo."""


@dataclass(frozen=True, slots=True)
class Push:
    """Registrar -> peer control address: these peers changed; re-resolve them now."""

    timestamp_ms: int
    """Registrar's wall clock, milliseconds since the epoch."""
    counter: int
    """Strictly increasing per registrar."""
    serial: int
    """Zone serial (u32) after the change."""
    changed: tuple[bytes, ...]
    """Public keys (32 bytes each, at most MAX_CHANGED) of the peers added, moved or withdrawn."""


@dataclass(frozen=True, slots=True)
class RosterQuery:
    """Peer -> registrar from the control socket (mesh mode): 'send me the mesh's members from
    entry ``offset`` on'."""

    timestamp_ms: int
    """Sender's wall clock, milliseconds since the epoch."""
    counter: int
    """Strictly increasing per sender."""
    offset: int
    """First entry wanted (u32), in the registrar's order."""


@dataclass(frozen=True, slots=True)
class Member:
    """One admitted peer of the mesh, as the registrar vouches for it."""

    key: bytes
    """Its WireGuard public key (32 bytes)."""
    allowed_ips: tuple[str, ...]
    """The networks routed to it, from the registrar's admission file (CIDR text)."""


@dataclass(frozen=True, slots=True)
class Roster:
    """Registrar -> peer, the answer to a RosterQuery: one page of the mesh's members."""

    timestamp_ms: int
    """Registrar's wall clock, milliseconds since the epoch."""
    counter: int
    """Strictly increasing per registrar."""
    query_counter: int
    """The RosterQuery answered."""
    version: int
    """Names the whole member list (u32; a page of another version does not continue this one)."""
    total: int
    """Members in the whole list (u32)."""
    offset: int
    """Index of this page's first member (u32)."""
    members: tuple[Member, ...]
    """This page's members, in the registrar's order."""


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """Peer -> registrar from the control socket: 'relay me to ``peer``' (or release it)."""

    timestamp_ms: int
    counter: int
    peer: bytes
    """The other peer's public key."""
    op: RelayOp = RelayOp.ALLOCATE


@dataclass(frozen=True, slots=True)
class RelayGrant:
    """Registrar -> peer control address: the state of the allocation toward ``peer`` (the
    answer to a RelayRequest, and pushed on every change)."""

    timestamp_ms: int
    counter: int
    peer: bytes
    """The other peer's public key."""
    state: RelayState
    relay: Endpoint | None
    """Where this peer sends WireGuard traffic for ``peer`` (None: refused or released)."""
    bound: bool = False
    """This peer's RelayBind was seen (its mapping toward the relay port is known)."""
    reason: RelayRefusal = RelayRefusal.NONE


@dataclass(frozen=True, slots=True)
class RelayBind:
    """Peer -> relay port, from the WireGuard port: its source is this peer's mapping toward
    that port, which the relay forwards ``peer``'s traffic to."""

    timestamp_ms: int
    counter: int
    peer: bytes
    """The other peer's public key."""


@dataclass(frozen=True, slots=True)
class Repunch:
    """Peer -> registrar (control socket): my path to ``peers`` stalled, have them send toward
    me (their NAT may have lost its state for our flow). Registrar -> peer (indication): send
    toward ``peers`` now."""

    timestamp_ms: int
    counter: int
    peers: tuple[bytes, ...]
    """Public keys, 1..MAX_CHANGED."""


@dataclass(frozen=True, slots=True)
class PeerPath:
    """One entry of a PathReport: the reporter's path to ``peer``."""

    peer: bytes
    """The peer's public key."""
    path: PathKind
    """Direct, relay or none."""
    reason: PathReason = PathReason.NONE
    """Why not direct (NONE when it is)."""
    handshake_age: int = NEVER
    """Whole seconds since the latest handshake (u32; :data:`NEVER`: none)."""


@dataclass(frozen=True, slots=True)
class PathReport:
    """Peer -> registrar (control socket): my paths to these peers, as ``wgmesh peers`` sees
    them (sent at a low rate and on change; the registrar keeps the latest per pair)."""

    timestamp_ms: int
    counter: int
    paths: tuple[PeerPath, ...]
    """1..MAX_PATHS entries."""


Payload = (
    Register
    | Watch
    | Status
    | Push
    | RosterQuery
    | Roster
    | RelayRequest
    | RelayGrant
    | RelayBind
    | Repunch
    | PathReport
)

_KINDS: dict[type[Payload], Kind] = {
    Register: Kind.REGISTER,
    Watch: Kind.WATCH,
    Status: Kind.STATUS,
    Push: Kind.PUSH,
    RosterQuery: Kind.ROSTER_QUERY,
    Roster: Kind.ROSTER,
    RelayRequest: Kind.RELAY_REQUEST,
    RelayGrant: Kind.RELAY_GRANT,
    RelayBind: Kind.RELAY_BIND,
    Repunch: Kind.REPUNCH,
    PathReport: Kind.PATH_REPORT,
}


# -- encoding ---------------------------------------------------------------------------------


def _pack_address(ep: Endpoint) -> bytes:
    ip = ep.ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # canonical: an IPv4-mapped address travels as IPv4
    return bytes((ip.version,)) + ip.packed + _PORT.pack(ep.port)


def _family(ep: Endpoint) -> int:
    """The family an endpoint travels as (an IPv4-mapped address is IPv4)."""
    ip = ep.ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return 6
    return 4


def _pack_text(text: str, limit: int, what: str, *, ascii_only: bool) -> bytes:
    if not text.isprintable() or (ascii_only and not text.isascii()):
        raise LocalProtocolError(f"{what} must be printable{' ASCII' if ascii_only else ''}")
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise LocalProtocolError(f"{what} longer than {limit} bytes")
    return bytes((len(raw),)) + raw


def _cookie(cookie: bytes) -> bytes:
    if len(cookie) != COOKIE_LEN:
        raise LocalProtocolError("a cookie is 16 bytes")
    return cookie


def _nat_code(nat: NatKind) -> int:
    code = _NAT_INDEX.get(nat)
    if code is None:
        raise LocalProtocolError(f"unknown NAT class {nat!r}")
    return code


def _body(p: Payload) -> bytes:
    if isinstance(p, Register):
        if len(p.addresses) > MAX_ADDRESSES:
            raise LocalProtocolError(f"more than {MAX_ADDRESSES} addresses")
        return b"".join(
            (
                bytes((_SECONDARY if p.secondary else 0,)),
                _pack_text(p.name, MAX_NAME, "name", ascii_only=False),
                _pack_text(p.software, MAX_SOFTWARE, "software", ascii_only=True),
                bytes((len(p.addresses),)),
                *(_pack_address(ep) for ep in p.addresses),
            )
        )
    if isinstance(p, Watch):
        if len(p.cookie) != COOKIE_LEN:
            raise LocalProtocolError("a cookie is 16 bytes")
        head = _U64.pack(p.register_counter) + p.cookie
        if p.interest is None:
            return head
        if len(p.interest) > MAX_INTEREST or any(len(i) != KEY_ID_LEN for i in p.interest):
            raise LocalProtocolError(f"an interest is at most {MAX_INTEREST} 8-byte key ids")
        return head + bytes((len(p.interest),)) + b"".join(p.interest)
    if isinstance(p, Status):
        families = [_family(ep) for ep in p.observed]
        if families not in ([], [4], [6], [4, 6]):
            raise LocalProtocolError("observed: at most one mapping per family, IPv4 first")
        return b"".join(
            (
                struct.pack("!QQB", p.watch_counter, p.register_counter, len(p.observed)),
                *(_pack_address(ep) for ep in p.observed),
                bytes((_nat_code(p.nat),)),
                _U32.pack(p.serial),
                bytes((_PROVEN if p.proven else 0,)),
                _cookie(p.cookie),
            )
        )
    if isinstance(p, RosterQuery):
        return _U32.pack(p.offset)
    if isinstance(p, Roster):
        return b"".join(
            (
                struct.pack(
                    "!QIIIB", p.query_counter, p.version, p.total, p.offset, len(p.members)
                ),
                *(pack_member(m) for m in p.members),
            )
        )
    if isinstance(p, Repunch):
        if not 1 <= len(p.peers) <= MAX_CHANGED or any(len(k) != KEY_LEN for k in p.peers):
            raise LocalProtocolError(f"a Repunch names 1 to {MAX_CHANGED} 32-byte keys")
        return bytes((len(p.peers),)) + b"".join(p.peers)
    if isinstance(p, PathReport):
        if not 1 <= len(p.paths) <= MAX_PATHS or any(len(e.peer) != KEY_LEN for e in p.paths):
            raise LocalProtocolError(f"a PathReport names 1 to {MAX_PATHS} 32-byte keys")
        return bytes((len(p.paths),)) + b"".join(
            e.peer + struct.pack("!BBI", PathKind(e.path), PathReason(e.reason), e.handshake_age)
            for e in p.paths
        )
    if isinstance(p, RelayRequest | RelayGrant | RelayBind):
        if len(p.peer) != KEY_LEN:
            raise LocalProtocolError("a peer key is 32 bytes")
        if isinstance(p, RelayRequest):
            return p.peer + bytes((RelayOp(p.op),))
        if isinstance(p, RelayBind):
            return p.peer
        if (p.relay is None) != (p.state in (RelayState.REFUSED, RelayState.RELEASED)):
            raise LocalProtocolError("a relay address exactly when allocated or ready")
        if (p.reason is RelayRefusal.NONE) != (p.state is not RelayState.REFUSED):
            raise LocalProtocolError("a refusal reason exactly when refused")
        relay = b"\x00" if p.relay is None else _pack_address(p.relay)
        return p.peer + bytes((p.state, p.reason, 1 if p.bound else 0)) + relay
    if len(p.changed) > MAX_CHANGED or any(len(k) != KEY_LEN for k in p.changed):
        raise LocalProtocolError(f"a Push carries at most {MAX_CHANGED} 32-byte keys")
    return _U32.pack(p.serial) + bytes((len(p.changed),)) + b"".join(p.changed)


def key_id(key: bytes) -> bytes:
    """The id that names ``key`` in a Watch's interest."""
    return key[:KEY_ID_LEN]


def pack_member(m: Member) -> bytes:
    """One Roster entry; LocalProtocolError for a bad key, too many or malformed networks."""
    if len(m.key) != KEY_LEN or len(m.allowed_ips) > MAX_MEMBER_NETWORKS:
        raise LocalProtocolError(
            f"a Roster member is a 32-byte key and at most {MAX_MEMBER_NETWORKS} networks"
        )
    out = [m.key, bytes((len(m.allowed_ips),))]
    for text in m.allowed_ips:
        try:
            net = ipaddress.ip_interface(text)
        except ValueError:
            raise LocalProtocolError(f"not an IP network: {text!r}") from None
        if str(net) != text:
            raise LocalProtocolError(f"network not in canonical form: {text!r}")
        out.append(bytes((net.version, net.network.prefixlen)) + net.ip.packed)
    return b"".join(out)


def encode_payload(p: Payload, transaction_id: bytes) -> bytes:
    """Serialize a payload bound to a STUN transaction id.

    Raises LocalProtocolError if it breaks a limit (a field out of range, a name too long...).
    """
    if len(transaction_id) != stun.TRANSACTION_ID_LEN:
        raise LocalProtocolError("a STUN transaction id is 12 bytes")
    try:
        out = _HEADER.pack(VERSION, _KINDS[type(p)], transaction_id, p.timestamp_ms, p.counter)
        out += _body(p)
    except struct.error:
        raise LocalProtocolError("sealed payload field out of range") from None
    if len(out) > MAX_PAYLOAD:
        raise LocalProtocolError("sealed payload too large")
    return out


# -- decoding ---------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads; every short read is the same DecodeError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("sealed payload truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise DecodeError("sealed payload truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def text(self, limit: int, what: str, *, ascii_only: bool) -> str:
        n = self.u8()
        if n > limit:
            raise DecodeError(f"{what} longer than {limit} bytes")
        raw = self.take(n)
        if ascii_only and not raw.isascii():
            raise DecodeError(f"{what} is not ASCII")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{what} is not UTF-8") from None
        if not value.isprintable():
            raise DecodeError(f"{what} is not printable")
        return value

    def network(self) -> str:
        family, prefix = self.u8(), self.u8()
        iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
        if family == 4 and prefix <= 32:
            iface = ipaddress.IPv4Interface((self.take(4), prefix))
        elif family == 6 and prefix <= 128:
            iface = ipaddress.IPv6Interface((self.take(16), prefix))
        else:
            raise DecodeError("bad network in a Roster")
        return str(iface)

    def address(self) -> Endpoint:
        family = self.u8()
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address
        if family == 4:
            ip = ipaddress.IPv4Address(self.take(4))
        elif family == 6:
            ip = ipaddress.IPv6Address(self.take(16))
            if ip.ipv4_mapped is not None:
                raise DecodeError("IPv4-mapped address sent as IPv6")
        else:
            raise DecodeError("bad address family")
        return Endpoint(ip, _PORT.unpack(self.take(2))[0])


def decode_payload(data: bytes, transaction_id: bytes) -> Payload:
    """Parse a plaintext payload; raises DecodeError (and only that) when malformed or bound
    to a transaction id other than ``transaction_id``."""
    if len(data) > MAX_PAYLOAD:
        raise DecodeError("sealed payload too large")
    if len(data) < HEADER_LEN:
        raise DecodeError("sealed payload truncated")
    version, kind, tid, ts, counter = _HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError(f"unknown sealed payload version {version}")
    if tid != transaction_id:
        raise DecodeError("sealed payload bound to another transaction")
    r = _Reader(data, HEADER_LEN)
    p: Payload
    if kind == Kind.REGISTER:
        flags = r.u8()
        if flags & ~_SECONDARY:
            raise DecodeError("unknown Register flags")
        name = r.text(MAX_NAME, "name", ascii_only=False)
        software = r.text(MAX_SOFTWARE, "software", ascii_only=True)
        count = r.u8()
        if count > MAX_ADDRESSES:
            raise DecodeError(f"more than {MAX_ADDRESSES} addresses")
        addresses = tuple(r.address() for _ in range(count))
        p = Register(ts, counter, name, addresses, software, bool(flags))
    elif kind == Kind.WATCH:
        register_counter, cookie = r.u64(), r.take(COOKIE_LEN)
        interest = None
        if r.pos < len(data):
            count = r.u8()
            if count > MAX_INTEREST:
                raise DecodeError(f"more than {MAX_INTEREST} key ids of interest")
            interest = tuple(r.take(KEY_ID_LEN) for _ in range(count))
        p = Watch(ts, counter, register_counter, cookie, interest)
    elif kind == Kind.STATUS:
        watch_counter, register_counter = r.u64(), r.u64()
        count = r.u8()
        if count > MAX_OBSERVED:
            raise DecodeError(f"more than {MAX_OBSERVED} observed mappings")
        observed = tuple(r.address() for _ in range(count))
        if count == 2 and observed[0].family == observed[1].family:
            raise DecodeError("two observed mappings of one family")
        if count == 2 and observed[0].family == 6:
            raise DecodeError("observed IPv6 mapping before IPv4")
        nat = r.u8()
        if nat >= len(_NAT_CODES):
            raise DecodeError("unknown NAT class")
        serial, flags = r.u32(), r.u8()
        if flags & ~_PROVEN:
            raise DecodeError("unknown Status flags")
        p = Status(ts, counter, watch_counter, register_counter, observed, _NAT_CODES[nat],
                   serial, bool(flags), r.take(COOKIE_LEN))  # fmt: skip
    elif kind == Kind.PUSH:
        serial, count = r.u32(), r.u8()
        if count > MAX_CHANGED:
            raise DecodeError(f"more than {MAX_CHANGED} changed keys")
        p = Push(ts, counter, serial, tuple(r.take(KEY_LEN) for _ in range(count)))
    elif kind == Kind.ROSTER_QUERY:
        p = RosterQuery(ts, counter, r.u32())
    elif kind == Kind.ROSTER:
        query_counter, version, total, offset = r.u64(), r.u32(), r.u32(), r.u32()
        members = []
        for _ in range(r.u8()):
            key, n = r.take(KEY_LEN), r.u8()
            if n > MAX_MEMBER_NETWORKS:
                raise DecodeError(f"more than {MAX_MEMBER_NETWORKS} networks for a member")
            members.append(Member(key, tuple(r.network() for _ in range(n))))
        p = Roster(ts, counter, query_counter, version, total, offset, tuple(members))
    elif kind == Kind.RELAY_REQUEST:
        peer, op = r.take(KEY_LEN), r.u8()
        if op not in _RELAY_OPS:
            raise DecodeError("unknown relay operation")
        p = RelayRequest(ts, counter, peer, RelayOp(op))
    elif kind == Kind.RELAY_GRANT:
        peer, state, reason, flags = r.take(KEY_LEN), r.u8(), r.u8(), r.u8()
        if state not in _RELAY_STATES or reason not in _RELAY_REFUSALS:
            raise DecodeError("unknown relay state or reason")
        if flags & ~1:
            raise DecodeError("unknown RelayGrant flags")
        st, why = RelayState(state), RelayRefusal(reason)
        if (why is RelayRefusal.NONE) != (st is not RelayState.REFUSED):
            raise DecodeError("a refusal reason exactly when refused")
        if st in (RelayState.REFUSED, RelayState.RELEASED):
            if r.u8() != 0:
                raise DecodeError("a relay address in a refusal or release")
            relay = None
        else:
            relay = r.address()
        p = RelayGrant(ts, counter, peer, st, relay, bool(flags), why)
    elif kind == Kind.RELAY_BIND:
        p = RelayBind(ts, counter, r.take(KEY_LEN))
    elif kind == Kind.REPUNCH:
        count = r.u8()
        if not 1 <= count <= MAX_CHANGED:
            raise DecodeError(f"a Repunch names 1 to {MAX_CHANGED} keys")
        p = Repunch(ts, counter, tuple(r.take(KEY_LEN) for _ in range(count)))
    elif kind == Kind.PATH_REPORT:
        count = r.u8()
        if not 1 <= count <= MAX_PATHS:
            raise DecodeError(f"a PathReport names 1 to {MAX_PATHS} peers")
        entries = []
        for _ in range(count):
            peer, path, reason, age = r.take(KEY_LEN), r.u8(), r.u8(), r.u32()
            if path not in _PATH_KINDS:
                raise DecodeError("unknown path in a PathReport")
            if reason not in _PATH_REASONS:
                raise DecodeError("unknown path reason")
            entries.append(PeerPath(peer, PathKind(path), PathReason(reason), age))
        p = PathReport(ts, counter, tuple(entries))
    else:
        raise DecodeError(f"unknown sealed payload kind {kind}")
    if r.pos != len(data):
        raise DecodeError("trailing bytes after sealed payload")
    return p


# -- the box ----------------------------------------------------------------------------------


def open_box(shared: bytes, sealed: bytes) -> bytes:
    """The plaintext of ``nonce || ciphertext`` under a precomputed shared key
    (:meth:`Sealer.shared_key`). Raises DecodeError("sealed box does not open") for a forged or
    tampered box or a length outside ``stun.MIN_SEALED..MAX_SEALED``."""
    if not stun.MIN_SEALED <= len(sealed) <= stun.MAX_SEALED:
        raise DecodeError("sealed box does not open")
    try:
        return crypto_box_open_easy_afternm(sealed[NONCE_LEN:], sealed[:NONCE_LEN], shared)
    except CryptoError:
        raise DecodeError("sealed box does not open") from None


def seal_box(shared: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """``nonce || ciphertext`` under a precomputed shared key; LocalProtocolError on bad
    arguments."""
    if len(shared) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise LocalProtocolError("seal takes a 32-byte shared key and a 24-byte nonce")
    return nonce + crypto_box_easy_afternm(plaintext, nonce, shared)


class Sealer:
    """Seals and opens boxes between our private key and remote public keys.

    The X25519 step (``crypto_box_beforenm``, 40-80 us) turns a remote key into a 32-byte
    shared key; the box itself then costs a few microseconds (:func:`open_box`, :func:`seal_box`).
    :meth:`shared_key` does that step and keeps nothing: whoever holds state per remote key keeps
    the shared key with it (the registry, in each peer's row and watcher record). :meth:`seal`
    and :meth:`open` keep their own LRU of at most ``cache_size`` shared keys, for callers that
    talk to a few remotes (a daemon has one: its registrar). :meth:`open` caches a key only once
    it has opened something, so forgeries under random keys cost their X25519 step but never
    evict a genuine sender's key.
    """

    def __init__(self, private_key: bytes, cache_size: int = 16) -> None:
        if len(private_key) != KEY_LEN:
            raise LocalProtocolError("a WireGuard private key is 32 bytes")
        if cache_size < 1:
            raise LocalProtocolError("cache_size must be at least 1")
        self._private = bytes(private_key)
        self.public_key: bytes = bytes(PrivateKey(self._private).public_key)
        """Our public key (what ATTR_WG_PUBLIC_KEY carries)."""
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = cache_size
        self.agreements = 0
        """X25519 steps done so far (tens of microseconds each); for tests and benchmarks."""

    @property
    def cached_keys(self) -> int:
        """How many remote keys have a cached shared key."""
        return len(self._keys)

    def shared_key(self, remote_key: bytes) -> bytes | None:
        """The X25519 + HSalsa20 shared key with ``remote_key``, computed now and not cached;
        None for a malformed key or a low-order point (no shared key at all)."""
        if len(remote_key) != KEY_LEN:
            return None
        self.agreements += 1
        try:
            return crypto_box_beforenm(remote_key, self._private)
        except CryptoError:
            return None

    def _remember(self, remote_key: bytes, shared: bytes) -> None:
        self._keys[remote_key] = shared
        if len(self._keys) > self._cache_size:
            self._keys.popitem(last=False)

    def seal(self, remote_key: bytes, plaintext: bytes, nonce: bytes) -> bytes:
        """``nonce || ciphertext`` for ``remote_key``; LocalProtocolError on bad arguments."""
        if len(remote_key) != KEY_LEN or len(nonce) != NONCE_LEN:
            raise LocalProtocolError("seal takes a 32-byte key and a 24-byte nonce")
        shared = self._keys.get(remote_key)
        if shared is None:
            shared = self.shared_key(remote_key)
            if shared is None:
                raise LocalProtocolError("cannot seal to that key")
            self._remember(remote_key, shared)
        else:
            self._keys.move_to_end(remote_key)
        return seal_box(shared, plaintext, nonce)

    def open(self, remote_key: bytes, sealed: bytes) -> bytes:
        """The plaintext of ``nonce || ciphertext`` sealed by ``remote_key``.

        Raises DecodeError("sealed box does not open") for anything else: a wrong or malformed
        key, a forged or tampered box, or a length outside ``stun.MIN_SEALED..MAX_SEALED``.
        """
        if len(remote_key) != KEY_LEN or not stun.MIN_SEALED <= len(sealed) <= stun.MAX_SEALED:
            raise DecodeError("sealed box does not open")
        shared = self._keys.get(remote_key)
        if shared is not None:
            plaintext = open_box(shared, sealed)
            self._keys.move_to_end(remote_key)
            return plaintext
        shared = self.shared_key(remote_key)
        if shared is None:
            raise DecodeError("sealed box does not open")
        plaintext = open_box(shared, sealed)
        self._remember(remote_key, shared)
        return plaintext


# -- whole messages ---------------------------------------------------------------------------


def _carrying(
    box: bytes, own_public_key: bytes | None, transaction_id: bytes, msg_type: int
) -> bytes:
    attrs: list[tuple[int, bytes]] = []
    if own_public_key is not None:
        attrs.append((stun.ATTR_WG_PUBLIC_KEY, stun.pack_public_key(own_public_key)))
    attrs.append((stun.ATTR_WG_SEALED, stun.pack_sealed(box)))
    return stun.encode(stun.StunMessage(msg_type, transaction_id, tuple(attrs)))


def build_sealed_request(
    sealer: Sealer,
    own_public_key: bytes | None,
    remote_key: bytes,
    payload: Payload,
    transaction_id: bytes,
    nonce: bytes,
    msg_type: int = stun.BINDING_REQUEST,
) -> bytes:
    """A whole STUN message carrying ``payload`` sealed to ``remote_key``, with FINGERPRINT.

    ATTR_WG_PUBLIC_KEY names the sender unless ``own_public_key`` is None (registrar -> peer:
    the receiver knows who its registrar is). Raises LocalProtocolError on bad arguments.
    """
    box = sealer.seal(remote_key, encode_payload(payload, transaction_id), nonce)
    return _carrying(box, own_public_key, transaction_id, msg_type)


def build_sealed_with(
    shared: bytes,
    own_public_key: bytes | None,
    payload: Payload,
    transaction_id: bytes,
    nonce: bytes,
    msg_type: int = stun.BINDING_REQUEST,
) -> bytes:
    """:func:`build_sealed_request` with a precomputed shared key instead of a Sealer."""
    box = seal_box(shared, encode_payload(payload, transaction_id), nonce)
    return _carrying(box, own_public_key, transaction_id, msg_type)


def open_sealed(
    sealer: Sealer, msg: stun.StunMessage, expected_sender: bytes | None
) -> tuple[bytes, Payload]:
    """Open a message's sealed payload: ``(sender key, payload)``, or DecodeError.

    The sender is ATTR_WG_PUBLIC_KEY, or ``expected_sender`` when that attribute is absent;
    when both are given they must agree. The payload must be bound to ``msg``'s transaction id.
    """
    claimed = msg.get(stun.ATTR_WG_PUBLIC_KEY)
    if claimed is None:
        sender = expected_sender
    else:
        sender = stun.unpack_public_key(claimed)
        if expected_sender is not None and sender != expected_sender:
            raise DecodeError("sealed by an unexpected key")
    if sender is None:
        raise DecodeError("no sender key")
    box = msg.get(stun.ATTR_WG_SEALED)
    if box is None:
        raise DecodeError("no sealed payload")
    plaintext = sealer.open(sender, box)
    return sender, decode_payload(plaintext, msg.transaction_id)
