"""Thin asyncio adapters serving a :class:`~wgmesh.proto.dnssd.Zone` over UDP and TCP.

RFC 1035 section 4.2 (UDP, and TCP with a 2-byte length prefix) and RFC 7766 sections 6.2.1 and
6.2.3 (several queries per TCP connection, idle timeout, a cap on connections). All DNS logic is
in the zone, and what may be sent to a UDP source (response rate limiting per source prefix, the
size cap toward sources without a valid DNS cookie, the cookies themselves) in
:class:`wgmesh.proto.rrl.UdpGuard`; the adapters feed it each query with its source address and
the time, and bound what hostile input can cost: datagrams outside 12..4096 bytes are dropped
before parsing and counted, TCP connections are capped in all and per source (an IPv4 address,
an IPv6 /64: when all slots are taken, a newcomer takes the oldest slot of the source holding
the most, if that source holds more than the newcomer would), time out when idle or when the
client stops reading, and a TCP query longer than a query can sensibly be ends its connection.

The server listens on every address it is given, UDP and TCP on the same port; UDP answers
leave from the address their query came to (:mod:`wgmesh.registry.udpbatch`: on a wildcard it
reads each query's destination). An IPv6 wildcard's ``IPV6_V6ONLY`` follows
:func:`~wgmesh.registry.udpbatch.v6only_for` for TCP too (asyncio's own ``start_server`` would
always set it, so ``::`` alone would refuse IPv4 clients over TCP); IPv4 clients of a dual-stack
socket are seen as IPv4 (their mapped address unmapped), so their prefixes and transfer rights
are those of their IPv4 address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from wgmesh.errors import ConfigError, RemoteProtocolError
from wgmesh.proto.dnssd import Zone
from wgmesh.proto.rrl import RrlConfig, RrlStats, UdpGuard, prefix_key
from wgmesh.registry import udpbatch
from wgmesh.registry.udpbatch import BatchedUdp, UdpEndpoint, on_one_port, open_udp, v6only_for

if TYPE_CHECKING:
    from wgmesh.registry.xfr import XfrService

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
    max_tcp_per_source: int = 8
    """TCP connections one source may hold at once; one more is closed at once."""
    tcp_ipv4_prefix: int = 32
    """Bits of an IPv4 address that make one TCP source (32: each address)."""
    tcp_ipv6_prefix: int = 64
    """Bits of an IPv6 address that make one TCP source (64: a host usually holds a /64)."""
    rrl: RrlConfig = field(default_factory=RrlConfig)
    """UDP response rate limiting, the size cap toward unproven sources and DNS cookies."""

    def __post_init__(self) -> None:
        if self.max_tcp_connections < 1 or self.max_tcp_per_source < 1:
            raise ConfigError(
                f"DNS TCP limits: {self.max_tcp_connections} connections, "
                f"{self.max_tcp_per_source} per source"
            )
        if not 0 <= self.tcp_ipv4_prefix <= 32 or not 0 <= self.tcp_ipv6_prefix <= 128:
            raise ConfigError(
                f"DNS TCP source prefixes /{self.tcp_ipv4_prefix} and /{self.tcp_ipv6_prefix}"
            )


@dataclass(slots=True)
class DnsAdapterStats:
    """The adapters' own counters (the zone counts everything it sees in ``zone.stats``)."""

    udp_dropped: int = 0
    """Datagrams dropped for their size before parsing."""
    tcp_rejected: int = 0
    """TCP connections closed at once because too many were open."""
    tcp_source_rejected: int = 0
    """TCP connections closed at once because their source held
    :attr:`DnsLimits.max_tcp_per_source` already."""
    tcp_evicted: int = 0
    """TCP connections closed to make room for a source holding fewer (all slots were taken)."""
    tcp_oversized: int = 0
    """TCP connections ended by a message over :attr:`DnsLimits.max_tcp_query`."""
    errors: int = 0
    """Messages the zone rejected with a RemoteProtocolError (it is not meant to raise)."""
    internal_errors: int = 0
    """UDP queries dropped because answering them raised anything else (a bug: logged with
    its traceback by :mod:`wgmesh.registry.udpbatch`, rate-limited)."""
    rrl: RrlStats = field(default_factory=RrlStats)
    """The UDP policy's decisions (rate limit, size cap, cookies)."""

    def count_dropped(self) -> None:
        """One more datagram dropped for its size."""
        self.udp_dropped += 1

    def count_internal_error(self) -> None:
        """One more datagram dropped because answering it raised."""
        self.internal_errors += 1


_MAPPED = bytes(10) + b"\xff\xff"
"""The first 12 bytes of an IPv4-mapped IPv6 address."""


def _packed(host: str) -> bytes:
    """The packed form of a textual address (its scope, if any, left out; an IPv4-mapped one
    as IPv4), or b""."""
    try:
        if ":" in host:
            packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
            return packed[12:] if packed[:12] == _MAPPED else packed
        return socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return b""


def _udp_handlers(
    guard: UdpGuard, stats: DnsAdapterStats
) -> tuple[udpbatch.Handler, udpbatch.AddressHandler]:
    """The UDP answer to one datagram (at most max_udp_query bytes), or None: given the raw
    sockaddr (for :class:`~wgmesh.registry.udpbatch.BatchedUdp`; the address is a slice of it),
    or (host, port) (for the asyncio fallback)."""
    udp, clock = guard.udp, time.time

    def raw(data: bytes, name: bytes) -> bytes | None:
        if len(data) < MIN_QUERY:
            stats.udp_dropped += 1
            return None
        n = len(name)  # sockaddr_in is 16 bytes (address at 4), sockaddr_in6 28 (at 8)
        address = name[4:8] if n == 16 else name[8:24] if n == 28 else b""
        if not address:
            return None
        if n == 28 and address[:12] == _MAPPED:  # IPv4 on a dual-stack socket
            address = address[12:]
        try:
            return udp(data, address, clock())
        except RemoteProtocolError as exc:
            stats.errors += 1
            log.debug("dns udp: %s", exc)
            return None

    def plain(data: bytes, addr: tuple[str, int] | None) -> bytes | None:
        address = b"" if addr is None else _packed(addr[0])
        n = len(address)  # as a sockaddr_in/sockaddr_in6 is laid out: raw() reads only this
        return raw(data, bytes(4) + address + bytes(8) if n == 4 else bytes(8) + address + bytes(4))

    return raw, plain


class DnsServer:
    """A running DNS server: ``udp_port``/``tcp_port`` are the bound ports."""

    def __init__(self, zone: Zone, limits: DnsLimits, xfr: XfrService | None = None) -> None:
        self.zone = zone
        self.limits = limits
        self.stats = DnsAdapterStats()
        self.xfr = xfr
        """Zone transfers and signed queries (wgmesh.registry.xfr), if there are secondaries."""
        self.guard = UdpGuard(
            limits.rrl,
            zone.answer if xfr is None else xfr.answer,
            max_udp=zone.config.max_udp,
            secret=os.urandom(32),
            stats=self.stats.rrl,
        )
        self.udp_port = 0
        self.tcp_port = 0
        self._udp: UdpEndpoint | None = None
        """The UDP socket of the first address (``_udps`` holds them all)."""
        self._udps: list[UdpEndpoint] = []
        self._tcp: list[asyncio.Server] = []
        # each open connection's source (rrl.prefix_key at the TCP prefixes), and back
        self._connections: dict[asyncio.StreamWriter, int] = {}
        # source -> its connections, oldest first
        self._sources: dict[int, dict[asyncio.StreamWriter, None]] = {}

    @property
    def connections(self) -> int:
        """Open TCP connections."""
        return len(self._connections)

    def _admit(self, writer: asyncio.StreamWriter, source: int) -> bool:
        """Take a TCP slot for ``writer`` from ``source``, or say why not (counted)."""
        limits = self.limits
        mine = self._sources.get(source)
        held = 0 if mine is None else len(mine)
        if held >= limits.max_tcp_per_source:
            self.stats.tcp_source_rejected += 1
            return False
        if len(self._connections) >= limits.max_tcp_connections:
            busiest = max(self._sources.values(), key=len, default=None)
            if busiest is None or len(busiest) <= held + 1:
                self.stats.tcp_rejected += 1
                return False
            oldest = next(iter(busiest))  # the heaviest source gives up its oldest slot
            self.stats.tcp_evicted += 1
            self._release(oldest)
            oldest.close()
        self._connections[writer] = source
        self._sources.setdefault(source, {})[writer] = None
        return True

    def _release(self, writer: asyncio.StreamWriter) -> None:
        source = self._connections.pop(writer, None)
        if source is None:
            return
        held = self._sources[source]
        del held[writer]
        if not held:
            del self._sources[source]

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        peer = writer.get_extra_info("peername")
        address = _packed(peer[0]) if isinstance(peer, tuple) and peer else b""
        source = prefix_key(address, limits.tcp_ipv4_prefix, limits.tcp_ipv6_prefix)
        if not address:  # not an IP connection (cannot happen on an IP listener)
            self.stats.tcp_rejected += 1
            writer.close()
            return
        if not self._admit(writer, source):
            writer.close()
            return
        guard = self.guard
        try:
            for _ in range(limits.max_tcp_queries):
                async with asyncio.timeout(limits.tcp_idle):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    if length > limits.max_tcp_query:
                        self.stats.tcp_oversized += 1
                        break
                    query = await reader.readexactly(length)
                if length < MIN_QUERY:
                    break
                if self.xfr is not None and self.xfr.is_transfer(query):  # AXFR/IXFR: its own
                    if not await self.xfr.transfer(query, address, writer):  # messages
                        break
                    continue
                try:
                    answer = guard.tcp(query, address, time.time())
                except RemoteProtocolError as exc:
                    self.stats.errors += 1
                    log.debug("dns tcp: %s", exc)
                    break
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                async with asyncio.timeout(limits.tcp_idle):
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._release(writer)
            writer.close()

    def close(self) -> None:
        """Stop listening and close every open connection."""
        for udp in self._udps:
            udp.close()
        for tcp in self._tcp:
            tcp.close()
        for w in list(self._connections):
            w.close()

    async def wait_closed(self) -> None:
        """Wait (at most 2 s) until the TCP server and its connections are gone."""
        if self._tcp:
            waits = [tcp.wait_closed() for tcp in self._tcp]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), 2.0)


async def _open_udp(host: str, port: int, server: DnsServer, v6only: bool) -> UdpEndpoint:
    """Bind host:port for UDP: batched (:class:`BatchedUdp`, given the raw sockaddr, so the
    source address costs a slice) where the platform allows, else asyncio's endpoint."""
    size = server.limits.max_udp_query
    stats = server.stats
    raw, plain = _udp_handlers(server.guard, stats)
    if not udpbatch.available():
        return await open_udp(
            host,
            port,
            plain,
            max_datagram=size,
            on_truncated=stats.count_dropped,
            on_error=stats.count_internal_error,
            v6only=v6only,
        )
    loop = asyncio.get_running_loop()
    sock = await udpbatch.bind_udp(host, port, v6only=v6only)
    batched = BatchedUdp(
        sock,
        raw,
        size=size,
        on_truncated=stats.count_dropped,
        on_error=stats.count_internal_error,
    )
    batched.start(loop)
    return batched


def tcp_listener(host: str, port: int, v6only: bool) -> socket.socket:
    """A listening TCP socket on host:port (SO_REUSEADDR, ``IPV6_V6ONLY`` = ``v6only`` for
    IPv6): made here because asyncio's ``start_server`` sets IPV6_V6ONLY on every IPv6 one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_dns(
    zone: Zone,
    hosts: str | Sequence[str],
    port: int,
    limits: DnsLimits | None = None,
    xfr: XfrService | None = None,
) -> DnsServer:
    """Serve ``zone`` on port ``port`` of each of ``hosts`` (IP addresses; one given as a
    string is one address) over UDP and TCP (port 0: a free port, the same for all).

    UDP is read in batches (:mod:`wgmesh.registry.udpbatch`) where the platform allows."""
    listen = [hosts] if isinstance(hosts, str) else list(hosts)
    if not listen:
        raise ValueError("start_dns needs at least one address")
    server = DnsServer(zone, limits or DnsLimits(), xfr)
    v6only = v6only_for(listen)

    async def open_one(host: str, p: int) -> tuple[tuple[UdpEndpoint, asyncio.Server], int]:
        udp = await _open_udp(host, p, server, v6only)
        udp_port = int(cast(tuple[str, int], udp.get_extra_info("sockname"))[1])
        try:
            sock = tcp_listener(host, udp_port, v6only)
        except OSError:
            udp.close()
            raise  # port 0: the free UDP port is taken for TCP; on_one_port picks another
        tcp = await asyncio.start_server(server._serve_tcp, sock=sock)
        return (udp, tcp), udp_port

    def close(pair: tuple[UdpEndpoint, asyncio.Server]) -> None:
        pair[0].close()
        pair[1].close()

    opened, bound = await on_one_port(listen, port, open_one, close)
    server._udps = [udp for udp, _ in opened]
    server._tcp = [tcp for _, tcp in opened]
    server._udp, server.udp_port = server._udps[0], bound
    server.tcp_port = int(server._tcp[0].sockets[0].getsockname()[1])
    return server
