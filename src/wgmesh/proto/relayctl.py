"""The relay's control: RelayRequests, RelayBinds and RelayGrants (sans-IO).

Who may do what (docs/protocol.md, "Relay"):

- A **RelayRequest** is accepted only in a box that opened under an admitted key, fresh, with a
  counter above that key's last one, and only from the control address of that key's last
  proven Watch (return routability, as for Rosters). The other peer must be registered and a
  proven watcher too, since it must be told. The answer (a RelayGrant in the Binding success)
  goes back to that address; the other peer gets the same news as a sealed indication at its
  own proven control address. Nothing is ever sent toward an address that has not proven it
  receives.
- A **RelayBind** arrives at a relay port, from the peer's WireGuard port. It must carry the
  key that owns that port, open under the shared key the registry already holds for that key
  (no X25519 step: a peer binds only after it registered and watched), be fresh and carry a
  counter above the last bind of that side. Its source becomes the leg's mapping. Nothing is
  answered on the relay port; the change is told to both peers over their control addresses.
- **RelayGrants** follow every change of an allocation: allocated, a side bound or rebound,
  released or expired.

The allocations themselves are :class:`wgmesh.proto.relay.Relay`'s; the forwarding table the
adapters install is :meth:`RelayControl.pairs`, and :attr:`RelayControl.version` moves on with
every change to it or to the set of allocated ports.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable
from typing import Protocol

from wgmesh.errors import DecodeError
from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import short_key
from wgmesh.proto.ratelimit import RateLimiter
from wgmesh.proto.relay import Allocation, Relay
from wgmesh.proto.relayroute import RelayPair
from wgmesh.proto.sealed import RelayGrant, RelayOp, RelayRefusal, RelayState

Outgoing = tuple[bytes, Endpoint]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Peers(Protocol):
    """What the relay's control needs to know of the registry."""

    def watcher_address(self, key: bytes) -> Endpoint | None:
        """The proven control address of ``key``'s last Watch (None: not a proven watcher)."""
        ...

    def stored_key(self, key: bytes) -> bytes | None:
        """The shared key held for ``key`` (None: none; no X25519 step is done for binds)."""
        ...

    def is_registered(self, key: bytes) -> bool: ...

    def next_counter(self, now: float) -> int: ...


LOG_LINES = 256
"""Lines :attr:`RelayControl.log` holds between two drains."""


class RelayControl:
    """See the module docstring."""

    def __init__(
        self,
        relay: Relay,
        address: IPAddress,
        peers: Peers,
        nonce: Callable[[int], bytes],
        key_limiter: RateLimiter,
        freshness_window: float,
        software: str,
    ) -> None:
        self.relay = relay
        self.address = address
        """The relay ports' address (what daemons send to)."""
        self._peers = peers
        self._nonce = nonce
        self._key_limiter = key_limiter
        self._freshness = freshness_window
        self._software = software
        self._floors: dict[bytes, int] = {}
        """Per key, the last RelayRequest counter accepted (kept while it holds allocations
        or watches: see :meth:`forget`)."""
        self.version = 0
        """Moves on whenever the allocated ports or the forwarding table change."""
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "request_rejected", "binds", "bind_junk"), 0
        )
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        """What an operator wants in the log, one line per allocation, refusal, release, bind
        that changed a mapping, and expiry; the adapter drains it (capped: a flood of requests
        costs log lines only up to the cap between two drains)."""

    # -- from the control socket (the registry opened the box) -------------------------------

    def request(
        self,
        msg: stun.StunMessage,
        key: bytes,
        req: sealed.RelayRequest,
        source: Endpoint,
        now: float,
        shared: bytes,
    ) -> list[Outgoing]:
        c = self.counters
        if self._peers.watcher_address(key) != source or req.counter <= self._floors.get(key, 0):
            c["request_rejected"] += 1  # not from its proven control address, or a replay
            return []
        self._floors[key] = req.counter
        c["requests"] += 1
        if req.op is RelayOp.RELEASE:
            alloc = self.relay.release(key, req.peer)
            if alloc is not None:
                self.log.append(f"released {_pair(alloc)} (asked by {short_key(key)})")
            out = [self._answer(msg, shared, source, self._grant(key, req.peer, None, now))]
            if alloc is not None:
                self.version += 1
                out += self._tell(alloc.other(key), self._released(key, now), now)
            return out
        result: Allocation | RelayRefusal
        if not self._peers.is_registered(req.peer) or (
            self._peers.watcher_address(req.peer) is None
        ):
            result = RelayRefusal.UNKNOWN_PEER  # it could not be told where to send
            self.relay.counters["refused"] += 1
        else:
            before = len(self.relay)
            result = self.relay.allocate(key, req.peer, now)
            if len(self.relay) != before:
                self.version += 1
                if isinstance(result, Allocation):
                    self.log.append(f"allocated {_pair(result)} (asked by {short_key(key)})")
        if isinstance(result, RelayRefusal):
            self.log.append(f"refused {short_key(key)} -> {short_key(req.peer)}: "
                            f"{result.name.lower().replace('_', ' ')}")  # fmt: skip
            grant = RelayGrant(int(now * 1000), self._peers.next_counter(now), req.peer,
                               RelayState.REFUSED, None, reason=result)  # fmt: skip
            return [self._answer(msg, shared, source, grant)]
        out = [self._answer(msg, shared, source, self._grant(key, req.peer, result, now))]
        return out + self._tell(req.peer, self._grant(req.peer, key, result, now), now)

    def replayed(self, key: bytes, counter: int) -> bool:
        """A RelayRequest counter not above ``key``'s last one."""
        return counter <= self._floors.get(key, 0)

    # -- from a relay port --------------------------------------------------------------------

    def receive_bind(self, data: bytes, source: Endpoint, port: int, now: float) -> list[Outgoing]:
        """A STUN-framed datagram that arrived at relay ``port`` from ``source``."""
        c = self.counters
        alloc = self.relay.at_port(port)
        if alloc is None:
            c["bind_junk"] += 1
            return []
        try:
            msg = stun.decode(data)
            owner = alloc.owner(port)
            claimed = msg.get(stun.ATTR_WG_PUBLIC_KEY)
            box = msg.get(stun.ATTR_WG_SEALED)
            if claimed is None or box is None or stun.unpack_public_key(claimed) != owner:
                raise DecodeError("not a bind by this port's peer")
            shared = self._peers.stored_key(owner)
            if shared is None:
                raise DecodeError("no shared key for this port's peer")
            bind = sealed.decode_payload(sealed.open_box(shared, box), msg.transaction_id)
        except DecodeError:
            c["bind_junk"] += 1
            return []
        if (
            not isinstance(bind, sealed.RelayBind)
            or bind.peer != alloc.other(owner)
            or abs(bind.timestamp_ms / 1000.0 - now) > self._freshness
            or not self._key_limiter.allow(owner, now)
        ):
            c["bind_junk"] += 1
            return []
        before = alloc.bound(owner)
        updated = self.relay.bind(port, owner, bind.counter, source, now)
        if updated is None:
            return []  # a replay (counted by the Relay)
        c["binds"] += 1
        if before == source:
            return []  # a refresh: nothing changed that anyone must be told
        self.version += 1
        self.log.append(
            f"bound {short_key(owner)} at {source} on port {port} of {_pair(updated)}"
            + (": ready" if updated.ready else ": waiting for the other side")
        )
        out = self._tell(owner, self._grant(owner, updated.other(owner), updated, now), now)
        other = updated.other(owner)
        return out + self._tell(other, self._grant(other, owner, updated, now), now)

    # -- time and peers -----------------------------------------------------------------------

    def expire(self, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        for alloc in self.relay.expire(now):
            self.version += 1
            self.log.append(
                f"expired {_pair(alloc)} ("
                + ("idle" if alloc.ready else "not bound by both in time")
                + ")"
            )
            out += self._tell(alloc.a, self._released(alloc.b, now), now)
            out += self._tell(alloc.b, self._released(alloc.a, now), now)
        return out

    def next_timer(self) -> float | None:
        return self.relay.next_timer()

    def peer_gone(self, key: bytes, now: float) -> list[Outgoing]:
        """``key`` was withdrawn or is no longer admitted: its allocations go."""
        out: list[Outgoing] = []
        for alloc in self.relay.release_peer(key):
            self.version += 1
            self.log.append(f"released {_pair(alloc)} ({short_key(key)} is gone)")
            other = alloc.other(key)
            out += self._tell(other, self._released(key, now), now)
        self._floors.pop(key, None)
        return out

    def forget(self, key: bytes) -> None:
        """``key`` stopped watching: its request floor goes unless it holds allocations
        (bounded by the watchers and the allocations, not by what anyone sends)."""
        if not any(key in (a.a, a.b) for a in self.relay):
            self._floors.pop(key, None)

    def touch(self, port: int, now: float) -> None:
        """The adapter saw traffic forwarded through ``port``."""
        self.relay.touch(port, now)

    def pairs(self) -> list[RelayPair]:
        return self.relay.pairs()

    def ports(self) -> list[int]:
        """Every allocated relay port (the adapters listen on each, for binds)."""
        return sorted(p for a in self.relay for p in (a.port_a, a.port_b))

    # -- internals ----------------------------------------------------------------------------

    def _grant(self, key: bytes, other: bytes, alloc: Allocation | None, now: float) -> RelayGrant:
        """What ``key`` is told about its allocation toward ``other``."""
        counter = self._peers.next_counter(now)
        if alloc is None:
            return RelayGrant(int(now * 1000), counter, other, RelayState.RELEASED, None)
        state = RelayState.READY if alloc.ready else RelayState.ALLOCATED
        relay = Endpoint(self.address, alloc.port_of(key))
        return RelayGrant(int(now * 1000), counter, other, state, relay,
                          bound=alloc.bound(key) is not None)  # fmt: skip

    def _released(self, other: bytes, now: float) -> RelayGrant:
        return RelayGrant(int(now * 1000), self._peers.next_counter(now), other,
                          RelayState.RELEASED, None)  # fmt: skip

    def _answer(
        self, msg: stun.StunMessage, shared: bytes, source: Endpoint, grant: RelayGrant
    ) -> Outgoing:
        box = sealed.seal_box(shared, sealed.encode_payload(grant, msg.transaction_id),
                              self._nonce(24))  # fmt: skip
        data = stun.binding_success(
            msg, source, extra=((stun.ATTR_WG_SEALED, box),), software=self._software
        )
        return data, source

    def _tell(self, key: bytes, grant: RelayGrant, now: float) -> list[Outgoing]:
        """``grant`` as a sealed indication to ``key``'s proven control address (nothing when
        it has none)."""
        address = self._peers.watcher_address(key)
        shared = self._peers.stored_key(key)
        if address is None or shared is None:
            return []
        data = sealed.build_sealed_with(shared, None, grant, self._nonce(12), self._nonce(24),
                                        msg_type=stun.BINDING_INDICATION)  # fmt: skip
        return [(data, address)]


def _pair(alloc: Allocation) -> str:
    return (f"{short_key(alloc.a)} <-> {short_key(alloc.b)} "
            f"(ports {alloc.port_a}/{alloc.port_b})")  # fmt: skip
