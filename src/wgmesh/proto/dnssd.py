"""The authoritative DNS-SD zone (RFC 6763) in jwhited/wgsd's layout, sans-IO.

Names (``<label>`` is the lowercase padded base32 of the key, :func:`key_label`)::

    ZONE                                SOA, NS (+ glue A/AAAA for NS names inside the zone)
    _wireguard._udp.ZONE                PTR -> <label>._wireguard._udp.ZONE, one per peer
                                        (RFC 6763 section 4.1, browsing)
    <label>._wireguard._udp.ZONE        SRV 0 0 <port> <label>._wireguard._udp.ZONE  (public)
                                        TXT txtvers=1 pub= allowed= name= nat= since= alt=
                                        (RFC 6763 section 6)
                                        A/AAAA of the public mapping
    _alt.<label>._wireguard._udp.ZONE   SRV <prio> 0 <port> <kind><i>.<label>._wireguard._udp.ZONE
                                        one per other candidate (RFC 2782; by priority)
    <kind><i>.<label>._wireguard._udp.ZONE   A/AAAA of candidate i (lan, ipv6)

The peer's own name holds one SRV, wgsd's, so that a client without EDNS (wgsd-client reads
Answer[0] and Extra[0] and nothing else) gets it and its address within 512 bytes for zone
names up to 150 characters (an SRV target is never compressed); the other candidates' SRVs are
at the alternates' name (``alt=`` in the TXT says how many), offered as additional data after
the TXT when they fit.

Answers: AA on every in-zone answer and RA never (RFC 1035 section 4.1.1; we are never a
resolver); an SRV answer carries its target's address, the TXT and the alternates' SRVs and
addresses as additional data, a browse answer the SRV/TXT/addresses of the first peers if they
fit (RFC 2782 "Usage rules", RFC 6763 section 12); NXDOMAIN, or NODATA for names that exist
without the type, with the SOA in authority (RFC 2308 sections 2.1, 2.2, 3); REFUSED outside the
zone; FORMERR for malformed queries with a readable header and NOTIMP for opcodes other than
QUERY (RFC 1035 section 4.1.1); nothing at all for garbage or responses. ANY gets one RRset (RFC
8482 section 4.2). EDNS (RFC 6891 sections 6.1.3, 6.2.3-6.2.5, 7): OPT echoed with our size, the
client's size honoured over UDP (512 without EDNS), DO echoed (RFC 3225 section 3), BADVERS for
versions above 0. An answer that does not fit over UDP first loses its additional data (RFC 2181
section 9), then is sent with TC and no records, so the client retries over TCP (RFC 7766
section 5), where it is sent in full (a browse then lists the first ~900 peers: what fits in 64
KiB, see :data:`PTR_SIZE`).

Speed and memory: each peer is held as one packed ``bytes`` keyed by its raw key
(:func:`~wgmesh.proto.dnswire.pack_record`), its names are parsed from the question, not stored;
the answers daemons ask for (SRV, TXT, A/AAAA of a peer) are written from that record by
:class:`~wgmesh.proto.dnswire.PeerAnswers`, everything else by dnspython. Answers are cached as
wire bytes (:mod:`wgmesh.proto.dnswire`, capped in entries and bytes); a zone change drops
exactly the cached answers it touches (the peer's names, the browse list, the apex) and makes
every negative answer stale by raising the serial they carry.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import dns.exception
import dns.flags
import dns.ipv4
import dns.ipv6
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from wgmesh.errors import ConfigError
from wgmesh.proto.dnswire import (
    ALT,
    ALT_LABEL,
    MAX_TCP,
    MIN_UDP,
    AnswerCache,
    PeerAnswers,
    QueryShape,
    Target,
    pack_record,
    query_shape,
    raw_key,
    txt_strings,
    unpack_record,
)
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.journal import Delta, Journal, Pending, next_serial
from wgmesh.proto.keys import key_label, label_key
from wgmesh.proto.kinds import CandidateKind, NatKind

IN = dns.rdataclass.IN
T = dns.rdatatype.RdataType
PTR_SIZE = 71
"""Bytes of one browse PTR record: owner pointer 2, type/class/TTL/length 10, the 56-character
label 57 and a pointer 2. So a 64 KiB TCP message lists under a thousand peers, and a DNS
message can never list a large mesh: per-peer lookups (SRV by key) never depend on browsing,
which is for small meshes and for debugging."""
BROWSE_ADDITIONAL = 32
"""A browse of at most this many peers offers their SRV/TXT/addresses as additional data (as
many as fit); a longer one offers none (it fills the message with PTRs anyway)."""
SOA_REFRESH, SOA_RETRY = 60, 30
"""SOA refresh and retry (RFC 1035 section 3.3.13): how often a secondary that missed the NOTIFYs
asks for the serial (NOTIFY, RFC 1996, is what brings changes within a second)."""
SOA_EXPIRE = 14 * 86400
"""SOA expire: how long a secondary that cannot reach the registrar keeps answering for the zone
(then SERVFAIL). Two weeks, RFC 1912 section 2.2's lower bound (Zonemaster warns below one): a
registrar outage of hours must not take every secondary's answers with it, and its last peers'
endpoints remain the best guess (WireGuard roams as soon as either side sends)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One address a peer can be reached at."""

    endpoint: Endpoint
    """ip:port."""
    kind: CandidateKind
    """What the address is; names the SRV target (:meth:`CandidateKind.target_label`)."""
    priority: int
    """SRV priority; lower is preferred."""


@dataclass(frozen=True, slots=True)
class PublishedPeer:
    """What the zone publishes for one peer."""

    key: bytes
    """WireGuard public key (32 bytes)."""
    name: str
    """Name for TXT ``name=`` ("" for none)."""
    candidates: tuple[Candidate, ...]
    """First: the public mapping (wgsd's single SRV, on the peer's own name); then the others."""
    allowed_ips: tuple[str, ...]
    """TXT ``allowed=`` (left out when empty)."""
    nat: NatKind
    """TXT ``nat=``."""
    since: int
    """TXT ``since=``: when the public endpoint was first seen (Unix seconds)."""


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """The zone's identity and limits."""

    origin: str
    """Absolute zone name, e.g. ``mesh.example.com.``."""
    ns: tuple[str, ...]
    """NS names at the apex (absolute); the first is the SOA MNAME."""
    hostmaster: str
    """SOA RNAME (absolute)."""
    ttl: int = 5
    """TTL of positive answers."""
    negative_ttl: int = 5
    """SOA minimum and TTL of the SOA in negative answers: how long "no such name" is cached."""
    ns_addresses: tuple[str, ...] = ()
    """Glue addresses for the NS names inside the zone that :attr:`ns_glue` gives none."""
    ns_glue: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(NS name, its own glue addresses), for NS names inside the zone at other addresses
    than the registrar (a secondary named in the zone)."""
    max_udp: int = 1232
    """Our EDNS UDP payload size (RFC 6891 section 6.2.5; 1232 avoids IP fragmentation)."""
    browse_limit: int = 4000
    """Most PTRs in one browse answer (what fits in 64 KiB caps it further, see PTR_SIZE)."""
    cache_size: int = 200_000
    """Most cached positive wire answers."""
    cache_bytes: int = 16 * 2**20
    """Most bytes of cached positive answers, bookkeeping included (an SRV answer with two
    addresses costs ~1 KB, a TXT ~0.7): ~18,000-24,000 answers, 17 bytes a peer at a million."""
    negative_cache_size: int = 10_000
    """Most cached negative wire answers (hostile queries for random names produce these)."""
    serial_interval: float = 1.0
    """Least seconds between two serials: changes within it are published together, as one
    serial (and one journal delta, one NOTIFY) at its end (0: a serial per change)."""
    journal_size: int = 1000
    """Most serial deltas kept for IXFR (:class:`~wgmesh.proto.journal.Journal`)."""
    journal_bytes: int = 8 * 2**20
    """Most bytes of serial deltas kept for IXFR (~250 bytes per changed peer)."""


@dataclass(slots=True)
class ZoneStats:
    """Counters, one per outcome; ``queries`` counts every call of :meth:`Zone.answer`."""

    queries: int = 0
    """Calls of :meth:`Zone.answer`."""
    answered: int = 0
    """Responses returned (any rcode)."""
    refused: int = 0
    """REFUSED: outside the zone, another class, or a zone transfer."""
    formerr: int = 0
    """FORMERR: a readable header over an unreadable or ill-formed message."""
    notimp: int = 0
    """NOTIMP: an opcode other than QUERY."""
    dropped: int = 0
    """No response: shorter than a header, or a response (QR=1)."""
    truncated: int = 0
    """UDP answers sent with TC and no records."""
    cache_hits: int = 0
    """Responses served from the wire cache."""
    nxdomain: int = 0
    """NXDOMAIN answers."""


class Zone:
    """The zone's records and its answers; see the module docstring."""

    def __init__(self, config: ZoneConfig, serial: int = 1) -> None:
        if not config.ns:
            raise ConfigError("the zone needs at least one NS name")
        try:
            self.origin = dns.name.from_text(config.origin)
            self._ns = tuple(dns.name.from_text(n) for n in config.ns)
            self._hostmaster = dns.name.from_text(config.hostmaster)
            shared = tuple(Endpoint.of(a, 0) for a in config.ns_addresses)
            own = {
                dns.name.from_text(n): tuple(Endpoint.of(a, 0) for a in addresses)
                for n, addresses in config.ns_glue
            }
        except (dns.exception.DNSException, ValueError) as exc:
            raise ConfigError(f"bad zone configuration: {exc}") from None
        self.config = config
        self.service = dns.name.from_text("_wireguard._udp", self.origin)
        self.serial = serial
        """The SOA serial: raised by :meth:`publish`, at most once per ``serial_interval``."""
        self.journal = Journal(serial, config.journal_size, config.journal_bytes)
        """The deltas between the newest serials (IXFR)."""
        self.pending = Pending()
        """What changed since the serial (published by :meth:`publish`)."""
        self.stats = ZoneStats()
        self._published_at = -math.inf
        self._generation = 0
        """Raised by every change and serial: cached negative answers of another are stale."""
        self._glue_names = frozenset(n for n in self._ns if n.is_subdomain(self.origin))
        self._glue = {n: own.get(n, shared) for n in self._glue_names}
        self._ents = frozenset(
            p for n in (*self._glue_names, self.service) for p in _parents(n, self.origin)
        )
        self._peers: dict[bytes, bytes] = {}
        """Raw key -> packed record (dnswire.pack_record), in order of first publication."""
        self._service_wire = _wire(self.service)
        self._origin_wire = _wire(self.origin)
        self._cache = AnswerCache(config.cache_size, config.negative_cache_size, config.cache_bytes)
        self._encoder = PeerAnswers(self.service.to_wire() or b"", config.ttl, config.max_udp)
        # PTRs that fit in a TCP answer beside the header, question (<= 255 + 4) and OPT (11)
        self._browse_fit = min(config.browse_limit, (MAX_TCP - 12 - 259 - 11) // PTR_SIZE)
        self._browse_memo: tuple[dns.rrset.RRset, list[dns.rrset.RRset]] | None = None
        self._listed: tuple[bytes, ...] = ()
        """The browse listing at :attr:`serial` (what transfers hold as PTRs)."""

    def __len__(self) -> int:
        return len(self._peers)

    # -- changes ----------------------------------------------------------------------------

    def set_serial(self, serial: int) -> None:
        """Set the SOA serial (1..2**32-1) to one whose history is unknown (a restart): what
        changed before counts as part of it, and the journal starts empty."""
        self.serial = serial
        self.pending.clear()
        self.journal.reset(serial)
        self._listed = self.listing()
        self._stale_serial()

    def upsert(self, peer: PublishedPeer) -> bool:
        """Publish or update a peer; True when anything published changed. Answers show it at
        once; the serial moves at the next :meth:`publish`."""
        record = _record(peer)
        old = self._peers.get(peer.key)
        if old == record:
            return False
        self.pending.touch(peer.key, old)
        self._peers[peer.key] = record
        self._changed(peer.key)
        return True

    def remove(self, key: bytes) -> bool:
        """Withdraw a peer; True if it was published (the serial moves as for :meth:`upsert`)."""
        old = self._peers.pop(key, None)
        if old is None:
            return False
        self.pending.touch(key, old)
        self._changed(key)
        return True

    def publish(self, now: float) -> Delta | None:
        """Raise the serial by one if anything changed since it was last raised and that was
        ``serial_interval`` or more before ``now``; the delta (also in :attr:`journal`)."""
        if not self.pending or now < self._published_at + self.config.serial_interval:
            return None
        changes = self.pending.take(self._peers)
        if not changes:  # everything changed back
            return None
        old, new = self._listed, self.listing()
        was, now_listed = frozenset(old), frozenset(new)
        self._listed = new
        delta = Delta(
            self.serial, next_serial(self.serial), changes,
            tuple(k for k in new if k not in was), tuple(k for k in old if k not in now_listed),
        )  # fmt: skip
        self.serial = delta.end
        self._published_at = now
        self.journal.add(delta)
        self._stale_serial()
        return delta

    def next_publish(self) -> float | None:
        """When :meth:`publish` has something to do (None: nothing changed)."""
        return self._published_at + self.config.serial_interval if self.pending else None

    def published_peers(self) -> list[tuple[bytes, bytes]]:
        """Every peer's packed record as of :attr:`serial` (pending changes left out): what a
        zone transfer at that serial holds."""
        return self.pending.at_serial(self._peers)

    def listing(self) -> tuple[bytes, ...]:
        """The keys a browse answer lists now: the first peers with an endpoint, in order of
        publication, as many as fit in one answer (~900). A transfer holds these PTRs only,
        as of :attr:`serial` (:attr:`published_listing`): an RRset must fit in one message
        for a secondary to serve it, or to transfer it on (Knot cannot)."""
        listed = (k for k, r in self._peers.items() if r[0])
        return tuple(islice(listed, self._browse_fit))

    @property
    def published_listing(self) -> tuple[bytes, ...]:
        """:meth:`listing` as of :attr:`serial`."""
        return self._listed

    def _stale_serial(self) -> None:
        # negative answers and the SOA carry the serial
        self._generation += 1
        self._cache.invalidate(self._origin_wire)

    def _changed(self, key: bytes) -> None:
        self._generation += 1  # every cached negative answer is stale
        self._browse_memo = None
        for subject in (key, self._service_wire, self._origin_wire):
            self._cache.invalidate(subject)

    def _locate(self, qname: bytes) -> tuple[bytes, bytes, int] | None:
        """The peer a name (lowercased wire form) belongs to: ``(key, record, index)`` with
        index 0 for ``<label>._wireguard._udp.ZONE``, i for its i-th target's name and
        :data:`~wgmesh.proto.dnswire.ALT` for its alternates' name."""
        head = len(qname) - len(self._service_wire)
        if head < 57 or not qname.endswith(self._service_wire):
            return None
        first = qname[0]
        if head == 57 and first == 56:
            target = b""
        elif first + 58 == head and qname[first + 1] == 56:
            target = qname[1 : first + 1]
        else:
            return None
        key = label_key(qname[head - 56 : head])
        record = None if key is None else self._peers.get(key)
        if key is None or record is None:
            return None
        if not target:
            return key, record, 0
        if target == ALT_LABEL:
            return (key, record, ALT) if record[0] > 1 else None
        for i, t in enumerate(unpack_record(record)[0][1:], 1):
            if t.label.lower() == target:
                return key, record, i
        return None

    # -- answers ----------------------------------------------------------------------------

    def answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The wire answer to a query, or None to drop it. Never raises on hostile input."""
        stats = self.stats
        stats.queries += 1
        # hit path: a query without EDNS options is its own cache key (dnswire.raw_key), so a
        # repeated question costs one dict lookup and no parsing at all
        key = raw_key(query, tcp)
        entry = self._cache.positive.get(key)
        cached: bytes | None
        if entry is not None:
            cached = entry[0]
        elif (cached := self._cache.get(key, self._generation)) is None:  # negative answers
            shape = query_shape(query, tcp)
            if shape is None or (cached := self._cache.get(shape.key, self._generation)) is None:
                return self._miss(query, tcp, shape)
        stats.cache_hits += 1
        stats.answered += 1
        if cached[2] & 0x02:
            stats.truncated += 1
        if cached[3] & 0x0F == 3:  # NXDOMAIN
            stats.nxdomain += 1
        return query[:2] + cached[2:]

    def _miss(self, query: bytes, tcp: bool, shape: QueryShape | None) -> bytes | None:
        """An answer not cached: written from the peer's record when the encoder covers it."""
        if shape is not None and (found := self._locate(shape.qname)) is not None:
            wire = self._encoder.answer(query, shape, tcp, *found)
            if wire is not None:
                self.stats.answered += 1
                self._cache.put(shape.key, found[0], wire)
                return wire
        return self._slow(query, tcp, shape)

    def _slow(self, query: bytes, tcp: bool, shape: QueryShape | None) -> bytes | None:
        if len(query) < 12 or query[2] & 0x80:
            self.stats.dropped += 1
            return None
        try:
            q = dns.message.from_wire(query)
        except (dns.exception.DNSException, ValueError, IndexError, struct.error):
            return self._formerr(query)
        r = dns.message.make_response(q, our_payload=self.config.max_udp)
        if q.ednsflags & dns.flags.DO:
            r.ednsflags |= dns.flags.DO
        if q.edns > 0:
            r.set_rcode(dns.rcode.BADVERS)
            return self._finish(r, q, tcp)
        if q.opcode() != dns.opcode.QUERY:
            self.stats.notimp += 1
            r.set_rcode(dns.rcode.NOTIMP)
            return self._finish(r, q, tcp)
        if len(q.question) != 1:
            self.stats.formerr += 1
            r.set_rcode(dns.rcode.FORMERR)
            return self._finish(r, q, tcp)
        question = q.question[0]
        qname, qtype = question.name, question.rdtype
        if (
            question.rdclass != IN
            or not qname.is_subdomain(self.origin)
            or qtype in (T.AXFR, T.IXFR)
        ):
            self.stats.refused += 1
            r.set_rcode(dns.rcode.REFUSED)
            return self._finish(r, q, tcp)
        r.flags |= dns.flags.AA
        limit = self._limit(q, tcp)
        positive = self._fill(r, qname, qtype, limit)
        wire = self._finish(r, q, tcp)
        if shape is not None:
            if positive:
                found = self._locate(shape.qname)
                self._cache.put(shape.key, shape.qname if found is None else found[0], wire)
            else:
                self._cache.put_negative(shape.key, self._generation, wire)
        return wire

    def _formerr(self, query: bytes) -> bytes:
        """A header-only FORMERR for a query whose body does not parse (RFC 1035 4.1.1)."""
        self.stats.formerr += 1
        self.stats.answered += 1
        qid, flags = struct.unpack_from("!HH", query, 0)
        out_flags = 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR  # QR, echo opcode and RD
        return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)

    def _limit(self, q: dns.message.Message, tcp: bool) -> int:
        """The answer size: 64 KiB over TCP; over UDP the smaller of the client's EDNS size
        and ours, 512 at least and without EDNS (RFC 6891 section 6.2.5)."""
        if tcp:
            return MAX_TCP
        if q.edns >= 0:
            return max(MIN_UDP, min(q.payload, self.config.max_udp))
        return MIN_UDP

    def _finish(self, r: dns.message.Message, q: dns.message.Message, tcp: bool) -> bytes:
        self.stats.answered += 1
        limit = self._limit(q, tcp)
        wire = _render(r, limit)
        if wire is not None:
            return wire
        # additional data is optional: leave out as much as needed (RFC 2181 section 9)
        extra = list(r.additional)
        r.additional = []
        wire = _render(r, limit) if extra else None
        if wire is not None:
            keep = len(extra) // 2
            while keep:
                r.additional = extra[:keep]
                if (more := _render(r, limit)) is not None:
                    return more
                keep //= 2
            return wire
        # only a browse gets here, over UDP (over TCP _browse lists no more than fit in 64 KiB)
        self.stats.truncated += 1
        r.answer, r.authority, r.additional = [], [], []
        r.flags |= dns.flags.TC
        return r.to_wire(max_size=limit, want_shuffle=False)

    # -- records ----------------------------------------------------------------------------

    def _fill(self, r: dns.message.Message, qname: dns.name.Name, qtype: int, limit: int) -> bool:
        """Put the answer into ``r``; True when it is positive (has answer records)."""
        if qtype == T.ANY:
            qtype = self._any_type(qname)  # RFC 8482 section 4.2: one RRset is enough
        found: list[dns.rrset.RRset] = []
        additional: list[dns.rrset.RRset] = []
        exists = True
        if qname == self.origin:
            if qtype == T.SOA:
                found.append(self._soa(self.config.ttl))
            elif qtype == T.NS:
                ns = [dns.rdtypes.ANY.NS.NS(IN, T.NS, n) for n in self._ns]
                found.append(self._rrset(qname, T.NS, ns))
                for name in self._ns:
                    if name in self._glue_names:
                        additional += self._glue_at(name, T.A) + self._glue_at(name, T.AAAA)
        elif qname == self.service:
            if qtype == T.PTR:
                ptrs, extra = self._browse()
                if len(ptrs) > (most := limit // PTR_SIZE + 1):  # cannot fit: TC, found fast
                    ptrs, extra = _subset(ptrs, list(ptrs)[:most]), []
                found.append(ptrs)
                additional += extra
        elif (located := self._locate(_wire(qname))) is not None:
            key, record, index = located
            targets, tail = unpack_record(record)
            if index == ALT:
                if qtype == T.SRV:
                    name = self._peer_name(key)
                    found.append(self._srv(_alt_name(name), name, targets[1:]))
                    additional += self._addresses(name, targets[1:])
            elif index:
                found += self._address(qname, targets[index].ip, qtype)
            elif qtype == T.SRV:
                name = self._peer_name(key)
                found.append(self._srv(name, name, targets[:1]))
                additional += self._addresses(name, targets[:1])
                additional.append(self._txt(name, key, tail))
                if len(targets) > 1:
                    additional.append(self._srv(_alt_name(name), name, targets[1:]))
                    additional += self._addresses(name, targets[1:])
            elif qtype == T.TXT:
                found.append(self._txt(self._peer_name(key), key, tail))
            elif targets:
                found += self._address(qname, targets[0].ip, qtype)
        elif qname in self._glue_names:
            found += self._glue_at(qname, qtype)
        else:
            exists = qname in self._ents
        found = [f for f in found if len(f)]
        if found:
            r.answer += found
            r.additional += additional
            return True
        r.authority.append(self._soa(self.config.negative_ttl))
        if not exists:
            self.stats.nxdomain += 1
            r.set_rcode(dns.rcode.NXDOMAIN)
        return False

    def _any_type(self, qname: dns.name.Name) -> int:
        if qname == self.origin:
            return T.SOA
        if qname == self.service:
            return T.PTR
        if (located := self._locate(_wire(qname))) is not None:
            _, record, index = located
            return unpack_record(record)[0][index].rdtype if index > 0 else T.SRV
        if qname in self._glue_names and (glue := self._glue[qname]):
            return T.A if glue[0].ip.version == 4 else T.AAAA
        return T.A

    def peer_name(self, key: bytes) -> dns.name.Name:
        """``<label>._wireguard._udp.ZONE`` of the peer ``key``."""
        return dns.name.Name((key_label(key).encode(),)).concatenate(self.service)

    _peer_name = peer_name

    def record_of(self, key: bytes) -> bytes | None:
        """The peer's packed record now (changes not yet under a serial included)."""
        return self._peers.get(key)

    def _rrset(
        self, name: dns.name.Name, rdtype: int, rdatas: Sequence[dns.rdata.Rdata], ttl: int = -1
    ) -> dns.rrset.RRset:
        rrs = dns.rrset.RRset(name, IN, T(rdtype))
        rrs.update_ttl(self.config.ttl if ttl < 0 else ttl)
        for rd in rdatas:
            rrs.add(rd)
        return rrs

    def _soa(self, ttl: int, serial: int = -1) -> dns.rrset.RRset:
        cfg = self.config
        soa = dns.rdtypes.ANY.SOA.SOA(
            IN, T.SOA, self._ns[0], self._hostmaster, self.serial if serial < 0 else serial,
            SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, cfg.negative_ttl,
        )  # fmt: skip
        return self._rrset(self.origin, T.SOA, [soa], ttl)

    # -- the zone as records (transfers, wgmesh.proto.xfr) --------------------------------

    def soa(self, serial: int) -> dns.rrset.RRset:
        """The SOA RRset at ``serial``."""
        return self._soa(self.config.ttl, serial)

    def apex_rrsets(self) -> list[dns.rrset.RRset]:
        """NS and glue (the SOA is :meth:`soa`)."""
        ns = [dns.rdtypes.ANY.NS.NS(IN, T.NS, n) for n in self._ns]
        out = [self._rrset(self.origin, T.NS, ns)]
        for name in sorted(self._glue_names):
            out += self._glue_at(name, T.A) + self._glue_at(name, T.AAAA)
        return out

    def browse_ptr(self, keys: Sequence[bytes]) -> dns.rrset.RRset:
        """The browse PTRs of ``keys``."""
        ptrs = [dns.rdtypes.ANY.PTR.PTR(IN, T.PTR, self._peer_name(k)) for k in keys]
        return self._rrset(self.service, T.PTR, ptrs)

    def peer_rrsets(self, key: bytes, record: bytes) -> list[dns.rrset.RRset]:
        """Every RRset of one peer (its packed ``record``) but its browse PTR."""
        name = self._peer_name(key)
        targets, tail = unpack_record(record)
        out = []
        if targets:  # no endpoint: no SRV
            out.append(self._srv(name, name, targets[:1]))
        out.append(self._txt(name, key, tail))
        if len(targets) > 1:
            out.append(self._srv(_alt_name(name), name, targets[1:]))
        return out + self._addresses(name, targets)

    def _glue_at(self, name: dns.name.Name, qtype: int) -> list[dns.rrset.RRset]:
        glue = self._glue.get(name, ())
        rdatas = [rd for ep in glue for rd in _address_rdata(ep.ip.packed, qtype)]
        return [self._rrset(name, qtype, rdatas)] if rdatas else []

    def _address(self, name: dns.name.Name, ip: bytes, qtype: int) -> list[dns.rrset.RRset]:
        rdatas = _address_rdata(ip, qtype)
        return [self._rrset(name, qtype, rdatas)] if rdatas else []

    def _addresses(self, name: dns.name.Name, targets: list[Target]) -> list[dns.rrset.RRset]:
        out: list[dns.rrset.RRset] = []
        for t in targets:
            out += self._address(_target_name(name, t), t.ip, t.rdtype)
        return out

    def _srv(
        self, owner: dns.name.Name, name: dns.name.Name, targets: list[Target]
    ) -> dns.rrset.RRset:
        """The SRV RRset at ``owner`` for ``targets`` of the peer ``name``, by priority."""
        srvs = [
            dns.rdtypes.IN.SRV.SRV(IN, T.SRV, t.priority, 0, t.port, _target_name(name, t))
            for t in sorted(targets, key=lambda t: t.priority)
        ]
        return self._rrset(owner, T.SRV, srvs)

    def _txt(self, name: dns.name.Name, key: bytes, tail: bytes) -> dns.rrset.RRset:
        txt = dns.rdtypes.ANY.TXT.TXT(IN, T.TXT, txt_strings(key, tail))
        return self._rrset(name, T.TXT, [txt])

    def _browse(self) -> tuple[dns.rrset.RRset, list[dns.rrset.RRset]]:
        """The browse PTRs and additional data, built once per zone change (hashing rdata in
        dnspython costs ~30 us a record)."""
        if self._browse_memo is None:
            listed = ((k, r) for k, r in self._peers.items() if r[0])  # has an endpoint
            peers = list(islice(listed, self._browse_fit))
            names = [self._peer_name(key) for key, _ in peers]
            ptrs = [dns.rdtypes.ANY.PTR.PTR(IN, T.PTR, name) for name in names]
            additional: list[dns.rrset.RRset] = []
            if len(peers) <= BROWSE_ADDITIONAL:
                for name, (key, record) in zip(names, peers, strict=True):
                    targets, tail = unpack_record(record)
                    additional += [self._srv(name, name, targets[:1]), self._txt(name, key, tail)]
                    if len(targets) > 1:
                        additional.append(self._srv(_alt_name(name), name, targets[1:]))
                    additional += self._addresses(name, targets)
            self._browse_memo = (self._rrset(self.service, T.PTR, ptrs), additional)
        return self._browse_memo


def _record(peer: PublishedPeer) -> bytes:
    """The zone's packed form of a peer (see dnswire.pack_record)."""
    targets = [
        Target(c.kind.target_label(i).encode(), c.priority, c.endpoint.port, c.endpoint.ip.packed)
        for i, c in enumerate(peer.candidates)
    ]
    txt = [f"allowed={','.join(peer.allowed_ips)}".encode()] if peer.allowed_ips else []
    if peer.name:
        txt.append(f"name={peer.name}".encode())
    return pack_record(targets, [t[:255] for t in txt], peer.nat, peer.since)


def _alt_name(name: dns.name.Name) -> dns.name.Name:
    """``_alt.<label>._wireguard._udp.ZONE`` of the peer ``name``."""
    return dns.name.Name((ALT_LABEL,)).concatenate(name)


def _target_name(name: dns.name.Name, target: Target) -> dns.name.Name:
    return dns.name.Name((target.label,)).concatenate(name) if target.label else name


def _render(r: dns.message.Message, limit: int) -> bytes | None:
    try:
        return r.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        return None


def _subset(rrset: dns.rrset.RRset, items: list[dns.rdata.Rdata]) -> dns.rrset.RRset:
    out = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
    out.update_ttl(rrset.ttl)
    for rd in items:
        out.add(rd)
    return out


def _address_rdata(ip: bytes, qtype: int) -> list[dns.rdata.Rdata]:
    if qtype == T.A and len(ip) == 4:
        return [dns.rdtypes.IN.A.A(IN, T.A, dns.ipv4.inet_ntoa(ip))]
    if qtype == T.AAAA and len(ip) == 16:
        return [dns.rdtypes.IN.AAAA.AAAA(IN, T.AAAA, dns.ipv6.inet_ntoa(ip))]
    return []


def _parents(name: dns.name.Name, origin: dns.name.Name) -> Iterator[dns.name.Name]:
    """The names strictly between ``name`` and ``origin`` (empty non-terminals if unowned)."""
    while name != origin and len(name) > len(origin):
        name = name.parent()
        if name != origin:
            yield name


def _wire(name: dns.name.Name) -> bytes:
    """Uncompressed, lowercased wire form of a name (the cache's index for names)."""
    return (name.to_wire() or b"").lower()
