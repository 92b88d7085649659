"""Keep this host's WireGuard peer endpoints current so peers behind NATs connect directly.

The daemon registers the public mapping of the interface's WireGuard port with the registrar
(probes leave the WireGuard port through a raw socket: run as root or with CAP_NET_RAW), reads
the zone's DNS-SD records, and sets each peer's endpoint, making WireGuard shake hands at once
when a peer appears or moves. It never touches the interface's addresses, routes or keys, so it
works beside wg-quick and systemd-networkd.

modes:
  endpoints  (default) only peers already on the interface get endpoint updates, like wgsd-client
  mesh       also add the peers the registrar vouches for over the sealed channel (its
             admission list's keys with allowed IPs), with those allowed IPs, and remove them
             when they are withdrawn or revoked; DNS never adds a peer or moves an address

example:
  wgmesh daemon --interface wg0 --registrar 203.0.113.10 --registrar-key KEY \\
      --zone mesh.example.com --dns 203.0.113.10

`wgmesh peers --interface wg0` shows what the daemon sees and does.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wgmesh.cli import validate as v
from wgmesh.cli.options import (
    RuntimeFailure,
    add_config_argument,
    add_counter_arguments,
    check_values,
    resolve,
    setup_logging,
    where_of,
)
from wgmesh.errors import ConfigError
from wgmesh.proto.device import DEFAULT_KEEPALIVE
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key

DEFAULTS: dict[str, Any] = {
    "interface": None,
    "registrar": None,
    "registrar_key": None,
    "registrar_alt_port": None,
    "zone": None,
    "dns": None,
    "mode": "endpoints",
    "probe_interval": 20.0,
    "name": "",
    "wait_interface": False,
    "status_socket": None,
    "backend": "auto",
    "keepalive": DEFAULT_KEEPALIVE,
    "no_mdns": False,
    "mdns_interface": [],
    "metrics": None,
    "log_counters": 60.0,
    "verbose": False,
}

CHECKS: dict[str, v.Check] = {
    "interface": v.interface,
    "registrar": v.endpoint(3478, ipv4_only=True),
    "registrar_key": v.public_key,
    "registrar_alt_port": v.port(zero="to turn NAT classification off"),
    "zone": v.zone_name,
    "dns": v.endpoint(53),
    "mode": v.choice("endpoints", "mesh"),
    "probe_interval": v.positive(v.MAX_PROBE_INTERVAL),
    "name": v.peer_name,
    "wait_interface": v.boolean,
    "status_socket": v.socket_path,
    "backend": v.choice("auto", "uapi", "wg"),
    "keepalive": v.integer(1, 65535, "a number of seconds"),
    "no_mdns": v.boolean,
    "mdns_interface": v.list_of(v.interface, "interface names"),
    "metrics": v.listen_endpoint,
    "log_counters": v.seconds_or_off(1.0, v.MAX_SECONDS),
    "verbose": v.boolean,
}
"""How each option is checked (the same for its flag and its config key); see cli/validate.py."""

STATUS_DIR = Path("/run/wgmesh")


def status_socket_for(interface: str) -> Path:
    return STATUS_DIR / f"{interface}.sock"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    a = parser.add_argument
    a("--interface", "-i", metavar="IFACE", help="WireGuard interface (required)")
    a("--registrar", metavar="HOST[:PORT]", help="registrar address, port default 3478 (required)")
    a(
        "--registrar-key",
        metavar="PUBKEY",
        help="registrar public key, base64 (wgmesh pubkey < registrar.key) (required)",
    )
    a(
        "--registrar-alt-port",
        type=int,
        metavar="PORT",
        help="registrar's second STUN port, to classify our NAT (default: port + 1; 0: off)",
    )
    a("--zone", metavar="ZONE", help="DNS-SD zone the registrar serves (required)")
    a(
        "--dns",
        metavar="SERVER[:PORT]",
        help="DNS server to query (default: the zone's own name servers)",
    )
    a("--mode", choices=("endpoints", "mesh"), help="endpoints (default) or mesh, see above")
    a(
        "--probe-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between registrations (default 20; keep it under your NAT's UDP timeout)",
    )
    a(
        "--name",
        help="name to report to the registrar: printable, at most 63 bytes (the admission "
        "file's name wins)",
    )
    a(
        "--wait-interface",
        action="store_true",
        default=None,
        help="wait for the interface to appear (e.g. wg-quick up after the daemon) instead of "
        "exiting with an error",
    )
    a(
        "--status-socket",
        metavar="PATH",
        help="unix socket for 'wgmesh peers' (default /run/wgmesh/IFACE.sock)",
    )
    a(
        "--backend",
        choices=("auto", "uapi", "wg"),
        help="how to control WireGuard: the UAPI socket (wireguard-go, boringtun), the wg command "
        "(kernel or any), or auto (default)",
    )
    a(
        "--keepalive",
        type=int,
        metavar="SECONDS",
        help="persistent keepalive set on managed peers that have none (default 25)",
    )
    a(
        "--no-mdns",
        action="store_true",
        default=None,
        help="do not announce or browse _wireguard._udp.local. on the LAN (LAN peers then come "
        "from the LAN addresses the registrar publishes)",
    )
    a(
        "--mdns-interface",
        action="append",
        metavar="IFACE",
        help="announce and browse only on this interface (repeatable; default: every up "
        "interface but the WireGuard one, which is never used)",
    )
    add_counter_arguments(parser, "127.0.0.1:9109")
    a("-v", "--verbose", action="store_true", default=None, help="debug logging")
    add_config_argument(parser)


def settings_from(given: Mapping[str, Any]) -> Any:
    """The daemon's settings from the merged options, every value checked first: raises
    ConfigError (exit status 2) naming the flag or config key at fault."""
    from wgmesh.daemon.service import DaemonSettings
    from wgmesh.proto.punch import PunchConfig

    values = check_values(given, CHECKS)
    for flag in ("interface", "registrar", "registrar_key", "zone"):
        if not values[flag]:
            raise ConfigError(
                f"{v.flag_of(flag)} is required (or {flag.replace('_', '-')} in --config FILE; "
                "see wgmesh daemon --help)"
            )
    registrar = Endpoint.parse(str(values["registrar"]), default_port=3478)  # checked
    alt = values["registrar_alt_port"]
    if alt is None and registrar.port == 65535:
        raise ConfigError(
            f"{where_of(given, 'registrar')}: port 65535 leaves no port for the registrar's "
            "second STUN port (port + 1); expected --registrar-alt-port (0 turns it off)"
        )
    if alt == registrar.port:
        raise ConfigError(
            f"{where_of(given, 'registrar_alt_port')}: {alt} is the registrar's STUN port too; "
            "expected its second STUN port, or 0 to turn NAT classification off"
        )
    key = decode_key(str(values["registrar_key"]))  # checked
    dns_server = Endpoint.parse(values["dns"], default_port=53) if values["dns"] else None
    interface = str(values["interface"])
    sock = values["status_socket"]
    return DaemonSettings(
        interface=interface,
        registrar=registrar,
        registrar_key=key,
        zone=str(values["zone"]).rstrip(".") + ".",
        dns=dns_server,
        registrar_alt_port=alt,
        mode=str(values["mode"]),
        probe_interval=values["probe_interval"],
        name=values["name"],
        wait_interface=bool(values["wait_interface"]),
        status_socket=Path(sock) if sock else status_socket_for(interface),
        backend=str(values["backend"]),
        mdns=not values["no_mdns"],
        mdns_interfaces=tuple(values["mdns_interface"]),
        punch=PunchConfig(keepalive=values["keepalive"], mesh=values["mode"] == "mesh"),
        metrics=Endpoint.parse(str(values["metrics"])) if values["metrics"] else None,
        log_counters=values["log_counters"],
    )


def run(args: argparse.Namespace) -> int:
    values = resolve(args, DEFAULTS, CHECKS)
    setup_logging(bool(values["verbose"]))
    settings = settings_from(values)
    from wgmesh.daemon.service import Daemon
    from wgmesh.wg.control import open_control

    try:
        wg = open_control(settings.interface, settings.backend)
        asyncio.run(Daemon(settings, wg).run())
    except ConfigError as exc:  # found while running (no CAP_NET_RAW, no name servers)
        raise RuntimeFailure(str(exc)) from None
    return 0
