"""The registrar process: asyncio adapters around the sans-IO :class:`Registry` and :class:`Zone`.

One DatagramProtocol per STUN socket (the primary port and the alternate port used to tell
cone from symmetric NATs), the DNS UDP+TCP server, a 1-second timer for expiry and for flushing
peer changes to SQLite, and SIGHUP to reload the authorized-keys file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from wgmesh.proto import sealed
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, public_key, short_key
from wgmesh.proto.registry import Change, Outgoing, PeerEvent, Registry, RegistryConfig
from wgmesh.registry.admission import load_admission
from wgmesh.registry.dns import DnsServer, start_dns
from wgmesh.registry.store import Store
from wgmesh.registry.udpbatch import UdpEndpoint, open_udp

log = logging.getLogger("wgmesh.registrar")


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    """Everything the registrar process is configured with."""

    zone: ZoneConfig
    """The DNS zone it serves."""
    private_key: bytes
    """The registrar's X25519 private key (WireGuard format)."""
    listen: str = "0.0.0.0"
    """Address the STUN and DNS sockets bind to."""
    stun_port: int = 3478
    """STUN / registration / control port."""
    stun_alt_port: int = 3479
    """Second STUN port for NAT classification (0: off)."""
    dns_port: int = 53
    """DNS port (UDP and TCP)."""
    state_dir: Path = Path("/var/lib/wgmesh")
    """Where registrar.sqlite3 lives."""
    authorized_keys: Path | None = None
    """The authorized-keys file, or None with ``open_registration``."""
    open_registration: bool = False
    """Accept any key."""
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    """Timings and limits."""
    flush_interval: float = 0.2
    """Seconds between SQLite flushes of peer changes."""


class _StunSocket:
    """One STUN socket's datagram handler; the socket itself is a :mod:`udpbatch` endpoint."""

    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar
        self.local_port = 0
        self.endpoint: UdpEndpoint | None = None
        self._answer_plain = registrar.registry.answer_plain_binding

    def count_oversize(self) -> None:
        """A datagram over max_datagram, dropped unread: counted as ``receive`` counts it."""
        c = self.registrar.registry.counters
        c["datagrams"] += 1
        c["oversize"] += 1

    def on_datagram(self, data: bytes, addr: tuple[str, int] | None) -> bytes | None:
        """The reply to send back to ``addr``, or None (anything else goes out by itself)."""
        assert addr is not None
        # Most of a STUN server's traffic is plain Binding Requests: answered from a template,
        # with no Endpoint built and no clock read (bench/stun_qps.py measures this path).
        reply = self._answer_plain(data, addr[0], addr[1])
        if reply is not None:
            return reply
        source = Endpoint.from_sockaddr(addr)
        out = self.registrar.registry.receive(data, source, self.local_port, time.time())
        if out:
            self.registrar.send(out, self.endpoint, source)
        return None


class Registrar:
    """A running registrar: ``r = await Registrar.start(settings)``, ``await r.serve_forever()``."""

    def __init__(self, settings: RegistrarSettings) -> None:
        self.settings = settings
        self.store = Store(settings.state_dir)
        entries, serial = self.store.load()
        self.zone = Zone(settings.zone, serial=serial)
        admission = load_admission(settings.authorized_keys, settings.open_registration)
        self.registry = Registry(
            settings.registry,
            sealed.Sealer(settings.private_key),
            admission,
            self.zone,
            os.urandom,
            settings.stun_port,
        )
        now = time.time()
        self.registry.restore(entries, now)
        log.info("restored %d live peers from %s", len(self.registry.peers), self.store.path)
        self._primary: UdpEndpoint | None = None
        self._transports: list[UdpEndpoint] = []
        self._dns: DnsServer | None = None
        self._pending: list[PeerEvent] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.stun_ports: tuple[int, ...] = ()

    @classmethod
    async def start(cls, settings: RegistrarSettings) -> Registrar:
        self = cls(settings)
        ports = [settings.stun_port]
        if settings.stun_alt_port:
            ports.append(settings.stun_alt_port)
        bound = []
        for port in ports:
            stun = _StunSocket(self)
            endpoint = await open_udp(
                settings.listen,
                port,
                stun.on_datagram,
                max_datagram=settings.registry.max_datagram,
                on_truncated=stun.count_oversize,
            )
            stun.endpoint = endpoint
            stun.local_port = int(cast(tuple[str, int], endpoint.get_extra_info("sockname"))[1])
            bound.append(stun.local_port)
            self._transports.append(endpoint)
            if self._primary is None:
                self._primary = endpoint
        self.stun_ports = tuple(bound)
        self.registry.primary_port = bound[0]
        self._dns = await start_dns(self.zone, settings.listen, settings.dns_port)
        self._tasks.append(asyncio.create_task(self._tick()))
        log.info(
            "registrar %s for zone %s: STUN %s:%s, DNS %s:%d, %s",
            encode_key(public_key(settings.private_key)),
            settings.zone.origin,
            settings.listen,
            "/".join(map(str, bound)),
            settings.listen,
            self._dns.udp_port,
            "open registration"
            if settings.open_registration and not settings.authorized_keys
            else f"authorized keys from {settings.authorized_keys}",
        )
        return self

    @property
    def dns_port(self) -> int:
        assert self._dns is not None
        return self._dns.udp_port

    def send(
        self,
        out: list[Outgoing],
        transport: UdpEndpoint | None = None,
        source: Endpoint | None = None,
    ) -> None:
        """Replies leave by the socket the request came in on; pushes by the primary port, which
        is the one the daemons' control sockets talk to (their NATs drop anything else)."""
        for data, dest in out:
            t = transport if dest == source else self._primary
            if t is not None and not t.is_closing():
                t.sendto(data, dest.sockaddr())
        self._collect()

    def reload(self) -> None:
        """SIGHUP: re-read the authorized-keys file; keep the old list if the new one is bad."""
        s = self.settings
        try:
            admission = load_admission(s.authorized_keys, s.open_registration)
        except Exception as exc:
            log.error("reload failed, keeping the current admission list: %s", exc)
            return
        out = self.registry.set_admission(admission, time.time())
        self.send(out)
        log.info("reloaded admission list: %d keys", len(admission.peers))

    def _collect(self) -> None:
        for ev in self.registry.events():
            if ev.change != Change.REFRESHED:
                p = ev.peer
                log.info(
                    "peer %s %s (%s) endpoint %s nat %s",
                    short_key(p.key), ev.change, p.name or "-", p.endpoint, p.nat,
                )  # fmt: skip
            self._pending.append(ev)

    async def _tick(self) -> None:
        interval = self.settings.flush_interval
        next_expire = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            if now >= next_expire:
                out = self.registry.expire(now)
                if out:
                    self.send(out)
                next_expire = now + 1.0
            self._collect()
            if self._pending:
                batch, self._pending = self._pending, []
                self.store.apply(batch, self.zone.serial)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: %s", self.registry.counters)
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for t in self._transports:
            t.close()
        if self._dns is not None:
            self._dns.close()
            await self._dns.wait_closed()
        self._collect()
        if self._pending:
            self.store.apply(self._pending, self.zone.serial)
            self._pending = []
        self.store.close()
