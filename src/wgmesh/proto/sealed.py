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
              optional: u8 count (<= 57) + count * 8-byte key id (the peers whose changes
              this watcher wants pushed: the first 8 bytes of their keys; absent, or count
              255 with no ids: every peer), then zero padding to the end (daemons pad to
              WATCH_MIN bytes; padding after an absent interest needs the 255 marker)
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
from dataclasses import replace

from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib
from nacl.bindings import (
    crypto_box_beforenm,
    crypto_box_open_easy_afternm,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey

from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keywrap import KeyWrap
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.payloads import (
    COOKIE_LEN,
    EVERY_PEER,
    HEADER_LEN,
    KEY_ID_LEN,
    KEY_LEN,
    MAX_ADDRESSES,
    MAX_CHANGED,
    MAX_INTEREST,
    MAX_MEMBER_NETWORKS,
    MAX_NAME,
    MAX_OBSERVED,
    MAX_PATHS,
    MAX_PAYLOAD,
    MAX_SOFTWARE,
    NEVER,
    NONCE_LEN,
    PATH_REASONS,
    ROSTER_HEAD,
    VERSION,
    WATCH_MIN,
    Kind,
    Member,
    PathKind,
    PathReason,
    PathReport,
    Payload,
    PeerPath,
    Push,
    Register,
    RelayBind,
    RelayGrant,
    RelayOp,
    RelayRefusal,
    RelayRequest,
    RelayState,
    Repunch,
    Roster,
    RosterQuery,
    Status,
    Watch,
)

__all__ = [
    "COOKIE_LEN",
    "HEADER_LEN",
    "KEY_ID_LEN",
    "KEY_LEN",
    "MAX_ADDRESSES",
    "MAX_CHANGED",
    "MAX_INTEREST",
    "MAX_MEMBER_NETWORKS",
    "MAX_NAME",
    "MAX_OBSERVED",
    "MAX_PATHS",
    "MAX_PAYLOAD",
    "MAX_SOFTWARE",
    "NEVER",
    "NONCE_LEN",
    "PATH_REASONS",
    "ROSTER_HEAD",
    "VERSION",
    "WATCH_MIN",
    "Kind",
    "Member",
    "PathKind",
    "PathReason",
    "PathReport",
    "Payload",
    "PeerPath",
    "Push",
    "Register",
    "RelayBind",
    "RelayGrant",
    "RelayOp",
    "RelayRefusal",
    "RelayRequest",
    "RelayState",
    "Repunch",
    "Roster",
    "RosterQuery",
    "Sealer",
    "Status",
    "Watch",
    "build_sealed_request",
    "build_sealed_with",
    "decode_payload",
    "encode_payload",
    "key_id",
    "nat_code",
    "open_box",
    "open_sealed",
    "pack_member",
    "seal_box",
    "status_plaintext",
]

_HEADER = struct.Struct("!BB12sQQ")
assert _HEADER.size == HEADER_LEN
_PROVEN = 0x01
_SECONDARY = 0x01
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_PORT = struct.Struct("!H")
_RELAY_OPS = frozenset(int(o) for o in RelayOp)
_RELAY_STATES = frozenset(int(s) for s in RelayState)
_RELAY_REFUSALS = frozenset(int(r) for r in RelayRefusal)
_PATH_KINDS = frozenset(int(k) for k in PathKind)
_PATH_REASONS = frozenset(int(r) for r in PathReason)
_NAT_CODES = (NatKind.UNKNOWN, NatKind.NONE, NatKind.CONE, NatKind.SYMMETRIC)
_NAT_INDEX = {nat: code for code, nat in enumerate(_NAT_CODES)}


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


def nat_code(nat: NatKind) -> int:
    """The code a NAT class travels as in a Status."""
    code = _NAT_INDEX.get(nat)
    if code is None:
        raise LocalProtocolError(f"unknown NAT class {nat!r}")
    return code


_STATUS_COUNTERS = struct.Struct("!QQ")
_STATUS_TAIL = struct.Struct("!BIB16s")


def _status_body(watch_counter: int, register_counter: int, observed: bytes, nat: int,
                 serial: int, proven: bool, cookie: bytes) -> bytes:  # fmt: skip
    return b"".join((_STATUS_COUNTERS.pack(watch_counter, register_counter), observed,
                     _STATUS_TAIL.pack(nat, serial, _PROVEN if proven else 0, cookie)))  # fmt: skip


def status_plaintext(
    transaction_id: bytes,
    timestamp_ms: int,
    counter: int,
    watch_counter: int,
    register_counter: int,
    observed: bytes,
    nat: int,
    serial: int,
    cookie: bytes,
) -> bytes:
    """What ``encode_payload`` gives for a proven :class:`Status` whose observed mappings are
    ``observed`` as the payload carries them (their count, then each as ``_pack_address``
    packs it) and whose NAT class has the wire code ``nat`` (:func:`nat_code`): the
    registrar's answer to a proven watcher's Watch, packed from its row
    (wgmesh.proto.peerrow.renewed_watch). The caller's values are its own state, in range."""
    head = _HEADER.pack(VERSION, Kind.STATUS, transaction_id, timestamp_ms, counter)
    return head + _status_body(watch_counter, register_counter, observed, nat, serial, True,
                               cookie)  # fmt: skip


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
        if p.padding < 0:
            raise LocalProtocolError("negative padding")
        pad = bytes(p.padding)
        if p.interest is None:
            return head + bytes((EVERY_PEER,)) + pad if pad else head
        if len(p.interest) > MAX_INTEREST or any(len(i) != KEY_ID_LEN for i in p.interest):
            raise LocalProtocolError(f"an interest is at most {MAX_INTEREST} 8-byte key ids")
        return head + bytes((len(p.interest),)) + b"".join(p.interest) + pad
    if isinstance(p, Status):
        families = [_family(ep) for ep in p.observed]
        if families not in ([], [4], [6], [4, 6]):
            raise LocalProtocolError("observed: at most one mapping per family, IPv4 first")
        observed = bytes((len(p.observed),)) + b"".join(map(_pack_address, p.observed))
        return _status_body(p.watch_counter, p.register_counter, observed, nat_code(p.nat),
                            p.serial, p.proven, _cookie(p.cookie))  # fmt: skip
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


def padded_watch(watch: Watch) -> Watch:
    """``watch`` with the padding that brings its plaintext to :data:`WATCH_MIN` bytes (none
    when it is that long already)."""
    unpadded = replace(watch, padding=0)
    size = HEADER_LEN + len(_body(unpadded))
    if size >= WATCH_MIN:
        return unpadded
    marker = 1 if watch.interest is None else 0  # padding after no interest needs the marker
    return replace(unpadded, padding=max(1, WATCH_MIN - size - marker))


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
        padding = 0
        if r.pos < len(data):
            count = r.u8()
            if count == EVERY_PEER:
                if r.pos == len(data):
                    raise DecodeError("an every-peer marker without padding")
            elif count > MAX_INTEREST:
                raise DecodeError(f"more than {MAX_INTEREST} key ids of interest")
            else:
                interest = tuple(r.take(KEY_ID_LEN) for _ in range(count))
            padding = len(data) - r.pos
            if r.take(padding).count(0) != padding:
                raise DecodeError("a Watch's padding is not zeros")
        p = Watch(ts, counter, register_counter, cookie, interest, padding)
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


def open_or_none(shared: bytes, sealed: bytes) -> bytes | None:
    """:func:`open_box`, None instead of DecodeError (the registrar's fast path). The box is
    ``crypto_box_afternm``, which is ``crypto_secretbox`` under the shared key (libsodium
    defines it so). This calls libsodium's ``crypto_secretbox_open_easy`` through PyNaCl's own
    cffi module: PyNaCl's binding copies the box behind 16 zero bytes for the old API and
    checks its arguments again, 2.7 us a box here against 1.45 (docs/architecture.md)."""
    size = len(sealed) - NONCE_LEN
    if not stun.MIN_SEALED <= len(sealed) <= stun.MAX_SEALED or len(shared) != KEY_LEN:
        return None
    out = _new("unsigned char[]", size - _MAC_LEN)
    if _secretbox_open_easy(out, sealed[NONCE_LEN:], size, sealed[:NONCE_LEN], shared):
        return None
    plaintext: bytes = _buffer(out)[:]
    return plaintext


_new = _ffi.new
_buffer = _ffi.buffer
_secretbox_open_easy = _lib.crypto_secretbox_open_easy
_MAC_LEN = _lib.crypto_secretbox_macbytes()


def seal_box(shared: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """``nonce || ciphertext`` under a precomputed shared key; LocalProtocolError on bad
    arguments. ``crypto_box_easy_afternm``, called as :func:`open_or_none` calls its inverse:
    libsodium's ``crypto_secretbox_easy`` through PyNaCl's cffi module (1.2-1.3 us a Status's
    plaintext here, against 1.6 through PyNaCl's binding, which checks its arguments again;
    tests/test_watchpath.py checks they seal alike)."""
    if len(shared) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise LocalProtocolError("seal takes a 32-byte shared key and a 24-byte nonce")
    out = _new("unsigned char[]", len(plaintext) + _MAC_LEN)
    _secretbox_easy(out, plaintext, len(plaintext), nonce, shared)  # (fails only past 2**64)
    sealed: bytes = _buffer(out)[:]
    return nonce + sealed


_secretbox_easy = _lib.crypto_secretbox_easy


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

    def key_wrap(self) -> KeyWrap:
        """A :class:`~wgmesh.proto.keywrap.KeyWrap` under our private key (shared keys as the
        registrar's database stores them)."""
        return KeyWrap(self._private)

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
