"""The registrar process: asyncio adapters around the sans-IO :class:`Registry` and :class:`Zone`.

One datagram handler per STUN socket (the primary port and the alternate port used to tell
cone from symmetric NATs, on each listen address), the DNS UDP+TCP server, and SIGHUP to reload
the authorized-keys file.

Every datagram leaves from the local address and port its peer last talked to, or the peer's
NAT drops it: an answer goes out by the socket its request came in on, from the address the
request was sent to (:mod:`wgmesh.registry.udpbatch` reads it on wildcard sockets); anything the
registrar sends by itself (Pushes, Repunches passed on, relay grants) goes out by the socket and
from the address the destination's last answered datagram came in on (:class:`ReplyRoutes`, a
bounded LRU table), else by the primary-port socket of the destination's family.

Nothing polls. After every input that can change the registry (a batch of datagrams, a reload,
the restore at startup, the expiry timer itself) the adapter drains the registry's events and
re-arms two loop timers:

- one expiry timer at ``Registry.next_timer()``: when it fires, ``expire(now)`` withdraws what
  is due, its pushes are sent, and the timer is re-armed from ``next_timer()`` again (none while
  nothing can expire);
- one flush timer, armed only while peer changes are waiting to be written to SQLite: they are
  written ``flush_interval`` seconds after the first of them (0.2 s), in one transaction;
- one fold timer, armed only while the store wants its refresh journal folded into the table
  (wgmesh.registry.store): every ``FOLD_PAUSE`` seconds it writes what is queued, then folds the
  next ``FOLD_CHUNK`` rows.

An idle registrar with no peers therefore has no timer at all, and one with peers wakes up only
when the oldest of them is due to expire; only the counter log line (``log_counters``, the
command line's ``--log-counters``) wakes it on a fixed interval. :meth:`Registrar.metrics`
maps every counter into metric families, served over HTTP with ``metrics``
(:mod:`wgmesh.metricshttp`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sqlite3
import time
from typing import Any, cast

from wgmesh.metricshttp import HttpListener, ListenFailure, log_counters, metrics_route
from wgmesh.proto import sealed
from wgmesh.proto.dnssd import Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, public_key, short_key
from wgmesh.proto.meshview import snapshot
from wgmesh.proto.metrics import (
    Family,
    counter,
    describe_all,
    gauge,
    labelled,
)
from wgmesh.proto.peerentry import Event, Refresh
from wgmesh.proto.registry import Change, Outgoing, Registry
from wgmesh.registry.admission import load_admission
from wgmesh.registry.ddns import UpdateService, ddns_metrics
from wgmesh.registry.dns import DnsAdapterStats, DnsServer, start_dns
from wgmesh.registry.relaynft import KernelRelayError
from wgmesh.registry.relayserve import RelayService
from wgmesh.registry.replyroute import ReplyRoutes, _local_of, send_from
from wgmesh.registry.settings import RegistrarSettings
from wgmesh.registry.statuspage import remove_socket, serve_socket
from wgmesh.registry.statuspage import routes as status_routes
from wgmesh.registry.store import Store
from wgmesh.registry.udpbatch import (
    BatchedUdp,
    UdpEndpoint,
    is_wildcard,
    on_one_port,
    open_udp,
    v6only_for,
)
from wgmesh.registry.xfr import XfrService, xfr_metrics

log = logging.getLogger("wgmesh.registrar")

PREFIX = "wgmesh_registrar_"
"""The prefix of every metric the registrar exposes (docs/operations.md, "Metrics")."""
FOLD_PAUSE = 0.0125
"""Seconds between two steps of a journal fold (wgmesh.registry.store)."""
FOLD_CHUNK = 500
"""Stored rows a fold step goes over: 40,000 rows a second, a million in 25 s, in steps short
enough (a few ms: bench/registrations.py --store prints the longest) not to hold answers up."""
RETRY = 5.0
"""Seconds before a write to the state directory that failed (a full disk) is tried again."""
COUNTED: dict[str, tuple[str, str]] = {
    "datagrams": ("datagrams", "STUN and control datagrams received, both STUN ports"),
    "binding": ("binding_requests", "plain STUN Binding Requests answered"),
    "registered": ("registrations", "registrations recorded, on either STUN port"),
    "watched": ("watches", "Watches answered with a Status"),
    "unproven": ("watches_unproven", "Watches answered whose source is no push target yet"),
    "pushed": ("pushes", "Pushes sent to daemons"),
    "roster": ("roster_pages", "roster pages sent (mesh mode)"),
    "repunch": ("repunches", "Repunch requests passed on to the peers they named"),
    "change_request": (
        "change_requests",
        "RFC 5780 CHANGE-REQUEST Binding Requests answered (from the other port, or 420)",
    ),
    "path_report": ("path_reports", "PathReports kept (the status page's pair matrix)"),
}
"""``Registry.counters`` keys with a family of their own: key -> (name, help)."""
REJECTED = ("oversize", "not_stun", "malformed", "unexpected", "unauthorized", "bad_box",
            "stale", "replay", "table_full", "unpadded")  # fmt: skip
"""``Registry.counters`` keys that are reasons a datagram was dropped."""
LIMITED = {"rate_limited": "source", "key_limited": "key", "agreement_limited": "agreement"}
"""``Registry.counters`` keys of the rate limits, and the limit each is."""
MAPPED = {*COUNTED, *REJECTED, *LIMITED, "errors"}
"""Every ``Registry.counters`` key :meth:`Registrar.metrics` names; any other is exposed as
``other_total{counter=KEY}``."""


def describe_listen(listen: tuple[str, ...]) -> str:
    """The listen addresses as the start-up line shows them: ``0.0.0.0, [::] (IPv6 only)``."""
    v6only = v6only_for(listen)
    shown = []
    for host in listen:
        text = f"[{host}]" if ":" in host else host
        if ":" in host and is_wildcard(host):
            text += " (IPv6 only)" if v6only else " (IPv6 and IPv4)"
        shown.append(text)
    return ", ".join(shown)


class _StunSocket:
    """One STUN socket's datagram handler; the socket itself is a :mod:`udpbatch` endpoint."""

    def __init__(self, registrar: Registrar, host: str) -> None:
        self.registrar = registrar
        self.host = host
        """The listen address it is bound to."""
        self.local_port = 0
        self.endpoint: UdpEndpoint | None = None
        self.other: _StunSocket | None = None
        """The socket of the other STUN port on the same address (None: no second port)."""
        self._answer_plain = registrar.registry.answer_plain_binding

    def count_oversize(self) -> None:
        """A datagram over max_datagram, dropped unread: counted as ``receive`` counts it."""
        c = self.registrar.registry.counters
        c["datagrams"] += 1
        c["oversize"] += 1

    def count_error(self) -> None:
        """A datagram dropped because handling it raised (a bug; udpbatch logs it)."""
        self.registrar.registry.counters["errors"] += 1

    def on_datagram(self, data: bytes, addr: tuple[str, int] | None) -> bytes | None:
        """The reply to send back to ``addr``, or None (anything else goes out by itself)."""
        assert addr is not None
        # Most of a STUN server's traffic is plain Binding Requests: answered from a template,
        # with no Endpoint built and no clock read (bench/stun_qps.py measures this path).
        reply = self._answer_plain(data, addr[0], addr[1])
        if reply is not None:
            return reply
        source = _source(addr)
        registrar = self.registrar
        changed = registrar.registry.answer_change_request(
            data, source, has_other_port=self.other is not None
        )
        if changed is not None:  # RFC 5780 filtering test: maybe answered from the other port
            if not changed.other_port:
                return changed.data or None
            other = None if self.other is None else self.other.endpoint
            if changed.data and other is not None and not other.is_closing():
                send_from(other, changed.data, addr, _local_of(self.endpoint))  # same address
            return None
        out = registrar.registry.receive(data, source, self.local_port, time.time())
        if out:  # a Status (an acknowledgement) or pushes: what they tell must be on disk
            local = _local_of(self.endpoint)
            if self.endpoint is not None:
                registrar.routes.note(source, self.endpoint, local)
            registrar.make_durable()
            registrar.send(out, self.endpoint, source, local, addr)
        registrar.changed()
        return None


def _source(addr: tuple[str, int]) -> Endpoint:
    """The Endpoint of a datagram's source as udpbatch hands it over (``inet_ntop``'s text):
    an IPv4 address from its packed form, 2.7 us a datagram less than parsing the text
    (``Endpoint.from_sockaddr``, which takes everything else)."""
    host = addr[0]
    if ":" not in host:
        try:
            return Endpoint(ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, host)), addr[1])
        except OSError:
            pass
    return Endpoint.from_sockaddr(addr)


class Registrar:
    """A running registrar: ``r = await Registrar.start(settings)``, ``await r.serve_forever()``."""

    def __init__(self, settings: RegistrarSettings) -> None:
        self._loop = asyncio.get_running_loop()  # constructed by start(), inside the loop
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
        self.registry.counters.setdefault("errors", 0)  # datagrams whose handling raised
        self.relay: RelayService | None = None
        if settings.relay.enabled and settings.relay_mode != "off":
            assert settings.relay_address is not None
            self.registry.enable_relay(
                settings.relay, ipaddress.IPv4Address(settings.relay_address)
            )
            self.relay = RelayService(
                self.registry, self.store, settings.relay_address, settings.relay_mode,
                self.send, self.changed,
            )  # fmt: skip
        now = time.time()
        damaged = self.registry.restore(entries, now) + self.store.unreadable
        log.info("restored %d live peers from %s", len(self.registry.peers), self.store.path)
        if damaged:
            log.warning("%d stored peers did not read (damaged rows) and were left out: they "
                        "register again at their next probe", damaged)  # fmt: skip
        if self.store.torn:
            log.warning("%d refresh journals in %s ended in a record that did not check (torn "
                        "by a crash, or damaged): their refreshes from there on were left out",
                        self.store.torn, settings.state_dir)  # fmt: skip
        self._primary: UdpEndpoint | None = None
        """The primary-port socket of the first listen address."""
        self._primaries: dict[int, UdpEndpoint] = {}
        """Address family (4, 6) -> the primary-port socket of the first listen address that
        reaches it: where a datagram goes that :attr:`routes` knows no way for."""
        self._transports: list[UdpEndpoint] = []
        """Every STUN socket: the primary port's on each listen address, then the second
        port's on each."""
        self.routes = ReplyRoutes(max(1024, 2 * settings.registry.max_peers))
        """The way back to each peer address (two per peer: its WireGuard port and its control
        socket)."""
        self.unroutable = 0
        """Datagrams not sent: no socket of the destination's address family."""
        self._dns: DnsServer | None = None
        self._pending: list[Event] = []
        self._pending_published = 0
        """How many of ``_pending`` publish something (not refreshes)."""
        self._settle: asyncio.Handle | None = None
        """Scheduled :meth:`_after_input`: once per loop iteration that fed the registry."""
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at: float | None = None
        """The ``next_timer()`` (wall clock) the expiry timer is armed for."""
        self._flush: asyncio.TimerHandle | None = None
        self._fold: asyncio.TimerHandle | None = None
        self.store_errors = 0
        """Writes to the state directory that failed (logged, and tried again)."""
        self._closed = False
        self.stun_ports: tuple[int, ...] = ()
        self.http: HttpListener | None = None
        """The metrics listener (``settings.metrics``)."""
        self._counter_log: asyncio.Task[None] | None = None
        self.ddns: UpdateService | None = None
        """RFC 2136 UPDATEs to an external primary (``settings.update``)."""
        self.xfr: XfrService | None = None
        """Zone transfers and NOTIFYs (``settings.xfr``)."""
        self._stored_serial = -1
        """The zone serial last written to SQLite (NOTIFY waits for it: wgmesh.registry.xfr)."""
        self._status_socket: asyncio.AbstractServer | None = None

    @classmethod
    async def start(cls, settings: RegistrarSettings) -> Registrar:
        """Bind the sockets, arm the expiry timer for the restored peers, and serve."""
        self = cls(settings)
        ports = [settings.stun_port]
        if settings.stun_alt_port:
            ports.append(settings.stun_alt_port)
        listen = settings.listen
        v6only = v6only_for(listen)

        async def open_stun(host: str, port: int) -> tuple[_StunSocket, int]:
            stun = _StunSocket(self, host)
            endpoint = await open_udp(
                host,
                port,
                stun.on_datagram,
                max_datagram=settings.registry.max_datagram,
                on_truncated=stun.count_oversize,
                on_error=stun.count_error,
                fast=self.registry.plain_binding,
                on_fast=self.registry.count_plain_bindings,
                v6only=v6only,
            )
            stun.endpoint = endpoint
            stun.local_port = int(cast(tuple[str, int], endpoint.get_extra_info("sockname"))[1])
            return stun, stun.local_port

        def close_stun(stun: _StunSocket) -> None:
            if stun.endpoint is not None:
                stun.endpoint.close()

        bound: list[int] = []
        by_port: list[list[_StunSocket]] = []
        try:
            for port in ports:  # each port on every address (port 0: one free port for all)
                group, got = await on_one_port(listen, port, open_stun, close_stun)
                by_port.append(group)
                bound.append(got)
                self._transports += [g.endpoint for g in group if g.endpoint is not None]
        except OSError:
            for t in self._transports:
                t.close()
            self.store.close()
            raise
        if len(by_port) > 1:
            for first, second in zip(*by_port, strict=True):
                first.other, second.other = second, first
        for stun in by_port[0]:
            ip = ipaddress.ip_address(stun.host)
            dual = ip.version == 6 and ip.is_unspecified and not v6only
            reaches = {4, 6} if dual else {ip.version}
            for family in reaches:
                if stun.endpoint is not None:
                    self._primaries.setdefault(family, stun.endpoint)
        self._primary = by_port[0][0].endpoint
        self.stun_ports = tuple(bound)
        self.registry.primary_port = bound[0]
        if settings.xfr is not None:
            self.xfr = XfrService(self.zone, settings.xfr)
            await self.xfr.start(listen)
        if settings.update is not None:
            self.ddns = UpdateService(self.zone, settings.update)
            self.ddns.start()
        self._dns = await start_dns(
            self.zone, listen, settings.dns_port, settings.dns_limits, self.xfr
        )
        if settings.metrics is not None:
            routes = {"/metrics": metrics_route(self.metrics), **status_routes(self.status)}
            try:
                self.http = await HttpListener.start(settings.metrics, routes)
            except ListenFailure:
                await self.close()
                raise
        if settings.status_socket is not None:
            try:
                self._status_socket = await serve_socket(settings.status_socket, self.status)
            except OSError as exc:
                log.warning("no status socket at %s (wgmesh mesh cannot read this registrar): "
                            "%s", settings.status_socket, exc.strerror or exc)  # fmt: skip
        if settings.log_counters > 0:
            self._counter_log = asyncio.create_task(
                log_counters(self.metrics, settings.log_counters, log, PREFIX)
            )
        if self.relay is not None:
            try:
                await self.relay.start()
            except (OSError, KernelRelayError):
                await self.close()
                raise
        self.store.apply((), self.zone.serial)  # the restart's serial is durable at once
        self._serial_stored()
        self._want_fold()  # the journals from before the restart
        self._after_input()  # the restore
        log.info(
            "registrar %s for zone %s: listening on %s: STUN port %s, DNS port %d (UDP, TCP); %s",
            encode_key(public_key(settings.private_key)),
            settings.zone.origin,
            describe_listen(listen),
            "/".join(map(str, bound)),
            self._dns.udp_port,
            "open registration"
            if settings.open_registration and not settings.authorized_keys
            else f"authorized keys from {settings.authorized_keys}",
        )
        if self.http is not None and settings.metrics is not None:
            shown = Endpoint(settings.metrics.ip, self.http.port)
            log.info("metrics on http://%s/metrics", shown)
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
        local: bytes = b"",
        source_addr: tuple[str, int] | None = None,
    ) -> None:
        """Send ``out``: the answers to ``source`` by ``transport``, the socket the request came
        in on, from ``local``, the address it was sent to; anything else (pushes) by the socket
        and from the address its destination last came in on (:attr:`routes`), else by the
        primary-port socket of the destination's family (which the daemons' control sockets talk
        to: their NATs drop anything else). ``source_addr``: ``source`` as the socket gave it."""
        for data, dest in out:
            if dest == source and transport is not None:
                if not transport.is_closing():
                    send_from(transport, data, source_addr or dest.sockaddr(), local)
                continue
            route = self.routes.route(dest)
            if route is not None:
                t, src = route
            else:
                found = self._primaries.get(dest.family)
                if found is None:
                    self.unroutable += 1
                    continue
                t, src = found, b""
            if not t.is_closing():
                send_from(t, data, dest.sockaddr(), src)

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
        self._after_input()
        log.info("reloaded admission list: %d keys", len(admission.peers))

    # -- after every input ---------------------------------------------------------------

    def changed(self) -> None:
        """The registry was fed a datagram: settle once the current reader callback is done, so
        a batch of datagrams costs one :meth:`_after_input`, not one per datagram."""
        if self._settle is None and not self._closed:
            self._settle = self._loop.call_soon(self._after_input)

    def _after_input(self) -> None:
        """Drain the registry's events (arming the flush) and re-arm the expiry timer."""
        self._settle = None
        if self._closed:
            return
        changed = self._drain() or self.zone.serial != self._stored_serial
        if changed and self._flush is None:
            self._flush = self._loop.call_later(self.settings.flush_interval, self._write)
        if self.relay is not None:
            self.relay.changed()
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """Arm the one expiry timer at ``Registry.next_timer()``, or disarm it when nothing can
        expire. ``next_timer()`` is wall-clock time (the ``now`` the registry is given); the
        loop's clock is monotonic, so the timer is set by the delay from now."""
        when = self.registry.next_timer()
        if when == self._expiry_at and (when is None or self._expiry is not None):
            return  # the usual case: the oldest peer did not change
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._expiry_at = when
        if when is not None:
            delay = max(0.0, when - time.time())
            self._expiry = self._loop.call_at(self._loop.time() + delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = self._expiry_at = None
        self.send(self.registry.expire(time.time()))
        self._after_input()

    def _drain(self) -> bool:
        """Log the registry's new events and queue them for SQLite; True if there were any."""
        events = self.registry.events()
        for ev in events:
            if ev.change != Change.REFRESHED:
                self._pending_published += 1
                p = ev.peer
                log.info(
                    "peer %s %s (%s) endpoint %s nat %s",
                    short_key(p.key), ev.change, p.name or "-", p.endpoint, p.nat,
                )  # fmt: skip
        self._pending += events
        return bool(events)

    def make_durable(self) -> None:
        """Write the queued changes now if any of them publishes something (an added, moved or
        withdrawn peer), before an answer or a push tells anyone about it; refreshes wait for
        the flush timer (losing one costs nothing but a replay floor a moment old)."""
        self._drain()
        if self._pending_published:
            self._write()
        elif self._pending and self._flush is None:  # refreshes: the flush timer takes them
            self._flush = self._loop.call_later(self.settings.flush_interval, self._write)

    def _write(self) -> None:
        """The flush timer: write every queued change and the zone serial in one transaction
        (also called at once by :meth:`make_durable`: then the timer is not needed any more)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._drain()
        if self._pending or self.zone.serial != self._stored_serial:
            batch, self._pending, self._pending_published = self._pending, [], 0
            try:
                self.store.apply(batch, self.zone.serial, self.registry.wrapped_key)
            except (sqlite3.Error, OSError) as exc:
                self._write_failed(batch, exc)
                return
            self._serial_stored()
        self._want_fold()

    def _write_failed(self, batch: list[Event], exc: Exception) -> None:
        """A batch did not reach the disk (a full disk, a read-only file system): its changes
        that write a whole row (the latest of each peer's) are queued again and tried in
        ``RETRY`` seconds, so no peer is missing from the table (its refreshes would go to the
        journal only, and it would be lost at the restart after). Its plain refreshes are
        dropped: the peer's next one carries the same fields, newer."""
        self.store_errors += 1
        whole: dict[bytes, Event] = {}
        for ev in batch:
            if not isinstance(ev, Refresh):
                whole[ev.peer.key] = ev
            elif ev.moved:
                whole[ev.key] = ev
        self._pending = [*whole.values(), *self._pending]
        self._pending_published += sum(ev.change != Change.REFRESHED for ev in whole.values())
        log.error("could not write %d peer changes to %s: %s; the %d that write whole rows are "
                  "tried again in %.0f s", len(batch), self.store.path, exc, len(whole),
                  RETRY)  # fmt: skip
        if self._flush is None and not self._closed:
            self._flush = self._loop.call_later(RETRY, self._write)

    def _want_fold(self) -> None:
        """Arm the fold timer if the store wants its journal folded and it is not armed."""
        if (
            self._fold is None
            and not self._closed
            and self.store.fold_wanted(len(self.registry.rows))
        ):
            self._fold = self._loop.call_later(FOLD_PAUSE, self._fold_step)

    def _fold_step(self) -> None:
        """The fold timer: what is queued is written first (a fold needs every event in the
        table), then the next rows are folded."""
        self._fold = None
        self._write()  # (which may arm the next step already)
        if self._pending:  # the write failed: no fold step before the table has every event
            self._retry_fold()
            return
        if self.store.fold_wanted(len(self.registry.rows)):
            try:
                self.store.fold_step(self.registry.rows, FOLD_CHUNK)
            except (sqlite3.Error, OSError) as exc:
                self.store_errors += 1
                log.error("could not fold the refresh journal into %s: %s; trying again in "
                          "%.0f s", self.store.path, exc, RETRY)  # fmt: skip
                self._retry_fold()
                return
        self._want_fold()

    def _retry_fold(self) -> None:
        """The next fold step in ``RETRY`` seconds, not sooner (one a step had armed goes)."""
        if self._fold is not None:
            self._fold.cancel()
        self._fold = None if self._closed else self._loop.call_later(RETRY, self._fold_step)

    def _serial_stored(self) -> None:
        """The zone serial is on disk: a new one is NOTIFYed to the secondaries (only now, so
        that a restart never hands out a serial a secondary already holds)."""
        if self.zone.serial != self._stored_serial:
            self._stored_serial = self.zone.serial
            if self.xfr is not None:
                self.xfr.notify(self.zone.serial)
            if self.ddns is not None:
                self.ddns.changed()

    # -- the status page -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The mesh as the status page shows it (wgmesh.proto.meshview)."""
        now = time.time()
        return snapshot(self.registry.peers, self.registry.paths.pairs(now), now,
                        zone=self.settings.zone.origin, serial=self.zone.serial,
                        seen=self.registry.last_seen)  # fmt: skip

    # -- counters ------------------------------------------------------------------------

    def metrics(self) -> list[Family]:
        """Every counter of the registry, the zone and the DNS and UDP adapters as metric
        families, mapped here and nowhere else (docs/operations.md, "Metrics")."""
        c = self.registry.counters
        dns_errors = 0 if self._dns is None else self._dns.stats.internal_errors
        out = [counter(PREFIX + name, text, c.get(key, 0)) for key, (name, text) in COUNTED.items()]
        out += [
            labelled(
                PREFIX + "rejected", "datagrams dropped, by reason", "reason",
                {reason: c.get(reason, 0) for reason in REJECTED},
            ),
            labelled(
                PREFIX + "rate_limited", "sealed messages dropped by a rate limit", "limit",
                {limit: c.get(key, 0) for key, limit in LIMITED.items()},
            ),
            labelled(
                PREFIX + "errors", "datagrams whose handling raised (a bug: see the log)",
                "socket", {"stun": c.get("errors", 0), "dns": dns_errors},
            ),
            gauge(PREFIX + "peers", "registered peers", len(self.registry.peers)),
            gauge(
                PREFIX + "push_targets", "peers whose control address gets pushes",
                len(self.registry.watchers),
            ),
            gauge(PREFIX + "zone_serial", "the zone's SOA serial", self.zone.serial),
            gauge(
                PREFIX + "journal_records", "refreshes in the journal begun at the last fold",
                self.store.journaled,
            ),
            counter(
                PREFIX + "store_errors", "writes to the state directory that failed (logged; "
                "tried again)", self.store_errors,
            ),
            counter(
                PREFIX + "journal_torn", "refresh journals found at the start to end in a "
                "record that did not check (torn by a crash, or damaged)", self.store.torn,
            ),
        ]  # fmt: skip
        other = {key: n for key, n in c.items() if key not in MAPPED}
        if other:
            text = "registry counters without a family of their own"
            out.append(labelled(PREFIX + "other", text, "counter", other))
        out += xfr_metrics(PREFIX, self.zone, self.xfr)
        out += ddns_metrics(PREFIX, self.ddns)
        return out + self._dns_metrics() + self._udp_metrics() + self._relay_metrics()

    def _relay_metrics(self) -> list[Family]:
        """The relay's core, control and sockets (none when relaying is off)."""
        if self.relay is None:
            return []
        ctl, core, sock = self.registry.relay, self.registry.relay.relay, self.relay.sockets.stats
        p = PREFIX + "relay_"
        return [
            gauge(p + "allocations", "relay allocations held", len(core)),
            gauge(p + "pairs", "relayed pairs bound on both sides", len(ctl.pairs())),
            labelled(p + "events", "relay allocations by what happened to them", "event",
                     dict(core.counters)),
            labelled(p + "control", "relay requests and binds by outcome", "outcome",
                     dict(ctl.counters)),
            counter(p + "forwarded", "datagrams forwarded in userspace", sock.forwarded),
            counter(p + "forwarded_bytes", "payload bytes forwarded in userspace",
                    sock.forwarded_bytes),
            labelled(p + "dropped", "datagrams at relay ports not forwarded", "reason", {
                "unbound": sock.dropped_unbound, "kernel_mode": sock.dropped_kernel_mode,
                "oversize": sock.oversize, "send_failed": sock.send_failed,
            }),
            counter(p + "sync_failures", "kernel table updates that failed",
                    self.relay.stats.sync_failures),
        ]  # fmt: skip

    def _dns_metrics(self) -> list[Family]:
        z, dns = self.zone.stats, self._dns
        d = DnsAdapterStats() if dns is None else dns.stats
        r = d.rrl
        named = z.nxdomain + z.refused + z.formerr + z.notimp
        rcodes = {
            "NOERROR": max(0, z.answered - named),
            "NXDOMAIN": z.nxdomain,
            "REFUSED": z.refused,
            "FORMERR": z.formerr,
            "NOTIMP": z.notimp,
        }
        cookies = {
            "good": r.cookie_good,
            "new": r.cookie_new,
            "bad": r.cookie_bad,
            "malformed": r.cookie_malformed,
        }
        tcp_closed = {
            "full": d.tcp_rejected,
            "source_limit": d.tcp_source_rejected,
            "evicted": d.tcp_evicted,
            "oversized": d.tcp_oversized,
        }
        dropped = {"not_query": z.dropped, "size": d.udp_dropped, "malformed": d.errors}
        rrl = {"answered": r.answered, "dropped": r.dropped, "slipped": r.slipped,
               "engaged_truncated": r.engaged_truncated, "proven": r.proven}  # fmt: skip
        p = PREFIX + "dns_"
        return [
            counter(p + "queries", "DNS queries the zone was asked, UDP and TCP", z.queries),
            labelled(p + "responses", "DNS responses written, by rcode", "rcode", rcodes),
            labelled(p + "dropped", "DNS messages dropped unanswered", "reason", dropped),
            counter(p + "truncated", "UDP answers sent as TC without records", z.truncated),
            counter(p + "cache_hits", "responses served from the wire cache", z.cache_hits),
            labelled(p + "rrl", "UDP response rate limiting decisions", "decision", rrl),
            counter(p + "rrl_evicted", "prefixes evicted from the full RRL table", r.evicted),
            counter(p + "capped", "UDP queries of unproven sources given the size cap", r.capped),
            counter(p + "cap_truncated", "answers over the size cap sent as TC", r.cap_truncated),
            labelled(p + "cookies", "queries with a DNS cookie, by what it proved", "result",
                     cookies),
            labelled(p + "tcp_closed", "TCP connections closed by a limit", "reason", tcp_closed),
            gauge(p + "tcp_connections", "open DNS TCP connections",
                  0 if dns is None else dns.connections),
        ]  # fmt: skip

    def _udp_metrics(self) -> list[Family]:
        """The batched sockets' own counts, summed over the listen addresses (their truncated
        datagrams and handler errors are counted above already, as
        ``rejected{reason="oversize"}``, ``dns_dropped`` and ``errors``), and the reply routes."""
        t, n = self._transports, len(self.settings.listen)
        dns = [] if self._dns is None else self._dns._udps
        named = {"stun": t[:n], "stun_alt": t[n:], "dns": dns}
        batched = {name: [e.stats for e in group if isinstance(e, BatchedUdp)]
                   for name, group in named.items()}  # fmt: skip
        out = []
        for field_name, text in (
            ("received", "datagrams received"),
            ("sent", "datagrams sent"),
            ("send_failed", "datagrams the kernel did not take"),
            ("batches", "recvmmsg calls that returned datagrams"),
        ):
            values = {name: sum(getattr(s, field_name) for s in stats)
                      for name, stats in batched.items() if stats}  # fmt: skip
            help_text = f"batched UDP sockets: {text}"
            out.append(labelled(f"{PREFIX}udp_{field_name}", help_text, "socket", values))
        r = self.routes
        out += [
            gauge(PREFIX + "reply_routes", "peer addresses whose socket and local address are "
                  "known (pushes leave from them)", len(r)),
            counter(PREFIX + "reply_routes_evicted", "peer addresses forgotten by the full "
                    "reply route table", r.evicted),
            counter(PREFIX + "unroutable", "datagrams not sent: no socket of the destination's "
                    "address family", self.unroutable),
            counter(PREFIX + "key_agreements", "X25519 steps (first contacts; a known peer's "
                    "shared key is kept, also across restarts)", self.registry.sealer.agreements),
        ]  # fmt: skip
        return out

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping; counters since the start: %s", describe_all(self.metrics(), PREFIX))
        await self.close()

    async def close(self) -> None:
        """Stop serving and write what is still queued."""
        self._closed = True
        for handle in (self._settle, self._expiry, self._flush, self._fold, self._counter_log):
            if handle is not None:
                handle.cancel()
        self._settle = self._expiry = self._flush = self._fold = self._counter_log = None
        if self.http is not None:
            self.http.close()
            await self.http.wait_closed()
        if self._status_socket is not None and self.settings.status_socket is not None:
            self._status_socket.close()
            remove_socket(self.settings.status_socket)
        if self.relay is not None:
            await self.relay.close()
        for t in self._transports:
            t.close()
        if self._dns is not None:
            self._dns.close()
            await self._dns.wait_closed()
        if self.xfr is not None:
            self.xfr.close()
        if self.ddns is not None:
            await self.ddns.close()
        self._drain()
        if self._pending or self.zone.serial != self._stored_serial:
            self.store.apply(self._pending, self.zone.serial, self.registry.wrapped_key)
            self._pending, self._pending_published = [], 0
        self.store.close()
