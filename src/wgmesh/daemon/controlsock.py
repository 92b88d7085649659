"""The daemon's control sockets to the registrar (Watches, Statuses, pushes, relay and path
messages; the Registers leave the WireGuard port through wgmesh.daemon.rawsend instead)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from wgmesh.proto.endpoint import Endpoint

log = logging.getLogger("wgmesh.daemon")


UNROUTABLE = frozenset({errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
"""A send failed because this host has no route (or no address) of the destination's family."""
MAX_CONTROL = 2048
"""Largest control datagram read (a sealed Status or roster page is well under)."""


class ControlSockets:
    """The control sockets: one ordinary UDP socket per family of the registrar's addresses,
    not connected, read from the event loop. ``sendto`` sends to :attr:`target` (set to each
    control datagram's destination before it is sent) and raises OSError synchronously, so a
    missing route is seen at once; only datagrams from a registrar address are read."""

    def __init__(
        self, on_datagram: Callable[[bytes], None], registrars: tuple[Endpoint, ...]
    ) -> None:
        self.on_datagram = on_datagram
        self.target = registrars[0]
        self._from = {ep.ip for ep in registrars}
        self._socks: dict[int, socket.socket] = {}
        loop = asyncio.get_running_loop()
        for ep in registrars:
            family = socket.AF_INET if ep.family == 4 else socket.AF_INET6
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as exc:  # no such family on this host: sends to it are unroutable
                log.debug("no IPv%d control socket: %s", ep.family, exc)
                continue
            sock.setblocking(False)
            self._socks[ep.family] = sock
            loop.add_reader(sock.fileno(), self._readable, sock)

    def sendto(self, data: bytes) -> None:
        sock = self._socks.get(self.target.family)
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, f"no IPv{self.target.family} socket")
        sock.sendto(data, self.target.sockaddr())

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):  # bounded: the loop comes back for the rest
            try:
                data, addr = sock.recvfrom(MAX_CONTROL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket
                log.debug("control socket: %s", exc)
                continue
            try:
                source = Endpoint.from_sockaddr(addr)
            except ValueError:
                continue
            if source.ip in self._from:
                self.on_datagram(data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._socks.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
