"""The authoritative DNS-SD zone (RFC 6763) in jwhited/wgsd's layout, sans-IO.

Names (``<label>`` is the lowercase padded base32 of the key, :func:`key_label`)::

    ZONE                                SOA, NS (+ glue A/AAAA for NS names inside the zone)
    _wireguard._udp.ZONE                PTR -> <label>._wireguard._udp.ZONE, one per peer
    <label>._wireguard._udp.ZONE        SRV 0 0 <port> <label>._wireguard._udp.ZONE  (public)
                                        SRV <prio> 0 <port> <kind><i>.<label>._wireguard._udp.ZONE
                                        TXT txtvers=1 pub= allowed= name= nat= since=
                                        A/AAAA of the public mapping
    <kind><i>.<label>._wireguard._udp.ZONE   A/AAAA of candidate i (lan, ipv6)

Answers (RFC 1035 section 4, RFC 2308 for negative answers, RFC 6891 EDNS, RFC 8482 ANY): AA on
every in-zone answer; NXDOMAIN or NODATA with the SOA in authority; REFUSED outside the zone (we
are never a resolver); FORMERR for malformed queries with a readable header; NOTIMP for opcodes
other than QUERY; nothing at all for garbage or responses. Over UDP an answer that does not fit
the client's size (512 without EDNS) is sent with TC and no records, so the client retries over
TCP, where it is answered in full.

Speed: NOERROR answers with records are cached as wire bytes keyed by the exact question bytes
and the request's shape; a hit only patches the message id. A zone change drops exactly the
cached answers at the names it touches (the peer's names, the browse list, the apex); negative
answers carry the SOA serial and are never cached.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import dns.edns
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

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label

IN = dns.rdataclass.IN
T = dns.rdatatype
MAX_TCP = 65535
MIN_UDP = 512


@dataclass(frozen=True, slots=True)
class Candidate:
    """One address a peer can be reached at."""

    endpoint: Endpoint
    """ip:port."""
    kind: str
    """``public`` (the observed mapping), ``lan`` or ``ipv6``."""
    priority: int
    """SRV priority; lower is preferred."""


@dataclass(frozen=True, slots=True)
class PublishedPeer:
    """What the zone publishes for one peer."""

    key: bytes
    """WireGuard public key."""
    name: str
    """Name for TXT ``name=`` ("" for none)."""
    candidates: tuple[Candidate, ...]
    """First: the public mapping (wgsd's single SRV); then the others."""
    allowed_ips: tuple[str, ...]
    """TXT ``allowed=``."""
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
    """NS names at the apex (absolute)."""
    hostmaster: str
    """SOA RNAME (absolute)."""
    ttl: int = 5
    """TTL of positive answers."""
    negative_ttl: int = 5
    """SOA minimum: how long "no such name" is cached."""
    ns_addresses: tuple[str, ...] = ()
    """Glue addresses for NS names inside the zone."""
    max_udp: int = 1232
    """Our EDNS UDP payload size."""
    browse_limit: int = 4000
    """Most PTRs in one browse answer; a 64 KiB TCP answer holds under a thousand anyway, so
    per-peer lookups by key never depend on browsing."""
    cache_size: int = 200_000
    """Most cached wire answers."""


@dataclass(slots=True)
class ZoneStats:
    """Counters."""

    queries: int = 0
    answered: int = 0
    refused: int = 0
    formerr: int = 0
    dropped: int = 0
    truncated: int = 0
    cache_hits: int = 0
    nxdomain: int = 0


@dataclass(slots=True)
class _Node:
    peer: PublishedPeer
    target_names: dict[dns.name.Name, Candidate] = field(default_factory=dict)


class Zone:
    """The zone's records and its answers; see the module docstring."""

    def __init__(self, config: ZoneConfig, serial: int = 1) -> None:
        self.config = config
        self.origin = dns.name.from_text(config.origin)
        self.service = dns.name.from_text("_wireguard._udp", self.origin)
        self.serial = serial
        self.stats = ZoneStats()
        self._peers: dict[dns.name.Name, _Node] = {}
        self._targets: dict[dns.name.Name, tuple[dns.name.Name, Candidate]] = {}
        self._cache: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self._cache_by_name: dict[bytes, set[bytes]] = {}

    # -- changes ----------------------------------------------------------------------------

    def _peer_name(self, key: bytes) -> dns.name.Name:
        return dns.name.Name((key_label(key).encode(),)).concatenate(self.service)

    def upsert(self, peer: PublishedPeer) -> bool:
        """Publish or update a peer; True (and serial + 1) when anything published changed."""
        name = self._peer_name(peer.key)
        old = self._peers.get(name)
        if old is not None and old.peer == peer:
            return False
        if old is not None:
            self._drop_node(name, old)
        node = _Node(peer)
        for i, cand in enumerate(peer.candidates):
            if i == 0:
                continue
            target = dns.name.Name((f"{cand.kind}{i}".encode(),)).concatenate(name)
            node.target_names[target] = cand
            self._targets[target] = (name, cand)
        self._peers[name] = node
        self._changed(name, node)
        return True

    def remove(self, key: bytes) -> bool:
        """Withdraw a peer; True (and serial + 1) if it was published."""
        name = self._peer_name(key)
        node = self._peers.pop(name, None)
        if node is None:
            return False
        self._drop_node(name, node)
        self._changed(name, node)
        return True

    def _drop_node(self, name: dns.name.Name, node: _Node) -> None:
        for target in node.target_names:
            self._targets.pop(target, None)
            self._invalidate(target)

    def _changed(self, name: dns.name.Name, node: _Node) -> None:
        self.serial = (self.serial + 1) % 2**32 or 1
        self._invalidate(name)
        for target in node.target_names:
            self._invalidate(target)
        self._invalidate(self.service)
        self._invalidate(self.origin)

    def _invalidate(self, name: dns.name.Name) -> None:
        for key in self._cache_by_name.pop(_wire(name).lower(), ()):
            self._cache.pop(key, None)

    def __len__(self) -> int:
        return len(self._peers)

    # -- answers ----------------------------------------------------------------------------

    def answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The wire answer to a query, or None to drop it. Never raises on hostile input."""
        self.stats.queries += 1
        # Hit path: for a query without EDNS options the bytes after the ID are the cache key
        # (see _fast_shape), so a hit costs one dict lookup and no parsing at all.
        cached = self._cache.get((b"T" if tcp else b"U") + query[2:])
        if cached is None:
            shape = _fast_shape(query, tcp)
            if shape is None:
                return self._slow(query, tcp, None)
            cached = self._cache.get(shape[0])
            if cached is None:
                return self._slow(query, tcp, shape)
        self.stats.cache_hits += 1
        self.stats.answered += 1
        return query[:2] + cached[0][2:]

    def _slow(self, query: bytes, tcp: bool, shape: tuple[bytes, bytes] | None) -> bytes | None:
        if len(query) < 12 or query[2] & 0x80:
            self.stats.dropped += 1
            return None
        try:
            q = dns.message.from_wire(query, ignore_trailing=False)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return self._formerr(query)
        r = dns.message.make_response(q, our_payload=self.config.max_udp)
        r.flags &= ~dns.flags.RA
        if q.opcode() != dns.opcode.QUERY:
            r.set_rcode(dns.rcode.NOTIMP)
            return self._finish(r, q, tcp, None)
        if q.edns > 0:
            r.set_rcode(dns.rcode.BADVERS)
            return self._finish(r, q, tcp, None)
        if len(q.question) != 1:
            r.set_rcode(dns.rcode.FORMERR)
            self.stats.formerr += 1
            return self._finish(r, q, tcp, None)
        question = q.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass != IN or not qname.is_subdomain(self.origin):
            self.stats.refused += 1
            r.set_rcode(dns.rcode.REFUSED)
            return self._finish(r, q, tcp, None)
        r.flags |= dns.flags.AA
        positive = self._fill(r, qname.canonicalize(), qtype)
        cache_name = _wire(qname).lower() if positive and shape is not None else None
        return self._finish(r, q, tcp, (shape, cache_name) if cache_name else None)

    def _formerr(self, query: bytes) -> bytes | None:
        self.stats.formerr += 1
        if len(query) < 12:
            return None
        (qid, flags) = struct.unpack_from("!HH", query, 0)
        if flags & 0x8000:
            return None
        out_flags = 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR
        return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)

    def _finish(
        self,
        r: dns.message.Message,
        q: dns.message.Message,
        tcp: bool,
        cache: tuple[tuple[bytes, bytes] | None, bytes] | None,
    ) -> bytes:
        limit = (
            MAX_TCP if tcp else (max(MIN_UDP, min(q.payload, 65535)) if q.edns >= 0 else MIN_UDP)
        )
        self.stats.answered += 1
        try:
            wire = r.to_wire(max_size=limit, want_shuffle=False)
        except dns.exception.TooBig:
            # additional data is optional: leave it out before truncating (RFC 2181 section 9)
            r.additional = []
            try:
                wire = r.to_wire(max_size=limit, want_shuffle=False)
            except dns.exception.TooBig:
                if tcp:
                    return self._shrink(r, limit)
            else:
                if cache is not None and cache[0] is not None:
                    self._store(cache[0][0], cache[1], wire)
                return wire
            self.stats.truncated += 1
            r.answer, r.authority, r.additional = [], [], []
            r.flags |= dns.flags.TC
            return r.to_wire(max_size=limit, want_shuffle=False)
        if cache is not None and cache[0] is not None:
            self._store(cache[0][0], cache[1], wire)
        return wire

    @staticmethod
    def _shrink(r: dns.message.Message, limit: int) -> bytes:
        """Over TCP, a browse list longer than 64 KiB holds is cut to what fits (per-peer
        lookups never depend on browsing)."""
        rrset = r.answer[0]
        items = list(rrset)
        while len(items) > 1:
            items = items[: len(items) // 2 + len(items) // 4]
            smaller = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
            smaller.update_ttl(rrset.ttl)
            for rd in items:
                smaller.add(rd)
            r.answer = [smaller]
            try:
                return r.to_wire(max_size=limit, want_shuffle=False)
            except dns.exception.TooBig:
                continue
        r.answer = []
        r.flags |= dns.flags.TC
        return r.to_wire(max_size=limit, want_shuffle=False)

    def _store(self, key: bytes, name_wire: bytes, wire: bytes) -> None:
        self._cache[key] = (wire, name_wire)
        self._cache_by_name.setdefault(name_wire, set()).add(key)
        if len(self._cache) > self.config.cache_size:
            old_key, (_, old_name) = self._cache.popitem(last=False)
            keys = self._cache_by_name.get(old_name)
            if keys is not None:
                keys.discard(old_key)
                if not keys:
                    del self._cache_by_name[old_name]

    # -- records ----------------------------------------------------------------------------

    def _fill(self, r: dns.message.Message, qname: dns.name.Name, qtype: int) -> bool:
        """Put the answer into ``r``; True when it is a positive (cacheable) answer."""
        cfg = self.config
        if qtype == T.ANY:
            qtype = self._any_type(qname)  # RFC 8482: one RRset is enough
        found: list[dns.rrset.RRset] = []
        exists = True
        additional: list[dns.rrset.RRset] = []
        if qname == self.origin:
            if qtype == T.SOA:
                found.append(self._soa())
            elif qtype == T.NS:
                found.append(self._rrset(qname, T.NS, [
                    dns.rdtypes.ANY.NS.NS(IN, T.NS, dns.name.from_text(n)) for n in cfg.ns
                ]))  # fmt: skip
                additional += self._glue()
        elif qname == self.service:
            if qtype == T.PTR:
                found.append(self._browse(additional))
        elif qname in self._peers:
            node = self._peers[qname]
            if qtype == T.SRV:
                found.append(self._srv(qname, node))
                additional.append(self._txt(qname, node.peer))
                additional += self._addresses_of(node)
            elif qtype == T.TXT:
                found.append(self._txt(qname, node.peer))
            elif qtype in (T.A, T.AAAA) and node.peer.candidates:
                found += self._address(qname, node.peer.candidates[0].endpoint, qtype)
        elif qname in self._targets:
            _, cand = self._targets[qname]
            if qtype in (T.A, T.AAAA):
                found += self._address(qname, cand.endpoint, qtype)
        elif (glue := self._glue_for(qname)) is not None:
            found += [g for g in glue if g.rdtype == qtype]
        else:
            exists = self._is_empty_non_terminal(qname)
        found = [f for f in found if len(f)]
        if found:
            r.answer += found
            r.additional += additional
            return True
        r.authority.append(self._soa(ttl=cfg.negative_ttl))
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
        return T.A

    def _is_empty_non_terminal(self, qname: dns.name.Name) -> bool:
        if qname == self.service.parent():
            return True
        return any(n.is_subdomain(qname) for n in (*self._glue_names(),) if n != qname)

    def _rrset(self, name: dns.name.Name, rdtype: int, rdatas: list[dns.rdata.Rdata],
               ttl: int | None = None) -> dns.rrset.RRset:  # fmt: skip
        rrs = dns.rrset.RRset(name, IN, dns.rdatatype.RdataType(rdtype))
        rrs.update_ttl(self.config.ttl if ttl is None else ttl)
        for rd in rdatas:
            rrs.add(rd)
        return rrs

    def _soa(self, ttl: int | None = None) -> dns.rrset.RRset:
        cfg = self.config
        soa = dns.rdtypes.ANY.SOA.SOA(
            IN, T.SOA, dns.name.from_text(cfg.ns[0]), dns.name.from_text(cfg.hostmaster),
            self.serial, 60, 30, 3600, cfg.negative_ttl,
        )  # fmt: skip
        return self._rrset(self.origin, T.SOA, [soa], ttl)

    def _glue_names(self) -> list[dns.name.Name]:
        return [
            n
            for n in (dns.name.from_text(x) for x in self.config.ns)
            if n.is_subdomain(self.origin)
        ]

    def _glue(self) -> list[dns.rrset.RRset]:
        out = []
        for name in self._glue_names():
            out += self._glue_for(name) or []
        return out

    def _glue_for(self, qname: dns.name.Name) -> list[dns.rrset.RRset] | None:
        if qname not in self._glue_names():
            return None
        out = []
        for addr in self.config.ns_addresses:
            ep = Endpoint.of(addr, 0)
            out += self._address(qname, ep, T.A if ep.ip.version == 4 else T.AAAA)
        return out

    def _address(self, name: dns.name.Name, ep: Endpoint, qtype: int) -> list[dns.rrset.RRset]:
        if qtype == T.A and ep.ip.version == 4:
            return [self._rrset(name, T.A, [dns.rdtypes.IN.A.A(IN, T.A, str(ep.ip))])]
        if qtype == T.AAAA and ep.ip.version == 6:
            return [self._rrset(name, T.AAAA, [dns.rdtypes.IN.AAAA.AAAA(IN, T.AAAA, str(ep.ip))])]
        return []

    def _srv(self, name: dns.name.Name, node: _Node) -> dns.rrset.RRset:
        rdatas: list[dns.rdata.Rdata] = []
        targets = [name, *node.target_names]
        for target, cand in zip(targets, node.peer.candidates, strict=False):
            rdatas.append(
                dns.rdtypes.IN.SRV.SRV(IN, T.SRV, cand.priority, 0, cand.endpoint.port, target)
            )
        rdatas.sort(key=lambda rd: rd.priority)  # type: ignore[attr-defined]
        return self._rrset(name, T.SRV, rdatas)

    def _addresses_of(self, node: _Node) -> list[dns.rrset.RRset]:
        name = self._peer_name(node.peer.key)
        out: list[dns.rrset.RRset] = []
        targets = [name, *node.target_names]
        for target, cand in zip(targets, node.peer.candidates, strict=False):
            out += self._address(
                target, cand.endpoint, T.A if cand.endpoint.ip.version == 4 else T.AAAA
            )
        return out

    def _txt(self, name: dns.name.Name, peer: PublishedPeer) -> dns.rrset.RRset:
        strings = [b"txtvers=1", f"pub={encode_key(peer.key)}".encode()]
        if peer.allowed_ips:
            strings.append(f"allowed={','.join(peer.allowed_ips)}".encode())
        if peer.name:
            strings.append(f"name={peer.name}".encode()[:255])
        strings.append(f"nat={peer.nat}".encode())
        strings.append(f"since={peer.since}".encode())
        return self._rrset(name, T.TXT, [dns.rdtypes.ANY.TXT.TXT(IN, T.TXT, strings)])

    def _browse(self, additional: list[dns.rrset.RRset]) -> dns.rrset.RRset:
        names = sorted(self._peers)[: self.config.browse_limit]
        rdatas: list[dns.rdata.Rdata] = [dns.rdtypes.ANY.PTR.PTR(IN, T.PTR, n) for n in names]
        if len(names) <= 20:  # small meshes get everything in one answer (RFC 6763 section 12.1)
            for n in names:
                node = self._peers[n]
                additional.append(self._srv(n, node))
                additional.append(self._txt(n, node.peer))
                additional += self._addresses_of(node)
        return self._rrset(self.service, T.PTR, rdatas)


def _wire(name: dns.name.Name) -> bytes:
    """Uncompressed wire form of a name."""
    return name.to_wire() or b""


def _fast_shape(query: bytes, tcp: bool) -> tuple[bytes, bytes] | None:
    """(cache key, question name wire) for a plain one-question query, or None.

    Hand-parsed (dnspython costs ~30 us a parse): header with QR=0, opcode QUERY, QDCOUNT 1,
    no answer/authority, at most an OPT record; an uncompressed question name.
    """
    n = len(query)
    if n < 17 or n > 512:
        return None
    flags, qd, an, ns, ar = struct.unpack_from("!HHHHH", query, 2)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:
        return None
    pos = 12
    while True:
        if pos >= n:
            return None
        length = query[pos]
        if length & 0xC0:
            return None
        pos += 1 + length
        if length == 0:
            break
    end_q = pos + 4
    if end_q > n:
        return None
    edns = b"-"
    options = False
    if ar:
        # OPT: root name, type 41, class = payload size, ttl = ext-rcode/version/flags, rdlen
        if end_q + 11 > n or query[end_q] != 0:
            return None
        rtype, payload, ext, version, eflags, rdlen = struct.unpack_from(
            "!HHBBHH", query, end_q + 1
        )
        if rtype != 41 or ext or version or end_q + 11 + rdlen != n:
            return None
        size = 0 if tcp else max(MIN_UDP, payload)
        edns = struct.pack("!HH", size, eflags & 0x8000)
        options = rdlen > 0
    elif end_q != n:
        return None
    if not options:  # the exact bytes after the ID: what answer() looks up without parsing
        return (b"T" if tcp else b"U") + query[2:], query[12 : end_q - 4].lower()
    # with options (cookies, padding) the answer does not depend on them: normalise them away
    key = b"%c%s%s%s" % (tcp, query[2:4], edns, query[12:end_q])
    return key, query[12 : end_q - 4].lower()
