"""The registrar's state machine: admission, freshness, replay, NAT class, expiry, pushes.

Sans-IO in the aioquic manner: the adapter hands over each datagram with
``receive(data, source, local_port, now)`` and sends what it returns; it calls ``expire(now)``
when ``next_timer()`` says, and drains ``events()`` to persist and log peer changes.

What it accepts (docs/protocol.md has the wire format):

- a plain STUN Binding Request (RFC 8489 section 7.3): answered with XOR-MAPPED-ADDRESS;
- a sealed ``Register`` from a peer's WireGuard port: its source is the peer's endpoint, recorded
  only if the box opens with the key in ATTR_WG_PUBLIC_KEY, the key is admitted, the timestamp is
  within the freshness window and the counter is above every counter seen for that key;
- a sealed ``Register`` with the secondary flag, sent to the alternate port: not an endpoint,
  only compared with the primary mapping to tell a cone NAT from a symmetric one;
- a sealed ``Watch`` from the daemon's ordinary control socket: answered with a sealed
  ``Status`` (the observed WireGuard mapping), and the source is remembered so that peer changes
  are pushed there (sealed ``Push`` indications).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeVar

from wgmesh.errors import DecodeError
from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import KEY_LEN
from wgmesh.proto.ratelimit import RateLimitConfig, RateLimiter
from wgmesh.proto.sealed import NatKind

Outgoing = tuple[bytes, Endpoint]
_V = TypeVar("_V")


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
    """Seconds without a refresh before a peer is withdrawn (about two probe intervals)."""
    freshness_window: float = 120.0
    """Largest accepted distance between a message's timestamp and our clock, in seconds."""
    max_peers: int = 1_000_000
    """Most registered peers; registrations of new keys beyond it are refused and counted."""
    max_watchers: int = 100_000
    """Most control addresses remembered for pushes."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    """Per-source-address limit on sealed messages."""
    max_datagram: int = stun.MAX_DATAGRAM
    """Larger datagrams are dropped before parsing."""
    software: str = "wgmesh"
    """SOFTWARE attribute of our responses."""


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
    endpoint: Endpoint
    """The observed public mapping of the peer's WireGuard port."""
    addresses: tuple[Endpoint, ...]
    """Addresses the peer reported for itself (LAN, global IPv6), sealed."""
    nat: NatKind
    """NAT class from comparing the primary and secondary probes."""
    since: float
    """When ``endpoint`` was first observed at its current value."""
    last_seen: float
    """Last accepted registration."""
    register_counter: int
    """Highest accepted Register counter (replay floor)."""
    watch_counter: int = 0
    """Highest accepted Watch counter (replay floor)."""
    software: str = ""
    """The peer's software version."""
    allowed_ips: tuple[str, ...] = ()
    """From the admission file."""
    secondary: Endpoint | None = None
    """Mapping seen on the alternate port (for the NAT class)."""


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A change the adapter persists and logs."""

    change: Change
    """What happened."""
    peer: PeerEntry
    """The peer's state after the change (before it, for withdrawals)."""


def candidates_of(entry: PeerEntry) -> tuple[Candidate, ...]:
    """Published candidates: the public mapping first (priority 0, what wgsd-client reads),
    then global IPv6 (5) and LAN (10) addresses the peer reported."""
    out = [Candidate(entry.endpoint, "public", 0)]
    seen = {entry.endpoint}
    for ep in entry.addresses:
        if ep in seen or ep.ip.is_loopback or ep.ip.is_link_local or ep.ip.is_unspecified:
            continue
        seen.add(ep)
        if ep.ip.version == 6 and ep.ip.is_global:
            out.append(Candidate(ep, "ipv6", 5))
        else:
            out.append(Candidate(ep, "lan", 10))
    return tuple(out)


def published(entry: PeerEntry) -> PublishedPeer:
    """The DNS-SD view of a peer."""
    return PublishedPeer(
        key=entry.key,
        name=entry.name,
        candidates=candidates_of(entry),
        allowed_ips=entry.allowed_ips,
        nat=str(entry.nat),
        since=int(entry.since),
    )


class Registry:
    """All registrar state; see the module docstring."""

    def __init__(
        self,
        config: RegistryConfig,
        sealer: sealed.Sealer,
        admission: Admission,
        zone: Zone,
        nonce: Callable[[int], bytes],
        primary_port: int,
    ) -> None:
        self.config = config
        self.sealer = sealer
        self.admission = admission
        self.zone = zone
        self._nonce = nonce
        self.primary_port = primary_port
        self.peers: dict[bytes, PeerEntry] = {}
        self.watchers: dict[bytes, tuple[Endpoint, float, int]] = {}
        """Control address, last Watch time and Watch counter per key, for pushes."""
        self._limiter = RateLimiter(config.rate_limit)
        self._events: list[PeerEvent] = []
        self._push_counter = 0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "datagrams", "binding", "registered", "watched", "oversize", "not_stun",
                "malformed", "rate_limited", "unauthorized", "bad_box", "stale", "replay",
                "unexpected", "table_full", "pushed",
            ),
            0,
        )  # fmt: skip

    # -- state loading --------------------------------------------------------------------

    def restore(self, entries: Iterable[PeerEntry], now: float) -> None:
        """Load persisted peers; those already past expiry are left out."""
        for entry in entries:
            if now - entry.last_seen > self.config.expiry:
                continue
            admitted = self.admission.lookup(entry.key)
            if admitted is None:
                continue
            entry = self._apply_admission(entry, admitted)
            self.peers[entry.key] = entry
            self.zone.upsert(published(entry))
        # expire() relies on refresh order
        self.peers = dict(sorted(self.peers.items(), key=lambda kv: kv[1].last_seen))

    def set_admission(self, admission: Admission, now: float) -> list[Outgoing]:
        """Replace the admission list (SIGHUP); withdraw or republish affected peers."""
        self.admission = admission
        out: list[Outgoing] = []
        for key, entry in list(self.peers.items()):
            admitted = admission.lookup(key)
            if admitted is None:
                out += self._withdraw(entry, now)
                continue
            updated = self._apply_admission(entry, admitted)
            if updated != entry:
                self.peers[key] = updated
                out += self._publish(Change.CHANGED, updated, now)
        return out

    # -- the datagram path ----------------------------------------------------------------

    def receive(self, data: bytes, source: Endpoint, local_port: int, now: float) -> list[Outgoing]:
        """Handle one datagram; returns the datagrams to send. Never raises on bad input."""
        c = self.counters
        c["datagrams"] += 1
        if len(data) > self.config.max_datagram:
            c["oversize"] += 1
            return []
        if not stun.is_stun(data):
            classic = stun.classic_binding_success(data, source)
            if classic is not None:  # an RFC 3489 client (RFC 8489 section 12)
                c["binding"] += 1
                return [(classic, source)]
            c["not_stun"] += 1
            return []
        try:
            msg = stun.decode(data)
        except DecodeError:
            c["malformed"] += 1
            return []
        if msg.msg_type != stun.BINDING_REQUEST:
            c["unexpected"] += 1
            return []
        key = msg.get(stun.ATTR_WG_PUBLIC_KEY)
        if key is None or msg.get(stun.ATTR_WG_SEALED) is None:
            c["binding"] += 1
            return [(stun.binding_success(msg, source, software=self.config.software), source)]
        return self._sealed(msg, key, source, local_port, now)

    def _sealed(
        self, msg: stun.StunMessage, key: bytes, source: Endpoint, local_port: int, now: float
    ) -> list[Outgoing]:
        c = self.counters
        if not self._limiter.allow(source.ip, now):
            c["rate_limited"] += 1
            return []
        if len(key) != KEY_LEN:
            c["malformed"] += 1
            return []
        admitted = self.admission.lookup(key)
        if admitted is None:
            c["unauthorized"] += 1
            return []
        try:
            _, payload = sealed.open_sealed(self.sealer, msg, None)
        except DecodeError as exc:
            c["bad_box" if "does not open" in str(exc) else "malformed"] += 1
            return []
        if abs(payload.timestamp_ms / 1000.0 - now) > self.config.freshness_window:
            c["stale"] += 1
            return []
        if isinstance(payload, sealed.Register):
            return self._register(key, admitted, payload, source, local_port, now)
        if isinstance(payload, sealed.Watch):
            return self._watch(msg, key, payload, source, now)
        c["unexpected"] += 1
        return []

    def _register(
        self,
        key: bytes,
        admitted: AdmittedPeer,
        reg: sealed.Register,
        source: Endpoint,
        local_port: int,
        now: float,
    ) -> list[Outgoing]:
        """Record a registration. Not answered: the answer would land in WireGuard's socket
        and be dropped there; the daemon learns what we saw from the Status to its Watch."""
        c = self.counters
        old = self.peers.get(key)
        if old is not None and reg.counter <= old.register_counter:
            c["replay"] += 1
            return []
        if reg.secondary or local_port != self.primary_port:
            if old is None:
                return []  # nothing to compare with yet; the next round will classify
            nat = classify(old.endpoint, old.addresses, source)
            entry = replace(old, secondary=source, register_counter=reg.counter, nat=nat)
            self.peers[key] = entry
            if nat != old.nat:
                c["registered"] += 1
                return self._publish(Change.CHANGED, entry, now)
            return []
        if old is None and len(self.peers) >= self.config.max_peers:
            c["table_full"] += 1
            return []
        c["registered"] += 1
        name = admitted.name or reg.name
        unchanged = (
            old is not None
            and old.endpoint == source
            and old.addresses == reg.addresses
            and old.name == name
            and old.allowed_ips == admitted.allowed_ips
        )
        entry = PeerEntry(
            key=key,
            name=name,
            endpoint=source,
            addresses=reg.addresses,
            nat=old.nat if unchanged and old is not None else NatKind.UNKNOWN,
            since=now if old is None or old.endpoint != source else old.since,
            last_seen=now,
            register_counter=reg.counter,
            watch_counter=0 if old is None else old.watch_counter,
            software=reg.software,
            allowed_ips=admitted.allowed_ips,
            # a new mapping invalidates the alternate port's observation (re-probed by the daemon)
            secondary=None if old is None or old.endpoint != source else old.secondary,
        )
        if unchanged:  # the common case, a refresh: nothing published changes
            self.peers.pop(key, None)
            self.peers[key] = entry
            self._events.append(PeerEvent(Change.REFRESHED, entry))
            return []
        entry = replace(entry, nat=classify(source, reg.addresses, entry.secondary))
        if old is None:
            return self._publish(Change.ADDED, entry, now)
        return self._publish(Change.CHANGED, entry, now)

    def _watch(
        self, msg: stun.StunMessage, key: bytes, watch: sealed.Watch, source: Endpoint, now: float
    ) -> list[Outgoing]:
        c = self.counters
        entry = self.peers.get(key)
        known = self.watchers.get(key)
        floor = max(0 if entry is None else entry.watch_counter, 0 if known is None else known[2])
        if watch.counter <= floor:
            c["replay"] += 1
            return []
        if known is None and len(self.watchers) >= self.config.max_watchers:
            c["table_full"] += 1
            return []
        if entry is not None:
            entry = replace(entry, watch_counter=watch.counter)
            self.peers[key] = entry
        self.watchers.pop(key, None)
        self.watchers[key] = (source, now, watch.counter)
        c["watched"] += 1
        status = sealed.Status(
            timestamp_ms=int(now * 1000),
            counter=self._next_counter(now),
            watch_counter=watch.counter,
            register_counter=0 if entry is None else entry.register_counter,
            observed=None if entry is None else entry.endpoint,
            nat=NatKind.UNKNOWN if entry is None else entry.nat,
            serial=self.zone.serial,
        )
        box = self.sealer.seal(
            key, sealed.encode_payload(status, msg.transaction_id), self._nonce(24)
        )
        data = stun.binding_success(
            msg, source, extra=((stun.ATTR_WG_SEALED, box),), software=self.config.software
        )
        return [(data, source)]

    # -- time -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When ``expire`` next has something to do (the earliest expiry), or None."""
        times = [e.last_seen for e in self._oldest(self.peers)]
        times += [t for _, t, _ in self._oldest(self.watchers)]
        return min(times) + self.config.expiry if times else None

    @staticmethod
    def _oldest(table: Mapping[bytes, _V]) -> list[_V]:
        for value in table.values():
            return [value]
        return []

    def expire(self, now: float) -> list[Outgoing]:
        """Withdraw peers and forget watchers not refreshed within ``expiry`` seconds."""
        # Both tables are kept in refresh order (an entry is re-inserted when refreshed), so
        # the stale ones are at the front and this costs O(expired), not O(peers).
        limit = now - self.config.expiry
        while self.watchers:
            key, (_, seen, _) = next(iter(self.watchers.items()))
            if seen >= limit:
                break
            del self.watchers[key]
        out: list[Outgoing] = []
        while self.peers:
            entry = next(iter(self.peers.values()))
            if entry.last_seen >= limit:
                break
            out += self._withdraw(entry, now)
        return out

    def events(self) -> list[PeerEvent]:
        """Peer changes since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _apply_admission(entry: PeerEntry, admitted: AdmittedPeer) -> PeerEntry:
        name = admitted.name or entry.name
        return replace(entry, name=name, allowed_ips=admitted.allowed_ips)

    def _withdraw(self, entry: PeerEntry, now: float) -> list[Outgoing]:
        del self.peers[entry.key]
        self.zone.remove(entry.key)
        self._events.append(PeerEvent(Change.WITHDRAWN, entry))
        return self._push(entry.key, now)

    def _publish(self, change: Change, entry: PeerEntry, now: float) -> list[Outgoing]:
        if entry.last_seen == now:
            self.peers.pop(entry.key, None)  # a refresh moves to the back (see expire)
        self.peers[entry.key] = entry
        self.zone.upsert(published(entry))
        self._events.append(PeerEvent(change, entry))
        return self._push(entry.key, now)

    def _next_counter(self, now: float) -> int:
        # Microseconds of wall time, and strictly increasing: survives registrar restarts.
        self._push_counter = max(self._push_counter + 1, int(now * 1_000_000))
        return self._push_counter

    def _push(self, changed: bytes, now: float) -> list[Outgoing]:
        """Tell every watcher but the changed peer itself to re-resolve ``changed`` now."""
        out: list[Outgoing] = []
        for key, (addr, _, _) in self.watchers.items():
            if key == changed:
                continue
            push = sealed.Push(
                timestamp_ms=int(now * 1000),
                counter=self._next_counter(now),
                serial=self.zone.serial,
                changed=(changed,),
            )
            out.append(
                (
                    sealed.build_sealed_request(
                        self.sealer,
                        None,
                        key,
                        push,
                        self._nonce(12),
                        self._nonce(24),
                        msg_type=stun.BINDING_INDICATION,
                    ),
                    addr,
                )
            )
        self.counters["pushed"] += len(out)
        return out


def classify(
    endpoint: Endpoint, addresses: tuple[Endpoint, ...], secondary: Endpoint | None
) -> NatKind:
    """NAT class from what we saw: no NAT when the mapping is one of the peer's own addresses,
    symmetric when the alternate port saw another mapping, cone when it saw the same."""
    if endpoint in addresses:
        return NatKind.NONE
    if secondary is None:
        return NatKind.UNKNOWN
    if secondary == endpoint:
        return NatKind.CONE
    return NatKind.SYMMETRIC
