"""What the DNS server may send to a UDP source it cannot verify, sans-IO: response rate limiting
(RRL) per source prefix, a size cap toward sources that have not proven they receive, and DNS
cookies (RFC 7873) as that proof.

Why: a UDP query's source address can be forged, so an open authoritative server is a reflector
(a browse at EDNS 4096 is ~20x its query, 135k answers/s from one source). Three rules bound what
a forged source can make us send to its victim:

- **Rate** (:class:`ResponseLimiter`, in the manner of Knot's and BIND's RRL): answers to each
  source prefix (IPv4 /24, IPv6 /56: what one customer or NAT holds) draw on a token bucket,
  ``rate`` answers/s with a ``burst``. Over the limit an answer is dropped, except every
  ``slip``-th one, sent as a minimal truncated answer (TC=1, question only, never larger than the
  query): a real resolver behind the prefix retries over TCP, which needs a handshake (return
  routability) and is not limited here, so it is still served.
- **Size** (:class:`UdpGuard`): toward a source that has not proven it receives, a UDP answer is
  at most ``amplification`` x its query, but never below ``amplification_floor`` (512, the size
  every DNS client accepts, so ordinary answers pass). The cap is applied by lowering the
  query's EDNS UDP size before the zone answers (RFC 6891 section 6.2.5), so the zone drops
  additional data first and sets TC only when the answer itself does not fit (RFC 2181 section
  9, RFC 7766 section 5), exactly as for a client with a small buffer. Once the rate limit has
  **engaged** for a prefix (an answer was dropped or slipped) and until its bucket is full
  again, there is no floor: an answer to that prefix toward an unproven source, with EDNS or
  without, over ``amplification`` x its query is sent as the minimal TC answer instead. Until
  full, not for a set time: a source that stays just within the rate draws ``rate`` answers/s
  at the floor without ever engaging, and one that waits for a full bucket after each burst
  draws no more on average, so a longer hold would lower no worst case, while a plain client
  of the prefix (no EDNS, no TCP retry: wgsd-client) is whole again ``burst``/``rate`` s
  (2 s) after a flood.
- **Proof** (:class:`ServerCookies`): a query that echoes a valid server cookie (RFC 7873
  section 5.2.4) came from an address that received our earlier answer, so it gets answers up
  to its own EDNS size and, like a TCP query, is neither charged to nor limited by its
  prefix's bucket: a flood forged from a resolver's own prefix cannot lock it out (an off-path
  attacker cannot forge the cookie: it is bound to the client's address). Every answer to a
  query with a client cookie carries a server cookie (RFC 7873 section 5.2.2-5.2.4), over TCP
  too, so a client that fell back to TCP once can prove itself over UDP afterwards. The cookie
  is RFC 9018's layout (version 1, 3 reserved bytes, a 4-byte timestamp, an 8-byte hash of the
  client cookie, those 8 bytes and the client address) with keyed BLAKE2b instead of
  SipHash-2-4 (hashlib has no SipHash; the hash only has to agree between servers sharing a
  secret, and ours is per process), valid for an hour, renewed when older than half an hour
  (RFC 9018 section 4.3). A malformed COOKIE option gets FORMERR (RFC 7873 section 5.2.2); a
  bad server cookie is treated as a client cookie alone (section 5.2.3).

Everything hostile input can grow is capped: the bucket table holds ``max_sources`` prefixes
(least recently seen evicted first, starting full again when seen next); nothing else is kept
per source. Time is ``now`` (seconds; Unix time, as cookies carry it).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from wgmesh.errors import ConfigError, DecodeError

COOKIE = 10
"""EDNS option code of COOKIE (RFC 7873 section 4)."""
OPT = 41
"""The OPT pseudo-RR type (RFC 6891 section 6.1.1)."""
MIN_UDP = 512
"""What every DNS client accepts over UDP (RFC 1035 section 4.2.1)."""
MAX_TCP = 65535
"""Largest DNS message over TCP."""
SERVER_COOKIE = 16
"""Bytes of our server cookie (RFC 9018 section 4.2)."""
COOKIE_OPTION = 4 + 8 + SERVER_COOKIE
"""Bytes the COOKIE option adds to an answer's OPT record."""
COOKIE_LIFETIME = 3600
"""Seconds a server cookie is accepted (RFC 9018 section 4.3: one hour)."""
COOKIE_RENEW = 1800
"""A valid server cookie older than this is replaced by a fresh one (RFC 9018 section 4.3)."""
COOKIE_SKEW = 300
"""Seconds a cookie's timestamp may be in the future (RFC 9018 section 4.3: five minutes)."""
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_from_bytes = int.from_bytes
_V6_TAG = 1 << 128  # keeps IPv6 prefix keys apart from IPv4 ones
_TOLERANCE = 1e-3  # of a token: float rounding must not cost an answer
_HEADER = struct.Struct("!HHHHHH")
_OPT_HEAD = struct.Struct("!BHHIH")  # root owner, type, UDP size, ext-rcode/version/flags, RDLEN


class Decision(IntEnum):
    """What to do with one UDP answer."""

    ANSWER = 0
    """Within the source prefix's rate: answer."""
    DROP = 1
    """Over the rate: send nothing."""
    SLIP = 2
    """Over the rate, but the ``slip``-th: send a minimal truncated answer instead."""
    ENGAGED = 3
    """Within the rate, but the limit has engaged for the prefix (it went over the rate since its
    bucket was last full): answer, toward an unproven source only within ``amplification`` x
    the query (no floor)."""


_ANSWER, _DROP, _SLIP, _ENGAGED = Decision.ANSWER, Decision.DROP, Decision.SLIP, Decision.ENGAGED


@dataclass(frozen=True, slots=True)
class RrlConfig:
    """Response rate limiting, the size cap and cookies (see the module docstring).

    The defaults are sized for a NAT with hundreds of daemons behind one IPv4 address (one /24):
    a daemon asks a handful of names per 20 s probe interval (well under 1 answer/s), so 200/s
    serves several hundred daemons and the burst of 400 absorbs all of them starting at once,
    while one /24 can reflect at most 200 answers/s toward a victim instead of 135,000/s: of at
    most ~512 bytes (about 0.8 Mbit/s) while it stays within the rate, of at most
    ``amplification`` x the query once it has gone over it."""

    rate: float = 200.0
    """UDP answers per second per source prefix; 0 turns rate limiting off."""
    burst: float = 400.0
    """Answers a prefix may get at once (the bucket size, at least 1)."""
    slip: int = 2
    """Every ``slip``-th answer over the limit goes out as a minimal TC answer (0: none, 1: all;
    BIND's default is 2)."""
    ipv4_prefix: int = 24
    """Bits of an IPv4 source address that name its bucket."""
    ipv6_prefix: int = 56
    """Bits of an IPv6 source address that name its bucket (IPv4-mapped addresses count as
    IPv4)."""
    max_sources: int = 65536
    """Most prefixes tracked (about 220 bytes each: ~14 MB when full); the least recently seen
    is evicted first."""
    amplification: float = 2.0
    """Toward a source without a valid cookie, a UDP answer is at most this many times its
    query (0: no cap)..."""
    amplification_floor: int = MIN_UDP
    """...but the cap is never below this many bytes, except while the rate limit is engaged
    for the source's prefix (:attr:`Decision.ENGAGED`)."""
    cookies: bool = True
    """Answer DNS cookies (RFC 7873) and let a valid server cookie lift the size cap."""

    def __post_init__(self) -> None:
        if not self.rate >= 0 or (self.rate and not self.burst >= 1):
            raise ConfigError(f"DNS rate limit: rate {self.rate} and burst {self.burst}")
        if self.slip < 0:
            raise ConfigError(f"DNS rate limit: slip {self.slip} is negative")
        if not 0 <= self.ipv4_prefix <= 32 or not 0 <= self.ipv6_prefix <= 128:
            raise ConfigError(
                f"DNS rate limit: prefixes /{self.ipv4_prefix} and /{self.ipv6_prefix}"
            )
        if self.max_sources < 1:
            raise ConfigError(f"DNS rate limit: max_sources {self.max_sources}")
        if not self.amplification >= 0 or not MIN_UDP <= self.amplification_floor <= MAX_TCP:
            raise ConfigError(
                f"DNS size cap: amplification {self.amplification}, "
                f"floor {self.amplification_floor} (512..65535)"
            )


@dataclass(slots=True)
class RrlStats:
    """One counter per decision and outcome."""

    answered: int = 0
    """UDP answers sent within their prefix's rate (with the limit engaged or not)."""
    dropped: int = 0
    """UDP answers over the rate: nothing sent."""
    slipped: int = 0
    """UDP answers over the rate sent as a minimal TC answer instead."""
    evicted: int = 0
    """Prefixes evicted from the full bucket table."""
    capped: int = 0
    """UDP queries from unproven sources whose EDNS size was lowered to the size cap."""
    cap_truncated: int = 0
    """Answers still over the cap, replaced by a TC answer (0 unless the zone ignored the
    lowered size)."""
    engaged_truncated: int = 0
    """Answers within the rate to a prefix whose limit is engaged, over ``amplification`` x
    their query toward an unproven source: replaced by a minimal TC answer."""
    proven: int = 0
    """UDP answers to queries with a valid server cookie: not charged to (nor limited by) their
    prefix's bucket."""
    cookie_good: int = 0
    """Queries with a valid server cookie (the source proved it receives)."""
    cookie_new: int = 0
    """Queries with a client cookie alone (given a server cookie)."""
    cookie_bad: int = 0
    """Queries with a server cookie that is not valid (wrong hash, expired, another address):
    treated as a client cookie alone."""
    cookie_malformed: int = 0
    """Queries with a COOKIE option of an impossible length: FORMERR."""


def prefix_key(address: bytes, ipv4_prefix: int = 24, ipv6_prefix: int = 56) -> int:
    """The bucket of a packed source address (4 or 16 bytes; IPv4-mapped IPv6 counts as IPv4):
    its first ``ipv4_prefix``/``ipv6_prefix`` bits, IPv4 and IPv6 keys never equal."""
    if len(address) == 16 and address[:12] != _V4_MAPPED:
        return (int.from_bytes(address, "big") >> (128 - ipv6_prefix)) | _V6_TAG
    return int.from_bytes(address[-4:], "big") >> (32 - ipv4_prefix)


class ResponseLimiter:
    """Token buckets per source prefix in a capped LRU table: ``decide(key, now)``.

    Each bucket is one ``(tat, limited)`` pair: ``tat`` the time at which the bucket would be
    full again (GCRA's theoretical arrival time, relative to the first ``now`` seen, so float
    rounding stays far below a token), ``limited`` the answers over the limit since the bucket
    was last full (not 0: the limit is engaged, :attr:`Decision.ENGAGED`; every ``slip``-th of
    them slips). An answer within the limit moves ``tat`` on by 1/rate; answers over it cost
    nothing, so a flood gets exactly ``rate`` answers/s. A clock that went back resets the
    bucket."""

    def __init__(self, config: RrlConfig, stats: RrlStats | None = None) -> None:
        if not config.rate:
            raise ConfigError("DNS rate limit: rate 0 means no limiter")
        self.config = config
        self.stats = RrlStats() if stats is None else stats
        self._interval = 1.0 / config.rate
        self._slack = (config.burst - 1 + _TOLERANCE) / config.rate
        self._jump = (config.burst + 1) / config.rate
        self._slip = config.slip
        self._max = config.max_sources
        self._epoch: float | None = None
        # key -> [tat, limited] (a list: updated in place, cheaper than storing a new tuple)
        self._table: OrderedDict[int, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def decide(self, key: int, now: float) -> Decision:
        """May one more answer go to the prefix ``key`` (:func:`prefix_key`) at ``now``?"""
        epoch = self._epoch
        if epoch is None:
            epoch = self._epoch = now
        t = now - epoch
        table = self._table
        entry = table.get(key)
        if entry is None:
            if len(table) >= self._max:
                table.popitem(last=False)
                self.stats.evicted += 1
            entry = table[key] = [t, 0]
            tat = t
        else:
            table.move_to_end(key)
            tat = entry[0]
            if tat <= t or tat > t + self._jump:  # full again, or the clock went back
                tat = t
                entry[1] = 0  # no longer engaged
        if tat <= t + self._slack:
            entry[0] = tat + self._interval
            self.stats.answered += 1
            return _ENGAGED if entry[1] else _ANSWER
        entry[0] = tat
        limited = entry[1] = entry[1] + 1
        if self._slip and not limited % self._slip:
            self.stats.slipped += 1
            return _SLIP
        self.stats.dropped += 1
        return _DROP


class ServerCookies:
    """Makes and checks server cookies (RFC 9018 layout, keyed BLAKE2b; see the module
    docstring). ``secret`` (16+ random bytes) is passed in: this module draws no randomness."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("the DNS cookie secret needs at least 16 bytes")
        self._secret = secret[:64]

    def _hash(self, client: bytes, head: bytes, address: bytes) -> bytes:
        return hashlib.blake2b(client + head + address, key=self._secret, digest_size=8).digest()

    def make(self, client: bytes, address: bytes, now: float) -> bytes:
        """A fresh server cookie for ``client`` (8 bytes) at ``address`` (packed)."""
        head = b"\x01\0\0\0" + struct.pack("!I", int(now) & 0xFFFFFFFF)
        return head + self._hash(client, head, address)

    def check(self, client: bytes, server: bytes, address: bytes, now: float) -> bytes | None:
        """The server cookie to answer with if ``server`` is valid for ``client`` at
        ``address`` (``server`` itself, or a fresh one when it is old), else None."""
        if len(server) != SERVER_COOKIE or server[:4] != b"\x01\0\0\0":
            return None
        (stamp,) = struct.unpack_from("!I", server, 4)
        age = (int(now) - stamp + 2**31) % 2**32 - 2**31  # serial arithmetic (RFC 1982)
        if not -COOKIE_SKEW <= age <= COOKIE_LIFETIME:
            return None
        if not hmac.compare_digest(self._hash(client, server[:8], address), server[8:]):
            return None
        return self.make(client, address, now) if age > COOKIE_RENEW else server


@dataclass(frozen=True, slots=True)
class Edns:
    """The OPT record of a plain query (one question, nothing but OPT after it)."""

    question_end: int
    """Offset just past the question."""
    payload: int
    """The client's UDP payload size (the OPT record's CLASS)."""
    options: bytes
    """The OPT RDATA: the options, in wire form."""


def question_end(message: bytes) -> int:
    """Offset just past the single question of a message, or -1 when it has no single
    question with an uncompressed name inside the message."""
    n = len(message)
    if n < 17 or message[4:6] != b"\0\x01":
        return -1
    pos = 12
    while pos < n:
        length = message[pos]
        if length & 0xC0:
            return -1
        pos += 1 + length
        if length == 0:
            return pos + 4 if pos + 4 <= n else -1
    return -1


def parse_edns(query: bytes) -> Edns | None:
    """The OPT record of a plain query (QDCOUNT 1, no answer or authority records, ARCOUNT 1
    and that one record an OPT at the end), else None."""
    if query[6:12] != b"\0\0\0\0\0\x01":
        return None
    end = question_end(query)
    if end < 0 or end + 11 > len(query) or query[end] != 0:
        return None
    _, rtype, payload, _, rdlen = _OPT_HEAD.unpack_from(query, end)
    if rtype != OPT or end + 11 + rdlen != len(query):
        return None
    return Edns(end, payload, query[end + 11 :])


def find_cookie(options: bytes) -> tuple[bytes, bytes] | None:
    """The (client, server) cookies in an OPT RDATA (server empty when only a client cookie was
    sent), or None without a COOKIE option. DecodeError for a COOKIE option of an impossible
    length (RFC 7873 section 5.2.2: 8 bytes, or 16 to 40) or options that overrun the RDATA."""
    pos, n = 0, len(options)
    while pos < n:
        if pos + 4 > n:
            raise DecodeError("EDNS option header cut short")
        code, length = struct.unpack_from("!HH", options, pos)
        pos += 4
        if pos + length > n:
            raise DecodeError(f"EDNS option {code} overruns the OPT record")
        if code == COOKIE:
            if length != 8 and not 16 <= length <= 40:
                raise DecodeError(f"COOKIE option of {length} bytes")
            return options[pos : pos + 8], options[pos + 8 : pos + length]
        pos += length
    return None


def cookie_option(client: bytes, server: bytes) -> bytes:
    """A COOKIE option in wire form."""
    return struct.pack("!HH", COOKIE, len(client) + len(server)) + client + server


def _skip_name(message: bytes, pos: int) -> int:
    n = len(message)
    while pos < n:
        length = message[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            return -1
        pos += 1 + length
        if length == 0:
            return pos
    return -1


def with_option(answer: bytes, option: bytes) -> bytes | None:
    """``answer`` with ``option`` appended to its OPT record, or None when it has none (or
    does not parse: the zone's answers always do)."""
    if len(answer) < 12:
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", answer, 4)
    if not ar:
        return None
    pos = 12
    for _ in range(qd):
        pos = _skip_name(answer, pos)
        if pos < 0:
            return None
        pos += 4
    for i in range(an + ns + ar):
        pos = _skip_name(answer, pos)
        if pos < 0 or pos + 10 > len(answer):
            return None
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", answer, pos)
        if rtype == OPT and i >= an + ns:
            at = pos + 8  # RDLENGTH
            end = pos + 10 + rdlen
            if end > len(answer):
                return None
            return b"".join(
                (answer[:at], struct.pack("!H", rdlen + len(option)), answer[at + 2 : end], option,
                 answer[end:])
            )  # fmt: skip
        pos += 10 + rdlen
    return None


def truncated(message: bytes, end: int, opt: bytes = b"") -> bytes:
    """A minimal truncated answer: the header of ``message`` (a query or its answer) with QR
    and TC set, its question (which ends at ``end``), no records, and ``opt`` (an OPT record in
    wire form, or nothing). Built from a query, it is never longer than the query plus
    ``opt``."""
    flags = struct.unpack_from("!H", message, 2)[0]
    if not flags & 0x8000:  # a query: echo opcode and RD only (RFC 1035 section 4.1.1)
        flags &= 0x7900
    flags |= 0x8200
    header = _HEADER.pack(message[0] << 8 | message[1], flags, 1, 0, 0, 1 if opt else 0)
    return header + message[12:end] + opt


def formerr(query: bytes) -> bytes:
    """A header-only FORMERR (RFC 1035 section 4.1.1; RFC 7873 section 5.2.2)."""
    (flags,) = struct.unpack_from("!H", query, 2)
    return _HEADER.pack(query[0] << 8 | query[1], 0x8000 | (flags & 0x7900) | 1, 0, 0, 0, 0)


def _truncate(query: bytes, answer: bytes, end: int, opt: bytes = b"") -> bytes | None:
    """A minimal TC answer in place of ``answer`` (its rcode and AA kept when its question is
    the query's, as the zone's always is), or None when ``query`` has no plain question. A
    header-only answer (FORMERR) is sent itself: it is shorter, TCP would get no more, and a
    question echoed from a query the zone could not read may not parse (an UPDATE's)."""
    if end < 0:
        return None
    if answer[4:12] == b"\0\0\0\0\0\0\0\0" and len(answer) <= end:
        return answer
    same = answer[4:6] == b"\0\x01" and answer[12:end] == query[12:end]
    return truncated(answer if same else query, end, opt)


class Answerer(Protocol):
    """What answers queries: :meth:`wgmesh.proto.dnssd.Zone.answer`."""

    def __call__(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The wire answer to ``query`` over UDP or TCP, or None to send nothing."""


class UdpGuard:
    """The policy of one DNS server: ``udp(query, address, now)`` and ``tcp(query, address,
    now)`` return what to send (or None), asking ``answer`` (the zone's) for the answers.
    ``address`` is the packed source address (4 or 16 bytes); ``max_udp`` the zone's own EDNS
    size (ZoneConfig.max_udp); ``secret`` the cookie secret (16+ random bytes)."""

    def __init__(
        self,
        config: RrlConfig,
        answer: Answerer,
        *,
        max_udp: int,
        secret: bytes,
        stats: RrlStats | None = None,
    ) -> None:
        self.config = config
        self.stats = RrlStats() if stats is None else stats
        self.limiter = ResponseLimiter(config, self.stats) if config.rate else None
        self._decide = None if self.limiter is None else self.limiter.decide
        self.cookies = ServerCookies(secret) if config.cookies else None
        self._answer = answer
        self._max_udp = max(MIN_UDP, max_udp)
        self._v4 = config.ipv4_prefix
        self._v6 = config.ipv6_prefix
        self._amp = config.amplification
        self._floor = config.amplification_floor
        self._floor_packed = struct.pack("!H", self._floor)
        # queries up to this long are capped at the floor (a cap of 0 is no cap)
        self._floor_n = int(self._floor / self._amp) if self._amp else -1
        self._v4_shift = 32 - config.ipv4_prefix

    def udp(self, query: bytes, address: bytes, now: float) -> bytes | None:
        """What to send back for one UDP datagram (at least a 12-byte header) from
        ``address``: the zone's answer within the size cap, if the source prefix's rate allows
        it (a query the zone does not answer, or one with a valid server cookie, costs no
        token)."""
        if not query[11] and not query[10]:
            # no EDNS: the zone answers in 512 bytes, the cap's floor
            out = self._answer(query, tcp=False)
        elif query[11] == 1 and query.endswith(b"\0\0") and query[-11:-8] == b"\0\0\x29":
            # EDNS without options (a daemon's query): no cookie, so unproven
            out = self._plain_edns(query)
        else:
            out, proven = self._with_options(query, address, now)
            if proven:  # it proved its address, like a TCP query: not charged to the prefix
                if out is not None:
                    self.stats.proven += 1
                return out
        decide = self._decide
        if out is None or decide is None:
            return out
        if len(address) == 4:
            decision = decide(_from_bytes(address, "big") >> self._v4_shift, now)
        else:
            decision = decide(prefix_key(address, self._v4, self._v6), now)
        if decision is _ANSWER:
            return out
        if decision is _DROP:
            return None
        if decision is _ENGAGED:  # no floor: at most amplification x the query, or TC
            if not self._amp or len(out) <= self._amp * len(query):
                return out
            self.stats.engaged_truncated += 1
        # slip, or over the engaged cap: header and question only, never longer than the query
        return _truncate(query, out, question_end(query))

    def _plain_edns(self, query: bytes) -> bytes | None:
        """The zone's answer to a query whose one additional record is an OPT without options,
        within the cap."""
        n = len(query)
        if n <= self._floor_n:  # the usual case: the cap is the floor
            cap, packed = self._floor, self._floor_packed
        else:
            cap = int(self._amp * n) if self._amp else MAX_TCP
            packed = struct.pack("!H", min(cap, MAX_TCP))
        if ((query[-8] << 8) | query[-7]) > cap:
            self.stats.capped += 1
            query = query[:-8] + packed + query[-6:]
        out = self._answer(query, tcp=False)
        return out if out is None or len(out) <= cap else self._capped(query, out, cap, -1)

    def _capped(self, query: bytes, out: bytes | None, cap: int, end: int) -> bytes | None:
        """``out``, or a TC answer in its place when it is over ``cap``."""
        if out is None or len(out) <= cap:
            return out
        self.stats.cap_truncated += 1
        return _truncate(query, out, end if end >= 0 else question_end(query))

    def _with_options(self, query: bytes, address: bytes, now: float) -> tuple[bytes | None, bool]:
        """The zone's answer to any other query with additional records (EDNS options, a
        cookie, or not a plain query), within the cap unless it echoes a valid server cookie;
        and whether it did (the source proved its address)."""
        n = len(query)
        cap = self._floor if n <= self._floor_n else int(self._amp * n) if self._amp else MAX_TCP
        edns = parse_edns(query)
        if edns is None:  # not a plain query: the zone decides, the cap holds
            return self._capped(query, self._answer(query, tcp=False), cap, -1), False
        option = b""
        proven = False
        if self.cookies is not None:
            try:
                found = self._cookie(edns, address, now)
            except DecodeError:
                return formerr(query), False
            if found is not None:
                option, proven = found
        limit = max(MIN_UDP, min(edns.payload, self._max_udp))  # what the client can take
        size = limit if proven else min(limit, cap)
        if option:
            size = max(MIN_UDP, size - len(option))  # room for our cookie
        if size != edns.payload:
            if size < edns.payload and not proven:
                self.stats.capped += 1
            at = edns.question_end + 3
            query = b"%s%s%s" % (query[:at], struct.pack("!H", size), query[at + 2 :])
        out = self._answer(query, tcp=False)
        if out is None:
            return None, proven
        if not proven:
            out = self._capped(query, out, cap, edns.question_end)
            if out is None:
                return None, False
        if not option:
            return out, proven
        full = with_option(out, option)
        if full is None:
            return out, proven
        if len(full) > limit:  # does not fit the client beside the cookie: TC, with the cookie
            opt = _OPT_HEAD.pack(0, OPT, self._max_udp, 0, len(option)) + option
            return _truncate(query, out, edns.question_end, opt), proven
        return full, proven

    def _cookie(self, edns: Edns, address: bytes, now: float) -> tuple[bytes, bool] | None:
        """(our COOKIE option, whether the source proved itself), or None without a client
        cookie; DecodeError (counted) for a malformed one."""
        assert self.cookies is not None
        try:
            found = find_cookie(edns.options)
        except DecodeError:
            self.stats.cookie_malformed += 1
            raise
        if found is None:
            return None
        client, server = found
        if server:
            valid = self.cookies.check(client, server, address, now)
            if valid is not None:
                self.stats.cookie_good += 1
                return cookie_option(client, valid), True
            self.stats.cookie_bad += 1
        else:
            self.stats.cookie_new += 1
        return cookie_option(client, self.cookies.make(client, address, now)), False

    def tcp(self, query: bytes, address: bytes, now: float) -> bytes | None:
        """What to send back for one TCP query: the zone's answer, with a server cookie when the
        query had a client cookie (TCP is not rate-limited: it proved its address)."""
        if self.cookies is None or query[11] != 1 or query[10]:
            return self._answer(query, tcp=True)
        edns = parse_edns(query)
        if edns is None or not edns.options:
            return self._answer(query, tcp=True)
        try:
            found = self._cookie(edns, address, now)
        except DecodeError:
            return formerr(query)
        out = self._answer(query, tcp=True)
        if out is None or found is None:
            return out
        full = with_option(out, found[0])
        return out if full is None or len(full) > MAX_TCP else full
