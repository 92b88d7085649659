"""Thin asyncio adapters serving a :class:`Zone` over UDP and TCP (RFC 1035 section 4.2,
RFC 7766 for TCP: 2-byte length framing, several queries per connection, idle timeout).

Datagrams outside 12..4096 bytes are dropped before parsing and counted; TCP connections are
capped and time out when idle; messages over 65535 bytes cannot be framed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass
from typing import cast

from wgmesh.proto.dnssd import Zone

log = logging.getLogger("wgmesh.dns")

MAX_UDP_QUERY = 4096
MIN_QUERY = 12


@dataclass(frozen=True, slots=True)
class DnsLimits:
    """Limits of the DNS adapters."""

    max_tcp_connections: int = 256
    """Connections beyond this are closed at once."""
    tcp_idle: float = 10.0
    """Seconds a TCP connection may sit idle."""
    max_tcp_queries: int = 1000
    """Queries answered on one TCP connection before it is closed."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not MIN_QUERY <= len(data) <= MAX_UDP_QUERY:
            self.dropped += 1
            return
        answer = self.zone.answer(data, tcp=False)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp: %s", exc)


class DnsServer:
    """A running DNS server: ``udp_port``/``tcp_port`` are the bound ports."""

    def __init__(self, zone: Zone, limits: DnsLimits) -> None:
        self.zone = zone
        self.limits = limits
        self.udp_port = 0
        self.tcp_port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_proto: _Udp | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.limits.max_tcp_connections:
            writer.close()
            return
        self._connections.add(writer)
        try:
            for _ in range(self.limits.max_tcp_queries):
                async with asyncio.timeout(self.limits.tcp_idle):
                    head = await reader.readexactly(2)
                    (length,) = struct.unpack("!H", head)
                    query = await reader.readexactly(length)
                if length < MIN_QUERY:
                    break
                answer = self.zone.answer(query, tcp=True)
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for w in list(self._connections):
            w.close()

    async def wait_closed(self) -> None:
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)


async def start_dns(zone: Zone, host: str, port: int, limits: DnsLimits | None = None) -> DnsServer:
    """Serve ``zone`` on host:port over UDP and TCP (port 0: any free port, the same for both
    when possible)."""
    server = DnsServer(zone, limits or DnsLimits())
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Udp(zone), local_addr=(host, port)
    )
    server._udp, server._udp_proto = transport, proto
    server.udp_port = transport.get_extra_info("sockname")[1]
    server._tcp = await asyncio.start_server(server._serve_tcp, host, server.udp_port)
    server.tcp_port = server._tcp.sockets[0].getsockname()[1]
    return server
