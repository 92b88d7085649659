"""The registrar client over both address families, pure: pumped against the real Registry
through a simulated dual-stack network on a float clock. One Register per family and round
(the second only after the first was accepted), a family without a route skipped and retried,
control failing over between the registrar's addresses."""

from __future__ import annotations

import random

import pytest
from nacl.public import PrivateKey

from wgmesh.errors import LocalProtocolError
from wgmesh.proto import sealed, stun
from wgmesh.proto.client import (
    ClientConfig,
    ControlMoved,
    MappingObserved,
    Phase,
    RegistrarClient,
    RegistrarState,
    Transmit,
    Via,
)
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.registry import Admission, Registry, RegistryConfig

NOW = 1_800_000_000.0
REG4 = Endpoint.parse("203.0.113.10:3478")
REG6 = Endpoint.parse("[2001:db8::10]:3478")
WG4 = Endpoint.parse("198.51.100.20:51820")
WG6 = Endpoint.parse("[2001:db8:1::20]:51820")
CONTROL = {4: Endpoint.parse("198.51.100.20:50000"), 6: Endpoint.parse("[2001:db8:1::20]:50000")}


class Net:
    """A dual-stack registrar (the real Registry, one state for both addresses) and a client
    whose host has the families in ``routes``; ``answering`` are the registrar addresses that
    get our datagrams."""

    def __init__(self, registrars: tuple[Endpoint, ...], routes: set[int] | None = None,
                 config: ClientConfig | None = None) -> None:  # fmt: skip
        self.rng = random.Random(3)
        reg_private = PrivateKey(self.rng.randbytes(32))
        zone = Zone(ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h."))
        self.registry = Registry(
            RegistryConfig(), sealed.Sealer(bytes(reg_private)), Admission(open=True), zone,
            self.rng.randbytes, 3478,
        )  # fmt: skip
        self.now = NOW
        self.client = RegistrarClient(
            config or ClientConfig(), self.rng.randbytes(32), registrars,
            bytes(reg_private.public_key), NOW, self.rng.randbytes, name="alice",
        )  # fmt: skip
        self.routes = {4, 6} if routes is None else routes
        self.answering = {REG4.ip, REG6.ip}
        self.sent: list[Transmit] = []
        self.events: list[object] = []

    def deliver(self, transmits: list[Transmit]) -> None:
        for t in transmits:
            family = t.destination.family
            if family not in self.routes:  # what the adapter sees: ENETUNREACH
                self.client.unroutable(t.destination, self.now)
                continue
            self.sent.append(t)
            if t.destination.ip not in self.answering:
                continue
            wg = WG4 if family == 4 else WG6
            source = wg if t.via is Via.WIREGUARD else CONTROL[family]
            for data, dest in self.registry.receive(t.data, source, t.destination.port, self.now):
                if dest in CONTROL.values():
                    self.client.receive(data, self.now)

    def step(self, until: float) -> None:
        for _ in range(10_000):
            while out := self.client.datagrams_to_send():
                self.deliver(out)
            self.events += self.client.events()
            at = self.client.next_timer()
            if at > until:
                break
            self.now = max(self.now, at)
            self.client.handle_timer(self.now)
        self.now = until

    def take(self, kind: type) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]

    def registers(self) -> list[Endpoint]:
        return [t.destination for t in self.sent if t.via is Via.WIREGUARD]


def test_one_register_per_family_each_round() -> None:
    net = Net((REG4, REG6))
    net.step(NOW + 1.0)
    # v4 (control) first; v6 only after the v4 Status; then the classification over IPv4
    assert net.registers() == [REG4, REG6, Endpoint(REG4.ip, 3479)]
    assert net.client.observed == (WG4, WG6) and net.client.nat == NatKind.CONE
    assert net.registry.peers[net.client.own_key].mappings == (WG4, WG6)
    assert net.take(MappingObserved)[-1] == MappingObserved((WG4, WG6), NatKind.CONE, None)
    assert net.take(RegistrarState) == [RegistrarState(True, first=True)]
    assert {t.destination for t in net.sent if t.via is Via.CONTROL} == {REG4}
    net.sent.clear()
    net.step(NOW + 21.0)  # the next round refreshes both (the class is known: no alt port)
    assert net.registers() == [REG4, REG6]
    assert net.client.phase is Phase.IDLE and net.client.counters["failed_rounds"] == 0


def test_a_family_without_a_route_is_skipped_and_retried() -> None:
    net = Net((REG4, REG6), routes={4})
    net.step(NOW + 1.0)
    assert net.client.observed == (WG4,) and net.client.counters["unroutable"] == 1
    assert net.take(RegistrarState) == [RegistrarState(True, first=True)]
    net.routes = {4, 6}  # IPv6 came up: the next round registers it
    net.step(NOW + 21.0)
    assert net.client.observed == (WG4, WG6) and net.client.counters["unroutable"] == 1


def test_control_fails_over_when_the_first_address_stops_answering() -> None:
    net = Net((REG4, REG6))
    net.step(NOW + 1.0)
    net.answering = {REG6.ip}  # the v4 address goes dark
    net.step(NOW + 30.0)
    assert net.take(ControlMoved) == [ControlMoved(REG4, REG6, unroutable=False)]
    assert net.client.registrar == REG6
    states = net.take(RegistrarState)
    assert states == [RegistrarState(True, first=True), RegistrarState(False, first=False),
                      RegistrarState(True, first=False)]  # fmt: skip
    # from now on the round starts over IPv6, and still registers IPv4 (which is lost)
    net.sent.clear()
    net.step(NOW + 80.0)
    assert net.registers()[:2] == [REG6, REG4]
    assert {t.destination for t in net.sent if t.via is Via.CONTROL} == {REG6}
    assert net.client.observed == (WG6,)  # the IPv4 mapping expired at the registrar


def test_an_ipv6_only_host_moves_control_at_once_and_quietly() -> None:
    """``--registrar 203.0.113.10 --registrar 2001:db8::10`` on an IPv6-only host: the IPv4
    control address has no route, so the first round moves to IPv6 without a failure report."""
    net = Net((REG4, REG6), routes={6})
    net.step(NOW + 1.0)
    assert net.take(ControlMoved) == [ControlMoved(REG4, REG6, unroutable=True)]
    assert net.take(RegistrarState) == [RegistrarState(True, first=True)]
    assert net.client.observed == (WG6,) and net.client.registrar == REG6
    assert net.client.nat is not NatKind.UNKNOWN  # classified over IPv6, the only family
    assert Endpoint(REG6.ip, 3479) in net.registers()


def test_no_route_anywhere_backs_off_instead_of_spinning() -> None:
    net = Net((REG4, REG6), routes=set())
    net.step(NOW + 10.0)
    rounds = net.client.counters["rounds"]
    assert 2 <= rounds <= 8  # backoff 1, 2, 4 s between the failed rounds, not a busy loop
    assert net.take(RegistrarState) == [RegistrarState(False, first=True)]


def test_a_registrar_reached_only_over_ipv6() -> None:
    net = Net((REG6,), routes={6})
    net.step(NOW + 1.0)
    assert net.registers() == [REG6, Endpoint(REG6.ip, 3479)]
    assert net.client.observed == (WG6,) and net.client.counters["unroutable"] == 0
    assert net.take(ControlMoved) == []


def test_ipv6_control_classifies_over_ipv4() -> None:
    """The NAT class predicts an IPv4 relay, so it is measured over IPv4 even when IPv6 is
    the control address."""
    net = Net((REG6, REG4))
    net.step(NOW + 1.0)
    assert net.registers() == [REG6, REG4, Endpoint(REG4.ip, 3479)]
    assert net.client.observed == (WG4, WG6)


@pytest.mark.parametrize("registrars", [(), (REG4, Endpoint.parse("192.0.2.1:3478"))])
def test_one_address_per_family(registrars: tuple[Endpoint, ...]) -> None:
    with pytest.raises(LocalProtocolError, match="one registrar address per family"):
        RegistrarClient(ClientConfig(), bytes(32), registrars, bytes(32), NOW, bytes)


def test_the_second_family_waits_for_the_first_status() -> None:
    """The registrar accepts a key's Registers in counter order only: the IPv6 Register is
    not sent while the IPv4 one may still be on its way."""
    net = Net((REG4, REG6), config=ClientConfig(classify=False))
    net.client.handle_timer(NOW)
    first = net.client.datagrams_to_send()
    assert [(t.via, t.destination) for t in first] == [(Via.WIREGUARD, REG4), (Via.CONTROL, REG4)]
    payloads = [sealed.open_sealed(net.registry.sealer, stun.decode(t.data), None)[1]
                for t in first]  # fmt: skip
    assert isinstance(payloads[0], sealed.Register)
