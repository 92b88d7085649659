"""Peers on the same LAN, over mDNS (RFC 6762) / DNS-SD (RFC 6763) with python-zeroconf.

We announce ``<label>._wireguard._udp.local.`` (the first 16 base32 characters of our key as the
instance name), port = the WireGuard listen port, TXT ``txtvers=1`` and ``pub=<base64 key>``, with
our LAN addresses, and browse for other such services. Announcements are only hints: a LAN
candidate is trusted once WireGuard completes a handshake through it (the planner's rule).

Never announced on the WireGuard interface itself: zeroconf is bound to the addresses of the
chosen interfaces (all up, non-loopback interfaces but the WireGuard one by default).

Both address families. We announce our IPv6 addresses (global and ULA) beside the IPv4 ones,
and the transport follows the addresses we have: IPv4 multicast (224.0.0.251) only on an
IPv4-only host, exactly as before IPv6; IPv4 and IPv6 (ff02::fb) on a dual-stack one; IPv6
only on an IPv6-only one. On a dual-stack LAN both families' records travel over either
transport, so a peer whose IPv6 multicast is filtered still learns our AAAA records over IPv4,
and an IPv6-only LAN works at all. A peer's IPv6 addresses become LAN hints of family 6.
Should zeroconf fail to set up IPv6 (the address vanished between our listing and its own, a
kernel without IPv6 multicast), we fall back to IPv4 transport rather than lose LAN discovery.

Link-local addresses (fe80::/10) are neither announced nor taken from others' announcements.
One is usable only with a zone (the receiver's interface index, which the sender's announcement
cannot carry), and nothing past this module holds a zone: :class:`Endpoint` has none (it strips
``%``), nor do the planner's candidates, the Status, ``wg set`` endpoints as we write them, or
``wgmesh peers``. A LAN with IPv6 routers has global or ULA addresses anyway (SLAAC gives them
to every host), and a LAN with link-local IPv6 only still has IPv4, so the gain would not pay
for carrying zones through every layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from wgmesh.daemon.localaddr import local_addresses
from wgmesh.errors import DecodeError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key, encode_key, key_label

log = logging.getLogger("wgmesh.mdns")

SERVICE = "_wireguard._udp.local."
MAX_PEERS = 1024
"""Most LAN peers remembered (hostile announcements cannot grow the table without bound)."""
MAX_ADDRESSES = 8
"""Most addresses taken from one announcement, per address family."""

OnPeer = Callable[[bytes, tuple[Endpoint, ...]], None]


class LanDiscovery:
    """Announce ourselves and report other peers' LAN endpoints through ``on_peer``."""

    def __init__(
        self,
        public_key: bytes,
        port: int,
        wg_interface: str,
        on_peer: OnPeer,
        interfaces: tuple[str, ...] = (),
    ) -> None:
        self.public_key = public_key
        self.port = port
        self.wg_interface = wg_interface
        self.on_peer = on_peer
        self.interfaces = interfaces
        self.seen: dict[bytes, tuple[Endpoint, ...]] = {}
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _addresses(self) -> list[str]:
        """Our LAN addresses to announce, IPv4 first (``local_addresses`` leaves out loopback
        and link-local ones)."""
        addrs = local_addresses(exclude=(self.wg_interface,), only=self.interfaces or None)
        return sorted(addrs, key=lambda a: ipaddress.ip_address(a).version)

    def _open(self, addrs: list[str]) -> tuple[AsyncZeroconf, list[str]]:
        """A zeroconf bound to ``addrs``, on the transport their families call for; the
        addresses it is bound to (IPv4 only after a failure to set up IPv6)."""
        v4 = [a for a in addrs if ipaddress.ip_address(a).version == 4]
        version = _transport(addrs)
        if version == IPVersion.V4Only:
            return AsyncZeroconf(interfaces=v4, ip_version=version), v4
        try:
            return AsyncZeroconf(interfaces=addrs, ip_version=version), addrs
        except (OSError, RuntimeError) as exc:  # RuntimeError: zeroconf found no such address
            if not v4:
                raise
            log.warning("mDNS over IPv6 unavailable (%s); announcing over IPv4 only", exc)
            return AsyncZeroconf(interfaces=v4, ip_version=IPVersion.V4Only), v4

    async def start(self) -> None:
        addrs = self._addresses()
        if not addrs:
            log.info("mDNS: no LAN address to announce on; LAN discovery is off")
            return
        self._zc, bound = self._open(addrs)
        label = key_label(self.public_key)[:16]
        self._info = AsyncServiceInfo(
            SERVICE,
            f"wgmesh-{label}.{SERVICE}",
            port=self.port,
            properties={"txtvers": "1", "pub": encode_key(self.public_key)},
            addresses=[ipaddress.ip_address(a).packed for a in addrs],
            server=f"wgmesh-{label}.local.",
        )
        await self._zc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE, handlers=[self._on_change])
        log.info("mDNS: announcing %s port %d at %s, over %s", SERVICE, self.port,
                 ", ".join(addrs), ", ".join(bound))  # fmt: skip

    def _on_change(self, **kw: Any) -> None:
        state = kw["state_change"]
        name = str(kw["name"])
        if state in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(self._resolve(name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        raw = (info.properties or {}).get(b"pub")
        try:
            key = decode_key(raw.decode("ascii")) if raw else None
        except (DecodeError, UnicodeDecodeError):
            key = None
        if key is None or key == self.public_key or info.port is None:
            return
        if key not in self.seen and len(self.seen) >= MAX_PEERS:
            return
        endpoints = lan_endpoints(info.parsed_addresses(IPVersion.All), info.port)
        if endpoints and self.seen.get(key) != endpoints:
            self.seen[key] = endpoints
            log.info("mDNS: peer %s on the LAN at %s", encode_key(key)[:8],
                     ", ".join(map(str, endpoints)))  # fmt: skip
            self.on_peer(key, endpoints)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zc is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()


def _transport(addrs: list[str]) -> IPVersion:
    """The multicast families to use: those of the addresses we have."""
    versions = {ipaddress.ip_address(a).version for a in addrs}
    if versions == {4}:
        return IPVersion.V4Only
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All


def lan_endpoints(addresses: list[str], port: int) -> tuple[Endpoint, ...]:
    """The endpoints an announcement's addresses give, IPv4 then IPv6, at most
    :data:`MAX_ADDRESSES` of each family; addresses no LAN peer can be reached at (link-local:
    see the module's docstring; loopback, multicast, unspecified) are left out."""
    out: dict[int, list[Endpoint]] = {4: [], 6: []}
    for text in addresses:
        try:
            ep = Endpoint.of(text.split("%", 1)[0], port)
        except ValueError:
            continue
        ip = ep.ip
        if ip.is_link_local or ip.is_loopback or ip.is_multicast or ip.is_unspecified:
            continue
        same = out[ep.family]
        if ep not in same and len(same) < MAX_ADDRESSES:
            same.append(ep)
    return (*out[4], *out[6])
