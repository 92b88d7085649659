"""The one small WireGuard-control interface the daemon uses, and how to pick a backend.

Read: listen port, peers, endpoints, latest handshakes, transfer counters. Write: peer
endpoints, persistent keepalive, and (mesh mode) peers with allowed IPs. Nothing here ever
touches the interface's addresses, routes or private key: the daemon works beside wg-quick and
systemd-networkd. Backends are blocking; the daemon calls them from a thread.

``handshake_now`` makes WireGuard initiate a handshake at once instead of waiting for traffic or
its 5 s rekey timer: both wireguard-go (device/uapi.go: ``pkaOn = old == 0 && secs != 0``, then
``SendKeepalive``) and the kernel send a keepalive when persistent keepalive goes from 0 to
non-zero, and a keepalive with no session starts a handshake. So the keepalive is set to 0 and
back. WireGuard itself still sends at most one initiation per peer every 5 s (REKEY_TIMEOUT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wgmesh.proto.endpoint import Endpoint

UAPI_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as the interface reports it."""

    public_key: bytes
    """The peer's public key (32 bytes)."""
    endpoint: Endpoint | None
    """Where WireGuard sends to now (set by us, by wg, or learned by roaming)."""
    allowed_ips: tuple[str, ...]
    """CIDRs routed to this peer."""
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
    """UDP port WireGuard listens on."""
    peers: tuple[PeerState, ...]
    """Every configured peer."""


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """A change to one peer; None fields are left as they are."""

    public_key: bytes
    """Which peer (created if absent, unless ``remove``)."""
    endpoint: Endpoint | None = None
    """New endpoint."""
    allowed_ips: tuple[str, ...] | None = None
    """Replace the allowed IPs."""
    persistent_keepalive: int | None = None
    """New persistent keepalive in seconds."""
    handshake_now: bool = False
    """Make WireGuard initiate a handshake at once."""
    remove: bool = False
    """Remove the peer."""


class WireGuardControl(Protocol):
    """Read and change one WireGuard interface."""

    name: str

    def read(self) -> DeviceState:
        """The interface's state; InterfaceNotFound / WireGuardError on failure."""
        ...

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        """Apply peer changes; WireGuardError on failure."""
        ...


def keepalive_for(update: PeerUpdate, current: int) -> int:
    """The keepalive to end up with after ``update`` (25 s when a handshake must be kicked
    and the peer has none)."""
    if update.persistent_keepalive is not None:
        return update.persistent_keepalive
    if update.handshake_now and current == 0:
        return 25
    return current


def open_control(interface: str, backend: str = "auto") -> WireGuardControl:
    """``uapi`` (the socket wireguard-go and boringtun serve), ``wg`` (the wg command: kernel or
    any userspace), or ``auto``: the UAPI socket if there is one, else the wg command."""
    from wgmesh.wg.uapi import Uapi
    from wgmesh.wg.wgtool import WgCli

    if backend == "uapi" or (backend == "auto" and (UAPI_DIR / f"{interface}.sock").exists()):
        return Uapi(interface)
    if backend in ("wg", "auto"):
        return WgCli(interface)
    raise ValueError(f"unknown backend {backend!r}")
