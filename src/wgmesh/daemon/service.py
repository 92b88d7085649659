"""The daemon: a thin asyncio adapter around two sans-IO cores.

- :class:`~wgmesh.proto.client.RegistrarClient` decides when to Register and Watch, what a
  Status or a Push means, backoff and re-reads of the zone; this moves its datagrams (Registers
  through the raw sender on the WireGuard port, Watches through the control socket) and
  re-arms one timer from its ``next_timer()``;
- :class:`~wgmesh.proto.punch.Planner` decides WireGuard endpoints and punches; this reads the
  interface (in a thread: blocking calls never run on the event loop), applies its plan, and
  plans again when its ``next_deadline()`` comes, when records change, or every
  ``device_poll`` seconds (WireGuard reports handshakes only when asked);
- records come from DNS-SD (:class:`~wgmesh.daemon.resolver.ZoneResolver`) and mDNS
  (:mod:`wgmesh.daemon.mdns`); the peers' counters are sampled every ``traffic_poll`` while
  traffic flows, and a stalled path (``Planner.watch_traffic``) asks the client for a probe;
- a unix socket answers ``wgmesh peers`` with the daemon's view as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wgmesh import __version__
from wgmesh.daemon.localaddr import local_addresses, read_private_key
from wgmesh.daemon.rawsend import RawSender
from wgmesh.daemon.resolver import ZoneResolver
from wgmesh.errors import InterfaceNotFound, RemoteProtocolError, WireGuardError
from wgmesh.proto.client import (
    ClientConfig,
    Event,
    MappingObserved,
    MembersChanged,
    RegistrarClient,
    RegistrarState,
    Resolve,
    Via,
)
from wgmesh.proto.device import DeviceState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, short_key
from wgmesh.proto.kinds import CandidateKind
from wgmesh.proto.punch import Hint, PeerRecord, Planner, PunchConfig, Source, merge_hints
from wgmesh.proto.sealed import MAX_ADDRESSES
from wgmesh.wg.control import WireGuardControl

if TYPE_CHECKING:
    from wgmesh.daemon.mdns import LanDiscovery

log = logging.getLogger("wgmesh.daemon")


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """Everything the daemon is configured with."""

    interface: str
    """WireGuard interface name."""
    registrar: Endpoint
    """Registrar STUN address (primary port)."""
    registrar_key: bytes
    """Registrar public key."""
    zone: str
    """DNS-SD zone."""
    dns: Endpoint | None = None
    """Authoritative server to ask; None: the zone's own NS."""
    registrar_alt_port: int | None = None
    """Alternate STUN port for NAT classification (None: registrar port + 1; 0: off)."""
    mode: str = "endpoints"
    """``endpoints`` or ``mesh``."""
    probe_interval: float = 20.0
    """Seconds between registrations (keeps NAT mappings alive; conntrack often forgets at 30 s)."""
    traffic_poll: float = 0.5
    """Seconds between reads of the peers' counters to spot stalled paths (0: off)."""
    device_poll: float = 2.0
    """Longest pause between two plans (each reads the interface: handshakes are only seen
    when asked for)."""
    name: str = ""
    """Name reported to the registrar."""
    wait_interface: bool = False
    """Wait for the interface to appear instead of failing."""
    status_socket: Path | None = None
    """Where ``wgmesh peers`` finds us."""
    backend: str = "auto"
    """WireGuard control backend: auto, uapi, wg."""
    prime_ttl: int = 2
    """TTL of the NAT-priming packet (enough to leave our NAT, not to reach the peer's)."""
    punch: PunchConfig = field(default_factory=PunchConfig)
    """Endpoint choice timings."""
    mdns: bool = True
    """Announce and browse _wireguard._udp.local. on the LAN."""
    mdns_interfaces: tuple[str, ...] = ()
    """Interfaces for mDNS (default: every up interface but the WireGuard one)."""

    def client_config(self) -> ClientConfig:
        """The registrar protocol's settings."""
        return ClientConfig(
            probe_interval=self.probe_interval,
            classify=self.registrar_alt_port != 0,
            roster=self.mode == "mesh",
        )


class _Control(asyncio.DatagramProtocol):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.daemon.on_control(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("control socket: %s", exc)


class Daemon:
    """One interface's daemon. :meth:`run` until SIGTERM/SIGINT or a fatal error."""

    def __init__(self, settings: DaemonSettings, wg: WireGuardControl) -> None:
        self.s = settings
        self.wg = wg
        self.resolver = ZoneResolver(settings.zone, settings.dns)
        self.device: DeviceState | None = None
        self.planner = Planner(settings.punch)
        self.client: RegistrarClient | None = None
        self.lan: LanDiscovery | None = None
        self.lan_hints: dict[bytes, tuple[Hint, ...]] = {}
        self._control: asyncio.DatagramTransport | None = None
        self._raw: RawSender | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._plan_wake = asyncio.Event()
        self._resolve_wake = asyncio.Event()
        self._traffic_wake = asyncio.Event()
        self._resolve_keys: set[bytes] = set()
        self._resolve_all = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- start and stop -----------------------------------------------------------------------

    async def read_device(self) -> DeviceState:
        return await asyncio.to_thread(self.wg.read)

    async def run(self) -> None:
        while True:
            try:
                self.device = await self.read_device()
                break
            except InterfaceNotFound:
                if not self.s.wait_interface:
                    raise
                await asyncio.sleep(1.0)
        if self.device.public_key is None:
            raise WireGuardError(f"interface {self.s.interface} has no private key set")
        own_key = self.device.public_key
        self.planner = Planner(self.s.punch, own_key)
        client = RegistrarClient(
            self.s.client_config(), read_private_key(self.wg.name), self.s.registrar,
            self.s.registrar_key, time.time(), os.urandom, alt_port=self.s.registrar_alt_port,
            name=self.s.name, software=f"wgmesh/{__version__}",
        )  # fmt: skip
        if client.own_key != own_key:
            raise WireGuardError(f"{self.s.interface}: the private key read does not match")
        self.client = client
        self._raw = RawSender(self.device.listen_port)
        loop = asyncio.get_running_loop()
        self._control, _ = await loop.create_datagram_endpoint(
            lambda: _Control(self), remote_addr=self.s.registrar.sockaddr()
        )
        log.info(
            "daemon for %s (key %s, port %d) registrar %s zone %s mode %s",
            self.s.interface, short_key(own_key), self.device.listen_port,
            self.s.registrar, self.s.zone, self.s.mode,
        )  # fmt: skip
        client.set_addresses(await self._local_addresses(), time.time())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = None
        try:
            if self.s.status_socket is not None:
                server = await self._serve_status(self.s.status_socket)
            loops = [self._resolve_loop(), self._plan_loop(), self._address_loop()]
            if self.s.traffic_poll > 0:
                loops.append(self._traffic_loop())
            self._tasks = [asyncio.create_task(c) for c in loops]
            self._drive()  # the first probe round starts now
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopping, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stopping:
                    task.result()  # a loop ended: it raised, so must we
            log.info("stopping")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._close(server)

    async def _close(self, server: asyncio.AbstractServer | None) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                self.s.status_socket.unlink()  # type: ignore[union-attr]
        if self._control is not None:
            self._control.close()
        if self._raw is not None:
            self._raw.close()
        if self.lan is not None:
            await self.lan.close()

    async def _start_lan(self) -> None:
        """mDNS after the first probe round: zeroconf's import and probing (about a second)
        must not delay the registrar path."""
        from wgmesh.daemon.mdns import LanDiscovery

        assert self.device is not None
        self.lan = LanDiscovery(
            self.planner.own_key, self.device.listen_port, self.s.interface, self.on_lan_peer,
            self.s.mdns_interfaces,
        )  # fmt: skip
        try:
            await self.lan.start()
        except Exception as exc:
            log.warning("mDNS unavailable (%r); LAN peers come from the registrar only", exc)

    # -- the registrar client -----------------------------------------------------------------

    def on_control(self, data: bytes) -> None:
        """A datagram on the control socket."""
        if self.client is not None:
            self.client.receive(data, time.time())
            self._drive()

    def _on_timer(self) -> None:
        self._timer = None
        assert self.client is not None
        self.client.handle_timer(time.time())
        self._drive()

    def _drive(self) -> None:
        """Send what the client wants sent, act on its events, re-arm its one timer."""
        client = self.client
        assert client is not None and self._raw is not None and self._control is not None
        if self.s.mode != "mesh" and self.device is not None:  # pushes about our peers only
            client.set_interest(p.public_key for p in self.device.peers)
        for t in client.datagrams_to_send():
            try:
                if t.via is Via.WIREGUARD:
                    self._raw.send(t.destination, t.data)
                else:
                    self._control.sendto(t.data)
            except OSError as exc:
                log.debug("sending to %s: %s", t.destination, exc)
        for event in client.events():
            self._on_event(event)
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, client.next_timer() - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, MappingObserved):
            if event.rtt is not None:
                self.planner.observe_rtt(event.rtt)
            if self.planner.set_our_mapping(event.observed, event.nat):
                shown = ", ".join(map(str, event.observed))
                log.info("our public mapping changed to %s: re-punching every peer", shown)
            self._plan_wake.set()
        elif isinstance(event, Resolve):
            if event.keys is None:
                self._resolve_all = True
            else:
                self._resolve_keys.update(event.keys)
            self._resolve_wake.set()
        elif isinstance(event, MembersChanged):
            log.info("the registrar vouches for %d mesh members", len(event.members))
            self.planner.set_members(event.members)
            self._resolve_all = True  # members not resolved yet
            self._resolve_wake.set()
        elif isinstance(event, RegistrarState):
            if event.first and self.s.mdns:
                self._tasks.append(asyncio.create_task(self._start_lan()))
            if not event.reachable:
                log.warning(
                    "registrar %s does not answer: it is down or unreachable, or it does not "
                    "admit this key (it answers nothing it cannot authenticate: check its "
                    "authorized-keys and --registrar-key); endpoints stay as they are, retrying",
                    self.s.registrar,
                )
            elif not event.first:
                log.info("registrar %s answers again", self.s.registrar)

    async def _local_addresses(self) -> tuple[Endpoint, ...]:
        """Our LAN candidates (``ip -j addr`` runs in a thread, never on the event loop)."""
        assert self.device is not None
        ips = await asyncio.to_thread(local_addresses, exclude=(self.s.interface,))
        port = self.device.listen_port
        return tuple(Endpoint.of(ip, port) for ip in ips)[:MAX_ADDRESSES]

    async def _address_loop(self) -> None:
        """Re-read our addresses once per probe interval; a change is registered at once."""
        while True:
            await asyncio.sleep(self.s.probe_interval)
            addresses = await self._local_addresses()
            assert self.client is not None
            self.client.set_addresses(addresses, time.time())
            self._drive()

    # -- resolution and planning --------------------------------------------------------------

    async def _resolve_loop(self) -> None:
        while True:
            await self._resolve_wake.wait()
            self._resolve_wake.clear()
            await self._resolve()
            self._plan_wake.set()

    async def _resolve(self) -> None:
        device = self.device
        if device is None:
            return
        own = self.planner.own_key
        if self._resolve_all:
            self._resolve_all = False
            keys = {p.public_key for p in device.peers}
            if self.s.mode == "mesh":  # the members come from the sealed roster, never DNS
                assert self.client is not None
                keys |= set(self.client.roster.members or ())
        else:
            keys = set(self._resolve_keys)
            if self.s.mode != "mesh":
                keys &= {p.public_key for p in device.peers}
        self._resolve_keys.clear()
        keys.discard(own)
        for key in keys:
            try:
                record = await self.resolver.lookup(key)
            except RemoteProtocolError as exc:
                log.debug("lookup %s: %s", short_key(key), exc)
                continue
            if record is None and key not in self.lan_hints:
                self.planner.withdraw(key)
            else:
                self._set_record(key, record)

    def _set_record(self, key: bytes, record: PeerRecord | None) -> None:
        """A peer's record as the zone says, with the LAN candidates mDNS found merged in."""
        lan = self.lan_hints.get(key, ())
        if record is None:
            record = PeerRecord(key, lan)
        elif lan:
            record = PeerRecord(key, merge_hints(lan, record.hints), record.name,
                                record.allowed_ips, record.nat, record.since)  # fmt: skip
        self.planner.set_record(record)

    def on_lan_peer(self, key: bytes, endpoints: tuple[Endpoint, ...]) -> None:
        """mDNS saw a peer on our LAN: a hint, trusted once a handshake goes through it."""
        self.lan_hints[key] = tuple(Hint(ep, CandidateKind.LAN, 1, Source.LAN) for ep in endpoints)
        self.planner.add_lan_peer(key)
        self._set_record(key, self.planner.record(key))
        self._plan_wake.set()

    async def _plan_loop(self) -> None:
        while True:
            deadline = self.planner.next_deadline()
            delay = self.s.device_poll
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._plan_wake.wait(), delay)
            self._plan_wake.clear()
            await self._plan()

    async def _plan(self) -> None:
        try:
            self.device = await self.read_device()
        except WireGuardError as exc:
            log.warning("reading %s: %s", self.s.interface, exc)
            return
        if self.s.traffic_poll > 0:
            self._watch_traffic(self.device)
        plan = self.planner.plan(self.device, time.time())
        assert self._raw is not None
        for ep in plan.prime:
            with contextlib.suppress(OSError):
                self._raw.send(ep, b"", ttl=self.s.prime_ttl)
        if not plan.updates:
            return
        for u in plan.updates:
            what = []
            if u.remove:
                what.append("removed")
            if u.allowed_ips is not None:
                what.append(f"added with allowed IPs {','.join(u.allowed_ips)}")
            if u.endpoint is not None:
                what.append(f"endpoint {u.endpoint}")
            if u.handshake_now:
                what.append("handshake now")
            log.info("peer %s: %s", short_key(u.public_key), ", ".join(what))
        try:
            await asyncio.to_thread(self.wg.apply, list(plan.updates))
        except WireGuardError as exc:
            log.warning("updating %s: %s", self.s.interface, exc)

    async def _traffic_loop(self) -> None:
        """Sample the peers' counters every ``traffic_poll`` while traffic flows; an idle
        interface is sampled only by the plan loop's reads (every ``device_poll``), which keeps
        the idle daemon's CPU where it was."""
        while True:
            if not self.planner.traffic_active:
                self._traffic_wake.clear()
                await self._traffic_wake.wait()  # set when a plan's read sees data move
            await asyncio.sleep(self.s.traffic_poll)
            try:
                self.device = await self.read_device()
            except WireGuardError as exc:
                log.debug("reading %s: %s", self.s.interface, exc)
                continue
            self._watch_traffic(self.device)

    def _watch_traffic(self, device: DeviceState) -> None:
        now = time.time()
        if self.planner.watch_traffic(device, now):
            log.info("a peer's path stalled: probing the registrar now")
            assert self.client is not None
            self.client.request_probe(now)
            self._drive()
        if self.planner.traffic_active:
            self._traffic_wake.set()

    # -- status for `wgmesh peers` ------------------------------------------------------------

    def status(self) -> dict[str, object]:
        now = time.time()
        device = self.device
        client = self.client
        views = self.planner.views(device, now) if device else []
        observed = self.planner.our_mappings
        return {
            "interface": self.s.interface,
            "public_key": encode_key(self.planner.own_key) if client else None,
            "mode": self.s.mode,
            "registrar": str(self.s.registrar),
            "observed_endpoint": str(observed[0]) if observed else None,
            "observed_endpoints": [str(ep) for ep in observed],
            "nat": str(self.planner.our_nat),
            "registrar_last_answer": client.last_answer if client else 0.0,
            "peers": [asdict(v) for v in views],
        }

    async def _serve_status(self, path: Path) -> asyncio.AbstractServer:
        _prepare_socket_path(path)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(WireGuardError):
                self.device = await self.read_device()  # show the interface as it is now
            try:
                writer.write(json.dumps(self.status()).encode() + b"\n")
                await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_unix_server(handle, path=str(path))
        os.chmod(path, 0o600)
        return server


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
