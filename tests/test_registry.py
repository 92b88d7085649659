"""The registrar's state machine, pure: datagrams in, datagrams and events out, float clock."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from nacl.bindings import crypto_box_beforenm
from nacl.public import PrivateKey

from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.peerrow import NO_KEY, SHARED_AT, WATCHER, WATCHER_SHARED_AT, pack_endpoint
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import (
    Admission,
    AdmittedPeer,
    Change,
    PeerEntry,
    Registry,
    RegistryConfig,
    _row,
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
        return self.message(reg_key, sealed.Watch(int(now * 1000), self.counter, self.counter - 1))


@pytest.fixture
def reg_private() -> PrivateKey:
    return PrivateKey.generate()


def make(reg_private: PrivateKey, admission: Admission | None = None, **cfg: object) -> Registry:
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
    r = make(reg_private, rate_limit=RateLimitConfig(rate=1e9, burst=1e9))
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


def test_rate_limit_per_source(reg_private: PrivateKey) -> None:
    r = make(reg_private, rate_limit=RateLimitConfig(rate=20.0, burst=5.0))
    reg_key = bytes(reg_private.public_key)
    alice = Peer()
    for _ in range(10):
        r.receive(alice.register(reg_key), SRC, PORT, NOW)
    assert r.counters["rate_limited"] == 5
    assert r.counters["registered"] == 5


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
    assert status.observed == SRC and status.register_counter == alice.counter - 1


def test_changes_are_pushed_to_other_watchers(reg_private: PrivateKey) -> None:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    bob_control = Endpoint.parse("198.51.100.30:50000")
    r.receive(bob.register(reg_key), Endpoint.parse("198.51.100.30:51820"), PORT, NOW)
    r.receive(bob.watch(reg_key), bob_control, PORT, NOW)
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


@pytest.mark.parametrize(
    "endpoint, addresses, secondary",
    [
        (SRC, (), None),
        (SRC, (LAN, V6), SRC),  # a cone NAT: kept as "the same", without a copy
        (SRC, (LAN,), SRC2),  # symmetric: the other mapping is kept
        (V6, (V6,), None),
    ],
)
def test_a_row_unpacks_to_the_entry_it_was_packed_from(
    reg_private: PrivateKey,
    endpoint: Endpoint,
    addresses: tuple[Endpoint, ...],
    secondary: Endpoint | None,
) -> None:
    r = make(reg_private)
    entry = PeerEntry(bytes(range(32)), "bé", endpoint, addresses, NatKind.CONE, NOW - 0.25, NOW,
                      2**64 - 1, 7, "wgmesh/1", (), secondary)  # fmt: skip
    assert r._entry(entry.key, _row(entry, NO_KEY)) == entry


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
    assert (event.peer.last_seen, event.peer.since, event.peer.secondary) == (NOW + 20, NOW, SRC)
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


def test_expiry_of_many_watchers_is_one_pass(reg_private: PrivateKey) -> None:
    r = make(reg_private, expiry=50.0)
    for i in range(3000):
        r.watchers[i.to_bytes(32, "big")] = WATCHER.pack(
            NOW + i / 100, 1, bytes(range(32))
        ) + pack_endpoint(SRC)
    r.expire(NOW + 50 + 15)
    assert len(r.watchers) == 1500 and r.next_timer() == NOW + 15 + 50


# -- shared keys -------------------------------------------------------------------------------


def shared_of(reg_private: PrivateKey, peer: Peer) -> bytes:
    return crypto_box_beforenm(peer.key, bytes(reg_private))


def stored(r: Registry, key: bytes) -> tuple[bytes | None, bytes | None]:
    """The shared key in the key's row and in its watcher record (None: no such record)."""
    row, watcher = r._rows.get(key), r.watchers.get(key)
    return (
        None if row is None else row[SHARED_AT : SHARED_AT + 32],
        None if watcher is None else watcher[WATCHER_SHARED_AT : WATCHER_SHARED_AT + 32],
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
        ((status, _),) = r.receive(alice.watch(reg_key, NOW + i), control, PORT, NOW + i)
        assert isinstance(sealed.open_sealed(alice.sealer, stun.decode(status), reg_key)[1],
                          sealed.Status)  # fmt: skip
    assert r.counters["registered"] == 6 and r.counters["watched"] == 5
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
    assert sealed.open_sealed(alice.sealer, stun.decode(status), reg_key)[1] == sealed.Status(
        int(NOW * 1000), int(NOW * 1_000_000), alice.counter, 0, None, NatKind.UNKNOWN,
        r.zone.serial)  # fmt: skip
    assert stored(r, alice.key) == (None, shared_of(reg_private, alice))
    r.receive(alice.watch(reg_key, NOW + 1), control, PORT, NOW + 1)
    r.receive(alice.register(reg_key, NOW + 1), SRC, PORT, NOW + 1)
    assert stored(r, alice.key) == (shared_of(reg_private, alice),) * 2
    assert r.sealer.agreements == 1


def test_expiry_and_withdrawal_drop_the_shared_key(reg_private: PrivateKey) -> None:
    alice, bob = Peer(), Peer()
    adm = {p.key: AdmittedPeer(p.key) for p in (alice, bob)}
    r = make(reg_private, Admission(open=False, peers=adm), expiry=50.0)
    reg_key = bytes(reg_private.public_key)
    for peer, src in ((alice, SRC), (bob, SRC2)):
        r.receive(peer.register(reg_key), src, PORT, NOW)
        r.receive(peer.watch(reg_key), src, PORT, NOW)
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
    assert stored(r2, alice.key) == (NO_KEY, None)  # shared keys are not persisted
    r2.receive(alice.register(reg_key, NOW + 2), SRC, PORT, NOW + 2)
    r2.receive(alice.register(reg_key, NOW + 3), SRC, PORT, NOW + 3)
    assert stored(r2, alice.key) == (shared_of(reg_private, alice), None)
    assert r2.sealer.agreements == 1 and r2.counters["registered"] == 2


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
    store.apply(events, r.zone.serial)
    store.close()
    on_disk = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())
    assert alice.key in on_disk and shared not in on_disk
