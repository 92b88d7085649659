"""Show every peer of a WireGuard interface: name, short key, allowed IPs, the endpoint in use,
where it came from (registrar, lan, static, roaming), the path (direct, or none with the
reason), latest-handshake age and rx/tx.

With a daemon running on the interface, its view is shown (sources, candidates, reasons).
Without one, the interface is read directly and, given --zone (and --dns), the zone's records.

  wgmesh peers --interface wg0
  wgmesh peers --interface wg0 --json     # {"peers": [...]}, schema in docs/cli.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wgmesh.errors import ConfigError, DecodeError, RemoteProtocolError
from wgmesh.proto.endpoint import Endpoint

SCHEMA_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    a = parser.add_argument
    a("--interface", "-i", metavar="IFACE", required=True, help="WireGuard interface")
    a("--json", action="store_true", help='print {"peers": [...]} (docs/cli.md)')
    a(
        "--status-socket",
        metavar="PATH",
        help="the daemon's socket (default /run/wgmesh/IFACE.sock)",
    )
    a("--zone", metavar="ZONE", help="without a daemon: also read this zone's records")
    a("--dns", metavar="SERVER[:PORT]", help="DNS server for --zone")
    a("--backend", choices=("auto", "uapi", "wg"), default="auto", help="WireGuard control")


def _from_daemon(path: Path) -> dict[str, Any] | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(str(path))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    try:
        out: dict[str, Any] = json.loads(data)
    except ValueError:
        return None
    return out


def _without_daemon(args: argparse.Namespace) -> dict[str, Any]:
    from wgmesh.proto.punch import PeerRecord, view_of
    from wgmesh.wg.backends import open_control

    device = open_control(args.interface, args.backend).read()
    records: dict[bytes, PeerRecord] = {}
    if args.zone:
        from wgmesh.daemon.resolver import ZoneResolver

        try:
            server = Endpoint.parse(args.dns, default_port=53) if args.dns else None
        except DecodeError as exc:
            raise ConfigError(f"--dns: {exc}") from None
        resolver = ZoneResolver(args.zone.rstrip(".") + ".", server)

        async def fetch() -> None:
            for p in device.peers:
                try:
                    rec = await resolver.lookup(p.public_key)
                except RemoteProtocolError:
                    continue
                if rec is not None:
                    records[p.public_key] = rec

        asyncio.run(fetch())
    now = time.time()
    views = [asdict(view_of(p, records.get(p.public_key), None, now)) for p in device.peers]
    return {"interface": args.interface, "daemon": False, "peers": views}


def run(args: argparse.Namespace) -> int:
    from wgmesh.cli.daemon import status_socket_for

    path = Path(args.status_socket) if args.status_socket else status_socket_for(args.interface)
    state = _from_daemon(path)
    if state is not None:
        state["daemon"] = True
    else:
        state = _without_daemon(args)
    state["schema"] = SCHEMA_VERSION
    if args.json:
        json.dump(state, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(_table(state))
    return 0


def _age(ts: float) -> str:
    if not ts:
        return "never"
    secs = int(time.time() - ts)
    return f"{secs}s ago" if secs < 120 else f"{secs // 60}m ago"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}TiB"


def _table(state: dict[str, Any]) -> str:
    head = f"interface {state['interface']}"
    if state.get("daemon"):
        observed = " ".join(state.get("observed_endpoints") or []) or "?"
        head += f"  observed {observed}  nat {state.get('nat')}"
    else:
        head += "  (no daemon: showing the interface only)"
    rows = [("NAME", "KEY", "ALLOWED IPS", "ENDPOINT", "FROM", "PATH", "HANDSHAKE", "RX/TX")]
    reasons, candidates = [], []
    for p in state["peers"]:
        path = p["path"]
        if path != "none" and p.get("family"):
            path += f" (IPv{p['family']})"
        rows.append((
            p["name"] or "-", p["public_key"][:8], ",".join(p["allowed_ips"]) or "-",
            p["endpoint"] or "-", p["source"], path, _age(p["latest_handshake"]),
            f"{_size(p['rx_bytes'])}/{_size(p['tx_bytes'])}",
        ))  # fmt: skip
        if p["reason"]:
            reasons.append(f"  {p['public_key'][:8]}: {p['reason']}")
        by_family = p.get("candidates_by_family") or {}
        if by_family:
            shown = "; ".join(f"{f.replace('ipv', 'IPv')} {' '.join(c)}"
                              for f, c in by_family.items())  # fmt: skip
            if p.get("first_family") == 6 and "ipv4" in by_family:
                shown += " (IPv6 first)"
            candidates.append(f"  {p['public_key'][:8]}: {shown}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if candidates:
        lines += ["candidates:", *candidates]
    if reasons:
        lines += ["why not direct:", *reasons]
    return "\n".join(lines)
