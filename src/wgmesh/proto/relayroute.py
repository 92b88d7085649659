"""The relay's forwarding table: which datagram goes where (sans-IO).

A relayed pair is two *legs*, one per peer. Each leg is a relay port (the port that peer sends
its WireGuard traffic to) and the peer's *bound* mapping: the source address its NAT gives the
peer's WireGuard port toward that relay port, learnt from a sealed bind the peer sent from its
WireGuard port (wgmesh.proto.relay). Forwarding is then fixed::

    arriving at a.port from a.peer  ->  sent from b.port to b.peer
    arriving at b.port from b.peer  ->  sent from a.port to a.peer

Everything else arriving at a relay port is dropped (the adapters count it), so the relay sends
one datagram per datagram in, and only ever to an address that proved, by its bind, that it
holds the key and receives at that mapping. The same table drives both forwarding paths: the
userspace one looks datagrams up here; the kernel one turns each pair into nftables rules.

For the userspace path's hot loop, :meth:`RouteTable.port_route` hands over a port's whole rule
with its addresses precomputed in the forms sockets use (:class:`PortRoute`: the (host, port)
tuples asyncio compares and sends to, and the raw ``sockaddr_in`` bytes, :func:`in4`, that a
recvmmsg batch is compared with), so the adapter builds no Endpoint per datagram.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wgmesh.proto.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class RelayLeg:
    """One peer's side of a relayed pair."""

    port: int
    """The relay port this peer sends to (and receives from)."""
    peer: Endpoint
    """The peer's bound mapping toward ``port``."""


@dataclass(frozen=True, slots=True)
class RelayPair:
    """Two bound legs: datagrams cross from one to the other."""

    a: RelayLeg
    b: RelayLeg

    def __post_init__(self) -> None:
        if self.a.port == self.b.port:
            raise ValueError("the two legs of a relayed pair need two ports")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a forwarded datagram goes."""

    from_port: int
    to: Endpoint


IN4_LEN = 6
"""Length of :func:`in4`'s raw form."""


def in4(ep: Endpoint) -> bytes:
    """An IPv4 endpoint as it sits in a ``struct sockaddr_in`` after the family field: the port
    then the address, both in network byte order (6 bytes); ``b""`` for an IPv6 endpoint."""
    if ep.ip.version != 4:
        return b""
    return ep.port.to_bytes(2, "big") + ep.ip.packed


@dataclass(frozen=True, slots=True)
class PortRoute:
    """One relay port's whole rule, addresses precomputed for an adapter's hot path (built once
    per :meth:`RouteTable.set_pairs`, so a lookup per batch or per datagram allocates nothing)."""

    port: int
    """The relay port."""
    source: Endpoint
    """The only peer whose datagrams at ``port`` are forwarded (its bound mapping)."""
    route: Route
    """Where they go."""
    source_addr: tuple[str, int]
    """``source.sockaddr()``: compared with the address asyncio reports."""
    to_addr: tuple[str, int]
    """``route.to.sockaddr()``: what a socket's ``sendto`` takes."""
    source_in4: bytes
    """``in4(source)``: compared with the raw sockaddr a recvmmsg batch reports."""
    to_in4: bytes
    """``in4(route.to)``."""

    @classmethod
    def of(cls, port: int, source: Endpoint, route: Route) -> PortRoute:
        """Precompute the forms of ``source`` and ``route.to``."""
        return cls(
            port,
            source,
            route,
            source.sockaddr(),
            route.to.sockaddr(),
            in4(source),
            in4(route.to),
        )


class RouteTable:
    """Relay port -> (bound source, where its datagrams go). Rebuilt from the pairs whenever
    they change (:meth:`set_pairs`); a lookup is one dict access."""

    def __init__(self) -> None:
        self._by_port: dict[int, PortRoute] = {}
        self.pairs: tuple[RelayPair, ...] = ()

    def set_pairs(self, pairs: Iterable[RelayPair]) -> None:
        """Replace the table. A port may be in one pair only."""
        table: dict[int, PortRoute] = {}
        kept = tuple(pairs)
        for p in kept:
            for this, other in ((p.a, p.b), (p.b, p.a)):
                if this.port in table:
                    raise ValueError(f"relay port {this.port} is in two pairs")
                table[this.port] = PortRoute.of(this.port, this.peer, Route(other.port, other.peer))
        self._by_port, self.pairs = table, kept

    def route(self, port: int, source: Endpoint) -> Route | None:
        """Where a datagram that arrived at ``port`` from ``source`` goes; None: drop it (the
        port has no pair, or ``source`` is not the bound peer)."""
        hit = self._by_port.get(port)
        if hit is None or hit.source != source:
            return None
        return hit.route

    def route_in4(self, port: int, source: bytes) -> Route | None:
        """As :meth:`route`, the source given raw as :func:`in4` writes it (the 6 bytes after
        the family field of the ``sockaddr_in`` the kernel reports)."""
        hit = self._by_port.get(port)
        if hit is None or not hit.source_in4 or hit.source_in4 != source:
            return None
        return hit.route

    def port_route(self, port: int) -> PortRoute | None:
        """The rule of ``port`` (None: it has no pair): for adapters that look a port up once
        per batch and then compare each datagram's source with ``source_in4``."""
        return self._by_port.get(port)

    def ports(self) -> frozenset[int]:
        """The relay ports with a bound pair."""
        return frozenset(self._by_port)
