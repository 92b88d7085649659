"""Send UDP datagrams from the WireGuard listen port through a raw socket (CAP_NET_RAW).

WireGuard owns its port, so we cannot bind it; but a raw IPPROTO_UDP socket may send a
datagram whose hand-built UDP header names that port as the source. Behind a port-preserving
NAT it gets exactly the public mapping WireGuard's own packets get (docs/lab.md, "What the lab
machines do"), which is what the registrar must observe.

A raw UDP socket also receives a copy of every UDP datagram the host gets; we never read from
it, so a classic-BPF filter that accepts nothing (``ret #0``) is attached to keep the kernel
from queueing those copies. Replies from the registrar come back on the daemon's ordinary
control socket instead (docs/protocol.md explains why).

IPv4 only for now: an IPv6 registrar needs IPV6_CHECKSUM handling (left for later).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from wgmesh.errors import ConfigError
from wgmesh.proto.endpoint import Endpoint

SO_ATTACH_FILTER = 26
DEFAULT_TTL = 64


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


def udp_datagram(src: Endpoint, dst: Endpoint, payload: bytes) -> bytes:
    """A UDP header (RFC 768, checksum over the IPv4 pseudo-header) followed by the payload."""
    length = 8 + len(payload)
    pseudo = src.ip.packed + dst.ip.packed + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    header = struct.pack("!HHHH", src.port, dst.port, length, 0)
    csum = _checksum(pseudo + header + payload)
    return struct.pack("!HHHH", src.port, dst.port, length, csum) + payload


def source_address_for(dst: Endpoint) -> str:
    """The local address the kernel would use toward ``dst`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(dst.sockaddr())
        return str(s.getsockname()[0])


class RawSender:
    """Sends datagrams with source port = the WireGuard listen port."""

    def __init__(self, wg_port: int) -> None:
        self.wg_port = wg_port
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        except PermissionError:
            raise ConfigError(
                "a raw socket needs root or CAP_NET_RAW (the daemon sends its probes from the "
                "WireGuard port); run as root or give the unit AmbientCapabilities=CAP_NET_RAW"
            ) from None
        self.sock.setblocking(False)
        self._filter = (ctypes.c_ubyte * 8)(*struct.pack("HBBI", 0x06, 0, 0, 0))
        prog = struct.pack("HL", 1, ctypes.addressof(self._filter))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)

    def send(self, dst: Endpoint, payload: bytes, ttl: int = DEFAULT_TTL) -> None:
        """Send one datagram from the WireGuard port; errors (no route) are raised as OSError."""
        src_ip = source_address_for(dst)
        datagram = udp_datagram(Endpoint.of(src_ip, self.wg_port), dst, payload)
        if ttl != DEFAULT_TTL:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        try:
            self.sock.sendto(datagram, (str(dst.ip), 0))
        finally:
            if ttl != DEFAULT_TTL:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, DEFAULT_TTL)

    def close(self) -> None:
        self.sock.close()
