"""Outgoing zone transfers, sans-IO: which transfer a query gets, the zone or the journal as
RRs, those RRs as wire messages, and their TSIG signatures.

- :func:`plan` decides, from the query and the zone at that moment: AXFR (RFC 5936) sends the
  whole zone; IXFR (RFC 1995) from a serial the journal still holds sends the deltas since
  (section 4: per delta, the old SOA and the RRs deleted, the new SOA and the RRs added), from
  the current serial or a newer one the SOA alone (section 2), and from anything else, or when
  the deltas would hold more changes than the zone holds peers (and more than :data:`MIN_FULL`),
  the whole zone in AXFR form (section 4). The plan holds its own copy of what it sends (the
  peers' packed records as of the serial, or the deltas), so the zone may change while the
  messages are written.
- :func:`rrsets` lists a plan's records, first and last the SOA (RFC 5936 section 2.2); a peer's
  records are :meth:`~wgmesh.proto.dnssd.Zone.peer_rrsets`, a delta's are the difference of
  the peer's records before and after (RR by RR).
- :func:`messages` packs them into DNS messages of at most ``max_size`` bytes (each with the
  question: RFC 5936 section 2.2.1 allows it), compressed, with room for a TSIG.
- :func:`sign` appends a TSIG RR to a rendered message (RFC 8945 section 5.3: the first with
  the request's MAC, each later one chained to the previous MAC), at a time given by the caller.
- :func:`transfer_query` says cheaply whether a query asks for AXFR/IXFR (no parsing otherwise).

Nothing here checks who asks (the adapter, :mod:`wgmesh.registry.xfr`, holds the allow-list
and verifies the query's TSIG).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.renderer
import dns.rrset
import dns.tsig

from wgmesh.proto.dnssd import Zone
from wgmesh.proto.journal import Delta, serial_newer
from wgmesh.proto.xfrwire import MAX_MESSAGE as MAX_FAST
from wgmesh.proto.xfrwire import PeerWire

AXFR, IXFR = 252, 251
MAX_MESSAGE = 65535
"""Largest DNS message over TCP."""
PTR_CHUNK = 100
"""Browse PTRs per RRset handed to the message writer (the RRset is split across messages)."""
MIN_FULL = 64
"""An IXFR gets the whole zone instead of deltas holding more changes than the zone holds
peers, and more than this many (a small zone's deltas are always sent as deltas)."""
FUDGE = 300
"""Seconds of clock skew a TSIG signature allows (RFC 8945 section 10: 300 is recommended)."""
_T = dns.rdatatype.RdataType


class Kind(StrEnum):
    """What a transfer query gets."""

    AXFR = "axfr"
    """The whole zone, asked for as AXFR."""
    IXFR = "ixfr"
    """The deltas since the client's serial."""
    IXFR_FULL = "ixfr_full"
    """An IXFR answered with the whole zone: the journal does not reach back that far."""
    CURRENT = "current"
    """An IXFR from the current serial (or a newer one): the SOA alone."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One transfer, decided."""

    kind: Kind
    """What is sent."""
    serial: int
    """The zone's serial the transfer brings the client to."""
    client_serial: int | None
    """The serial an IXFR came from (None for AXFR)."""
    deltas: tuple[Delta, ...] = ()
    """For :attr:`Kind.IXFR`: the deltas, oldest first."""
    peers: tuple[tuple[bytes, bytes], ...] = ()
    """For a whole zone: every peer's key and packed record at :attr:`serial`."""
    listing: tuple[bytes, ...] = ()
    """For a whole zone: the keys its browse PTRs list (:meth:`Zone.listing
    <wgmesh.proto.dnssd.Zone.listing>`)."""


def transfer_query(query: bytes) -> int:
    """AXFR or IXFR when ``query`` is a one-question query (QR=0, opcode QUERY) for either,
    else 0. Reads only the header and the question's type."""
    if len(query) < 17 or query[2] & 0xF8 or query[4:6] != b"\0\x01":
        return 0
    pos = 12
    while pos < len(query):
        length = query[pos]
        if length == 0:
            break
        if length & 0xC0:
            return 0
        pos += 1 + length
    if pos + 5 > len(query):
        return 0
    qtype = (query[pos + 1] << 8) | query[pos + 2]
    return qtype if qtype in (AXFR, IXFR) else 0


def plan(zone: Zone, query: dns.message.Message) -> Plan | int:
    """The transfer ``query`` gets from ``zone`` now, or the rcode to refuse it with: FORMERR
    for a malformed transfer query (an IXFR without the client's SOA), NOTAUTH for another
    zone or class (RFC 5936 section 2.2.1)."""
    if len(query.question) != 1:
        return dns.rcode.FORMERR
    question = query.question[0]
    if question.name != zone.origin or question.rdclass != dns.rdataclass.IN:
        return dns.rcode.NOTAUTH
    serial = zone.serial
    if question.rdtype == AXFR:
        return _whole(zone, Kind.AXFR, None)
    if question.rdtype != IXFR:
        return dns.rcode.FORMERR
    theirs = [
        rrs
        for rrs in query.authority
        if rrs.rdtype == dns.rdatatype.SOA and rrs.name == zone.origin and len(rrs)
    ]
    if not theirs:
        return dns.rcode.FORMERR
    client = int(next(iter(theirs[0])).serial)
    if client == serial or serial_newer(client, serial):
        return Plan(Kind.CURRENT, serial, client)
    deltas = zone.journal.since(client)
    if deltas is not None and sum(len(d.changes) for d in deltas) <= max(len(zone), MIN_FULL):
        return Plan(Kind.IXFR, serial, client, deltas=deltas)
    return _whole(zone, Kind.IXFR_FULL, client)


def _whole(zone: Zone, kind: Kind, client: int | None) -> Plan:
    return Plan(kind, zone.serial, client, peers=tuple(zone.published_peers()),
                listing=zone.published_listing)  # fmt: skip


Part = dns.rrset.RRset | tuple[bytes, bytes]
"""What a transfer is made of: RRsets, and peers as (key, packed record) for the fast path
(:mod:`wgmesh.proto.xfrwire`: a peer's records written straight from its record)."""


def rrsets(zone: Zone, p: Plan) -> Iterator[Part]:
    """The records of a transfer, in order, SOA first and last; a whole zone's peers as
    (key, record) (:meth:`~wgmesh.proto.dnssd.Zone.peer_rrsets` says what they hold)."""
    yield zone.soa(p.serial)
    if p.kind is Kind.CURRENT:
        return
    if p.kind is Kind.IXFR:
        for delta in p.deltas:
            deleted, added = diff(zone, delta)
            yield zone.soa(delta.start)
            yield from deleted
            yield zone.soa(delta.end)
            yield from added
    else:
        yield from zone.apex_rrsets()
        for i in range(0, len(p.listing), PTR_CHUNK):
            yield zone.browse_ptr(p.listing[i : i + PTR_CHUNK])
        yield from p.peers
    yield zone.soa(p.serial)


def diff(zone: Zone, delta: Delta) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
    """The RRs a delta deletes and adds, as RRsets (RFC 1995 section 4)."""
    deleted: list[dns.rrset.RRset] = []
    added: list[dns.rrset.RRset] = []
    for change in delta.changes:
        old = _rrs(zone, change.key, change.old)
        new = _rrs(zone, change.key, change.new)
        deleted += _grouped([rr for rr in old if rr not in new], zone.config.ttl)
        added += _grouped([rr for rr in new if rr not in old], zone.config.ttl)
    if delta.unlisted:
        deleted.append(zone.browse_ptr(delta.unlisted))
    if delta.listed:
        added.append(zone.browse_ptr(delta.listed))
    return deleted, added


_Rr = tuple[dns.name.Name, int, dns.rdata.Rdata]


def _rrs(zone: Zone, key: bytes, record: bytes | None) -> list[_Rr]:
    if record is None:
        return []
    return [(rrs.name, rrs.rdtype, rd) for rrs in zone.peer_rrsets(key, record) for rd in rrs]


def _grouped(rrs: list[_Rr], ttl: int) -> list[dns.rrset.RRset]:
    out: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for name, rdtype, rd in rrs:
        if (name, rdtype) not in out:
            out[name, rdtype] = dns.rrset.RRset(name, dns.rdataclass.IN, _T(rdtype))
            out[name, rdtype].update_ttl(ttl)
        out[name, rdtype].add(rd)
    return list(out.values())


def messages(
    zone: Zone,
    parts: Iterable[Part],
    qid: int,
    question: tuple[dns.name.Name, int],
    max_size: int = MAX_FAST,
    reserve: int = 0,
) -> Iterator[bytes]:
    """The records packed into answer messages (QR, AA) of at most ``max_size`` bytes (16 KiB
    at most: :data:`~wgmesh.proto.xfrwire.MAX_MESSAGE`) with ``reserve`` of them left for a
    TSIG; each repeats the question."""
    limit = min(max_size, MAX_FAST) - reserve
    wire = PeerWire(zone.service.to_wire() or b"", zone.config.ttl)
    renderer = _start(qid, question, limit, wire)
    stream = iter(parts)
    pending: list[Part] = []  # a peer too large for one message, as its RRsets
    while (rrset := pending.pop() if pending else next(stream, None)) is not None:
        if isinstance(rrset, tuple):
            out = renderer.output
            data, count = wire.encode(*rrset, out.tell())
            if out.tell() + len(data) > limit and renderer.counts[dns.renderer.ANSWER]:
                yield _finish(renderer)
                renderer = _start(qid, question, limit, wire)
                out = renderer.output
                data, count = wire.encode(*rrset, out.tell())
            if out.tell() + len(data) > limit:  # larger than a message: RRset by RRset
                pending += zone.peer_rrsets(*rrset)[::-1]
                continue
            out.write(data)
            wire.commit()
            renderer.counts[dns.renderer.ANSWER] += count
            continue
        try:
            renderer.add_rrset(dns.renderer.ANSWER, rrset)
            continue
        except dns.exception.TooBig:
            pass
        if renderer.counts[dns.renderer.ANSWER]:
            yield _finish(renderer)
            renderer = _start(qid, question, limit, wire)
            try:
                renderer.add_rrset(dns.renderer.ANSWER, rrset)
                continue
            except dns.exception.TooBig:
                pass
        for rd in rrset:  # an RRset too large for one message: one RR at a time
            one = dns.rrset.from_rdata(rrset.name, rrset.ttl, rd)
            try:
                renderer.add_rrset(dns.renderer.ANSWER, one)
            except dns.exception.TooBig:
                yield _finish(renderer)
                renderer = _start(qid, question, limit, wire)
                renderer.add_rrset(dns.renderer.ANSWER, one)  # one RR always fits
    yield _finish(renderer)


def _start(
    qid: int, question: tuple[dns.name.Name, int], limit: int, wire: PeerWire
) -> dns.renderer.Renderer:
    wire.start()
    r = dns.renderer.Renderer(qid, 0x8400, limit)  # QR, AA
    r.add_question(question[0], question[1], dns.rdataclass.IN)
    return r


def _finish(r: dns.renderer.Renderer) -> bytes:
    r.write_header()
    return bytes(r.get_wire())


def tsig_size(key: dns.tsig.Key) -> int:
    """Bytes a TSIG RR signed with ``key`` takes (RFC 8945 section 4.2)."""
    algorithm = dns.name.from_text(str(key.algorithm))
    mac = dns.tsig.mac_sizes.get(algorithm, 64) or 64
    return len(key.name.to_wire() or b"") + 10 + len(algorithm.to_wire() or b"") + 16 + mac


def sign(
    wire: bytes,
    key: dns.tsig.Key,
    now: int,
    request_mac: bytes = b"",
    ctx: Any = None,
    error: int = 0,
) -> tuple[bytes, bytes, Any]:
    """``wire`` with a TSIG RR appended, signed at ``now`` (Unix seconds): the first message of
    an answer with ``request_mac`` (the query's MAC) and no ``ctx``, each later one with the
    ``ctx`` the previous call returned (RFC 8945 section 5.3.1). Returns (signed wire, its MAC,
    the context for the next message)."""
    original_id = struct.unpack_from("!H", wire)[0]
    rdata = dns.rdtypes.ANY.TSIG.TSIG(
        dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm, now, FUDGE, b"", original_id,
        error, b"",
    )  # fmt: skip
    signed, next_ctx = dns.tsig.sign(wire, key, rdata, now, request_mac or None, ctx, True)
    rr = signed.to_wire() or b""
    owner = key.name.to_wire() or b""
    record = owner + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rr)) + rr
    (count,) = struct.unpack_from("!H", wire, 10)
    return wire[:10] + struct.pack("!H", count + 1) + wire[12:] + record, signed.mac, next_ctx
