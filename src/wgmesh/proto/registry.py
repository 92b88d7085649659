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

Boxes open and seal with the shared key kept in the sender's row or watcher record (see
wgmesh.proto.peerrow; never persisted, PeerEntry does not carry it), stored once a box opened
with it and the message was accepted. Other senders pay the X25519 step, after the rate limit
and the admission check.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeVar

from wgmesh.errors import DecodeError
from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import KEY_LEN
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.peerrow import (
    NATS,
    NO_KEY,
    ROW,
    SAME,
    SHARED_AT,
    WATCHER,
    WATCHER_SHARED_AT,
    pack_endpoint,
    pack_row,
    pack_seen,
    row_parts,
    shared_key,
    unpack_endpoint,
    unpack_seen,
)
from wgmesh.proto.ratelimit import RateLimitConfig, RateLimiter

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
    out = [Candidate(entry.endpoint, CandidateKind.PUBLIC, 0)]
    seen = {entry.endpoint}
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
        self._rows: OrderedDict[bytes, bytes] = OrderedDict()
        """Each peer's packed PeerEntry (wgmesh.proto.peerrow), oldest refresh first."""
        self.watchers: dict[bytes, bytes] = {}
        """Per key, for pushes: last Watch time, Watch counter and control address, packed
        (peerrow.WATCHER), oldest Watch first."""
        self._limiter = RateLimiter(config.rate_limit)
        self._plain = stun.PlainBindingResponder(config.software)
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

    @property
    def peers(self) -> Mapping[bytes, PeerEntry]:
        """The registered peers, oldest refresh first (read-only: unpacked when read)."""
        return PeerTable(self._rows, self._entry)

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
            try:
                self._rows[entry.key] = _row(entry, NO_KEY)  # the shared key is never stored
            except (struct.error, ValueError):
                continue  # a counter out of range: not a row we wrote
            self.zone.upsert(published(entry))
        # expire() relies on refresh order
        rows = sorted(self._rows.items(), key=lambda kv: ROW.unpack_from(kv[1])[0])
        self._rows = OrderedDict(rows)

    def set_admission(self, admission: Admission, now: float) -> list[Outgoing]:
        """Replace the admission list (SIGHUP); withdraw or republish affected peers."""
        previous, self.admission = self.admission, admission
        for key in [key for key in self.watchers if admission.lookup(key) is None]:
            del self.watchers[key]  # and its shared key
        out: list[Outgoing] = []
        for key, row in list(self._rows.items()):
            admitted = admission.lookup(key)
            if admitted == previous.lookup(key):
                continue
            entry = self._entry(key, row, previous)
            if admitted is None:
                out += self._withdraw(entry, now)
                continue
            updated = self._apply_admission(entry, admitted)
            if updated != entry:
                shared = row[SHARED_AT : SHARED_AT + 32]
                out += self._publish(Change.CHANGED, updated, now, shared)
        return out

    # -- the datagram path ----------------------------------------------------------------

    def answer_plain_binding(self, data: bytes, host: str, port: int) -> bytes | None:
        """The fast path of :meth:`receive`: the answer to a plain Binding Request (no
        attributes but FINGERPRINT) from the IPv4 socket address ``(host, port)``, counted as
        ``receive`` counts it; None for any other datagram, which then goes to ``receive``.
        Plain Binding Requests are not rate limited on either path (only sealed ones are)."""
        reply = self._plain.answer(data, host, port)
        if reply is not None:
            c = self.counters
            c["datagrams"] += 1
            c["binding"] += 1
        return reply

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
        box = msg.get(stun.ATTR_WG_SEALED)
        if key is None or box is None:
            c["binding"] += 1
            return [(stun.binding_success(msg, source, software=self.config.software), source)]
        return self._sealed(msg, key, box, source, local_port, now)

    def _sealed(
        self,
        msg: stun.StunMessage,
        key: bytes,
        box: bytes,
        source: Endpoint,
        local_port: int,
        now: float,
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
        shared = self._shared_key(key)
        try:
            if shared is None:  # a low-order key: no box can open
                raise DecodeError("sealed box does not open")
            plaintext = sealed.open_box(shared, box)
        except DecodeError:
            c["bad_box"] += 1
            return []
        try:
            payload = sealed.decode_payload(plaintext, msg.transaction_id)
        except DecodeError:
            c["malformed"] += 1
            return []
        if abs(payload.timestamp_ms / 1000.0 - now) > self.config.freshness_window:
            c["stale"] += 1
            return []
        if isinstance(payload, sealed.Register):
            return self._register(key, admitted, payload, source, local_port, now, shared)
        if isinstance(payload, sealed.Watch):
            return self._watch(msg, key, payload, source, now, shared)
        c["unexpected"] += 1
        return []

    def _shared_key(self, key: bytes) -> bytes | None:
        """The shared key kept with ``key``'s row or watcher, else computed now (X25519)."""
        row = self._rows.get(key)
        if row is not None:
            shared = shared_key(row, SHARED_AT)
            if shared is not None:
                return shared
        watcher = self.watchers.get(key)
        if watcher is not None:
            return watcher[WATCHER_SHARED_AT : WATCHER_SHARED_AT + 32]
        return self.sealer.shared_key(key)

    def _register(
        self,
        key: bytes,
        admitted: AdmittedPeer,
        reg: sealed.Register,
        source: Endpoint,
        local_port: int,
        now: float,
        shared: bytes,
    ) -> list[Outgoing]:
        """Record a registration (``shared``: the key its box opened with). Not answered: the
        answer would land in WireGuard's socket and be dropped there; the daemon learns what we
        saw from the Status to its Watch."""
        c = self.counters
        row = self._rows.get(key)
        head = None if row is None else ROW.unpack_from(row)
        if head is not None and reg.counter <= head[2]:
            c["replay"] += 1
            return []
        if reg.secondary or local_port != self.primary_port:
            if row is None:
                return []  # nothing to compare with yet; the next round will classify
            old = self._entry(key, row)
            nat = classify(old.endpoint, old.addresses, source)
            entry = replace(old, secondary=source, register_counter=reg.counter, nat=nat)
            self._rows[key] = _row(entry, shared)
            if nat != old.nat:
                c["registered"] += 1
                return self._publish(Change.CHANGED, entry, now, shared)
            return []
        if row is None and len(self._rows) >= self.config.max_peers:
            c["table_full"] += 1
            return []
        c["registered"] += 1
        name = admitted.name or reg.name
        seen = pack_seen(source, reg.addresses, name)
        if (
            row is not None
            and head is not None
            and head[5] == len(seen)
            and row.startswith(seen, ROW.size)
        ):
            # the common case, a refresh: nothing published changes (the allowed IPs neither:
            # set_admission republishes when they change)
            _, since, _, watch_counter, nat, _, secondary_len, _ = head
            secondary = row[ROW.size + len(seen) : ROW.size + len(seen) + secondary_len]
            self._rows[key] = b"".join((
                ROW.pack(now, since, reg.counter, watch_counter, nat, len(seen), secondary_len,
                         shared),
                seen, secondary, reg.software.encode(),
            ))  # fmt: skip
            self._rows.move_to_end(key)
            entry = PeerEntry(key, name, source, reg.addresses, NATS[nat], since, now, reg.counter,
                              watch_counter, reg.software, admitted.allowed_ips,
                              _secondary(secondary, source))  # fmt: skip
            self._events.append(PeerEvent(Change.REFRESHED, entry))
            return []
        previous = None if row is None else self._entry(key, row)
        # a new mapping invalidates the alternate port's observation (re-probed by the daemon)
        kept = previous if previous is not None and previous.endpoint == source else None
        secondary_ep = None if kept is None else kept.secondary
        entry = PeerEntry(
            key=key,
            name=name,
            endpoint=source,
            addresses=reg.addresses,
            nat=classify(source, reg.addresses, secondary_ep),
            since=now if kept is None else kept.since,
            last_seen=now,
            register_counter=reg.counter,
            watch_counter=0 if previous is None else previous.watch_counter,
            software=reg.software,
            allowed_ips=admitted.allowed_ips,
            secondary=secondary_ep,
        )
        change = Change.ADDED if previous is None else Change.CHANGED
        return self._publish(change, entry, now, shared)

    def _watch(
        self,
        msg: stun.StunMessage,
        key: bytes,
        watch: sealed.Watch,
        source: Endpoint,
        now: float,
        shared: bytes,
    ) -> list[Outgoing]:
        c = self.counters
        row = self._rows.get(key)
        entry = None if row is None else self._entry(key, row)
        known = self.watchers.get(key)
        floor = max(0 if entry is None else entry.watch_counter,
                    0 if known is None else WATCHER.unpack_from(known)[1])  # fmt: skip
        if watch.counter <= floor:
            c["replay"] += 1
            return []
        if known is None and len(self.watchers) >= self.config.max_watchers:
            c["table_full"] += 1
            return []
        if entry is not None:
            entry = replace(entry, watch_counter=watch.counter)
            self._rows[key] = _row(entry, shared)
        self.watchers.pop(key, None)
        self.watchers[key] = WATCHER.pack(now, watch.counter, shared) + pack_endpoint(source)
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
        box = sealed.seal_box(
            shared, sealed.encode_payload(status, msg.transaction_id), self._nonce(24)
        )
        data = stun.binding_success(
            msg, source, extra=((stun.ATTR_WG_SEALED, box),), software=self.config.software
        )
        return [(data, source)]

    # -- time -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When ``expire`` next has something to do (the earliest expiry), or None."""
        times = [ROW.unpack_from(row)[0] for row in self._oldest(self._rows)]
        times += [WATCHER.unpack_from(w)[0] for w in self._oldest(self.watchers)]
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
        stale = []
        for key, watcher in self.watchers.items():  # one pass: a dict's front is slow to find
            if WATCHER.unpack_from(watcher)[0] >= limit:
                break
            stale.append(key)
        for key in stale:
            del self.watchers[key]
        out: list[Outgoing] = []
        while self._rows:
            key, row = next(iter(self._rows.items()))
            if ROW.unpack_from(row)[0] >= limit:
                break
            out += self._withdraw(self._entry(key, row), now)
        return out

    def events(self) -> list[PeerEvent]:
        """Peer changes since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- internals --------------------------------------------------------------------------

    def _entry(self, key: bytes, row: bytes, admission: Admission | None = None) -> PeerEntry:
        """Unpack a row. The allowed IPs are not stored: they are the admission file's."""
        last_seen, since, register_counter, watch_counter, nat, *_ = ROW.unpack_from(row)
        seen, secondary, software = row_parts(row)
        endpoint, addresses, name = unpack_seen(seen)
        admitted = (admission or self.admission).lookup(key)
        return PeerEntry(key, name, endpoint, addresses, NATS[nat], since, last_seen,
                         register_counter, watch_counter, software,
                         () if admitted is None else admitted.allowed_ips,
                         _secondary(secondary, endpoint))  # fmt: skip

    @staticmethod
    def _apply_admission(entry: PeerEntry, admitted: AdmittedPeer) -> PeerEntry:
        name = admitted.name or entry.name
        return replace(entry, name=name, allowed_ips=admitted.allowed_ips)

    def _withdraw(self, entry: PeerEntry, now: float) -> list[Outgoing]:
        del self._rows[entry.key]
        self.zone.remove(entry.key)
        self._events.append(PeerEvent(Change.WITHDRAWN, entry))
        return self._push(entry.key, now)

    def _publish(
        self, change: Change, entry: PeerEntry, now: float, shared: bytes
    ) -> list[Outgoing]:
        self._rows[entry.key] = _row(entry, shared)
        if entry.last_seen == now:
            self._rows.move_to_end(entry.key)  # a refresh moves to the back (see expire)
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
        for key, watcher in self.watchers.items():
            if key == changed:
                continue
            _, _, shared = WATCHER.unpack_from(watcher)
            addr, _ = unpack_endpoint(watcher, WATCHER.size)
            push = sealed.Push(
                timestamp_ms=int(now * 1000),
                counter=self._next_counter(now),
                serial=self.zone.serial,
                changed=(changed,),
            )
            out.append(
                (
                    sealed.build_sealed_with(
                        shared,
                        None,
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


class PeerTable(Mapping[bytes, PeerEntry]):
    """A read-only view of the registry's rows, each unpacked into a PeerEntry when read."""

    def __init__(self, rows: Mapping[bytes, bytes], unpack: Callable[[bytes, bytes], PeerEntry]):
        self._rows = rows
        self._unpack = unpack

    def __getitem__(self, key: bytes) -> PeerEntry:
        return self._unpack(key, self._rows[key])

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _row(entry: PeerEntry, shared: bytes) -> bytes:
    """Pack a PeerEntry (its allowed IPs left out, see Registry._entry) and the peer's shared
    key (peerrow.NO_KEY: none yet)."""
    if entry.secondary is None:
        secondary = b""
    elif entry.secondary == entry.endpoint:
        secondary = SAME
    else:
        secondary = pack_endpoint(entry.secondary)
    seen = pack_seen(entry.endpoint, entry.addresses, entry.name)
    return pack_row(entry.last_seen, entry.since, entry.register_counter, entry.watch_counter,
                    entry.nat, seen, secondary, entry.software, shared)  # fmt: skip


def _secondary(packed: bytes, endpoint: Endpoint) -> Endpoint | None:
    if not packed:
        return None
    return endpoint if packed == SAME else unpack_endpoint(packed)[0]


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
