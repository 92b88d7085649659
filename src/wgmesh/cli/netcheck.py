"""What kind of NAT is this host behind, and what that means for wgmesh's paths: plain STUN
Binding Requests to the registrar's two ports (RFC 5780's mapping, filtering and hairpinning
tests as far as the registrar allows), the registrar's round trip, IPv4/IPv6. No daemon needed;
takes a second or two.

The probes leave from ephemeral ports (--port to choose the mapping test's port): WireGuard
owns its listen port, and answers to it would go to WireGuard's socket. With --interface, the
WireGuard port is named in the output, and the running daemon's view of it (the mapping and
class the registrar saw for the real port) is shown beside the probes' results.

  wgmesh netcheck --registrar 203.0.113.1
  wgmesh netcheck --registrar 203.0.113.1:3478 --interface wg0 --json

Exit status 0 when the registrar answered, 1 when it did not (the report is printed either way).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

from wgmesh.cli.options import RuntimeFailure
from wgmesh.errors import ConfigError, DecodeError, WgmeshError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.netcheck import (
    IPAddress,
    Netcheck,
    NetcheckConfig,
    Observations,
    Probe,
    Report,
    Result,
    Sock,
    Target,
    classify,
)

SCHEMA_VERSION = 1
ROUTE_PROBES = {4: "192.0.2.1", 6: "2001:db8::1"}
"""Documentation addresses (RFC 5737, RFC 3849) whose route tells if a family has one: only a
route lookup (a UDP connect), nothing is sent."""
MAX_ROUNDS = 10_000
"""Bound on the receive loop (the deadline ends it long before)."""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    a = parser.add_argument
    a(
        "--registrar",
        action="append",
        metavar="ADDR[:PORT]",
        required=True,
        help="the registrar's STUN address (port default 3478); give it twice for its IPv4 and "
        "its IPv6 address",
    )
    a(
        "--registrar-alt-port",
        type=int,
        metavar="PORT",
        help="its alternate STUN port (default: its port + 1; 0: it has none)",
    )
    a(
        "--alt-address",
        metavar="ADDR",
        help="a second address of the registrar host, for the address-dependent mapping test",
    )
    a("--interface", "-i", metavar="IFACE", help="name this WireGuard interface's port too")
    a("--backend", choices=("auto", "uapi", "wg"), default="auto", help="WireGuard control")
    a("--status-socket", metavar="PATH", help="the daemon's socket (default: IFACE's)")
    a("--port", type=int, default=0, metavar="PORT", help="local port of the mapping test "
      "(default: an ephemeral one); given, it is also tested for unsolicited UDP (a port "
      "forward to this host: the forwarded port, which WireGuard must not hold then)")  # fmt: skip
    a("--timeout", type=float, default=1.5, metavar="SECONDS", help="wait for answers (1.5)")
    a("--json", action="store_true", help="print the report as JSON (docs/cli.md)")


def target_of(args: argparse.Namespace) -> Target:
    """The probes' target from the flags; ConfigError naming the flag at fault."""
    endpoints = []
    for text in args.registrar:
        try:
            endpoints.append(Endpoint.parse(text, default_port=3478))
        except DecodeError as exc:
            raise ConfigError(f"--registrar: {exc}; expected ADDR[:PORT]") from None
    if len(endpoints) > 2 or (len(endpoints) == 2 and endpoints[0].family == endpoints[1].family):
        raise ConfigError("--registrar: at most twice, once per address family")
    main = endpoints[0]
    alt = args.registrar_alt_port
    if alt is None:
        alt = main.port + 1 if main.port < 65535 else 0
    if not 0 <= alt <= 65535 or alt == main.port:
        raise ConfigError(f"--registrar-alt-port: {alt}: expected a port other than the "
                          "registrar's, or 0 (it has none)")  # fmt: skip
    alt_address = None
    if args.alt_address:
        try:
            alt_address = ipaddress.ip_address(args.alt_address)
        except ValueError:
            raise ConfigError(f"--alt-address: {args.alt_address!r} is not an address") from None
        if alt_address.version != main.family or alt_address == main.ip:
            raise ConfigError("--alt-address: expected another address of the same family")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is out of range; expected 0..65535")
    if not 0.1 <= args.timeout <= 30:
        raise ConfigError(f"--timeout: {args.timeout}; expected 0.1..30 seconds")
    return Target(main, alt or None, alt_address, endpoints[1] if len(endpoints) == 2 else None)


def _socket(family: int, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("::" if family == 6 else "0.0.0.0", port))
    except OSError as exc:
        s.close()
        raise RuntimeFailure(f"cannot bind UDP port {port}: {exc.strerror}") from None
    s.setblocking(False)
    return s


def source_toward(dest: Endpoint) -> IPAddress | None:
    """The local address the kernel would send from toward ``dest`` (a route lookup: nothing
    is sent); None when there is no route."""
    with socket.socket(socket.AF_INET6 if dest.family == 6 else socket.AF_INET,
                       socket.SOCK_DGRAM) as s:  # fmt: skip
        try:
            s.connect(dest.sockaddr())
        except OSError:
            return None
        return ipaddress.ip_address(s.getsockname()[0].split("%")[0])


def probe(target: Target, config: NetcheckConfig, port: int = 0) -> tuple[Observations, int]:
    """Run the probes; the observations and the mapping socket's port."""
    family = target.registrar.family
    socks = {Sock.MAPPING: _socket(family, port), Sock.FILTERING: _socket(family, 0)}
    try:
        if target.other_family is not None:
            socks[Sock.OTHER_FAMILY] = _socket(target.other_family.family, 0)
        by_fd = {s.fileno(): name for name, s in socks.items()}
        clock = time.monotonic
        check = Netcheck(config, target, os.urandom, clock())
        end = clock() + config.timeout + 2.0  # a hard bound, whatever the core says
        for _ in range(MAX_ROUNDS):
            now = clock()
            for t in check.datagrams_to_send(now):
                with contextlib.suppress(OSError):  # no route: the request stays unanswered
                    socks[t.sock].sendto(t.data, t.destination.sockaddr())
            if check.done or now >= end:
                break
            when = check.next_timer()
            wait = max(0.0, min(end, when if when is not None else end) - now)
            ready, _, _ = select.select(list(socks.values()), [], [], wait)
            now = clock()
            for s in ready:
                for _ in range(64):
                    try:
                        data, addr = s.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # an ICMP error surfaced on the socket: the request stays silent
                    check.receive(by_fd[s.fileno()], data, Endpoint.from_sockaddr(addr), now)
            check.handle_timer(now)
        mapping_port = int(socks[Sock.MAPPING].getsockname()[1])
    finally:
        for s in socks.values():
            s.close()
    local_ip = source_toward(target.registrar)
    local = None if local_ip is None else Endpoint(local_ip, mapping_port)
    sources = {f: source_toward(Endpoint.parse(a, default_port=9)) for f, a in ROUTE_PROBES.items()}
    return Observations(check.results(), local, sources), mapping_port


def _wireguard(args: argparse.Namespace) -> tuple[int | None, str]:
    """The interface's listen port, or None and why."""
    if not args.interface:
        return None, ""
    from wgmesh.wg.backends import open_control

    try:
        return open_control(args.interface, args.backend).read().listen_port, ""
    except WgmeshError as exc:
        return None, str(exc)


def _daemon(args: argparse.Namespace) -> dict[str, Any] | None:
    from wgmesh.cli.daemon import status_socket_for
    from wgmesh.cli.peers import _from_daemon

    if args.status_socket:
        path = Path(args.status_socket)
    elif args.interface:
        path = status_socket_for(args.interface)
    else:
        return None
    state = _from_daemon(path)
    if state is None:
        return None
    return {"observed_endpoints": state.get("observed_endpoints", []), "nat": state.get("nat")}


def _result(r: Result) -> dict[str, Any]:
    return {
        "outcome": r.outcome.value,
        "mapped": None if r.mapped is None else str(r.mapped),
        "origin": None if r.origin is None else str(r.origin),
        "rtt_ms": None if r.rtt is None else round(r.rtt * 1000, 3),
        "detail": r.detail,
    }


def report_json(
    report: Report, obs: Observations, target: Target, port: dict[str, Any],
    daemon: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """The ``--json`` document (schema in docs/cli.md)."""
    families = {
        f"ipv{f.family}": {
            "route": None if f.source is None else str(f.source),
            "reached": f.reached,
            "mapped": None if f.mapped is None else str(f.mapped),
        }
        for f in report.families
    }
    return {
        "schema": SCHEMA_VERSION,
        "registrar": str(target.registrar),
        "alt_port": target.alt_port,
        "local": None if obs.local is None else str(obs.local),
        "port": port,
        "reachable": report.reachable,
        "mapped": None if report.mapped is None else str(report.mapped),
        "nat": report.nat.value,
        "mapping": report.mapping.value,
        "filtering": report.filtering.value,
        "hairpinning": report.hairpinning,
        "open_port": report.open_port,
        "rtt_ms": None if report.rtt is None else round(report.rtt * 1000, 3),
        **families,
        "tests": {t.value: _result(obs.results[t]) for t in Probe if t in obs.results},
        "not_run": [{"test": t.value, "why": why} for t, why in report.not_run],
        "notes": list(report.notes),
        "verdict": report.verdict,
        "daemon": daemon,
    }


def report_text(doc: dict[str, Any]) -> str:
    """The report for people."""

    def yes(value: bool | None) -> str:
        return "not tested" if value is None else ("yes" if value else "no")

    port = doc["port"]
    used = f"local port {port['used']} ({'ephemeral' if port['ephemeral'] else 'given'})"
    if port["wireguard"] is not None:
        used += (f"; WireGuard {port['interface']} listens on {port['wireguard']} and owns it "
                 "(answers to it would go to WireGuard's socket)")  # fmt: skip
    elif port["interface"]:
        used += f"; WireGuard {port['interface']}: {port['why'] or 'not found'}"
    rtt = "-" if doc["rtt_ms"] is None else f"{doc['rtt_ms']:.1f} ms"
    alt = f"alternate port {doc['alt_port']}" if doc["alt_port"] else "no alternate port"
    lines = [
        f"registrar    {doc['registrar']} ({alt}), round trip {rtt}",
        f"probes from  {doc['local'] or '?'}, {used}",
        f"mapped to    {doc['mapped'] or '-'}   nat {doc['nat']}",
        f"mapping      {doc['mapping']}",
        f"filtering    {doc['filtering']}",
        f"hairpinning  {yes(doc['hairpinning'])}",
        *(
            [
                f"open port    port {doc['port']['used']} "
                + (
                    "takes unsolicited UDP (a port forward, or no filtering)"
                    if doc["open_port"]
                    else "drops unsolicited UDP"
                )
            ]
            if doc["open_port"] is not None
            else []
        ),
    ]
    for fam in ("ipv4", "ipv6"):
        f = doc[fam]
        route = f"route from {f['route']}" if f["route"] else "no route"
        reached = {None: "registrar not tried over it", True: f"registrar answered, mapped to "
                   f"{f['mapped']}", False: "registrar did not answer"}[f["reached"]]  # fmt: skip
        lines.append(f"{'IPv' + fam[3]:<12} {route}; {reached}")
    for item in doc["not_run"]:
        lines.append(f"not run      {item['test']}: {item['why']}")
    for note in doc["notes"]:
        lines.append(f"note         {note}")
    if doc["daemon"] is not None:
        d = doc["daemon"]
        seen = " ".join(d["observed_endpoints"]) or "nothing yet"
        lines.append(f"daemon       the registrar saw WireGuard's port as {seen}, nat {d['nat']}")
    lines.append(f"verdict      {doc['verdict']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    target = target_of(args)
    config = NetcheckConfig(timeout=args.timeout, test_port=bool(args.port))
    wg_port, why = _wireguard(args)
    obs, used = probe(target, config, args.port)
    report = classify(obs, target)
    port = {"used": used, "ephemeral": not args.port, "interface": args.interface,
            "wireguard": wg_port, "why": why}  # fmt: skip
    doc = report_json(report, obs, target, port, _daemon(args))
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report_text(doc))
    return 0 if report.reachable else 1
