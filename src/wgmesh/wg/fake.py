"""An in-memory WireGuard for unit tests: records every update, lets tests simulate
handshakes and roaming."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from wgmesh.errors import InterfaceNotFound
from wgmesh.proto.endpoint import Endpoint
from wgmesh.wg.control import DeviceState, PeerState, PeerUpdate, keepalive_for


class FakeWireGuard:
    """WireGuardControl without WireGuard."""

    def __init__(self, name: str = "wg0", public_key: bytes = bytes(32), port: int = 51820) -> None:
        self.name = name
        self.state = DeviceState(name, public_key, port, ())
        self.applied: list[PeerUpdate] = []
        self.kicks: list[bytes] = []
        self.present = True

    def read(self) -> DeviceState:
        if not self.present:
            raise InterfaceNotFound(f"no WireGuard interface {self.name!r}")
        return self.state

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        peers = {p.public_key: p for p in self.read().peers}
        for u in updates:
            self.applied.append(u)
            if u.remove:
                peers.pop(u.public_key, None)
                continue
            p = peers.get(u.public_key) or PeerState(u.public_key, None, (), 0.0, 0, 0, 0)
            if u.endpoint is not None:
                p = replace(p, endpoint=u.endpoint)
            if u.allowed_ips is not None:
                p = replace(p, allowed_ips=u.allowed_ips)
            p = replace(p, persistent_keepalive=keepalive_for(u, p.persistent_keepalive))
            if u.handshake_now:
                self.kicks.append(u.public_key)
            peers[u.public_key] = p
        self.state = replace(self.state, peers=tuple(peers.values()))

    def add_peer(self, key: bytes, allowed_ips: tuple[str, ...] = (), keepalive: int = 0) -> None:
        self.apply([PeerUpdate(key, allowed_ips=allowed_ips, persistent_keepalive=keepalive)])

    def handshake(self, key: bytes, at: float, endpoint: Endpoint | None = None) -> None:
        """Simulate a completed handshake (from ``endpoint`` when WireGuard roams)."""
        peers = []
        for p in self.state.peers:
            if p.public_key == key:
                p = replace(p, latest_handshake=at, endpoint=endpoint or p.endpoint)
            peers.append(p)
        self.state = replace(self.state, peers=tuple(peers))
