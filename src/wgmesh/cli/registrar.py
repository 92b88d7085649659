"""Run the registrar on a public host: a STUN server that records, for every admitted peer,
the public ip:port its WireGuard port maps to, and an authoritative DNS server publishing those
endpoints as DNS-SD records (wgsd's layout: _wireguard._udp.ZONE PTR, per-peer SRV/TXT/A/AAAA).

examples:
  wgmesh genkey > /etc/wgmesh/registrar.key
  wgmesh registrar --zone mesh.example.com --private-key-file /etc/wgmesh/registrar.key \\
      --authorized-keys /etc/wgmesh/authorized_keys
  dig @REGISTRAR _wireguard._udp.mesh.example.com PTR

Delegate ZONE to this host (NS + glue in the parent zone) so resolvers find it; see
docs/operations.md. SIGHUP re-reads --authorized-keys without dropping live records.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wgmesh.cli import validate as v
from wgmesh.cli.options import (
    RuntimeFailure,
    add_config_argument,
    add_counter_arguments,
    check_values,
    read_key_file,
    resolve,
    setup_logging,
    where_of,
)
from wgmesh.errors import ConfigError
from wgmesh.proto.endpoint import Endpoint

DEFAULTS: dict[str, Any] = {
    "zone": None,
    "private_key_file": None,
    "listen": ["0.0.0.0", "::"],
    "stun_port": 3478,
    "stun_alt_port": None,
    "dns_port": 53,
    "state_dir": "/var/lib/wgmesh",
    "authorized_keys": None,
    "open": False,
    "ns": [],
    "ns_address": [],
    "hostmaster": None,
    "ttl": 5,
    "negative_ttl": 5,
    "expiry": 50.0,
    "rate": 20.0,
    "burst": 5.0,
    "max_peers": 1_000_000,
    "dns_rate": 200.0,
    "dns_burst": 400.0,
    "dns_slip": 2,
    "dns_tcp_per_source": 8,
    "dns_tcp_max": 256,
    "secondary": [],
    "tsig_key": None,
    "update_primary": None,
    "serial_interval": 1.0,
    "relay_ports": None,
    "relay_mode": None,
    "relay_address": None,
    "relay_per_peer": 8,
    "relay_idle": 300.0,
    "relay_unbound": 30.0,
    "metrics": None,
    "log_counters": 60.0,
    "status_socket": None,
    "verbose": False,
}

LISTEN_EXPECTED = (
    "IP addresses to listen on, each once, such as 203.0.113.10 and 2001:db8::10 (--listen "
    "repeated; in a config file an address or a list of them)"
)


def _listen(value: Any, where: str) -> list[str]:
    """``--listen`` (a list: the flag is repeated) or ``listen`` in a config file (an address,
    as before the flag could repeat, or a list of them): IP addresses, each once."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        shown = "an empty list" if isinstance(items, list) else v.describe(value)
        v.fail(where, f"got {shown}", LISTEN_EXPECTED)
    indexed = not where.startswith("--") and not isinstance(value, str)
    seen: dict[Any, str] = {}
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if indexed else where
        text = v.ip_address(item, at)
        ip = ipaddress.ip_address(text)
        if ip in seen:
            twice = text if seen[ip] == text else f"{text} (the same as {seen[ip]})"
            v.fail(at, f"{twice} is listed twice", LISTEN_EXPECTED)
        seen[ip] = text
        out.append(text)
    return out


OFF = "to turn NAT classification off"
CHECKS: dict[str, v.Check] = {
    "zone": v.zone_name,
    "private_key_file": v.path,
    "listen": _listen,
    "stun_port": v.port(),
    "stun_alt_port": v.port(zero=OFF),
    "dns_port": v.port(),
    "state_dir": v.path,
    "authorized_keys": v.path,
    "open": v.boolean,
    "ns": v.list_of(v.ns_entry, "DNS names (NAME or NAME=ADDRESS[,ADDRESS])"),
    "ns_address": v.list_of(v.ip_address, "IP addresses"),
    "hostmaster": v.hostmaster,
    "ttl": v.integer(0, v.MAX_TTL, "a TTL in seconds"),
    "negative_ttl": v.integer(0, v.MAX_TTL, "a TTL in seconds"),
    "expiry": v.positive(v.MAX_SECONDS),
    "rate": v.positive(1_000_000, "messages per second"),
    "burst": v.number(1, 1_000_000, "a number of messages"),
    "max_peers": v.integer(1, 100_000_000, "a number of peers"),
    "dns_rate": v.number(0, 1e9, "answers per second per source prefix (0: no limit)"),
    "dns_burst": v.number(1, 1e9, "a number of answers"),
    "dns_slip": v.integer(0, 100, "every Nth limited answer sent truncated (0: none)"),
    "dns_tcp_per_source": v.integer(1, 65536, "a number of connections"),
    "dns_tcp_max": v.integer(1, 65536, "a number of connections"),
    "secondary": v.list_of(v.endpoint(53), "secondaries' addresses, IP[:PORT]"),
    "tsig_key": v.path,
    "update_primary": v.endpoint(53),
    "serial_interval": v.number(0, 3600, "seconds between two zone serials (0: every change)"),
    "relay_ports": v.port_range,
    "relay_mode": v.choice("kernel", "userspace", "off"),
    "relay_address": v.ip_address,
    "relay_per_peer": v.integer(1, 1024, "a number of relayed pairs"),
    "relay_idle": v.positive(v.MAX_SECONDS),
    "relay_unbound": v.positive(v.MAX_SECONDS),
    "metrics": v.listen_endpoint,
    "log_counters": v.seconds_or_off(1.0, v.MAX_SECONDS),
    "status_socket": v.socket_path,
    "verbose": v.boolean,
}
"""How each option is checked (the same for its flag and its config key); see cli/validate.py."""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    a = parser.add_argument
    a("--zone", help="DNS zone served, e.g. mesh.example.com (required)")
    a(
        "--private-key-file",
        metavar="FILE",
        help="registrar private key, WireGuard format (wgmesh genkey); peers are given its "
        "public key (wgmesh pubkey < FILE) as --registrar-key (required)",
    )
    a(
        "--listen",
        action="append",
        metavar="ADDR",
        help="an IP address to serve STUN and DNS (UDP and TCP) on; repeat for several, e.g. "
        "--listen 203.0.113.10 --listen 2001:db8::10 (default: 0.0.0.0 and ::, every address of "
        "both families). Every reply leaves from the address its request came to, also on a "
        "wildcard (addresses added later, a VIP, included); :: alone also serves IPv4",
    )
    a("--stun-port", type=int, metavar="PORT", help="STUN/registration UDP port (default 3478)")
    a(
        "--stun-alt-port",
        type=int,
        metavar="PORT",
        help="second STUN port, used to tell cone from symmetric NATs (default: STUN port + 1; "
        "0 turns it off)",
    )
    a("--dns-port", type=int, metavar="PORT", help="DNS port, UDP and TCP (default 53)")
    a("--state-dir", metavar="DIR", help="where the SQLite state lives (default /var/lib/wgmesh)")
    a(
        "--authorized-keys",
        metavar="FILE",
        help="peers allowed to register, one 'KEY [NAME] [ALLOWED-IPS]' per line; the allowed "
        "IPs published come only from here. Re-read on SIGHUP",
    )
    a(
        "--open",
        action="store_true",
        default=None,
        help="let any key register (no admission list); --open or --authorized-keys is required",
    )
    a(
        "--ns",
        action="append",
        metavar="NAME[=ADDR,...]",
        help="NS name(s) for the zone apex (default ns1.ZONE); repeat for several. A name "
        "inside the zone gets glue A/AAAA: NAME=ADDR[,ADDR] gives its own (e.g. a secondary's, "
        "--ns ns2.mesh.example.com=192.0.2.53), else --ns-address",
    )
    a(
        "--ns-address",
        action="append",
        metavar="ADDR",
        help="address(es) of the NS names inside the zone that --ns gives none of their own "
        "(the registrar's), served as glue A/AAAA",
    )
    a("--hostmaster", metavar="NAME", help="SOA RNAME (default hostmaster.ZONE)")
    a("--ttl", type=int, help="TTL of positive answers in seconds (default 5)")
    a(
        "--negative-ttl",
        type=int,
        help="SOA minimum = how long resolvers cache 'no such peer' (default 5; wgsd's 60 delays "
        "new peers)",
    )
    a(
        "--expiry",
        type=float,
        help="seconds without a refresh before a peer's records are withdrawn (default 50, about "
        "two probe intervals of the daemon)",
    )
    a(
        "--rate",
        type=float,
        help="first contacts and failed boxes per second per source address (default 20; a "
        "registered key's valid messages are limited per key instead)",
    )
    a("--burst", type=float, help="burst of the per-source limit (default 5)")
    a(
        "--max-peers",
        type=int,
        help="most registered peers, and most watchers (one per peer) "
        "remembered for pushes (default 1000000)",
    )
    a(
        "--dns-rate",
        type=float,
        help="UDP answers per second to one source prefix (IPv4 /24, IPv6 /56) before response "
        "rate limiting drops them (default 200; 0 turns the limit off)",
    )
    a("--dns-burst", type=float, help="burst of the DNS rate limit (default 400)")
    a(
        "--dns-slip",
        type=int,
        help="every Nth rate-limited answer goes out truncated, so a real resolver retries "
        "over TCP (default 2; 0: drop them all)",
    )
    a("--dns-tcp-per-source", type=int, help="TCP connections one source may hold (default 8)")
    a("--dns-tcp-max", type=int, help="TCP connections in all (default 256)")
    a(
        "--secondary",
        action="append",
        metavar="ADDRESS[:PORT]",
        help="a secondary DNS server: may transfer the zone (AXFR/IXFR over TCP, from ADDRESS) "
        "and is sent NOTIFY (at ADDRESS:PORT, default 53) on every new serial; repeat for "
        "several",
    )
    a(
        "--tsig-key",
        metavar="FILE",
        help="TSIG key in BIND's key-file format (tsig-keygen NAME > FILE): transfers must be "
        "signed with it, NOTIFYs and UPDATEs are; needs --secondary or --update-primary",
    )
    a(
        "--update-primary",
        metavar="ADDRESS[:PORT]",
        help="RFC 2136 mode: also keep the peers' records in this external primary's copy of "
        "the zone with dynamic UPDATEs (signed with --tsig-key; port default 53), touching only "
        'the names derived from peer keys (docs/operations.md, "An external primary")',
    )
    a(
        "--serial-interval",
        type=float,
        metavar="SECONDS",
        help="least seconds between two zone serials: changes within are published as one "
        "serial, one IXFR delta and one NOTIFY (default 1; 0: a serial per change)",
    )
    a(
        "--relay-ports",
        metavar="LOW-HIGH",
        help="relay WireGuard traffic for pairs that cannot connect directly, from this UDP "
        "port range (two ports per pair; e.g. 40000-40999); off by default",
    )
    a(
        "--relay-mode",
        choices=("kernel", "userspace", "off"),
        help="how to forward relayed traffic: kernel (nftables rules in the registrar's own "
        "table; needs CAP_NET_ADMIN), userspace, or off (default: kernel where nftables works, "
        "else userspace; given alone, relays from ports 40000-40999)",
    )
    a(
        "--relay-address",
        metavar="ADDR",
        help="the public address daemons send relayed traffic to (default: --listen, which "
        "must then be a concrete address)",
    )
    a("--relay-per-peer", type=int, help="relayed pairs one peer may hold at once (default 8)")
    a(
        "--relay-idle",
        type=float,
        help="seconds a relayed pair lives without traffic (default 300; WireGuard's "
        "keepalives keep it)",
    )
    a(
        "--relay-unbound",
        type=float,
        help="seconds an allocation waits for both peers' binds before it expires (default 30)",
    )
    add_counter_arguments(parser, "127.0.0.1:9108")
    a(
        "--status-socket",
        metavar="PATH",
        help="unix socket (mode 0600) 'wgmesh mesh' reads the mesh from (default "
        f"STATE-DIR/{STATUS_SOCKET_NAME})",
    )
    a("-v", "--verbose", action="store_true", default=None, help="debug logging")
    add_config_argument(parser)


def settings_from(given: Mapping[str, Any]) -> Any:
    """The registrar's settings from the merged options, every value checked first: raises
    ConfigError (exit status 2) naming the flag or config key at fault."""
    from wgmesh.proto.dnssd import ZoneConfig
    from wgmesh.proto.ratelimit import RateLimitConfig
    from wgmesh.proto.registry import RegistryConfig
    from wgmesh.proto.rrl import RrlConfig
    from wgmesh.registry.dns import DnsLimits
    from wgmesh.registry.settings import RegistrarSettings

    values = check_values(given, CHECKS)

    def where(name: str) -> str:
        return where_of(given, name)

    if not values["zone"]:
        raise ConfigError(
            "--zone ZONE is required (the DNS zone to serve, e.g. mesh.example.com; "
            "or zone in --config FILE)"
        )
    origin = str(values["zone"]).rstrip(".").lower() + "."
    private_key = read_key_file(values["private_key_file"], where("private_key_file"))
    akeys = values["authorized_keys"]
    if akeys:
        _check_admission(Path(akeys), where("authorized_keys"))
    elif not values["open"]:
        raise ConfigError(
            "say who may register: --authorized-keys FILE (one 'KEY [NAME] [ALLOWED-IPS]' "
            "per line) or --open (any key)"
        )
    stun_port: int = values["stun_port"]
    alt = values["stun_alt_port"]
    if alt is None:
        if stun_port == 65535:
            raise ConfigError(
                f"{where('stun_port')}: 65535 leaves no port for the second STUN port "
                "(stun-port + 1); expected a lower port, or --stun-alt-port (0 turns it off)"
            )
        alt = stun_port + 1
    elif alt == stun_port:
        raise ConfigError(
            f"{where('stun_alt_port')}: {alt} is the STUN port too; expected another port, "
            "or 0 to turn NAT classification off"
        )
    dns_port: int = values["dns_port"]
    if dns_port in (stun_port, alt):
        what = (
            where("stun_port")
            if dns_port == stun_port
            else "the second STUN port (--stun-alt-port, default stun-port + 1)"
        )
        raise ConfigError(
            f"{where('dns_port')}: {dns_port} is also {what}; expected a port of its own"
        )
    metrics = _metrics_endpoint(values, where)
    state_dir = Path(values["state_dir"])
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(
            f"{where('state_dir')}: {state_dir} is not a directory; "
            "expected a directory (made if missing)"
        )
    entries = [str(n).partition("=") for n in values["ns"]]
    ns = tuple(n.rstrip(".") + "." for n, _, _ in entries) or (f"ns1.{origin}",)
    glue = tuple((n.rstrip(".") + ".", tuple(a.split(","))) for n, eq, a in entries if eq)
    outside = next((n for n, _ in glue if not _inside(n, origin)), None)
    if outside is not None:
        raise ConfigError(
            f"{where('ns')}: {outside} is not inside the zone {origin}, so it has no glue here; "
            "expected NAME=ADDRESS only for NS names inside the zone (give others as NAME)"
        )
    folded = [n.lower() for n in ns]
    if len(set(folded)) != len(folded):
        twice = next(n for n in ns if folded.count(n.lower()) > 1)
        raise ConfigError(f"{where('ns')}: {twice} is listed twice; expected each NS name once")
    hostmaster = str(values["hostmaster"] or f"hostmaster.{origin}")
    zone_config = ZoneConfig(
        origin=origin,
        ns=ns,
        hostmaster=hostmaster if hostmaster.endswith(".") else hostmaster + ".",
        ttl=values["ttl"],
        negative_ttl=values["negative_ttl"],
        ns_addresses=tuple(values["ns_address"]),
        ns_glue=glue,
        serial_interval=values["serial_interval"],
    )
    from wgmesh import __version__

    dns_limits = DnsLimits(
        max_tcp_connections=values["dns_tcp_max"],
        max_tcp_per_source=values["dns_tcp_per_source"],
        rrl=RrlConfig(rate=values["dns_rate"], burst=values["dns_burst"], slip=values["dns_slip"]),
    )
    relay, relay_mode, relay_address = _relay(values, where)
    registry = RegistryConfig(
        expiry=values["expiry"],
        max_peers=values["max_peers"],
        max_watchers=values["max_peers"],  # one watcher per peer
        rate_limit=RateLimitConfig(rate=values["rate"], burst=values["burst"]),
        software=f"wgmesh/{__version__}",
    )
    return RegistrarSettings(
        zone=zone_config,
        private_key=private_key,
        listen=_usable_default(tuple(values["listen"])),
        stun_port=stun_port,
        stun_alt_port=alt,
        dns_port=dns_port,
        state_dir=state_dir,
        authorized_keys=Path(akeys) if akeys else None,
        open_registration=bool(values["open"]),
        registry=registry,
        metrics=metrics,
        log_counters=values["log_counters"],
        dns_limits=dns_limits,
        xfr=_transfers(values, where),
        update=_update_primary(values, where),
        relay=relay,
        relay_mode=relay_mode,
        relay_address=relay_address,
        status_socket=_status_socket(values, state_dir),
    )


STATUS_SOCKET_NAME = "registrar.sock"
MAX_SOCKET_PATH = 107


def _status_socket(values: Mapping[str, Any], state_dir: Path) -> Path | None:
    """``--status-socket``, else STATE-DIR/registrar.sock when that fits a unix socket's
    path (else none: the registrar logs nothing of it, ``wgmesh mesh`` needs the flag)."""
    if values["status_socket"]:
        return Path(values["status_socket"])
    path = state_dir / STATUS_SOCKET_NAME
    return path if len(os.fsencode(path.absolute())) <= MAX_SOCKET_PATH else None


DEFAULT_RELAY_PORTS = (40000, 40999)


def _relay(values: Mapping[str, Any], where: Callable[[str], str]) -> tuple[Any, str, str | None]:
    """The relay's settings: (RelayConfig, mode, address). Relaying is on with --relay-ports,
    or with --relay-mode kernel|userspace alone (then on the default range)."""
    from wgmesh.proto.relay import RelayConfig

    mode = values["relay_mode"]
    ports = values["relay_ports"]
    if mode == "off" or (mode is None and ports is None):
        return RelayConfig(), "off", None
    low, high = ports or DEFAULT_RELAY_PORTS
    taken = {values["stun_port"], values["stun_alt_port"], values["dns_port"]}
    clash = sorted(p for p in taken if p is not None and low <= p <= high)
    if clash:
        raise ConfigError(
            f"{where('relay_ports')}: {low}-{high} holds port {clash[0]}, which the STUN or "
            "DNS server uses; expected a range of its own"
        )
    address = values["relay_address"]
    if address is None:
        concrete = [a for a in values["listen"] if ipaddress.ip_address(a).version == 4
                    and not ipaddress.ip_address(a).is_unspecified]  # fmt: skip
        if not concrete:
            raise ConfigError(
                f"relaying needs the address daemons send to: give {where('relay_address')} "
                f"(the public address) or a concrete IPv4 {where('listen')}"
            )
        address = concrete[0]
    if ipaddress.ip_address(address).version != 4:
        raise ConfigError(f"{where('relay_address')}: {address}: the relay is IPv4 only for now")
    return RelayConfig(low=low, high=high, per_peer=values["relay_per_peer"],
                       idle_ttl=values["relay_idle"], unbound_ttl=values["relay_unbound"],
                       ), mode or "auto", str(address)  # fmt: skip


def _transfers(values: Mapping[str, Any], where: Callable[[str], str]) -> Any:
    """The secondaries and the TSIG key (read and parsed now), or None without secondaries."""
    from wgmesh.proto.tsigkey import parse_key_file
    from wgmesh.registry.xfr import XfrSettings, secondaries_of

    secondaries = secondaries_of(values["secondary"])
    twice = next((s for i, s in enumerate(secondaries) if s in secondaries[:i]), None)
    if twice is not None:
        raise ConfigError(
            f"{where('secondary')}: {twice} is listed twice; expected each secondary once"
        )
    key = None
    if values["tsig_key"]:
        path = Path(values["tsig_key"])
        expected = 'expected a BIND key file: key "NAME" { algorithm hmac-sha256; secret "..."; };'
        try:
            key = parse_key_file(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where('tsig_key')}: {path}: {exc.strerror}; {expected}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where('tsig_key')}: {path}: not UTF-8 text; {expected}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where('tsig_key')}: {path}: {exc}; {expected}") from None
        if not secondaries and not values["update_primary"]:
            raise ConfigError(
                f"{where('tsig_key')}: nothing uses the key; expected --secondary ADDRESS[:PORT] "
                "or --update-primary ADDRESS[:PORT] (or secondary, update-primary in --config "
                "FILE) with it"
            )
    return XfrSettings(secondaries, key) if secondaries else None


def _update_primary(values: Mapping[str, Any], where: Callable[[str], str]) -> Any:
    """``--update-primary`` with the TSIG key, or None."""
    if not values["update_primary"]:
        return None
    from wgmesh.proto.tsigkey import parse_key_file
    from wgmesh.registry.ddns import UpdateSettings

    if not values["tsig_key"]:
        raise ConfigError(
            f"{where('update_primary')}: UPDATEs must be signed; expected --tsig-key FILE "
            "with the key the primary's update ACL names"
        )
    key = parse_key_file(Path(values["tsig_key"]).read_text(encoding="utf-8"))  # checked above
    primary = Endpoint.parse(str(values["update_primary"]), default_port=53)
    return UpdateSettings(primary, key)


def _metrics_endpoint(values: Mapping[str, Any], where: Callable[[str], str]) -> Endpoint | None:
    """``--metrics`` (checked), refused where it would take the DNS server's TCP port."""
    if not values["metrics"]:
        return None
    metrics = Endpoint.parse(str(values["metrics"]))
    listen = [ipaddress.ip_address(a) for a in values["listen"]]
    overlap = metrics.ip.is_unspecified or any(a == metrics.ip or a.is_unspecified for a in listen)
    if metrics.port == values["dns_port"] and overlap:
        raise ConfigError(
            f"{where('metrics')}: port {metrics.port} is also the DNS server's TCP port "
            f"({where('dns_port')}); expected a port of its own"
        )
    return metrics


def _check_admission(path: Path, where: str) -> None:
    """Read and parse the authorized-keys file now, so a broken one stops the start here."""
    from wgmesh.registry.admission import parse_authorized_keys

    expected = "expected a file of 'KEY [NAME] [ALLOWED-IPS]' lines"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: {exc.strerror}; {expected}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path}: not UTF-8 text; {expected}") from None
    try:
        parse_authorized_keys(text, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; {expected}") from None


def run(args: argparse.Namespace) -> int:
    values = resolve(args, DEFAULTS, CHECKS)
    setup_logging(bool(values["verbose"]))
    settings = settings_from(values)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(_main(settings))
    except ConfigError as exc:  # found while starting (the state directory): not a usage error
        raise RuntimeFailure(str(exc)) from None


async def _main(settings: Any) -> int:
    from wgmesh.registry.server import Registrar

    try:
        registrar = await Registrar.start(settings)
    except OSError as exc:
        ports = [settings.stun_port, settings.stun_alt_port, settings.dns_port]
        raise RuntimeFailure(
            f"cannot bind {', '.join(settings.listen)} (UDP "
            f"{', '.join(str(p) for p in ports if p)}, TCP {settings.dns_port}): {exc.strerror}"
        ) from None
    await registrar.serve_forever()
    return 0


def _inside(name: str, origin: str) -> bool:
    """``name`` is ``origin`` or below it (DNS names compare without case)."""
    n, o = name.rstrip(".").lower(), origin.rstrip(".").lower()
    return n == o or n.endswith("." + o)


def _usable_default(listen: tuple[str, ...]) -> tuple[str, ...]:
    """The default listen set without ``::`` on a host whose kernel has no IPv6 at all
    (``ipv6.disable=1``: no AF_INET6 socket can be made), so that the registrar still starts on
    IPv4; addresses given with ``--listen`` are kept as given (their bind error is the answer)."""
    if listen != tuple(DEFAULTS["listen"]) or has_ipv6():
        return listen
    return tuple(a for a in listen if ":" not in a)


def has_ipv6() -> bool:
    """This kernel can make IPv6 sockets."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        return False
    return True
