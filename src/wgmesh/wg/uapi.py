"""WireGuard control over the cross-platform UAPI socket (https://www.wireguard.com/xplatform/),
as wireguard-go and boringtun serve it at /var/run/wireguard/IFACE.sock. No ``wg`` binary needed.

One request per connection: ``get=1\\n\\n`` or ``set=1\\n`` + ``key=value`` lines + ``\\n``; the
answer is ``key=value`` lines ending with ``errno=N`` and an empty line. Keys are hex.

The private key the ``get`` answer carries is used only to derive the public key and is dropped
at once. ``set`` only ever names peers: never private_key, listen_port or fwmark. A renewed peer
(``PeerUpdate.renew``) is removed and added back in the same ``set``, with the lines of its
configuration the ``get`` before it gave (:func:`carried_lines`, its preshared key among them:
read, written back and dropped within one ``apply``).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgmesh.errors import DecodeError, InterfaceNotFound, WireGuardError
from wgmesh.proto.device import DeviceState, PeerState, PeerUpdate, keepalive_for, renewals
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import public_key as derive_public_key
from wgmesh.wg.control import UAPI_DIR, parse_uint

TIMEOUT = 5.0
"""Default seconds for a whole request (connect, send, answer)."""
MAX_REPLY = 16 * 1024 * 1024
"""A larger answer is refused (about 40,000 peers with a few allowed IPs each)."""


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


def parse_errno(text: str) -> int:
    """The ``errno=N`` value ending an answer; WireGuardError if there is none."""
    for line in reversed(text.splitlines()):
        if line.startswith("errno="):
            value = line[len("errno=") :]
            if re.fullmatch(r"-?[0-9]{1,10}", value):
                return int(value)
            break
        if line:
            break
    raise WireGuardError("UAPI: answer has no errno line (cut short?)")


def parse_uapi(name: str, text: str) -> DeviceState:
    """Parse a ``get=1`` answer; WireGuardError on anything malformed or a non-zero errno."""
    errno = parse_errno(text)
    if errno != 0:
        raise WireGuardError(f"UAPI get on {name} failed: errno={errno}")
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
            if key == "public_key":
                k = bytes.fromhex(value)
                if len(k) != 32:
                    raise WireGuardError("UAPI: a public key is not 32 bytes")
                peers.append(_PeerBuilder(k))
            elif cur is None:
                if key == "private_key":
                    raw = bytes.fromhex(value)
                    if len(raw) == 32 and any(raw):
                        public_key = derive_public_key(raw)
                    del raw  # never kept, never logged
                elif key == "listen_port":
                    listen_port = parse_uint(value, 0xFFFF)
            elif key == "endpoint":
                cur.endpoint = Endpoint.parse(value)
            elif key == "allowed_ip":
                cur.allowed.append(value)
            elif key == "last_handshake_time_sec":
                cur.sec = parse_uint(value)
            elif key == "last_handshake_time_nsec":
                cur.nsec = parse_uint(value, 999_999_999)
            elif key == "rx_bytes":
                cur.rx = parse_uint(value)
            elif key == "tx_bytes":
                cur.tx = parse_uint(value)
            elif key == "persistent_keepalive_interval":
                cur.keepalive = parse_uint(value, 0xFFFF)
    except (ValueError, DecodeError) as exc:
        raise WireGuardError(f"UAPI: malformed answer: {exc}") from None
    return DeviceState(name, public_key, listen_port, tuple(p.build() for p in peers))


CARRIED = ("preshared_key", "endpoint", "persistent_keepalive_interval", "allowed_ip")
"""What a renewed peer keeps: the configuration lines of a ``get`` answer (not its handshake
time or counters)."""


def carried_lines(text: str, keys: set[bytes]) -> dict[bytes, list[str]]:
    """From a ``get=1`` answer, the :data:`CARRIED` lines of each peer in ``keys``, as they
    would be written back in a ``set``; WireGuardError on a value that could inject a line."""
    out: dict[bytes, list[str]] = {}
    lines: list[str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            peer = bytes.fromhex(value) if len(value) == 64 else b""
            lines = out.setdefault(peer, []) if peer in keys else None
        elif lines is not None and key in CARRIED:
            lines.append(f"{key}={_line_safe(value)}")
    return out


def format_set(
    updates: Sequence[PeerUpdate],
    current: dict[bytes, int],
    carried: dict[bytes, list[str]] | None = None,
) -> str:
    """The ``set=1`` request for ``updates``; ``current`` maps keys to their keepalive now,
    ``carried`` renewed peers to their configuration lines (:func:`carried_lines`).

    A kick (``handshake_now``) ends its peer's block with ``persistent_keepalive_interval=0``
    then ``=N``: that pair must come last (see wgmesh.wg.control). A renewal is
    ``remove=true``, then the same key again with its carried lines, then the update's own.
    """
    lines = ["set=1"]
    for u in updates:
        lines.append(f"public_key={u.public_key.hex()}")
        if u.renew:
            lines += ["remove=true", f"public_key={u.public_key.hex()}"]
            lines += (carried or {}).get(u.public_key, [])
        if u.remove:
            lines.append("remove=true")
            continue
        if u.endpoint is not None:
            lines.append(f"endpoint={u.endpoint}")
        if u.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={_line_safe(cidr)}" for cidr in u.allowed_ips]
        keepalive = keepalive_for(u, current.get(u.public_key, 0))
        if u.handshake_now:
            lines.append("persistent_keepalive_interval=0")
        if u.handshake_now or u.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={keepalive}")
    return "\n".join(lines) + "\n\n"


def _line_safe(value: str) -> str:
    """Refuse values that would inject lines (e.g. a ``private_key=``) into a request."""
    if "\n" in value or "=" in value or not value.isprintable():
        raise WireGuardError(f"UAPI: refusing value {value[:40]!r}")
    return value


class Uapi:
    """WireGuardControl over the UAPI socket."""

    def __init__(
        self, interface: str, socket_dir: Path | str = UAPI_DIR, timeout: float = TIMEOUT
    ) -> None:
        self.name = interface
        self.path = Path(socket_dir) / f"{interface}.sock"
        self.timeout = timeout

    def _exchange(self, request: str) -> str:
        """Send one request, return the whole answer (up to and including the empty line)."""
        if "/" in self.name or not self.path.exists():
            raise InterfaceNotFound(
                f"no WireGuard interface {self.name!r} (no UAPI socket at {self.path})"
            )
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                s.sendall(request.encode())
                while not data.endswith(b"\n\n"):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    s.settimeout(left)
                    chunk = s.recv(65536)
                    if not chunk:
                        raise WireGuardError(
                            f"{self.path}: connection closed before the answer ended"
                        )
                    data += chunk
                    if len(data) > MAX_REPLY:
                        raise WireGuardError(f"{self.path}: answer larger than {MAX_REPLY} bytes")
            except (ConnectionRefusedError, FileNotFoundError):
                raise InterfaceNotFound(
                    f"no WireGuard interface {self.name!r} ({self.path} refuses connections)"
                ) from None
            except TimeoutError:
                raise WireGuardError(f"{self.path}: no answer within {self.timeout:g} s") from None
            except OSError as exc:
                raise WireGuardError(f"{self.path}: {exc}") from None
        return data.decode("utf-8", "replace")

    def read(self) -> DeviceState:
        return parse_uapi(self.name, self._exchange("get=1\n\n"))

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        """All updates in one ``set`` transaction (wireguard-go applies it line by line, so a
        failure part-way leaves the earlier lines applied)."""
        if not updates:
            return
        current: dict[bytes, int] = {}
        carried: dict[bytes, list[str]] = {}
        if any(u.renew or (u.handshake_now and u.persistent_keepalive is None) for u in updates):
            text = self._exchange("get=1\n\n")
            peers = parse_uapi(self.name, text).peers
            current = {p.public_key: p.persistent_keepalive for p in peers}
            updates = renewals(updates, peers, time.time())
            carried = carried_lines(text, {u.public_key for u in updates if u.renew})
            del text  # it holds the private key, and the preshared keys
        errno = parse_errno(self._exchange(format_set(updates, current, carried)))
        if errno != 0:
            raise WireGuardError(
                f"UAPI set on {self.name} failed: errno={errno}"
                + (" (invalid value: an endpoint or allowed IP?)" if errno == -22 else "")
            )
