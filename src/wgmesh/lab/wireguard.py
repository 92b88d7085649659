"""wireguard-go in a lab host, configured by hand with ``wg`` (the daemon is not involved).

wireguard-go runs in the foreground (``-f``) so the PID the lab holds is the real one; its UAPI
socket appears at /var/run/wireguard/IFACE.sock (a directory every namespace shares, hence the
run id in every interface name).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nacl.public import PrivateKey

from wgmesh.proto.keys import decode_key, encode_key, public_key

if TYPE_CHECKING:
    from wgmesh.lab.topology import Host


@dataclass
class WgIface:
    """A running wireguard-go interface in a lab host."""

    name: str
    host: Host
    private_key: str
    public_key: str
    listen_port: int
    tunnel_address: str

    def add_peer(
        self,
        public_key: str,
        allowed_ips: str,
        endpoint: str | None = None,
        keepalive: int | None = None,
    ) -> None:
        args = ["wg", "set", self.name, "peer", public_key, "allowed-ips", allowed_ips]
        if endpoint:
            args += ["endpoint", endpoint]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        self.host.run(*args)

    def latest_handshake(self, peer_public_key: str) -> int:
        """Unix seconds of the last handshake with that peer, 0 if none."""
        out = self.host.run("wg", "show", self.name, "latest-handshakes", check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == peer_public_key:
                return int(parts[1])
        return 0

    def endpoint_of(self, peer_public_key: str) -> str | None:
        out = self.host.run("wg", "show", self.name, "endpoints", check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == peer_public_key:
                return None if parts[1] == "(none)" else parts[1]
        return None


def start_wireguard(
    host: Host, name: str, listen_port: int, address: str, private_key: str | None
) -> WgIface:
    if len(name) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 characters")
    private = decode_key(private_key) if private_key else bytes(PrivateKey.generate())
    public = encode_key(public_key(private))
    host.spawn(
        "wireguard-go",
        "-f",
        name,
        env={"LOG_LEVEL": os.environ.get("WGMESH_LAB_WG_LOG", "error")},
        log_path=host.lab.workdir / f"wireguard-go-{name}.log",
    )
    sock = Path(f"/var/run/wireguard/{name}.sock")
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"wireguard-go {name} did not start (no {sock})")
        time.sleep(0.02)
    key_file = host.lab.workdir / f"{name}.key"
    key_file.write_text(encode_key(private) + "\n")
    key_file.chmod(0o600)
    host.run("wg", "set", name, "private-key", str(key_file), "listen-port", str(listen_port))
    host.run("ip", "addr", "add", address, "dev", name)
    host.run("ip", "link", "set", name, "up")
    return WgIface(
        name, host, encode_key(private), public, listen_port, address.split("/", maxsplit=1)[0]
    )
