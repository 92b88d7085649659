"""The relay's UDP sockets: one per allocated relay port, and the userspace forwarding path.

The registrar keeps a socket bound on every relay port in both relay modes (issue 12,
docs/relay-userspace.md): peers send their sealed binds, STUN-framed (RFC 8489 section 5
header: the magic cookie at offset 4, the top two bits of the first byte zero), from their
WireGuard port to their relay port, and the relay core learns each peer's mapping from them.
Every datagram that reaches a relay socket is, in this order:

1. longer than :attr:`RelayUdpConfig.max_datagram`: dropped unread (``oversize``);
2. STUN-framed: handed to ``on_control(data, source, port)`` (``control``), never forwarded,
   never answered here (the core decides; replies leave from the registrar's own port);
3. in kernel mode (``forward`` False): dropped (``dropped_kernel_mode``); nftables forwards the
   bound traffic before it reaches a socket, so what arrives here is not to be forwarded;
4. from the port's bound peer in the :class:`~wgmesh.proto.relayroute.RouteTable`: sent from
   the socket of ``route.from_port`` to ``route.to`` (``forwarded``; ``send_failed`` if the
   kernel refuses it); from anyone else, or at a port without a pair: dropped
   (``dropped_unbound``).

One datagram out per datagram in, never more, and only to an address the table names.

Where recvmmsg is available (:func:`wgmesh.registry.udpbatch.available`), a readable relay
socket is read in batches of up to :attr:`RelayUdpConfig.batch` datagrams into one set of
buffers that all relay sockets share (:class:`_Ring`: the loop serves one batch to its end, so
memory does not grow with the ports), and the datagrams to forward are sent with one sendmmsg
on the destination socket straight from the receive slots (no copy). All of a port's
forwarded datagrams go to the same destination, so the common batch, every datagram from the
bound peer and none STUN-framed, is checked and sent with a handful of C-level slice
operations (lengths, cookies and the batch's sockaddrs compared at once) and no Python work
per datagram; any other batch is sorted datagram by datagram. Elsewhere each port is a plain
asyncio datagram endpoint (forwarding to a transport whose queue is past its high-water mark
drops, so nothing is buffered without bound).

Idle pairs: :meth:`RelaySockets.counters` (per port: datagrams and bytes forwarded from its
bound peer) and :meth:`RelaySockets.take_active` (the ports that forwarded since the last
call) let the core's timer see traffic without a clock read per datagram.

IPv4 only for now: an IPv6 relay host needs a ring with 28-byte names and ``sockaddr_in6``
forms in :class:`~wgmesh.proto.relayroute.PortRoute`; the sorting and the counters stay.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from wgmesh.errorlog import ERROR_LOG_INTERVAL, ErrorLog
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import PortRoute, RouteTable
from wgmesh.proto.stun import COOKIE_BYTES, HEADER_LEN
from wgmesh.registry import udpbatch
from wgmesh.registry.udpbatch import MSG_DONTWAIT, Iovec, Mmsghdr

log = logging.getLogger("wgmesh.relay")

ControlHandler = Callable[[bytes, Endpoint, int], None]
"""(datagram, its source, the relay port it arrived at) -> None: the relay core's input."""

_COOKIE_WORD = int.from_bytes(COOKIE_BYTES, sys.byteorder)
"""The magic cookie as the native-order 32-bit word a uint32 view of a slot reads."""
_SIN_LEN = 16
"""sizeof(struct sockaddr_in)."""
_SIN_FAMILY = socket.AF_INET.to_bytes(2, sys.byteorder)
"""sin_family as Linux lays it out (host byte order); the port and address follow."""
_SIN_ZERO = bytes(8)
"""sin_zero: the kernel clears it in the addresses it reports, so whole sockaddrs compare."""


def looks_like_stun(data: bytes) -> bool:
    """A STUN header (RFC 8489 section 5): >= 20 bytes, the top two bits zero, the magic
    cookie at offset 4. WireGuard messages (type 1..4, then three zero bytes, then a random
    32-bit index) match only when that index happens to equal the cookie."""
    return len(data) >= HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == COOKIE_BYTES


@dataclass(frozen=True, slots=True)
class RelayUdpConfig:
    """Tuning of the relay sockets."""

    max_datagram: int = 9216
    """Longest datagram taken (``oversize`` beyond). WireGuard sends its MTU plus 32 bytes:
    1,452 at the usual 1,420, 8,952 on a jumbo-frame path; nothing larger is WireGuard."""
    batch: int = udpbatch.BATCH
    """Datagrams per recvmmsg/sendmmsg call."""
    max_batches: int = udpbatch.MAX_BATCHES
    """Batches served per readable event before the loop turns to the other sockets."""
    socket_buffer: int = 4 << 20
    """SO_RCVBUF and SO_SNDBUF asked for (the kernel caps them at net.core.rmem_max and
    wmem_max): a tunnel's burst waits here while the loop serves another port."""
    error_log_interval: float = ERROR_LOG_INTERVAL
    """Seconds between two logged ``on_control`` exceptions (:class:`ErrorLog`)."""

    def __post_init__(self) -> None:
        if not HEADER_LEN <= self.max_datagram <= 65535:
            raise ValueError(f"max_datagram out of range: {self.max_datagram}")
        if not 1 <= self.batch <= 1024 or self.max_batches < 1:
            raise ValueError("batch must be 1..1024 and max_batches >= 1")


@dataclass(slots=True)
class RelayStats:
    """What the relay sockets saw. Every datagram received is counted in exactly one of
    forwarded, send_failed, dropped_unbound, dropped_kernel_mode, control and oversize."""

    received: int = 0
    forwarded: int = 0
    """Sent on to the other leg's peer (the kernel took them)."""
    forwarded_bytes: int = 0
    """UDP payload bytes of ``forwarded``."""
    dropped_unbound: int = 0
    """Not STUN-framed, and the port has no pair or the source is not its bound peer."""
    dropped_kernel_mode: int = 0
    """Not STUN-framed, arrived while ``forward`` was off (nftables forwards)."""
    control: int = 0
    """STUN-framed: handed to ``on_control``."""
    send_failed: int = 0
    """To be forwarded, but the kernel refused the send (full buffer, unreachable, a
    firewall), or the table names a ``from_port`` that is not open here."""
    oversize: int = 0
    """Longer than ``max_datagram``: dropped unread."""
    batches: int = 0
    """recvmmsg calls that returned datagrams (batched path)."""
    control_errors: int = 0
    """``on_control`` raised (a bug; logged, rate-limited): included in ``control``."""
    socket_errors: int = 0
    """Errors a socket reported after the fact (asyncio fallback: ``error_received``)."""


@dataclass(frozen=True, slots=True)
class PortCounters:
    """One relay port's traffic, for the core's idle check (a pair is idle while neither of
    its ports' counters moves between two looks)."""

    forwarded: int
    """Datagrams from the port's bound peer forwarded to the other leg."""
    forwarded_bytes: int
    """Their payload bytes."""


_UintCode = Literal["I", "L", "Q"]


def _uint_code(size: int) -> _UintCode:
    """The array/memoryview type code of an unsigned integer of ``size`` bytes."""
    codes: tuple[_UintCode, ...] = ("I", "L", "Q")
    for code in codes:
        if array.array(code).itemsize == size:
            return code
    raise OSError(f"no {size}-byte integer type")


class _Ring:
    """The batch buffers every relay socket shares, and views that read or write one field of
    all slots in one C-level slice operation."""

    def __init__(self, batch: int, max_datagram: int) -> None:
        n = self.n = batch
        self.limit = max_datagram
        """Longer datagrams are oversize."""
        # at least one byte longer than max_datagram (a datagram longer than the slot is cut
        # to it: still longer than the limit), rounded up so each slot's offset-4 word is
        # aligned for the uint32 view
        self.slot = slot = (max_datagram + 1 + 7) & ~7
        self.data = ctypes.create_string_buffer(n * slot)
        self.names = ctypes.create_string_buffer(n * _SIN_LEN)
        self.dest = ctypes.create_string_buffer(_SIN_LEN)
        self.riov = (Iovec * n)()
        self.siov = (Iovec * n)()
        self.rmsg = (Mmsghdr * n)()
        self.smsg = (Mmsghdr * n)()
        self.data_at = ctypes.addressof(self.data)
        self.names_at = ctypes.addressof(self.names)
        self.dest_at = ctypes.addressof(self.dest)
        self.rmsg_ref = ctypes.byref(self.rmsg)
        record = ctypes.sizeof(Mmsghdr)
        self.record = record
        for i in range(n):
            at = self.data_at + i * slot
            self.riov[i].iov_base = at
            self.riov[i].iov_len = slot
            self.siov[i].iov_base = at
            r = self.rmsg[i].msg_hdr
            r.msg_name = self.names_at + i * _SIN_LEN
            # an AF_INET socket always reports 16 bytes, so this is never reset per batch
            r.msg_namelen = _SIN_LEN
            r.msg_iov = ctypes.pointer(self.riov[i])
            r.msg_iovlen = 1
            s = self.smsg[i].msg_hdr
            s.msg_name = self.dest_at  # all of a flush goes to one destination
            s.msg_namelen = _SIN_LEN
            s.msg_iov = ctypes.pointer(self.siov[i])
            s.msg_iovlen = 1
        u32 = memoryview(self.rmsg).cast("B").cast("I")
        self.lens = u32[Mmsghdr.msg_len.offset // 4 :: record // 4]
        data = memoryview(self.data).cast("B")
        self.first = data[::slot]
        self.cookies = data.cast("I")[1 :: slot // 4]
        word = ctypes.sizeof(ctypes.c_size_t)
        if ctypes.sizeof(ctypes.c_void_p) != word:
            raise OSError("pointers and size_t differ in size")
        self.word_code = _uint_code(word)
        words = memoryview(self.siov).cast("B").cast(self.word_code)
        per = ctypes.sizeof(Iovec) // word
        self.out_base = words[Iovec.iov_base.offset // word :: per]
        self.out_len = words[Iovec.iov_len.offset // word :: per]
        self.slot_bases = array.array(self.word_code, (self.data_at + i * slot for i in range(n)))
        self.bases_moved = False
        """True when a sorted batch pointed send slots away from their own receive slots."""


class _Port:
    """One open relay port: its socket, its counters, and its rule in the forms the batch
    compares with (recomputed only when the table hands over a new rule)."""

    __slots__ = (
        "batch",
        "dest",
        "expect",
        "expect_all",
        "fd",
        "forwarded",
        "forwarded_bytes",
        "paused",
        "port",
        "reported",
        "rule",
        "sock",
        "transport",
    )

    def __init__(self, port: int, sock: socket.socket, batch: int) -> None:
        self.port = port
        self.sock = sock
        self.fd = sock.fileno()
        self.transport: asyncio.DatagramTransport | None = None
        self.forwarded = 0
        self.forwarded_bytes = 0
        self.reported = 0
        """``forwarded`` at the last :meth:`RelaySockets.take_active`."""
        self.rule: PortRoute | None = None
        self.expect = b""
        """The bound peer's whole sockaddr_in; b"" matches no datagram."""
        self.expect_all = b""
        """``expect`` once per slot of a full batch."""
        self.dest = bytes(_SIN_LEN)
        self.batch = batch
        self.paused = False
        """Fallback: the transport's queue is over its high-water mark; forwarding to it drops."""

    def refresh(self, rule: PortRoute | None) -> None:
        """Take the table's new rule for this port (an IPv6 leg on this IPv4 socket: none)."""
        self.rule = rule
        if rule is None or not rule.source_in4 or not rule.to_in4:
            self.expect = self.expect_all = b""
            self.dest = bytes(_SIN_LEN)
            return
        self.expect = _SIN_FAMILY + rule.source_in4 + _SIN_ZERO
        self.expect_all = self.expect * self.batch
        self.dest = _SIN_FAMILY + rule.to_in4 + _SIN_ZERO


class RelaySockets:
    """The UDP sockets of the relay ports on ``host``: :meth:`open` and :meth:`close` them as
    the core allocates and frees ports; every datagram is sorted as the module says, against
    ``table`` as it is when the datagram is handled. ``forward`` False is kernel mode (only
    binds are taken); it may be switched at any time, as may ``table`` be replaced."""

    def __init__(
        self,
        host: str,
        table: RouteTable,
        on_control: ControlHandler,
        *,
        forward: bool,
        config: RelayUdpConfig | None = None,
    ) -> None:
        if ipaddress.ip_address(host).version != 4:
            raise ValueError(f"relay ports are IPv4 only for now, not {host}")
        self.host = host
        self.table = table
        self.on_control = on_control
        self.forward = forward
        self.config = config = config if config is not None else RelayUdpConfig()
        self.stats = RelayStats()
        self._lib = udpbatch.libc() if udpbatch.available() else None
        self._ring = _Ring(config.batch, config.max_datagram) if self._lib is not None else None
        self._ports: dict[int, _Port] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error_log = ErrorLog("relay sockets", config.error_log_interval, log)

    @property
    def batched(self) -> bool:
        """True when the sockets are read with recvmmsg (False: the asyncio fallback)."""
        return self._ring is not None

    async def open(self, port: int) -> int:
        """Bind ``port`` (0: any free port) and serve it; returns the bound port. A port open
        already is left as it is. OSError when it cannot be bound."""
        if port and port in self._ports:
            return port
        loop = asyncio.get_running_loop()
        sock = self._bind(port)
        st = _Port(sock.getsockname()[1], sock, self.config.batch)
        if self._ring is not None:
            loop.add_reader(st.fd, self._on_readable, st)
        else:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _PlainPort(self, st), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            st.transport = transport
        self._loop = loop
        self._ports[st.port] = st
        return st.port

    def close(self, port: int) -> None:
        """Stop serving ``port`` and close its socket (nothing if it is not open)."""
        st = self._ports.pop(port, None)
        if st is None:
            return
        if st.transport is not None:
            st.transport.close()
        else:
            if self._loop is not None and st.fd >= 0:
                self._loop.remove_reader(st.fd)
            st.sock.close()
        st.fd = -1

    def close_all(self) -> None:
        """Close every relay port."""
        for port in list(self._ports):
            self.close(port)

    def ports(self) -> frozenset[int]:
        """The open relay ports."""
        return frozenset(self._ports)

    def counters(self, port: int) -> PortCounters | None:
        """What ``port`` forwarded so far; None if it is not open."""
        st = self._ports.get(port)
        return None if st is None else PortCounters(st.forwarded, st.forwarded_bytes)

    def take_active(self) -> list[int]:
        """The open ports that forwarded anything since the last call: what the core's
        ``Relay.touch(port, now)`` is told, from a timer (no clock read per datagram)."""
        active = []
        for st in self._ports.values():
            if st.forwarded != st.reported:
                st.reported = st.forwarded
                active.append(st.port)
        return active

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, self.config.socket_buffer)
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _control(self, st: _Port, data: bytes, addr: tuple[str, int] | None) -> None:
        self.stats.control += 1
        if addr is None:  # not an address family this socket can report
            return
        try:
            self.on_control(data, Endpoint.of(addr[0], addr[1]), st.port)
        except Exception as exc:  # a bug in the core: this datagram is lost, the port lives on
            self.stats.control_errors += 1
            self._error_log(exc, f"on_control raised on {addr} at relay port {st.port}")

    # -- the batched path ---------------------------------------------------------------

    def _on_readable(self, st: _Port) -> None:
        batch = self.config.batch
        try:
            for _ in range(self.config.max_batches):
                if st.fd < 0 or self._batch(st) < batch:
                    return
        except Exception as exc:  # a bug here: the batch is lost, the port must live on
            self._error_log(exc, f"bug in the relay batch loop (port {st.port})")

    def _batch(self, st: _Port) -> int:
        ring, lib = self._ring, self._lib
        assert ring is not None and lib is not None
        n: int = lib.recvmmsg(st.fd, ring.rmsg_ref, ring.n, MSG_DONTWAIT, None)
        if n <= 0:
            return 0
        stats = self.stats
        stats.received += n
        stats.batches += 1
        lens: list[int] = ring.lens[:n].tolist()
        rule = self.table.port_route(st.port)
        if rule is not st.rule:
            st.refresh(rule)
        if max(lens) > ring.limit or _COOKIE_WORD in ring.cookies[:n].tolist():
            return self._sort(st, rule, n, lens)
        # no datagram is oversize or STUN-framed: the whole batch shares one fate, unless
        # its sources differ
        if not self.forward:
            stats.dropped_kernel_mode += n
            return n
        if rule is None:
            stats.dropped_unbound += n
            return n
        names = ctypes.string_at(ring.names_at, n * _SIN_LEN)
        if names != (st.expect_all if n == ring.n else st.expect_all[: n * _SIN_LEN]):
            return self._sort(st, rule, n, lens)
        if ring.bases_moved:
            ring.out_base[:n] = ring.slot_bases[:n]
            ring.bases_moved = False
        ring.out_len[:n] = array.array(ring.word_code, lens)
        self._send(st, rule, n, lens)
        return n

    def _sort(self, st: _Port, rule: PortRoute | None, n: int, lens: list[int]) -> int:
        """The batch datagram by datagram: it mixes sources, sizes or control messages."""
        ring, stats = self._ring, self.stats
        assert ring is not None
        first: list[int] = ring.first[:n].tolist()
        cookies: list[int] = ring.cookies[:n].tolist()
        names = ctypes.string_at(ring.names_at, n * _SIN_LEN)
        slot, limit, data_at = ring.slot, ring.limit, ring.data_at
        out_base, out_len = ring.out_base, ring.out_len
        ring.bases_moved = True
        out: list[int] = []
        for i in range(n):
            length = lens[i]
            if length > limit:
                stats.oversize += 1
                continue
            name = names[i * _SIN_LEN : (i + 1) * _SIN_LEN]
            if length >= HEADER_LEN and cookies[i] == _COOKIE_WORD and not first[i] & 0xC0:
                if out and rule is not None:  # the core may change the table: send first
                    self._send(st, rule, len(out), out)
                    out = []
                data = ctypes.string_at(data_at + i * slot, length)
                self._control(st, data, udpbatch.sockaddr_tuple(name))
                rule = self.table.port_route(st.port)
                if rule is not st.rule:
                    st.refresh(rule)
                continue
            if not self.forward:
                stats.dropped_kernel_mode += 1
            elif rule is None or name != st.expect:
                stats.dropped_unbound += 1
            else:
                k = len(out)
                out_base[k] = data_at + i * slot
                out_len[k] = length
                out.append(length)
        if out and rule is not None:
            self._send(st, rule, len(out), out)
        return n

    def _send(self, st: _Port, rule: PortRoute, k: int, lens: list[int]) -> None:
        """Send the first ``k`` send slots (lengths ``lens``) from ``rule``'s port to its
        peer, with as few sendmmsg calls as the kernel allows; count them on ``st``."""
        ring, lib, stats = self._ring, self._lib, self.stats
        assert ring is not None and lib is not None
        dst = self._ports.get(rule.route.from_port)
        if dst is None or dst.fd < 0:
            stats.send_failed += k
            return
        ctypes.memmove(ring.dest_at, st.dest, _SIN_LEN)
        sent = 0
        while sent < k:
            m: int = lib.sendmmsg(
                dst.fd, ctypes.byref(ring.smsg, sent * ring.record), k - sent, MSG_DONTWAIT
            )
            if m <= 0:  # the one destination refuses: the rest of this flush would fail too
                stats.send_failed += k - sent
                log.debug("relay send to %s: errno %d", rule.route.to, ctypes.get_errno())
                break
            sent += m
        size = sum(lens[:sent]) if sent < k else sum(lens)
        stats.forwarded += sent
        stats.forwarded_bytes += size
        st.forwarded += sent
        st.forwarded_bytes += size

    # -- the asyncio fallback ---------------------------------------------------------

    def _plain(self, st: _Port, data: bytes, addr: tuple[str, int]) -> None:
        stats = self.stats
        stats.received += 1
        if len(data) > self.config.max_datagram:
            stats.oversize += 1
            return
        if looks_like_stun(data):
            self._control(st, data, (addr[0], addr[1]))
            return
        if not self.forward:
            stats.dropped_kernel_mode += 1
            return
        rule = self.table.port_route(st.port)
        if rule is None or addr != rule.source_addr:
            stats.dropped_unbound += 1
            return
        dst = self._ports.get(rule.route.from_port)
        if dst is None or dst.transport is None or dst.paused or dst.transport.is_closing():
            stats.send_failed += 1
            return
        if data:
            dst.transport.sendto(data, rule.to_addr)
        else:  # asyncio's sendto drops an empty datagram without a word; UDP carries them
            try:
                dst.sock.sendto(data, rule.to_addr)
            except OSError:
                stats.send_failed += 1
                return
        stats.forwarded += 1
        stats.forwarded_bytes += len(data)
        st.forwarded += 1
        st.forwarded_bytes += len(data)


class _PlainPort(asyncio.DatagramProtocol):
    """One relay port on the portable path, where recvmmsg is not available."""

    def __init__(self, relay: RelaySockets, st: _Port) -> None:
        self.relay = relay
        self.st = st

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.st.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay._plain(self.st, data, addr)

    def pause_writing(self) -> None:
        self.st.paused = True  # the queue is past the transport's high-water mark (64 KiB)

    def resume_writing(self) -> None:
        self.st.paused = False

    def error_received(self, exc: Exception) -> None:
        self.relay.stats.socket_errors += 1
        log.debug("relay port %d: %s", self.st.port, exc)
