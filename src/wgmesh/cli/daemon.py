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

A dual-stack registrar is given by both its addresses, one per family (or by a name with A and
AAAA records): --registrar 203.0.113.10 --registrar 2001:db8::10 ([2001:db8::10]:3478 with a
port). The daemon then registers its WireGuard port's mapping over each family it has a route
for, and prefers a direct IPv6 path to peers that have one too.

`wgmesh peers --interface wg0` shows what the daemon sees and does.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
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
from wgmesh.errors import ConfigError, DecodeError
from wgmesh.proto.device import DEFAULT_KEEPALIVE
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key

REGISTRAR_PORT = 3478
REGISTRAR_EXPECTED = (
    "the registrar's address, one per family: IP[:PORT], [IPv6]:PORT or a host name[:PORT] "
    f"(port default {REGISTRAR_PORT}), e.g. --registrar 203.0.113.10 --registrar 2001:db8::10"
)


def _registrar_list(value: Any, where: str) -> list[str]:
    """``--registrar`` (repeatable) or ``registrar`` in the file (a string or an array): each
    an IP address or a host name, with an optional port. Names are resolved later
    (:func:`registrar_endpoints`)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        v.fail(where, f"got {v.describe(value)}", REGISTRAR_EXPECTED)
    out = []
    for i, item in enumerate(items):
        at = where if where.startswith("--") or isinstance(value, str) else f"{where}[{i}]"
        text = v.string(item, at, REGISTRAR_EXPECTED)
        host, port = _split(text, at)
        if not 1 <= port <= 65535:
            v.fail(at, f"port {port} is out of range", REGISTRAR_EXPECTED)
        if not _is_ip(host):
            v.dns_name(host, at)  # a host name, resolved when the daemon starts
        out.append(text)
    return out


def _is_ip(host: str) -> bool:
    try:
        Endpoint.of(host, 0)
    except ValueError:
        return False
    return True


def _split(text: str, where: str) -> tuple[str, int]:
    """(host, port) of ``IP[:PORT]``, ``[IPv6]:PORT``, a bare IPv6 address or ``NAME[:PORT]``."""
    if ":" not in text:
        return text, REGISTRAR_PORT
    if text.startswith("[") or text.count(":") > 1:
        try:
            ep = Endpoint.parse(text, default_port=REGISTRAR_PORT)
        except DecodeError as exc:
            v.fail(where, str(exc), REGISTRAR_EXPECTED)
        return str(ep.ip), ep.port
    host, _, port = text.partition(":")
    if not port.isdigit():
        v.fail(where, f"bad endpoint {text!r}: port is not a number", REGISTRAR_EXPECTED)
    return host, int(port)


def registrar_endpoints(texts: list[str], where: str) -> tuple[Endpoint, ...]:
    """The registrar's addresses, at most one per family, in the order given: a host name
    gives its first IPv4 and first IPv6 address (getaddrinfo). ConfigError for a name that
    does not resolve, or two addresses of one family."""
    out: dict[int, tuple[Endpoint, str]] = {}
    for text in texts:
        host, port = _split(text, where)
        if _is_ip(host):
            found = [Endpoint.of(host, port)]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise ConfigError(
                    f"{where}: cannot resolve {host!r} ({exc}); expected {REGISTRAR_EXPECTED}"
                ) from None
            found = []
            for family in (socket.AF_INET, socket.AF_INET6):
                ips = [str(i[4][0]).split("%", 1)[0] for i in infos if i[0] == family]
                if ips:
                    found.append(Endpoint.of(ips[0], port))
        for ep in found:
            if ep.family in out:
                other, given = out[ep.family]
                raise ConfigError(
                    f"{where}: {given} ({other}) and {text} ({ep}) are both IPv{ep.family}; "
                    f"expected at most one address per family, one IPv4 and one IPv6"
                )
            out[ep.family] = (ep, text)
    return tuple(ep for ep, _ in out.values())


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
    "routes": False,
    "metrics": None,
    "log_counters": 60.0,
    "verbose": False,
}

CHECKS: dict[str, v.Check] = {
    "interface": v.interface,
    "registrar": _registrar_list,
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
    "routes": v.boolean,
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
    a(
        "--registrar",
        action="append",
        metavar="HOST[:PORT]",
        help="registrar address, port default 3478 (required); repeat it for the other family "
        "(at most one IPv4 and one IPv6 address, IPv6 with a port as [2001:db8::10]:3478); a "
        "name with A and AAAA records gives both",
    )
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
    a(
        "--routes",
        action="store_true",
        default=None,
        help="mesh mode: keep a kernel route on the interface for each subnet the admission file "
        "gives a member besides its tunnel address (a LAN behind it), removed when the member "
        "is; only routes the daemon added (proto 87) are ever changed, never a default route",
    )
    add_counter_arguments(parser, "127.0.0.1:9109")
    a("-v", "--verbose", action="store_true", default=None, help="debug logging")
    add_config_argument(parser)


def settings_from(given: Mapping[str, Any]) -> Any:
    """The daemon's settings from the merged options, every value checked first: raises
    ConfigError (exit status 2) naming the flag or config key at fault."""
    from wgmesh.daemon.settings import DaemonSettings
    from wgmesh.proto.punch import PunchConfig

    values = check_values(given, CHECKS)
    for flag in ("interface", "registrar", "registrar_key", "zone"):
        if not values[flag]:
            raise ConfigError(
                f"{v.flag_of(flag)} is required (or {flag.replace('_', '-')} in --config FILE; "
                "see wgmesh daemon --help)"
            )
    registrars = registrar_endpoints(values["registrar"], where_of(given, "registrar"))
    if not registrars:
        raise ConfigError(
            f"{where_of(given, 'registrar')}: {', '.join(values['registrar'])} has no IPv4 or "
            f"IPv6 address; expected {REGISTRAR_EXPECTED}"
        )
    registrar = registrars[0]
    alt = values["registrar_alt_port"]
    for ep in registrars:
        if alt is None and ep.port == 65535:
            raise ConfigError(
                f"{where_of(given, 'registrar')}: port 65535 leaves no port for the registrar's "
                "second STUN port (port + 1); expected --registrar-alt-port (0 turns it off)"
            )
        if alt == ep.port:
            raise ConfigError(
                f"{where_of(given, 'registrar_alt_port')}: {alt} is the registrar's STUN port "
                "too; expected its second STUN port, or 0 to turn NAT classification off"
            )
    if values["routes"] and values["mode"] != "mesh":
        raise ConfigError(
            f"{v.flag_of('routes')}: routes follow the members the registrar vouches for; "
            "expected --mode mesh with it (in endpoints mode your own configuration routes)"
        )
    key = decode_key(str(values["registrar_key"]))  # checked
    dns_server = Endpoint.parse(values["dns"], default_port=53) if values["dns"] else None
    interface = str(values["interface"])
    sock = values["status_socket"]
    return DaemonSettings(
        interface=interface,
        registrar=registrar,
        registrars=registrars,
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
        routes=bool(values["routes"]),
        punch=PunchConfig(keepalive=values["keepalive"], mesh=values["mode"] == "mesh"),
        metrics=Endpoint.parse(str(values["metrics"])) if values["metrics"] else None,
        log_counters=values["log_counters"],
    )


def run(args: argparse.Namespace) -> int:
    values = resolve(args, DEFAULTS, CHECKS)
    setup_logging(bool(values["verbose"]))
    settings = settings_from(values)
    from wgmesh.daemon.service import Daemon
    from wgmesh.wg.backends import open_control

    try:
        wg = open_control(settings.interface, settings.backend)
        asyncio.run(Daemon(settings, wg).run())
    except ConfigError as exc:  # found while running (no CAP_NET_RAW, no name servers)
        raise RuntimeFailure(str(exc)) from None
    return 0
