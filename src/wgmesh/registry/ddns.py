"""RFC 2136 mode: the asyncio side of wgmesh.proto.ddns (``registrar --update-primary``).

One task: at start, and whenever the updater asks for it, a zone transfer (AXFR over TCP,
TSIG-signed with ``--tsig-key``) of the primary's zone resynchronises the updater; then every
new zone serial (:meth:`UpdateService.changed`) sends the peers' UPDATEs, one TCP query each,
in order. The primary's SOA serial is polled every ``poll`` seconds: a serial older than the
last one seen means the primary restarted from older data, and is answered by a transfer and a
resynchronisation. A primary that does not answer is retried with a doubling pause (1 s up to
60 s), the changes kept; each refusal is logged with the reason (a conflict once per peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.xfr
import dns.zone

from wgmesh.proto.ddns import Update, Updater
from wgmesh.proto.dnssd import Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.journal import serial_newer
from wgmesh.proto.keys import short_key
from wgmesh.proto.metrics import Family, counter, gauge, labelled
from wgmesh.proto.tsigkey import TsigKey

log = logging.getLogger("wgmesh.ddns")

TIMEOUT = 5.0
"""Seconds a query to the primary may take."""


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    """``--update-primary`` and the key that signs its UPDATEs and transfers."""

    primary: Endpoint
    tsig: TsigKey | None = None
    poll: float = 30.0
    """Seconds between two SOA checks of the primary."""


class UpdateService:
    """Keeps the external primary current; see the module docstring."""

    def __init__(self, zone: Zone, settings: UpdateSettings) -> None:
        self.zone = zone
        self.settings = settings
        self.updater = Updater(zone)
        self._key: dns.tsig.Key | None = settings.tsig.dns_key() if settings.tsig else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_serial: int | None = None
        self.primary_serial: int | None = None
        """The primary's SOA serial as last seen."""
        self.transfer_failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def changed(self) -> None:
        """The zone has a new serial (called where NOTIFYs are sent)."""
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pause = 1.0
        while True:
            try:
                if self.updater.synced is None:
                    await self._resync()
                else:
                    self.updater.changed()
                if self.updater.synced is not None:
                    await self._send_all()
                pause = 1.0
            except (OSError, dns.exception.DNSException, EOFError) as exc:
                log.warning("primary %s: %s; retrying in %.0f s", self.settings.primary,
                            exc or type(exc).__name__, pause)  # fmt: skip
                await asyncio.sleep(pause)
                pause = min(60.0, pause * 2)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll)
            except TimeoutError:
                await self._check_serial()

    async def _send_all(self) -> None:
        while batch := self.updater.take():
            for update in batch:
                rcode = await self._send(update)
                why = self.updater.answered(update, rcode)
                if why is not None:
                    log.warning("primary %s refused the UPDATE of peer %s: %s",
                                self.settings.primary, short_key(update.key), why)  # fmt: skip
                    if rcode is None or update.key not in self.updater.conflicts:
                        return  # the primary is unwell: the loop's pause, then again

    async def _send(self, update: Update) -> int | None:
        query = update.message
        if self._key is not None:
            query.use_tsig(self._key)
        try:
            answer = await dns.asyncquery.tcp(
                query, str(self.settings.primary.ip), timeout=TIMEOUT,
                port=self.settings.primary.port,
            )  # fmt: skip
        except (OSError, dns.exception.DNSException, EOFError):
            return None
        return int(answer.rcode())

    async def _resync(self) -> None:
        origin = self.zone.origin
        primary = dns.zone.Zone(origin, relativize=False)
        query, _ = dns.xfr.make_query(primary)
        if self._key is not None:
            query.use_tsig(self._key)
        try:
            await dns.asyncquery.inbound_xfr(
                str(self.settings.primary.ip), primary, query,
                port=self.settings.primary.port, timeout=TIMEOUT, lifetime=60.0,
            )  # fmt: skip
        except Exception:
            self.transfer_failures += 1
            raise
        rrsets = []
        for name, rdataset in primary.iterate_rdatasets():
            rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
            for rd in rdataset:
                rrset.add(rd, rdataset.ttl)
            rrsets.append(rrset)
            if rdataset.rdtype == dns.rdatatype.SOA and name == origin:
                self.primary_serial = int(rdataset[0].serial)
        self.updater.resync(rrsets)
        log.info("primary %s resynchronised at its serial %s: %d peers to update, %d left "
                 "alone", self.settings.primary, self.primary_serial,
                 self.updater.pending, len(self.updater.conflicts))  # fmt: skip

    async def _check_serial(self) -> None:
        query = dns.message.make_query(self.zone.origin, dns.rdatatype.SOA)
        try:
            answer = await dns.asyncquery.tcp(
                query, str(self.settings.primary.ip), timeout=TIMEOUT,
                port=self.settings.primary.port,
            )  # fmt: skip
        except (OSError, dns.exception.DNSException, EOFError):
            return
        soa = answer.get_rrset(
            answer.answer, self.zone.origin, dns.rdataclass.IN, dns.rdatatype.SOA
        )
        if soa is None:
            return
        serial = int(soa[0].serial)
        if self.primary_serial is not None and serial_newer(self.primary_serial, serial):
            log.warning("primary %s went back from serial %d to %d (restarted from older "
                        "data?): resynchronising", self.settings.primary,
                        self.primary_serial, serial)  # fmt: skip
            self.updater.synced = None
            self._wake.set()
        self.primary_serial = serial


def ddns_metrics(prefix: str, service: UpdateService | None) -> list[Family]:
    """The UPDATE counters (all 0 without ``--update-primary``)."""
    c = service.updater.counters if service is not None else dict.fromkeys(
        ("updates", "applied", "conflicts", "failed", "resyncs"), 0)  # fmt: skip
    p = prefix + "ddns_"
    outcomes = {"applied": c["applied"], "conflict": c["conflicts"], "failed": c["failed"]}
    return [
        counter(p + "updates", "RFC 2136 UPDATEs sent to the primary", c["updates"]),
        labelled(p + "answers", "UPDATEs answered, by outcome", "outcome", outcomes),
        counter(p + "resyncs", "resynchronisations from a transfer of the primary's zone",
                c["resyncs"]),
        gauge(p + "pending", "peers with a change the primary does not have yet",
              service.updater.pending if service is not None else 0),
        gauge(p + "conflicts", "peers left alone: their names hold what we did not write",
              len(service.updater.conflicts) if service is not None else 0),
    ]  # fmt: skip
