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


class RouteTable:
    """Relay port -> (bound source, where its datagrams go). Rebuilt from the pairs whenever
    they change (:meth:`set_pairs`); a lookup is one dict access."""

    def __init__(self) -> None:
        self._by_port: dict[int, tuple[Endpoint, Route]] = {}
        self.pairs: tuple[RelayPair, ...] = ()

    def set_pairs(self, pairs: Iterable[RelayPair]) -> None:
        """Replace the table. A port may be in one pair only."""
        table: dict[int, tuple[Endpoint, Route]] = {}
        kept = tuple(pairs)
        for p in kept:
            for this, other in ((p.a, p.b), (p.b, p.a)):
                if this.port in table:
                    raise ValueError(f"relay port {this.port} is in two pairs")
                table[this.port] = (this.peer, Route(other.port, other.peer))
        self._by_port, self.pairs = table, kept

    def route(self, port: int, source: Endpoint) -> Route | None:
        """Where a datagram that arrived at ``port`` from ``source`` goes; None: drop it (the
        port has no pair, or ``source`` is not the bound peer)."""
        hit = self._by_port.get(port)
        if hit is None or hit[0] != source:
            return None
        return hit[1]

    def ports(self) -> frozenset[int]:
        """The relay ports with a bound pair."""
        return frozenset(self._by_port)
