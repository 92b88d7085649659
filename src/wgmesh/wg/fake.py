"""An in-memory WireGuard for unit tests: records every update and lets tests play WireGuard's
own part (handshakes, roaming, traffic, the interface vanishing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from wgmesh.errors import InterfaceNotFound, WireGuardError
from wgmesh.proto.device import DeviceState, PeerState, PeerUpdate, keepalive_for
from wgmesh.proto.endpoint import Endpoint


class FakeWireGuard:
    """WireGuardControl without WireGuard.

    ``applied`` lists every update in order, ``kicks`` the keys of those with ``handshake_now``,
    ``renewals`` those of renewed peers (which lose their handshake and counters, as in WireGuard).
    ``present = False`` makes read/apply raise InterfaceNotFound; ``fail_with`` makes the next
    read or apply raise that error once.
    """

    def __init__(self, name: str = "wg0", public_key: bytes = bytes(32), port: int = 51820) -> None:
        self.name = name
        self.state = DeviceState(name, public_key, port, ())
        self.applied: list[PeerUpdate] = []
        self.kicks: list[bytes] = []
        self.renewals: list[bytes] = []
        self.present = True
        self.fail_with: WireGuardError | None = None

    def _check(self) -> None:
        if not self.present:
            raise InterfaceNotFound(f"no WireGuard interface {self.name!r} (fake)")
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc

    def read(self) -> DeviceState:
        self._check()
        return self.state

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        self._check()
        peers = {p.public_key: p for p in self.state.peers}
        for u in updates:
            self.applied.append(u)
            if u.remove:
                peers.pop(u.public_key, None)
                continue
            p = peers.get(u.public_key) or PeerState(u.public_key, None, (), 0.0, 0, 0, 0)
            if u.renew:
                self.renewals.append(u.public_key)
                p = replace(p, latest_handshake=0.0, rx_bytes=0, tx_bytes=0)
            if u.endpoint is not None:
                p = replace(p, endpoint=u.endpoint)
            if u.allowed_ips is not None:
                p = replace(p, allowed_ips=u.allowed_ips)
            p = replace(p, persistent_keepalive=keepalive_for(u, p.persistent_keepalive))
            if u.handshake_now:
                self.kicks.append(u.public_key)
            peers[u.public_key] = p
        self.state = replace(self.state, peers=tuple(peers.values()))

    # -- WireGuard's own part, for tests ---------------------------------------------------------

    def add_peer(self, key: bytes, allowed_ips: tuple[str, ...] = (), keepalive: int = 0) -> None:
        """Configure a peer as an operator would (recorded in ``applied`` like any update)."""
        self.apply([PeerUpdate(key, allowed_ips=allowed_ips, persistent_keepalive=keepalive)])

    def peer(self, key: bytes) -> PeerState:
        """The peer's current state; KeyError if there is no such peer."""
        for p in self.state.peers:
            if p.public_key == key:
                return p
        raise KeyError(f"fake WireGuard has no peer {key.hex()[:16]}")

    def _change(self, key: bytes, change: Callable[[PeerState], PeerState]) -> None:
        self.peer(key)  # KeyError for a peer the test never added
        peers = tuple(change(p) if p.public_key == key else p for p in self.state.peers)
        self.state = replace(self.state, peers=peers)

    def handshake(self, key: bytes, at: float, endpoint: Endpoint | None = None) -> None:
        """Simulate a completed handshake at ``at`` (from ``endpoint`` when WireGuard roams)."""
        self._change(
            key, lambda p: replace(p, latest_handshake=at, endpoint=endpoint or p.endpoint)
        )

    def roam(self, key: bytes, endpoint: Endpoint) -> None:
        """Simulate WireGuard learning a new endpoint from an authenticated packet."""
        self._change(key, lambda p: replace(p, endpoint=endpoint))

    def traffic(self, key: bytes, rx: int = 0, tx: int = 0) -> None:
        """Simulate ``rx``/``tx`` more bytes exchanged with the peer."""
        self._change(key, lambda p: replace(p, rx_bytes=p.rx_bytes + rx, tx_bytes=p.tx_bytes + tx))
