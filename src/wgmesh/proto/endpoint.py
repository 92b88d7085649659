"""UDP endpoints (ip, port) with one text form: ``1.2.3.4:51820`` or ``[2001:db8::1]:51820``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wgmesh.errors import DecodeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """A UDP transport address."""

    ip: IPAddress
    """The IP address (an IPv4-mapped IPv6 address is normalised to IPv4)."""
    port: int
    """The UDP port, 0..65535."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of range: {self.port}")

    @classmethod
    def of(cls, host: str | IPAddress, port: int) -> Endpoint:
        """Build from an address in any form ``ipaddress`` takes (no names resolved)."""
        ip = ipaddress.ip_address(host) if isinstance(host, str) else host
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(ip, port)

    @classmethod
    def from_sockaddr(cls, addr: tuple[object, ...]) -> Endpoint:
        """Build from a socket address tuple as asyncio hands it over."""
        host = str(addr[0]).split("%", 1)[0]
        port = addr[1]
        if not isinstance(port, int):
            raise ValueError(f"bad socket address: {addr!r}")
        return cls.of(host, port)

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Endpoint:
        """Parse ``ip:port``, ``[ip6]:port``, or a bare address when ``default_port`` is given.

        Raises DecodeError with a message naming the text.
        """
        text = text.strip()
        host: str
        port_text: str | None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep:
                raise DecodeError(f"bad endpoint {text!r}: missing ']'")
            port_text = rest[1:] if rest.startswith(":") else None
            if rest and not rest.startswith(":"):
                raise DecodeError(f"bad endpoint {text!r}")
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, None
        if port_text is None:
            if default_port is None:
                raise DecodeError(f"bad endpoint {text!r}: no port")
            port = default_port
        else:
            if not port_text.isdigit():
                raise DecodeError(f"bad endpoint {text!r}: port is not a number")
            port = int(port_text)
        try:
            return cls.of(host, port)
        except ValueError as exc:
            raise DecodeError(f"bad endpoint {text!r}: {exc}") from None

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.ip.version

    def sockaddr(self) -> tuple[str, int]:
        """The (host, port) tuple sockets take."""
        return (str(self.ip), self.port)

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"
