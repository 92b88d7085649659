"""The Planner's timings and switches (:class:`PunchConfig`, wgmesh.proto.punch), apart so
that the stall watch (wgmesh.proto.stall) and the rows of ``wgmesh peers`` read them without
importing the Planner."""

from __future__ import annotations

from dataclasses import dataclass

from wgmesh.proto.device import DEFAULT_KEEPALIVE
from wgmesh.proto.pathstate import HANDSHAKE_FRESH


@dataclass(frozen=True, slots=True)
class PunchConfig:
    """Timings of the endpoint choice."""

    handshake_fresh: float = HANDSHAKE_FRESH
    """A handshake this recent proves a path (WireGuard re-handshakes every 120 s when busy)."""
    candidate_trial: float = 6.0
    """Seconds a candidate has to produce a handshake before the next is tried. Longer than
    WireGuard's own retry (REKEY_TIMEOUT 5 s + jitter), so that retry lands on the same one."""
    punch_delay: float = 0.05
    """Seconds between opening our NAT toward a candidate (the low-TTL priming packet) and
    making WireGuard initiate to it when we lead, so that the peer, acting at about the same
    moment, has opened its NAT too (at least this, and twice the registrar round trip)."""
    punch_stagger: float = 0.3
    """Further seconds the follower (the higher key) waits before initiating, and then only if
    no handshake came in (at least this, and three registrar round trips)."""
    stall_after: float = 1.0
    """Seconds without received bytes after which a busy path counts as stalled."""
    busy_bytes: int = 256
    """Bytes received in one sample that show the peer is sending data, not just a handshake
    (148 + 32 bytes) or a keepalive (32); two samples in a row with any growth show it too."""
    stall_probes: int = 3
    """Stall-triggered registrar probes allowed in a burst ..."""
    stall_refill: float = 10.0
    """... and seconds to earn one more (a token bucket)."""
    retry_min: float = 5.0
    """First pause after every candidate failed."""
    retry_max: float = 60.0
    """Longest pause between rounds of attempts (doubling from ``retry_min``)."""
    keepalive: int = DEFAULT_KEEPALIVE
    """Persistent keepalive set on managed peers that have none (keeps NAT mappings open)."""
    mesh: bool = False
    """Mesh mode: add peers found in the zone, remove them when withdrawn."""
    relay_retry: float = 300.0
    """Seconds between tries of direct from a relayed path (rule 8)."""
    stall_repair: float = 4.0
    """Seconds a re-punch gets to bring a stalled path back before the relay takes it over
    (rule 8; a clash of two hosts on one NAT port is what punching cannot repair)."""
    wait_unclassified: bool = False
    """Also wait ``relay_grace`` before a first direct try while our NAT class or the peer's
    is still unknown. Off: the two sides then stop acting at the same moment, and behind a NAT
    without a firewall the peer's early initiation takes our port (docs/lab.md); measured in the
    lab (open x open failed to connect once in four full runs with it on)."""
    relay_grace: float = 1.0
    """When the NAT classes call for the relay: seconds to wait for it before trying direct
    meanwhile (a direct initiation holds WireGuard's next one back 5 s)."""
