"""The one small WireGuard-control interface the daemon uses, and how to pick a backend.

Read: listen port, peers, endpoints, latest handshakes, transfer counters. Write: peer
endpoints, persistent keepalive, and (mesh mode) peers with allowed IPs. Nothing here ever
touches the interface's addresses, routes, listen port, fwmark or private key: the daemon works
beside wg-quick and systemd-networkd. Backends are blocking; the daemon calls them from a thread.

``handshake_now`` makes WireGuard initiate a handshake at once instead of waiting for traffic or
its 5 s rekey timer. Both WireGuard implementations send one keepalive when a peer's persistent
keepalive goes from 0 to non-zero (wireguard-go device/uapi.go: ``peer.pkaOn = old == 0 && secs
!= 0``, then ``SendKeepalive()`` in ``handlePostConfig``; the kernel's netlink.c ``set_peer``:
``send_keepalive = !peer->persistent_keepalive_interval && ...``), and a keepalive with no session
starts a handshake. So the keepalive is set to 0 and then to N in the same request.

Observed against wireguard-go 0.0.20220316 (Debian 12), measuring the peer's tx_bytes over an
established session (a keepalive is 32 bytes):

- ``persistent_keepalive_interval=0`` then ``=25`` in ONE UAPI ``set`` block: +32 bytes at once;
  two separate transactions: the same.
- setting 25 when it already was 25: +0 (hence the toggle); ``0``, ``25``, ``30`` in one block:
  +0 -- ``pkaOn`` is recomputed on every line, so the 0 -> N pair must be the peer's LAST
  keepalive lines in the block.
- ``wg set IFACE peer K persistent-keepalive 0 persistent-keepalive 25``: +0 (wg keeps only the
  last value of a repeated option); ``wg set IFACE peer K persistent-keepalive 0 peer K
  persistent-keepalive 25`` (two sections for the same key in one call): +32.
- a new peer with an endpoint and keepalive 0: nothing sent at all in 1 s of waiting; the kick:
  handshake completed in 2-25 ms with no other traffic (tests/test_wg_backends.py checks both).

WireGuard still sends at most one initiation per peer every 5 s (REKEY_TIMEOUT): a kick within
5 s of the previous initiation sends nothing new; the retransmission timer (5 s + jitter) then
carries on, to the endpoint set last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wgmesh.errors import ConfigError, LocalProtocolError
from wgmesh.proto.endpoint import Endpoint

UAPI_DIR = Path("/var/run/wireguard")
"""Where wireguard-go, boringtun and other userspace implementations put IFACE.sock."""

KICK_KEEPALIVE = 25
"""Persistent keepalive (s) a handshake kick leaves behind when the peer had none."""

BACKENDS = ("auto", "uapi", "wg")


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
    ``handshake_now`` with ``persistent_keepalive=0`` (the kick needs a non-zero keepalive).
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

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise LocalProtocolError("a WireGuard public key is 32 bytes")
        if self.persistent_keepalive is not None and not 0 <= self.persistent_keepalive <= 0xFFFF:
            raise LocalProtocolError(f"keepalive out of range: {self.persistent_keepalive}")
        if self.handshake_now and self.persistent_keepalive == 0:
            raise LocalProtocolError("handshake_now needs a non-zero persistent keepalive")


class WireGuardControl(Protocol):
    """Read and change one WireGuard interface."""

    name: str

    def read(self) -> DeviceState:
        """The interface's state; InterfaceNotFound / WireGuardError on failure."""
        ...

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        """Apply peer changes in order; InterfaceNotFound / WireGuardError on failure."""
        ...


def keepalive_for(update: PeerUpdate, current: int) -> int:
    """The keepalive a peer ends up with after ``update``, given its ``current`` one: the
    update's own value, else the current one, else (for a kick) :data:`KICK_KEEPALIVE`."""
    if update.persistent_keepalive is not None:
        return update.persistent_keepalive
    if update.handshake_now and current == 0:
        return KICK_KEEPALIVE
    return current


def parse_uint(text: str, limit: int = 2**64 - 1) -> int:
    """A plain decimal number 0..limit, as both backends print them; ValueError otherwise
    (``int()`` alone also takes ``+1``, `` 1``, ``1_0`` and non-ASCII digits)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 20 and int(text) <= limit):
        raise ValueError(f"not a number in 0..{limit}: {text[:24]!r}")
    return int(text)


def open_control(interface: str, backend: str = "auto") -> WireGuardControl:
    """``uapi`` (the socket wireguard-go and boringtun serve), ``wg`` (the wg command: kernel or
    any userspace), or ``auto``: the UAPI socket if there is one, else the wg command.

    Raises ConfigError for an unknown backend name.
    """
    from wgmesh.wg.uapi import Uapi
    from wgmesh.wg.wgtool import WgCli

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown WireGuard backend {backend!r} (auto, uapi, wg)")
    if backend == "uapi" or (backend == "auto" and (UAPI_DIR / f"{interface}.sock").exists()):
        return Uapi(interface)
    return WgCli(interface)
