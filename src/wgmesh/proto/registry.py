"""The registrar's state machine: admission, freshness, replay, NAT class, expiry, pushes.

Sans-IO in the aioquic manner: the adapter hands over each datagram with
``receive(data, source, local_port, now)`` and sends what it returns; it calls ``expire(now)``
when ``next_timer()`` says, and drains ``events()`` to persist and log peer changes.

What it accepts (docs/protocol.md has the wire format):

- a plain STUN Binding Request (RFC 8489 section 7.3): answered with XOR-MAPPED-ADDRESS;
- a sealed ``Register`` from a peer's WireGuard port: its source is the peer's mapping for the
  source's address family, recorded only if the box opens with the key in ATTR_WG_PUBLIC_KEY,
  the key is admitted, the timestamp is within the freshness window and the counter is above
  every counter seen for that key;
- a sealed ``Register`` with the secondary flag, sent to the alternate port: not a mapping, only
  compared with the mapping of the same family to tell a cone NAT from a symmetric one;
- a sealed ``Watch`` from the daemon's ordinary control socket: answered with a sealed
  ``Status`` (the observed WireGuard mappings), and the source is remembered so that peer
  changes are pushed there (sealed ``Push`` indications).

One mapping per address family: a peer that registers over IPv4 and over IPv6 keeps both
(:attr:`PeerEntry.mappings`, IPv4 first), each with its own last-registered time. The first is
the published public candidate (what wgsd-client reads), the other an IPv6 candidate. A mapping
not registered within ``RegistryConfig.expiry`` is dropped (republished, pushed) while the other
family keeps registering; the peer is withdrawn when no mapping is left. Expiry stays O(due):
each row (and each watcher) sits in a wheel by its deadline (wgmesh.proto.deadlines, a slot per
key; a refresh updates the row in place and leaves the wheel alone), so
:meth:`Registry.expire` finds the peers with no fresh mapping at all among the few that are
due; a stale mapping beside a fresh one is found when the peer's row is next touched (any
accepted Register, secondary probe or Watch of that peer; the refresh fast path checks it with
one float comparison), so it is dropped at most one probe interval (20 s) after it went stale.
``since`` (TXT ``since=``) is kept for the first mapping only: it changes when the published
public candidate does.

Boxes open and seal with the shared key kept in the sender's row or watcher record (see
wgmesh.proto.peerrow; never persisted, PeerEntry does not carry it), stored once a box opened
with it and the message was accepted. Other senders pay the X25519 step, after the rate limit
and the admission check.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace

from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto import changerequest, sealed, stun
from wgmesh.proto.deadlines import Deadlines
from wgmesh.proto.dnssd import Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.fanout import Fanout
from wgmesh.proto.keys import KEY_LEN
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.pathreport import PathBook
from wgmesh.proto.peerentry import (
    Admission,
    AdmittedPeer,
    Change,
    Event,
    PeerEntry,
    PeerEvent,
    RegistryConfig,
    Stored,
    candidates_of,
    carried_over,
    classify,
    entry_of,
    family_of,
    nat_of,
    observed_after,
    of_family,
    published,
    refresh_event,
    shown_of,
)
from wgmesh.proto.peerrow import (
    NATS,
    NO_KEY,
    SHARED_AT,
    last_seen,
    pack_endpoint,
    pack_row,
    refresh,
    refresh_seen,
    register_counter,
    renewed_watch,
    row_watch_counter,
    shared_key,
    watch_part,
    with_watch_counter,
)
from wgmesh.proto.ratelimit import RateLimiter
from wgmesh.proto.refresh import registration, sealed_request
from wgmesh.proto.relay import Relay, RelayConfig
from wgmesh.proto.relayctl import IPAddress, RelayControl
from wgmesh.proto.roster import RosterBook
from wgmesh.proto.watchers import Watchers
from wgmesh.proto.watchpath import watch_fields

__all__ = [
    "COOKIE_EPOCH",
    "Admission",
    "AdmittedPeer",
    "Change",
    "Outgoing",
    "PeerEntry",
    "PeerEvent",
    "PeerTable",
    "Registry",
    "RegistryConfig",
    "candidates_of",
    "classify",
    "nat_of",
    "published",
    "roster_of",
]

Outgoing = tuple[bytes, Endpoint]
COOKIE_EPOCH = 60.0
"""Seconds a return-routability cookie is issued for (it is accepted one epoch longer)."""


_STATUS_NAT = tuple(sealed.nat_code(nat) for nat in NATS)
"""A row's NAT code -> the code a Status carries."""


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
        self._wrap = sealer.key_wrap()
        self.admission = admission
        self.roster = roster_of(admission)
        """The mesh's members as sealed Rosters carry them (wgmesh.proto.roster)."""
        self.zone = zone
        self._nonce = nonce
        self.primary_port = primary_port
        self._rows: dict[bytes, bytes] = {}
        """Each peer's packed PeerEntry (wgmesh.proto.peerrow), updated in place."""
        self._deadlines = Deadlines(config.expiry / 64)
        """When to look at each row and each watcher again for expiry (a key once, at the
        earliest of its row's and its watcher's deadlines: wgmesh.proto.deadlines)."""
        self.watchers = Watchers(self._rows)
        """The watchers, for pushes: in their rows, or on their own (wgmesh.proto.watchers)."""
        self._limiter = RateLimiter(config.rate_limit)
        self._cookie_secret = nonce(32)  # return-routability cookies (see _cookie)
        self._fanout = Fanout(config.push_delay, self.watchers)
        self._roster_floor: dict[bytes, int] = {}
        """Per watcher, the last RosterQuery counter answered (dropped with the watcher)."""
        self._repunch_floor: dict[bytes, int] = {}
        """Per watcher, the last Repunch counter acted on (dropped with the watcher)."""
        self.paths = PathBook(config.max_path_pairs, config.path_ttl)
        """The latest reported path of each pair, for the status page and ``wgmesh mesh``."""
        self._key_limiter = RateLimiter(config.key_rate_limit)
        self._agreements = RateLimiter(config.agreement_limit)
        self._plain = stun.PlainBindingResponder(config.software)
        self._events: list[Event] = []
        self._push_counter = 0
        self.relay = self._relay_control(RelayConfig(), None)
        """RelayRequests, RelayBinds and the allocations (wgmesh.proto.relayctl); off until
        :meth:`enable_relay`."""
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "datagrams", "binding", "registered", "watched", "oversize", "not_stun",
                "malformed", "rate_limited", "unauthorized", "bad_box", "stale", "replay",
                "key_limited", "agreement_limited", "unproven", "unpadded",
                "unexpected", "table_full", "pushed", "roster", "repunch", "change_request",
                "path_report",
            ),
            0,
        )  # fmt: skip

    def enable_relay(self, config: RelayConfig, address: IPAddress) -> None:
        """Relay for pairs that cannot go direct, from ``config``'s ports on ``address``."""
        self.relay = self._relay_control(config, address)

    def _relay_control(self, config: RelayConfig, address: IPAddress | None) -> RelayControl:
        return RelayControl(
            Relay(config), address or ipaddress.IPv4Address(0), self, self._nonce,
            self._key_limiter, self.config.freshness_window, self.config.software,
        )  # fmt: skip

    def receive_relay(self, data: bytes, source: Endpoint, port: int, now: float) -> list[Outgoing]:
        """A STUN-framed datagram that arrived at relay ``port`` (a RelayBind, or junk)."""
        return self.relay.receive_bind(data, source, port, now)

    # -- what the relay's control asks (wgmesh.proto.relayctl.Peers) -------------------------

    def watcher_address(self, key: bytes) -> Endpoint | None:
        watcher = self.watchers.find(key)
        return None if watcher is None else watcher.address

    def stored_key(self, key: bytes) -> bytes | None:
        return self._stored_key(key)

    def last_seen(self, key: bytes) -> float:
        """When ``key`` last registered (any family), without unpacking its row."""
        return last_seen(self._rows[key])

    def is_registered(self, key: bytes) -> bool:
        return key in self._rows

    def next_counter(self, now: float) -> int:
        return self._next_counter(now)

    @property
    def rows(self) -> Mapping[bytes, bytes]:
        """Each registered peer's packed row (wgmesh.proto.peerrow; read-only: what the store
        folds its refresh journal from)."""
        return self._rows

    @property
    def peers(self) -> Mapping[bytes, PeerEntry]:
        """The registered peers, oldest refresh first (read-only: unpacked when read)."""
        return PeerTable(self._rows, self._entry)

    # -- state loading --------------------------------------------------------------------

    def restore(self, entries: Iterable[PeerEntry | Stored], now: float) -> int:
        """Load persisted peers, with their shared keys where they were stored wrapped and
        unwrap under our private key (else the first message pays its X25519, as a first
        contact); those already past expiry are left out. The zone's serial
        moves on by exactly one from the one it was created with (the saved serial), whatever
        was restored: the zone may differ from what secondaries hold (peers expired while we
        were down), and a serial must only ever grow (RFC 1982), never jump by the peer count.
        Only into an empty registry (at startup): raises LocalProtocolError otherwise. Returns
        how many entries were skipped as damaged (a counter or a time out of range). An entry
        whose key is no longer admitted is withdrawn (an event, so the store deletes it, as
        after a reload that revokes it), and one whose stale mapping was dropped is written
        whole again (a moved Refresh)."""
        if self._rows or self.watchers:
            raise LocalProtocolError("restore() is for an empty registry (at startup)")
        saved = self.zone.serial
        damaged = 0
        for item in entries:
            stored, wrapped = item if isinstance(item, Stored) else (item, None)
            admitted = self.admission.lookup(stored.key)
            if admitted is None:  # revoked while we were down: withdrawn, as a reload does
                self._events.append(PeerEvent(Change.WITHDRAWN, stored))
                continue
            entry = self._without_stale(stored, now)
            if entry is None:
                continue
            entry = self._apply_admission(entry, admitted)
            shared = self._wrap.unwrap(entry.key, wrapped) or NO_KEY
            try:
                row = _row(entry, shared)
                self.zone.upsert(published(entry))  # (checks before it changes anything)
            except (struct.error, ValueError, OverflowError):  # (int() of an infinite since)
                damaged += 1  # a counter or a time out of range: not a row we wrote
                continue
            self._rows[entry.key] = row
            if entry.mappings != stored.mappings:  # a stale one dropped: the store's row has it
                self._events.append(refresh_event(entry.key, row, entry.allowed_ips, moved=True))
        self.zone.set_serial((saved + 1) % 2**32 or 1)
        self._deadlines = Deadlines(self.config.expiry / 64)
        for key, row in self._rows.items():
            self._deadlines.place(key, last_seen(row) + self.config.expiry)
        return damaged

    def wrapped_key(self, key: bytes) -> bytes | None:
        """``key``'s shared key as the database stores it (wgmesh.proto.keywrap); None when
        the peer has no row or its row no key yet."""
        row = self._rows.get(key)
        shared = None if row is None else shared_key(row, SHARED_AT)
        return None if shared is None else self._wrap.wrap(key, shared)

    def set_admission(self, admission: Admission, now: float) -> list[Outgoing]:
        """Replace the admission list (SIGHUP); withdraw or republish affected peers."""
        previous, self.admission = self.admission, admission
        self.roster = roster_of(admission)
        for key in [key for key in self.watchers if admission.lookup(key) is None]:
            self._drop_watcher(key)  # and its shared key, with its row below
            if key not in self._rows:
                self._deadlines.forget(key)
        out: list[Outgoing] = []
        for key, row in list(self._rows.items()):
            admitted = admission.lookup(key)
            if admitted == previous.lookup(key):
                continue
            entry = self._entry(key, row, previous)
            if admitted is None:
                out += self._withdraw(entry, now)
                self._deadlines.forget(key)
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

    @property
    def plain_binding(self) -> stun.PlainBindingResponder:
        """The responder behind :meth:`answer_plain_binding`, for a batched socket that writes
        its answers in place (``answer_in_place``); such a socket reports what it answered to
        :meth:`count_plain_bindings`."""
        return self._plain

    def count_plain_bindings(self, n: int) -> None:
        """Count ``n`` plain Binding Requests answered through :attr:`plain_binding` as
        :meth:`answer_plain_binding` counts each one."""
        c = self.counters
        c["datagrams"] += n
        c["binding"] += n

    def answer_change_request(
        self, data: bytes, source: Endpoint, *, has_other_port: bool
    ) -> changerequest.ChangedAnswer | None:
        """The answer to a plain Binding Request carrying an RFC 5780 CHANGE-REQUEST (the NAT
        filtering test of ``wgmesh netcheck``): one datagram toward ``source``, at most twice
        the request, from the other STUN port or a 420 (wgmesh.proto.changerequest); None for
        any other datagram, which then goes to :meth:`receive`. Not rate limited, like any
        plain Binding Request."""
        out = changerequest.answer(data, source, has_other_port=has_other_port)
        if out is not None:
            c = self.counters
            c["datagrams"] += 1
            c["change_request"] += 1
        return out

    def receive(self, data: bytes, source: Endpoint, local_port: int, now: float) -> list[Outgoing]:
        """Handle one datagram; returns the datagrams to send. Never raises on bad input."""
        c = self.counters
        c["datagrams"] += 1
        if len(data) > self.config.max_datagram:
            c["oversize"] += 1
            return []
        fast = sealed_request(data)  # the layout our daemons send, read without a decode
        if fast is not None:
            return self._sealed(*fast, source, local_port, now, len(data))
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
        return self._sealed(msg.transaction_id, key, box, source, local_port, now, len(data))

    def _refresh(
        self,
        key: bytes,
        admitted: AdmittedPeer,
        plaintext: bytes,
        tid: bytes,
        source: Endpoint,
        now: float,
    ) -> bool:
        """The fast path (wgmesh.proto.refresh) for a box opened with ``key``'s stored shared
        key: True when it was a Register that changes nothing published, and is handled;
        False, with nothing changed or counted, when the full path must judge it. The checks
        are the full path's, in its order."""
        row = self._rows.get(key)
        if row is None:
            return False
        reg = registration(plaintext, tid)
        if (
            reg is None
            or abs(reg.timestamp_ms / 1000.0 - now) > self.config.freshness_window
            or reg.counter <= register_counter(row)
        ):
            return False
        name = admitted.name.encode() if admitted.name else reg.name
        seen = b"".join((bytes((reg.addresses,)), pack_endpoint(source), reg.seen_tail, name))
        shared = row[SHARED_AT : SHARED_AT + 32]
        done = refresh_seen(row, seen, source, now, reg.counter, reg.software, shared,
                            now - self.config.expiry)  # fmt: skip
        if done is None:
            return False
        if not self._key_limiter.allow(key, now):  # only the key's owner can spend this
            self.counters["key_limited"] += 1
            return True
        self.counters["registered"] += 1
        self._rows[key] = done[0]
        self._events.append(refresh_event(key, done[0], admitted.allowed_ips))
        return True

    def _steady_watch(
        self, key: bytes, plaintext: bytes, tid: bytes, source: Endpoint, now: float,
        shared: bytes,
    ) -> list[Outgoing] | None:  # fmt: skip
        """The fast path for a Watch (wgmesh.proto.watchpath) whose box opened with ``key``'s
        stored shared key: its answer when it is a proven watcher's Watch from the address it
        watches from that changes nothing but its counter and time (``[]`` when the key's
        limit refused it); None, with nothing changed or counted, when the full path
        (:meth:`_watch`) must judge it. The checks are the full path's: those that change and
        charge nothing first, then the key's limit, which the full path also applies to a
        Watch that passed them all."""
        row = self._rows.get(key)
        if row is None:
            return None
        watch = watch_fields(plaintext, tid)
        if (
            watch is None
            or abs(watch.timestamp_ms / 1000.0 - now) > self.config.freshness_window
            or watch.counter <= row_watch_counter(row)
        ):
            return None
        cookie = self._cookie(key, source, now)
        if watch.cookie != cookie and watch.cookie != self._cookie(key, source, now - COOKIE_EPOCH):
            return None  # (the first Watch of an epoch echoes the last one's: it is proven too)
        renewed = renewed_watch(row, pack_endpoint(source), now, watch.counter,
                                now - self.config.expiry)  # fmt: skip
        if renewed is None:
            return None
        if not self._key_limiter.allow(key, now):  # only the key's owner can spend this
            self.counters["key_limited"] += 1
            return []
        self._rows[key], observed, register, nat = renewed
        self._fanout.watch(key, watch.interest)
        status = sealed.status_plaintext(
            tid, int(now * 1000), self._next_counter(now), watch.counter, register, observed,
            _STATUS_NAT[nat], self.zone.serial, cookie,
        )  # fmt: skip
        box = sealed.seal_box(shared, status, self._nonce(24))
        self.counters["watched"] += 1
        return [(stun.success_for(tid, source, ((stun.ATTR_WG_SEALED, box),),
                                  self.config.software), source)]  # fmt: skip

    def _sealed(
        self,
        tid: bytes,
        key: bytes,
        box: bytes,
        source: Endpoint,
        local_port: int,
        now: float,
        size: int,
    ) -> list[Outgoing]:
        c = self.counters
        if len(key) != KEY_LEN:
            c["malformed"] += 1
            return []
        admitted = self.admission.lookup(key)
        if admitted is None:
            c["unauthorized"] += 1
            return []
        shared = self._stored_key(key)
        known = shared is not None
        if shared is None:  # first contact (or a forgery): X25519, limited per source and in all
            if not self._limiter.allow(source.ip, now):
                c["rate_limited"] += 1
                return []
            if not self._agreements.allow(None, now):
                c["agreement_limited"] += 1
                return []
            shared = self.sealer.shared_key(key)
        plaintext = None if shared is None else sealed.open_or_none(shared, box)
        if shared is None or plaintext is None:  # (shared None: a low-order key)
            c["bad_box"] += 1
            if known:  # junk is what the source bucket pays for (a first contact already did)
                self._limiter.allow(source.ip, now)
            return []
        if (known and local_port == self.primary_port
                and self._refresh(key, admitted, plaintext, tid, source, now)):  # fmt: skip
            return []
        steady = self._steady_watch(key, plaintext, tid, source, now, shared) if known else None
        if steady is not None:
            return steady
        try:
            payload = sealed.decode_payload(plaintext, tid)
        except DecodeError:
            c["malformed"] += 1
            return []
        if abs(payload.timestamp_ms / 1000.0 - now) > self.config.freshness_window:
            c["stale"] += 1
            return []
        if self._replayed(key, payload):  # before the key's bucket: a replay must not spend it
            c["replay"] += 1
            return []
        if not self._key_limiter.allow(key, now):  # only the key's owner can spend this
            c["key_limited"] += 1
            return []
        if isinstance(payload, sealed.Register):
            return self._register(key, admitted, payload, source, local_port, now, shared)
        msg = stun.StunMessage(stun.BINDING_REQUEST, tid)  # what an answer echoes
        if isinstance(payload, sealed.Watch):
            return self._watch(msg, key, payload, source, now, shared, size)
        if isinstance(payload, sealed.RosterQuery):
            return self._roster(msg, key, payload, source, now, shared)
        if isinstance(payload, sealed.RelayRequest):
            return self.relay.request(msg, key, payload, source, now, shared)
        if isinstance(payload, sealed.Repunch):
            return self._repunch(key, payload, source, now)
        if isinstance(payload, sealed.PathReport):
            return self._path_report(key, payload, source, now)
        c["unexpected"] += 1
        return []

    def _replayed(self, key: bytes, payload: sealed.Payload) -> bool:
        """A message whose counter is not above the last one accepted from ``key`` for its
        kind (a replay, or older than what we acted on): refused before it costs the key's
        owner anything. Kinds without a floor here are checked by their handler."""
        if isinstance(payload, sealed.Register):
            row = self._rows.get(key)
            return row is not None and payload.counter <= register_counter(row)
        if isinstance(payload, sealed.Watch):  # a row's watcher counts in the row
            row = self._rows.get(key)
            if row is not None:
                return payload.counter <= row_watch_counter(row)
            known = self.watchers.find(key)
            return payload.counter <= (0 if known is None else known.watch_counter)
        if isinstance(payload, sealed.RosterQuery):
            return payload.counter <= self._roster_floor.get(key, 0)
        if isinstance(payload, sealed.Repunch):
            return payload.counter <= self._repunch_floor.get(key, 0)
        if isinstance(payload, sealed.PathReport):
            return self.paths.replayed(key, payload.counter)
        if isinstance(payload, sealed.RelayRequest):
            return self.relay.replayed(key, payload.counter)
        return False

    def _stored_key(self, key: bytes) -> bytes | None:
        """The shared key kept with ``key``'s row or watcher; None when there is none."""
        row = self._rows.get(key)
        if row is not None:  # (a row holding a watcher always has its key)
            return shared_key(row, SHARED_AT)
        watcher = self.watchers.find(key)
        return None if watcher is None else watcher.shared

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
        if row is not None and reg.counter <= register_counter(row):
            c["replay"] += 1
            return []
        if reg.secondary or local_port != self.primary_port:
            if row is None:
                return []  # nothing to compare with yet; the next round will classify
            return self._secondary(self._entry(key, row), reg, source, now, shared)
        if row is None and len(self._rows) >= self.config.max_peers:
            c["table_full"] += 1
            return []
        c["registered"] += 1
        name = admitted.name or reg.name
        limit = now - self.config.expiry
        if row is not None:
            done = refresh(row, source, reg.addresses, name, now, reg.counter, reg.software,
                           shared, limit)  # fmt: skip
            if done is not None:
                # the common case, a refresh: nothing published changes (the allowed IPs
                # neither: set_admission republishes when they change)
                self._rows[key] = done[0]
                gained = row[SHARED_AT : SHARED_AT + 32] == NO_KEY  # the store writes it
                self._events.append(refresh_event(key, done[0], admitted.allowed_ips, gained))
                return []
        previous = None if row is None else self._entry(key, row)
        mappings, refreshed = observed_after(previous, source, now, limit)
        since, secondary, nat = carried_over(previous, mappings, reg.addresses, now)
        entry = PeerEntry(
            key=key,
            name=name,
            mappings=mappings,
            addresses=reg.addresses,
            nat=nat,
            since=since,
            refreshed=refreshed,
            register_counter=reg.counter,
            watch_counter=0 if previous is None else previous.watch_counter,
            software=reg.software,
            allowed_ips=admitted.allowed_ips,
            secondary=secondary,
        )
        if previous is None:
            return self._publish(Change.ADDED, entry, now, shared)
        if shown_of(entry) == shown_of(previous):  # e.g. the other family's mapping came back
            self._store(entry, shared)
            self._events.append(refresh_event(key, self._rows[key], admitted.allowed_ips,
                                              moved=True))  # fmt: skip
            return []
        return self._publish(Change.CHANGED, entry, now, shared)

    def _secondary(
        self,
        old: PeerEntry,
        reg: sealed.Register,
        source: Endpoint,
        now: float,
        shared: bytes,
    ) -> list[Outgoing]:
        """A probe to the alternate port: compared with the mapping of its family, if any."""
        fresh = self._without_stale(old, now) or old  # none fresh: expire() withdraws it
        secondary = fresh.secondary
        if of_family(fresh.mappings, source.family) is not None:
            others = [ep for ep in secondary if ep.family != source.family]
            secondary = tuple(sorted((*others, source), key=family_of))
        entry = replace(fresh, secondary=secondary, register_counter=reg.counter,
                        nat=nat_of(fresh.mappings, fresh.addresses, secondary))  # fmt: skip
        if shown_of(entry) != shown_of(old):
            self.counters["registered"] += 1
            return self._publish(Change.CHANGED, entry, now, shared)
        entry = self._store(entry, shared)  # written whole: the floor and what the port saw
        self._events.append(refresh_event(entry.key, self._rows[entry.key], entry.allowed_ips,
                                          moved=True))  # fmt: skip
        return []

    def _watch(
        self,
        msg: stun.StunMessage,
        key: bytes,
        watch: sealed.Watch,
        source: Endpoint,
        now: float,
        shared: bytes,
        size: int,
    ) -> list[Outgoing]:
        """The Status answering ``watch`` (``size`` bytes on the wire), and the pushes a stale
        mapping's withdrawal causes. Toward a source that has not proven it receives (no valid
        cookie) the Status goes out only when it is no larger than the Watch: never more bytes
        out than in toward an unproven address (daemons pad their Watches for this)."""
        c = self.counters
        row = self._rows.get(key)
        entry = None if row is None else self._entry(key, row)
        known = key in self.watchers  # (its counter floor was checked: _replayed)
        cookie = self._cookie(key, source, now)
        proven = watch.cookie == cookie or watch.cookie == self._cookie(
            key, source, now - COOKIE_EPOCH
        )
        if proven and not known and len(self.watchers) >= self.config.max_watchers:
            c["table_full"] += 1
            return []
        pushes: list[Outgoing] = []
        if row is not None and entry is not None:
            fresh = self._without_stale(entry, now) or entry  # none fresh: expire() withdraws it
            if fresh is entry and shared_key(row, SHARED_AT) == shared:
                self._rows[key] = with_watch_counter(row, watch.counter)  # all that changes
            elif fresh is entry:  # a restored row without its key gains it
                self._store_gaining(replace(entry, watch_counter=watch.counter), shared)
            else:  # a stale mapping beside a fresh one: dropped now
                entry = replace(fresh, watch_counter=watch.counter)
                pushes = self._publish(Change.CHANGED, entry, now, shared)
        if proven:  # the source answered our last Status: it may receive pushes and rosters
            if not known and entry is None:  # new to both tables: not in the wheel yet
                self._deadlines.place(key, now + self.config.expiry)
            self.watchers.note(key, now, watch.counter, shared, source)
            self._fanout.watch(key, watch.interest)
        status = sealed.Status(
            timestamp_ms=int(now * 1000),
            counter=self._next_counter(now),
            watch_counter=watch.counter,
            register_counter=0 if entry is None else entry.register_counter,
            observed=() if entry is None else entry.mappings,
            nat=NatKind.UNKNOWN if entry is None else entry.nat,
            serial=self.zone.serial,
            proven=proven,
            cookie=cookie,
        )
        box = sealed.seal_box(
            shared, sealed.encode_payload(status, msg.transaction_id), self._nonce(24)
        )
        data = stun.binding_success(
            msg, source, extra=((stun.ATTR_WG_SEALED, box),), software=self.config.software
        )
        if not proven:
            if len(data) > size:  # an unpadded Watch: no answer larger than it
                c["unpadded"] += 1
                return pushes
            c["unproven"] += 1
        c["watched"] += 1
        return [(data, source), *pushes]

    def _cookie(self, key: bytes, source: Endpoint, now: float) -> bytes:
        """The return-routability cookie of ``key`` at ``source`` for the epoch of ``now``: a
        keyed BLAKE2b of the key, the address and the epoch (``COOKIE_EPOCH`` seconds). Only a
        host that receives our Status at ``source`` learns it; the current and the previous
        epoch's are accepted."""
        mac = hashlib.blake2b(key=self._cookie_secret, digest_size=sealed.COOKIE_LEN)
        mac.update(key)
        mac.update(source.ip.packed + source.port.to_bytes(2, "big"))
        mac.update(int(now // COOKIE_EPOCH).to_bytes(8, "big"))
        return mac.digest()

    def _roster(
        self,
        msg: stun.StunMessage,
        key: bytes,
        query: sealed.RosterQuery,
        source: Endpoint,
        now: float,
        shared: bytes,
    ) -> list[Outgoing]:
        """A page of the roster, only to the control address the peer's last Watch came from
        (never toward an address a Watch did not name: one answer per query, no larger than
        a Status's push target already receives)."""
        known = self.watchers.find(key)
        if known is None or known.address != source:
            self.counters["unexpected"] += 1
            return []
        self.counters["roster"] += 1
        self._roster_floor[key] = query.counter
        roster = sealed.Roster(
            timestamp_ms=int(now * 1000),
            counter=self._next_counter(now),
            query_counter=query.counter,
            version=self.roster.version,
            total=len(self.roster.members),
            offset=query.offset,
            members=self.roster.page(query.offset),
        )
        box = sealed.seal_box(
            shared, sealed.encode_payload(roster, msg.transaction_id), self._nonce(24)
        )
        data = stun.binding_success(
            msg, source, extra=((stun.ATTR_WG_SEALED, box),), software=self.config.software
        )
        return [(data, source)]

    def _repunch(
        self, key: bytes, req: sealed.Repunch, source: Endpoint, now: float
    ) -> list[Outgoing]:
        """``key``'s paths to ``req.peers`` stalled: tell each of them, at its proven control
        address, to send toward ``key`` now (its NAT may have lost the flow's state, and only
        a packet from inside brings it back). Only from ``key``'s own proven control address;
        only to peers that are proven watchers and want ``key``'s news; one small indication
        each, never an answer toward the source."""
        known = self.watchers.find(key)
        if known is None or known.address != source:
            self.counters["unexpected"] += 1
            return []
        self._repunch_floor[key] = req.counter
        out: list[Outgoing] = []
        for peer in dict.fromkeys(req.peers):
            watcher = self.watchers.find(peer)
            interest = self._fanout.interest(peer)
            if (
                peer == key
                or watcher is None
                or (interest is not None and sealed.key_id(key) not in interest)
            ):
                continue
            _, _, shared, addr = watcher
            tell = sealed.Repunch(int(now * 1000), self._next_counter(now), (key,))
            data = sealed.build_sealed_with(
                shared, None, tell, self._nonce(12), self._nonce(24),
                msg_type=stun.BINDING_INDICATION,
            )  # fmt: skip
            out.append((data, addr))
        self.counters["repunch"] += len(out)
        return out

    def _path_report(
        self, key: bytes, report: sealed.PathReport, source: Endpoint, now: float
    ) -> list[Outgoing]:
        """Keep ``key``'s paths to the registered peers it names. Only from ``key``'s proven
        control address (like a RosterQuery); never answered."""
        known = self.watchers.find(key)
        if known is None or known.address != source:
            self.counters["unexpected"] += 1
            return []
        self.counters["path_report"] += 1
        self.paths.record(key, report, now, [p for p in report.paths if p.peer in self._rows])
        return []

    # -- time -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When ``expire`` next has something to do (the earliest expiry), or None."""
        due = [t for t in (self._deadlines.next_time(self._deadline),
                           self._fanout.push_at, self.relay.next_timer(),
                           self.zone.next_publish()) if t is not None]  # fmt: skip
        return min(due) if due else None

    def _deadline(self, key: bytes) -> float | None:
        """The earliest deadline of ``key``'s row and watcher; None when it has neither."""
        row = self._rows.get(key)
        watcher = self.watchers.find(key)
        if watcher is None:
            return None if row is None else last_seen(row) + self.config.expiry
        seen = watcher.last_watch if row is None else min(last_seen(row), watcher.last_watch)
        return seen + self.config.expiry

    def expire(self, now: float) -> list[Outgoing]:
        """Withdraw peers whose last refresh is ``expiry`` seconds old or more (at their
        deadline, ``last seen + expiry <= now``), forget such watchers, and send the pushes
        gathered during ``push_delay``. (A stale mapping beside a fresh one is dropped when the
        peer's row is next touched: see the module docstring.)"""
        # Each table's keys sit in a wheel by deadline (wgmesh.proto.deadlines), so this costs
        # O(due), not O(peers); a key refreshed since it was placed is put back further on.
        # A key goes at its deadline (seen + expiry <= now): the same sum the wheel is given
        # and the timer is armed for, so a timer never fires for a key it then keeps.
        # A key is in the wheel once, at the earliest of its row's and its watcher's
        # deadlines; whichever part is stale goes, and the key goes back in for the other.
        expiry = self.config.expiry
        stale: list[bytes] = []
        silent: list[tuple[float, bytes]] = []
        for key in self._deadlines.due(now):
            row = self._rows.get(key)
            watcher = self.watchers.find(key)
            later = math.inf
            if watcher is not None:
                deadline = watcher.last_watch + expiry
                if deadline > now:
                    later = deadline
                else:
                    stale.append(key)
            if row is not None:
                seen = last_seen(row)
                deadline = seen + expiry
                if deadline > now:
                    later = min(later, deadline)
                else:
                    silent.append((seen, key))
            if later < math.inf:
                self._deadlines.again(key, later, now)
        for key in stale:
            self._drop_watcher(key)
        out: list[Outgoing] = []
        silent.sort(key=lambda s: s[0])  # oldest first, as they went silent
        for _, key in silent:
            out += self._withdraw(self._entry(key, self._rows[key]), now)
        self.zone.publish(now)  # changes held back by the zone's serial interval
        if self._fanout.due(now):
            out += self._flush_pushes(now)
        out += self.relay.expire(now)
        return out

    def events(self) -> list[Event]:
        """Peer changes since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- internals --------------------------------------------------------------------------

    def _entry(self, key: bytes, row: bytes, admission: Admission | None = None) -> PeerEntry:
        """Unpack a row. The allowed IPs are not stored: they are the admission file's."""
        admitted = (admission or self.admission).lookup(key)
        return entry_of(key, row, () if admitted is None else admitted.allowed_ips)

    def _without_stale(self, entry: PeerEntry, now: float) -> PeerEntry | None:
        """``entry`` without its mappings not registered within ``expiry`` (``entry`` itself
        when none is stale); None when none is left."""
        limit = now - self.config.expiry
        if min(entry.refreshed) >= limit:
            return entry
        pairs = [(ep, t) for ep, t in zip(entry.mappings, entry.refreshed, strict=True)
                 if t >= limit]  # fmt: skip
        if not pairs:
            return None
        mappings = tuple(ep for ep, _ in pairs)
        since, secondary, nat = carried_over(entry, mappings, entry.addresses, now)
        return replace(entry, mappings=mappings, refreshed=tuple(t for _, t in pairs),
                       since=since, secondary=secondary, nat=nat)  # fmt: skip

    @staticmethod
    def _apply_admission(entry: PeerEntry, admitted: AdmittedPeer) -> PeerEntry:
        name = admitted.name or entry.name
        return replace(entry, name=name, allowed_ips=admitted.allowed_ips)

    def _drop_watcher(self, key: bytes) -> None:
        """``key`` is no longer a watcher (its Watches stopped, or its key was revoked)."""
        if self.watchers.drop(key):
            self._fanout.drop(key)
            self.relay.forget(key)
            self._roster_floor.pop(key, None)
            self._repunch_floor.pop(key, None)

    def _store(self, entry: PeerEntry, shared: bytes) -> PeerEntry:
        """Write ``entry``'s row (``shared``: its key), keeping the watcher the row holds; a
        new row takes in the key's watcher that had none, and its key object (one object per
        peer across the tables). Returns ``entry`` as stored."""
        old = self._rows.get(entry.key)
        if old is not None:
            self._rows[entry.key] = _row(entry, shared, watch_part(old))
            return entry
        adopted = self.watchers.adopt(entry.key)
        if adopted is None:
            self._rows[entry.key] = _row(entry, shared)
            return entry
        key, watch, counter = adopted
        entry = replace(entry, key=key, watch_counter=max(entry.watch_counter, counter))
        self._rows[key] = _row(entry, shared, watch)
        return entry

    def _store_gaining(self, entry: PeerEntry, shared: bytes) -> None:
        """:meth:`_store` for a row that publishes nothing new (a Watch) and may gain its
        shared key here (restored without one): the store then writes the row whole, key and
        all, so the next restart opens its boxes without X25519."""
        gained = shared_key(self._rows[entry.key], SHARED_AT) is None
        entry = self._store(entry, shared)
        if gained:
            self._events.append(refresh_event(entry.key, self._rows[entry.key],
                                              entry.allowed_ips, moved=True))  # fmt: skip

    def _withdraw(self, entry: PeerEntry, now: float) -> list[Outgoing]:
        self.watchers.orphan(entry.key, self._rows.pop(entry.key))
        self.zone.remove(entry.key)
        self._events.append(PeerEvent(Change.WITHDRAWN, entry))
        return self._push(entry.key, now) + self.relay.peer_gone(entry.key, now)

    def _publish(
        self, change: Change, entry: PeerEntry, now: float, shared: bytes
    ) -> list[Outgoing]:
        if entry.key not in self._rows and not self.watchers.alone(entry.key):
            self._deadlines.place(entry.key, entry.last_seen + self.config.expiry)
        entry = self._store(entry, shared)
        self.zone.upsert(published(entry))
        self._events.append(PeerEvent(change, entry))
        return self._push(entry.key, now)

    def _next_counter(self, now: float) -> int:
        # Microseconds of wall time, and strictly increasing: survives registrar restarts.
        self._push_counter = max(self._push_counter + 1, int(now * 1_000_000))
        return self._push_counter

    def _push(self, changed: bytes, now: float) -> list[Outgoing]:
        """Push ``changed`` to the watchers that want it: at once when nothing was pushed
        within ``push_delay``, else gathered until the window ends (then :meth:`expire` sends
        them, ``next_timer`` says when); see wgmesh.proto.fanout. The zone's serial is raised
        first if its interval allows (else at the interval's end, by :meth:`expire`)."""
        self.zone.publish(now)
        return self._flush_pushes(now) if self._fanout.changed(changed, now) else []

    def _flush_pushes(self, now: float) -> list[Outgoing]:
        """Tell each watcher the changed peers it wants, in as few Pushes as hold them: one
        for up to 14 changed peers."""
        out: list[Outgoing] = []
        for key, theirs in self._fanout.take(now).items():
            _, _, shared, addr = self.watchers[key]
            for i in range(0, len(theirs), sealed.MAX_CHANGED):
                out.append(
                    self._push_one(shared, addr, tuple(theirs[i : i + sealed.MAX_CHANGED]), now)
                )
        self.counters["pushed"] += len(out)
        return out

    def _push_one(
        self, shared: bytes, addr: Endpoint, changed: tuple[bytes, ...], now: float
    ) -> Outgoing:
        push = sealed.Push(
            timestamp_ms=int(now * 1000),
            counter=self._next_counter(now),
            serial=self.zone.serial,
            changed=changed,
        )
        data = sealed.build_sealed_with(
            shared, None, push, self._nonce(12), self._nonce(24), msg_type=stun.BINDING_INDICATION
        )
        return data, addr


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


def _row(entry: PeerEntry, shared: bytes, watch: bytes = b"") -> bytes:
    """Pack a PeerEntry (its allowed IPs left out, see Registry._entry), the peer's shared
    key (peerrow.NO_KEY: none yet) and its watch part (peerrow.pack_watch; empty: not a
    watcher)."""
    return pack_row(entry.mappings, entry.refreshed, entry.addresses, entry.name, entry.nat,
                    entry.since, entry.register_counter, entry.watch_counter, entry.software,
                    entry.secondary, shared, watch)  # fmt: skip


def roster_of(admission: Admission) -> RosterBook:
    """The roster an admission list vouches for: the listed keys with allowed IPs (with
    ``--open`` alone there are none: allowed IPs only ever come from the file)."""
    return RosterBook.of((key, p.allowed_ips) for key, p in admission.peers.items())
