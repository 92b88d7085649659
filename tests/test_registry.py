"""The registrar's state machine, pure: datagrams in, datagrams and events out, float clock."""

from __future__ import annotations

import math
import os
import pickle
import sqlite3
from dataclasses import replace
from pathlib import Path

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_box_beforenm
from nacl.public import PrivateKey

from wgmesh.errors import LocalProtocolError
from wgmesh.proto import peerrow, sealed, stun
from wgmesh.proto.dnssd import Candidate, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import key_label
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.peerentry import Refresh
from wgmesh.proto.peerrow import (
    NO_KEY,
    SAME,
    SHARED_AT,
)
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import (
    Admission,
    AdmittedPeer,
    Change,
    PeerEntry,
    PeerEvent,
    Registry,
    RegistryConfig,
    _row,
    candidates_of,
    classify,
)
from wgmesh.registry.store import Store

NOW = 1_800_000_000.0
PORT = 3478
ALT = 3479


class Peer:
    def __init__(self) -> None:
        self.private = PrivateKey.generate()
        self.key = bytes(self.private.public_key)
        self.sealer = sealed.Sealer(bytes(self.private))
        self.counter = 1000
        self.cookie = bytes(16)
        self.interest: tuple[bytes, ...] | None = None
        self.padded = True

    def message(
        self, reg_key: bytes, payload: sealed.Payload, msg_type: int = stun.BINDING_REQUEST
    ) -> bytes:
        return sealed.build_sealed_request(
            self.sealer,
            self.key,
            reg_key,
            payload,
            os.urandom(12),
            os.urandom(24),
            msg_type=msg_type,
        )

    def register(
        self,
        reg_key: bytes,
        now: float = NOW,
        *,
        secondary: bool = False,
        addresses: tuple[Endpoint, ...] = (),
        counter: int | None = None,
    ) -> bytes:
        self.counter += 1
        return self.message(
            reg_key,
            sealed.Register(
                timestamp_ms=int(now * 1000),
                counter=self.counter if counter is None else counter,
                name="alice",
                addresses=addresses,
                software="test",
                secondary=secondary,
            ),
        )

    def watch(self, reg_key: bytes, now: float = NOW) -> bytes:
        self.counter += 1
        payload = sealed.Watch(
            int(now * 1000), self.counter, self.counter - 1, self.cookie, self.interest
        )
        if self.padded:  # as daemons send it
            payload = sealed.padded_watch(payload)
        return self.message(reg_key, payload)


def watch(r: Registry, peer: Peer, reg_key: bytes, source: Endpoint, now: float = NOW) -> list:
    """A Watch as a daemon sends it: if the Status says the source is not proven yet, the
    cookie it carries is echoed in a second Watch (return routability). Returns the Status
    answers and pushes of both."""
    out = r.receive(peer.watch(reg_key, now), source, PORT, now)
    status = [s for s in (_opened(peer, d, reg_key) for d, a in out if a == source)
              if isinstance(s, sealed.Status)]  # fmt: skip
    if status and not status[0].proven:
        peer.cookie = status[0].cookie
        out += r.receive(peer.watch(reg_key, now), source, PORT, now)
    return out


def _opened(peer: Peer, data: bytes, reg_key: bytes) -> object:
    try:
        return sealed.open_sealed(peer.sealer, stun.decode(data), reg_key)[1]
    except Exception:
        return None


@pytest.fixture
def reg_private() -> PrivateKey:
    return PrivateKey.generate()


def make(reg_private: PrivateKey, admission: Admission | None = None, **cfg: object) -> Registry:
    cfg.setdefault("push_delay", 0.0)  # every change pushed at once (coalescing: its own test)
    zone = Zone(ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h.mesh.test."))
    return Registry(
        RegistryConfig(**cfg),  # type: ignore[arg-type]
        sealed.Sealer(bytes(reg_private)),
        admission or Admission(open=True),
        zone,
        os.urandom,
        PORT,
    )


SRC = Endpoint.parse("198.51.100.20:40000")
SRC2 = Endpoint.parse("198.51.100.21:40000")


def test_plain_binding_request_gets_xor_mapped_address(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    req = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, b"\x07" * 12, ()))
    out = r.receive(req, SRC, PORT, NOW)
    assert len(out) == 1 and out[0][1] == SRC
    resp = stun.decode(out[0][0])
    assert resp.msg_type == stun.BINDING_SUCCESS and resp.transaction_id == b"\x07" * 12
    xma = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert xma is not None
    assert stun.unpack_xor_address(xma, resp.transaction_id) == SRC


def test_registration_records_the_source_and_publishes(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    out = r.receive(alice.register(reg_key), SRC, PORT, NOW)
    assert out == []  # not answered: WireGuard's socket would drop it
    assert r.peers[alice.key].endpoint == SRC
    assert [e.change for e in r.events()] == [Change.ADDED]
    assert r.counters["registered"] == 1
    serial = r.zone.serial
    r.receive(alice.register(reg_key, NOW + 1), SRC, PORT, NOW + 1)
    assert [e.change for e in r.events()] == [Change.REFRESHED]
    assert r.zone.serial == serial  # a refresh publishes nothing new
    r.receive(alice.register(reg_key, NOW + 2), SRC2, PORT, NOW + 2)
    assert [e.change for e in r.events()] == [Change.CHANGED]
    assert r.zone.serial == serial + 1


def test_replayed_registration_is_rejected_and_counted(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    msg = alice.register(reg_key)
    r.receive(msg, SRC, PORT, NOW)
    assert r.receive(msg, SRC2, PORT, NOW + 1) == []
    assert r.counters["replay"] == 1
    assert r.peers[alice.key].endpoint == SRC


def test_stale_timestamp_is_rejected(reg_private: PrivateKey) -> None:
    r = make(reg_private, freshness_window=120.0)
    alice = Peer()
    assert r.receive(alice.register(bytes(reg_private.public_key), NOW - 500), SRC, PORT, NOW) == []
    assert r.counters["stale"] == 1 and alice.key not in r.peers


def test_box_for_another_registrar_is_rejected(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    other = bytes(PrivateKey.generate().public_key)
    alice = Peer()
    assert r.receive(alice.register(other), SRC, PORT, NOW) == []
    assert r.counters["bad_box"] == 1


def test_tampered_box_is_rejected(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    alice = Peer()
    msg = stun.decode(alice.register(bytes(reg_private.public_key)))
    attrs = []
    for t, v in msg.attributes:
        if t == stun.ATTR_WG_SEALED:
            v = v[:-1] + bytes([v[-1] ^ 1])
        attrs.append((t, v))
    data = stun.encode(stun.StunMessage(msg.msg_type, msg.transaction_id, tuple(attrs)))
    assert r.receive(data, SRC, PORT, NOW) == []
    assert r.counters["bad_box"] == 1


def test_key_swapped_for_another_is_rejected(reg_private: PrivateKey) -> None:
    """Mallory seals with her key but claims Alice's key in ATTR_WG_PUBLIC_KEY."""
    r = make(reg_private)
    alice, mallory = Peer(), Peer()
    msg = stun.decode(mallory.register(bytes(reg_private.public_key)))
    attrs = tuple((t, alice.key if t == stun.ATTR_WG_PUBLIC_KEY else v) for t, v in msg.attributes)
    data = stun.encode(stun.StunMessage(msg.msg_type, msg.transaction_id, attrs))
    assert r.receive(data, SRC, PORT, NOW) == []
    assert r.counters["bad_box"] == 1 and not r.peers


def test_ten_thousand_forgeries_give_zero_accepted(reg_private: PrivateKey) -> None:
    unlimited = RateLimitConfig(rate=1e9, burst=1e9)
    r = make(reg_private, rate_limit=unlimited, agreement_limit=unlimited)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    good = stun.decode(alice.register(reg_key))
    rng = __import__("random").Random(7)
    for i in range(10_000):
        kind = i % 3
        attrs = []
        for t, v in good.attributes:
            if t == stun.ATTR_WG_SEALED:
                if kind == 0:
                    v = os.urandom(len(v))
                elif kind == 1:
                    b = bytearray(v)
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                    v = bytes(b)
            if t == stun.ATTR_WG_PUBLIC_KEY and kind == 2:
                v = os.urandom(32)
            attrs.append((t, v))
        data = stun.encode(stun.StunMessage(good.msg_type, os.urandom(12), tuple(attrs)))
        r.receive(data, SRC, PORT, NOW)
    assert r.counters["registered"] == 0 and not r.peers
    assert r.counters["bad_box"] + r.counters["malformed"] == 10_000


def test_unadmitted_key_is_refused(reg_private: PrivateKey) -> None:
    alice, bob = Peer(), Peer()
    adm = Admission(
        open=False, peers={alice.key: AdmittedPeer(alice.key, "alice-admin", ("100.64.0.1/32",))}
    )
    r = make(reg_private, adm)
    reg_key = bytes(reg_private.public_key)
    assert r.receive(bob.register(reg_key), SRC2, PORT, NOW) == []
    assert r.counters["unauthorized"] == 1
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    entry = r.peers[alice.key]
    assert entry.name == "alice-admin" and entry.allowed_ips == ("100.64.0.1/32",)


def test_rate_limit_per_key_after_the_box_opened(reg_private: PrivateKey) -> None:
    r = make(reg_private, rate_limit=RateLimitConfig(rate=20.0, burst=5.0))
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    for _ in range(15):
        r.receive(alice.register(reg_key), SRC, PORT, NOW)
    assert r.counters["key_limited"] == 5  # the key's own burst (10), whatever the source's
    assert r.counters["registered"] == 10 and r.counters["rate_limited"] == 0


def test_first_contacts_are_limited_per_source_and_in_all(reg_private: PrivateKey) -> None:
    r = make(reg_private, rate_limit=RateLimitConfig(rate=20.0, burst=5.0),
             agreement_limit=RateLimitConfig(rate=100.0, burst=8.0, max_sources=1))  # fmt: skip
    reg_key = bytes(reg_private.public_key)
    for _ in range(10):  # ten new keys from one source: five get an X25519 step
        r.receive(Peer().register(reg_key), SRC, PORT, NOW)
    assert r.counters["rate_limited"] == 5 and r.sealer.agreements == 5
    for i in range(10):  # from many sources: the global budget (8) runs out
        r.receive(Peer().register(reg_key), Endpoint.parse(f"192.0.2.{i}:1"), PORT, NOW)
    assert r.counters["agreement_limited"] == 7 and r.sealer.agreements == 8


@pytest.mark.parametrize("moving", [False, True], ids=["refreshing", "moving"])
def test_junk_with_a_victims_source_does_not_stop_its_registrations(
    reg_private: PrivateKey, moving: bool
) -> None:
    """An off-path attacker sends 1,000 packets/s carrying the victim's source address: boxes
    under the victim's key that do not open, and first contacts under random keys. The
    victim's own registrations, one a second, all go through: plain refreshes (the fast path)
    and, ``moving``, registrations whose LAN address changes each time (the full path, where
    the per-source bucket is)."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    victim = Peer()
    r.receive(victim.register(reg_key), SRC, PORT, NOW)
    for tick in range(10 * 1000):  # 10 s at 1,000 packets/s
        now = NOW + tick / 1000
        junk = tampered(victim.register(reg_key, now)) if tick % 2 else Peer().register(reg_key)
        r.receive(junk, SRC, PORT, now)
        if tick % 1000 == 999:
            lan = (Endpoint.parse(f"10.0.0.{tick // 1000 + 1}:51820"),) if moving else ()
            r.receive(victim.register(reg_key, now, addresses=lan), SRC, PORT, now)
    accepted = [e for e in r.events() if e.peer.key == victim.key]
    assert len(accepted) == 11  # the first and all ten during the flood
    full = [e for e in accepted if isinstance(e, PeerEvent)]
    assert len(full) == (11 if moving else 1)  # which path judged them
    assert r.counters["rate_limited"] > 4000  # the junk paid for itself


def test_known_keys_are_served_while_first_contacts_spend_the_x25519_budget(
    reg_private: PrivateKey,
) -> None:
    """``--open``: forged first contacts under fresh keys from 5,000 sources a second use up
    the global X25519 budget. Known peers need no key agreement: every one of their
    registrations (moving, so the full path judges them) and Watches is still served."""
    r = make(reg_private, agreement_limit=RateLimitConfig(rate=200.0, burst=20.0))
    reg_key = bytes(reg_private.public_key)
    known = [Peer() for _ in range(5)]
    for i, p in enumerate(known):
        r.receive(p.register(reg_key), Endpoint.parse(f"198.51.100.{i}:4000"), PORT, NOW)
    before = r.sealer.agreements
    served = 0
    for tick in range(2 * 5000):  # 2 s at 5,000 forged first contacts a second
        now = NOW + tick / 5000
        source = Endpoint.parse(f"203.0.113.{tick % 250}:{1024 + tick // 250}")
        r.receive(Peer().register(reg_key, now), source, PORT, now)
        if tick % 500 == 499:  # each known peer moves and watches 20 times a second in all
            i = (tick // 500) % len(known)
            p = known[i]
            lan = (Endpoint.parse(f"10.0.{i}.{tick // 500 % 250}:51820"),)
            wg, control = (Endpoint.parse(f"198.51.100.{i}:{port}") for port in (4000, 4001))
            r.receive(p.register(reg_key, now, addresses=lan), wg, PORT, now)
            out = r.receive(p.watch(reg_key, now), control, PORT, now)
            served += len([d for d, a in out if a == control])
    assert r.counters["agreement_limited"] > 9000
    assert r.sealer.agreements - before <= 20 + 200 * 2 + 1  # the budget held
    moved = [e for e in r.events() if isinstance(e, PeerEvent) and e.peer.key in
             {p.key for p in known}]  # fmt: skip
    assert len(moved) == 5 + 20 and served == 20


def test_garbage_is_counted_not_raised(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    assert r.receive(b"\x00" * 5000, SRC, PORT, NOW) == []
    assert r.receive(b"hello", SRC, PORT, NOW) == []
    assert r.counters["oversize"] == 1 and r.counters["not_stun"] == 1


def test_watch_returns_the_observed_mapping_sealed(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    control = Endpoint.parse("198.51.100.20:50000")
    out = r.receive(alice.watch(reg_key), control, PORT, NOW)
    assert len(out) == 1 and out[0][1] == control
    _, status = sealed.open_sealed(alice.sealer, stun.decode(out[0][0]), reg_key)
    assert isinstance(status, sealed.Status)
    assert status.observed == (SRC,) and status.register_counter == alice.counter - 1


def test_changes_are_pushed_to_other_watchers(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    bob_control = Endpoint.parse("198.51.100.30:50000")
    r.receive(bob.register(reg_key), Endpoint.parse("198.51.100.30:51820"), PORT, NOW)
    watch(r, bob, reg_key, bob_control)
    out = r.receive(alice.register(reg_key), SRC, PORT, NOW)
    pushes = [(d, a) for d, a in out if a == bob_control]
    assert len(pushes) == 1
    msg = stun.decode(pushes[0][0])
    assert msg.msg_type == stun.BINDING_INDICATION
    _, push = sealed.open_sealed(bob.sealer, msg, reg_key)
    assert isinstance(push, sealed.Push) and push.changed == (alice.key,)


def test_silent_peer_is_withdrawn_after_expiry(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(bob.register(reg_key, NOW + 30), SRC2, PORT, NOW + 30)
    r.events()
    assert r.next_timer() == NOW + 50.0
    r.expire(NOW + 49.0)
    assert alice.key in r.peers
    r.expire(NOW + 51.0)
    assert alice.key not in r.peers and bob.key in r.peers
    assert [e.change for e in r.events()] == [Change.WITHDRAWN]


@pytest.mark.parametrize(
    "expiry, seen",
    [(50.0, NOW), (788.9, 310569923.9890625), (881.4, NOW), (957.2, 310569923.9890625)],
)
def test_a_peer_goes_at_its_deadline_and_the_timer_never_fires_twice_at_one_now(
    reg_private: PrivateKey, expiry: float, seen: float
) -> None:
    """At ``last seen + expiry`` (the time the timer is armed for) the peer is withdrawn, so a
    driver running ``expire`` while ``next_timer() <= now`` stops: with an expiry whose bucket
    width is no binary fraction (788.9 s), a peer kept "refreshed within expiry" at that very
    ``now`` was put back onto it, and the loop never ended."""
    r = make(reg_private, expiry=expiry)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key, seen), SRC, PORT, seen)
    r.events()
    now = r.next_timer()
    assert now == seen + expiry
    r.expire(math.nextafter(now, -math.inf))
    assert alice.key in r.peers  # an ulp before its deadline
    fired = 0
    while (when := r.next_timer()) is not None and when <= now and fired < 10:
        r.expire(now)
        fired += 1
    assert fired == 1 and alice.key not in r.peers and r.next_timer() is None


def test_secondary_probe_classifies_the_nat(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, secondary=True), SRC, ALT, NOW)
    assert r.peers[alice.key].nat == NatKind.CONE
    r.receive(bob.register(reg_key), SRC2, PORT, NOW)
    r.receive(
        bob.register(reg_key, secondary=True), Endpoint.parse("198.51.100.21:40999"), ALT, NOW
    )
    assert r.peers[bob.key].nat == NatKind.SYMMETRIC


def test_public_host_is_classified_no_nat(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    alice = Peer()
    r.receive(alice.register(bytes(reg_private.public_key), addresses=(SRC,)), SRC, PORT, NOW)
    assert r.peers[alice.key].nat == NatKind.NONE


def test_reload_withdraws_removed_keys_and_republishes_changed(reg_private: PrivateKey) -> None:
    alice, bob = Peer(), Peer()
    adm = Admission(
        open=False,
        peers={alice.key: AdmittedPeer(alice.key, "alice"), bob.key: AdmittedPeer(bob.key, "bob")},
    )
    r = make(reg_private, adm)
    reg_key = bytes(reg_private.public_key)
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(bob.register(reg_key), SRC2, PORT, NOW)
    r.events()
    r.set_admission(
        Admission(
            open=False, peers={alice.key: AdmittedPeer(alice.key, "alice", ("100.64.0.1/32",))}
        ),
        NOW + 1,
    )
    assert bob.key not in r.peers
    assert r.peers[alice.key].allowed_ips == ("100.64.0.1/32",)
    assert sorted(e.change for e in r.events()) == [Change.CHANGED, Change.WITHDRAWN]


def test_restore_serves_live_peers_and_drops_expired(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(bob.register(reg_key, NOW + 40), SRC2, PORT, NOW + 40)
    entries = list(r.peers.values())
    r2 = make(reg_private)
    r2.restore(entries, NOW + 60)
    assert list(r2.peers) == [bob.key]
    # the replay floor survives the restart
    assert r2.peers[bob.key].register_counter == bob.counter


def test_new_mapping_forgets_the_secondary_observation(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, secondary=True), SRC, ALT, NOW)
    assert r.peers[alice.key].nat == NatKind.CONE
    rebound = Endpoint.parse("198.51.100.20:40123")
    r.receive(alice.register(reg_key, NOW + 1), rebound, PORT, NOW + 1)
    assert r.peers[alice.key].nat == NatKind.UNKNOWN  # not "symmetric" from a stale probe
    r.receive(alice.register(reg_key, NOW + 1, secondary=True), rebound, ALT, NOW + 1)
    assert r.peers[alice.key].nat == NatKind.CONE


# -- the packed rows ---------------------------------------------------------------------------

V6 = Endpoint.parse("[2001:db8::7]:51820")
LAN = Endpoint.parse("10.0.0.7:51820")


V6B = Endpoint.parse("[2001:db8::8]:40001")


@pytest.mark.parametrize(
    "mappings, addresses, secondary",
    [
        ((SRC,), (), ()),
        ((SRC,), (LAN, V6), (SRC,)),  # a cone NAT: kept as "the same", without a copy
        ((SRC,), (LAN,), (SRC2,)),  # symmetric: the other mapping is kept
        ((V6,), (V6,), ()),
        ((SRC, V6), (LAN, V6), ()),  # one mapping per family
        ((SRC, V6), (), (SRC, V6)),
        ((SRC, V6), (LAN,), (SRC2, V6B)),
        ((SRC, V6), (), (V6B,)),  # the alternate port saw only the IPv6 side so far
        ((V6,), (), (V6B,)),
    ],
)
def test_a_row_unpacks_to_the_entry_it_was_packed_from(
    reg_private: PrivateKey,
    mappings: tuple[Endpoint, ...],
    addresses: tuple[Endpoint, ...],
    secondary: tuple[Endpoint, ...],
) -> None:
    r = make(reg_private)
    refreshed = (NOW, NOW - 7.5)[: len(mappings)]
    entry = PeerEntry(bytes(range(32)), "bé", mappings, addresses, NatKind.CONE, NOW - 0.25,
                      refreshed, 2**64 - 1, 7, "wgmesh/1", (), secondary)  # fmt: skip
    row = _row(entry, bytes(range(32)))
    assert r._entry(entry.key, row) == entry
    assert row[SHARED_AT : SHARED_AT + 32] == bytes(range(32))
    assert peerrow.last_seen(row) == entry.last_seen == NOW


def test_an_ipv4_only_row_is_its_fields_and_one_byte_of_software(reg_private: PrivateKey) -> None:
    """The packed row of an IPv4-only peer: the head (with one length byte each for ``other``
    and the watch part), what it was seen with, and one byte for its software (the string's
    code), whatever its length; a watcher's row holds 15 bytes more (its last Watch time and
    its IPv4 control address), and reads back the same."""
    entry = PeerEntry(bytes(32), "alice", (SRC,), (LAN,), NatKind.CONE, NOW, (NOW,), 1, 1,
                      "wgmesh/0.1.0", (), (SRC,))  # fmt: skip
    head, seen = 8 + 8 + 8 + 8 + 1 + 2 + 1 + 1 + 1 + 32, 1 + 7 + 7 + len("alice")
    assert len(_row(entry, NO_KEY)) == head + seen + len(SAME) + 1
    longer = replace(entry, software="x" * sealed.MAX_SOFTWARE)
    assert len(_row(longer, NO_KEY)) == head + seen + len(SAME) + 1
    assert peerrow.unpack_row(_row(longer, NO_KEY)).software == longer.software
    shared = bytes(range(32))
    watching = _row(entry, shared, peerrow.pack_watch(NOW + 1, SRC2))
    assert len(watching) == head + seen + len(SAME) + 15 + 1
    assert peerrow.unpack_row(watching) == peerrow.unpack_row(_row(entry, shared))
    assert peerrow.watcher_of_row(watching) == (NOW + 1, 1, shared, SRC2)
    assert peerrow.with_watch(watching, b"") == _row(entry, shared)
    assert peerrow.watcher_of_row(_row(entry, shared)) is None


def test_software_past_the_code_table_is_written_out_in_the_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The code table is capped: once it is full (a peer cycling through made-up versions), a
    new string is kept in the row itself, and every row still reads back what it was given."""
    monkeypatch.setattr(peerrow, "SOFTWARE_CODES", 3)
    monkeypatch.setattr(peerrow, "_SOFTWARE", [b""])
    monkeypatch.setattr(peerrow, "_SOFTWARE_CODE", {})
    entry = PeerEntry(bytes(32), "alice", (SRC,), (LAN,), NatKind.CONE, NOW, (NOW,), 1, 1,
                      "", (), ())  # fmt: skip
    names = [f"v{i}" for i in range(10)] + ["v0", "v9", "", "wgmesh/é"]
    rows = [_row(replace(entry, software=name), NO_KEY) for name in names]
    assert [peerrow.unpack_row(row).software for row in rows] == names
    assert [peerrow.refreshed_fields(row)[2] for row in rows] == names
    base = len(rows[0])
    assert [len(row) - base for row in rows] == [0, 0, 0] + [2] * 7 + [0, 2, 0, 9]
    assert len(peerrow._SOFTWARE) == 4  # the cap, and the "written out" entry


@pytest.mark.parametrize(
    "mappings, secondary",
    [
        ((), ()),
        ((V6, SRC), ()),  # IPv4 first
        ((SRC, SRC2), ()),  # one per family
        ((SRC, V6, SRC2), ()),
    ],
)
def test_a_row_holds_one_mapping_per_family_ipv4_first(
    mappings: tuple[Endpoint, ...], secondary: tuple[Endpoint, ...]
) -> None:
    entry = PeerEntry(bytes(32), "", mappings, (), NatKind.UNKNOWN, NOW, (NOW,) * len(mappings),
                      1, 1, "", (), secondary)  # fmt: skip
    with pytest.raises(ValueError):
        _row(entry, NO_KEY)


def test_refresh_rewrites_the_row_and_reports_the_full_entry(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key, addresses=(LAN,)), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, secondary=True, addresses=(LAN,)), SRC, ALT, NOW)
    serial = r.zone.serial
    r.events()
    r.receive(alice.register(reg_key, NOW + 20, addresses=(LAN,)), SRC, PORT, NOW + 20)
    (event,) = r.events()
    assert event.change == Change.REFRESHED and r.zone.serial == serial
    assert event.peer == r.peers[alice.key]
    assert (event.peer.last_seen, event.peer.since, event.peer.secondary) == (NOW + 20, NOW, (SRC,))
    assert event.peer.register_counter == alice.counter and event.peer.nat == NatKind.CONE


def test_one_key_object_per_peer_across_the_tables(reg_private: PrivateKey) -> None:
    """The key is stored once: the table and the zone share the object of the first
    registration (a refresh or an update must not swap in its own copy)."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    first = next(iter(r._rows))
    r.receive(alice.register(reg_key, NOW + 1), SRC, PORT, NOW + 1)  # refresh
    r.receive(alice.register(reg_key, NOW + 2), SRC2, PORT, NOW + 2)  # new mapping
    r.receive(alice.watch(reg_key, NOW + 2), SRC2, PORT, NOW + 2)
    assert next(iter(r._rows)) is first and next(iter(r.zone._peers)) is first
    assert r.peers[alice.key].endpoint == SRC2 and r.peers[alice.key].watch_counter > 0


def test_watchers_expire_by_their_last_watch(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    peers = [Peer() for _ in range(300)]
    sources = [Endpoint.parse(f"198.51.100.{i % 250 + 1}:{5000 + i}") for i in range(300)]
    for i, (peer, source) in enumerate(zip(peers, sources, strict=True)):
        watch(r, peer, reg_key, source, NOW + i / 10)
    for peer, source in zip(peers[:100], sources, strict=False):  # watch again: kept
        watch(r, peer, reg_key, source, NOW + 30)
    assert len(r.watchers) == 300 and r.next_timer() == NOW + 10 + 50  # the 101st
    r.expire(NOW + 50 + 14.95)  # the 101st to the 150th watched last before NOW + 15
    assert set(r.watchers) == {p.key for p in peers[:100] + peers[150:]}
    assert r.next_timer() == NOW + 15 + 50
    r.expire(NOW + 50 + 15)  # one more, at its deadline, from the middle of a bucket
    assert len(r.watchers) == 249 and r.next_timer() == NOW + 15.1 + 50
    r.expire(NOW + 50 + 29.95)
    assert set(r.watchers) == {p.key for p in peers[:100]}
    assert r.next_timer() == NOW + 30 + 50
    r.expire(r.next_timer())
    assert not r.watchers and r.next_timer() is None


# -- shared keys -------------------------------------------------------------------------------


def shared_of(reg_private: PrivateKey, peer: Peer) -> bytes:
    return crypto_box_beforenm(peer.key, bytes(reg_private))


def stored(r: Registry, key: bytes) -> tuple[bytes | None, bytes | None]:
    """The shared key in the key's row and in its watcher record (None: no such record)."""
    row, watcher = r._rows.get(key), r.watchers.find(key)
    return (
        None if row is None else row[SHARED_AT : SHARED_AT + 32],
        None if watcher is None else watcher.shared,
    )


def tampered(data: bytes) -> bytes:
    msg = stun.decode(data)
    attrs = tuple(
        (t, v[:-1] + bytes([v[-1] ^ 1]) if t == stun.ATTR_WG_SEALED else v)
        for t, v in msg.attributes
    )
    return stun.encode(stun.StunMessage(msg.msg_type, msg.transaction_id, attrs))


def test_refreshes_open_with_the_shared_key_in_the_row(reg_private: PrivateKey) -> None:
    """One X25519 step per peer: refreshes, Watches, Status answers and pushes use the stored
    shared key."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    assert r.sealer.agreements == 1
    assert stored(r, alice.key) == (shared_of(reg_private, alice), None)
    control = Endpoint.parse("198.51.100.20:50000")
    for i in range(1, 6):
        assert r.receive(alice.register(reg_key, NOW + i), SRC, PORT, NOW + i) == []
        out = watch(r, alice, reg_key, control, NOW + i)  # the first proves the address
        assert all(isinstance(_opened(alice, d, reg_key), sealed.Status) for d, _ in out)
    assert r.counters["registered"] == 6 and r.counters["watched"] == 6
    assert r.sealer.agreements == 1 and r.sealer.cached_keys == 0
    assert stored(r, alice.key) == (shared_of(reg_private, alice),) * 2
    out = r.receive(bob.register(reg_key, NOW + 6), SRC2, PORT, NOW + 6)  # pushed to alice
    assert [a for _, a in out] == [control] and r.sealer.agreements == 2
    assert isinstance(sealed.open_sealed(alice.sealer, stun.decode(out[0][0]), reg_key)[1],
                      sealed.Push)  # fmt: skip


def test_tampered_box_under_a_stored_key_is_rejected(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, mallory = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    row = r._rows[alice.key]
    assert r.receive(tampered(alice.register(reg_key, NOW + 1)), SRC2, PORT, NOW + 1) == []
    # Mallory's genuine box claiming Alice's key
    msg = stun.decode(mallory.register(reg_key, NOW + 1))
    attrs = tuple((t, alice.key if t == stun.ATTR_WG_PUBLIC_KEY else v) for t, v in msg.attributes)
    data = stun.encode(stun.StunMessage(msg.msg_type, msg.transaction_id, attrs))
    assert r.receive(data, SRC2, PORT, NOW + 1) == []
    assert r.counters["bad_box"] == 2 and r.counters["registered"] == 1
    assert r._rows[alice.key] is row and r.peers[alice.key].endpoint == SRC
    assert r.sealer.agreements == 1  # forgeries under a registered key cost no X25519


def test_a_key_is_stored_only_for_an_accepted_message(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    refused = [
        tampered(alice.register(reg_key)),  # does not open
        alice.register(bytes(PrivateKey.generate().public_key)),  # sealed to another registrar
        alice.register(reg_key, NOW - 500),  # opens, but stale
        alice.register(reg_key, secondary=True),  # opens, but nothing to compare with yet
    ]
    for data in refused:
        assert r.receive(data, SRC, PORT, NOW) == []
    assert not r._rows and not r.watchers
    assert r.sealer.agreements == 4 and r.sealer.cached_keys == 0  # each paid, none kept
    assert r.counters["bad_box"] == 2 and r.counters["stale"] == 1
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    assert stored(r, alice.key) == (shared_of(reg_private, alice), None)


def test_a_watch_before_any_register_keeps_the_key_with_the_watcher(
    reg_private: PrivateKey,
) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    control = Endpoint.parse("198.51.100.20:50000")
    ((status, _),) = r.receive(alice.watch(reg_key), control, PORT, NOW)
    cookie = r._cookie(alice.key, control, NOW)
    assert sealed.open_sealed(alice.sealer, stun.decode(status), reg_key)[1] == sealed.Status(
        int(NOW * 1000), int(NOW * 1_000_000), alice.counter, 0, (), NatKind.UNKNOWN,
        r.zone.serial, False, cookie)  # fmt: skip
    assert stored(r, alice.key) == (None, None)  # not proven: nothing kept for it
    alice.cookie = cookie
    r.receive(alice.watch(reg_key, NOW + 1), control, PORT, NOW + 1)  # echoes it: a watcher
    assert stored(r, alice.key) == (None, shared_of(reg_private, alice))
    r.receive(alice.register(reg_key, NOW + 1), SRC, PORT, NOW + 1)
    assert stored(r, alice.key) == (shared_of(reg_private, alice),) * 2
    assert r.sealer.agreements == 2  # the unproven Watch paid its own X25519 step


def test_expiry_and_withdrawal_drop_the_shared_key(reg_private: PrivateKey) -> None:
    alice, bob = Peer(), Peer()
    adm = {p.key: AdmittedPeer(p.key) for p in (alice, bob)}
    r = make(reg_private, Admission(open=False, peers=adm), expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    for peer, src in ((alice, SRC), (bob, SRC2)):
        r.receive(peer.register(reg_key), src, PORT, NOW)
        watch(r, peer, reg_key, src)
    assert r.sealer.agreements == 2
    # bob's key is revoked: his row and his watcher go, with their shared keys
    r.set_admission(Admission(open=False, peers={alice.key: adm[alice.key]}), NOW + 1)
    assert stored(r, bob.key) == (None, None)
    assert stored(r, alice.key) == (shared_of(reg_private, alice),) * 2
    r.expire(NOW + 51)
    assert stored(r, alice.key) == (None, None) and not r._rows and not r.watchers
    # back after expiry: first contact again, one X25519 step
    r.receive(alice.register(reg_key, NOW + 60), SRC, PORT, NOW + 60)
    assert r.sealer.agreements == 3
    assert stored(r, alice.key) == (shared_of(reg_private, alice), None)


def test_restored_rows_get_their_key_at_the_first_refresh(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r2 = make(reg_private)
    r2.restore(r.peers.values(), NOW + 1)
    assert stored(r2, alice.key) == (NO_KEY, None)  # restored without a stored key
    r2.receive(alice.register(reg_key, NOW + 2), SRC, PORT, NOW + 2)
    r2.receive(alice.register(reg_key, NOW + 3), SRC, PORT, NOW + 3)
    assert stored(r2, alice.key) == (shared_of(reg_private, alice), None)
    assert r2.sealer.agreements == 1 and r2.counters["registered"] == 2


def test_restore_is_refused_once_the_registry_holds_peers(reg_private: PrivateKey) -> None:
    """restore() writes rows as they were stored and builds the expiry wheel afresh: into a
    registry already holding rows or watchers it would lose them from the wheel."""
    r = make(reg_private)
    alice = Peer()
    r.receive(alice.register(bytes(reg_private.public_key)), SRC, PORT, NOW)
    with pytest.raises(LocalProtocolError, match="empty registry"):
        r.restore(r.peers.values(), NOW + 1)
    assert r.counters["registered"] == 1 and len(r.peers) == 1


def test_shared_keys_reach_neither_events_nor_the_store(
    reg_private: PrivateKey, tmp_path: Path
) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.watch(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, NOW + 1), SRC, PORT, NOW + 1)
    shared = shared_of(reg_private, alice)
    events = r.events()
    assert len(events) == 2 and shared not in pickle.dumps(events)
    store = Store(tmp_path)
    store.apply(events, r.zone.serial, r.wrapped_key)
    store.close()
    on_disk = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())
    wrapped = r.wrapped_key(alice.key)
    assert wrapped is not None and len(wrapped) == 40
    assert alice.key in on_disk and wrapped in on_disk and shared not in on_disk


def test_a_restart_keeps_the_shared_keys_wrapped(reg_private: PrivateKey, tmp_path: Path) -> None:
    """A registrar restarted on its database opens its peers' next boxes without an X25519 step
    (at a million peers the re-keying took longer than the expiry); restarted with another
    private key, or on a damaged row, the key does not unwrap and is agreed again, never used
    wrong (the peer registers as a first contact)."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(bob.register(reg_key), SRC2, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    damaged = bytearray(r.wrapped_key(bob.key) or b"")
    damaged[3] ^= 1
    store._db.execute("UPDATE peers SET wrapped_key=? WHERE key=?", (bytes(damaged), bob.key))
    store.close()
    store = Store(tmp_path)
    entries, _ = store.load()
    r2 = make(reg_private)
    r2.restore(entries, NOW + 1)
    assert stored(r2, alice.key) == (shared_of(reg_private, alice), None)
    assert stored(r2, bob.key) == (NO_KEY, None)  # damaged: dropped, not used
    before = r2.sealer.agreements
    r2.receive(alice.register(reg_key, NOW + 2), SRC, PORT, NOW + 2)
    assert r2.sealer.agreements == before and r2.counters["registered"] == 1
    r2.receive(bob.register(reg_key, NOW + 2), SRC2, PORT, NOW + 2)
    assert r2.sealer.agreements == before + 1 and r2.counters["registered"] == 2
    entries, _ = store.load()
    other = make(PrivateKey.generate())
    other.restore(entries, NOW + 1)
    assert stored(other, alice.key) == (NO_KEY, None)  # another private key: nothing unwraps
    # bob's agreed key reaches the store (refreshes write only times and counters), so the
    # next restart opens his boxes without an X25519 step again
    store.apply(r2.events(), r2.zone.serial, r2.wrapped_key)
    entries, _ = store.load()
    r3 = make(reg_private)
    r3.restore(entries, NOW + 3)
    assert stored(r3, bob.key) == (shared_of(reg_private, bob), None)
    assert stored(r3, alice.key) == (shared_of(reg_private, alice), None)
    store.close()


# -- one mapping per address family --------------------------------------------------------------

SRC6 = Endpoint.parse("[2001:db8:1::20]:40000")
SRC6B = Endpoint.parse("[2001:db8:1::20]:40777")
BOB = Endpoint.parse("198.51.100.30:51820")
BOB_CONTROL = Endpoint.parse("198.51.100.30:50000")


def srv_records(r: Registry, key: bytes) -> list[tuple[int, int, str]]:
    """The SRVs the zone gives for a peer, its own then its alternates' (over TCP the answer
    holds both): (priority, port, first label of the target)."""
    qname = f"{key_label(key)}._wireguard._udp.mesh.test."
    wire = r.zone.answer(dns.message.make_query(qname, "SRV").to_wire(), tcp=True)
    assert wire is not None
    m = dns.message.from_wire(wire)
    srvs = [a for a in m.answer + m.additional if a.rdtype == dns.rdatatype.SRV]
    return [(rd.priority, rd.port, rd.target.labels[0].decode()[:4]) for a in srvs for rd in a]


def addresses_at(r: Registry, key: bytes, rdtype: str) -> list[str]:
    qname = f"{key_label(key)}._wireguard._udp.mesh.test."
    wire = r.zone.answer(dns.message.make_query(qname, rdtype).to_wire(), tcp=True)
    assert wire is not None
    return [str(rd) for rrset in dns.message.from_wire(wire).answer for rd in rrset]


def txt_of(r: Registry, key: bytes) -> dict[str, str]:
    qname = f"{key_label(key)}._wireguard._udp.mesh.test."
    wire = r.zone.answer(dns.message.make_query(qname, "TXT").to_wire(), tcp=True)
    assert wire is not None
    (rrset,) = dns.message.from_wire(wire).answer
    strings = [s.decode() for rd in rrset for s in rd.strings]
    return dict(s.split("=", 1) for s in strings)


def pushed_to(out: list[tuple[bytes, Endpoint]], peer: Peer, reg_key: bytes, at: Endpoint) -> list:
    """The keys pushed to ``peer``'s control address in ``out``."""
    changed = []
    for data, dest in out:
        if dest == at:
            _, push = sealed.open_sealed(peer.sealer, stun.decode(data), reg_key)
            assert isinstance(push, sealed.Push)
            changed += push.changed
    return changed


def watched_by_bob(r: Registry, reg_key: bytes) -> Peer:
    bob = Peer()
    r.receive(bob.register(reg_key), BOB, PORT, NOW)
    watch(r, bob, reg_key, BOB_CONTROL)
    return bob


def test_a_peer_registering_over_ipv4_and_ipv6_keeps_both_mappings(
    reg_private: PrivateKey,
) -> None:
    """The issue's acceptance test: the IPv6 registration does not replace the IPv4 mapping."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    bob = watched_by_bob(r, reg_key)
    alice = Peer()
    r.receive(alice.register(reg_key, addresses=(LAN,)), SRC, PORT, NOW)
    r.events()
    out = r.receive(alice.register(reg_key, NOW + 1, addresses=(LAN,)), SRC6, PORT, NOW + 1)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC, SRC6) and entry.endpoint == SRC
    assert entry.refreshed == (NOW, NOW + 1) and entry.since == NOW  # since: the IPv4 mapping's
    assert [e.change for e in r.events()] == [Change.CHANGED]
    assert pushed_to(out, bob, reg_key, BOB_CONTROL) == [alice.key]
    # IPv4 stays the public candidate (what wgsd-client reads); IPv6 is a candidate at 5
    assert srv_records(r, alice.key) == [(0, 40000, key_label(alice.key)[:4]),
                                         (5, 40000, "ipv6"), (10, 51820, "lan2")]  # fmt: skip
    assert addresses_at(r, alice.key, "A") == ["198.51.100.20"]
    # both families refresh without publishing anything or pushing
    serial = r.zone.serial
    for i, src in enumerate((SRC, SRC6, SRC6, SRC), 2):
        data = alice.register(reg_key, NOW + i, addresses=(LAN,))
        assert r.receive(data, src, PORT, NOW + i) == []
        assert [e.change for e in r.events()] == [Change.REFRESHED]
    assert r.zone.serial == serial
    assert r.peers[alice.key].mappings == (SRC, SRC6)
    assert r.peers[alice.key].refreshed == (NOW + 5, NOW + 4)
    # and the Status answering a Watch carries both, IPv4 first
    ((data, _),) = r.receive(alice.watch(reg_key, NOW + 6), SRC, PORT, NOW + 6)
    _, status = sealed.open_sealed(alice.sealer, stun.decode(data), reg_key)
    assert isinstance(status, sealed.Status) and status.observed == (SRC, SRC6)


def test_ipv4_first_whatever_family_registered_first(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC6, PORT, NOW)
    assert r.peers[alice.key].mappings == (SRC6,)
    r.receive(alice.register(reg_key, NOW + 3), SRC, PORT, NOW + 3)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC, SRC6) and entry.refreshed == (NOW + 3, NOW)
    assert entry.since == NOW + 3  # the public candidate changed from the IPv6 to the IPv4 one
    assert [k for k, _, _ in srv_records(r, alice.key)] == [0, 5]


def test_each_family_refreshes_and_moves_independently(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    bob = watched_by_bob(r, reg_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, NOW + 5), SRC6, PORT, NOW + 5)
    r.receive(alice.register(reg_key, NOW + 20), SRC, PORT, NOW + 20)
    assert r.peers[alice.key].refreshed == (NOW + 20, NOW + 5)
    r.events()
    # the IPv6 mapping moves (a new port): only it changes; since is the IPv4 mapping's
    out = r.receive(alice.register(reg_key, NOW + 21), SRC6B, PORT, NOW + 21)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC, SRC6B) and entry.refreshed == (NOW + 20, NOW + 21)
    assert entry.since == NOW
    assert [e.change for e in r.events()] == [Change.CHANGED]
    assert pushed_to(out, bob, reg_key, BOB_CONTROL) == [alice.key]
    assert (5, 40777, "ipv6") in srv_records(r, alice.key)
    # the IPv4 mapping moves: since with it, the IPv6 mapping stays
    r.receive(alice.register(reg_key, NOW + 22), SRC2, PORT, NOW + 22)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC2, SRC6B) and entry.since == NOW + 22
    assert txt_of(r, alice.key)["since"] == str(int(NOW + 22))


def test_a_stale_ipv6_mapping_is_dropped_while_ipv4_refreshes(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    bob = watched_by_bob(r, reg_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key), SRC6, PORT, NOW)
    for t in (NOW + 20, NOW + 40):  # IPv6 not stale yet: plain refreshes
        assert r.receive(alice.register(reg_key, t), SRC, PORT, t) == []
        r.receive(bob.register(reg_key, t), BOB, PORT, t)
        watch(r, bob, reg_key, BOB_CONTROL, t)
    assert r.peers[alice.key].mappings == (SRC, SRC6)
    r.events()
    assert r.expire(NOW + 55) == [] and r.peers[alice.key].mappings == (SRC, SRC6)
    serial = r.zone.serial  # (expire published the IPv6 mapping, held back at NOW)
    # IPv6 last registered 60 s ago: the IPv4 refresh drops it, republished and pushed
    out = r.receive(alice.register(reg_key, NOW + 60), SRC, PORT, NOW + 60)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC,) and entry.refreshed == (NOW + 60,) and entry.since == NOW
    (event,) = r.events()
    assert event.change == Change.CHANGED and event.peer == entry
    assert pushed_to(out, bob, reg_key, BOB_CONTROL) == [alice.key]
    assert r.zone.serial == serial + 1
    assert srv_records(r, alice.key) == [(0, 40000, key_label(alice.key)[:4])]
    assert r.expire(NOW + 61) == [] and alice.key in r.peers


def test_a_stale_mapping_is_dropped_at_the_peers_watch_too(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    bob = watched_by_bob(r, reg_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, NOW + 30), SRC6, PORT, NOW + 30)
    watch(r, bob, reg_key, BOB_CONTROL, NOW + 30)
    r.events()
    control = Endpoint.parse("[2001:db8:1::20]:50000")
    out = r.receive(alice.watch(reg_key, NOW + 60), control, PORT, NOW + 60)
    assert out[0][1] == control
    _, status = sealed.open_sealed(alice.sealer, stun.decode(out[0][0]), reg_key)
    assert isinstance(status, sealed.Status)
    # the IPv4 mapping is stale (60 s), the IPv6 one is not: it is the public mapping now
    assert status.observed == (SRC6,) and status.serial == r.zone.serial
    assert pushed_to(out[1:], bob, reg_key, BOB_CONTROL) == [alice.key]
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC6,) and entry.since == NOW + 60
    assert [e.change for e in r.events()] == [Change.CHANGED]
    assert addresses_at(r, alice.key, "AAAA") == ["2001:db8:1::20"]


def test_a_peer_is_withdrawn_when_no_mapping_is_left(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    alice, carol = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(carol.register(reg_key, NOW + 5), SRC2, PORT, NOW + 5)
    r.receive(alice.register(reg_key, NOW + 10), SRC6, PORT, NOW + 10)
    r.events()
    assert r.next_timer() == NOW + 55  # carol's; alice's row is as old as her IPv6 mapping
    r.expire(NOW + 59)
    assert alice.key in r.peers and carol.key not in r.peers
    assert r.next_timer() == NOW + 60
    r.expire(NOW + 60.5)
    assert not r.peers
    assert [(e.change, e.peer.mappings) for e in r.events()] == [
        (Change.WITHDRAWN, (SRC2,)), (Change.WITHDRAWN, (SRC, SRC6))
    ]  # fmt: skip


def test_a_peer_with_only_ipv6_is_published_with_aaaa_as_its_public_candidate(
    reg_private: PrivateKey,
) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key, addresses=(SRC6, LAN)), SRC6, PORT, NOW)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC6,) and entry.nat == NatKind.NONE  # its own address: no NAT
    assert candidates_of(entry) == (
        Candidate(SRC6, CandidateKind.PUBLIC, 0), Candidate(LAN, CandidateKind.LAN, 10)
    )  # fmt: skip
    assert srv_records(r, alice.key) == [(0, 40000, key_label(alice.key)[:4]),
                                         (10, 51820, "lan1")]  # fmt: skip
    assert addresses_at(r, alice.key, "AAAA") == ["2001:db8:1::20"]
    assert addresses_at(r, alice.key, "A") == []
    assert txt_of(r, alice.key)["nat"] == "none"


def test_the_ipv6_mapping_is_not_published_twice(reg_private: PrivateKey) -> None:
    """An IPv6 mapping that is also a reported address (no NAT on IPv6) is one candidate."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    other_v6 = Endpoint.parse("[2a01:4f8::9]:51820")  # a global address
    addresses = (LAN, SRC6, other_v6)
    r.receive(alice.register(reg_key, addresses=addresses), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, addresses=addresses), SRC6, PORT, NOW)
    assert candidates_of(r.peers[alice.key]) == (
        Candidate(SRC, CandidateKind.PUBLIC, 0),
        Candidate(SRC6, CandidateKind.IPV6, 5),
        Candidate(LAN, CandidateKind.LAN, 10),
        Candidate(other_v6, CandidateKind.IPV6, 5),
    )


def test_nat_is_classified_per_family(reg_private: PrivateKey) -> None:
    """A probe to the alternate port is compared with the mapping of its own family; the
    published class is the IPv4 one while there is an IPv4 mapping."""
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key), SRC6, PORT, NOW)
    # IPv6 probed first: a cone for IPv6 (compared with the IPv4 mapping it would be symmetric)
    r.receive(alice.register(reg_key, secondary=True), SRC6, ALT, NOW)
    entry = r.peers[alice.key]
    assert entry.secondary == (SRC6,) and entry.nat == NatKind.UNKNOWN  # IPv4 not probed yet
    assert classify(SRC6, (), SRC6) == NatKind.CONE
    # IPv4: another port toward the alternate port, symmetric; it is the published class
    r.events()
    r.receive(alice.register(reg_key, secondary=True), Endpoint.parse("198.51.100.20:40999"),
              ALT, NOW)  # fmt: skip
    entry = r.peers[alice.key]
    assert entry.nat == NatKind.SYMMETRIC and txt_of(r, alice.key)["nat"] == "symmetric"
    assert [e.change for e in r.events()] == [Change.CHANGED]
    # the IPv4 mapping goes stale: the IPv6 class is published, from its own probe
    r.receive(alice.register(reg_key, NOW + 60), SRC6, PORT, NOW + 60)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC6,) and entry.secondary == (SRC6,)
    assert entry.nat == NatKind.CONE and txt_of(r, alice.key)["nat"] == "cone"
    # a new IPv6 mapping forgets the IPv6 probe only
    r.receive(alice.register(reg_key, NOW + 61), SRC, PORT, NOW + 61)
    r.receive(alice.register(reg_key, secondary=True), SRC, ALT, NOW + 61)
    r.receive(alice.register(reg_key, NOW + 62), SRC6B, PORT, NOW + 62)
    entry = r.peers[alice.key]
    assert entry.mappings == (SRC, SRC6B) and entry.secondary == (SRC,)
    assert entry.nat == NatKind.CONE


def test_a_probe_of_a_family_with_no_mapping_classifies_nothing(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.events()
    assert r.receive(alice.register(reg_key, secondary=True), SRC6, ALT, NOW) == []
    entry = r.peers[alice.key]
    assert entry.secondary == () and entry.nat == NatKind.UNKNOWN
    assert entry.register_counter == alice.counter  # accepted: its counter is the floor
    events = r.events()  # nothing published: only the row for the store (the floor is durable)
    assert [type(e) for e in events] == [Refresh]
    assert peerrow.register_counter(events[0].row) == alice.counter


def test_restore_drops_stale_mappings_one_by_one(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, NOW + 30), SRC6, PORT, NOW + 30)
    r.receive(bob.register(reg_key, NOW + 5), SRC2, PORT, NOW + 5)
    r.receive(bob.register(reg_key, NOW + 8), SRC6B, PORT, NOW + 8)
    r2 = make(reg_private, expiry=50.0)
    r2.restore(r.peers.values(), NOW + 60)
    assert list(r2.peers) == [alice.key]  # bob: both stale
    entry = r2.peers[alice.key]
    assert entry.mappings == (SRC6,) and entry.refreshed == (NOW + 30,)
    assert srv_records(r2, alice.key) == [(0, 40000, key_label(alice.key)[:4])]


@pytest.mark.parametrize("since", [math.inf, -math.inf, math.nan, 2.0**63, -(2.0**64)])
def test_restore_skips_a_peer_whose_since_is_no_time(reg_private: PrivateKey, since: float) -> None:
    """A damaged store (``since`` is a SQLite REAL) loses that one peer at startup, not the
    registrar: the others are served."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(bob.register(reg_key), SRC2, PORT, NOW)
    entries = [r.peers[alice.key], replace(r.peers[bob.key], since=since)]
    r2 = make(reg_private)
    assert r2.restore(entries, NOW + 1) == 1  # one damaged entry, counted
    assert list(r2.peers) == [alice.key] and r2.zone.record_of(bob.key) is None


def test_the_store_keeps_both_mappings(reg_private: PrivateKey, tmp_path: Path) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key, addresses=(LAN,)), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, NOW + 1, addresses=(LAN,)), SRC6, PORT, NOW + 1)
    r.receive(alice.register(reg_key, NOW + 1, secondary=True), SRC6B, ALT, NOW + 1)
    r.receive(alice.register(reg_key, NOW + 1, secondary=True), SRC2, ALT, NOW + 1)
    r.receive(bob.register(reg_key, NOW + 2), SRC6, PORT, NOW + 2)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial)
    store.close()
    store = Store(tmp_path)
    entries, serial = store.load()
    assert [s.entry for s in entries] == list(r.peers.values()) and serial == r.zone.serial
    assert r.peers[alice.key].secondary == (SRC2, SRC6B)
    assert r.peers[alice.key].nat == NatKind.SYMMETRIC
    store.close()


OLD_SCHEMA = """
CREATE TABLE peers (
    key BLOB PRIMARY KEY, name TEXT NOT NULL, endpoint TEXT NOT NULL, addresses TEXT NOT NULL,
    nat TEXT NOT NULL, since REAL NOT NULL, last_seen REAL NOT NULL,
    register_counter INTEGER NOT NULL, watch_counter INTEGER NOT NULL, software TEXT NOT NULL,
    secondary TEXT
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_database_from_before_per_family_mappings_still_loads(tmp_path: Path) -> None:
    """One endpoint column and no ``refreshed``: the column is added, the rows read as one
    mapping last registered at ``last_seen``, and the table takes new rows."""
    db = sqlite3.connect(tmp_path / "registrar.sqlite3")
    db.executescript(OLD_SCHEMA)
    old = [(bytes(32), "alice", str(SRC), f"{LAN} {V6}", "cone", NOW - 5, NOW, 7, 8, "wgmesh/0.1",
            str(SRC)),
           (bytes(range(32)), "", str(V6), "", "unknown", NOW, NOW + 1, 9, 0, "", None),
           (b"\x01" * 32, "bad", "nonsense", "", "cone", NOW, NOW, 1, 0, "", None)]  # fmt: skip
    db.executemany("INSERT INTO peers VALUES (?,?,?,?,?,?,?,?,?,?,?)", old)
    db.execute("INSERT INTO meta VALUES ('serial', 41)")
    db.commit()
    db.close()
    store = Store(tmp_path)
    entries, serial = store.load()
    assert serial == 41
    assert [s.entry for s in entries] == [  # the unreadable row is skipped
        PeerEntry(bytes(32), "alice", (SRC,), (LAN, V6), NatKind.CONE, NOW - 5, (NOW,), 7, 8,
                  "wgmesh/0.1", (), (SRC,)),
        PeerEntry(bytes(range(32)), "", (V6,), (), NatKind.UNKNOWN, NOW, (NOW + 1,), 9, 0, ""),
    ]  # fmt: skip
    dual = PeerEntry(bytes(32), "alice", (SRC, V6), (), NatKind.NONE, NOW, (NOW + 2, NOW + 3), 10,
                     8, "", (), (SRC2, V6B))  # fmt: skip
    store.apply([PeerEvent(Change.CHANGED, dual)], 42)
    store.close()
    store = Store(tmp_path)
    entries, serial = store.load()
    assert serial == 42 and list(entries)[-1] == (dual, None)
    store.close()


def test_unreadable_mappings_in_the_store_are_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good = PeerEntry(bytes(32), "", (SRC, V6), (), NatKind.NONE, NOW, (NOW, NOW), 1, 0, "")
    store.apply([PeerEvent(Change.ADDED, good)], 2)
    bad = [(f"{V6} {SRC}", f"{NOW!r} {NOW!r}", None),  # IPv6 first
           (f"{SRC} {SRC2}", f"{NOW!r} {NOW!r}", None),  # two of one family
           (f"{SRC} {V6}", f"{NOW!r}", None),  # a time missing
           ("", "", None),  # no mapping
           (str(SRC), f"{NOW!r}", f"{V6B} {SRC2}")]  # secondary probes out of order  # fmt: skip
    for i, (mappings, refreshed, secondary) in enumerate(bad, 1):
        store._db.execute(
            "INSERT INTO peers (key, name, endpoint, addresses, nat, since, last_seen,"
            " register_counter, watch_counter, software, secondary, refreshed)"
            " VALUES (?, '', ?, '', 'none', 0, ?, 1, 0, '', ?, ?)",
            (bytes([i]) * 32, mappings, NOW, secondary, refreshed),
        )
    entries, _ = store.load()
    assert list(entries) == [(good, None)] and store.unreadable == len(bad)
    store.close()


mapping4 = st.sampled_from([SRC, SRC2, Endpoint.parse("203.0.113.9:1")])
mapping6 = st.sampled_from([SRC6, SRC6B, V6])
some_addresses = st.sampled_from([(), (LAN,), (LAN, V6), (V6B,)])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(mapping4.map(lambda ep: (ep,)), mapping6.map(lambda ep: (ep,)),
              st.tuples(mapping4, mapping6)),
    st.tuples(st.floats(NOW - 100, NOW), st.floats(NOW - 100, NOW)),
    some_addresses,
    st.sampled_from(["", "alice", "bé"]),
    st.sampled_from([(), (SRC,), (SRC6,), (SRC2, SRC6B)]),
    st.one_of(mapping4, mapping6),
    some_addresses,
    st.sampled_from(["", "alice"]),
)  # fmt: skip
def test_the_packed_refresh_is_the_full_one(
    mappings: tuple[Endpoint, ...],
    times: tuple[float, float],
    addresses: tuple[Endpoint, ...],
    name: str,
    secondary: tuple[Endpoint, ...],
    source: Endpoint,
    new_addresses: tuple[Endpoint, ...],
    new_name: str,
) -> None:
    """peerrow.refresh rewrites a row in place exactly when a registration changes nothing
    published, and then into the bytes the full path packs."""
    secondary = tuple(s for s in secondary if any(s.family == m.family for m in mappings))
    refreshed = times[: len(mappings)]
    entry = PeerEntry(bytes(32), name, mappings, addresses, NatKind.CONE, NOW - 200, refreshed,
                      5, 3, "old", (), secondary)  # fmt: skip
    row, shared, now, limit = _row(entry, NO_KEY), bytes(range(32)), NOW + 1, NOW - 50
    done = peerrow.refresh(row, source, new_addresses, new_name, now, 6, "new", shared, limit)
    others = [t for m, t in zip(mappings, refreshed, strict=True) if m.family != source.family]
    unchanged = (source in mappings and (addresses, name) == (new_addresses, new_name)
                 and all(t >= limit for t in others))  # fmt: skip
    assert (done is not None) == unchanged
    if done is None:
        return
    new, since, watch_counter, nat, *unpacked = done
    times_after = tuple(now if m == source else t for m, t in zip(mappings, refreshed, strict=True))
    after = PeerEntry(bytes(32), name, mappings, addresses, NatKind.CONE, NOW - 200, times_after,
                      6, 3, "new", (), secondary)  # fmt: skip
    assert new == _row(after, shared)
    assert (since, watch_counter, nat) == (NOW - 200, 3, NatKind.CONE)
    assert unpacked == [mappings, times_after, secondary]


def test_pushes_are_coalesced_per_window(reg_private: PrivateKey) -> None:
    """A peer changing its port 20 times a second, with three watchers: each watcher gets the
    first change at once, then at most one Push per ``push_delay`` naming what changed."""
    r = make(reg_private, push_delay=0.25)
    reg_key = bytes(reg_private.public_key)
    watchers = [Peer() for _ in range(3)]
    for i, w in enumerate(watchers):
        watch(r, w, reg_key, Endpoint.parse(f"198.51.100.{40 + i}:5000"))
    mover = Peer()
    out: list[tuple[bytes, Endpoint]] = []
    for step in range(20):  # one second
        now = NOW + step / 20
        out += r.receive(mover.register(reg_key, now), Endpoint.parse(f"192.0.2.1:{1000 + step}"),
                         PORT, now)  # fmt: skip
        timer = r.next_timer()
        if timer is not None and timer <= now + 0.05:
            out += r.expire(timer)
    out += r.expire(NOW + 2.0)
    assert r.counters["registered"] == 20
    per_watcher = len(out) / 3
    assert per_watcher <= 1 + 1.0 / 0.25 + 1  # the first at once, then one per window
    for i, w in enumerate(watchers):
        keys = pushed_to(out, w, reg_key, Endpoint.parse(f"198.51.100.{40 + i}:5000"))
        assert set(keys) == {mover.key}


def test_a_watch_with_a_spoofed_source_makes_no_push_target(reg_private: PrivateKey) -> None:
    """An attacker with a key of its own (``--open``) sends Watches carrying a victim's source
    address, replaying them too. The victim gets the Status answers (one each, no larger than
    the Watch) and never a Push, however many peers change afterwards."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    mallory, victim = Peer(), Endpoint.parse("192.0.2.200:53")
    inbound = outbound = 0
    for i in range(5):
        data = mallory.watch(reg_key, NOW + i)
        for _ in range(3):  # each sent three times
            out = r.receive(data, victim, PORT, NOW + i)
            inbound += len(data)
            outbound += sum(len(d) for d, a in out if a == victim)
    assert mallory.key not in r.watchers and r.counters["unproven"] >= 5
    assert 0 < outbound <= inbound
    changed = [Peer() for _ in range(20)]
    out = []
    for j, peer in enumerate(changed):
        out += r.receive(peer.register(reg_key, NOW + 10), Endpoint.parse(f"198.51.100.{j}:1"),
                         PORT, NOW + 10)  # fmt: skip
    out += r.expire(NOW + 11)
    assert [a for _, a in out if a == victim] == []


@pytest.mark.parametrize("interest", [None, (), (bytes(8),) * 3])
def test_an_unproven_watch_is_answered_only_when_no_smaller_than_its_status(
    reg_private: PrivateKey, interest: tuple[bytes, ...] | None
) -> None:
    """Never more bytes out than in toward an unproven address: a padded Watch (as daemons send
    it) gets its Status, at most its own size even with both families observed and an IPv6
    source; the same Watch unpadded is smaller than that Status, gets no answer and is
    counted. Once the source has proven itself, an unpadded Watch is answered."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    alice.interest = interest
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key), Endpoint.parse("[2001:db8::7]:40000"), PORT, NOW)
    control = Endpoint.parse("[2001:db8::7]:50000")
    data = alice.watch(reg_key)
    out = r.receive(data, control, PORT, NOW)
    assert len(out) == 1 and 0 < len(out[0][0]) <= len(data)
    status = _opened(alice, out[0][0], reg_key)
    assert isinstance(status, sealed.Status) and len(status.observed) == 2
    assert not status.proven
    alice.padded = False
    data = alice.watch(reg_key)
    assert r.receive(data, control, PORT, NOW) == []
    assert r.counters["unpadded"] == 1
    alice.cookie = status.cookie  # proven: the answer may be larger than an unpadded Watch
    data = alice.watch(reg_key)
    out = r.receive(data, control, PORT, NOW)
    assert len(out) == 1 and len(out[0][0]) > len(data)
    opened = _opened(alice, out[0][0], reg_key)
    assert isinstance(opened, sealed.Status) and opened.proven


def test_pushes_go_only_to_the_watchers_that_asked_for_the_peer(
    reg_private: PrivateKey,
) -> None:
    """Endpoints mode: each watcher names its configured peers; mesh mode names none (every
    peer). A change is pushed to the mesh watcher and to the watchers that named the peer, and
    a change nobody asked for is neither pushed nor gathered."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob, carol, mesh = Peer(), Peer(), Peer(), Peer()
    bob.interest = (sealed.key_id(alice.key),)
    carol.interest = (sealed.key_id(bob.key),)
    at = {p.key: Endpoint.parse(f"198.51.100.{60 + i}:5000")
          for i, p in enumerate((bob, carol, mesh))}  # fmt: skip
    for p in (bob, carol, mesh):
        watch(r, p, reg_key, at[p.key])
    out = r.receive(alice.register(reg_key), SRC, PORT, NOW)
    assert pushed_to(out, bob, reg_key, at[bob.key]) == [alice.key]
    assert pushed_to(out, mesh, reg_key, at[mesh.key]) == [alice.key]
    assert pushed_to(out, carol, reg_key, at[carol.key]) == []
    # bob changes now: carol asked for him; the window is open, so it is gathered
    out = r.receive(bob.register(reg_key, NOW + 1), Endpoint.parse("192.0.2.9:1"), PORT, NOW + 1)
    assert pushed_to(out, carol, reg_key, at[carol.key]) == [bob.key]
    assert pushed_to(out, mesh, reg_key, at[mesh.key]) == [bob.key]
    assert pushed_to(out, bob, reg_key, at[bob.key]) == []  # not about himself
    # a registrar where only bob watches, asking for alice: dave's change queues nothing
    r2 = make(reg_private)
    watch(r2, bob, reg_key, at[bob.key])
    dave = Peer()
    assert r2.receive(dave.register(reg_key), SRC2, PORT, NOW) == []  # bob did not ask
    assert r2.next_timer() == NOW + r2.config.expiry
    # a new Watch replaces the interest
    bob.interest = (sealed.key_id(dave.key),)
    watch(r2, bob, reg_key, at[bob.key], NOW + 2)
    out = r2.receive(dave.register(reg_key, NOW + 3), Endpoint.parse("192.0.2.9:2"), PORT, NOW + 3)
    assert pushed_to(out, bob, reg_key, at[bob.key]) == [dave.key]


def test_replays_of_a_peers_own_messages_do_not_spend_its_rate_limit(
    reg_private: PrivateKey,
) -> None:
    """An attacker who captured one Register and one Watch of a peer replays them at 250/s
    each, from anywhere, for the whole freshness window: the replays are refused before the
    key's bucket is charged, so the peer's own registrations and Watches all go through."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    control = Endpoint.parse("198.51.100.30:50000")
    captured_reg = alice.register(reg_key)
    r.receive(captured_reg, SRC, PORT, NOW)
    watch(r, alice, reg_key, control)
    captured_watch = alice.watch(reg_key)
    r.receive(captured_watch, control, PORT, NOW)
    served = 0
    for step in range(100):  # 10 s: one probe round of alice per second, 500 replays a second
        now = NOW + step / 10
        for i in range(25):
            src = Endpoint.parse(f"203.0.113.{i}:{1000 + step}")
            r.receive(captured_reg, src, PORT, now)
            r.receive(captured_watch, src, PORT, now)
        if step % 10 == 0:
            before = r.counters["registered"], r.counters["watched"]
            r.receive(alice.register(reg_key, now), SRC, PORT, now)
            r.receive(alice.watch(reg_key, now), control, PORT, now)
            served += (r.counters["registered"], r.counters["watched"]) == (
                before[0] + 1,
                before[1] + 1,
            )
    assert served == 10
    assert r.counters["key_limited"] == 0 and r.counters["replay"] == 5000


def test_a_repunch_is_passed_on_only_from_and_to_proven_addresses(
    reg_private: PrivateKey,
) -> None:
    """alice's path to bob stalled: her Repunch from her proven control address makes the
    registrar ask bob (at his) to send toward her; spoofed or replayed, or to a peer that did
    not ask for alice's news, it makes nothing."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob, carol = Peer(), Peer(), Peer()
    at = {p.key: Endpoint.parse(f"198.51.100.{70 + i}:5000")
          for i, p in enumerate((alice, bob, carol))}  # fmt: skip
    carol.interest = (sealed.key_id(bob.key),)  # carol does not care about alice
    for p in (alice, bob, carol):
        watch(r, p, reg_key, at[p.key])
    alice.counter += 1
    data = alice.message(reg_key, sealed.Repunch(int(NOW * 1000), alice.counter,
                                                 (bob.key, carol.key, alice.key)))  # fmt: skip
    assert r.receive(data, Endpoint.parse("192.0.2.200:53"), PORT, NOW) == []  # spoofed
    out = r.receive(data, at[alice.key], PORT, NOW)
    assert [a for _, a in out] == [at[bob.key]]
    _, told = sealed.open_sealed(bob.sealer, stun.decode(out[0][0]), reg_key)
    assert isinstance(told, sealed.Repunch) and told.peers == (alice.key,)
    assert r.receive(data, at[alice.key], PORT, NOW) == []  # replayed
    assert r.counters["repunch"] == 1


def test_a_restore_moves_the_serial_on_by_exactly_one(reg_private: PrivateKey) -> None:
    """However many peers come back, and also when none does (restarted after the expiry)."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    peers = [Peer() for _ in range(30)]
    for i, peer in enumerate(peers):
        r.receive(peer.register(reg_key), Endpoint.parse(f"198.51.100.{i}:1"), PORT, NOW)
    entries = list(r.peers.values())
    for later, saved in ((NOW + 1, 1000), (NOW + 500, 2**32 - 1)):
        again = make(reg_private)
        again.zone.set_serial(saved)
        again.restore(entries, later)
        assert again.zone.serial == ((saved + 1) % 2**32 or 1)
        assert len(again.peers) == (30 if later == NOW + 1 else 0)


def test_the_store_journals_a_refresh_and_reads_it_back_over_the_row(
    reg_private: PrivateKey, tmp_path: Path
) -> None:
    """A refresh event goes to the refresh journal, not to its row; the store reads the
    journal over the table, so the database reads back as the registry holds the peers, with
    their wrapped keys (more in tests/test_refreshlog.py)."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key, addresses=(LAN,)), SRC, PORT, NOW)
    r.receive(bob.register(reg_key), SRC2, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    r.receive(alice.register(reg_key, NOW + 5, addresses=(LAN,)), SRC, PORT, NOW + 5)
    r.receive(bob.register(reg_key, NOW + 6), SRC2, PORT, NOW + 6)
    events = r.events()
    assert [type(e) for e in events] == [Refresh, Refresh]
    store.apply(events, r.zone.serial, r.wrapped_key)
    assert store.journaled == 2
    entries, _ = store.load()
    stored_entries = {s.entry.key: s for s in entries}
    assert {k: s.entry for k, s in stored_entries.items()} == dict(r.peers.items())
    assert stored_entries[alice.key].wrapped_key == r.wrapped_key(alice.key)
    assert r.peers[alice.key].last_seen == NOW + 5
    store.close()


def test_a_watch_rewrites_only_the_watch_counter_and_the_watch_part(
    reg_private: PrivateKey,
) -> None:
    """A Watch patches its row in place (peerrow.with_watch_counter, then the watch part):
    the row is byte for byte the one a full unpack, replace and repack gives, and a
    restored row without its shared key gains it from the Watch."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key, addresses=(LAN,)), SRC, PORT, NOW)
    watch(r, alice, reg_key, BOB_CONTROL, NOW)
    shared = shared_of(reg_private, alice)
    for later in (1.0, 2.0):
        before = r._rows[alice.key]
        entry = r._entry(alice.key, before)
        out = r.receive(alice.watch(reg_key, NOW + later), BOB_CONTROL, PORT, NOW + later)
        assert len(out) == 1 and r.counters["watched"] == 3 + later - 1
        expected = peerrow.with_watch(
            _row(replace(entry, watch_counter=alice.counter), shared),
            peerrow.pack_watch(NOW + later, BOB_CONTROL),
        )
        assert r._rows[alice.key] == expected
    r2 = make(reg_private)
    r2.restore(r.peers.values(), NOW + 3)
    assert stored(r2, alice.key) == (NO_KEY, None)
    alice.cookie = bytes(16)
    watch(r2, alice, reg_key, BOB_CONTROL, NOW + 3)
    assert stored(r2, alice.key)[0] == shared
    assert peerrow.row_watch_counter(r2._rows[alice.key]) == alice.counter


@pytest.mark.parametrize("first", ["watch", "secondary"])
def test_a_key_agreed_again_reaches_the_store_whatever_came_first(
    reg_private: PrivateKey, tmp_path: Path, first: str
) -> None:
    """A stored key that does not unwrap (a damaged row) is agreed again at the peer's next
    message. When that is a Watch or an alternate-port probe (no event of its own), the row is
    written whole, so the next restart opens the peer's boxes without X25519; the refreshes
    after it write only times and counters."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    store._db.execute("UPDATE peers SET wrapped_key=? WHERE key=?", (bytes(40), alice.key))
    r2 = make(reg_private)
    r2.restore(store.load()[0], NOW + 1)
    assert stored(r2, alice.key) == (NO_KEY, None)
    if first == "watch":
        watch(r2, alice, reg_key, BOB_CONTROL, NOW + 2)
    else:
        r2.receive(alice.register(reg_key, NOW + 2, secondary=True), SRC, PORT + 1, NOW + 2)
    r2.receive(alice.register(reg_key, NOW + 3), SRC, PORT, NOW + 3)
    assert r2.sealer.agreements == 1 and r2.counters["registered"] >= 1
    store.apply(r2.events(), r2.zone.serial, r2.wrapped_key)
    r3 = make(reg_private)
    r3.restore(store.load()[0], NOW + 4)
    assert stored(r3, alice.key) == (shared_of(reg_private, alice), None)
    store.close()


def test_a_watch_from_an_unknown_key_with_counter_zero_is_a_replay(
    reg_private: PrivateKey,
) -> None:
    """The Watch floor of a key with no row and no watcher is 0, as for the other kinds."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    alice.counter = 0
    data = alice.message(reg_key, sealed.padded_watch(sealed.Watch(int(NOW * 1000), 0, 0)))
    assert r.receive(data, BOB_CONTROL, PORT, NOW) == []
    assert r.counters["replay"] == 1 and r.counters["watched"] == 0


def test_an_alternate_port_probe_is_durable_and_its_replay_after_a_restart_refused(
    reg_private: PrivateKey, tmp_path: Path
) -> None:
    """An alternate-port probe that changes nothing published (a cone NAT's second probe)
    still moves the key's Register floor and what the alternate port saw: both reach the
    store with the probe, so an attacker who replays the probe from its own address after a
    registrar restart (to have the peer classified symmetric) is refused as a replay."""
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    r.receive(alice.register(reg_key), SRC, PORT, NOW)
    r.receive(alice.register(reg_key, NOW + 1, secondary=True), SRC, ALT, NOW + 1)
    assert r.peers[alice.key].nat == NatKind.CONE
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    probe = alice.register(reg_key, NOW + 2, secondary=True)
    r.receive(probe, SRC, ALT, NOW + 2)  # the same again: nothing published changes
    assert r.peers[alice.key].register_counter == alice.counter
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    r2 = make(reg_private)
    r2.restore(store.load()[0], NOW + 3)
    assert r2.peers[alice.key].register_counter == alice.counter
    assert r2.peers[alice.key].secondary == (SRC,)
    attacker = Endpoint.parse("203.0.113.66:40123")
    assert r2.receive(probe, attacker, ALT, NOW + 3) == []
    assert r2.counters["replay"] == 1
    assert r2.peers[alice.key].nat == NatKind.CONE
    store.close()
