"""Serve a UDP socket in batches: recvmmsg(2) and sendmmsg(2) from the event loop's reader.

Why: a registrar's DNS and STUN sockets answer small datagrams that mostly hit a cache, so the
cost per datagram is the event loop's per-datagram work and two system calls, not our code
(a DNS cache hit is 0.65 us of Python; uvloop's datagram path costs about 7 us more). Linux can
receive and send up to :data:`BATCH` datagrams per system call; neither asyncio nor uvloop
exposes that, so this module calls libc through ctypes. bench/dns_qps.py measures the gain
(docs/benchmarks.md). Where libc has no recvmmsg (not Linux), :func:`available` is False and
the callers use an ordinary asyncio DatagramProtocol.

The handler gets each datagram's bytes and the raw sockaddr it came from, and returns the
reply (sent to that sockaddr) or None. Datagrams that did not fit :attr:`BatchedUdp.size` bytes
are dropped unread and counted; replies too large for a send slot go out with a plain
``sendto``. One reader callback handles at most :data:`MAX_BATCHES` batches, so a flood cannot
starve the rest of the event loop. Replies overwrite their requests in the receive slots, which
the send side points at; a ``fast`` path (:class:`InPlace`: the STUN socket's plain Binding
Requests) answers there without the handler and without making a bytes object.

A handler that raises is a bug, but it costs only the datagram it was handling: that datagram
is dropped and counted (``errors``, and the caller's ``on_error``), the exception is logged with
its traceback at most once per ``error_log_interval`` seconds per socket (:class:`ErrorLog`), and
the rest of the batch is answered as usual. Failed sends (OSError: a full socket buffer, an
unreachable address, a firewall's EPERM) are expected and only counted (``send_failed``).

**Every reply leaves from the address its request came to.** A socket bound to a concrete
address does that by itself. A socket bound to a wildcard (``0.0.0.0``, ``::``) would let the
kernel pick the source by the route, which on a host with a second address (a floating IP, a
VIP) is the wrong one and makes clients drop the answer; so on wildcard sockets the kernel is
asked for each datagram's destination (``IP_PKTINFO``, ``IPV6_RECVPKTINFO``: the ancillary data
lands in a control slot next to each receive slot) and every reply is sent with that address as
its source (the same control bytes, rewritten in place into the send form). Why this and not
one socket per address: an address added after the start (a VIP moving to this host on
failover) is served at once, with no interface scan and no restart; a concrete address costs
nothing per datagram, a wildcard one about 0.3 us per answer (two slice assignments and the
send slot's control fields). ``current_local()`` tells a handler
the local address of the datagram it is handling, and ``sendto(..., local=...)`` sends from
it (pushes, answers sent outside the batch).

An IPv6 wildcard is bound with ``IPV6_V6ONLY`` set explicitly (:func:`v6only_for`): off when no
IPv4 address is listened on too (``::`` alone serves both families; IPv4 sources come as
``::ffff:a.b.c.d``, their destination as a mapped IPV6_PKTINFO, which the kernel also takes on
send), on otherwise (Linux refuses ``0.0.0.0:P`` next to a dual-stack ``[::]:P``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from wgmesh.errorlog import ERROR_LOG_INTERVAL, ErrorLog

log = logging.getLogger("wgmesh.udp")

BATCH = 64
"""Datagrams per recvmmsg/sendmmsg call."""
MAX_BATCHES = 16
"""Batches handled per reader callback before yielding to the event loop."""
NAME_SIZE = 128
"""sizeof(struct sockaddr_storage)."""
NAME_V4 = 16
NAME_V6 = 28
"""sizeof(struct sockaddr_in), sizeof(struct sockaddr_in6)."""
MSG_DONTWAIT = 0x40
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
"""Linux's value; Python has the name only from 3.13 on."""
CONTROL_SIZE = 64
"""Bytes of ancillary data per slot: CMSG_SPACE(sizeof(struct in6_pktinfo)) is 40."""
_CMSG_HEADER = ctypes.sizeof(ctypes.c_size_t) + 8
"""sizeof(struct cmsghdr): cmsg_len (size_t), cmsg_level, cmsg_type (int); the data follows
(CMSG_DATA is aligned to size_t, which this already is)."""
_MAPPED = bytes(10) + b"\xff\xff"
"""The first 12 bytes of an IPv4-mapped IPv6 address."""
_ZERO4 = bytes(4)

Handler = Callable[[bytes, bytes], bytes | None]
"""(datagram, raw sockaddr) -> reply or None."""
AddressHandler = Callable[[bytes, "tuple[str, int] | None"], bytes | None]
"""(datagram, (host, port) or None when not asked for) -> reply or None."""


class InPlace(Protocol):
    """A fast path for datagrams from IPv4 sources (IPv4-mapped ones on a dual-stack socket
    too) that makes no bytes objects: it answers a datagram by overwriting it where it was
    received (``stun.PlainBindingResponder`` is one)."""

    @property
    def answer_size(self) -> int:
        """The length of its usual answer: send slots are preset to it."""

    def answer_in_place(
        self, buf: memoryview, at: int, length: int, port: int, address: int
    ) -> int:
        """Overwrite the datagram ``buf[at : at + length]`` from ``address`` (an integer) and
        ``port`` with its answer and return the answer's length (at most the socket's
        ``size``), or return 0, untouched, to hand the datagram to the ordinary handler."""


_SOCKADDR = struct.Struct("!HHI")
"""sin_family (compared in its wire form: :data:`_FAMILY4`), sin_port, sin_addr."""
_MAPPED_ADDR = struct.Struct("!12sI")
"""sin6_addr of an IPv4-mapped source: the prefix and the IPv4 address."""
_AF_INET = socket.AF_INET.to_bytes(2, sys.byteorder)
_AF_INET6 = socket.AF_INET6.to_bytes(2, sys.byteorder)
_FAMILY4 = int.from_bytes(_AF_INET, "big")
_FAMILY6 = int.from_bytes(_AF_INET6, "big")


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


_MM = ctypes.sizeof(_Mmsghdr)
"""Bytes per mmsghdr: the slots are read and written through memoryviews at these offsets,
since a ctypes attribute access costs more than the rest of a plain STUN answer."""
_HDR = _Mmsghdr.msg_hdr.offset
_NAME = struct.Struct("@PI")
"""msg_name, msg_namelen (adjacent at the head of a msghdr)."""
_NAMELEN_AT = _HDR + _Msghdr.msg_namelen.offset
_CONTROL = struct.Struct("@PN")
"""msg_control, msg_controllen (adjacent)."""
_CONTROL_AT = _HDR + _Msghdr.msg_control.offset
_CONTROLLEN_AT = _HDR + _Msghdr.msg_controllen.offset
_LEN_AT = _Mmsghdr.msg_len.offset
_U32 = struct.Struct("@I")
_SIZE = struct.Struct("@N")
_IOV_LEN_AT = _Iovec.iov_len.offset
_IOVEC = struct.Struct("@PN")
"""iov_base, iov_len."""
_IOV = ctypes.sizeof(_Iovec)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    if not hasattr(lib, "recvmmsg") or not hasattr(lib, "sendmmsg"):
        return None
    for fn in (lib.recvmmsg, lib.sendmmsg):
        fn.restype = ctypes.c_int
    return lib


_LIBC = _libc()


def available() -> bool:
    """True where recvmmsg/sendmmsg can be called (Linux with a libc that has them)."""
    return _LIBC is not None


Iovec = _Iovec
"""``struct iovec``, for other batched sockets (:mod:`wgmesh.registry.relayudp`)."""
Mmsghdr = _Mmsghdr
"""``struct mmsghdr``, for other batched sockets."""


def libc() -> ctypes.CDLL | None:
    """The libc whose ``recvmmsg``/``sendmmsg`` (restype int, errno kept) other batched sockets
    call directly; None where :func:`available` is False."""
    return _LIBC


@dataclass(slots=True)
class BatchStats:
    """What the batched socket saw."""

    received: int = 0
    sent: int = 0
    truncated: int = 0
    """Datagrams longer than the receive slot, dropped unread."""
    send_failed: int = 0
    """Replies the kernel did not take (socket buffer full, unreachable)."""
    batches: int = 0
    """recvmmsg calls that returned datagrams."""
    errors: int = 0
    """Datagrams dropped because the handler raised (a bug; see :class:`ErrorLog`)."""


class BatchedUdp:
    """Reads ``sock`` (non-blocking, bound) in batches and answers through ``handler``.

    ``start(loop)`` registers the reader; ``close()`` removes it and closes the socket. On a
    socket bound to a wildcard address every reply carries the destination of its request as
    its source (the module docstring); :func:`bind_udp` asks the kernel for that destination.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler,
        size: int = 4096,
        on_truncated: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
        error_log_interval: float = ERROR_LOG_INTERVAL,
        fast: InPlace | None = None,
        on_fast: Callable[[int], None] | None = None,
    ) -> None:
        if _LIBC is None:
            raise OSError("recvmmsg/sendmmsg are not available here")
        if fast is not None and fast.answer_size > size:
            raise ValueError(f"the fast path's answers ({fast.answer_size} bytes) exceed {size}")
        self.sock = sock
        self.handler = handler
        self.size = size
        self.stats = BatchStats()
        self.on_truncated = on_truncated
        """Called for each datagram dropped for its size (the caller's own counter)."""
        self.on_error = on_error
        """Called for each datagram dropped because the handler raised (the caller's counter)."""
        self.fast = None if fast is None else fast.answer_in_place
        """Asked first for each datagram from an IPv4 source (:class:`InPlace`)."""
        self.on_fast = on_fast
        """Called after each batch with the number of datagrams ``fast`` answered (when any)."""
        host = str(sock.getsockname()[0]).partition("%")[0]
        self.bound = _unmapped(socket.inet_pton(sock.family, host))
        """The packed address the socket is bound to (4 bytes for IPv4, 16 for IPv6)."""
        self.pktinfo = not any(self.bound)
        """Bound to a wildcard: each datagram's destination is read, and replies sent from it."""
        self.v6 = sock.family == socket.AF_INET6
        self._error_log = ErrorLog(f"udp port {sock.getsockname()[1]}", error_log_interval, log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current = 0
        """The slot of the datagram the handler is handling (:meth:`current_local`)."""
        self._used = 0
        """Receive slots the last recvmmsg filled (their lengths need resetting)."""
        n = BATCH
        # receive slots are one byte longer than `size`, so a datagram that fills a slot was
        # longer than `size`. Replies overwrite their requests (a handler's reply is copied
        # over its request, the fast path writes in place), and send slot k is preset to
        # receive slot k with its sockaddr: while no datagram of a batch has been dropped, the
        # send headers need no writes at all (only a reply of another length sets its iov)
        self._slot = size + 1
        self._in = ctypes.create_string_buffer(n * self._slot)
        self._names = ctypes.create_string_buffer(n * NAME_SIZE)
        self._control = ctypes.create_string_buffer(n * CONTROL_SIZE if self.pktinfo else 1)
        self._cview = memoryview(self._control).cast("B")
        self._riov = (_Iovec * n)()
        self._siov = (_Iovec * n)()
        self._rmsg = (_Mmsghdr * n)()
        self._smsg = (_Mmsghdr * n)()
        self._in_at = ctypes.addressof(self._in)
        self._names_at = ctypes.addressof(self._names)
        self._control_at = ctypes.addressof(self._control)
        self._namelen = NAME_V6 if self.v6 else NAME_V4
        """The kernel gives every datagram on this socket a sockaddr of this length."""
        self._preset = 0 if fast is None else fast.answer_size
        """The length send slots are preset to."""
        for i in range(n):
            self._riov[i].iov_base = self._siov[i].iov_base = self._in_at + i * self._slot
            self._riov[i].iov_len = self._slot
            self._siov[i].iov_len = self._preset
            r = self._rmsg[i].msg_hdr
            r.msg_name = self._names_at + i * NAME_SIZE
            r.msg_iov = ctypes.pointer(self._riov[i])
            r.msg_iovlen = 1
            r.msg_namelen = NAME_SIZE
            if self.pktinfo:
                r.msg_control = self._control_at + i * CONTROL_SIZE
                r.msg_controllen = CONTROL_SIZE
            s = self._smsg[i].msg_hdr
            s.msg_name = r.msg_name
            s.msg_namelen = self._namelen
            s.msg_iov = ctypes.pointer(self._siov[i])
            s.msg_iovlen = 1
        self._rview = memoryview(self._rmsg).cast("B")
        self._sview = memoryview(self._smsg).cast("B")
        self._siov_view = memoryview(self._siov).cast("B")
        self._inview = memoryview(self._in).cast("B")
        self._nview = memoryview(self._names).cast("B")
        self._rtemplate = bytes(self._rview)
        """The receive headers as set here: recvmmsg rewrites the name and control lengths,
        flags and lengths of the slots it fills, and copying this back resets them."""
        self._stemplate = bytes(self._sview)
        self._iovtemplate = bytes(self._siov_view)
        """The send headers and iovs as preset here: a batch that moved or resized slots copies
        these back over them."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start answering from ``loop``."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def get_extra_info(self, name: str, default: object = None) -> object:
        """As a transport's: "sockname" and "socket" are known."""
        if name == "sockname":
            return self.sock.getsockname()
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        """As a transport's."""
        return self.sock.fileno() < 0

    def current_local(self) -> bytes:
        """The packed local address (4 bytes for IPv4, an IPv4-mapped one included; 16 for
        IPv6) the datagram the handler is handling was sent to; for :meth:`sendto`'s
        ``local``. Only meaningful while a handler runs."""
        if not self.pktinfo:
            return self.bound
        o = self._current * CONTROL_SIZE + _CMSG_HEADER
        if self.v6:
            return _unmapped(bytes(self._cview[o : o + 16]))
        return bytes(self._cview[o + 8 : o + 12])

    def sendto(
        self,
        data: bytes,
        addr: tuple[str, int] | tuple[str, int, int, int],
        local: bytes = b"",
    ) -> None:
        """Send one datagram outside the batches (pushes, replies to other addresses); from
        ``local`` (a packed address, as :meth:`current_local` gives) on a wildcard socket, else
        from the address the kernel picks. An IPv4 ``addr`` on an IPv6 socket is sent mapped."""
        if self.v6 and ":" not in addr[0]:
            addr = ("::ffff:" + addr[0], addr[1])
        try:
            if local and self.pktinfo:
                self.sock.sendmsg([data], [pktinfo_control(self.v6, local)], 0, addr)
            else:
                self.sock.sendto(data, addr)
            self.stats.sent += 1
        except OSError as exc:
            self.stats.send_failed += 1
            log.debug("udp send to %s: %s", addr, exc)

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self._loop = None
        self.sock.close()

    def _on_readable(self) -> None:
        try:
            for _ in range(MAX_BATCHES):
                if self._batch() < BATCH:
                    return
        except Exception as exc:  # a bug here, not in a handler: the socket must live on
            self._error_log(exc, "bug in the batch loop; this batch's replies are lost")

    def _batch(self) -> int:
        assert _LIBC is not None
        fd = self.sock.fileno()
        if fd < 0:
            return 0
        rview, sview, smsg = self._rview, self._sview, self._smsg
        pktinfo = self.pktinfo
        # recvmmsg rewrites the name and control lengths of the slots it fills: only those of
        # the last batch need resetting (all of them were set in __init__)
        used = self._used * _MM
        if used:
            rview[:used] = self._rtemplate[:used]
        self._used = 0
        n: int = _LIBC.recvmmsg(fd, ctypes.byref(self._rmsg), BATCH, MSG_DONTWAIT, None)
        if n <= 0:
            return 0
        self._used = n
        stats = self.stats
        stats.batches += 1
        stats.received += n
        slot, size, handler, preset = self._slot, self.size, self.handler, self._preset
        inview, nview, iov, in_at = self._inview, self._nview, self._siov_view, self._in_at
        names_at, control_at, cview, v6 = self._names_at, self._control_at, self._cview, self.v6
        u32, size_t, namelen = _U32.unpack_from, _SIZE.unpack_from, self._namelen
        # where the address is in the received in_pktinfo / in6_pktinfo, and how long it is
        need = _CMSG_HEADER + (20 if v6 else 12)
        fast, sockaddr, mapped = self.fast, _SOCKADDR.unpack_from, _MAPPED_ADDR.unpack_from
        k = fasts = 0
        moved = BATCH
        """The first send slot whose header or iov this batch changed."""
        try:
            for i in range(n):
                at = i * _MM
                length = u32(rview, at + _LEN_AT)[0]
                if length >= slot:  # longer than `size`: it filled its slot, or more
                    stats.truncated += 1
                    if self.on_truncated is not None:
                        self.on_truncated()
                    continue
                name_at = i * NAME_SIZE
                data_at = i * slot
                out = 0
                if fast is not None:
                    family, port, address = sockaddr(nview, name_at)
                    if family == _FAMILY6:
                        prefix, address = mapped(nview, name_at + 8)
                        family = _FAMILY4 if prefix == _MAPPED else 0
                    if family == _FAMILY4:
                        try:
                            out = fast(inview, data_at, length, port, address)
                        except Exception as exc:  # a bug: as a handler's, it costs this datagram
                            self._handler_failed(exc, nview[name_at : name_at + namelen].tobytes())
                            continue
                if out:
                    fasts += 1
                else:
                    name = nview[name_at : name_at + namelen].tobytes()
                    if pktinfo:
                        self._current = i
                    try:
                        reply = handler(inview[data_at : data_at + length].tobytes(), name)
                    except Exception as exc:  # a bug: drop this datagram, answer the rest
                        self._handler_failed(exc, name)
                        continue
                    if reply is None:
                        continue
                    out = len(reply)
                    if out > size:
                        self._send_one(reply, name, self.current_local() if pktinfo else b"")
                        continue
                    inview[data_at : data_at + out] = reply
                if k != i:  # a datagram before it was dropped: point send slot k at this one
                    moved = min(moved, k)
                    _IOVEC.pack_into(iov, k * _IOV, in_at + data_at, out)
                    _NAME.pack_into(sview, k * _MM + _HDR, names_at + name_at, namelen)
                elif out != preset:
                    moved = min(moved, k)
                    _SIZE.pack_into(iov, k * _IOV + _IOV_LEN_AT, out)
                if pktinfo:
                    # the received pktinfo, rewritten in place into the one that sets the source:
                    # in6_pktinfo {addr, ifindex} with the ifindex cleared (the route picks the
                    # interface); in_pktinfo {ifindex, spec_dst, addr}: spec_dst = addr, ifindex 0
                    controllen = size_t(rview, at + _CONTROLLEN_AT)[0]
                    if controllen >= need:
                        o = i * CONTROL_SIZE + _CMSG_HEADER
                        if v6:
                            cview[o + 16 : o + 20] = _ZERO4
                        else:
                            cview[o + 4 : o + 8] = cview[o + 8 : o + 12]
                            cview[o : o + 4] = _ZERO4
                        _CONTROL.pack_into(sview, k * _MM + _CONTROL_AT,
                                           control_at + i * CONTROL_SIZE, controllen)  # fmt: skip
                    else:  # no destination given (cannot happen on Linux): the kernel picks
                        _SIZE.pack_into(sview, k * _MM + _CONTROLLEN_AT, 0)
                k += 1
            if fasts and self.on_fast is not None:
                self.on_fast(fasts)
            sent = 0
            while sent < k:  # sendmmsg may take fewer than asked; a failing datagram is skipped
                m: int = _LIBC.sendmmsg(fd, ctypes.byref(smsg, sent * _MM), k - sent, MSG_DONTWAIT)
                if m <= 0:
                    stats.send_failed += 1
                    sent += 1
                else:
                    stats.sent += m
                    sent += m
        finally:  # back to the presets, also when something above raised (a later batch
            # that moves nothing relies on them)
            if moved < BATCH:
                end = min(k + 1, BATCH)
                sview[moved * _MM : end * _MM] = self._stemplate[moved * _MM : end * _MM]
                iov[moved * _IOV : end * _IOV] = self._iovtemplate[moved * _IOV : end * _IOV]
        return n

    def _handler_failed(self, exc: Exception, name: bytes) -> None:
        self.stats.errors += 1
        if self.on_error is not None:
            self.on_error()
        self._error_log(
            exc, f"handler raised on a datagram from {sockaddr_tuple(name)}; dropped it"
        )

    def _send_one(self, reply: bytes, name: bytes, local: bytes) -> None:
        addr = sockaddr_tuple(name)
        if addr is None:
            self.stats.send_failed += 1
            return
        self.sendto(reply, addr, local)


def pktinfo_control(v6: bool, local: bytes) -> tuple[int, int, bytes]:
    """The ancillary item that makes a datagram leave from ``local`` (packed, 4 or 16 bytes),
    for ``socket.sendmsg`` on an IPv6 (``v6``) or IPv4 socket; an IPv4 address on an IPv6
    socket is given mapped, as the kernel wants it there."""
    if v6:
        address = _MAPPED + local if len(local) == 4 else local
        return socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, address + _ZERO4
    return socket.IPPROTO_IP, IP_PKTINFO, _ZERO4 + local + _ZERO4


def _unmapped(packed: bytes) -> bytes:
    """An IPv4-mapped IPv6 address as its 4 IPv4 bytes; any other unchanged."""
    return packed[12:] if len(packed) == 16 and packed[:12] == _MAPPED else packed


def sockaddr_tuple(name: bytes) -> tuple[str, int] | None:
    """The (host, port) of a raw sockaddr_in/sockaddr_in6, or None for anything else."""
    family = int.from_bytes(name[:2], sys.byteorder) if len(name) >= 2 else -1
    if len(name) >= 8 and family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), int.from_bytes(name[2:4], "big")
    if len(name) >= 24 and family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, name[8:24])
        return host, int.from_bytes(name[2:4], "big")
    return None


class _Plain(asyncio.DatagramProtocol):
    """The portable path, where recvmmsg is not available."""

    def __init__(
        self,
        handler: AddressHandler,
        max_datagram: int,
        on_truncated: Callable[[], None],
        on_error: Callable[[], None],
        error_log_interval: float,
    ):
        self.handler = handler
        self.max_datagram = max_datagram
        self.on_truncated = on_truncated
        self.on_error = on_error
        self.error_log = ErrorLog("udp", error_log_interval, log)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = self.transport.get_extra_info("sockname")
        if sockname:
            self.error_log.what = f"udp port {sockname[1]}"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > self.max_datagram:
            self.on_truncated()
            return
        try:
            reply = self.handler(data, addr)
        except Exception as exc:  # a bug: this datagram is dropped, the socket lives on
            self.on_error()
            self.error_log(exc, f"handler raised on a datagram from {addr}; dropped it")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp: %s", exc)


UdpEndpoint = asyncio.DatagramTransport | BatchedUdp
"""What :func:`open_udp` returns: both have sendto, is_closing, close, get_extra_info."""


def is_wildcard(host: str) -> bool:
    """``host`` is ``0.0.0.0`` or ``::`` (an address of each interface, present and future)."""
    return ipaddress.ip_address(host.partition("%")[0]).is_unspecified


def v6only_for(hosts: Sequence[str]) -> bool:
    """``IPV6_V6ONLY`` for the IPv6 sockets of a server listening on ``hosts``: off only when no
    IPv4 address is among them, so that ``::`` alone serves IPv4 too (mapped), and on as soon as
    one is, because Linux refuses to bind ``0.0.0.0:P`` (or any IPv4 address on P) next to a
    dual-stack ``[::]:P``: the default, both wildcards, then works with a socket per family."""
    return any(ipaddress.ip_address(h.partition("%")[0]).version == 4 for h in hosts)


async def bind_udp(host: str, port: int, *, v6only: bool = True) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (resolved as asyncio would), for
    :class:`BatchedUdp`; OSError when it cannot bind. An IPv6 socket gets ``IPV6_V6ONLY`` =
    ``v6only`` (set, never left to the sysctl); a wildcard one is asked for each datagram's
    destination address (IP_PKTINFO / IPV6_RECVPKTINFO), which its replies leave from."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(address)
        if not any(socket.inet_pton(family, str(sock.getsockname()[0]).partition("%")[0])):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        sock.close()
        raise
    return sock


E = TypeVar("E")


async def on_one_port(
    hosts: Sequence[str],
    port: int,
    open_one: Callable[[str, int], Awaitable[tuple[E, int]]],
    close: Callable[[E], None],
    attempts: int = 8,
) -> tuple[list[E], int]:
    """``open_one(host, port)`` (returning what it opened and the port it got) for every host,
    all on one port: with port 0 the first host's free port, then tried on the others, and
    another one (at most ``attempts`` in all) when one of them has it taken. Returns what was
    opened, in the order of ``hosts``, and the port; raises the last bind's OSError."""
    tries = attempts if port == 0 else 1
    for attempt in range(1, tries + 1):
        opened: list[E] = []
        try:
            first, got = await open_one(hosts[0], port)
            opened.append(first)
            for host in hosts[1:]:
                opened.append((await open_one(host, got))[0])
        except OSError:
            for e in opened:
                close(e)
            if attempt == tries:
                raise
            continue
        return opened, got
    raise AssertionError("unreachable")


async def open_udp(
    host: str,
    port: int,
    handler: AddressHandler,
    *,
    max_datagram: int,
    on_truncated: Callable[[], None] = lambda: None,
    on_error: Callable[[], None] = lambda: None,
    error_log_interval: float = ERROR_LOG_INTERVAL,
    with_address: bool = True,
    fast: InPlace | None = None,
    on_fast: Callable[[int], None] | None = None,
    v6only: bool = True,
) -> UdpEndpoint:
    """Bind host:port and answer every datagram of at most ``max_datagram`` bytes through
    ``handler`` (longer ones are dropped unread and reported to ``on_truncated``): batched
    where :func:`available`, an asyncio datagram endpoint elsewhere. A datagram whose handler
    raises is dropped and reported to ``on_error``, its exception logged (at most once per
    ``error_log_interval`` seconds). ``with_address=False`` spares a handler that ignores the
    sender the cost of decoding the address (it gets None). ``fast``, on the batched path,
    is asked first for datagrams from IPv4 sources (IPv4-mapped ones on a dual-stack socket
    too) and answers in place (:class:`InPlace`); ``on_fast`` gets, per batch, how many
    it answered. ``v6only``: as :func:`bind_udp`.

    The asyncio fallback reads no destination address: there, replies on a wildcard leave
    from the address the kernel picks (listen on concrete addresses on such platforms)."""
    loop = asyncio.get_running_loop()
    sock = await bind_udp(host, port, v6only=v6only)
    if not available():
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Plain(handler, max_datagram, on_truncated, on_error, error_log_interval),
            sock=sock,
        )
        return transport
    if with_address:

        def raw(data: bytes, name: bytes) -> bytes | None:
            addr = sockaddr_tuple(name)
            return None if addr is None else handler(data, addr)

    else:

        def raw(data: bytes, name: bytes) -> bytes | None:
            return handler(data, None)

    batched = BatchedUdp(
        sock,
        raw,
        size=max_datagram,
        on_truncated=on_truncated,
        on_error=on_error,
        error_log_interval=error_log_interval,
        fast=fast,
        on_fast=on_fast,
    )
    batched.start(loop)
    return batched
