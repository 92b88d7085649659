"""What the host knows about itself: its addresses (reported to the registrar as LAN/IPv6
candidates) and its WireGuard private key (read once, for the sealed boxes)."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess

from wgmesh.errors import InterfaceNotFound, WireGuardError
from wgmesh.proto.keys import decode_key
from wgmesh.wg.control import UAPI_DIR


def local_addresses(
    exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> list[str]:
    """Unicast addresses of this host's up interfaces, but not loopback, link-local, or those on
    the interfaces named in ``exclude`` (the WireGuard interface itself). Uses ``ip -j addr``."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show", "up"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    found: list[str] = []
    for link in links:
        if link.get("ifname") in exclude or "LOOPBACK" in link.get("flags", []):
            continue
        if only is not None and link.get("ifname") not in only:
            continue
        for info in link.get("addr_info", []):
            try:
                ip = ipaddress.ip_address(info.get("local", ""))
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            if info.get("tentative") or info.get("deprecated"):
                continue
            found.append(str(ip))
    return found


def read_private_key(interface: str) -> bytes:
    """The interface's private key, from its UAPI socket or ``wg show IFACE private-key``."""
    sock_path = UAPI_DIR / f"{interface}.sock"
    if sock_path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            try:
                s.connect(str(sock_path))
                s.sendall(b"get=1\n\n")
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError as exc:
                raise WireGuardError(f"{sock_path}: {exc}") from None
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("private_key="):
                return bytes.fromhex(line.split("=", 1)[1])
        raise WireGuardError(f"interface {interface} has no private key set")
    try:
        r = subprocess.run(
            ["wg", "show", interface, "private-key"], capture_output=True, text=True, timeout=5
        )
    except FileNotFoundError:
        raise WireGuardError("the 'wg' command (wireguard-tools) is needed") from None
    if r.returncode != 0:
        raise InterfaceNotFound(f"no WireGuard interface {interface!r} ({r.stderr.strip()})")
    text = r.stdout.strip()
    if not text or text == "(none)":
        raise WireGuardError(f"interface {interface} has no private key set")
    return decode_key(text)
