"""The daemon's registrar client, pure: pumped against the registrar's own sans-IO Registry
through a simulated NAT, on a float clock. No sockets, no sleeps."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.proto import sealed, stun
from wgmesh.proto.client import (
    TRANSITIONS,
    ClientConfig,
    MappingObserved,
    Phase,
    PunchAsked,
    RegistrarClient,
    RegistrarState,
    Resolve,
    Transmit,
    Via,
)
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.registry import Admission, Registry, RegistryConfig

NOW = 1_800_000_000.0
REGISTRAR = Endpoint.parse("203.0.113.10:3478")
WG_PUBLIC = Endpoint.parse("198.51.100.20:51820")
"""Our WireGuard port's mapping, as our NAT gives it toward the registrar's primary port."""
WG_PUBLIC_ALT = Endpoint.parse("198.51.100.20:40001")
"""... and toward the alternate port, behind a symmetric NAT."""
CONTROL_PUBLIC = Endpoint.parse("198.51.100.20:50000")
LAN = (Endpoint.parse("10.0.1.2:51820"),)


class Net:
    """A registrar (the real Registry) and one client behind a NAT, with a float clock."""

    def __init__(self, *, symmetric: bool = False, config: ClientConfig | None = None) -> None:
        self.rng = random.Random(7)
        reg_private = PrivateKey(self.rng.randbytes(32))
        zone = Zone(ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h."))
        self.registry = Registry(
            RegistryConfig(), sealed.Sealer(bytes(reg_private)), Admission(open=True), zone,
            self.rng.randbytes, REGISTRAR.port,
        )  # fmt: skip
        self.now = NOW
        self.client = RegistrarClient(
            config or ClientConfig(), self.rng.randbytes(32), REGISTRAR,
            bytes(reg_private.public_key), NOW, self.rng.randbytes, name="alice",
        )  # fmt: skip
        self.client.set_addresses(LAN, NOW)
        self.symmetric = symmetric
        self.up = True
        """False: every datagram to the registrar is lost."""
        self.sent: list[Transmit] = []
        self.sent_at: list[float] = []
        self.events: list[object] = []

    def deliver(self, transmits: list[Transmit]) -> None:
        for t in transmits:
            if not self.up:
                continue
            if t.via is Via.WIREGUARD:
                alt = t.destination.port != REGISTRAR.port
                source = WG_PUBLIC_ALT if alt and self.symmetric else WG_PUBLIC
            else:
                source = CONTROL_PUBLIC
            for data, dest in self.registry.receive(t.data, source, t.destination.port, self.now):
                if dest == CONTROL_PUBLIC:
                    self.client.receive(data, self.now)

    def step(self, until: float) -> None:
        """Run the client's timers up to ``until``, delivering everything it sends at once."""
        while True:
            self.flush()
            at = self.client.next_timer()
            if at > until:
                break
            self.now = max(self.now, at)
            self.client.handle_timer(self.now)
        self.now = until

    def flush(self) -> None:
        while out := self.client.datagrams_to_send():
            self.sent += out
            self.sent_at += [self.now] * len(out)
            self.deliver(out)
        self.events += self.client.events()

    def take(self) -> list[object]:
        events, self.events = self.events, []
        return events


def of(kind: type, events: list[object]) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_first_round_registers_classifies_and_reads_the_zone() -> None:
    net = Net()
    net.step(NOW + 1.0)
    first = net.sent[:2]
    assert [t.via for t in first] == [Via.WIREGUARD, Via.CONTROL]
    assert first[0].destination == REGISTRAR and first[1].destination == REGISTRAR
    # the first Status carried a cookie for our control address, and said we had not echoed
    # one: a Watch echoing it goes out at once (return routability), so pushes can reach us
    assert net.sent[2].via is Via.CONTROL and net.client.proven
    assert net.registry.watchers.keys() == {net.client.own_key}
    # the classification probe goes to the alternate port from the WireGuard port
    assert net.sent[3].via is Via.WIREGUARD and net.sent[3].destination.port == REGISTRAR.port + 1
    events = net.take()
    observed = of(MappingObserved, events)
    assert observed[0] == MappingObserved((WG_PUBLIC,), NatKind.UNKNOWN, 0.0)
    assert observed[-1].nat == NatKind.CONE  # type: ignore[attr-defined]
    assert of(RegistrarState, events) == [RegistrarState(reachable=True, first=True)]
    assert Resolve(None) in events  # at start, and again for the first serial
    assert net.client.observed == (WG_PUBLIC,) and net.client.nat == NatKind.CONE
    entry = net.registry.peers[net.client.own_key]
    assert entry.addresses == LAN and entry.name == "alice"
    assert net.client.phase is Phase.IDLE
    assert net.client.next_timer() == pytest.approx(NOW + 20.0)


def test_symmetric_nat_is_classified() -> None:
    net = Net(symmetric=True)
    net.step(NOW + 1.0)
    assert net.client.nat == NatKind.SYMMETRIC
    assert net.client.observed == (WG_PUBLIC,)  # the primary mapping stays the published one


def test_known_nat_class_skips_the_alternate_port() -> None:
    net = Net()
    net.step(NOW + 1.0)
    n = len(net.sent)
    net.step(NOW + 21.0)
    assert len(net.sent) == n + 2  # Register + Watch; the NAT class is known already
    assert [t.destination.port for t in net.sent[n:]] == [REGISTRAR.port] * 2


def test_alternate_port_off() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.step(NOW + 1.0)
    assert len(net.sent) == 3 and net.client.nat == NatKind.UNKNOWN  # with the proving Watch


def test_unanswered_rounds_retry_then_back_off() -> None:
    net = Net()
    net.up = False
    net.step(NOW + 2.9)
    registers = [at - NOW for at, t in zip(net.sent_at, net.sent, strict=True)
                 if t.via is Via.WIREGUARD]  # fmt: skip
    assert registers == pytest.approx([0.0, 0.5, 1.5])  # attempts wait 0.5, 1.0 and 1.5 s
    net.step(NOW + 3.0)
    assert of(RegistrarState, net.take()) == [RegistrarState(reachable=False, first=True)]
    # then a pause after each failed round: 1, 2, 4, 8, 16 s, then the probe interval (20)
    net.step(NOW + 200.0)
    starts = [at for i, (at, t) in enumerate(zip(net.sent_at, net.sent, strict=True))
              if t.via is Via.WIREGUARD and i % 6 == 0]  # fmt: skip
    gaps = [round(b - a - 3.0, 6) for a, b in itertools.pairwise(starts)]
    assert gaps[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert of(RegistrarState, net.take()) == []  # reported once, not every round
    net.up = True
    net.step(net.now + 25.0)
    assert of(RegistrarState, net.take()) == [RegistrarState(reachable=True, first=False)]


def test_a_status_older_than_our_register_is_asked_again() -> None:
    """The Watch overtook the Register: the Status says the Register is not there yet."""
    net = Net(config=ClientConfig(classify=False))
    net.client.handle_timer(NOW)
    register, watch = net.client.datagrams_to_send()
    net.deliver([watch])  # arrives first: the registrar has no registration yet
    assert net.client.phase is Phase.CONFIRM
    net.deliver([register])
    assert net.client.next_timer() == pytest.approx(NOW + 0.05)
    net.step(NOW + 0.2)
    assert net.client.phase is Phase.IDLE
    observed = of(MappingObserved, net.take())
    assert observed == [MappingObserved((WG_PUBLIC,), NatKind.UNKNOWN, 0.0)]


def test_a_register_that_never_arrives_costs_an_attempt() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.client.handle_timer(NOW)
    _, watch = net.client.datagrams_to_send()
    net.deliver([watch])  # the Register is lost: the Status is stale, and so is the next
    assert net.client.phase is Phase.CONFIRM
    net.step(NOW + 0.3)  # the second stale Status starts attempt 2 at once, which gets through
    assert net.client._attempt == 2 and net.client.phase is Phase.IDLE
    assert net.client.observed == (WG_PUBLIC,)
    registers = [at for at, t in zip(net.sent_at, net.sent, strict=True) if t.via is Via.WIREGUARD]
    assert registers == pytest.approx([NOW + 0.05])  # attempt 2, right after the stale confirm


def test_probe_requests() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.step(NOW + 5.0)
    n = len(net.sent)
    net.client.request_probe(net.now)  # idle: at once
    assert net.client.next_timer() == net.now
    net.client.handle_timer(net.now)
    net.client.request_probe(net.now)  # during a round: right after it
    net.flush()
    assert net.client.phase is Phase.IDLE and net.client.next_timer() == net.now
    net.step(net.now + 0.01)
    assert len(net.sent) == n + 4


def test_new_addresses_are_registered_at_once() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.step(NOW + 5.0)
    net.client.set_addresses(LAN, net.now)  # unchanged: nothing
    assert net.client.next_timer() > net.now + 10
    moved = (Endpoint.parse("10.9.0.2:51820"),)
    net.client.set_addresses(moved, net.now)
    net.step(net.now + 0.1)
    assert net.registry.peers[net.client.own_key].addresses == moved


def test_the_zone_is_reread_on_serial_changes_and_periodically() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.step(NOW + 1.0)
    assert of(Resolve, net.take()) == [Resolve(None), Resolve(None)]  # start, first serial
    net.step(NOW + 19.0)
    assert of(Resolve, net.take()) == []  # same serial, not yet the periodic re-read
    net.step(NOW + 21.5)
    assert of(Resolve, net.take()) == [Resolve(None)]  # the periodic one


def test_push_names_peers_to_resolve() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.step(NOW + 1.0)
    net.take()
    other = sealed.Sealer(net.rng.randbytes(32))
    reg_key = net.client.registrar_key
    # another peer registers: the registrar pushes its key to our control address
    reg = sealed.Register(int(net.now * 1000), 5, "bob", (), "t", False)
    data = sealed.build_sealed_request(
        other, other.public_key, reg_key, reg, net.rng.randbytes(12), net.rng.randbytes(24)
    )
    for out, dest in net.registry.receive(data, Endpoint.parse("192.0.2.9:1"), 3478, net.now):
        assert dest == CONTROL_PUBLIC
        net.client.receive(out, net.now)
        late = out
    assert net.client.events() == [Resolve((other.public_key,))]
    net.client.receive(late, net.now + 121)  # outside the freshness window
    assert net.client.events() == [] and net.client.counters["dropped"] == 1


def test_pushes_only_about_the_peers_we_asked_for() -> None:
    """Endpoints mode: the client names its configured peers in its Watches, and the real
    registry then pushes it changes of those only."""
    net = Net(config=ClientConfig(classify=False))
    bob, carol = (sealed.Sealer(net.rng.randbytes(32)) for _ in range(2))
    net.client.set_interest([bob.public_key])
    net.step(NOW + 1.0)
    watches = [t for t in net.sent if t.via is Via.CONTROL]
    assert watches and net.client.interest == (sealed.key_id(bob.public_key),)
    net.take()
    reg_key = net.client.registrar_key
    for n, other in enumerate((carol, bob)):
        reg = sealed.Register(int(net.now * 1000), 5, "x", (), "t", False)
        data = sealed.build_sealed_request(
            other, other.public_key, reg_key, reg, net.rng.randbytes(12), net.rng.randbytes(24)
        )
        out = net.registry.receive(data, Endpoint.parse(f"192.0.2.9:{n + 1}"), 3478, net.now)
        for d, _ in out:
            net.client.receive(d, net.now)
        net.now += 1.0
    assert net.client.events() == [Resolve((bob.public_key,))]
    net.client.set_interest([bytes([i]) * 32 for i in range(sealed.MAX_INTEREST + 1)])
    assert net.client.interest is None  # too many to name: every peer
    net.client.set_interest(None)
    assert net.client.interest is None


def test_a_repunch_round_trip() -> None:
    """Our path to bob stalled: ask_repunch sends a sealed Repunch naming bob over the control
    socket; the registrar's Repunch to us (bob's path stalled) becomes PunchAsked."""
    net = Net(config=ClientConfig(classify=False))
    net.step(NOW + 1.0)
    net.take()
    bob = sealed.Sealer(net.rng.randbytes(32)).public_key
    net.client.ask_repunch([bob, bob], net.now)
    (t,) = net.client.datagrams_to_send()
    assert t.via is Via.CONTROL and t.destination == REGISTRAR
    _, asked = sealed.open_sealed(net.registry.sealer, stun.decode(t.data), None)
    assert isinstance(asked, sealed.Repunch) and asked.peers == (bob,)
    tell = sealed.Repunch(int(net.now * 1000), 99, (bob,))
    data = sealed.build_sealed_request(
        net.registry.sealer, None, net.client.own_key, tell, net.rng.randbytes(12),
        net.rng.randbytes(24), msg_type=stun.BINDING_INDICATION,
    )  # fmt: skip
    net.client.receive(data, net.now)
    assert net.client.events() == [PunchAsked((bob,))]
    net.client.receive(data, net.now + 121)  # stale
    assert net.client.events() == []


def test_forged_and_stray_datagrams_are_dropped() -> None:
    net = Net(config=ClientConfig(classify=False))
    net.client.handle_timer(NOW)
    net.client.datagrams_to_send()
    forger = sealed.Sealer(net.rng.randbytes(32))
    status = sealed.Status(int(NOW * 1000), 1, net.client._watch, 10**18, (WG_PUBLIC_ALT,),
                           NatKind.NONE, 9)  # fmt: skip
    txid = net.rng.randbytes(12)
    box = forger.seal(net.client.own_key, sealed.encode_payload(status, txid), bytes(24))
    msg = stun.encode(stun.StunMessage(stun.BINDING_SUCCESS, txid, ((stun.ATTR_WG_SEALED, box),)))
    net.client.receive(msg, NOW)
    net.client.receive(b"\x00" * 20, NOW)
    assert net.client.counters["dropped"] == 2
    assert net.client.observed == () and net.client.phase is Phase.AWAIT_STATUS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=5))
def test_garbage_never_raises(datagrams: list[bytes]) -> None:
    client = RegistrarClient(ClientConfig(), bytes(32), REGISTRAR, bytes(range(32)), NOW,
                             random.Random(1).randbytes)  # fmt: skip
    client.handle_timer(NOW)
    for data in datagrams:
        client.receive(data, NOW)
    assert client.counters["dropped"] + client.counters["late"] == len(datagrams)


def test_every_transition_names_a_handler() -> None:
    client = RegistrarClient(ClientConfig(), bytes(32), REGISTRAR, bytes(range(32)), NOW,
                             random.Random(1).randbytes)  # fmt: skip
    for handler in TRANSITIONS.values():
        assert callable(getattr(client, handler))
    assert {phase for phase, _ in TRANSITIONS} == set(Phase)
