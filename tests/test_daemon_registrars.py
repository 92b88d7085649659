"""``wgmesh daemon --registrar``, repeatable: one address per family, IPv6 bare or bracketed
with a port, a name giving its A and AAAA addresses; clear errors otherwise. And the daemon's
control sockets over loopback: one per family, reading only the registrar's addresses."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from wgmesh.cli.daemon import DEFAULTS, settings_from
from wgmesh.errors import ConfigError
from wgmesh.proto.endpoint import Endpoint

KEY = "A" * 43 + "="


def settings(*registrars: str) -> Any:
    values = dict(DEFAULTS, interface="wg9", registrar=list(registrars), zone="mesh.test",
                  registrar_key=KEY)  # fmt: skip
    return settings_from(values)


def test_one_address_per_family() -> None:
    s = settings("203.0.113.10", "2001:db8::10")
    assert s.registrars == (Endpoint.parse("203.0.113.10:3478"),
                            Endpoint.parse("[2001:db8::10]:3478"))  # fmt: skip
    assert s.registrar == s.registrars[0]
    s = settings("[2001:db8::10]:3479", "203.0.113.10:3480")
    assert [str(ep) for ep in s.registrar_endpoints()] == ["[2001:db8::10]:3479",
                                                           "203.0.113.10:3480"]  # fmt: skip
    assert settings("203.0.113.10").registrar_endpoints() == (Endpoint.parse("203.0.113.10:3478"),)
    assert settings("2001:db8::10").registrars == (Endpoint.parse("[2001:db8::10]:3478"),)


def test_two_of_one_family_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--registrar: 203.0.113.10 \(203.0.113.10:3478\) and "
                       r"192.0.2.1 \(192.0.2.1:3478\) are both IPv4; expected at most one "
                       r"address per family"):  # fmt: skip
        settings("203.0.113.10", "192.0.2.1")
    with pytest.raises(ConfigError, match="are both IPv6"):
        settings("2001:db8::10", "[2001:db8::11]:3478")


def test_a_name_gives_both_families(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        assert host == "registrar.mesh.test"
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::10", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("203.0.113.10", port)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("203.0.113.11", port)),
        ]

    monkeypatch.setattr("wgmesh.cli.daemon.socket.getaddrinfo", fake)
    s = settings("registrar.mesh.test:3500")
    assert s.registrars == (Endpoint.parse("203.0.113.10:3500"),
                            Endpoint.parse("[2001:db8::10]:3500"))  # fmt: skip
    with pytest.raises(ConfigError, match="are both IPv4"):
        settings("registrar.mesh.test", "192.0.2.1")


def test_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr("wgmesh.cli.daemon.socket.getaddrinfo", fails)
    with pytest.raises(ConfigError, match=r"--registrar: cannot resolve 'nowhere.mesh.test'"):
        settings("nowhere.mesh.test")


async def test_control_sockets_read_only_the_registrar() -> None:
    """One socket per family; a datagram from a registrar address reaches the client, one
    from anywhere else does not; sendto goes to the target set."""
    from wgmesh.daemon.controlsock import ControlSockets

    servers = {}
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        srv = socket.socket(family, socket.SOCK_DGRAM)
        srv.bind((host, 0))
        srv.settimeout(2.0)
        servers[family] = srv
    reg4 = Endpoint.of("127.0.0.1", servers[socket.AF_INET].getsockname()[1])
    reg6 = Endpoint.of("::1", servers[socket.AF_INET6].getsockname()[1])
    got: list[bytes] = []

    class Daemon:
        def on_control(self, data: bytes) -> None:
            got.append(data)

    control = ControlSockets(Daemon().on_control, (reg4, reg6))
    try:
        for ep, family in ((reg4, socket.AF_INET), (reg6, socket.AF_INET6)):
            control.target = ep
            control.sendto(b"watch")
            data, addr = servers[family].recvfrom(100)
            assert data == b"watch"
            servers[family].sendto(b"status", addr)  # from the registrar's address
            with socket.socket(family, socket.SOCK_DGRAM) as stranger:
                stranger.bind(("127.0.0.2" if family == socket.AF_INET else "::1", 0))
                if family == socket.AF_INET:
                    stranger.sendto(b"forged", addr)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if len(got) == (1 if family == socket.AF_INET else 2):
                    break
        await asyncio.sleep(0.05)
        assert got == [b"status", b"status"]  # the stranger's datagram was not read
        control.target = Endpoint.parse("[2001:db8::10]:3478")
        del control._socks[6]  # a host without IPv6: the send fails like a missing route
        with pytest.raises(OSError):
            control.sendto(b"x")
    finally:
        control.close()
        for srv in servers.values():
            srv.close()
