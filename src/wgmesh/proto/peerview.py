"""What ``wgmesh peers`` shows of each peer (:class:`PeerView`, one JSON row; the schema is in
docs/cli.md), from the interface, the peer's record and, when a daemon runs, the Planner's state.
Sans-IO."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from wgmesh.proto.candidates import PeerRecord, Source
from wgmesh.proto.device import PeerState
from wgmesh.proto.keys import encode_key
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.pathstate import HANDSHAKE_FRESH, PeerPath

if TYPE_CHECKING:
    from wgmesh.proto.punchconfig import PunchConfig


class Planner(Protocol):
    """What a row reads of the daemon's Planner (wgmesh.proto.punch.Planner)."""

    @property
    def config(self) -> PunchConfig: ...

    @property
    def our_nat(self) -> NatKind: ...

    def clash_reason(self, key: bytes) -> str: ...

    def ipv6_first(self, record: PeerRecord) -> bool: ...


@dataclass(frozen=True, slots=True)
class PeerView:
    """One row of ``wgmesh peers`` (the JSON schema is documented in docs/cli.md)."""

    public_key: str
    """The peer's key (base64)."""
    name: str
    """Its published name ("" when unknown)."""
    allowed_ips: tuple[str, ...]
    """Allowed IPs as the interface has them."""
    endpoint: str | None
    """The endpoint WireGuard uses now."""
    source: str
    """Where that endpoint came from: registrar, lan, static, roaming or none."""
    path: str
    """direct (a fresh handshake on a direct endpoint), relay (a fresh handshake through the
    registrar's relay) or none."""
    reason: str
    """Why the path is not direct ("" when it is)."""
    latest_handshake: float
    """Unix seconds, 0.0 = never."""
    rx_bytes: int
    """Bytes received."""
    tx_bytes: int
    """Bytes sent."""
    candidates: tuple[str, ...]
    """The record's candidates as ``kind:endpoint``."""
    nat: str
    """The peer's published NAT class (a :class:`NatKind` value)."""
    relay: str | None = None
    """The relay address in use or ready for this peer (None: none)."""
    family: int | None = None
    """The address family of the endpoint in use: 4 or 6 (None: no endpoint)."""
    candidates_by_family: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The record's candidates by family (``ipv4``, ``ipv6``; a family without any is left
    out), each endpoint once, as ``kind:endpoint``."""
    first_family: int | None = None
    """The family whose candidates the daemon tries first for this peer (6 when both sides
    have IPv6 and IPv4 is not preferred for it; None without a daemon)."""


def view_of(
    dev: PeerState,
    record: PeerRecord | None,
    planner: Planner | None,
    now: float,
    peer: PeerPath | None = None,
) -> PeerView:
    """A ``wgmesh peers`` row from what is known (the planner's state is optional)."""
    fresh_limit = planner.config.handshake_fresh if planner else HANDSHAKE_FRESH
    fresh = dev.latest_handshake > 0 and now - dev.latest_handshake < fresh_limit
    source = "static"
    if peer is not None and peer.proven_source is not None and peer.proven == dev.endpoint:
        source = str(peer.proven_source)
    elif record is not None and dev.endpoint is not None:
        source = "roaming"
        for h in record.hints:
            if h.endpoint == dev.endpoint:
                source = str(h.source) if h.source == Source.LAN else "registrar"
    elif dev.endpoint is None:
        source = "none"
    relay = peer.relay if peer is not None else None
    if fresh and relay is not None and dev.endpoint == relay:
        path, reason = "relay", why_not_direct(dev, record, planner, peer)
    elif fresh:  # a clash is worth a warning even while the path works
        path, reason = "direct", planner.clash_reason(dev.public_key) if planner else ""
    else:
        path = "none"
        reason = why_not_direct(dev, record, planner, peer)
    by_family: dict[str, tuple[str, ...]] = {}
    seen = set()
    for h in record.hints if record else ():
        if h.endpoint not in seen:
            seen.add(h.endpoint)
            name = f"ipv{h.endpoint.family}"
            by_family[name] = (*by_family.get(name, ()), f"{h.kind}:{h.endpoint}")
    first = None
    if planner is not None and record is not None:
        first = 6 if planner.ipv6_first(record) else 4
    return PeerView(
        public_key=encode_key(dev.public_key),
        name=record.name if record else "",
        allowed_ips=dev.allowed_ips,
        endpoint=str(dev.endpoint) if dev.endpoint else None,
        source=source,
        path=path,
        reason=reason,
        latest_handshake=dev.latest_handshake,
        rx_bytes=dev.rx_bytes,
        tx_bytes=dev.tx_bytes,
        candidates=tuple(f"{h.kind}:{h.endpoint}" for h in (record.hints if record else ())),
        nat=record.nat.value if record else NatKind.UNKNOWN.value,
        relay=str(relay) if relay is not None else None,
        family=dev.endpoint.family if dev.endpoint else None,
        candidates_by_family=dict(sorted(by_family.items())),
        first_family=first,
    )


_FILTERING_NOT_SYMMETRIC = frozenset({NatKind.CONE, NatKind.UNKNOWN})
"""NATs that drop unsolicited packets but keep one mapping per port (an unclassified NAT is
assumed to be one)."""


def why_not_direct(
    dev: PeerState, record: PeerRecord | None, planner: Planner | None, peer: PeerPath | None
) -> str:
    """A person-readable reason for a peer with no working direct path."""
    if record is None:
        if dev.endpoint is None:
            return "peer is not registered (no DNS-SD record) and has no static endpoint"
        return "no handshake on the static endpoint; peer is not registered"
    clash = planner.clash_reason(dev.public_key) if planner else ""
    if clash:
        return clash
    ours = planner.our_nat if planner else NatKind.UNKNOWN
    theirs = record.nat
    if planner is not None and planner.ipv6_first(record):
        ours = theirs = NatKind.UNKNOWN  # the NAT classes say nothing about IPv6 (no NAT)
    if theirs == NatKind.SYMMETRIC and ours == NatKind.SYMMETRIC:
        return "both peers are behind symmetric NATs: no direct path without a relay"
    if theirs == NatKind.SYMMETRIC and ours in _FILTERING_NOT_SYMMETRIC:
        return (
            "peer is behind a symmetric NAT and we are behind a filtering NAT: "
            "no direct path without a relay (a port forward on either side would fix it)"
        )
    if ours == NatKind.SYMMETRIC and theirs in _FILTERING_NOT_SYMMETRIC:
        return (
            "we are behind a symmetric NAT and the peer is behind a filtering NAT: "
            "no direct path without a relay (a port forward on either side would fix it)"
        )
    if peer is not None and peer.relay is not None and dev.endpoint == peer.relay:
        return "every direct candidate failed; relayed, direct is tried again periodically"
    if peer is not None and peer.attempt is not None:
        tried = len(peer.rounds.tried)
        return f"trying {peer.attempt.target} ({tried} of {len(record.hints)} candidates)"
    if dev.latest_handshake > 0:
        return "last handshake is stale; retrying candidates"
    return "no handshake yet on any candidate"
