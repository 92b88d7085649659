"""The raw sender's UDP header: checksums over the IPv4 and IPv6 pseudo-headers against an
independent formula and a worked example, and (as root) datagrams the kernel itself accepts
over loopback, from the WireGuard port, with the hop limit the priming packets use."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgmesh.daemon.rawsend import RawSender, pseudo_header, udp_datagram
from wgmesh.proto.endpoint import Endpoint


def _ones_sum(data: bytes) -> int:
    """RFC 1071's sum, written differently from the code's: big-endian words folded one at a
    time."""
    data += b"\x00" * (len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += int.from_bytes(data[i : i + 2], "big")
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ipv6_pseudo(src: str, dst: str, length: int) -> bytes:
    """RFC 8200 section 8.1, spelled out: 16 + 16 address bytes, the upper-layer length as 32
    bits, three zero bytes and the next header (17)."""
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + length.to_bytes(4, "big")
        + b"\x00\x00\x00"
        + bytes([17])
    )


def test_ipv6_checksum_worked_example() -> None:
    src, dst = Endpoint.parse("[2001:db8::1]:51820"), Endpoint.parse("[2001:db8::10]:3478")
    datagram = udp_datagram(src, dst, b"abc")
    assert datagram[:6] == struct.pack("!HHH", 51820, 3478, 11) and datagram[8:] == b"abc"
    # by hand: the pseudo-header's words sum to 0x2001+0x0db8+0x0001+0x2001+0x0db8+0x0010
    # + 0x000b + 0x0011 = 0x5a27 (carries folded: none); the header's 0xca6c+0x0d96+0x000b;
    # the payload's 0x6162+0x6300
    words = [0x2001, 0x0DB8, 0x0001, 0x2001, 0x0DB8, 0x0010, 0x000B, 0x0011,
             0xCA6C, 0x0D96, 0x000B, 0x6162, 0x6300]  # fmt: skip
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack("!H", datagram[6:8])[0] == ~total & 0xFFFF


def test_ipv6_pseudo_header_layout() -> None:
    src, dst = Endpoint.parse("[2001:db8::1]:1"), Endpoint.parse("[2001:db8::2]:2")
    assert pseudo_header(src, dst, 300) == _ipv6_pseudo("2001:db8::1", "2001:db8::2", 300)
    with pytest.raises(ValueError, match="different families"):
        pseudo_header(src, Endpoint.parse("192.0.2.1:2"), 8)


addresses6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
addresses4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(1, 65535)


@given(addresses6, addresses6, ports, ports, st.binary(max_size=64))
def test_ipv6_checksum_verifies(src: str, dst: str, sport: int, dport: int, data: bytes) -> None:
    """The receiver's check (RFC 1071): the one's-complement sum over the pseudo-header and
    the datagram with its checksum is 0xffff; and the checksum is never 0 (IPv6 forbids it)."""
    s, d = Endpoint.of(src, sport), Endpoint.of(dst, dport)
    datagram = udp_datagram(s, d, data)
    assert datagram[6:8] != b"\x00\x00"
    assert _ones_sum(_ipv6_pseudo(src, dst, len(datagram)) + datagram) == 0xFFFF


@given(addresses4, addresses4, ports, ports, st.binary(max_size=64))
def test_ipv4_checksum_verifies(src: str, dst: str, sport: int, dport: int, data: bytes) -> None:
    s, d = Endpoint.of(src, sport), Endpoint.of(dst, dport)
    datagram = udp_datagram(s, d, data)
    pseudo = s.ip.packed + d.ip.packed + bytes([0, 17]) + len(datagram).to_bytes(2, "big")
    assert _ones_sum(pseudo + datagram) == 0xFFFF


IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
"""Linux's value; older Pythons lack the name."""
root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need CAP_NET_RAW")


def _receiver(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(2.0)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    return sock


def _receive(sock: socket.socket) -> tuple[bytes, str, int, int]:
    """Payload, source address and port, and the TTL / hop limit it arrived with."""
    data, ancillary, _, addr = sock.recvmsg(100, socket.CMSG_SPACE(4))
    ttl = next(struct.unpack("@i", d[:4])[0] for _, _, d in ancillary)
    return data, addr[0], addr[1], ttl


@root
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])  # fmt: skip
def test_kernel_accepts_our_datagram(family: int, host: str) -> None:
    """The kernel verifies the checksum of a datagram from a raw socket (a wrong or, over IPv6,
    a zero one is dropped), so delivery proves ours right; the source port is the WireGuard
    port's, and a priming send carries its low TTL / hop limit, the next one the default."""
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    with _receiver(family, host) as rx:
        port = rx.getsockname()[1]
        sender = RawSender(47123)
        try:
            sender.send(Endpoint.of(host, port), b"primed", ttl=2)
            sender.send(Endpoint.of(host, port), b"probe")
            got = [_receive(rx) for _ in range(2)]
        finally:
            sender.close()
    assert got == [(b"primed", host, 47123, 2), (b"probe", host, 47123, 64)]


@root
def test_kernel_drops_a_bad_ipv6_checksum() -> None:
    """The check above can fail: the same datagram with its checksum spoiled never arrives."""
    with _receiver(socket.AF_INET6, "::1") as rx:
        rx.settimeout(0.3)
        port = rx.getsockname()[1]
        good = udp_datagram(Endpoint.of("::1", 47124), Endpoint.of("::1", port), b"x")
        bad = good[:6] + bytes([good[6] ^ 0x01, good[7]]) + good[8:]
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
            raw.sendto(bad, ("::1", 0))
            with pytest.raises(TimeoutError):
                rx.recvfrom(100)
            raw.sendto(good, ("::1", 0))
            assert rx.recvfrom(100)[0] == b"x"
