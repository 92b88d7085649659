"""Thin asyncio adapters serving a :class:`~wgmesh.proto.dnssd.Zone` over UDP and TCP.

RFC 1035 section 4.2 (UDP, and TCP with a 2-byte length prefix) and RFC 7766 sections 6.2.1 and
6.2.3 (several queries per TCP connection, idle timeout, a cap on connections). All DNS logic is
in the zone; the adapters only bound what hostile input can cost: datagrams outside 12..4096
bytes are dropped before parsing and counted, TCP connections are capped, time out when idle or
when the client stops reading, and a TCP query longer than a query can sensibly be ends its
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from wgmesh.errors import RemoteProtocolError
from wgmesh.proto.dnssd import Zone
from wgmesh.registry.udpbatch import UdpEndpoint, open_udp

log = logging.getLogger("wgmesh.dns")

MIN_QUERY = 12
"""A DNS header; anything shorter is not DNS."""


@dataclass(frozen=True, slots=True)
class DnsLimits:
    """Limits of the DNS adapters."""

    max_udp_query: int = 4096
    """Longer datagrams are dropped unparsed (a real query is under 100 bytes)."""
    max_tcp_query: int = 4096
    """A longer framed TCP message ends the connection unread."""
    max_tcp_connections: int = 256
    """Connections beyond this are closed at once."""
    tcp_idle: float = 10.0
    """Seconds a TCP connection may wait for the next query, or for the client to read."""
    max_tcp_queries: int = 1000
    """Queries answered on one TCP connection before it is closed."""


@dataclass(slots=True)
class DnsAdapterStats:
    """The adapters' own counters (the zone counts everything it sees in ``zone.stats``)."""

    udp_dropped: int = 0
    """Datagrams dropped for their size before parsing."""
    tcp_rejected: int = 0
    """TCP connections closed at once because too many were open."""
    tcp_oversized: int = 0
    """TCP connections ended by a message over :attr:`DnsLimits.max_tcp_query`."""
    errors: int = 0
    """Messages the zone rejected with a RemoteProtocolError (it is not meant to raise)."""
    internal_errors: int = 0
    """UDP queries dropped because answering them raised anything else (a bug: logged with
    its traceback by :mod:`wgmesh.registry.udpbatch`, rate-limited)."""

    def count_dropped(self) -> None:
        """One more datagram dropped for its size."""
        self.udp_dropped += 1

    def count_internal_error(self) -> None:
        """One more datagram dropped because answering it raised."""
        self.internal_errors += 1


def _udp_answerer(
    zone: Zone, limits: DnsLimits, stats: DnsAdapterStats
) -> Callable[[bytes, object], bytes | None]:
    """The UDP answer to one datagram (at most max_udp_query bytes), or None."""
    answer = zone.answer

    def on_datagram(data: bytes, _addr: object) -> bytes | None:
        if len(data) < MIN_QUERY:
            stats.udp_dropped += 1
            return None
        try:
            return answer(data, tcp=False)
        except RemoteProtocolError as exc:
            stats.errors += 1
            log.debug("dns udp: %s", exc)
            return None

    return on_datagram


class DnsServer:
    """A running DNS server: ``udp_port``/``tcp_port`` are the bound ports."""

    def __init__(self, zone: Zone, limits: DnsLimits) -> None:
        self.zone = zone
        self.limits = limits
        self.stats = DnsAdapterStats()
        self.udp_port = 0
        self.tcp_port = 0
        self._udp: UdpEndpoint | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def connections(self) -> int:
        """Open TCP connections."""
        return len(self._connections)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.limits.max_tcp_connections:
            self.stats.tcp_rejected += 1
            writer.close()
            return
        self._connections.add(writer)
        try:
            for _ in range(self.limits.max_tcp_queries):
                async with asyncio.timeout(self.limits.tcp_idle):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    if length > self.limits.max_tcp_query:
                        self.stats.tcp_oversized += 1
                        break
                    query = await reader.readexactly(length)
                if length < MIN_QUERY:
                    break
                try:
                    answer = self.zone.answer(query, tcp=True)
                except RemoteProtocolError as exc:
                    self.stats.errors += 1
                    log.debug("dns tcp: %s", exc)
                    break
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                async with asyncio.timeout(self.limits.tcp_idle):
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    def close(self) -> None:
        """Stop listening and close every open connection."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for w in list(self._connections):
            w.close()

    async def wait_closed(self) -> None:
        """Wait (at most 2 s) until the TCP server and its connections are gone."""
        if self._tcp is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)


async def start_dns(zone: Zone, host: str, port: int, limits: DnsLimits | None = None) -> DnsServer:
    """Serve ``zone`` on host:port over UDP and TCP (port 0: a free port, the same for both).

    UDP is read in batches (:mod:`wgmesh.registry.udpbatch`) where the platform allows."""
    server = DnsServer(zone, limits or DnsLimits())
    on_datagram = _udp_answerer(zone, server.limits, server.stats)
    attempts = 8 if port == 0 else 1
    for attempt in range(1, attempts + 1):
        udp = await open_udp(
            host,
            port,
            on_datagram,
            max_datagram=server.limits.max_udp_query,
            on_truncated=server.stats.count_dropped,
            on_error=server.stats.count_internal_error,
            with_address=False,
        )
        udp_port = int(cast(tuple[str, int], udp.get_extra_info("sockname"))[1])
        try:
            server._tcp = await asyncio.start_server(server._serve_tcp, host, udp_port)
        except OSError:
            udp.close()
            if attempt == attempts:
                raise
            continue  # port 0: the free UDP port is taken for TCP; pick another
        server._udp, server.udp_port = udp, udp_port
        server.tcp_port = int(server._tcp.sockets[0].getsockname()[1])
        break
    return server
