"""wireguard-go in a lab host, configured by hand with ``wg`` (no wgmesh daemon involved).

wireguard-go runs in the foreground (``-f``) so the PID the lab holds is the real one; its UAPI
socket appears at /var/run/wireguard/IFACE.sock, a directory every namespace shares, hence the run
id in every interface name. The lab removes the socket at close in case wireguard-go did not.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nacl.public import PrivateKey

from wgmesh.lab.netns import LabError
from wgmesh.proto.keys import decode_key, encode_key, public_key
from wgmesh.wg.control import UAPI_DIR


class _Workdir(Protocol):
    @property
    def workdir(self) -> Path: ...


class Host(Protocol):
    """What an interface needs of its lab host (wgmesh.lab.topology.Host)."""

    @property
    def lab(self) -> _Workdir: ...

    def run(
        self, *argv: str, check: bool = True, timeout: float = 10.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...

    def spawn(
        self, *argv: str, env: dict[str, str] | None = None, log_path: Path | None = None
    ) -> subprocess.Popen[bytes]: ...


IFNAMSIZ = 15
"""Longest Linux interface name."""


@dataclass
class WgIface:
    """A running wireguard-go interface in a lab host."""

    name: str
    """Interface name, unique per run (``wg<run id><n>``)."""
    host: Host
    """The host it runs in."""
    private_key: str = field(repr=False)
    """Base64."""
    public_key: str
    """Base64."""
    listen_port: int
    """UDP port WireGuard listens on (behind a port-preserving NAT: also the public port)."""
    tunnel_address: str
    """The interface's address inside the tunnel, without the prefix length."""

    @property
    def uapi_socket(self) -> Path:
        return UAPI_DIR / f"{self.name}.sock"

    def add_peer(
        self,
        public_key: str,
        allowed_ips: str,
        endpoint: str | None = None,
        keepalive: int | None = None,
    ) -> None:
        """``wg set IFACE peer KEY allowed-ips ... [endpoint IP:PORT] [persistent-keepalive N]``."""
        args = ["wg", "set", self.name, "peer", public_key, "allowed-ips", allowed_ips]
        if endpoint:
            args += ["endpoint", endpoint]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        self.host.run(*args)

    def remove_peer(self, public_key: str) -> None:
        """``wg set IFACE peer KEY remove``."""
        self.host.run("wg", "set", self.name, "peer", public_key, "remove")

    def _show(self, what: str, peer_public_key: str) -> str | None:
        out = self.host.run("wg", "show", self.name, what, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == peer_public_key:
                return parts[1]
        return None

    def latest_handshake(self, peer_public_key: str) -> int:
        """Unix seconds of the last handshake with that peer (1 s resolution), 0 if none."""
        value = self._show("latest-handshakes", peer_public_key)
        return int(value) if value else 0

    def endpoint_of(self, peer_public_key: str) -> str | None:
        """The peer's current endpoint as ``ip:port``, None if unknown."""
        value = self._show("endpoints", peer_public_key)
        return None if value in (None, "(none)") else value

    def show(self) -> str:
        """``wg show IFACE``, for a failing test's report."""
        return self.host.run("wg", "show", self.name, check=False).stdout


def start_wireguard(
    host: Host, name: str, listen_port: int, address: str, private_key: str | None
) -> WgIface:
    """Spawn ``wireguard-go -f NAME`` in ``host``, wait for its UAPI socket, then set the key
    (from a mode-600 file), the listen port, the tunnel address, and bring the link up."""
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    private = decode_key(private_key) if private_key else bytes(PrivateKey.generate())
    sock = UAPI_DIR / f"{name}.sock"
    if sock.exists():
        raise LabError(f"{sock} exists: another wireguard-go owns the name {name!r}")
    proc = host.spawn(
        "wireguard-go",
        "-f",
        name,
        env={"LOG_LEVEL": os.environ.get("WGMESH_LAB_WG_LOG", "error")},
        log_path=host.lab.workdir / f"wireguard-go-{name}.log",
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None:
            raise LabError(f"wireguard-go {name} exited with {proc.returncode} (see its log)")
        if time.monotonic() > deadline:
            raise LabError(f"wireguard-go {name} did not start (no {sock})")
        time.sleep(0.02)
    key_file = host.lab.workdir / f"{name}.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(private) + "\n")
    host.run("wg", "set", name, "private-key", str(key_file), "listen-port", str(listen_port))
    host.run("ip", "addr", "add", address, "dev", name)
    host.run("ip", "link", "set", name, "up")
    tunnel = address.split("/", maxsplit=1)[0]
    return WgIface(name, host, encode_key(private), encode_key(public_key(private)), listen_port,
                   tunnel)  # fmt: skip
