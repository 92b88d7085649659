"""The daemon's relay allocations: asking, binding, keeping and releasing them (sans-IO).

The Planner says which peers it wants relayed (:meth:`RelayLeases.want`); for each, a
RelayRequest goes to the registrar over the control socket, again every ``request_retry``
seconds until a RelayGrant answers. A grant that says ALLOCATED starts the binds: a RelayBind
from the WireGuard port to our relay port, every ``bind_retry`` seconds until a grant says our
bind was seen, then every ``bind_refresh`` seconds (it keeps our NAT's mapping toward the relay
port open and tells the relay a new mapping after a rebinding). A grant is honoured also when
the other peer asked for it: the relay needs both sides bound. READY makes the relay address
usable (:class:`RelayChanged`); RELEASED or a refusal ends it (refused: asked again after
``refused_retry``). A peer no longer wanted is released, if we asked for it.

Actions come out as :class:`LeaseSend` values; the RegistrarClient seals and sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from wgmesh.proto import sealed
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.sealed import RelayGrant, RelayOp, RelayRefusal, RelayState


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Timings of the daemon's relay allocations."""

    request_retry: float = 1.0
    """Seconds between RelayRequests that got no grant."""
    bind_retry: float = 0.25
    """Seconds between RelayBinds until the relay saw one."""
    bind_refresh: float = 20.0
    """Seconds between RelayBinds once bound."""
    refused_retry: float = 30.0
    """Seconds before a refused allocation is asked for again."""
    unused_after: float = 330.0
    """An allocation the other peer asked for and we never wanted is forgotten this long after
    its last grant (the registrar releases idle ones after 300 s and says so, but that
    datagram may be lost)."""
    max_leases: int = 1024
    """Most allocations followed at once; grants naming more new peers are ignored."""


@dataclass(frozen=True, slots=True)
class LeaseSend:
    """One payload to seal and send: to the registrar's control port (``relay`` None, over the
    control socket) or to a relay port (from the WireGuard port)."""

    payload: sealed.RelayRequest | sealed.RelayBind
    relay: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class RelayChanged:
    """The relay address for ``peer`` became usable (``relay`` set) or stopped being."""

    peer: bytes
    relay: Endpoint | None
    reason: RelayRefusal = RelayRefusal.NONE
    """Why not, when the registrar refused."""


@dataclass(frozen=True, slots=True)
class Lease:
    """What we know of one peer's allocation."""

    ours: bool
    """We asked for it (and release it when no longer wanted)."""
    state: RelayState | None = None
    """The last grant's state (None: asked, no grant yet)."""
    relay: Endpoint | None = None
    bound: bool = False
    next_at: float = 0.0
    """When the next RelayRequest or RelayBind is due."""
    counter: int = 0
    """The last grant's counter (older ones are ignored)."""
    reason: RelayRefusal = RelayRefusal.NONE
    since: float = 0.0
    """When the last grant came."""


class RelayLeases:
    """See the module docstring."""

    def __init__(self, config: LeaseConfig, counter: Callable[[float], int]) -> None:
        self.config = config
        self._counter = counter
        self.leases: dict[bytes, Lease] = {}
        self._wanted: frozenset[bytes] = frozenset()
        self._out: list[LeaseSend] = []
        self.changes: list[RelayChanged] = []
        self.ignored = 0
        """Grants ignored because ``max_leases`` allocations are followed already."""

    def want(self, peers: Iterable[bytes], now: float) -> None:
        """The peers the Planner wants relayed now (level-triggered: call it after each plan)."""
        wanted = frozenset(peers)
        if wanted == self._wanted:
            return
        for peer in wanted - self._wanted:
            lease = self.leases.get(peer)
            if lease is None:
                self.leases[peer] = Lease(ours=True, next_at=now, since=now)
            elif not lease.ours:
                self.leases[peer] = replace(lease, ours=True)
        for peer in self._wanted - wanted:
            lease = self.leases.get(peer)
            if lease is not None and lease.ours:
                del self.leases[peer]
                self._send(sealed.RelayRequest(int(now * 1000), self._counter(now), peer,
                                               RelayOp.RELEASE))  # fmt: skip
                if lease.state is RelayState.READY:
                    self.changes.append(RelayChanged(peer, None))
        self._wanted = wanted
        self.due(now)

    def on_grant(self, grant: RelayGrant, now: float) -> None:
        """A RelayGrant from the registrar (opened and fresh)."""
        peer = grant.peer
        lease = self.leases.get(peer)
        if lease is not None and grant.counter <= lease.counter:
            return  # older than what we acted on
        was_ready = lease is not None and lease.state is RelayState.READY
        if grant.state in (RelayState.RELEASED, RelayState.REFUSED):
            if lease is None:
                return
            if lease.ours:
                retry = self.config.refused_retry if grant.state is RelayState.REFUSED else 0.0
                self.leases[peer] = Lease(True, grant.state, next_at=now + retry,
                                          counter=grant.counter, reason=grant.reason)  # fmt: skip
            else:
                del self.leases[peer]
            if was_ready or grant.state is RelayState.REFUSED:
                self.changes.append(RelayChanged(peer, None, grant.reason))
            return
        if lease is None and len(self.leases) >= self.config.max_leases:
            self.ignored += 1  # a cap, not a judgement: only the registrar can seal grants
            return
        ours = lease is not None and lease.ours
        moved = lease is None or lease.relay != grant.relay
        next_at = now if (moved or not grant.bound) else lease.next_at if lease else now
        self.leases[peer] = Lease(ours, grant.state, grant.relay, grant.bound,
                                  min(next_at, now + self.config.bind_refresh),
                                  grant.counter, since=now)  # fmt: skip
        ready = grant.state is RelayState.READY
        if ready and (not was_ready or moved):
            self.changes.append(RelayChanged(peer, grant.relay))
        elif was_ready and not ready:
            self.changes.append(RelayChanged(peer, None))
        self.due(now)

    def rebind(self, now: float) -> None:
        """Bind every allocation again now (our mapping may have changed: a stall)."""
        for peer, lease in self.leases.items():
            if lease.relay is not None:
                self.leases[peer] = replace(lease, next_at=now)
        self.due(now)

    def due(self, now: float) -> None:
        """Send whatever is due at ``now``."""
        cfg = self.config
        for peer, lease in list(self.leases.items()):
            if not lease.ours and now - lease.since > cfg.unused_after:
                del self.leases[peer]  # theirs, never ours, and not heard of for long
                if lease.state is RelayState.READY:
                    self.changes.append(RelayChanged(peer, None))
                continue
            if now < lease.next_at:
                continue
            if lease.relay is None:  # asked, refused or released: ask (again)
                if not lease.ours:
                    continue
                self._send(sealed.RelayRequest(int(now * 1000), self._counter(now), peer))
                self.leases[peer] = replace(lease, next_at=now + cfg.request_retry)
                continue
            self._send(sealed.RelayBind(int(now * 1000), self._counter(now), peer), lease.relay)
            wait = cfg.bind_refresh if lease.bound else cfg.bind_retry
            self.leases[peer] = replace(lease, next_at=now + wait)

    def next_timer(self) -> float | None:
        times = [
            lease.next_at for lease in self.leases.values() if lease.relay is not None or lease.ours
        ]
        return min(times) if times else None

    def ready(self) -> dict[bytes, Endpoint]:
        """The relay address of every peer whose allocation is READY."""
        return {
            peer: lease.relay
            for peer, lease in self.leases.items()
            if lease.state is RelayState.READY and lease.relay is not None
        }

    def take(self) -> list[LeaseSend]:
        out, self._out = self._out, []
        return out

    def _send(
        self, payload: sealed.RelayRequest | sealed.RelayBind, relay: Endpoint | None = None
    ) -> None:
        self._out.append(LeaseSend(payload, relay))
