"""The IO side of :mod:`wgmesh.proto.metrics`: a small HTTP/1.1 listener that serves
``GET /metrics`` (``--metrics ADDR:PORT``), and the periodic log line of the counters that
changed (``--log-counters SECONDS``).

The listener answers one request per connection (RFC 9112; ``Connection: close``) from a table
of routes, path -> a function returning a :class:`Response`, so a status page can be added
beside ``/metrics``. It bounds what a client can cost: a request head longer than
:attr:`HttpLimits.max_head` gets 431, a client that does not send its head within
:attr:`HttpLimits.read_timeout` (or does not read the answer within ``write_timeout``) is
disconnected, and beyond :attr:`HttpLimits.max_connections` open connections a newcomer gets
503 at once. Request headers and bodies are not read beyond the head: nothing in them is used.
GET and HEAD are answered (405 for any other method, RFC 9110 section 15.5.6), unknown paths
get 404. It does no authentication: bind it to localhost (docs/operations.md, "Metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from wgmesh.errors import RemoteProtocolError, WgmeshError
from wgmesh.proto import metrics
from wgmesh.proto.endpoint import Endpoint

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may cost the listener."""

    max_head: int = 8192
    """Longest request head (request line and headers) read, in bytes."""
    read_timeout: float = 5.0
    """Seconds a client has to send its request head."""
    write_timeout: float = 5.0
    """Seconds a client has to take the answer."""
    max_connections: int = 16
    """Connections served at once; a newcomer beyond them gets 503."""


@dataclass(frozen=True, slots=True)
class Response:
    """An answer to a request."""

    status: int
    """The status code (one of :data:`REASONS`)."""
    body: bytes = b""
    """The content."""
    content_type: str = "text/plain; charset=utf-8"
    """Its media type."""
    headers: tuple[tuple[str, str], ...] = ()
    """More header fields."""

    def encode(self, head_only: bool = False) -> bytes:
        """The whole HTTP/1.1 message; ``head_only``: without the body (HEAD)."""
        lines = [
            f"HTTP/1.1 {self.status} {REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


Route = Callable[[], Response]
"""Makes the answer to a GET of one path (called on the event loop: it must be quick)."""


def error(status: int, *headers: tuple[str, str]) -> Response:
    return Response(status, f"{status} {REASONS[status]}\n".encode(), headers=headers)


def metrics_route(collect: Callable[[], Sequence[metrics.Family]]) -> Route:
    """The route serving ``collect()``'s families as exposition text."""

    def route() -> Response:
        return Response(200, metrics.render(collect()).encode(), metrics.CONTENT_TYPE)

    return route


def parse_request_line(head: bytes) -> tuple[str, str]:
    """(method, path) from a request head (the query string left out); RemoteProtocolError
    when its first line is not ``METHOD SP TARGET SP HTTP/1.x`` (RFC 9112 section 3)."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        raise RemoteProtocolError("not an HTTP request line")
    method, target, version = parts
    if not method.isalpha() or not method.isupper() or len(method) > 16:
        raise RemoteProtocolError("not an HTTP method")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise RemoteProtocolError("not HTTP/1.x")
    if not target.startswith(b"/") or not all(0x21 <= b <= 0x7E for b in target):
        raise RemoteProtocolError("not an origin-form request target")
    return method.decode("ascii"), target.split(b"?", 1)[0].decode("ascii")


def respond(routes: Mapping[str, Route], head: bytes) -> tuple[Response, bool]:
    """The answer to a request head, and whether it goes without its body (HEAD)."""
    try:
        method, path = parse_request_line(head)
    except RemoteProtocolError:
        return error(400), False
    route = routes.get(path)
    if route is None:
        return error(404), method == "HEAD"
    if method not in METHODS:
        return error(405, ("Allow", ", ".join(METHODS))), False
    return route(), method == "HEAD"


class ListenFailure(WgmeshError):
    """The listener could not bind its address (exit status 1)."""


class HttpListener:
    """``await HttpListener.start(endpoint, routes)``; ``close()`` and ``await wait_closed()``."""

    def __init__(self, routes: Mapping[str, Route], limits: HttpLimits) -> None:
        self.routes = dict(routes)
        self.limits = limits
        self.port = 0
        self.rejected = 0
        """Connections turned away with 503 (too many open)."""
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(
        cls, endpoint: Endpoint, routes: Mapping[str, Route], limits: HttpLimits | None = None
    ) -> HttpListener:
        """Listen on ``endpoint`` (port 0: a free one, then in :attr:`port`)."""
        self = cls(routes, limits or HttpLimits())
        host = str(endpoint.ip)
        try:
            self._server = await asyncio.start_server(
                self._serve, host, endpoint.port, limit=self.limits.max_head
            )
        except OSError as exc:
            raise ListenFailure(
                f"cannot listen for HTTP on {endpoint} (TCP): {exc.strerror}"
            ) from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        if len(self._open) >= limits.max_connections:
            self.rejected += 1
            await self._send(writer, error(503).encode())
            writer.close()
            return
        self._open.add(writer)
        try:
            try:
                async with asyncio.timeout(limits.read_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._send(writer, error(431).encode())
                await self._discard(reader)
                return
            except TimeoutError:
                await self._send(writer, error(408).encode())
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            response, head_only = respond(self.routes, head)
            await self._send(writer, response.encode(head_only))
        finally:
            self._open.discard(writer)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Send ``data`` and end our side (the client may still be sending)."""
        writer.write(data)
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self.limits.write_timeout):
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        """Read and drop what the client is still sending (at most 8 heads' worth, for at most
        ``read_timeout``) before closing: closing on unread input resets the connection, and
        the reset can destroy our answer before the client reads it (a lingering close)."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self.limits.read_timeout):
                for _ in range(8):
                    if not await reader.read(self.limits.max_head):
                        return

    def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for w in list(self._open):
            w.close()

    async def wait_closed(self) -> None:
        """Wait (at most 2 s) until the server is gone."""
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


async def log_counters(
    collect: Callable[[], Sequence[metrics.Family]],
    interval: float,
    log: logging.Logger,
    prefix: str,
) -> None:
    """Every ``interval`` seconds, one INFO line with the counters that changed since the
    last one (none when nothing changed); runs until cancelled."""
    before: dict[str, float] = {}
    while True:
        await asyncio.sleep(interval)
        after = metrics.counter_values(collect())
        changes = metrics.changed(before, after)
        if changes:
            log.info("counters: %s", metrics.describe_changes(changes, prefix))
        before = after
