"""Zone transfers to secondaries and NOTIFYs to them: the IO half of :mod:`wgmesh.proto.xfr`
and :mod:`wgmesh.proto.notify`, hooked into the DNS adapter (:mod:`wgmesh.registry.dns`).

- **Who may transfer**: only the addresses given as secondaries (any source port; over TCP the
  address is proven by the handshake), and, when a TSIG key is configured, only with a query
  signed by it (RFC 8945). Anyone else gets REFUSED, a bad signature NOTAUTH with the TSIG error
  (BADKEY, BADSIG or BADTIME: section 5.2), each counted and logged (at most once a minute per
  reason and address).
- **Transfers** run on the DNS server's TCP connections (RFC 5936 section 4.1; RFC 7766): the
  plan is taken at once (a copy of the zone at its serial, or the journal's deltas), then its
  messages are written one at a time, each signed when the query was (section 5.3.1 of RFC
  8945: the first with the query's MAC, each later one chained), yielding to the loop between
  messages and closing the connection if the client stops reading for ``tcp_idle`` seconds.
- **Signed queries** other than transfers (a secondary's SOA check) are verified, answered by
  the zone as usual and signed; an IXFR over UDP gets the current SOA alone, which tells the
  client to ask over TCP (RFC 1995 section 2).
- **NOTIFY**: :meth:`XfrService.notify` is called with each new serial once it is on disk (so a
  restart never reuses a serial a secondary was told of); UDP sockets on an ephemeral port send
  the NOTIFYs and read the responses, and one timer re-armed from the schedule's
  ``next_timer()`` drives retries. A secondary accepts a NOTIFY only from an address it knows as
  its primary, so each leaves from the local address the secondary last transferred from (the
  TCP connection's own address; else the first listen address of its family): one socket per
  concrete listen address of a secondary's family, and one on that family's wildcard (sending
  with IP_PKTINFO / IPV6_PKTINFO) when the server listens on a wildcard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import dns.tsig

from wgmesh.proto.dnssd import Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.metrics import Family, counter, gauge, labelled
from wgmesh.proto.notify import (
    Notifier,
    NotifyConfig,
    NotifyStats,
    is_notify_response,
    notify_message,
)
from wgmesh.proto.tsigkey import TsigKey
from wgmesh.proto.xfr import IXFR, Kind, messages, plan, rrsets, sign, transfer_query, tsig_size
from wgmesh.registry.udpbatch import pktinfo_control

log = logging.getLogger("wgmesh.xfr")

LOG_INTERVAL = 60.0
"""Seconds between two log lines of one refusal reason from one address."""
_TSIG = b"\x00\xfa\x00\xff"  # type TSIG, class ANY: a cheap sniff before parsing


@dataclass(frozen=True, slots=True)
class XfrSettings:
    """Who the secondaries are and how they are talked to."""

    secondaries: tuple[Endpoint, ...]
    """Allowed to transfer (by address) and sent NOTIFY (at address:port)."""
    key: TsigKey | None = None
    """Required on transfers and used to sign NOTIFYs when given."""
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    """The NOTIFY retry schedule."""
    message_size: int = 16383
    """Largest transfer message, TSIG included (at most 16383: wgmesh.proto.xfrwire)."""
    tcp_idle: float = 10.0
    """Seconds a transfer waits for the client to read a message."""


@dataclass(slots=True)
class XfrStats:
    """What the transfer side did (mapped into metrics by the registrar)."""

    axfr: int = 0
    """AXFRs sent."""
    ixfr: int = 0
    """IXFRs sent as deltas."""
    ixfr_full: int = 0
    """IXFRs answered with the whole zone (the journal did not reach back that far)."""
    current: int = 0
    """IXFRs answered with the SOA alone (the secondary was up to date), UDP ones included."""
    refused_address: int = 0
    """Transfer queries from an address that is not a secondary."""
    refused_unsigned: int = 0
    """Transfer queries without a TSIG while a key is required."""
    refused_other: int = 0
    """Transfer queries for another zone or class, or malformed."""
    tsig_failed: int = 0
    """Messages whose TSIG did not verify (unknown key, bad signature, bad time)."""
    signed_answered: int = 0
    """Signed queries other than transfers answered (and signed)."""
    aborted: int = 0
    """Transfers ended early because the client went away or stopped reading."""
    messages: int = 0
    """Transfer messages written."""
    bytes: int = 0
    """Bytes of transfer messages written (length prefixes not counted)."""
    notify_errors: int = 0
    """NOTIFYs the kernel would not send (no route, ...)."""


class XfrService:
    """Transfers and NOTIFYs for one zone; see the module docstring."""

    def __init__(self, zone: Zone, settings: XfrSettings) -> None:
        self.zone = zone
        self.settings = settings
        self.stats = XfrStats()
        self.key = None if settings.key is None else settings.key.dns_key()
        self._keyring = None if self.key is None else {self.key.name: self.key}
        self._allowed = frozenset(s.ip.packed for s in settings.secondaries)
        self._reserve = 0 if self.key is None else tsig_size(self.key)
        self.notifier = Notifier(settings.secondaries, _random_id, settings.notify)
        self._sockets: list[_Sender] = []
        """The NOTIFY sockets (see the module docstring), in the order of the listen addresses."""
        self._local_of: dict[bytes, bytes] = {}
        """A secondary's packed address -> the packed local address it last transferred from
        (only secondaries are kept: bounded by the configuration)."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged: dict[tuple[str, bytes], float] = {}

    # -- answers over the DNS server's sockets ----------------------------------------------

    def answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The DNS server's answer function: the zone's, except for signed queries (verified,
        answered and signed here) and IXFR over UDP (the SOA alone)."""
        signed = bool(query[10] or query[11]) and _TSIG in query
        # an IXFR carries the client's SOA in authority: other queries have none
        ixfr_udp = not tcp and bool(query[8] or query[9]) and transfer_query(query) == IXFR
        if (not signed and not ixfr_udp) or query[2] & 0x80:  # (a response: the zone drops it)
            return self.zone.answer(query, tcp=tcp)
        try:
            q = dns.message.from_wire(query, keyring=self._keyring or False)
        except (dns.tsig.BadSignature, dns.tsig.BadTime, dns.message.UnknownTSIGKey) as exc:
            return self._tsig_error(query, exc, b"")
        except (dns.exception.DNSException, ValueError, IndexError, struct.error):
            return self.zone.answer(query, tcp=tcp)  # not a message we read: the zone decides
        if q.had_tsig and not q.keyring:  # signed, and we have no key at all
            return self._tsig_error(query, dns.message.UnknownTSIGKey(), b"")
        if ixfr_udp:
            self.stats.current += 1
            r = dns.message.make_response(q)  # signed by dnspython when the query was
            r.flags |= dns.flags.AA
            r.answer.append(self.zone.soa(self.zone.serial))
            return bytes(r.to_wire())
        plain = dns.message.Message(q.id)
        plain.flags = q.flags
        plain.question = list(q.question)
        if q.edns >= 0:
            plain.use_edns(q.edns, q.ednsflags, q.payload, options=list(q.options))
        out = self.zone.answer(plain.to_wire(), tcp=tcp)
        if out is None:
            return None
        self.stats.signed_answered += 1
        return self._signed(q, out)

    def _signed(self, q: dns.message.Message, wire: bytes) -> bytes:
        if not q.had_tsig or not q.keyring:
            return wire
        return sign(wire, q.keyring, int(time.time()), q.mac or b"")[0]

    def _tsig_error(self, query: bytes, exc: Exception, address: bytes) -> bytes | None:
        """NOTAUTH with the TSIG error, the TSIG unsigned (RFC 8945 section 5.2)."""
        self.stats.tsig_failed += 1
        error = (
            dns.rcode.BADTIME
            if isinstance(exc, dns.tsig.BadTime)
            else dns.rcode.BADSIG
            if isinstance(exc, dns.tsig.BadSignature)
            else dns.rcode.BADKEY
        )
        shown = {dns.rcode.BADTIME: "BADTIME", dns.rcode.BADSIG: "BADSIG"}.get(error, "BADKEY")
        self._log("tsig", address, f"TSIG did not verify ({shown})")
        try:
            q = dns.message.from_wire(query, keyring=False)
            r = dns.message.make_response(q)
        except (dns.exception.DNSException, ValueError, IndexError, struct.error):
            return None
        r.set_rcode(dns.rcode.NOTAUTH)
        if q.tsig is not None:
            rd = q.tsig[0].replace(mac=b"", error=error, other=b"", time_signed=int(time.time()))
            r.tsig = dns.rrset.from_rdata(q.tsig.name, 0, rd)
        return bytes(r.to_wire())

    # -- transfers ------------------------------------------------------------------------

    def is_transfer(self, query: bytes) -> bool:
        """``query`` asks for AXFR or IXFR (handed to :meth:`transfer` over TCP)."""
        return transfer_query(query) != 0

    async def transfer(self, query: bytes, address: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer a transfer query on a TCP connection; False when the connection must end."""
        refusal = self._refusal(query, address)
        if isinstance(refusal, bytes):
            return await self._write(writer, refusal)
        if refusal is None:
            return False
        q = refusal
        self._note_local(address, writer)
        decided = plan(self.zone, q)
        if isinstance(decided, int):
            self.stats.refused_other += 1
            rcode = dns.rcode.Rcode(decided)
            self._log("zone", address, f"transfer refused: {dns.rcode.to_text(rcode)}")
            r = dns.message.make_response(q)  # signed by dnspython when the query was
            r.set_rcode(rcode)
            return await self._write(writer, bytes(r.to_wire()))
        counted = {Kind.AXFR: "axfr", Kind.IXFR: "ixfr", Kind.IXFR_FULL: "ixfr_full",
                   Kind.CURRENT: "current"}[decided.kind]  # fmt: skip
        setattr(self.stats, counted, getattr(self.stats, counted) + 1)
        full = decided.kind in (Kind.AXFR, Kind.IXFR_FULL)  # worth a line; the others debug
        log.log(
            logging.INFO if full else logging.DEBUG, "%s to %s: serial %s%s",
            decided.kind.upper(), _shown(address), decided.serial,
            "" if decided.client_serial is None else f" (theirs {decided.client_serial})",
        )  # fmt: skip
        question = (q.question[0].name, q.question[0].rdtype)
        reserve = self._reserve if q.had_tsig else 0
        ctx = None
        mac = (q.mac or b"") if q.had_tsig else b""
        parts = rrsets(self.zone, decided)
        for wire in messages(self.zone, parts, q.id, question, self.settings.message_size, reserve):
            if q.had_tsig and q.keyring:
                wire, _, ctx = sign(wire, q.keyring, int(time.time()), mac, ctx)
                mac = b""
            if not await self._write(writer, wire):
                self.stats.aborted += 1
                return False
            self.stats.messages += 1
            self.stats.bytes += len(wire)
            await asyncio.sleep(0)  # a large zone: let the loop answer queries in between
        return True

    def _refusal(self, query: bytes, address: bytes) -> dns.message.Message | bytes | None:
        """The parsed query if it may transfer, else the answer refusing it (or None: send
        nothing and close)."""
        if address not in self._allowed:
            self.stats.refused_address += 1
            self._log("address", address, "transfer refused: not a secondary")
            return _refused(query)
        try:
            q = dns.message.from_wire(query, keyring=self._keyring or False)
        except (dns.tsig.BadSignature, dns.tsig.BadTime, dns.message.UnknownTSIGKey) as exc:
            return self._tsig_error(query, exc, address)
        except (dns.exception.DNSException, ValueError, IndexError, struct.error):
            self.stats.refused_other += 1
            return _refused(query)
        if self.key is not None and not (q.had_tsig and q.keyring):
            self.stats.refused_unsigned += 1
            self._log("unsigned", address, "transfer refused: not signed with the TSIG key")
            return _refused(query)
        return q

    async def _write(self, writer: asyncio.StreamWriter, wire: bytes) -> bool:
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            async with asyncio.timeout(self.settings.tcp_idle):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    def _log(self, reason: str, address: bytes, text: str) -> None:
        now = time.monotonic()
        if len(self._logged) > 1024:
            self._logged.clear()
        if self._logged.get((reason, address), -LOG_INTERVAL) + LOG_INTERVAL > now:
            return
        self._logged[reason, address] = now
        log.warning("%s from %s", text, _shown(address) if address else "a UDP client")

    # -- NOTIFY ---------------------------------------------------------------------------

    async def start(self, listen: str | Sequence[str]) -> None:
        """Open the NOTIFY sockets on an ephemeral port, for each family a secondary has: one
        per concrete address of ``listen`` of that family, and one on the family's wildcard when
        ``listen`` has it (``::`` alone, dual-stack, counts as both) or has no address of it."""
        self._loop = asyncio.get_running_loop()
        hosts = [ipaddress.ip_address(h) for h in ([listen] if isinstance(listen, str) else listen)]
        dual = all(h.version == 6 for h in hosts)  # as udpbatch.v6only_for decides
        for family in sorted({s.family for s in self.settings.secondaries}):
            mine = [h for h in hosts if h.version == family]
            concrete = [h for h in mine if not h.is_unspecified]
            wild = len(concrete) < len(mine) or not concrete or (family == 4 and dual)
            binds = [(str(h), h.packed) for h in concrete]
            if wild:
                binds.append(("0.0.0.0" if family == 4 else "::", b""))
            for host, local in binds:
                self._sockets.append(_Sender.open(self, family, host, local))

    def _note_local(self, address: bytes, writer: asyncio.StreamWriter) -> None:
        """Remember the local address a secondary transferred from (its NOTIFYs leave from it)."""
        sockname = writer.get_extra_info("sockname")
        if address not in self._allowed or not isinstance(sockname, tuple) or not sockname:
            return
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(str(sockname[0]).partition("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            self._local_of[address] = ip.packed

    def _sender(self, secondary: Endpoint) -> tuple[_Sender, bytes] | None:
        """The socket a NOTIFY to ``secondary`` leaves by, and the source address to set on it
        (b"": the socket's own)."""
        local = self._local_of.get(secondary.ip.packed, b"")
        family = [s for s in self._sockets if s.family == secondary.family and not s.closed]
        for s in family:
            if local and s.local == local:
                return s, b""
        wild = next((s for s in family if not s.local), None)
        if wild is not None:
            first = next((s.local for s in family if s.local), b"")
            return wild, local or first
        return (family[0], b"") if family else None

    def notify(self, serial: int) -> None:
        """Tell every secondary about ``serial`` (on disk already); retried until answered."""
        if not self.settings.secondaries:
            return
        self.notifier.notify(serial, time.time())
        self._send_due()

    def _send_due(self) -> None:
        self._timer = None
        now = time.time()
        for n in self.notifier.due(now):
            wire = notify_message(self.zone.origin, self.zone.soa(n.serial), n.qid)
            if self.key is not None:
                wire = sign(wire, self.key, int(now))[0]
            chosen = self._sender(n.secondary)
            if chosen is None:
                continue
            sender, source = chosen
            try:
                sender.send(wire, n.secondary.sockaddr(), source)
            except OSError:
                self.stats.notify_errors += 1
        for secondary, serial in self.notifier.failed():
            log.warning(
                "secondary %s did not answer the NOTIFY of serial %d (%d tries); it will see "
                "the serial at its next SOA refresh", secondary, serial,
                self.notifier.config.attempts,
            )  # fmt: skip
        when = self.notifier.next_timer()
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_later(max(0.0, when - now), self._send_due)

    def received(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram on a NOTIFY socket: a response ends that secondary's retries."""
        qid = is_notify_response(data)
        if qid is None:
            return
        with contextlib.suppress(ValueError):
            source = Endpoint.of(addr[0].partition("%")[0], addr[1])
            done = self.notifier.acknowledged(source, qid) and self.notifier.in_flight == 0
            if done and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def close(self) -> None:
        """Stop retrying and close the NOTIFY sockets."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sender in self._sockets:
            sender.close()
        self._sockets.clear()


class _Sender:
    """One NOTIFY socket: sends, and reads the responses from the loop's reader."""

    READS = 64
    """Datagrams read per readable event at most."""

    def __init__(self, service: XfrService, family: int, sock: socket.socket, local: bytes):
        self.service = service
        self.family = family
        self.sock = sock
        self.local = local
        """The packed address it is bound to; b"" on the wildcard (the source is set per send)."""
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def open(cls, service: XfrService, family: int, host: str, local: bytes) -> _Sender:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, 0))
        except OSError:
            sock.close()
            raise
        return cls(service, family, sock, local)

    def send(self, wire: bytes, addr: tuple[str, int], source: bytes) -> None:
        """Send ``wire`` to ``addr``, from ``source`` when given (on the wildcard socket)."""
        if source:
            self.sock.sendmsg([wire], [pktinfo_control(self.family == 6, source)], 0, addr)
        else:
            self.sock.sendto(wire, addr)

    def _readable(self) -> None:
        for _ in range(self.READS):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error of an earlier send: nothing to read
                continue
            self.service.received(data, addr)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


def _refused(query: bytes) -> bytes:
    """A header-and-question REFUSED (the question copied as it came)."""
    qid, flags = struct.unpack_from("!HH", query)
    end = _question_end(query)
    head = struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | dns.rcode.REFUSED,
                       1 if end else 0, 0, 0, 0)  # fmt: skip
    return head + (query[12:end] if end else b"")


def _question_end(query: bytes) -> int:
    pos = 12
    while pos < len(query) and query[pos] and not query[pos] & 0xC0:
        pos += 1 + query[pos]
    return pos + 5 if pos + 5 <= len(query) and query[4:6] == b"\0\x01" else 0


def _random_id() -> int:
    return int.from_bytes(os.urandom(2), "big")


def _shown(address: bytes) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return "?"


def secondaries_of(texts: Sequence[str]) -> tuple[Endpoint, ...]:
    """``ADDRESS[:PORT]`` strings (checked already) as endpoints, port 53 by default."""
    return tuple(Endpoint.parse(t, default_port=53) for t in texts)


def xfr_metrics(prefix: str, zone: Zone, service: XfrService | None) -> list[Family]:
    """The journal's size, and the transfers' and NOTIFYs' counters (all 0 without
    secondaries), as the registrar exposes them (docs/operations.md, "Metrics")."""
    s = XfrStats() if service is None else service.stats
    n = NotifyStats() if service is None else service.notifier.stats
    transfers = {"axfr": s.axfr, "ixfr": s.ixfr, "ixfr_full": s.ixfr_full, "current": s.current}
    refused = {"address": s.refused_address, "unsigned": s.refused_unsigned,
               "tsig": s.tsig_failed, "other": s.refused_other}  # fmt: skip
    notifies = {"sent": n.sent, "retried": n.retried,
                "acknowledged": n.acknowledged, "given_up": n.given_up,
                "unexpected": n.unexpected, "send_failed": s.notify_errors}  # fmt: skip
    p = prefix + "xfr_"
    return [
        gauge(prefix + "zone_journal_deltas", "serial deltas held for IXFR", len(zone.journal)),
        gauge(prefix + "zone_journal_bytes", "bytes of serial deltas held for IXFR",
              zone.journal.bytes),
        labelled(p + "transfers", "zone transfers sent, by kind", "kind", transfers),
        labelled(p + "refused", "transfer queries refused, and TSIG that did not verify",
                 "reason", refused),
        counter(p + "aborted", "transfers ended early by the client", s.aborted),
        counter(p + "messages", "transfer messages written", s.messages),
        counter(p + "bytes", "bytes of transfer messages written", s.bytes),
        counter(p + "signed_answers", "signed queries other than transfers answered",
                s.signed_answered),
        labelled(p + "notifies", "NOTIFYs to secondaries, by outcome", "outcome", notifies),
        gauge(p + "notifies_in_flight", "secondaries with a NOTIFY not acknowledged yet",
              0 if service is None else service.notifier.in_flight),
    ]  # fmt: skip
