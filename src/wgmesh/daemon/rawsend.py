"""Send UDP datagrams from the WireGuard listen port through raw sockets (CAP_NET_RAW).

WireGuard owns its port, so we cannot bind it; but a raw IPPROTO_UDP socket may send a
datagram whose hand-built UDP header names that port as the source. Behind a port-preserving
NAT it gets exactly the public mapping WireGuard's own packets get (docs/lab.md, "What the lab
machines do"), which is what the registrar must observe; behind an IPv6 stateful firewall (no
NAT) it opens the same flow WireGuard's packets use.

One raw socket per address family, opened on first use: an IPv6-only or an IPv4-only host
needs only its own family, and a family the host lacks fails as OSError at send time like a
missing route (the caller skips it). The UDP checksum (RFC 768) covers a pseudo-header: the
IPv4 one (RFC 768), or the IPv6 one of RFC 8200 section 8.1 (source, destination, 32-bit
length, next header 17), where it is mandatory (a zero checksum is dropped). We compute both
ourselves rather than set IPV6_CHECKSUM, so the checksum is one pure function that tests
check byte for byte; the IPv6 source address is then pinned with IPV6_PKTINFO to the one the
checksum was computed over (the kernel's own choice toward the destination, found by
connecting an ordinary UDP socket, as for IPv4).

A raw UDP socket also receives a copy of every UDP datagram the host gets; we never read from
it, so a classic-BPF filter that accepts nothing (``ret #0``) is attached to keep the kernel
from queueing those copies. Replies from the registrar come back on the daemon's ordinary
control socket instead (docs/protocol.md explains why).
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct

from wgmesh.errors import ConfigError
from wgmesh.proto.endpoint import Endpoint

SO_ATTACH_FILTER = 26
DEFAULT_TTL = 64
"""IPv4 TTL and IPv6 hop limit of ordinary sends."""
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


def pseudo_header(src: Endpoint, dst: Endpoint, length: int) -> bytes:
    """The pseudo-header the UDP checksum covers: RFC 768's for IPv4, RFC 8200 section 8.1's
    for IPv6. ValueError when the two addresses are of different families."""
    if src.family != dst.family:
        raise ValueError(f"source {src} and destination {dst} are of different families")
    if src.family == 4:
        return src.ip.packed + dst.ip.packed + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    return src.ip.packed + dst.ip.packed + struct.pack("!I3xB", length, socket.IPPROTO_UDP)


def udp_datagram(src: Endpoint, dst: Endpoint, payload: bytes) -> bytes:
    """A UDP header (checksum over the pseudo-header of the addresses' family) followed by the
    payload."""
    length = 8 + len(payload)
    header = struct.pack("!HHHH", src.port, dst.port, length, 0)
    csum = _checksum(pseudo_header(src, dst, length) + header + payload)
    return struct.pack("!HHHH", src.port, dst.port, length, csum) + payload


def source_address_for(dst: Endpoint) -> str:
    """The local address the kernel would use toward ``dst`` (no packet is sent); OSError
    (ENETUNREACH, EADDRNOTAVAIL, EAFNOSUPPORT) when the host has no route of that family."""
    with socket.socket(_FAMILIES[dst.family], socket.SOCK_DGRAM) as s:
        s.connect(dst.sockaddr())
        return str(s.getsockname()[0]).split("%", 1)[0]


def _open_raw(family: int) -> socket.socket:
    try:
        sock = socket.socket(_FAMILIES[family], socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        raise ConfigError(
            "a raw socket needs root or CAP_NET_RAW (the daemon sends its probes from the "
            "WireGuard port); run as root or give the unit AmbientCapabilities=CAP_NET_RAW"
        ) from None
    sock.setblocking(False)
    return sock


class RawSender:
    """Sends datagrams with source port = the WireGuard listen port, over IPv4 or IPv6 as the
    destination says."""

    def __init__(self, wg_port: int) -> None:
        self.wg_port = wg_port
        self._filter = (ctypes.c_ubyte * 8)(*struct.pack("HBBI", 0x06, 0, 0, 0))
        self._socks: dict[int, socket.socket] = {}
        for family in _FAMILIES:  # a missing capability is a ConfigError now, not at a send
            with contextlib.suppress(OSError):  # a family the host lacks: retried per send
                self._socket(family)

    def _socket(self, family: int) -> socket.socket:
        sock = self._socks.get(family)
        if sock is None:
            sock = _open_raw(family)
            prog = struct.pack("HL", 1, ctypes.addressof(self._filter))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            self._socks[family] = sock
        return sock

    def send(self, dst: Endpoint, payload: bytes, ttl: int = DEFAULT_TTL) -> None:
        """Send one datagram from the WireGuard port with this TTL (IPv4) or hop limit (IPv6);
        errors (no route, no such family on the host) are raised as OSError."""
        src_ip = source_address_for(dst)
        datagram = udp_datagram(Endpoint.of(src_ip, self.wg_port), dst, payload)
        sock = self._socket(dst.family)
        if dst.family == 4:
            level, option = socket.IPPROTO_IP, socket.IP_TTL
        else:
            level, option = socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
        if ttl != DEFAULT_TTL:
            sock.setsockopt(level, option, ttl)
        try:
            if dst.family == 4:
                sock.sendto(datagram, (str(dst.ip), 0))
            else:  # the source the checksum covers, whatever the kernel would pick now
                info = Endpoint.of(src_ip, 0).ip.packed + struct.pack("@I", 0)
                ancillary = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)]
                sock.sendmsg([datagram], ancillary, 0, (str(dst.ip), 0))
        finally:
            if ttl != DEFAULT_TTL:
                sock.setsockopt(level, option, DEFAULT_TTL)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
