"""What the registrar process is configured with (:class:`RegistrarSettings`, from the
command line and config file: wgmesh.cli.registrar)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from wgmesh.proto.dnssd import ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.registry import RegistryConfig
from wgmesh.proto.relay import RelayConfig
from wgmesh.registry.ddns import UpdateSettings
from wgmesh.registry.dns import DnsLimits
from wgmesh.registry.xfr import XfrSettings


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    """Everything the registrar process is configured with."""

    zone: ZoneConfig
    """The DNS zone it serves."""
    private_key: bytes
    """The registrar's X25519 private key (WireGuard format)."""
    listen: tuple[str, ...] = ("0.0.0.0", "::")
    """Addresses the STUN and DNS sockets bind to, each IP once (the default: both wildcards,
    each family on a socket of its own; ``::`` alone is dual-stack). A single string is taken
    as a one-address tuple."""
    stun_port: int = 3478
    """STUN / registration / control port."""
    stun_alt_port: int = 3479
    """Second STUN port for NAT classification (0: off)."""
    dns_port: int = 53
    """DNS port (UDP and TCP)."""
    state_dir: Path = Path("/var/lib/wgmesh")
    """Where registrar.sqlite3 lives."""
    authorized_keys: Path | None = None
    """The authorized-keys file, or None with ``open_registration``."""
    open_registration: bool = False
    """Accept any key."""
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    """Timings and limits."""
    flush_interval: float = 0.2
    """Most seconds a peer change waits before it is written to SQLite (with the changes that
    came after it, in one transaction): what a ``kill -9`` can lose."""
    metrics: Endpoint | None = None
    """Where to serve the counters over HTTP as Prometheus text (None: nowhere)."""
    log_counters: float = 0.0
    """Seconds between log lines of the counters that changed (0: none; the command line's
    default is 60)."""
    dns_limits: DnsLimits = field(default_factory=DnsLimits)
    """Response rate limiting, cookies and TCP caps of the DNS server."""
    xfr: XfrSettings | None = None
    """Secondaries that may transfer the zone and are sent NOTIFY (None: none)."""
    update: UpdateSettings | None = None
    """RFC 2136 mode: the external primary kept current with UPDATEs (None: none)."""
    relay: RelayConfig = field(default_factory=RelayConfig)
    """The relay's ports and limits (off by default)."""
    relay_mode: str = "off"
    """kernel, userspace, auto (kernel where nftables works) or off."""
    relay_address: str | None = None
    """The address daemons send relayed traffic to (the relay ports bind to it)."""
    status_socket: Path | None = None
    """The unix socket ``wgmesh mesh`` reads the mesh from (None: none)."""

    def __post_init__(self) -> None:
        given: object = self.listen  # a str from callers of the one-address days
        listen = (given,) if isinstance(given, str) else tuple(self.listen)
        if not listen:
            raise ValueError("RegistrarSettings.listen: expected at least one address")
        parsed = [ipaddress.ip_address(a) for a in listen]  # ValueError for a non-IP
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"RegistrarSettings.listen: {listen} lists an address twice")
        object.__setattr__(self, "listen", listen)
