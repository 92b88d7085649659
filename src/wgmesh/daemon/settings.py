"""What the daemon is configured with (:class:`DaemonSettings`, from the command line and
config file: wgmesh.cli.daemon) and what its adapter counts (:class:`DaemonStats`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgmesh.proto.client import ClientConfig, Via
from wgmesh.proto.device import PeerUpdate
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.pathreport import ReportConfig
from wgmesh.proto.punchconfig import PunchConfig


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """Everything the daemon is configured with."""

    interface: str
    """WireGuard interface name."""
    registrar: Endpoint
    """Registrar STUN address (primary port): the first of :attr:`registrars`."""
    registrar_key: bytes
    """Registrar public key."""
    zone: str
    """DNS-SD zone."""
    dns: Endpoint | None = None
    """Authoritative server to ask; None: the zone's own NS."""
    registrar_alt_port: int | None = None
    """Alternate STUN port for NAT classification (None: registrar port + 1; 0: off)."""
    mode: str = "endpoints"
    """``endpoints`` or ``mesh``."""
    probe_interval: float = 20.0
    """Seconds between registrations (keeps NAT mappings alive; conntrack often forgets at 30 s)."""
    traffic_poll: float = 0.5
    """Seconds between reads of the peers' counters to spot stalled paths (0: off)."""
    device_poll: float = 2.0
    """Longest pause between two plans (each reads the interface: handshakes are only seen
    when asked for)."""
    name: str = ""
    """Name reported to the registrar."""
    wait_interface: bool = False
    """Wait for the interface to appear instead of failing."""
    status_socket: Path | None = None
    """Where ``wgmesh peers`` finds us."""
    backend: str = "auto"
    """WireGuard control backend: auto, uapi, wg."""
    prime_ttl: int = 2
    """TTL of the NAT-priming packet (enough to leave our NAT, not to reach the peer's)."""
    punch: PunchConfig = field(default_factory=PunchConfig)
    """Endpoint choice timings."""
    mdns: bool = True
    """Announce and browse _wireguard._udp.local. on the LAN."""
    mdns_interfaces: tuple[str, ...] = ()
    """Interfaces for mDNS (default: every up interface but the WireGuard one)."""
    routes: bool = False
    """Mesh mode: keep kernel routes for the members' subnets (wgmesh.daemon.routes)."""
    metrics: Endpoint | None = None
    """Where to serve the counters over HTTP as Prometheus text (None: nowhere)."""
    log_counters: float = 0.0
    """Seconds between log lines of the counters that changed (0: none; the command line's
    default is 60)."""
    paths: ReportConfig = field(default_factory=ReportConfig)
    """When our paths to the peers are reported to the registrar (its status page)."""
    registrars: tuple[Endpoint, ...] = ()
    """Every registrar address, at most one per family, in the order given (empty: just
    :attr:`registrar`)."""

    def registrar_endpoints(self) -> tuple[Endpoint, ...]:
        """The registrar's addresses, ``registrar`` first."""
        return self.registrars or (self.registrar,)

    def client_config(self) -> ClientConfig:
        """The registrar protocol's settings."""
        return ClientConfig(
            probe_interval=self.probe_interval,
            classify=self.registrar_alt_port != 0,
            roster=self.mode == "mesh",
        )


def _zeros(*keys: str) -> dict[str, int]:
    return dict.fromkeys(map(str, keys), 0)  # plain strings, also for a StrEnum's members


@dataclass(slots=True)
class DaemonStats:
    """What the adapter counts (the registrar client counts its own, ``client.counters``);
    each dict is one labelled metric family, keyed by label value."""

    sent: dict[str, int] = field(default_factory=lambda: _zeros(*Via))
    """Datagrams sent to the registrar, by :class:`Via` (wireguard: the Registers, probes)."""
    send_failed: dict[str, int] = field(default_factory=lambda: _zeros(*Via))
    """Sends to the registrar that failed, by :class:`Via`."""
    lookups: dict[str, int] = field(default_factory=lambda: _zeros("found", "absent", "failed"))
    """DNS-SD lookups of a peer by result: a record, none (NXDOMAIN/NODATA), an error."""
    updates: dict[str, int] = field(
        default_factory=lambda: _zeros("endpoint", "handshake", "added", "removed", "renewed")
    )
    """Changes applied to the interface's peers, by kind."""
    interface_errors: dict[str, int] = field(default_factory=lambda: _zeros("read", "apply"))
    """Reads and updates of the interface that failed."""
    mapping_changes: int = 0
    """Times our public mapping changed (every peer is punched again)."""
    primes: int = 0
    """NAT-priming packets sent."""
    stalls: int = 0
    """Stalled paths that made the daemon probe the registrar at once."""

    def count_applied(self, updates: Sequence[PeerUpdate]) -> None:
        u = self.updates
        for update in updates:
            u["removed"] += update.remove
            u["added"] += update.allowed_ips is not None and not update.remove
            u["endpoint"] += update.endpoint is not None
            u["handshake"] += update.handshake_now
            u["renewed"] += update.renew
