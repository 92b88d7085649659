"""Test helpers: free ports, the real `wgmesh` CLI as a subprocess, a registration client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nacl.public import PrivateKey

from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key

WGMESH = [sys.executable, "-m", "wgmesh"]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u2:
                try:
                    u2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class RegistrarProcess:
    def __init__(self, tmp: Path, extra: list[str] | None = None, zone: str = "mesh.test") -> None:
        self.tmp = tmp
        self.zone = zone
        self.private = PrivateKey.generate()
        self.key = bytes(self.private.public_key)
        key_file = tmp / "registrar.key"
        key_file.write_text(encode_key(bytes(self.private)) + "\n")
        key_file.chmod(0o600)
        self.stun_port = free_port()
        self.dns_port = free_port()
        self.args = [
            *WGMESH, "registrar", "--zone", zone, "--private-key-file", str(key_file),
            "--listen", "127.0.0.1", "--stun-port", str(self.stun_port),
            "--dns-port", str(self.dns_port), "--state-dir", str(tmp / "state"),
            *(extra if extra is not None else ["--open"]),
        ]  # fmt: skip
        self.log = tmp / "registrar.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registrar exited: {self.log.read_text()}")
            if "registrar " in self.log.read_text() and self._dns_up():
                return
            time.sleep(0.05)
        raise RuntimeError(f"registrar did not start: {self.log.read_text()}")

    def _dns_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dns_port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(f"127.0.0.1:{self.stun_port}")


@contextmanager
def registrar(tmp: Path, extra: list[str] | None = None) -> Iterator[RegistrarProcess]:
    r = RegistrarProcess(tmp, extra)
    r.start()
    try:
        yield r
    finally:
        r.kill()


class Client:
    """A peer registering over an ordinary UDP socket (loopback tests need no raw socket)."""

    def __init__(self, registrar_key: bytes, private: PrivateKey | None = None) -> None:
        self.private = private or PrivateKey.generate()
        self.key = bytes(self.private.public_key)
        self.sealer = sealed.Sealer(bytes(self.private))
        self.registrar_key = registrar_key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.counter = time.time_ns() // 1000

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def register(
        self, dest: Endpoint, name: str = "peer", addresses: tuple[Endpoint, ...] = ()
    ) -> bytes:
        """Register from this socket, then confirm with a Watch (as the daemon does); raises
        TimeoutError when the registrar does not confirm."""
        self.counter += 1
        registered = self.counter
        payload = sealed.Register(int(time.time() * 1000), registered, name, addresses, "t", False)
        data = self._sealed(payload)
        self.sock.sendto(data, dest.sockaddr())
        self.counter += 1
        self.sock.sendto(
            self._sealed(
                sealed.padded_watch(sealed.Watch(int(time.time() * 1000), self.counter, registered))
            ),
            dest.sockaddr(),
        )
        reply, _ = self.sock.recvfrom(2048)
        _, status = sealed.open_sealed(self.sealer, stun.decode(reply), self.registrar_key)
        assert isinstance(status, sealed.Status) and status.register_counter == registered
        assert status.observed == (Endpoint.parse(f"127.0.0.1:{self.port}"),)
        return data

    def _sealed(self, payload: sealed.Payload) -> bytes:
        return sealed.build_sealed_request(
            self.sealer, self.key, self.registrar_key, payload, os.urandom(12), os.urandom(24)
        )

    def close(self) -> None:
        self.sock.close()


def dig(port: int, *args: str) -> str:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout
