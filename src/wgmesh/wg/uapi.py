"""WireGuard control over the cross-platform UAPI socket (wireguard.com/xplatform), as
wireguard-go and boringtun serve it at /var/run/wireguard/IFACE.sock. No ``wg`` binary needed.

The private key the ``get`` answer carries is used only to derive the public key and is dropped
at once. ``set`` only ever names peers: never private_key, listen_port or fwmark.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgmesh.errors import DecodeError, InterfaceNotFound, WireGuardError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import public_key as derive_public_key
from wgmesh.wg.control import UAPI_DIR, DeviceState, PeerState, PeerUpdate, keepalive_for

TIMEOUT = 5.0
MAX_REPLY = 16 * 1024 * 1024


@dataclass(slots=True)
class _PeerBuilder:
    key: bytes
    endpoint: Endpoint | None = None
    allowed: list[str] = field(default_factory=list)
    sec: int = 0
    nsec: int = 0
    rx: int = 0
    tx: int = 0
    keepalive: int = 0

    def build(self) -> PeerState:
        return PeerState(
            self.key, self.endpoint, tuple(self.allowed), self.sec + self.nsec / 1e9,
            self.rx, self.tx, self.keepalive,
        )  # fmt: skip


def parse_uapi(name: str, text: str) -> DeviceState:
    """Parse a ``get=1`` answer; WireGuardError on anything malformed."""
    public_key: bytes | None = None
    listen_port = 0
    peers: list[_PeerBuilder] = []
    try:
        for line in text.splitlines():
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise WireGuardError(f"UAPI: malformed line {line[:40]!r}")
            cur = peers[-1] if peers else None
            if key == "errno":
                if value != "0":
                    raise WireGuardError(f"UAPI get failed: errno={value}")
            elif key == "public_key":
                k = bytes.fromhex(value)
                if len(k) != 32:
                    raise WireGuardError("UAPI: bad public key")
                peers.append(_PeerBuilder(k))
            elif cur is None:
                if key == "private_key":
                    raw = bytes.fromhex(value)
                    if len(raw) == 32 and any(raw):
                        public_key = derive_public_key(raw)
                    del raw  # never kept
                elif key == "listen_port":
                    listen_port = int(value)
            elif key == "endpoint":
                cur.endpoint = Endpoint.parse(value)
            elif key == "allowed_ip":
                cur.allowed.append(value)
            elif key == "last_handshake_time_sec":
                cur.sec = int(value)
            elif key == "last_handshake_time_nsec":
                cur.nsec = int(value)
            elif key == "rx_bytes":
                cur.rx = int(value)
            elif key == "tx_bytes":
                cur.tx = int(value)
            elif key == "persistent_keepalive_interval":
                cur.keepalive = int(value)
    except (ValueError, DecodeError) as exc:
        raise WireGuardError(f"UAPI: malformed answer: {exc}") from None
    return DeviceState(name, public_key, listen_port, tuple(p.build() for p in peers))


def format_set(updates: Sequence[PeerUpdate], current: dict[bytes, int]) -> str:
    """The ``set=1`` request for ``updates``; ``current`` maps keys to their keepalive now."""
    lines = ["set=1"]
    for u in updates:
        lines.append(f"public_key={u.public_key.hex()}")
        if u.remove:
            lines.append("remove=true")
            continue
        if u.endpoint is not None:
            lines.append(f"endpoint={u.endpoint}")
        if u.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={cidr}" for cidr in u.allowed_ips]
        keepalive = keepalive_for(u, current.get(u.public_key, 0))
        if u.handshake_now:
            lines.append("persistent_keepalive_interval=0")
        if u.handshake_now or u.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={keepalive}")
    return "\n".join(lines) + "\n\n"


class Uapi:
    """WireGuardControl over the UAPI socket."""

    def __init__(self, interface: str, socket_dir: Path = UAPI_DIR) -> None:
        self.name = interface
        self.path = socket_dir / f"{interface}.sock"

    def _exchange(self, request: str) -> str:
        if not self.path.exists():
            raise InterfaceNotFound(
                f"no WireGuard interface {self.name!r} (no UAPI socket at {self.path})"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            try:
                s.connect(str(self.path))
                s.sendall(request.encode())
                data = bytearray()
                deadline = time.monotonic() + TIMEOUT
                while not data.endswith(b"\n\n") and time.monotonic() < deadline:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > MAX_REPLY:
                        raise WireGuardError(f"{self.path}: answer too large")
            except ConnectionRefusedError:
                raise InterfaceNotFound(
                    f"no WireGuard interface {self.name!r} ({self.path} refuses connections)"
                ) from None
            except OSError as exc:
                raise WireGuardError(f"{self.path}: {exc}") from None
        return data.decode("utf-8", "replace")

    def read(self) -> DeviceState:
        return parse_uapi(self.name, self._exchange("get=1\n\n"))

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        if not updates:
            return
        current: dict[bytes, int] = {}
        if any(u.handshake_now for u in updates):
            current = {p.public_key: p.persistent_keepalive for p in self.read().peers}
        answer = self._exchange(format_set(updates, current))
        if "errno=0" not in answer:
            raise WireGuardError(f"UAPI set on {self.name} failed: {answer.strip() or 'no answer'}")
