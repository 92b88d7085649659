"""Two daemons' registrar clients and the real Registry with relaying on, behind simulated
NATs (one symmetric: its mapping toward each relay port is a port of its own), on a float
clock: allocation, binds, READY on both sides, rebinding after a NAT change, release."""

from __future__ import annotations

import ipaddress
import random

from nacl.public import PrivateKey

from wgmesh.proto import sealed
from wgmesh.proto.client import ClientConfig, RegistrarClient, Transmit, Via
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.registry import Admission, Registry, RegistryConfig
from wgmesh.proto.relay import RelayConfig
from wgmesh.proto.relaylease import RelayChanged
from wgmesh.proto.sealed import RelayRefusal

NOW = 1_800_000_000.0
REGISTRAR = Endpoint.parse("203.0.113.10:3478")


class Host:
    """A client behind a NAT: ``symmetric`` gives each destination a mapping of its own."""

    def __init__(self, rng: random.Random, reg_key: bytes, n: int, symmetric: bool) -> None:
        self.client = RegistrarClient(
            ClientConfig(classify=False), rng.randbytes(32), REGISTRAR, reg_key, NOW,
            rng.randbytes, name=f"h{n}",
        )  # fmt: skip
        self.public = ipaddress.IPv4Address(f"198.51.100.{n}")
        self.symmetric = symmetric
        self.epoch = 0  # moves on when the NAT loses its state
        self.control = Endpoint(self.public, 50000)
        self.events: list[object] = []

    def wg_source(self, dest: Endpoint) -> Endpoint:
        if not self.symmetric:
            return Endpoint(self.public, 51820 + self.epoch)
        return Endpoint(self.public, 20000 + (dest.port % 1000) + 1000 * self.epoch)


class Net:
    def __init__(self, *, relay: bool = True) -> None:
        rng = random.Random(11)
        reg_private = PrivateKey(rng.randbytes(32))
        zone = Zone(ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h."))
        self.registry = Registry(
            RegistryConfig(push_delay=0.0), sealed.Sealer(bytes(reg_private)),
            Admission(open=True), zone, rng.randbytes, REGISTRAR.port,
        )  # fmt: skip
        if relay:
            self.registry.enable_relay(RelayConfig(low=40000, high=40009), REGISTRAR.ip)
        reg_key = bytes(reg_private.public_key)
        self.a = Host(rng, reg_key, 1, symmetric=False)
        self.b = Host(rng, reg_key, 2, symmetric=True)
        self.now = NOW

    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def deliver(self, host: Host, transmits: list[Transmit]) -> None:
        for t in transmits:
            if t.via is Via.CONTROL:
                out = self.registry.receive(t.data, host.control, REGISTRAR.port, self.now)
            elif t.destination.port in (REGISTRAR.port, REGISTRAR.port + 1):
                src = host.wg_source(t.destination)
                out = self.registry.receive(t.data, src, t.destination.port, self.now)
            else:  # a relay port
                src = host.wg_source(t.destination)
                out = self.registry.receive_relay(t.data, src, t.destination.port, self.now)
            for data, dest in out:
                for h in self.hosts():
                    if dest == h.control:
                        h.client.receive(data, self.now)

    def run(self, until: float) -> None:
        while self.now < until:
            for h in self.hosts():
                if h.client.next_timer() <= self.now:
                    h.client.handle_timer(self.now)
            for _ in range(5):
                for h in self.hosts():
                    self.deliver(h, h.client.datagrams_to_send())
            for h in self.hosts():
                h.events += h.client.events()
            self.now = round(self.now + 0.05, 3)


def changes(host: Host) -> list[RelayChanged]:
    got = [e for e in host.events if isinstance(e, RelayChanged)]
    host.events = [e for e in host.events if not isinstance(e, RelayChanged)]
    return got


def test_one_side_asks_both_bind_both_are_ready() -> None:
    net = Net()
    net.run(NOW + 1.0)  # both registered and watching
    a, b = net.hosts()
    a.client.want_relays([b.client.own_key], net.now)
    net.run(net.now + 1.0)
    (ca,), (cb,) = changes(a), changes(b)
    assert ca.peer == b.client.own_key and cb.peer == a.client.own_key
    assert ca.relay is not None and cb.relay is not None and ca.relay != cb.relay
    (pair,) = net.registry.relay.pairs()
    legs = {pair.a.port: pair.a.peer, pair.b.port: pair.b.peer}
    assert legs[ca.relay.port] == a.wg_source(ca.relay)
    assert legs[cb.relay.port] == b.wg_source(cb.relay)  # the symmetric NAT's own mapping
    assert legs[cb.relay.port] != b.wg_source(REGISTRAR)


def test_a_nat_that_lost_its_state_is_bound_again() -> None:
    net = Net()
    net.run(NOW + 1.0)
    a, b = net.hosts()
    a.client.want_relays([b.client.own_key], net.now)
    net.run(net.now + 1.0)
    changes(a), changes(b)
    b.epoch += 1  # NAT-B rebooted: new mappings
    b.client.request_probe(net.now)  # the daemon saw the path stall
    net.run(net.now + 1.0)
    (pair,) = net.registry.relay.pairs()
    port_b = net.registry.relay.relay.get(a.client.own_key, b.client.own_key)
    assert port_b is not None
    mine = port_b.port_of(b.client.own_key)
    legs = {pair.a.port: pair.a.peer, pair.b.port: pair.b.peer}
    assert legs[mine] == b.wg_source(Endpoint(REGISTRAR.ip, mine))
    assert changes(a) == [] and changes(b) == []  # the addresses to send to did not change


def test_release_when_no_longer_wanted_tells_the_other_side() -> None:
    net = Net()
    net.run(NOW + 1.0)
    a, b = net.hosts()
    a.client.want_relays([b.client.own_key], net.now)
    net.run(net.now + 1.0)
    changes(a), changes(b)
    a.client.want_relays([], net.now)
    net.run(net.now + 0.5)
    assert changes(a) == [RelayChanged(b.client.own_key, None)]
    assert changes(b) == [RelayChanged(a.client.own_key, None)]
    assert net.registry.relay.pairs() == [] and b.client.relays.leases == {}


def test_binds_keep_an_idle_allocation_alive() -> None:
    net = Net()
    net.run(NOW + 1.0)
    a, b = net.hosts()
    a.client.want_relays([b.client.own_key], net.now)
    net.run(net.now + 400.0)  # past the 300 s idle lifetime: the 20 s binds refresh it
    assert len(net.registry.relay.pairs()) == 1
    assert [c.relay is not None for c in changes(a)] == [True]


def test_a_refusal_is_reported_and_asked_again_later() -> None:
    net = Net(relay=False)
    net.run(NOW + 1.0)
    a, b = net.hosts()
    a.client.want_relays([b.client.own_key], net.now)
    net.run(net.now + 1.0)
    assert changes(a) == [RelayChanged(b.client.own_key, None, RelayRefusal.OFF)]
    requests = net.registry.relay.counters["requests"]
    net.run(net.now + 31.0)
    assert net.registry.relay.counters["requests"] == requests + 1


def test_leases_the_other_side_asked_for_are_forgotten_and_capped() -> None:
    """A grant the other peer asked for, whose RELEASED was lost, is forgotten 330 s after its
    last grant (no binds forever); at most max_leases allocations are followed."""
    from wgmesh.proto.relaylease import LeaseConfig, RelayLeases
    from wgmesh.proto.sealed import RelayGrant, RelayState

    counter = iter(range(1, 10**6))
    leases = RelayLeases(LeaseConfig(max_leases=3), lambda now: next(counter))
    relay = Endpoint.parse("203.0.113.10:40000")
    for i in range(5):
        leases.on_grant(RelayGrant(1, 10 + i, bytes([i]) * 32, RelayState.READY, relay), NOW)
    assert len(leases.leases) == 3 and leases.ignored == 2
    assert [c.relay for c in leases.changes] == [relay] * 3
    leases.changes.clear()
    leases.take()
    leases.due(NOW + 300.0)
    assert len(leases.leases) == 3 and leases.take()  # still bound, still binding
    leases.due(NOW + 331.0)
    assert leases.leases == {} and [c.relay for c in leases.changes] == [None] * 3
    leases.want([bytes([9]) * 32], NOW + 400.0)  # ours are kept however long
    leases.due(NOW + 10_000.0)
    assert list(leases.leases) == [bytes([9]) * 32]
