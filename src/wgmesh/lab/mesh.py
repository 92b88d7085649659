"""A wgmesh deployment inside the lab: the real ``wgmesh registrar`` on a public host and real
``wgmesh daemon`` processes beside wireguard-go on NATed hosts, all driven through the CLI.

Shared by the end-to-end tests, the connection-time benchmark and the demo.

IPv6: the registrar listens on every address its host has (one ``--listen`` each) and daemons are
given every one of them (one ``--registrar`` each); ``listen_families`` / ``registrar_families``
choose. A registrar host without IPv6 gets exactly the arguments it always had.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from wgmesh.lab.topology import Host, Lab
from wgmesh.lab.wireguard import WgIface
from wgmesh.proto.keys import encode_key

PYTHON = sys.executable
ZONE = "mesh.test"
FAMILIES = (4, 6)
"""Address families, IPv4 first: the default of ``listen_families`` and ``registrar_families``."""


@dataclass
class MeshPeer:
    """A lab host running wireguard-go (and, once started, a wgmesh daemon)."""

    name: str
    host: Host
    wg: WgIface
    tunnel_ip: str
    daemon: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def status_socket(self) -> str:
        return f"/run/wgmesh-lab/{self.wg.name}.sock"


class Mesh:
    """A registrar plus peers; see the module docstring."""

    def __init__(self, lab: Lab, registrar_host: Host, *, authorized: bool = False) -> None:
        self.lab = lab
        self.reg_host = registrar_host
        self.authorized = authorized
        self.workdir = Path(lab.workdir) / "mesh"
        self.workdir.mkdir(parents=True, exist_ok=True)
        private = PrivateKey.generate()
        self.registrar_key = encode_key(bytes(private.public_key))
        self.key_file = self.workdir / "registrar.key"
        self.key_file.write_text(encode_key(bytes(private)) + "\n")
        self.key_file.chmod(0o600)
        self.peers: list[MeshPeer] = []
        self.registrar: subprocess.Popen[bytes] | None = None
        self.registrar_log = self.workdir / "registrar.log"
        self._next_ip = 1

    @property
    def registrar_ip(self) -> str:
        """The registrar's IPv4 address, or its IPv6 one on an IPv6-only host."""
        return self.registrar_addresses()[0]

    @property
    def registrar_ip6(self) -> str | None:
        """The registrar's IPv6 address, None if its host has none."""
        return None if self.reg_host.address6 is None else str(self.reg_host.address6)

    def registrar_addresses(self, families: Iterable[int] = FAMILIES) -> list[str]:
        """The registrar host's addresses of ``families`` (4, 6), in that order; those it lacks
        are left out. ValueError if none is left."""
        host = self.reg_host
        own: dict[int, object] = {4: host.address4, 6: host.address6}
        chosen = []
        for family in families:
            if family not in own:
                raise ValueError(f"address family {family!r}: use 4 or 6")
            if own[family] is not None:
                chosen.append(str(own[family]))
        if not chosen:
            raise ValueError(f"{host.name} has no address of families {tuple(families)}")
        return chosen

    def start_registrar(self, *extra: str, listen_families: Iterable[int] = FAMILIES) -> None:
        """Start (or restart, keeping the state directory) ``wgmesh registrar``, with one
        ``--listen`` per address of its host in ``listen_families``."""
        admission = ["--open"]
        if self.authorized:
            keys = self.workdir / "authorized_keys"
            keys.write_text(
                "".join(f"{p.wg.public_key} {p.name} {p.tunnel_ip}/32\n" for p in self.peers)
            )
            admission = ["--authorized-keys", str(keys)]
        listen = [a for address in self.registrar_addresses(listen_families)
                  for a in ("--listen", address)]  # fmt: skip
        seen = len(self.registrar_log.read_bytes()) if self.registrar_log.exists() else 0
        self.registrar = self.reg_host.spawn(
            PYTHON, "-m", "wgmesh", "registrar", "--zone", ZONE,
            "--private-key-file", str(self.key_file), *listen,
            "--dns-port", "53", "--stun-port", "3478",
            "--state-dir", str(self.workdir / "state"), *admission, *extra,
            log_path=self.registrar_log,
        )  # fmt: skip
        self._wait_for(lambda: b" for zone " in self.registrar_log.read_bytes()[seen:], 20,
                       "registrar")  # fmt: skip  # this start's line, not an earlier one's

    def stop_registrar(self, kill: bool = False) -> None:
        if self.registrar is not None and self.registrar.poll() is None:
            self.registrar.kill() if kill else self.registrar.terminate()
            self.registrar.wait(10)
        self.registrar = None

    def add_peer(self, name: str, host: Host, listen_port: int = 51820) -> MeshPeer:
        ip = f"100.64.0.{self._next_ip}"
        self._next_ip += 1
        wg = host.start_wireguard(listen_port=listen_port, address=f"{ip}/24")
        peer = MeshPeer(name, host, wg, ip, log=self.workdir / f"daemon-{name}.log")
        self.peers.append(peer)
        return peer

    def link(self, a: MeshPeer, b: MeshPeer) -> None:
        """Configure a and b with each other's key and allowed IPs, and no endpoint."""
        a.wg.add_peer(b.wg.public_key, f"{b.tunnel_ip}/32")
        b.wg.add_peer(a.wg.public_key, f"{a.tunnel_ip}/32")

    def start_daemon(
        self, peer: MeshPeer, *extra: str, registrar_families: Iterable[int] = FAMILIES
    ) -> None:
        """Start ``wgmesh daemon`` for ``peer``: one ``--registrar`` per registrar address in
        ``registrar_families``, ``--dns`` the first of them of a family the peer's host has
        (an IPv6-only peer queries over IPv6). ``extra`` options come last (they win)."""
        assert peer.log is not None
        addresses = self.registrar_addresses(registrar_families)
        registrars = [a for address in addresses for a in ("--registrar", address)]
        own = {4: peer.host.address4, 6: peer.host.address6}
        usable = [a for a in addresses if own[6 if ":" in a else 4] is not None]
        dns = (usable or addresses)[0]
        peer.daemon = peer.host.spawn(
            PYTHON, "-m", "wgmesh", "daemon", "--interface", peer.wg.name,
            *registrars, "--registrar-key", self.registrar_key,
            "--zone", ZONE, "--dns", dns, "--name", peer.name,
            "--status-socket", peer.status_socket, "--verbose", *extra,
            log_path=peer.log,
        )  # fmt: skip

    def stop_daemon(self, peer: MeshPeer) -> None:
        if peer.daemon is not None and peer.daemon.poll() is None:
            peer.daemon.terminate()
            peer.daemon.wait(10)
        peer.daemon = None

    def peers_json(self, peer: MeshPeer) -> dict[str, Any]:
        """``wgmesh peers --json`` run in the peer's namespace."""
        out = peer.host.run(
            PYTHON, "-m", "wgmesh", "peers", "--interface", peer.wg.name, "--json",
            "--status-socket", peer.status_socket, timeout=20,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def peer_row(self, peer: MeshPeer, other: MeshPeer) -> dict[str, Any]:
        for row in self.peers_json(peer)["peers"]:
            if row["public_key"] == other.wg.public_key:
                return dict(row)
        raise AssertionError(f"{other.name} not in {peer.name}'s wgmesh peers")

    def wait_ping(self, a: MeshPeer, b: MeshPeer, timeout: float = 20.0) -> bool:
        """True once a can ping b's tunnel address (IPv4 100.64.0.N, whatever family the tunnel
        runs over), trying until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if a.host.ping(b.tunnel_ip, count=1, timeout=1.0):
                return True
            time.sleep(0.2)
        return False

    def wait_handshake(self, a: MeshPeer, b: MeshPeer, timeout: float = 20.0) -> float | None:
        """Seconds until a's interface shows a handshake with b, or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if a.wg.latest_handshake(b.wg.public_key) > 0:
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def logs(self) -> str:
        """Every log of this mesh, for a failing test's report."""
        parts = [f"--- registrar\n{_read(self.registrar_log)}"]
        for p in self.peers:
            parts.append(f"--- daemon {p.name}\n{_read(p.log)}")
            parts.append(
                f"--- wg {p.name}\n{p.host.run('wg', 'show', p.wg.name, check=False).stdout}"
            )
        return "\n".join(parts)

    @staticmethod
    def _wait_for(cond: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{what} did not start within {timeout} s")


def _read(path: Path | None) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace")
    return text[-20000:]
