"""The relay's allocations (wgmesh.proto.relay) and its control through the real Registry
(wgmesh.proto.relayctl): float clock, no sockets."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from tests.test_registry import NOW, PORT, Peer, make, watch
from wgmesh.errors import ConfigError
from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.registry import Registry
from wgmesh.proto.relay import Allocation, Relay, RelayConfig
from wgmesh.proto.relayroute import RelayLeg, RelayPair, RouteTable
from wgmesh.proto.sealed import RelayGrant, RelayOp, RelayRefusal, RelayState

A, B, C, D = (bytes([i]) * 32 for i in (1, 2, 3, 4))
EP = [Endpoint.parse(f"198.51.100.{i}:4000{i}") for i in range(1, 9)]
RELAY_IP = ipaddress.IPv4Address("203.0.113.10")


def relay(**cfg: object) -> Relay:
    cfg.setdefault("low", 40000)
    cfg.setdefault("high", 40009)
    return Relay(RelayConfig(**cfg))  # type: ignore[arg-type]


# -- the allocation table -------------------------------------------------------------------


def test_a_pair_gets_two_ports_once_whoever_asks() -> None:
    r = relay()
    first = r.allocate(B, A, NOW)
    assert isinstance(first, Allocation)
    assert (first.a, first.b, first.port_a, first.port_b) == (A, B, 40000, 40001)
    assert r.allocate(A, B, NOW + 1) is first  # the same pair: the same allocation
    assert r.at_port(40001) is first and r.at_port(40002) is None
    assert first.pair() is None and r.pairs() == []


def test_binds_make_the_pair_and_replays_or_strangers_do_not() -> None:
    r = relay()
    alloc = r.allocate(A, B, NOW)
    assert isinstance(alloc, Allocation)
    assert r.bind(alloc.port_a, B, 5, EP[0], NOW) is None  # B does not own A's port
    assert r.bind(40007, A, 5, EP[0], NOW) is None  # no allocation there
    assert r.bind(alloc.port_a, A, 5, EP[0], NOW) is not None
    assert r.bind(alloc.port_a, A, 5, EP[1], NOW) is None  # a replay, from elsewhere
    assert r.counters["bind_rejected"] == 3
    bound = r.bind(alloc.port_b, B, 9, EP[2], NOW + 1)
    assert bound is not None and bound.ready
    assert r.pairs() == [RelayPair(RelayLeg(40000, EP[0]), RelayLeg(40001, EP[2]))]
    moved = r.bind(alloc.port_a, A, 6, EP[3], NOW + 2)  # A's NAT gave it a new mapping
    assert moved is not None and moved.bound_a == EP[3] and r.counters["rebound"] == 1


def test_caps_per_peer_and_for_the_range() -> None:
    r = relay(per_peer=2, high=40005)  # six ports: three pairs
    assert isinstance(r.allocate(A, B, NOW), Allocation)
    assert isinstance(r.allocate(A, C, NOW), Allocation)
    assert r.allocate(A, D, NOW) is RelayRefusal.PEER_LIMIT
    assert isinstance(r.allocate(B, C, NOW), Allocation)
    assert r.allocate(C, D, NOW) is RelayRefusal.PEER_LIMIT  # C holds two
    assert r.allocate(D, bytes([5]) * 32, NOW) is RelayRefusal.EXHAUSTED
    assert r.allocate(A, A, NOW) is RelayRefusal.SELF
    assert Relay(RelayConfig()).allocate(A, B, NOW) is RelayRefusal.OFF
    assert r.counters["refused"] == 4


def test_lifetimes_unbound_then_idle_and_traffic_keeps_it() -> None:
    r = relay(unbound_ttl=30.0, idle_ttl=300.0)
    unbound = r.allocate(A, B, NOW)
    kept = r.allocate(C, D, NOW)
    assert isinstance(unbound, Allocation) and isinstance(kept, Allocation)
    r.bind(kept.port_a, C, 1, EP[0], NOW + 1)
    r.bind(kept.port_b, D, 1, EP[1], NOW + 2)
    assert r.next_timer() == NOW + 30.0
    assert r.expire(NOW + 29.9) == []
    assert [a.a for a in r.expire(NOW + 30.0)] == [A]
    assert r.next_timer() == NOW + 2 + 300.0
    r.touch(kept.port_a, NOW + 200.0)  # forwarded traffic
    assert r.expire(NOW + 302.0) == [] and r.next_timer() == NOW + 500.0
    assert len(r.expire(NOW + 500.0)) == 1 and len(r) == 0
    assert r.counters["expired_unbound"] == 1 and r.counters["expired_idle"] == 1


def test_freed_ports_are_handed_out_last() -> None:
    r = relay(high=40005)
    first = r.allocate(A, B, NOW)
    assert isinstance(first, Allocation)
    r.release(B, A)
    again = r.allocate(A, C, NOW)
    assert isinstance(again, Allocation) and {again.port_a, again.port_b} == {40002, 40003}
    assert r.release(A, D) is None


def test_restore_keeps_what_fits_today() -> None:
    saved = [
        Allocation(A, B, 40000, 40001, NOW, NOW, EP[0], EP[1], 3, 4),
        Allocation(A, C, 50000, 50001, NOW, NOW),  # outside today's range
        Allocation(C, D, 40001, 40002, NOW, NOW),  # a port taken
        Allocation(D, C, 40004, 40005, NOW, NOW),  # keys out of order: not ours
    ]
    r = relay()
    r.restore(saved)
    assert list(r) == saved[:1]
    alloc = r.allocate(C, D, NOW)
    assert isinstance(alloc, Allocation) and alloc.port_a == 40002
    assert r.bind(40000, A, 3, EP[5], NOW) is None  # the restored floor holds


def test_bad_ranges_are_config_errors() -> None:
    for low, high in ((40000, 0), (80, 90), (40000, 40000), (40000, 70000)):
        with pytest.raises(ConfigError):
            RelayConfig(low=low, high=high)


ops = st.lists(
    st.tuples(
        st.sampled_from(["allocate", "bind", "release", "expire", "touch"]),
        st.sampled_from([A, B, C, D]),
        st.sampled_from([A, B, C, D]),
        st.integers(40000, 40007),
        st.sampled_from(EP[:3]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_invariants_hold_whatever_happens(
    steps: list[tuple[str, bytes, bytes, int, Endpoint]],
) -> None:
    """Whatever the sequence: no port is in two allocations, the caps hold, the forwarding
    table is exactly the bound allocations, and a RouteTable accepts it."""
    r = relay(high=40007, per_peer=2)
    now = NOW
    for counter, (op, x, y, port, ep) in enumerate(steps, 1):
        now += 7.0
        if op == "allocate":
            r.allocate(x, y, now)
        elif op == "bind":
            r.bind(port, x, counter, ep, now)
        elif op == "release":
            r.release(x, y)
        elif op == "expire":
            r.expire(now)
        else:
            r.touch(port, now)
        ports = [p for a in r for p in (a.port_a, a.port_b)]
        assert len(ports) == len(set(ports)) and all(40000 <= p <= 40007 for p in ports)
        for k in (A, B, C, D):
            assert sum(k in (a.a, a.b) for a in r) <= 2
        assert r.pairs() == [p for a in r if (p := a.pair()) is not None]
        RouteTable().set_pairs(r.pairs())


# -- through the registry -------------------------------------------------------------------


class Side:
    """A daemon: its key, its WireGuard port's mapping, its proven control address."""

    def __init__(self, r: Registry, reg_key: bytes, n: int) -> None:
        self.peer = Peer()
        self.wg = Endpoint.parse(f"198.51.100.{n}:51820")
        self.control = Endpoint.parse(f"198.51.100.{n}:40000")
        self.reg_key = reg_key
        r.receive(self.peer.register(reg_key), self.wg, PORT, NOW)
        watch(r, self.peer, reg_key, self.control)

    def request(
        self,
        r: Registry,
        other: Side,
        op: RelayOp = RelayOp.ALLOCATE,
        now: float = NOW,
        source: Endpoint | None = None,
    ) -> list[tuple[bytes, Endpoint]]:
        self.peer.counter += 1
        payload = sealed.RelayRequest(int(now * 1000), self.peer.counter, other.peer.key, op)
        data = self.peer.message(self.reg_key, payload)
        return r.receive(data, source or self.control, PORT, now)

    def bind(self, r: Registry, other: Side, port: int, source: Endpoint, now: float = NOW,
             sent: float | None = None) -> tuple[bytes, list[tuple[bytes, Endpoint]]]:  # fmt: skip
        self.peer.counter += 1
        stamp = int((now if sent is None else sent) * 1000)
        payload = sealed.RelayBind(stamp, self.peer.counter, other.peer.key)
        data = self.peer.message(self.reg_key, payload)
        return data, r.receive_relay(data, source, port, now)

    def grants(self, out: list[tuple[bytes, Endpoint]]) -> list[RelayGrant]:
        got = []
        for data, dest in out:
            if dest != self.control:
                continue
            _, p = sealed.open_sealed(self.peer.sealer, stun.decode(data), self.reg_key)
            if not isinstance(p, sealed.Push):
                assert isinstance(p, RelayGrant)
                got.append(p)
        return got


@pytest.fixture
def reg() -> tuple[Registry, bytes]:
    reg_private = PrivateKey.generate()
    r = make(reg_private)
    r.enable_relay(RelayConfig(low=40000, high=40009), RELAY_IP)
    return r, bytes(reg_private.public_key)


def test_allocation_bind_and_release_end_to_end(reg: tuple[Registry, bytes]) -> None:
    r, reg_key = reg
    alice, bob = Side(r, reg_key, 1), Side(r, reg_key, 2)
    out = alice.request(r, bob)
    (ga,), (gb,) = alice.grants(out), bob.grants(out)
    assert ga.state is RelayState.ALLOCATED and ga.peer == bob.peer.key and not ga.bound
    assert gb.state is RelayState.ALLOCATED and gb.peer == alice.peer.key
    assert ga.relay is not None and gb.relay is not None
    assert ga.relay.ip == RELAY_IP and {ga.relay.port, gb.relay.port} == {40000, 40001}
    assert {a for _, a in out} == {alice.control, bob.control}
    version = r.relay.version
    a_map = Endpoint.parse("192.0.2.50:61001")  # a symmetric NAT: not the registered mapping
    _, out = alice.bind(r, bob, ga.relay.port, a_map)
    (ga,), (gb,) = alice.grants(out), bob.grants(out)
    assert ga.bound and ga.state is RelayState.ALLOCATED and not gb.bound
    b_map = Endpoint.parse("192.0.2.60:62002")
    _, out = bob.bind(r, alice, gb.relay.port, b_map)
    (ga,), (gb,) = alice.grants(out), bob.grants(out)
    assert ga.state is gb.state is RelayState.READY and r.relay.version > version
    assert r.relay.pairs() == [
        RelayPair(RelayLeg(ga.relay.port, a_map), RelayLeg(gb.relay.port, b_map))
    ] or r.relay.pairs() == [
        RelayPair(RelayLeg(gb.relay.port, b_map), RelayLeg(ga.relay.port, a_map))
    ]
    _, out = bob.bind(r, alice, gb.relay.port, b_map, NOW + 20)  # a refresh tells no one
    assert out == [] and r.relay.counters["binds"] == 3
    out = bob.request(r, alice, RelayOp.RELEASE, NOW + 30)
    assert [g.state for g in alice.grants(out)] == [RelayState.RELEASED]
    assert [g.state for g in bob.grants(out)] == [RelayState.RELEASED]
    assert len(r.relay.relay) == 0 and r.relay.pairs() == []
    lines = list(r.relay.log)  # one line each: allocation, the two binds, the release
    assert [line.split()[0] for line in lines] == ["allocated", "bound", "bound", "released"]
    assert lines[1].endswith("waiting for the other side") and lines[2].endswith(": ready")
    assert str(b_map) in lines[2]


def test_binds_by_anyone_else_or_replayed_are_rejected(reg: tuple[Registry, bytes]) -> None:
    """An attacker with a key of its own, another peer's bind replayed from the attacker's
    address, garbage, and a bind to the wrong port: none binds a leg or sends a thing."""
    r, reg_key = reg
    alice, bob, mallory = Side(r, reg_key, 1), Side(r, reg_key, 2), Side(r, reg_key, 3)
    (ga,) = alice.grants(alice.request(r, bob))
    assert ga.relay is not None
    port = ga.relay.port
    evil = Endpoint.parse("203.0.113.66:6666")
    assert mallory.bind(r, alice, port, evil)[1] == []  # not the port's key
    data, out = alice.bind(r, bob, port, Endpoint.parse("192.0.2.50:61001"))
    assert out  # the real one binds
    assert r.receive_relay(data, evil, port, NOW + 1) == []  # the same bind, replayed
    assert r.receive_relay(os.urandom(60), evil, port, NOW) == []
    assert r.receive_relay(data, evil, 40009, NOW) == []  # no allocation at that port
    assert alice.bind(r, bob, port, evil, NOW + 500, sent=NOW)[1] == []  # stale
    alloc = r.relay.relay.get(alice.peer.key, bob.peer.key)
    assert alloc is not None and alloc.bound(alice.peer.key) == Endpoint.parse("192.0.2.50:61001")
    assert r.relay.counters["bind_junk"] >= 4 and r.relay.relay.counters["bind_rejected"] == 1


def test_requests_only_from_a_proven_address_about_a_reachable_peer(
    reg: tuple[Registry, bytes],
) -> None:
    r, reg_key = reg
    alice, bob = Side(r, reg_key, 1), Side(r, reg_key, 2)
    victim = Endpoint.parse("192.0.2.200:53")
    assert alice.request(r, bob, source=victim) == []  # spoofed source: nothing at all
    stranger = Peer()  # admitted (open) but neither registered nor watching
    stranger_side = Side.__new__(Side)
    stranger_side.peer = stranger
    (g,) = alice.grants(alice.request(r, stranger_side))
    assert g.state is RelayState.REFUSED and g.reason is RelayRefusal.UNKNOWN_PEER
    (g,) = alice.grants(alice.request(r, alice))
    assert g.state is RelayState.REFUSED and g.reason is RelayRefusal.SELF
    assert len(r.relay.relay) == 0
    # a replayed request is refused (the counter floor)
    alice.peer.counter += 1
    payload = sealed.RelayRequest(int(NOW * 1000), alice.peer.counter, bob.peer.key)
    data = alice.peer.message(reg_key, payload)
    assert r.receive(data, alice.control, PORT, NOW)
    replays = r.counters["replay"]
    assert r.receive(data, alice.control, PORT, NOW) == []
    assert r.relay.counters["request_rejected"] == 1  # the spoofed one
    assert r.counters["replay"] == replays + 1  # refused before it costs alice anything


def test_relaying_off_refuses(reg: tuple[Registry, bytes]) -> None:
    reg_private = PrivateKey.generate()
    r = make(reg_private)
    key = bytes(reg_private.public_key)
    alice, bob = Side(r, key, 1), Side(r, key, 2)
    (g,) = alice.grants(alice.request(r, bob))
    assert g.state is RelayState.REFUSED and g.reason is RelayRefusal.OFF
    assert bob.grants(alice.request(r, bob)) == []


def test_a_withdrawn_peer_takes_its_allocations(reg: tuple[Registry, bytes]) -> None:
    r, reg_key = reg
    alice, bob = Side(r, reg_key, 1), Side(r, reg_key, 2)
    alice.request(r, bob)
    # alice keeps registering; bob goes silent and is withdrawn at the expiry
    later = NOW + r.config.expiry - 1
    r.receive(alice.peer.register(reg_key, later), alice.wg, PORT, later)
    watch(r, alice.peer, reg_key, alice.control, later)
    out = r.expire(NOW + r.config.expiry + 1)
    assert bob.peer.key not in r.peers and len(r.relay.relay) == 0
    assert [g.state for g in alice.grants(out)] == [RelayState.RELEASED]


def test_unbound_allocations_expire_and_both_are_told(reg: tuple[Registry, bytes]) -> None:
    r, reg_key = reg
    alice, bob = Side(r, reg_key, 1), Side(r, reg_key, 2)
    alice.request(r, bob)
    assert r.next_timer() is not None
    out = r.expire(NOW + 30.0)
    assert [g.state for g in alice.grants(out)] == [RelayState.RELEASED]
    assert [g.state for g in bob.grants(out)] == [RelayState.RELEASED]
    assert r.relay.log[-1].startswith("expired") and "not bound by both" in r.relay.log[-1]
