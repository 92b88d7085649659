"""The authoritative DNS-SD zone (RFC 6763) in jwhited/wgsd's layout, sans-IO.

Names (``<label>`` is the lowercase padded base32 of the key, :func:`key_label`)::

    ZONE                                SOA, NS (+ glue A/AAAA for NS names inside the zone)
    _wireguard._udp.ZONE                PTR -> <label>._wireguard._udp.ZONE, one per peer
                                        (RFC 6763 section 4.1, browsing)
    <label>._wireguard._udp.ZONE        SRV 0 0 <port> <label>._wireguard._udp.ZONE  (public)
                                        SRV <prio> 0 <port> <kind><i>.<label>._wireguard._udp.ZONE
                                        (RFC 2782; sorted by priority)
                                        TXT txtvers=1 pub= allowed= name= nat= since=
                                        (RFC 6763 section 6)
                                        A/AAAA of the public mapping
    <kind><i>.<label>._wireguard._udp.ZONE   A/AAAA of candidate i (lan, ipv6)

Answers: AA on every in-zone answer and RA never (RFC 1035 section 4.1.1; we are never a
resolver); an SRV answer carries its targets' addresses and the TXT as additional data, a browse
answer the SRV/TXT/addresses of the first peers if they fit (RFC 2782 "Usage rules", RFC 6763
section 12); NXDOMAIN, or NODATA for names that exist without the type, with the SOA in
authority (RFC 2308 sections 2.1, 2.2, 3); REFUSED outside the zone; FORMERR for malformed
queries with a readable header and NOTIMP for opcodes other than QUERY (RFC 1035 section 4.1.1);
nothing at all for garbage or responses. ANY gets one RRset (RFC 8482 section 4.2). EDNS (RFC 6891
sections 6.1.3, 6.2.3-6.2.5, 7): OPT echoed with our size, the client's size honoured over UDP
(512 without EDNS), DO echoed (RFC 3225 section 3), BADVERS for versions above 0. An answer that
does not fit over UDP first loses its additional data (RFC 2181 section 9), then is sent with TC
and no records, so the client retries over TCP (RFC 7766 section 5), where it is sent in full
(a browse then lists the first ~900 peers: what fits in 64 KiB, see :data:`PTR_SIZE`).

Speed: answers are cached as wire bytes (:mod:`wgmesh.proto.dnswire`); a zone change drops
exactly the cached answers at the names it touches (the peer's names, the browse list, the apex)
and makes every negative answer stale by raising the serial they carry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import dns.exception
import dns.flags
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
from wgmesh.proto.dnswire import MIN_UDP, AnswerCache, QueryShape, query_shape
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label

IN = dns.rdataclass.IN
T = dns.rdatatype.RdataType
MAX_TCP = 65535
"""Largest DNS message over TCP (RFC 1035 section 4.2.2: 2-byte length)."""
PTR_SIZE = 71
"""Bytes of one browse PTR record: owner pointer 2, type/class/TTL/length 10, the 56-character
label 57 and a pointer 2. So a 64 KiB TCP message lists under a thousand peers, and a DNS
message can never list a large mesh: per-peer lookups (SRV by key) never depend on browsing,
which is for small meshes and for debugging."""
BROWSE_ADDITIONAL = 32
"""A browse of at most this many peers offers their SRV/TXT/addresses as additional data (as
many as fit); a longer one offers none (it fills the message with PTRs anyway)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One address a peer can be reached at."""

    endpoint: Endpoint
    """ip:port."""
    kind: str
    """``public`` (the observed mapping), ``lan`` or ``ipv6``; names target ``<kind><i>``."""
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
    nat: str
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
    """Glue addresses for NS names inside the zone."""
    max_udp: int = 1232
    """Our EDNS UDP payload size (RFC 6891 section 6.2.5; 1232 avoids IP fragmentation)."""
    browse_limit: int = 4000
    """Most PTRs in one browse answer (what fits in 64 KiB caps it further, see PTR_SIZE)."""
    cache_size: int = 200_000
    """Most cached positive wire answers."""
    negative_cache_size: int = 10_000
    """Most cached negative wire answers (hostile queries for random names produce these)."""


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


@dataclass(frozen=True, slots=True)
class _Node:
    """A published peer and the names its candidates are on."""

    peer: PublishedPeer
    """What was published."""
    name: dns.name.Name
    """``<label>._wireguard._udp.ZONE``."""
    targets: tuple[tuple[dns.name.Name, Candidate], ...] = ()
    """SRV target of each candidate, in candidate order (the first is :attr:`name`)."""


class Zone:
    """The zone's records and its answers; see the module docstring."""

    def __init__(self, config: ZoneConfig, serial: int = 1) -> None:
        if not config.ns:
            raise ConfigError("the zone needs at least one NS name")
        try:
            self.origin = dns.name.from_text(config.origin)
            self._ns = tuple(dns.name.from_text(n) for n in config.ns)
            self._hostmaster = dns.name.from_text(config.hostmaster)
            glue = tuple(Endpoint.of(a, 0) for a in config.ns_addresses)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ConfigError(f"bad zone configuration: {exc}") from None
        self.config = config
        self.service = dns.name.from_text("_wireguard._udp", self.origin)
        self.serial = serial
        self.stats = ZoneStats()
        self._glue_names = frozenset(n for n in self._ns if n.is_subdomain(self.origin))
        self._glue = glue
        self._ents = frozenset(
            p for n in (*self._glue_names, self.service) for p in _parents(n, self.origin)
        )
        self._peers: dict[dns.name.Name, _Node] = {}
        self._targets: dict[dns.name.Name, Candidate] = {}
        self._cache = AnswerCache(config.cache_size, config.negative_cache_size)
        # PTRs that fit in a TCP answer beside the header, question (<= 255 + 4) and OPT (11)
        self._browse_fit = min(config.browse_limit, (MAX_TCP - 12 - 259 - 11) // PTR_SIZE)
        self._browse_memo: tuple[dns.rrset.RRset, list[dns.rrset.RRset]] | None = None

    def __len__(self) -> int:
        return len(self._peers)

    # -- changes ----------------------------------------------------------------------------

    def _peer_name(self, key: bytes) -> dns.name.Name:
        return dns.name.Name((key_label(key).encode(),)).concatenate(self.service)

    def upsert(self, peer: PublishedPeer) -> bool:
        """Publish or update a peer; True (and serial + 1) when anything published changed."""
        name = self._peer_name(peer.key)
        old = self._peers.get(name)
        if old is not None and old.peer == peer:
            return False
        targets = [(name, c) for c in peer.candidates[:1]]
        for i, cand in enumerate(peer.candidates[1:], 1):
            targets.append((dns.name.Name((f"{cand.kind}{i}".encode(),)).concatenate(name), cand))
        node = _Node(peer, name, tuple(targets))
        if old is not None:
            self._withdraw(old)
        self._peers[name] = node
        self._targets.update(node.targets[1:])
        self._changed(node)
        return True

    def remove(self, key: bytes) -> bool:
        """Withdraw a peer; True (and serial + 1) if it was published."""
        node = self._peers.pop(self._peer_name(key), None)
        if node is None:
            return False
        self._withdraw(node)
        self._changed(node)
        return True

    def _withdraw(self, node: _Node) -> None:
        for target, _ in node.targets[1:]:
            self._targets.pop(target, None)
            self._cache.invalidate(_wire(target))

    def _changed(self, node: _Node) -> None:
        # negative answers carry the serial: raising it makes every cached one stale
        self.serial = (self.serial + 1) % 2**32 or 1
        self._browse_memo = None
        for target, _ in node.targets:
            self._cache.invalidate(_wire(target))
        for name in (node.name, self.service, self.origin):
            self._cache.invalidate(_wire(name))

    # -- answers ----------------------------------------------------------------------------

    def answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The wire answer to a query, or None to drop it. Never raises on hostile input."""
        stats = self.stats
        stats.queries += 1
        # hit path: a query without EDNS options is its own cache key (dnswire.raw_key), so a
        # repeated question costs one dict lookup and no parsing at all
        key = (b"T" if tcp else b"U") + query[2:]
        entry = self._cache.positive.get(key)
        cached: bytes | None
        if entry is not None:
            cached = entry[0]
        elif (cached := self._cache.get(key, self.serial)) is None:  # negative answers
            shape = query_shape(query, tcp)
            if shape is None or (cached := self._cache.get(shape.key, self.serial)) is None:
                return self._slow(query, tcp, shape)
        stats.cache_hits += 1
        stats.answered += 1
        if cached[2] & 0x02:
            stats.truncated += 1
        if cached[3] & 0x0F == 3:  # NXDOMAIN
            stats.nxdomain += 1
        return query[:2] + cached[2:]

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
                self._cache.put(shape.key, shape.qname, wire)
            else:
                self._cache.put_negative(shape.key, self.serial, wire)
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
        elif (node := self._peers.get(qname)) is not None:
            if qtype == T.SRV:
                found.append(self._srv(node))
                additional += self._addresses(node)
                additional.append(self._txt(node))
            elif qtype == T.TXT:
                found.append(self._txt(node))
            elif node.peer.candidates:
                found += self._address(qname, node.peer.candidates[0].endpoint, qtype)
        elif (cand := self._targets.get(qname)) is not None:
            found += self._address(qname, cand.endpoint, qtype)
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
        if qname in self._peers:
            return T.SRV
        if (cand := self._targets.get(qname)) is not None:
            return _address_type(cand.endpoint)
        if qname in self._glue_names and self._glue:
            return _address_type(self._glue[0])
        return T.A

    def _rrset(
        self, name: dns.name.Name, rdtype: int, rdatas: Sequence[dns.rdata.Rdata], ttl: int = -1
    ) -> dns.rrset.RRset:
        rrs = dns.rrset.RRset(name, IN, T(rdtype))
        rrs.update_ttl(self.config.ttl if ttl < 0 else ttl)
        for rd in rdatas:
            rrs.add(rd)
        return rrs

    def _soa(self, ttl: int) -> dns.rrset.RRset:
        cfg = self.config
        soa = dns.rdtypes.ANY.SOA.SOA(
            IN, T.SOA, self._ns[0], self._hostmaster, self.serial, 60, 30, 3600, cfg.negative_ttl
        )
        return self._rrset(self.origin, T.SOA, [soa], ttl)

    def _glue_at(self, name: dns.name.Name, qtype: int) -> list[dns.rrset.RRset]:
        rdatas = [rd for ep in self._glue for rd in _address_rdata(ep, qtype)]
        return [self._rrset(name, qtype, rdatas)] if rdatas else []

    def _address(self, name: dns.name.Name, ep: Endpoint, qtype: int) -> list[dns.rrset.RRset]:
        rdatas = _address_rdata(ep, qtype)
        return [self._rrset(name, qtype, rdatas)] if rdatas else []

    def _addresses(self, node: _Node) -> list[dns.rrset.RRset]:
        out: list[dns.rrset.RRset] = []
        for target, cand in node.targets:
            out += self._address(target, cand.endpoint, _address_type(cand.endpoint))
        return out

    def _srv(self, node: _Node) -> dns.rrset.RRset:
        ordered = sorted(node.targets, key=lambda t: t[1].priority)
        srvs = [
            dns.rdtypes.IN.SRV.SRV(IN, T.SRV, cand.priority, 0, cand.endpoint.port, target)
            for target, cand in ordered
        ]
        return self._rrset(node.name, T.SRV, srvs)

    def _txt(self, node: _Node) -> dns.rrset.RRset:
        peer = node.peer
        strings = [b"txtvers=1", f"pub={encode_key(peer.key)}".encode()]
        if peer.allowed_ips:
            strings.append(f"allowed={','.join(peer.allowed_ips)}".encode()[:255])
        if peer.name:
            strings.append(f"name={peer.name}".encode()[:255])
        strings.append(f"nat={peer.nat}".encode()[:255])
        strings.append(f"since={peer.since}".encode())
        return self._rrset(node.name, T.TXT, [dns.rdtypes.ANY.TXT.TXT(IN, T.TXT, strings)])

    def _browse(self) -> tuple[dns.rrset.RRset, list[dns.rrset.RRset]]:
        """The browse PTRs and additional data, built once per zone change (hashing rdata in
        dnspython costs ~30 us a record)."""
        if self._browse_memo is None:
            listed = (node for node in self._peers.values() if node.peer.candidates)
            nodes = list(islice(listed, self._browse_fit))
            ptrs = [dns.rdtypes.ANY.PTR.PTR(IN, T.PTR, node.name) for node in nodes]
            additional: list[dns.rrset.RRset] = []
            if len(nodes) <= BROWSE_ADDITIONAL:
                for node in nodes:
                    additional += [self._srv(node), self._txt(node), *self._addresses(node)]
            self._browse_memo = (self._rrset(self.service, T.PTR, ptrs), additional)
        return self._browse_memo


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


def _address_type(ep: Endpoint) -> int:
    return T.A if ep.ip.version == 4 else T.AAAA


def _address_rdata(ep: Endpoint, qtype: int) -> list[dns.rdata.Rdata]:
    if qtype == T.A and ep.ip.version == 4:
        return [dns.rdtypes.IN.A.A(IN, T.A, str(ep.ip))]
    if qtype == T.AAAA and ep.ip.version == 6:
        return [dns.rdtypes.IN.AAAA.AAAA(IN, T.AAAA, str(ep.ip))]
    return []


def _parents(name: dns.name.Name, origin: dns.name.Name) -> Iterator[dns.name.Name]:
    """The names strictly between ``name`` and ``origin`` (empty non-terminals if unowned)."""
    while name != origin and len(name) > len(origin):
        name = name.parent()
        if name != origin:
            yield name


def _wire(name: dns.name.Name) -> bytes:
    """Uncompressed, lowercased wire form of a name (the cache's name index)."""
    return (name.to_wire() or b"").lower()
