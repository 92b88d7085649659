"""Watchers kept in their peers' rows, or on their own (wgmesh.proto.watchers), through the
registry: against a model of who registered and who watched when."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from tests.test_registry import NOW, PORT, Peer, make, watch
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import Registry

REG = PrivateKey.generate()
REG_KEY = bytes(REG.public_key)
PEERS = [Peer() for _ in range(4)]
EXPIRY = 50.0
UNLIMITED = RateLimitConfig(rate=1e9, burst=1e9)


def registry() -> Registry:
    return make(REG, expiry=EXPIRY, rate_limit=UNLIMITED, key_rate_limit=UNLIMITED,
                agreement_limit=UNLIMITED)  # fmt: skip


def drive(r: Registry, now: float) -> None:
    """Run the timer as the registrar does, up to ``now``: never twice at one time."""
    fired: list[float] = []
    while (at := r.next_timer()) is not None and at <= now:
        assert not fired or at > fired[-1], f"the timer fired twice at {at}"
        fired.append(at)
        r.expire(at)
        assert len(fired) < 100


def pushes(out: list[tuple[bytes, Endpoint]]) -> set[Endpoint]:
    return {a for d, a in out if stun.decode(d).msg_type == stun.BINDING_INDICATION}


steps = st.lists(
    st.tuples(
        st.sampled_from(("register", "watch", "wait")),
        st.integers(0, len(PEERS) - 1),
        st.integers(0, 2),  # which of three addresses
        st.sampled_from((0.0, 0.5, 10.0, 25.0, 49.9, 50.0, 75.0)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_watchers_and_rows_live_and_expire_each_by_their_own_time(
    ops: list[tuple[str, int, int, float]],
) -> None:
    """Registers and (proven) Watches in any order, with time moving in steps that land on
    deadlines: a peer is registered until ``expiry`` after its last Register, a watcher is one
    until ``expiry`` after its last Watch, whichever comes first and whether the other exists;
    a watcher's pushes go to its last control address; a new peer is pushed to every watcher
    but itself, kept in a row or not; and the timer never fires twice at one time."""
    r = registry()
    now = NOW
    registered: dict[bytes, float] = {}
    watching: dict[bytes, tuple[float, Endpoint]] = {}
    for op, i, a, dt in ops:
        now += dt
        drive(r, now)
        registered = {k: t for k, t in registered.items() if t + EXPIRY > now}
        watching = {k: w for k, w in watching.items() if w[0] + EXPIRY > now}
        peer = PEERS[i]
        if op == "register":
            source = Endpoint.parse(f"198.51.100.{10 + i}:{40000 + a}")
            out = r.receive(peer.register(REG_KEY, now), source, PORT, now)
            if peer.key not in registered:  # a new peer: every other watcher hears of it
                assert pushes(out) == {w[1] for k, w in watching.items() if k != peer.key}
            registered[peer.key] = now
        elif op == "watch":
            control = Endpoint.parse(f"203.0.113.{10 + i}:{50000 + a}")
            watch(r, peer, REG_KEY, control, now)
            watching[peer.key] = (now, control)
        assert set(r.peers) == set(registered)
        assert set(r.watchers) == set(watching) and len(r.watchers) == len(watching)
        for key, (when, control) in watching.items():
            found = r.watchers[key]
            assert (found.last_watch, found.address) == (when, control)
            assert r.watcher_address(key) == control
        timer = r.next_timer()
        deadlines = [t + EXPIRY for t in registered.values()]
        deadlines += [w[0] + EXPIRY for w in watching.values()]
        if deadlines:  # (the timer also serves the zone's serial and the pushes)
            assert timer is not None and timer <= min(deadlines)


def test_a_watcher_without_a_row_moves_into_the_row_and_out_again() -> None:
    """The Watch before the first Register: the watcher is kept on its own, then in the row
    (under the key object the watcher came with: one per peer), and stays a watcher when the
    row expires before it."""
    r = registry()
    alice, bob = PEERS[0], PEERS[1]
    control = Endpoint.parse("203.0.113.10:50000")
    watch(r, alice, REG_KEY, control, NOW)
    assert r.watchers.alone(alice.key) and alice.key not in r.peers
    watch(r, bob, REG_KEY, Endpoint.parse("203.0.113.11:50000"), NOW)
    out = r.receive(alice.register(REG_KEY, NOW + 1), Endpoint.parse("198.51.100.10:40000"),
                    PORT, NOW + 1)  # fmt: skip
    assert pushes(out) == {Endpoint.parse("203.0.113.11:50000")}  # bob hears of alice
    assert not r.watchers.alone(alice.key) and r.watchers[alice.key].address == control
    assert r.peers[alice.key].watch_counter == r.watchers[alice.key].watch_counter > 0
    key_objects = [k for k in r._rows if k == alice.key]
    assert key_objects[0] is next(k for k in r.zone._peers if k == alice.key)
    watch(r, alice, REG_KEY, control, NOW + 30)  # watching on; no Register after NOW + 1
    drive(r, NOW + 1 + EXPIRY)
    assert alice.key not in r.peers and r.watchers.alone(alice.key)
    assert r.watchers[alice.key].address == control and len(r.watchers) == 1  # bob's went
    drive(r, NOW + 30 + EXPIRY)
    assert not r.watchers and not r.peers and r.next_timer() is None
