"""The daemon: a thin asyncio adapter around two sans-IO cores.

- :class:`~wgmesh.proto.client.RegistrarClient` decides when to Register and Watch, what a
  Status or a Push means, backoff and re-reads of the zone; this moves its datagrams (Registers
  through the raw sender on the WireGuard port, over IPv4 or IPv6 as the destination says;
  Watches through the control socket of the control address's family) and re-arms one timer
  from its ``next_timer()``; a send that finds no route (ENETUNREACH, EADDRNOTAVAIL,
  EAFNOSUPPORT) is handed back to the client, which skips that family for the round or moves
  control to the registrar's other address;
- :class:`~wgmesh.proto.punch.Planner` decides WireGuard endpoints and punches; this reads the
  interface (in a thread: blocking calls never run on the event loop), applies its plan, and
  plans again when its ``next_deadline()`` comes, when records change, or every
  ``device_poll`` seconds (WireGuard reports handshakes only when asked);
- records come from DNS-SD (:class:`~wgmesh.daemon.resolver.ZoneResolver`) and mDNS
  (:mod:`wgmesh.daemon.mdns`); the peers' counters are sampled every ``traffic_poll`` while
  traffic flows, and a stalled path (``Planner.watch_traffic``) asks the client for a probe;
- a unix socket answers ``wgmesh peers`` with the daemon's view as JSON;
- :meth:`Daemon.metrics` maps the client's and this adapter's counters (:class:`DaemonStats`)
  into metric families, served over HTTP with ``--metrics`` and logged when they change
  (:mod:`wgmesh.metricshttp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from wgmesh import __version__
from wgmesh.daemon.controlsock import UNROUTABLE, ControlSockets
from wgmesh.daemon.localaddr import local_addresses, read_private_key
from wgmesh.daemon.rawsend import RawSender
from wgmesh.daemon.resolver import ZoneResolver
from wgmesh.daemon.routes import KernelRoutes
from wgmesh.daemon.settings import DaemonSettings, DaemonStats
from wgmesh.errorlog import ErrorLog
from wgmesh.errors import ConfigError, InterfaceNotFound, RemoteProtocolError, WireGuardError
from wgmesh.metricshttp import HttpListener, log_counters, metrics_route
from wgmesh.proto.client import (
    ControlMoved,
    Event,
    MappingObserved,
    MembersChanged,
    PunchAsked,
    RegistrarClient,
    RegistrarState,
    Resolve,
    Via,
)
from wgmesh.proto.device import DeviceState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, short_key
from wgmesh.proto.kinds import CandidateKind
from wgmesh.proto.metrics import (
    Family,
    Kind,
    counter,
    describe_all,
    gauge,
    labelled,
)
from wgmesh.proto.pathreport import PathReporter
from wgmesh.proto.punch import Hint, PeerRecord, Planner, Source, merge_hints
from wgmesh.proto.relaylease import RelayChanged
from wgmesh.proto.sealed import MAX_ADDRESSES, RelayRefusal
from wgmesh.wg.control import WireGuardControl

if TYPE_CHECKING:
    from wgmesh.daemon.mdns import LanDiscovery

log = logging.getLogger("wgmesh.daemon")

_REFUSALS = {
    RelayRefusal.OFF: "it does not relay (start it with --relay-ports)",
    RelayRefusal.UNKNOWN_PEER: "the peer is not registered with it, or not watching",
    RelayRefusal.PEER_LIMIT: "this peer or the other holds as many relays as it allows",
    RelayRefusal.EXHAUSTED: "its relay ports are all in use",
    RelayRefusal.SELF: "a relay to ourselves",
    RelayRefusal.NONE: "",
}

PREFIX = "wgmesh_daemon_"
"""The prefix of every metric the daemon exposes (docs/operations.md, "Metrics")."""
CLIENT_COUNTED: dict[str, tuple[str, str]] = {
    "rounds": ("probe_rounds", "probe rounds started (Registers and Watches to the registrar)"),
    "failed_rounds": ("probe_rounds_failed", "probe rounds that got no Status"),
    "status": ("statuses", "Statuses accepted from the registrar"),
    "pushes": ("pushes", "Pushes accepted from the registrar"),
    "relay_grants": ("relay_grants", "relay grants accepted from the registrar"),
    "repunches": ("repunches_asked", "Repunches: a peer whose path to us stalled asked us to send"),
    "unroutable": ("sends_unroutable", "sends to a registrar address of a family without a route"),
    "control_moves": ("control_moves", "times control moved to another registrar address"),
}
"""``RegistrarClient.counters`` keys with a family of their own: key -> (name, help)."""
CLIENT_DROPPED = {"dropped": "invalid", "late": "late"}
"""``RegistrarClient.counters`` keys of control datagrams dropped, and the reason each is."""


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
        self._control: ControlSockets | None = None
        self._unroutable_logged: set[Endpoint] = set()
        self._raw: RawSender | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._plan_wake = asyncio.Event()
        self._resolve_wake = asyncio.Event()
        self._traffic_wake = asyncio.Event()
        self._resolve_keys: set[bytes] = set()
        self._resolve_all = False
        self._tasks: list[asyncio.Task[None]] = []
        self._relayed: frozenset[bytes] = frozenset()  # the peers the Planner wants relayed
        self._routes = KernelRoutes(settings.interface) if settings.routes else None
        self._routed: tuple[str, ...] | None = None  # the allowed IPs the routes follow
        self._paths = PathReporter(settings.paths)
        self._lookup_errors = ErrorLog("DNS lookups", logger=log)
        self.stats = DaemonStats()
        self.http: HttpListener | None = None
        """The metrics listener (``settings.metrics``)."""

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
        registrars = self.s.registrar_endpoints()
        self.planner.registrar_ips = frozenset(ep.ip for ep in registrars)
        client = RegistrarClient(
            self.s.client_config(), read_private_key(self.wg.name), registrars,
            self.s.registrar_key, time.time(), os.urandom, alt_port=self.s.registrar_alt_port,
            name=self.s.name, software=f"wgmesh/{__version__}",
        )  # fmt: skip
        if client.own_key != own_key:
            raise WireGuardError(f"{self.s.interface}: the private key read does not match")
        self.client = client
        self._raw = RawSender(self.device.listen_port)
        loop = asyncio.get_running_loop()
        self._control = ControlSockets(self.on_control, registrars)
        log.info(
            "daemon for %s (key %s, port %d) registrar %s zone %s mode %s",
            self.s.interface, short_key(own_key), self.device.listen_port,
            " ".join(map(str, registrars)), self.s.zone, self.s.mode,
        )  # fmt: skip
        client.set_addresses(await self._local_addresses(), time.time())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = None
        try:
            if self.s.status_socket is not None:
                server = await self._serve_status(self.s.status_socket)
            if self.s.metrics is not None:
                routes = {"/metrics": metrics_route(self.metrics)}
                self.http = await HttpListener.start(self.s.metrics, routes)
                shown = Endpoint(self.s.metrics.ip, self.http.port)
                log.info("metrics on http://%s/metrics", shown)
            loops = [self._resolve_loop(), self._plan_loop(), self._address_loop()]
            if self.s.traffic_poll > 0:
                loops.append(self._traffic_loop())
            if self.s.log_counters > 0:
                loops.append(log_counters(self.metrics, self.s.log_counters, log, PREFIX))
            self._tasks = [asyncio.create_task(c) for c in loops]
            self._drive()  # the first probe round starts now
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopping, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stopping:
                    task.result()  # a loop ended: it raised, so must we
            log.info("stopping; counters since the start: %s", describe_all(self.metrics(), PREFIX))
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
        if self.http is not None:
            self.http.close()
            await self.http.wait_closed()
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
        sent, failed = self.stats.sent, self.stats.send_failed
        for t in client.datagrams_to_send():
            try:
                if t.via is Via.WIREGUARD:
                    self._raw.send(t.destination, t.data)
                else:
                    self._control.target = t.destination
                    self._control.sendto(t.data)
            except OSError as exc:
                failed[t.via] += 1
                log.debug("sending to %s: %s", t.destination, exc)
                if exc.errno in UNROUTABLE:  # skipped for the round, or control moves on
                    client.unroutable(t.destination, time.time())
            else:
                sent[t.via] += 1
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
                self.stats.mapping_changes += 1
                shown = ", ".join(map(str, event.observed))
                log.info("our public mapping changed to %s: re-punching every peer", shown)
            self._plan_wake.set()
        elif isinstance(event, Resolve):
            if event.keys is None:
                self._resolve_all = True
            else:
                self._resolve_keys.update(event.keys)
            self._resolve_wake.set()
        elif isinstance(event, PunchAsked):
            shown = ", ".join(short_key(k) for k in event.keys)
            log.info("peer %s: its path to us stalled, re-punching toward it", shown)
            self.planner.kick(event.keys, "the peer's path to us stalled: re-punching")
            self._plan_wake.set()
        elif isinstance(event, RelayChanged):
            if event.relay is not None:
                log.info("peer %s: relay ready at %s", short_key(event.peer), event.relay)
            elif event.reason is not RelayRefusal.NONE:
                log.warning("peer %s: the registrar refuses a relay: %s", short_key(event.peer),
                            _REFUSALS[event.reason])  # fmt: skip
            else:
                log.info("peer %s: relay released", short_key(event.peer))
            self.planner.set_relay(event.peer, event.relay)
            self._plan_wake.set()
        elif isinstance(event, MembersChanged):
            log.info("the registrar vouches for %d mesh members", len(event.members))
            self.planner.set_members(event.members)
            self._resolve_all = True  # members not resolved yet
            self._resolve_wake.set()
        elif isinstance(event, RegistrarState):
            if event.first and self.s.mdns:
                self._tasks.append(asyncio.create_task(self._start_lan()))
            assert self.client is not None
            if not event.reachable:
                log.warning(
                    "registrar %s does not answer; tunnels are unaffected (endpoints stay as "
                    "they are), retrying with backoff. If it is up and reachable, check that it "
                    "admits this key and that --registrar-key is its key: it answers nothing it "
                    "cannot authenticate",
                    " ".join(map(str, self.client.registrars)),
                )
            elif not event.first:
                log.info("registrar %s answers again", self.client.registrar)
        elif isinstance(event, ControlMoved):
            if not event.unroutable:
                log.warning("registrar %s did not answer a round: control moves to %s",
                            event.previous, event.current)  # fmt: skip
            elif event.previous not in self._unroutable_logged:  # once: it stays unroutable
                self._unroutable_logged.add(event.previous)
                log.info("registrar %s: no route from this host; control moves to %s",
                         event.previous, event.current)  # fmt: skip

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
                self.stats.lookups["failed"] += 1
                log.debug("lookup %s: %s", short_key(key), exc)
                continue
            except Exception as exc:  # a bug reading an answer: it costs the lookup only
                self.stats.lookups["failed"] += 1
                self._lookup_errors(exc, f"lookup {short_key(key)} raised (a bug: report it)")
                continue
            self.stats.lookups["absent" if record is None else "found"] += 1
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
        planned = True
        while True:
            deadline = self.planner.next_deadline()
            delay = self.s.device_poll
            if deadline is not None and planned:  # (a failed read: wait, do not retry at once)
                delay = min(delay, max(0.0, deadline - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._plan_wake.wait(), delay)
            self._plan_wake.clear()
            planned = await self._plan()

    async def _plan(self) -> bool:
        """Read the interface and apply a plan; False when the interface could not be read."""
        try:
            self.device = await self.read_device()
        except WireGuardError as exc:
            self.stats.interface_errors["read"] += 1
            log.warning("reading %s: %s", self.s.interface, exc)
            return False
        if self.s.traffic_poll > 0:
            self._watch_traffic(self.device)
        if self._routes is not None:
            await self._sync_routes(self.device)
        plan = self.planner.plan(self.device, time.time())
        assert self._raw is not None and self.client is not None
        if plan.relay != self._relayed:
            for key in plan.relay - self._relayed:
                clash = self.planner.clash_reason(key)
                if clash:
                    log.warning("peer %s: %s", short_key(key), clash)
            self._relayed = plan.relay
            self.client.want_relays(plan.relay, time.time())
            self._drive()
        self._report_paths(self.device)
        for ep in plan.prime:
            with contextlib.suppress(OSError):
                self._raw.send(ep, b"", ttl=self.s.prime_ttl)
                self.stats.primes += 1
        if not plan.updates:
            return True
        for u in plan.updates:
            what = []
            if u.remove:
                what.append("removed")
            if u.renew:
                what.append("renewed (WireGuard's 5 s initiation limit starts afresh)")
            if u.allowed_ips is not None:
                what.append(f"added with allowed IPs {','.join(u.allowed_ips)}")
            if u.endpoint is not None:
                what.append(f"endpoint {u.endpoint}")
            if u.handshake_now:
                what.append("handshake now")
            why = plan.why.get(u.public_key)
            log.info("peer %s: %s%s", short_key(u.public_key), ", ".join(what),
                     f" ({why})" if why else "")  # fmt: skip
        try:
            await asyncio.to_thread(self.wg.apply, list(plan.updates))
        except WireGuardError as exc:
            self.stats.interface_errors["apply"] += 1
            log.warning("updating %s: %s", self.s.interface, exc)
        else:
            self.stats.count_applied(plan.updates)
        return True

    async def _sync_routes(self, device: DeviceState) -> None:
        """``--routes``: the kernel routes follow the allowed IPs the interface holds for the
        members the registrar vouches for (the plan that changed them ran before this read)."""
        assert self._routes is not None
        members = self.planner.members
        wanted = tuple(sorted(ip for p in device.peers if p.public_key in members
                              for ip in p.allowed_ips))  # fmt: skip
        if wanted == self._routed:
            return
        try:
            await asyncio.to_thread(self._routes.sync, wanted)
        except (OSError, ValueError, ConfigError, subprocess.SubprocessError) as exc:
            log.warning("routes on %s: %s (retried at the next plan)", self.s.interface, exc)
            return
        self._routed = wanted

    def _report_paths(self, device: DeviceState) -> None:
        """Our path to each peer, sealed to the registrar on change and now and then
        (wgmesh.proto.pathreport); the views are built only when a look is due."""
        now = time.time()
        if self.client is None or not self._paths.due(now):
            return
        reports = self._paths.update(self.planner.views(device, now), now)
        for entries in reports:
            self.client.report_paths(entries, now)
        if reports:
            self._drive()

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
                self.stats.interface_errors["read"] += 1
                log.debug("reading %s: %s", self.s.interface, exc)
                continue
            self._watch_traffic(self.device)

    def _watch_traffic(self, device: DeviceState) -> None:
        now = time.time()
        stalled = self.planner.watch_traffic(device, now)
        if stalled:
            self.stats.stalls += 1
            shown = ", ".join(sorted(short_key(k) for k in stalled))
            log.info("path to %s stalled: re-punching from both sides, probing the registrar",
                     shown)  # fmt: skip
            assert self.client is not None
            self.client.request_probe(now)
            self.client.ask_repunch(stalled, now)
            self._drive()
            self._plan_wake.set()
        if self.planner.traffic_active:
            self._traffic_wake.set()

    # -- counters -----------------------------------------------------------------------------

    def metrics(self) -> list[Family]:
        """The registrar client's and the adapter's counters and a few gauges as metric
        families, mapped here and nowhere else (docs/operations.md, "Metrics")."""
        client, st = self.client, self.stats
        c = {} if client is None else client.counters
        out = [counter(PREFIX + n, text, c.get(k, 0)) for k, (n, text) in CLIENT_COUNTED.items()]
        dropped = {reason: c.get(key, 0) for key, reason in CLIENT_DROPPED.items()}
        other = {k: n for k, n in c.items() if k not in CLIENT_COUNTED and k not in CLIENT_DROPPED}
        if other:
            text = "registrar client counters without a family of their own"
            out.append(labelled(PREFIX + "other", text, "counter", other))
        views = self.planner.views(self.device, time.time()) if self.device else []
        direct = sum(v.path == "direct" for v in views)
        reachable = int(client is not None and bool(client.reachable))
        return [
            *out,
            labelled(PREFIX + "control_dropped", "control datagrams dropped", "reason", dropped),
            labelled(PREFIX + "datagrams_sent", "datagrams sent to the registrar", "via",
                     st.sent),
            labelled(PREFIX + "send_failed", "sends to the registrar that failed", "via",
                     st.send_failed),
            labelled(PREFIX + "dns_lookups", "DNS-SD lookups of a peer", "result", st.lookups),
            labelled(PREFIX + "peer_updates", "changes applied to the interface's peers",
                     "action", st.updates),
            labelled(PREFIX + "interface_errors", "failed reads and updates of the interface",
                     "op", st.interface_errors),
            counter(PREFIX + "mapping_changes", "times our public mapping changed",
                    st.mapping_changes),
            counter(PREFIX + "primes", "NAT-priming packets sent", st.primes),
            counter(PREFIX + "stalls", "stalled paths that made us probe at once", st.stalls),
            labelled(PREFIX + "peers", "the interface's peers, by path", "path",
                     {"direct": direct, "none": len(views) - direct}, Kind.GAUGE),
            gauge(PREFIX + "registrar_reachable", "1: the last probe round got a Status",
                  reachable),
            gauge(PREFIX + "registrar_last_answer_timestamp_seconds",
                  "when the last Status came (Unix seconds; 0: never)",
                  0.0 if client is None else client.last_answer),
        ]  # fmt: skip

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
            "registrar": str(client.registrar if client else self.s.registrar),
            "registrars": [str(ep) for ep in self.s.registrar_endpoints()],
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
