"""The one small WireGuard-control interface the daemon uses, and how to pick a backend.

Read: listen port, peers, endpoints, latest handshakes, transfer counters. Write: peer
endpoints, persistent keepalive, (mesh mode) peers with allowed IPs, and renewals (a peer
removed and added back as it is, preshared key included, which only the backend ever reads:
``PeerUpdate.renew``). Nothing here ever
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
carries on, to the endpoint set last. A renewed peer is a new object in WireGuard, with no such
limit: its kick initiates at once (tests/test_wg_backends.py measures 1-4 ms to the handshake).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from wgmesh.proto.device import DeviceState, PeerUpdate

UAPI_DIR = Path("/var/run/wireguard")
"""Where wireguard-go, boringtun and other userspace implementations put IFACE.sock."""

BACKENDS = ("auto", "uapi", "wg")


class WireGuardControl(Protocol):
    """Read and change one WireGuard interface."""

    name: str

    def read(self) -> DeviceState:
        """The interface's state; InterfaceNotFound / WireGuardError on failure."""
        ...

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        """Apply peer changes in order; InterfaceNotFound / WireGuardError on failure."""
        ...


def parse_uint(text: str, limit: int = 2**64 - 1) -> int:
    """A plain decimal number 0..limit, as both backends print them; ValueError otherwise
    (``int()`` alone also takes ``+1``, `` 1``, ``1_0`` and non-ASCII digits)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 20 and int(text) <= limit):
        raise ValueError(f"not a number in 0..{limit}: {text[:24]!r}")
    return int(text)
