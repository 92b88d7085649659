"""The WireGuard interface as values: what the daemon reads (:class:`DeviceState`,
:class:`PeerState`) and what it asks to change (:class:`PeerUpdate`).

These are the sans-IO core's view of WireGuard; the backends in :mod:`wgmesh.wg` produce and
consume them (``WireGuardControl.read`` / ``apply``). No IO here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from wgmesh.errors import LocalProtocolError
from wgmesh.proto.endpoint import Endpoint

DEFAULT_KEEPALIVE = 25
"""Persistent keepalive (s) set on managed peers that have none, and the one a handshake kick
leaves behind when the peer had none (keeps NAT mappings open; WireGuard's own suggestion)."""


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as the interface reports it."""

    public_key: bytes
    """The peer's public key (32 bytes)."""
    endpoint: Endpoint | None
    """Where WireGuard sends to now (set by us, by wg, or learned by roaming)."""
    allowed_ips: tuple[str, ...]
    """CIDRs routed to this peer, in the order WireGuard reports them."""
    latest_handshake: float
    """Unix seconds of the last completed handshake; 0.0 = never."""
    rx_bytes: int
    """Bytes received from the peer."""
    tx_bytes: int
    """Bytes sent to the peer."""
    persistent_keepalive: int
    """Seconds; 0 = off."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The interface as a whole (never its private key)."""

    name: str
    """Interface name."""
    public_key: bytes | None
    """The interface's public key, None when no private key is set."""
    listen_port: int
    """UDP port WireGuard listens on (0 when none is bound yet)."""
    peers: tuple[PeerState, ...]
    """Every configured peer."""


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """A change to one peer; None fields are left as they are.

    Raises LocalProtocolError for a key that is not 32 bytes, a keepalive outside 0..65535, or
    ``handshake_now`` with ``persistent_keepalive=0`` (the kick needs a non-zero keepalive),
    or ``renew`` with ``remove``.
    """

    public_key: bytes
    """Which peer (created if absent, unless ``remove``)."""
    endpoint: Endpoint | None = None
    """New endpoint."""
    allowed_ips: tuple[str, ...] | None = None
    """Replace the allowed IPs (``()`` clears them)."""
    persistent_keepalive: int | None = None
    """New persistent keepalive in seconds (0 = off)."""
    handshake_now: bool = False
    """Make WireGuard initiate a handshake at once (see the module docstring)."""
    remove: bool = False
    """Remove the peer; every other field is then ignored."""
    renew: bool = False
    """Re-create the peer before this update's changes: remove it and add it back with its
    preshared key, endpoint, allowed IPs and keepalive (the backend carries those over; the
    preshared key never leaves it). WireGuard then forgets its timers, so an initiation it sent
    in the last 5 s (REKEY_TIMEOUT) no longer holds a new one back. Its session and transfer
    counters go too: ask only when there is no session to lose. Backends apply it through
    :func:`renewals`, so a peer whose session came up meanwhile, or that is not there, is only
    updated."""

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise LocalProtocolError("a WireGuard public key is 32 bytes")
        if self.persistent_keepalive is not None and not 0 <= self.persistent_keepalive <= 0xFFFF:
            raise LocalProtocolError(f"keepalive out of range: {self.persistent_keepalive}")
        if self.handshake_now and self.persistent_keepalive == 0:
            raise LocalProtocolError("handshake_now needs a non-zero persistent keepalive")
        if self.renew and self.remove:
            raise LocalProtocolError("a peer is either removed or renewed, not both")


def keepalive_for(update: PeerUpdate, current: int) -> int:
    """The keepalive a peer ends up with after ``update``, given its ``current`` one: the
    update's own value, else the current one, else (for a kick) :data:`DEFAULT_KEEPALIVE`."""
    if update.persistent_keepalive is not None:
        return update.persistent_keepalive
    if update.handshake_now and current == 0:
        return DEFAULT_KEEPALIVE
    return current


SESSION_LIFETIME = 180.0
"""WireGuard's REJECT_AFTER_TIME: a handshake this recent may still carry a session."""


def renewals(
    updates: Sequence[PeerUpdate], peers: Sequence[PeerState], now: float
) -> list[PeerUpdate]:
    """``updates`` as a backend applies them, given the interface's ``peers`` read just before:
    a renewal of a peer that is not there, or whose last handshake is under
    :data:`SESSION_LIFETIME` old at ``now`` (a session came up since the plan), becomes a plain
    update."""
    handshakes = {p.public_key: p.latest_handshake for p in peers}
    out = []
    for u in updates:
        if u.renew:
            seen = handshakes.get(u.public_key)
            if seen is None or (seen > 0 and now - seen < SESSION_LIFETIME):
                u = replace(u, renew=False)
        out.append(u)
    return out
