"""Peers on the same LAN, over mDNS (RFC 6762) / DNS-SD (RFC 6763) with python-zeroconf.

We announce ``<label>._wireguard._udp.local.`` (the first 16 base32 characters of our key as the
instance name), port = the WireGuard listen port, TXT ``txtvers=1`` and ``pub=<base64 key>``, with
our LAN addresses, and browse for other such services. Announcements are only hints: a LAN
candidate is trusted once WireGuard completes a handshake through it (the planner's rule).

Never announced on the WireGuard interface itself: zeroconf is bound to the addresses of the
chosen interfaces (all up, non-loopback interfaces but the WireGuard one by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
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
        addrs = local_addresses(exclude=(self.wg_interface,), only=self.interfaces or None)
        return [a for a in addrs if ipaddress.ip_address(a).version == 4]

    async def start(self) -> None:
        addrs = self._addresses()
        if not addrs:
            log.info("mDNS: no LAN address to announce on; LAN discovery is off")
            return
        self._zc = AsyncZeroconf(interfaces=addrs, ip_version=IPVersion.V4Only)
        label = key_label(self.public_key)[:16]
        self._info = AsyncServiceInfo(
            SERVICE,
            f"wgmesh-{label}.{SERVICE}",
            port=self.port,
            properties={"txtvers": "1", "pub": encode_key(self.public_key)},
            addresses=[socket.inet_aton(a) for a in addrs],
            server=f"wgmesh-{label}.local.",
        )
        await self._zc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE, handlers=[self._on_change])
        log.info("mDNS: announcing %s port %d on %s", SERVICE, self.port, ", ".join(addrs))

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
        endpoints = tuple(
            Endpoint.of(a, info.port) for a in info.parsed_addresses(IPVersion.V4Only)
        )[:8]
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
