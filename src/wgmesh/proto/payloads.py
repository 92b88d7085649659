"""The payloads inside ATTR_WG_SEALED as values: their kinds, limits and one frozen dataclass
each (the wire layout, the codec and the box are wgmesh.proto.sealed, which re-exports these)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

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
HEADER_LEN = 30
"""u8 version, u8 kind, the 12-byte STUN transaction id, u64 timestamp_ms, u64 counter."""
MAX_CHANGED = (MAX_PAYLOAD - HEADER_LEN - 5) // KEY_LEN
"""14: as many keys as fit in MAX_PAYLOAD after the header, serial and count."""
WATCH_MIN = 112
"""Plaintext bytes a daemon pads its Watch to: the largest Status (both families observed, an
IPv6 XOR-MAPPED-ADDRESS, the SOFTWARE attribute) is then no larger than the Watch message."""
KEY_ID_LEN = 8
"""Bytes of a key that name it in a Watch's interest (a collision only costs a spare Push)."""
MAX_INTEREST = (MAX_PAYLOAD - HEADER_LEN - 8 - COOKIE_LEN - 1) // KEY_ID_LEN
"""57: the key ids one Watch can name; a daemon with more peers asks for every peer."""
EVERY_PEER = 0xFF
"""A Watch's interest count meaning 'every peer', written only when padding follows."""
MAX_MEMBER_NETWORKS = 16
"""Allowed-IP networks one Roster entry carries (a member with more is left out and logged by
the registrar: see wgmesh.proto.roster)."""
ROSTER_HEAD = HEADER_LEN + 8 + 4 + 4 + 4 + 1
"""Bytes of a Roster before its members."""


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
    padding: int = 0
    """Zero bytes after the interest. Daemons pad every Watch to :data:`WATCH_MIN` bytes of
    plaintext, so that the registrar's Status, which it sends only when it is no larger than
    the Watch while the source is unproven, always fits (no amplification toward a spoofed
    source)."""


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
