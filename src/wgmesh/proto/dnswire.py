"""The zone's fast path, sans-IO: a hand-written question parser, the wire-answer cache, and the
packed per-peer record with the encoder that writes a peer's answers straight from it.

dnspython takes ~30 us to parse a query; a daemon asks the same few questions every probe
interval, so :class:`~wgmesh.proto.dnssd.Zone` answers repeats from :class:`AnswerCache` as wire
bytes and only patches the 2-byte message id (RFC 1035 section 4.1.1). The key is the query's
bytes after the id, so the answer echoes the question's case (RFC 4343 section 4.1) and every
header bit that shapes the answer (RD, the EDNS size and DO bit of RFC 6891 section 6.1) is part
of it. A query with EDNS options (cookies, padding) is keyed with the options left out.

Invalidation: positive answers are indexed by what they are about (a peer's key for the peer's
names, else the question name) and dropped when that changes; negative answers (RFC 2308) are
stored with the zone's generation (raised by every change and every new serial: they carry the
SOA), so any change makes them all stale at once. Both tables
are capped (entries, and bytes for the positive one) and evict the oldest entry first, and
negative answers (which hostile queries for random names produce) have their own, smaller cap,
so a flood of them cannot push out the answers real peers ask for.

Memory: a zone of a million peers holds each as one ``bytes`` (:func:`pack_record`, ~50 bytes:
the SRV targets' labels, priorities, ports and addresses, the NAT class and ``since`` as 9
bytes, and the TXT strings that are neither derived from the key nor from those), and
:class:`PeerAnswers` writes the SRV/TXT/A/AAAA answers about a peer from it in a few
microseconds, byte for byte as dnspython renders them (tests compare the two).
"""

from __future__ import annotations

import base64
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from wgmesh.proto.kinds import NatKind

MIN_UDP = 512
"""The UDP answer size a client without EDNS gets (RFC 1035 section 4.2.1)."""
MAX_TCP = 65535
"""Largest DNS message over TCP (RFC 1035 section 4.2.2: 2-byte length)."""
MAX_FAST_QUERY = 512
"""Longer queries go to the slow path (a real query is under 100 bytes)."""
ENTRY_OVERHEAD = 400
"""Bytes a cached positive answer costs besides its key and wire bytes (table and index slots,
object headers, the subject; measured on CPython 3.11), counted against
:attr:`AnswerCache.max_bytes`."""
A, TXT, AAAA, SRV = 1, 16, 28, 33
_OPT = 41
_DO = 0x8000
_QTAIL = struct.Struct("!HH")
_HEADER = struct.Struct("!HHHHH")  # after the id: flags, QD, AN, NS, AR counts
_RR = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_SRV = struct.Struct("!HHH")  # priority, weight, port (RFC 2782)
_OPT_RR = struct.Struct("!BHHIH")  # root owner, type 41, UDP size, ext-rcode/version/flags, 0
_TARGET = struct.Struct("!HHB")  # priority, port, address length
_STAMP = struct.Struct("<Bq")
"""A record's NAT class (its index in NatKind) and ``since``, written out as TXT ``nat=`` and
``since=`` only when a record is read (29 bytes as strings, 9 packed)."""
_NATS = tuple(NatKind)
_NAT_CODES = {nat: i for i, nat in enumerate(_NATS)}
_NAT_STRINGS = tuple(bytes((4 + len(n.value),)) + b"nat=" + n.value.encode() for n in _NATS)
_HERE = b"\xc0\x0c"  # a pointer to the question name (RFC 1035 section 4.1.4)
ALT_LABEL = b"_alt"
"""First label of a peer's alternates' name, ``_alt.<label>._wireguard._udp.ZONE``: the SRVs
of its candidates other than the public one (docs/protocol.md, "DNS-SD layout")."""
ALT = -1
"""The index :meth:`~wgmesh.proto.dnssd.Zone._locate` gives the alternates' name."""
_ALT_HERE = b"\x04_alt" + _HERE  # the alternates' name, at the peer's own name's question


def raw_key(query: bytes, tcp: bool) -> bytes:
    """The cache key of a query without EDNS options: its bytes after the id, per transport."""
    return (b"T" if tcp else b"U") + query[2:]


@dataclass(frozen=True, slots=True)
class QueryShape:
    """What the fast parser read from a plain one-question query."""

    key: bytes
    """Cache key: :func:`raw_key` when there are no EDNS options, else a normalised form."""
    qname: bytes
    """The question name in uncompressed wire form, ASCII-lowercased (the invalidation index)."""
    end: int
    """Offset just past the question (its type and class included)."""


def query_shape(query: bytes, tcp: bool) -> QueryShape | None:
    """Parse a plain query by hand, or None when it is anything else (the slow path decides).

    Plain: QR=0, opcode QUERY, QDCOUNT 1, no answer/authority records, at most one OPT record
    with version 0 and nothing after it, an uncompressed question name.
    """
    n = len(query)
    if n < 17 or n > MAX_FAST_QUERY:
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
    if pos - 12 > 255:  # RFC 1035 section 3.1: names are at most 255 octets
        return None
    end_q = pos + 4
    if end_q > n:
        return None
    qname = query[12:pos].lower()
    if not ar:
        return QueryShape(raw_key(query, tcp), qname, end_q) if end_q == n else None
    # OPT (RFC 6891 section 6.1.2): root owner, type 41, CLASS = UDP size, TTL = ext-rcode,
    # version, flags; then RDLENGTH and the options
    if end_q + 11 > n or query[end_q] != 0:
        return None
    rtype, payload, ext, version, eflags, rdlen = struct.unpack_from("!HHBBHH", query, end_q + 1)
    if rtype != _OPT or ext or version or end_q + 11 + rdlen != n:
        return None
    if rdlen == 0:
        return QueryShape(raw_key(query, tcp), qname, end_q)
    # the answer does not depend on the options: key by what it does depend on
    size = 0 if tcp else max(MIN_UDP, payload)
    shape = struct.pack("!HH", size, eflags & _DO)
    return QueryShape(b"%c%s%s%s" % (tcp, query[2:4], shape, query[12:end_q]), qname, end_q)


class AnswerCache:
    """Wire answers by cache key: positive ones indexed by subject, negative ones stamped with
    the zone's generation."""

    def __init__(self, size: int, negative_size: int, max_bytes: int = 2**62) -> None:
        self.size = size
        """Most positive answers."""
        self.max_bytes = max_bytes
        """Most bytes of positive answers: keys, wires and :data:`ENTRY_OVERHEAD` each."""
        self.negative_size = negative_size
        """Most negative answers."""
        self.bytes = 0
        """Bytes the positive answers count for now."""
        self.positive: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        """Positive answers: key -> (wire, subject). Public for the zone's inlined hit path."""
        # subject -> its one cached key, or a set of them (one per asked variant: case, type,
        # transport, EDNS size); a set is made only for a second key, as most have one
        self._index: dict[bytes, bytes | set[bytes]] = {}
        self._negative: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        """Cached positive answers (negative ones are counted by :attr:`negative_count`)."""
        return len(self.positive)

    @property
    def negative_count(self) -> int:
        """Cached negative answers, stale ones included until they are hit or evicted."""
        return len(self._negative)

    @property
    def indexed(self) -> int:
        """Keys in the subject index (equal to ``len(self)`` unless there is a bug)."""
        return sum(len(k) if isinstance(k, set) else 1 for k in self._index.values())

    def get(self, key: bytes, serial: int) -> bytes | None:
        """The cached answer for ``key``, if any is valid at ``serial`` (the generation)."""
        entry = self.positive.get(key)
        if entry is not None:
            return entry[0]
        negative = self._negative.get(key)
        if negative is None:
            return None
        if negative[1] != serial:
            del self._negative[key]
            return None
        return negative[0]

    def put(self, key: bytes, subject: bytes, wire: bytes) -> None:
        """Cache a positive answer about ``subject``: a peer's key for the names of that peer,
        else the question name (lowercased wire form)."""
        cost = len(key) + len(wire) + ENTRY_OVERHEAD
        if self.size <= 0 or cost > self.max_bytes:
            return
        if key in self.positive:
            self._drop(key)
        self.positive[key] = (wire, subject)
        self.bytes += cost
        have = self._index.get(subject)
        if have is None:
            self._index[subject] = key
        elif isinstance(have, set):
            have.add(key)
        else:
            self._index[subject] = {have, key}
        while len(self.positive) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self.positive)))

    def _drop(self, key: bytes) -> None:
        wire, subject = self.positive.pop(key)
        self.bytes -= len(key) + len(wire) + ENTRY_OVERHEAD
        have = self._index.get(subject)
        if isinstance(have, set):
            have.discard(key)
            if not have:
                del self._index[subject]
        elif have == key:
            del self._index[subject]

    def put_negative(self, key: bytes, serial: int, wire: bytes) -> None:
        """Cache a negative answer, valid while the zone's generation is ``serial``."""
        if self.negative_size <= 0:
            return
        self._negative[key] = (wire, serial)
        if len(self._negative) > self.negative_size:
            self._negative.popitem(last=False)

    def invalidate(self, subject: bytes) -> None:
        """Forget every positive answer about ``subject``."""
        have = self._index.pop(subject, None)
        if have is None:
            return
        for key in have if isinstance(have, set) else (have,):
            wire, _ = self.positive.pop(key)
            self.bytes -= len(key) + len(wire) + ENTRY_OVERHEAD


# -- the packed per-peer record -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One SRV target of a peer as its packed record holds it (one per candidate address)."""

    label: bytes
    """First label of the target's name (``lan1``); empty for the peer's own name."""
    priority: int
    """SRV priority."""
    port: int
    """SRV port."""
    ip: bytes
    """The A (4 bytes) or AAAA (16 bytes) address at the target's name."""

    @property
    def rdtype(self) -> int:
        """A or AAAA."""
        return A if len(self.ip) == 4 else AAAA


def pack_record(targets: Sequence[Target], txt: Sequence[bytes], nat: NatKind, since: int) -> bytes:
    """A peer's published data as one ``bytes``: the targets, the NAT class and ``since``
    packed, then the TXT character-strings (``allowed=``, ``name=``) that come after
    ``txtvers=1`` and ``pub=`` (derived from the key when answering) and before ``nat=``,
    ``since=`` and ``alt=`` (derived from the packed fields and the targets). Raises ValueError
    for a label over 63 bytes (RFC 1035 section 2.3.4), a bad address, a string over 255
    bytes, or a ``since`` outside a signed 64-bit number."""
    parts = [bytes((len(targets),))]
    for t in targets:
        if len(t.label) > 63 or len(t.ip) not in (4, 16):
            raise ValueError(f"bad SRV target {t!r}")
        parts += (bytes((len(t.label),)), t.label, _TARGET.pack(t.priority, t.port, len(t.ip)))
        parts.append(t.ip)
    if not -(2**63) <= since < 2**63 or any(len(s) > 255 for s in txt):
        raise ValueError(f"since={since} or a TXT string too long for a record")
    parts.append(_STAMP.pack(_NAT_CODES[nat], since))
    parts += (bytes((len(s),)) + s for s in txt)
    return b"".join(parts)


def unpack_record(record: bytes) -> tuple[list[Target], bytes]:
    """The targets of a packed record and its TXT tail: the wire-form character-strings after
    ``txtvers=1`` and ``pub=``, as answers carry them."""
    targets = []
    pos = 1
    for _ in range(record[0]):
        end = pos + 1 + record[pos]
        priority, port, iplen = _TARGET.unpack_from(record, end)
        ip = record[end + 5 : end + 5 + iplen]
        targets.append(Target(record[pos + 1 : end], priority, port, ip))
        pos = end + 5 + iplen
    nat, since = _STAMP.unpack_from(record, pos)
    stamp = b"since=%d" % since
    tail = [record[pos + _STAMP.size :], _NAT_STRINGS[nat], bytes((len(stamp),)), stamp]
    if len(targets) > 1:
        alt = b"alt=%d" % (len(targets) - 1)
        tail += (bytes((len(alt),)), alt)
    return targets, b"".join(tail)


def txt_strings(key: bytes, tail: bytes) -> list[bytes]:
    """The TXT character-strings of a peer (RFC 6763 section 6): txtvers, pub, then ``tail``."""
    out = [b"txtvers=1", b"pub=" + base64.b64encode(key)]
    pos = 0
    while pos < len(tail):
        out.append(tail[pos + 1 : pos + 1 + tail[pos]])
        pos += 1 + tail[pos]
    return out


class PeerAnswers:
    """Positive answers about a peer's names, encoded from its packed record.

    Covers what daemons ask: SRV, TXT, A/AAAA at the peer's name, SRV at its alternates' name
    (:data:`ALT`) and A/AAAA at its targets' names, for a query without EDNS options. Anything
    else (a negative answer, ANY, TC) gives None and is left to dnspython. The layout is
    dnspython's for the same records: owner names point at the question (or at the first RR of
    their RRset), SRV targets are uncompressed (RFC 2782), additional data is the public
    address, the TXT, the alternates' SRVs and their addresses, cut by whole RRsets in halves
    to fit as :meth:`Zone._finish <wgmesh.proto.dnssd.Zone._finish>` cuts it, and OPT comes
    last.
    """

    def __init__(self, service: bytes, ttl: int, max_udp: int) -> None:
        self._service = service
        self._ttl = ttl
        self._max_udp = max_udp

    def answer(
        self,
        query: bytes,
        shape: QueryShape,
        tcp: bool,
        key: bytes,
        record: bytes,
        index: int,
    ) -> bytes | None:
        """The answer to ``query`` about target ``index`` (0: the peer's own name, :data:`ALT`:
        its alternates' name) of the peer ``key`` whose packed record is ``record``; None when
        this encoder does not cover it."""
        end = shape.end
        qtype, qclass = _QTAIL.unpack_from(query, end - 4)
        if qclass != 1:
            return None
        opt = b""
        limit = MAX_TCP if tcp else MIN_UDP
        if query[11]:  # one OPT record (query_shape allows no other)
            if len(query) != end + 11:
                return None  # EDNS options: padding (RFC 8467) changes the answer
            if not tcp:
                limit = max(MIN_UDP, min((query[end + 3] << 8) | query[end + 4], self._max_udp))
            opt = _OPT_RR.pack(0, _OPT, self._max_udp, ((query[end + 7] << 8) & _DO), 0)
        targets, tail = unpack_record(record)
        ttl = self._ttl
        answers: list[bytes] = []
        extra: list[tuple[bytes, int]] = []  # (RRset, its RR count): cut by whole RRsets
        question = query[12:end]
        if index > 0:
            target = targets[index]
            if qtype != target.rdtype:
                return None
            answers.append(_HERE + _RR.pack(qtype, 1, ttl, len(target.ip)) + target.ip)
        elif index == ALT:
            if qtype != SRV or len(targets) < 2:
                return None
            name = shape.qname[5:62] + self._service  # the peer's name, as the zone spells it
            answers += self._srvs(_HERE, name, targets[1:], -1)
            peer = 0xC000 | 17  # the peer's name inside the question (after "\x04_alt")
            extra += self._addresses(targets[1:], struct.pack("!H", peer))
        elif qtype == SRV and targets:
            name = shape.qname[:57] + self._service
            answers += self._srvs(_HERE, name, targets[:1], -1)
            extra += self._addresses(targets[:1], _HERE)
            extra.append((self._txt(key, tail), 1))
            if len(targets) > 1:  # the alternates' SRV RRset, its owner "\x04_alt" + pointer
                at = 12 + len(question) + sum(map(len, answers)) + sum(len(e) for e, _ in extra)
                srvs = self._srvs(_ALT_HERE, name, targets[1:], at)
                extra.append((b"".join(srvs), len(srvs)))
                extra += self._addresses(targets[1:], _HERE)
        elif qtype == TXT:
            answers.append(self._txt(key, tail))
        elif targets and qtype == targets[0].rdtype:
            answers.append(_HERE + _RR.pack(qtype, 1, ttl, len(targets[0].ip)) + targets[0].ip)
        else:
            return None
        size = 12 + len(question) + sum(map(len, answers)) + len(opt)
        if size > limit:
            return None
        keep = len(extra)
        if size + sum(len(e) for e, _ in extra) > limit:  # additional data is optional
            keep //= 2  # (RFC 2181 section 9)
            while keep and size + sum(len(e) for e, _ in extra[:keep]) > limit:
                keep //= 2
        flags = 0x8400 | (query[2] << 8 & 0x0100)  # QR, AA, RD echoed
        count = sum(n for _, n in extra[:keep]) + (1 if opt else 0)
        header = _HEADER.pack(flags, 1, len(answers), 0, count)
        return b"".join((query[:2], header, question, *answers, *(e for e, _ in extra[:keep]), opt))

    def _srvs(self, owner: bytes, name: bytes, targets: list[Target], at: int) -> list[bytes]:
        """One SRV RR per target, by priority: the first owned by ``owner``, the others by
        ``owner`` again (``at`` < 0) or by a pointer to the first (written at offset ``at``)."""
        out = []
        for t in sorted(targets, key=_priority):
            target_name = bytes((len(t.label),)) + t.label + name if t.label else name
            rdata = _SRV.pack(t.priority, 0, t.port) + target_name
            out.append(owner + _RR.pack(SRV, 1, self._ttl, len(rdata)) + rdata)
            if at >= 0:
                owner = struct.pack("!H", 0xC000 | at)
        return out

    def _addresses(self, targets: list[Target], pointer: bytes) -> list[tuple[bytes, int]]:
        """The A/AAAA RRset of each target, its owner its label (if any) and ``pointer`` (to
        the peer's name)."""
        out = []
        for t in targets:
            owner = bytes((len(t.label),)) + t.label + pointer if t.label else pointer
            out.append((owner + _RR.pack(t.rdtype, 1, self._ttl, len(t.ip)) + t.ip, 1))
        return out

    def _txt(self, key: bytes, tail: bytes) -> bytes:
        rdata = b"\x09txtvers=1\x30pub=" + base64.b64encode(key) + tail
        return _HERE + _RR.pack(TXT, 1, self._ttl, len(rdata)) + rdata


def _priority(t: Target) -> int:
    return t.priority
