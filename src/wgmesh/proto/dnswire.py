"""The zone's fast path: a hand-written question parser and the wire-answer cache, sans-IO.

dnspython takes ~30 us to parse a query; a daemon asks the same few questions every probe
interval, so :class:`~wgmesh.proto.dnssd.Zone` answers repeats from :class:`AnswerCache` as wire
bytes and only patches the 2-byte message id (RFC 1035 section 4.1.1). The key is the query's
bytes after the id, so the answer echoes the question's case (RFC 4343 section 4.1) and every
header bit that shapes the answer (RD, the EDNS size and DO bit of RFC 6891 section 6.1) is part
of it. A query with EDNS options (cookies, padding) is keyed with the options left out.

Invalidation: positive answers are indexed by their question name and dropped when that name
changes; negative answers (RFC 2308) carry the SOA serial and are stored with it, so any change
makes them all stale at once. Both tables are capped and evict the oldest entry first, and
negative answers (which hostile queries for random names produce) have their own, smaller cap,
so a flood of them cannot push out the answers real peers ask for.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

MIN_UDP = 512
"""The UDP answer size a client without EDNS gets (RFC 1035 section 4.2.1)."""
MAX_FAST_QUERY = 512
"""Longer queries go to the slow path (a real query is under 100 bytes)."""
_OPT = 41
_DO = 0x8000


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
        return QueryShape(raw_key(query, tcp), qname) if end_q == n else None
    # OPT (RFC 6891 section 6.1.2): root owner, type 41, CLASS = UDP size, TTL = ext-rcode,
    # version, flags; then RDLENGTH and the options
    if end_q + 11 > n or query[end_q] != 0:
        return None
    rtype, payload, ext, version, eflags, rdlen = struct.unpack_from("!HHBBHH", query, end_q + 1)
    if rtype != _OPT or ext or version or end_q + 11 + rdlen != n:
        return None
    if rdlen == 0:
        return QueryShape(raw_key(query, tcp), qname)
    # the answer does not depend on the options: key by what it does depend on
    size = 0 if tcp else max(MIN_UDP, payload)
    shape = struct.pack("!HH", size, eflags & _DO)
    return QueryShape(b"%c%s%s%s" % (tcp, query[2:4], shape, query[12:end_q]), qname)


class AnswerCache:
    """Wire answers by cache key: positive ones indexed by name, negative ones by serial."""

    def __init__(self, size: int, negative_size: int) -> None:
        self.size = size
        self.negative_size = negative_size
        self.positive: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        """Positive answers: key -> (wire, qname). Public for the zone's inlined hit path."""
        self._by_name: dict[bytes, set[bytes]] = {}
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
        """Keys in the name index (equal to ``len(self)`` unless there is a bug)."""
        return sum(len(keys) for keys in self._by_name.values())

    def get(self, key: bytes, serial: int) -> bytes | None:
        """The cached answer for ``key``, if any is valid at ``serial``."""
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

    def put(self, key: bytes, qname: bytes, wire: bytes) -> None:
        """Cache a positive answer to a question about ``qname``."""
        if self.size <= 0:
            return
        self.positive[key] = (wire, qname)
        self._by_name.setdefault(qname, set()).add(key)
        if len(self.positive) > self.size:
            old_key, (_, old_name) = self.positive.popitem(last=False)
            keys = self._by_name.get(old_name)
            if keys is not None:
                keys.discard(old_key)
                if not keys:
                    del self._by_name[old_name]

    def put_negative(self, key: bytes, serial: int, wire: bytes) -> None:
        """Cache a negative answer, valid while the zone's serial is ``serial``."""
        if self.negative_size <= 0:
            return
        self._negative[key] = (wire, serial)
        if len(self._negative) > self.negative_size:
            self._negative.popitem(last=False)

    def invalidate(self, qname: bytes) -> None:
        """Forget every positive answer about ``qname`` (lowercased wire form)."""
        for key in self._by_name.pop(qname, ()):
            self.positive.pop(key, None)
