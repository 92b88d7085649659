"""What the daemon knows of a peer's addresses: its candidates (:class:`Hint`), the record that
holds them (:class:`PeerRecord`, from DNS-SD or mDNS) and where each came from (:class:`Source`).
Plain values, shared by the Planner (wgmesh.proto.punch), its states (wgmesh.proto.pathstate),
the rows of ``wgmesh peers`` (wgmesh.proto.peerview) and the readers of the zone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind, NatKind


class Source(StrEnum):
    """Where an endpoint or candidate came from."""

    REGISTRAR = "registrar"
    """The registrar's zone (DNS-SD)."""
    LAN = "lan"
    """mDNS on our LAN."""
    STATIC = "static"
    """Configured on the interface by someone else."""
    ROAMING = "roaming"
    """WireGuard learned it from an authenticated packet (not an address we set)."""
    RELAY = "relay"
    """The registrar's relay address for this peer (wgmesh.proto.relaylease)."""


@dataclass(frozen=True, slots=True)
class Hint:
    """One address at which a peer may be reachable."""

    endpoint: Endpoint
    """Where to send."""
    kind: CandidateKind
    """What the address is (the registrar-observed mapping, a LAN or an IPv6 address)."""
    priority: int
    """SRV priority: lower is tried first."""
    source: Source = Source.REGISTRAR
    """Who told us."""


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What the zone (or mDNS) says about one peer."""

    key: bytes
    """WireGuard public key."""
    hints: tuple[Hint, ...]
    """Candidates, any order."""
    name: str = ""
    """Published name."""
    allowed_ips: tuple[str, ...] = ()
    """Published allowed IPs (admission list)."""
    nat: NatKind = NatKind.UNKNOWN
    """Published NAT class (TXT ``nat=``)."""
    since: int = 0
    """When the public endpoint was first observed."""


def merge_hints(*groups: Iterable[Hint]) -> tuple[Hint, ...]:
    """Union of hints from several sources (DNS-SD, mDNS), first occurrence wins."""
    seen: dict[Endpoint, Hint] = {}
    for group in groups:
        for h in group:
            seen.setdefault(h.endpoint, h)
    return tuple(seen.values())
