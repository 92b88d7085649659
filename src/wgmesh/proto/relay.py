"""The relay's allocations: who may send to which relay port, and for how long (sans-IO).

A pair of peers that cannot connect directly (a symmetric NAT against a filtering one) gets an
*allocation*: two relay ports, one per peer. Each peer binds its leg by sending a sealed
RelayBind from its WireGuard port to its own relay port; the bind's source is that peer's NAT
mapping toward the port (behind a symmetric NAT, not the mapping the registrar saw). Once both
legs are bound, the pair is in the forwarding table (wgmesh.proto.relayroute) and WireGuard
traffic crosses: from A's mapping to A's port goes out of B's port to B's mapping, and back.

This module only keeps the table of allocations and their lifetimes; who may ask (admitted,
registered, proven watchers), the boxes and the answers are the registry's
(wgmesh.proto.registry), the sockets and nftables rules the adapters'
(wgmesh.registry.relayudp, wgmesh.registry.relaynft). Time is passed in.

Lifetimes: an allocation not bound on both sides within ``unbound_ttl`` expires; a bound one
expires after ``idle_ttl`` without forwarded traffic or a bind (WireGuard's persistent
keepalive, every 25 s, keeps it). Caps: at most ``per_peer`` allocations per peer and one per
pair (asking again returns the same one), and as many as the port range holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from wgmesh.errors import ConfigError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair
from wgmesh.proto.sealed import RelayRefusal


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay's limits."""

    low: int = 0
    """First relay port (with ``high``: the range; 0: relaying off)."""
    high: int = 0
    """Last relay port (inclusive)."""
    per_peer: int = 8
    """Allocations one peer may hold at once."""
    unbound_ttl: float = 30.0
    """Seconds an allocation may wait for both binds."""
    idle_ttl: float = 300.0
    """Seconds a bound allocation lives without traffic or a bind."""

    def __post_init__(self) -> None:
        if (self.low == 0) != (self.high == 0):
            raise ConfigError("relay ports: give both ends of the range (LOW-HIGH)")
        if self.low and not 1024 <= self.low < self.high <= 65535:
            raise ConfigError(
                f"relay ports: {self.low}-{self.high} is not a range of at least two ports "
                "within 1024-65535"
            )
        if self.per_peer < 1 or self.unbound_ttl <= 0 or self.idle_ttl <= 0:
            raise ConfigError("relay limits must be positive")

    @property
    def enabled(self) -> bool:
        return self.low != 0

    @property
    def ports(self) -> range:
        return range(self.low, self.high + 1) if self.low else range(0)


@dataclass(frozen=True, slots=True)
class Allocation:
    """One relayed pair. ``a`` is the lower key; ``port_a`` is the port ``a`` sends to."""

    a: bytes
    b: bytes
    port_a: int
    port_b: int
    created: float
    active: float
    """Last bind or forwarded traffic (lifetimes count from here)."""
    bound_a: Endpoint | None = None
    """``a``'s mapping toward ``port_a`` (None: not bound yet)."""
    bound_b: Endpoint | None = None
    bind_counter_a: int = 0
    """The highest RelayBind counter accepted from ``a`` (replays are refused)."""
    bind_counter_b: int = 0

    @property
    def ready(self) -> bool:
        return self.bound_a is not None and self.bound_b is not None

    def port_of(self, key: bytes) -> int:
        return self.port_a if key == self.a else self.port_b

    def bound(self, key: bytes) -> Endpoint | None:
        return self.bound_a if key == self.a else self.bound_b

    def other(self, key: bytes) -> bytes:
        return self.b if key == self.a else self.a

    def owner(self, port: int) -> bytes:
        return self.a if port == self.port_a else self.b

    def pair(self) -> RelayPair | None:
        """The forwarding entry, once both legs are bound."""
        if self.bound_a is None or self.bound_b is None:
            return None
        return RelayPair(RelayLeg(self.port_a, self.bound_a), RelayLeg(self.port_b, self.bound_b))


def pair_key(x: bytes, y: bytes) -> tuple[bytes, bytes]:
    """The two keys in the order an Allocation holds them."""
    return (x, y) if x < y else (y, x)


class Relay:
    """The allocation table; see the module docstring."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._by_pair: dict[tuple[bytes, bytes], Allocation] = {}
        self._by_port: dict[int, tuple[bytes, bytes]] = {}
        self._per_peer: dict[bytes, int] = {}
        self._free: deque[int] = deque(config.ports)
        """Free ports, least recently freed first (so a port freed now, whose peers may
        still be sending to it, is handed out last)."""
        self.counters: dict[str, int] = dict.fromkeys(
            ("allocated", "refused", "bound", "rebound", "bind_rejected", "released",
             "expired_unbound", "expired_idle"),
            0,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self._by_pair)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(self._by_pair.values())

    def get(self, x: bytes, y: bytes) -> Allocation | None:
        return self._by_pair.get(pair_key(x, y))

    def at_port(self, port: int) -> Allocation | None:
        """The allocation that holds ``port``."""
        pk = self._by_port.get(port)
        return None if pk is None else self._by_pair[pk]

    def allocate(self, asking: bytes, other: bytes, now: float) -> Allocation | RelayRefusal:
        """The allocation for the pair (the existing one, or two new ports), or why not. The
        caller has checked that both peers are admitted, registered and reachable."""
        if not self.config.enabled:
            return self._refuse(RelayRefusal.OFF)
        if asking == other:
            return self._refuse(RelayRefusal.SELF)
        pk = pair_key(asking, other)
        known = self._by_pair.get(pk)
        if known is not None:
            return known
        if any(self._per_peer.get(k, 0) >= self.config.per_peer for k in pk):
            return self._refuse(RelayRefusal.PEER_LIMIT)
        if len(self._free) < 2:
            return self._refuse(RelayRefusal.EXHAUSTED)
        alloc = Allocation(pk[0], pk[1], self._free.popleft(), self._free.popleft(), now, now)
        self._add(alloc)
        self.counters["allocated"] += 1
        return alloc

    def bind(
        self, port: int, key: bytes, counter: int, source: Endpoint, now: float
    ) -> Allocation | None:
        """A RelayBind from ``key`` (its box opened) arrived at ``port`` from ``source``: the
        updated allocation, or None when ``port`` is not ``key``'s or the counter is not new
        (counted as ``bind_rejected``)."""
        alloc = self.at_port(port)
        if alloc is None or alloc.owner(port) != key:
            self.counters["bind_rejected"] += 1
            return None
        floor = alloc.bind_counter_a if key == alloc.a else alloc.bind_counter_b
        if counter <= floor:
            self.counters["bind_rejected"] += 1
            return None
        before = alloc.bound(key)
        if key == alloc.a:
            alloc = replace(alloc, bound_a=source, bind_counter_a=counter, active=now)
        else:
            alloc = replace(alloc, bound_b=source, bind_counter_b=counter, active=now)
        self._by_pair[(alloc.a, alloc.b)] = alloc
        if before is None:
            self.counters["bound"] += 1
        elif before != source:
            self.counters["rebound"] += 1
        return alloc

    def touch(self, port: int, now: float) -> None:
        """Traffic was forwarded through ``port`` (the adapters report it)."""
        alloc = self.at_port(port)
        if alloc is not None and alloc.active < now:
            self._by_pair[(alloc.a, alloc.b)] = replace(alloc, active=now)

    def release(self, x: bytes, y: bytes) -> Allocation | None:
        """Drop the pair's allocation (asked for by either side); the dropped one."""
        alloc = self._by_pair.get(pair_key(x, y))
        if alloc is not None:
            self._remove(alloc)
            self.counters["released"] += 1
        return alloc

    def release_peer(self, key: bytes) -> list[Allocation]:
        """Drop every allocation of ``key`` (withdrawn or no longer admitted)."""
        gone = [a for a in self._by_pair.values() if key in (a.a, a.b)]
        for alloc in gone:
            self._remove(alloc)
            self.counters["released"] += 1
        return gone

    def expire(self, now: float) -> list[Allocation]:
        """Drop what outlived its lifetime; the dropped ones."""
        gone = []
        for alloc in list(self._by_pair.values()):
            if not alloc.ready and now - alloc.active >= self.config.unbound_ttl:
                self.counters["expired_unbound"] += 1
            elif alloc.ready and now - alloc.active >= self.config.idle_ttl:
                self.counters["expired_idle"] += 1
            else:
                continue
            self._remove(alloc)
            gone.append(alloc)
        return gone

    def next_timer(self) -> float | None:
        """When :meth:`expire` next has something to do."""
        times = [
            a.active + (self.config.idle_ttl if a.ready else self.config.unbound_ttl)
            for a in self._by_pair.values()
        ]
        return min(times) if times else None

    def pairs(self) -> list[RelayPair]:
        """The forwarding table: every allocation bound on both sides."""
        return [p for a in self._by_pair.values() if (p := a.pair()) is not None]

    def restore(self, allocations: Iterable[Allocation]) -> None:
        """Load saved allocations (after a restart); those whose ports are outside today's
        range or already taken are left out."""
        for alloc in allocations:
            ports = (alloc.port_a, alloc.port_b)
            if (
                alloc.a >= alloc.b
                or (alloc.a, alloc.b) in self._by_pair
                or any(p not in self.config.ports or p in self._by_port for p in ports)
                or any(self._per_peer.get(k, 0) >= self.config.per_peer for k in (alloc.a, alloc.b))
            ):
                continue
            self._add(alloc)
        self._free = deque(p for p in self._free if p not in self._by_port)

    # -- internals ----------------------------------------------------------------------------

    def _refuse(self, why: RelayRefusal) -> RelayRefusal:
        self.counters["refused"] += 1
        return why

    def _add(self, alloc: Allocation) -> None:
        pk = (alloc.a, alloc.b)
        self._by_pair[pk] = alloc
        self._by_port[alloc.port_a] = self._by_port[alloc.port_b] = pk
        for k in pk:
            self._per_peer[k] = self._per_peer.get(k, 0) + 1

    def _remove(self, alloc: Allocation) -> None:
        pk = (alloc.a, alloc.b)
        del self._by_pair[pk]
        for port in (alloc.port_a, alloc.port_b):
            del self._by_port[port]
            self._free.append(port)
        for k in pk:
            self._per_peer[k] -= 1
            if not self._per_peer[k]:
                del self._per_peer[k]
