"""The daemon: thin asyncio glue around the sans-IO :class:`Planner`.

- every ``probe_interval`` (and at once when something changed) a sealed Register leaves the
  WireGuard port through the raw socket, and a sealed Watch leaves the control socket; the
  registrar's Status reply says what mapping it observed for the WireGuard port;
- Push indications on the control socket name peers that changed: they are resolved at once;
- every ``traffic_poll`` seconds the peers' transfer counters are read; a path that stalls (the
  Planner's ``watch_traffic``) triggers a probe at once, so a rebinding of our NAT reaches the
  registrar, and through its pushes the peers, in about a second;
- records come from DNS-SD (``ZoneResolver``); the Planner decides endpoints; WireGuard is
  changed through the one ``WireGuardControl`` interface, in a thread (blocking calls never run
  on the event loop);
- a unix socket answers ``wgmesh peers`` with the daemon's view as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wgmesh import __version__
from wgmesh.daemon.localaddr import local_addresses, read_private_key
from wgmesh.daemon.rawsend import RawSender
from wgmesh.daemon.resolver import ZoneResolver
from wgmesh.errors import DecodeError, InterfaceNotFound, RemoteProtocolError, WireGuardError
from wgmesh.proto import sealed, stun
from wgmesh.proto.device import DeviceState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, short_key
from wgmesh.proto.kinds import CandidateKind
from wgmesh.proto.punch import Hint, PeerRecord, Planner, PunchConfig, Source, merge_hints
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


class _Control(asyncio.DatagramProtocol):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.daemon.on_control(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("control socket: %s", exc)


class Daemon:
    """One interface's daemon."""

    def __init__(self, settings: DaemonSettings, wg: WireGuardControl) -> None:
        self.s = settings
        self.wg = wg
        self.planner = Planner(settings.punch)
        self.sealer = sealed.Sealer(b"\x01" * 32)  # replaced in run() by the interface's key
        self.own_key = b""
        self.resolver = ZoneResolver(settings.zone, settings.dns)
        self.counter = time.time_ns() // 1000
        self.registered_counter = 0
        self.serial = -1
        self.last_status = 0.0
        self.device: DeviceState | None = None
        self._wake = asyncio.Event()
        self._plan_wake = asyncio.Event()
        self._first_probe = asyncio.Event()
        self.lan: LanDiscovery | None = None
        self._probe_now = asyncio.Event()
        self._traffic_wake = asyncio.Event()
        self._resolve_keys: set[bytes] = set()
        self._resolve_all = True
        self._status_waiters: dict[int, asyncio.Future[sealed.Status]] = {}
        self._control: asyncio.DatagramTransport | None = None
        self._raw: RawSender | None = None
        self.errors = 0
        self.lan_hints: dict[bytes, tuple[Hint, ...]] = {}

    # -- start --------------------------------------------------------------------------------

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
        self.own_key = self.device.public_key
        self.planner.own_key = self.own_key
        self.sealer = sealed.Sealer(_private_of(self.wg))
        self._raw = RawSender(self.device.listen_port)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Control(self), remote_addr=self.s.registrar.sockaddr()
        )
        self._control = transport
        log.info(
            "daemon for %s (key %s, port %d) registrar %s zone %s mode %s",
            self.s.interface, short_key(self.own_key), self.device.listen_port,
            self.s.registrar, self.s.zone, self.s.mode,
        )  # fmt: skip
        tasks = [
            asyncio.create_task(self._probe_loop()),
            asyncio.create_task(self._resolve_loop()),
            asyncio.create_task(self._plan_loop()),
        ]
        if self.s.traffic_poll > 0:
            tasks.append(asyncio.create_task(self._traffic_loop()))
        server = None
        if self.s.status_socket is not None:
            server = await self._serve_status(self.s.status_socket)
        if self.s.mdns:
            tasks.append(asyncio.create_task(self._start_lan()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if server is not None:
                server.close()
                with contextlib.suppress(OSError):
                    self.s.status_socket.unlink()  # type: ignore[union-attr]
            transport.close()
            self._raw.close()
            if self.lan is not None:
                await self.lan.close()

    async def _start_lan(self) -> None:
        """mDNS after the first registration: zeroconf's import and probing (about a second)
        must not delay the registrar path."""
        await self._first_probe.wait()
        from wgmesh.daemon.mdns import LanDiscovery

        assert self.device is not None
        self.lan = LanDiscovery(
            self.own_key, self.device.listen_port, self.s.interface, self.on_lan_peer,
            self.s.mdns_interfaces,
        )  # fmt: skip
        try:
            await self.lan.start()
        except Exception as exc:
            log.warning("mDNS unavailable (%r); LAN peers come from the registrar only", exc)

    # -- registration -------------------------------------------------------------------------

    def _next(self) -> int:
        self.counter = max(self.counter + 1, time.time_ns() // 1000)
        return self.counter

    async def _local_addresses(self) -> tuple[Endpoint, ...]:
        """Our LAN candidates (``ip -j addr`` runs in a thread, never on the event loop)."""
        assert self.device is not None
        ips = await asyncio.to_thread(local_addresses, exclude=(self.s.interface,))
        return tuple(Endpoint.of(ip, self.device.listen_port) for ip in ips)[:8]

    def _send_register(self, addrs: tuple[Endpoint, ...], secondary: bool = False) -> int:
        assert self._raw is not None
        counter = self._next()
        payload = sealed.Register(
            timestamp_ms=int(time.time() * 1000),
            counter=counter,
            name=self.s.name,
            addresses=addrs,
            software=f"wgmesh/{__version__}",
            secondary=secondary,
        )
        port = self.s.registrar.port
        if secondary:
            port = self.s.registrar_alt_port or port + 1
        data = sealed.build_sealed_request(
            self.sealer, self.own_key, self.s.registrar_key, payload, os.urandom(12), os.urandom(24)
        )
        self._raw.send(Endpoint(self.s.registrar.ip, port), data)
        return counter

    async def _watch(self, register_counter: int, timeout: float) -> sealed.Status:
        assert self._control is not None
        counter = self._next()
        payload = sealed.Watch(int(time.time() * 1000), counter, register_counter)
        data = sealed.build_sealed_request(
            self.sealer, self.own_key, self.s.registrar_key, payload, os.urandom(12), os.urandom(24)
        )
        fut: asyncio.Future[sealed.Status] = asyncio.get_running_loop().create_future()
        self._status_waiters[counter] = fut
        try:
            self._control.sendto(data)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._status_waiters.pop(counter, None)

    async def probe(self) -> bool:
        """One registration round; True when the registrar confirmed it."""
        classify = self.planner.our_nat == "unknown"
        addrs = await self._local_addresses()
        for attempt in range(3):
            try:
                sent = time.monotonic()
                reg = self._send_register(addrs)
                status = await self._watch(reg, timeout=0.5 * (attempt + 1))
            except (TimeoutError, OSError) as exc:
                log.debug("probe attempt %d: %s", attempt + 1, exc or "no answer")
                continue
            self.planner.observe_rtt(time.monotonic() - sent)
            if status.register_counter < reg:
                await asyncio.sleep(0.05)
                with contextlib.suppress(TimeoutError, OSError):
                    status = await self._watch(reg, timeout=0.5)
                if status.register_counter < reg:
                    continue
            self._on_status(status)
            classify = classify or self.planner.our_nat == "unknown"  # e.g. after a rebinding
            if classify and self.s.registrar_alt_port != 0:
                with contextlib.suppress(OSError):
                    sec = self._send_register(addrs, secondary=True)
                    await asyncio.sleep(0.1)
                    self._on_status(await self._watch(sec, timeout=0.5))
            return True
        return False

    def _on_status(self, status: sealed.Status) -> None:
        self.last_status = time.time()
        self.registered_counter = status.register_counter
        if self.planner.set_our_mapping(status.observed, str(status.nat)):
            log.info("our public mapping changed to %s: re-punching every peer", status.observed)
            self._wake.set()
        if status.serial != self.serial:
            self.serial = status.serial
            self._resolve_all = True
            self._wake.set()

    async def _probe_loop(self) -> None:
        backoff = 1.0
        reachable = True
        while True:
            self._probe_now.clear()  # a request made during this probe asks for another
            ok = await self.probe()
            self._first_probe.set()
            if ok:
                if not reachable:
                    log.info("registrar %s answers again", self.s.registrar)
                reachable, backoff = True, 1.0
                delay = self.s.probe_interval
            else:
                if reachable:
                    log.warning(
                        "registrar %s does not answer (is this key in its authorized-keys? "
                        "is --registrar-key right?); endpoints stay as they are, retrying",
                        self.s.registrar,
                    )
                reachable = False
                delay = backoff
                backoff = min(backoff * 2, self.s.probe_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), delay)

    def on_control(self, data: bytes) -> None:
        """A datagram on the control socket: a Status reply or a Push."""
        try:
            msg = stun.decode(data)
            _, payload = sealed.open_sealed(self.sealer, msg, self.s.registrar_key)
        except DecodeError as exc:
            self.errors += 1
            log.debug("dropping control datagram: %s", exc)
            return
        if isinstance(payload, sealed.Status):
            fut = self._status_waiters.get(payload.watch_counter)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif isinstance(payload, sealed.Push):
            if abs(payload.timestamp_ms / 1000 - time.time()) > 120:
                self.errors += 1
                return
            log.debug("push: %d peers changed (serial %d)", len(payload.changed), payload.serial)
            self._resolve_keys.update(payload.changed)
            self._wake.set()

    # -- resolution and planning ------------------------------------------------------------

    async def _resolve(self) -> None:
        device = self.device
        if device is None:
            return
        if self._resolve_all:
            keys = {p.public_key for p in device.peers}
            if self.s.mode == "mesh":
                with contextlib.suppress(RemoteProtocolError):
                    keys.update(await self.resolver.browse())
                keys.update(k for k, p in self.planner.peers.items() if p.record is not None)
            keys.discard(self.own_key)
            self._resolve_all = False
        else:
            keys = set(self._resolve_keys) - {self.own_key}
            if self.s.mode != "mesh":
                keys &= {p.public_key for p in device.peers}
        self._resolve_keys.clear()
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
        self.planner.lan_keys.add(key)
        current = self.planner.peers.get(key)
        self._set_record(key, current.record if current is not None else None)
        self._wake.set()

    async def _resolve_loop(self) -> None:
        last_all = 0.0
        while True:
            now = time.time()
            if now - last_all >= self.s.probe_interval:
                self._resolve_all, last_all = True, now
            if self._resolve_all or self._resolve_keys:
                await self._resolve()
                await self._plan()
                self._plan_wake.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

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
        if plan.updates:
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

    async def _plan_loop(self) -> None:
        while True:
            deadline = self.planner.next_deadline()
            delay = 2.0 if deadline is None else min(2.0, max(0.0, deadline - time.time()))
            try:
                await asyncio.wait_for(self._plan_wake.wait(), delay)
            except TimeoutError:
                await self._plan()
            else:  # new work was scheduled elsewhere: recompute the deadline
                self._plan_wake.clear()

    async def _traffic_loop(self) -> None:
        """Sample the peers' counters every ``traffic_poll`` while traffic flows; an idle
        interface is sampled only by the plan loop's reads (every 2 s), which keeps the idle
        daemon's CPU where it was."""
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
        if self.planner.watch_traffic(device, time.time()):
            log.info("a peer's path stalled: probing the registrar now")
            self._probe_now.set()
        if self.planner.traffic_active:
            self._traffic_wake.set()

    # -- status for `wgmesh peers` ------------------------------------------------------------

    def status(self) -> dict[str, object]:
        now = time.time()
        device = self.device
        views = self.planner.views(device, now) if device else []
        return {
            "interface": self.s.interface,
            "public_key": encode_key(self.own_key) if device else None,
            "mode": self.s.mode,
            "registrar": str(self.s.registrar),
            "observed_endpoint": str(self.planner.our_public) if self.planner.our_public else None,
            "nat": self.planner.our_nat,
            "registrar_last_answer": self.last_status,
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


def _private_of(wg: WireGuardControl) -> bytes:
    """The interface's private key, read once for the box key exchange and kept only in the
    Sealer (boxes use X25519 between the WireGuard private key and the registrar's key)."""
    return read_private_key(wg.name)
