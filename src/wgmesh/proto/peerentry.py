"""The registry's values: who may register (:class:`Admission`), its timings and caps
(:class:`RegistryConfig`), one registered peer (:class:`PeerEntry`) and what the registry tells
its adapter (:class:`Change`, :class:`PeerEvent`); and the per-family rules for a peer's
mappings and NAT class (one mapping per address family; :func:`classify`). Sans-IO, no state:
the state machine is wgmesh.proto.registry, which re-exports these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, NamedTuple

from wgmesh.proto import stun
from wgmesh.proto.dnssd import Candidate, PublishedPeer
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.peerrow import unpack_row, without_key
from wgmesh.proto.ratelimit import RateLimitConfig


@dataclass(frozen=True, slots=True)
class AdmittedPeer:
    """One line of the authorized-keys file."""

    key: bytes
    """The peer's WireGuard public key (32 bytes)."""
    name: str = ""
    """Name to publish; empty means the peer's own reported name is used."""
    allowed_ips: tuple[str, ...] = ()
    """Allowed IPs to publish in TXT ``allowed=``; only ever from this file, never from the peer."""


@dataclass(frozen=True, slots=True)
class Admission:
    """Who may register: the keys listed, or anyone when ``open``."""

    open: bool
    """Any key may register (``--open``)."""
    peers: Mapping[bytes, AdmittedPeer] = field(default_factory=dict)
    """Admitted keys and what is published for them."""

    def lookup(self, key: bytes) -> AdmittedPeer | None:
        """The admission entry for a key, a bare one when open, or None when refused."""
        entry = self.peers.get(key)
        if entry is None and self.open:
            return AdmittedPeer(key)
        return entry


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Timings and limits of the registrar."""

    expiry: float = 50.0
    """Seconds without a refresh before a mapping is dropped, and the peer withdrawn when it has
    none left (about two probe intervals)."""
    freshness_window: float = 120.0
    """Largest accepted distance between a message's timestamp and our clock, in seconds."""
    max_peers: int = 1_000_000
    """Most registered peers; registrations of new keys beyond it are refused and counted."""
    max_watchers: int = 1_000_000
    """Most control addresses remembered for pushes: one per peer, so as many as ``max_peers``
    (the CLI sets both from ``--max-peers``). A proven Watch from a new key beyond it gets no
    Status (counted ``table_full``), so a lower cap would leave every daemon past it without
    a working round."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    """Per-source-address limit on the sealed messages that cost us work an attacker can cause
    from anywhere: first contacts (an X25519 step) and boxes that do not open. Never charged for
    a valid message of a known key, so junk sent with a victim's source address cannot stop the
    victim's registrations."""
    key_rate_limit: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(rate=20.0, burst=10.0, max_sources=65536)
    )
    """Per-key limit on accepted sealed messages (charged after the box opened: only the key's
    owner can spend it)."""
    agreement_limit: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(rate=2000.0, burst=500.0, max_sources=1)
    )
    """X25519 steps per second for keys without a stored shared key, all sources together (so a
    flood of first contacts under ``--open`` costs at most this much CPU; known keys never need
    one and are served whatever this says)."""
    push_delay: float = 0.25
    """Seconds changes are gathered before they are pushed: every watcher then gets one Push
    naming all of them (up to 14 keys a Push), however often a peer changes meanwhile."""
    max_datagram: int = stun.MAX_DATAGRAM
    """Larger datagrams are dropped before parsing."""
    software: str = "wgmesh"
    """SOFTWARE attribute of our responses."""
    max_path_pairs: int = 65_536
    """Most (reporter, peer) paths kept from PathReports (wgmesh.proto.pathreport)."""
    path_ttl: float = 300.0
    """Seconds a reported path is shown without a newer report."""


class Change(StrEnum):
    """What happened to a peer."""

    ADDED = "added"
    CHANGED = "changed"
    REFRESHED = "refreshed"
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the registrar knows of one peer."""

    key: bytes
    """WireGuard public key."""
    name: str
    """Published name (admission file first, else the peer's report)."""
    mappings: tuple[Endpoint, ...]
    """The observed public mappings of the peer's WireGuard port: at most one per address
    family, IPv4 first, never empty. The first is the published public candidate."""
    addresses: tuple[Endpoint, ...]
    """Addresses the peer reported for itself (LAN, global IPv6), sealed."""
    nat: NatKind
    """The published NAT class: the first mapping's (the IPv4 one when there is one), from
    comparing it with the secondary probe of the same family (:func:`nat_of`)."""
    since: float
    """When the first mapping was first observed at its current value (a change of the other
    mapping leaves it)."""
    refreshed: tuple[float, ...]
    """When each mapping was last registered, parallel to ``mappings``."""
    register_counter: int
    """Highest accepted Register counter (replay floor)."""
    watch_counter: int = 0
    """Highest accepted Watch counter (replay floor)."""
    software: str = ""
    """The peer's software version."""
    allowed_ips: tuple[str, ...] = ()
    """From the admission file."""
    secondary: tuple[Endpoint, ...] = ()
    """Mappings seen on the alternate port (for the NAT class), at most one per family, IPv4
    first, each since the same family's mapping last changed."""

    @property
    def endpoint(self) -> Endpoint:
        """The first mapping: the published public one."""
        return self.mappings[0]

    @property
    def last_seen(self) -> float:
        """Last accepted registration of any mapping."""
        return max(self.refreshed)


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A change the adapter persists and logs."""

    change: Change
    """What happened."""
    peer: PeerEntry
    """The peer's state after the change (before it, for withdrawals)."""


@dataclass(frozen=True, slots=True)
class Refresh:
    """A refresh: the peer registered again and nothing published changed. The registrar's
    commonest event by far, so it carries the peer's packed row (wgmesh.proto.peerrow), read
    only when someone asks for :attr:`peer`; the store writes only what a refresh changes."""

    key: bytes
    row: bytes
    """The row after the refresh, without its shared key (:func:`refresh_event`)."""
    allowed_ips: tuple[str, ...] = ()
    """The admission file's, as :attr:`PeerEntry.allowed_ips`."""
    moved: bool = False
    """A mapping came or went (the other family's), the row gained its shared key (a
    restored peer without a stored one), or an alternate-port probe moved the Register floor
    and what that port saw: more than the times and the counter changed, and the store writes
    the whole row."""
    change: ClassVar[Change] = Change.REFRESHED

    @property
    def peer(self) -> PeerEntry:
        return entry_of(self.key, self.row, self.allowed_ips)


def refresh_event(
    key: bytes, row: bytes, allowed_ips: tuple[str, ...], moved: bool = False
) -> Refresh:
    """The event of a refresh that left ``key`` with ``row`` (its shared key is not copied)."""
    return Refresh(key, without_key(row), allowed_ips, moved)


Event = PeerEvent | Refresh
"""What the registry tells its adapter (:meth:`wgmesh.proto.registry.Registry.events`)."""


def entry_of(key: bytes, row: bytes, allowed_ips: tuple[str, ...]) -> PeerEntry:
    """A row unpacked (the allowed IPs are not stored: they are the admission file's)."""
    u = unpack_row(row)
    return PeerEntry(key, u.name, u.mappings, u.addresses, u.nat, u.since, u.refreshed,
                     u.register_counter, u.watch_counter, u.software, allowed_ips,
                     u.secondary)  # fmt: skip


class Stored(NamedTuple):
    """A peer as the registrar's database holds it: its entry, and its shared key wrapped
    (wgmesh.proto.keywrap; None when none was stored)."""

    entry: PeerEntry
    wrapped_key: bytes | None = None


def candidates_of(entry: PeerEntry) -> tuple[Candidate, ...]:
    """Published candidates: the first mapping (the IPv4 one, else the IPv6 one) is the public
    candidate (priority 0, what wgsd-client reads); an IPv6 mapping beside an IPv4 one is an
    IPv6 candidate (5); then global IPv6 (5) and LAN (10) addresses the peer reported, each
    address once."""
    first, *others = entry.mappings
    out = [Candidate(first, CandidateKind.PUBLIC, 0)]
    out += (Candidate(ep, CandidateKind.IPV6, 5) for ep in others)
    seen = set(entry.mappings)
    for ep in entry.addresses:
        if ep in seen or ep.ip.is_loopback or ep.ip.is_link_local or ep.ip.is_unspecified:
            continue
        seen.add(ep)
        if ep.ip.version == 6 and ep.ip.is_global:
            out.append(Candidate(ep, CandidateKind.IPV6, 5))
        else:
            out.append(Candidate(ep, CandidateKind.LAN, 10))
    return tuple(out)


def published(entry: PeerEntry) -> PublishedPeer:
    """The DNS-SD view of a peer."""
    return PublishedPeer(
        key=entry.key,
        name=entry.name,
        candidates=candidates_of(entry),
        allowed_ips=entry.allowed_ips,
        nat=entry.nat,
        since=int(entry.since),
    )


def family_of(ep: Endpoint) -> int:
    return ep.ip.version


def of_family(endpoints: Sequence[Endpoint], family: int) -> Endpoint | None:
    """The endpoint of that family among ``endpoints`` (at most one per family), if any."""
    for ep in endpoints:
        if ep.ip.version == family:
            return ep
    return None


def shown_of(entry: PeerEntry) -> tuple[object, ...]:
    """What is published of a peer (see :func:`published`), to tell a change from a refresh."""
    return entry.name, entry.mappings, entry.addresses, entry.nat, entry.since, entry.allowed_ips


def observed_after(
    previous: PeerEntry | None, source: Endpoint, now: float, limit: float
) -> tuple[tuple[Endpoint, ...], tuple[float, ...]]:
    """The mappings and their times after a registration from ``source`` at ``now``: it is its
    family's mapping; the other family's is kept unless it was last registered before
    ``limit``. IPv4 first."""
    family = source.ip.version
    if previous is not None:
        for ep, t in zip(previous.mappings, previous.refreshed, strict=True):
            if ep.ip.version != family and t >= limit:
                return ((source, ep), (now, t)) if family == 4 else ((ep, source), (t, now))
    return (source,), (now,)


def carried_over(
    previous: PeerEntry | None,
    mappings: tuple[Endpoint, ...],
    addresses: tuple[Endpoint, ...],
    now: float,
) -> tuple[float, tuple[Endpoint, ...], NatKind]:
    """``since``, ``secondary`` and ``nat`` for new ``mappings`` (or ``addresses``) of a peer
    that had ``previous`` (None: a new peer): a secondary observation is kept for a family whose
    mapping did not change (a new mapping is re-probed by the daemon), ``since`` if the first
    mapping did not change, and the NAT class is computed again."""
    if previous is None:
        return now, (), nat_of(mappings, addresses, ())
    secondary = previous.secondary
    if secondary and previous.mappings != mappings:
        kept = [ep for ep in previous.mappings if ep in mappings]
        secondary = tuple(ep for ep in secondary if of_family(kept, ep.ip.version))
    since = previous.since if previous.mappings[0] == mappings[0] else now
    return since, secondary, nat_of(mappings, addresses, secondary)


def nat_of(
    mappings: tuple[Endpoint, ...], addresses: tuple[Endpoint, ...], secondary: tuple[Endpoint, ...]
) -> NatKind:
    """The published NAT class: the first mapping's (IPv4 when there is one), compared with the
    alternate port's observation of the same family."""
    first = mappings[0]
    return classify(first, addresses, of_family(secondary, first.ip.version))


def classify(
    endpoint: Endpoint, addresses: tuple[Endpoint, ...], secondary: Endpoint | None
) -> NatKind:
    """NAT class of one family from what we saw: no NAT when the mapping is one of the peer's
    own addresses, symmetric when the alternate port saw another mapping (of the same family),
    cone when it saw the same."""
    if endpoint in addresses:
        return NatKind.NONE
    if secondary is None:
        return NatKind.UNKNOWN
    if secondary == endpoint:
        return NatKind.CONE
    return NatKind.SYMMETRIC
