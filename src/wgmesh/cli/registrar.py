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
from pathlib import Path
from typing import Any

from wgmesh.cli.options import add_config_argument, read_key_file, resolve, setup_logging
from wgmesh.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "zone": None,
    "private_key_file": None,
    "listen": "0.0.0.0",
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
    "verbose": False,
}


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
    a("--listen", metavar="ADDR", help="address to bind STUN and DNS to (default 0.0.0.0)")
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
        metavar="NAME",
        help="NS name(s) for the zone apex (default ns1.ZONE); repeat for several",
    )
    a(
        "--ns-address",
        action="append",
        metavar="ADDR",
        help="address(es) of the NS names inside the zone, served as glue A/AAAA",
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
    a("--max-peers", type=int, help="most registered peers (default 1000000)")
    a("-v", "--verbose", action="store_true", default=None, help="debug logging")
    add_config_argument(parser)


def settings_from(values: dict[str, Any]) -> Any:
    from wgmesh.proto.dnssd import ZoneConfig
    from wgmesh.proto.ratelimit import RateLimitConfig
    from wgmesh.proto.registry import RegistryConfig
    from wgmesh.registry.server import RegistrarSettings

    zone = values["zone"]
    if not zone:
        raise ConfigError("--zone ZONE is required (the DNS zone to serve, e.g. mesh.example.com)")
    origin = str(zone).rstrip(".").lower() + "."
    private_key = read_key_file(values["private_key_file"], "--private-key-file")
    stun_port = int(values["stun_port"])
    alt = values["stun_alt_port"]
    alt_port = (stun_port + 1 if stun_port else 0) if alt is None else int(alt)
    ns = tuple(n.rstrip(".") + "." for n in values["ns"]) or (f"ns1.{origin}",)
    hostmaster = values["hostmaster"] or f"hostmaster.{origin}"
    zone_config = ZoneConfig(
        origin=origin,
        ns=ns,
        hostmaster=hostmaster if hostmaster.endswith(".") else hostmaster + ".",
        ttl=int(values["ttl"]),
        negative_ttl=int(values["negative_ttl"]),
        ns_addresses=tuple(values["ns_address"]),
    )
    from wgmesh import __version__

    registry = RegistryConfig(
        expiry=float(values["expiry"]),
        max_peers=int(values["max_peers"]),
        rate_limit=RateLimitConfig(rate=float(values["rate"]), burst=float(values["burst"])),
        software=f"wgmesh/{__version__}",
    )
    akeys = values["authorized_keys"]
    return RegistrarSettings(
        zone=zone_config,
        private_key=private_key,
        listen=str(values["listen"]),
        stun_port=stun_port,
        stun_alt_port=alt_port,
        dns_port=int(values["dns_port"]),
        state_dir=Path(values["state_dir"]),
        authorized_keys=Path(akeys) if akeys else None,
        open_registration=bool(values["open"]),
        registry=registry,
    )


def run(args: argparse.Namespace) -> int:
    values = resolve(args, DEFAULTS)
    setup_logging(bool(values["verbose"]))
    settings = settings_from(values)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_main(settings))


async def _main(settings: Any) -> int:
    from wgmesh.registry.server import Registrar

    try:
        registrar = await Registrar.start(settings)
    except OSError as exc:
        raise ConfigError(f"cannot bind {settings.listen}: {exc.strerror}") from None
    await registrar.serve_forever()
    return 0
