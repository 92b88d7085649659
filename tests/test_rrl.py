"""The UDP policy of the DNS server, sans-IO (wgmesh.proto.rrl) on a float clock: rate limit per
source prefix, slip, the table cap, the size cap toward unproven sources, DNS cookies."""

from __future__ import annotations

import ipaddress
import os
import random

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dns_fuzz import QUERIES
from tests.test_dnssd import K1, SERVICE, config, name, peer, zone
from wgmesh.errors import ConfigError, DecodeError
from wgmesh.proto.dnssd import Candidate, Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind
from wgmesh.proto.rrl import (
    COOKIE_OPTION,
    Decision,
    ResponseLimiter,
    RrlConfig,
    ServerCookies,
    UdpGuard,
    cookie_option,
    find_cookie,
    prefix_key,
    question_end,
    truncated,
    with_option,
)

T0 = 1_800_000_000.0  # a Unix time: the limiter must keep exact counts at this magnitude
SECRET = bytes(range(32))
ME = ipaddress.ip_address("192.0.2.10").packed
OTHER = ipaddress.ip_address("198.51.100.10").packed


DEFAULT = RrlConfig()


def key(text: str, config: RrlConfig = DEFAULT) -> int:
    return prefix_key(ipaddress.ip_address(text).packed, config.ipv4_prefix, config.ipv6_prefix)


def run(limiter: ResponseLimiter, k: int, n: int, now: float) -> list[Decision]:
    return [limiter.decide(k, now) for _ in range(n)]


# -- the limiter ----------------------------------------------------------------------------


def test_limit_engages_after_the_burst() -> None:
    lim = ResponseLimiter(RrlConfig(rate=200, burst=400, slip=0))
    out = run(lim, key("192.0.2.1"), 1000, T0)
    assert out.count(Decision.ANSWER) == 400 and out[:400] == [Decision.ANSWER] * 400
    assert set(out[400:]) == {Decision.DROP}
    assert (lim.stats.answered, lim.stats.dropped, lim.stats.slipped) == (400, 600, 0)


def test_refill_at_the_rate_and_never_past_the_burst() -> None:
    lim = ResponseLimiter(RrlConfig(rate=200, burst=400, slip=0))
    k = key("192.0.2.1")
    run(lim, k, 400, T0)
    assert run(lim, k, 1, T0 + 0.001) == [Decision.DROP]  # 0.2 of a token
    # one second: 200 more (engaged: the bucket ran dry and is not full again)
    assert run(lim, k, 300, T0 + 1.0).count(Decision.ENGAGED) == 200
    assert run(lim, k, 10, T0 + 1.0) == [Decision.DROP] * 10  # dropped answers cost nothing
    assert run(lim, k, 1000, T0 + 100.0).count(Decision.ANSWER) == 400  # full, not more
    for i in range(1, 201):  # a steady 200/s is always answered
        assert lim.decide(k, T0 + 200.0 + i / 200) is Decision.ANSWER


def test_the_limit_engages_when_the_bucket_runs_dry_until_it_is_full_again() -> None:
    lim = ResponseLimiter(RrlConfig(rate=10, burst=20, slip=2))
    k = key("192.0.2.1")
    assert run(lim, k, 20, T0) == [Decision.ANSWER] * 20  # the whole burst: not engaged
    assert run(lim, k, 1, T0 + 1.0) == [Decision.ANSWER]  # a token back: still not engaged
    assert run(lim, k, 10, T0 + 1.0) == [Decision.ANSWER] * 9 + [Decision.DROP]  # ran dry
    assert run(lim, k, 2, T0 + 1.0) == [Decision.SLIP, Decision.DROP]
    assert run(lim, k, 1, T0 + 1.1) == [Decision.ENGAGED]  # within the rate, engaged
    assert run(lim, k, 1, T0 + 1.1) == [Decision.SLIP]
    # engaged as long as the bucket is not full: 1.1 s + 20 tokens at 10/s = 3.1 s
    assert run(lim, k, 1, T0 + 3.09) == [Decision.ENGAGED]
    assert run(lim, k, 1, T0 + 3.15) == [Decision.ENGAGED]  # that answer took a token again
    assert run(lim, k, 1, T0 + 5.3) == [Decision.ANSWER]  # full again: the limit is off
    assert run(lim, k, 19, T0 + 5.3) == [Decision.ANSWER] * 19
    assert run(lim, k, 2, T0 + 5.3) == [Decision.DROP, Decision.SLIP]  # slips restart from 0
    assert lim.stats.answered == 20 + 1 + 9 + 1 + 2 + 20 and lim.stats.slipped == 3
    # a clock that went back ends it too
    assert run(lim, k, 1, T0 - 3600) == [Decision.ANSWER]
    # other prefixes are not engaged by it
    assert run(lim, key("192.0.3.1"), 1, T0 + 5.3) == [Decision.ANSWER]


@pytest.mark.parametrize("slip", [0, 1, 2, 3, 10])
def test_slip_ratio_is_exact(slip: int) -> None:
    lim = ResponseLimiter(RrlConfig(rate=10, burst=5, slip=slip))
    out = run(lim, key("192.0.2.1"), 5 + 3000, T0)
    over = out[5:]
    slipped = over.count(Decision.SLIP)
    assert slipped == (3000 // slip if slip else 0)
    if slip:
        assert [i for i, d in enumerate(over) if d is Decision.SLIP][:3] == [
            slip - 1, 2 * slip - 1, 3 * slip - 1
        ]  # fmt: skip
    assert lim.stats.slipped == slipped and lim.stats.dropped == 3000 - slipped


def test_prefixes_aggregate() -> None:
    assert key("10.1.2.3") == key("10.1.2.250") != key("10.1.3.3")
    assert key("2001:db8:0:ff::1") == key("2001:db8::9") != key("2001:db8:0:100::1")
    assert key("::ffff:10.1.2.3") == key("10.1.2.99")  # IPv4-mapped counts as IPv4
    assert key("0.0.0.1") != key("::1") and key("0.0.0.0") != key("::")
    lim = ResponseLimiter(RrlConfig(rate=1, burst=10, slip=0))
    assert run(lim, key("10.1.2.3"), 6, T0) == [Decision.ANSWER] * 6
    assert run(lim, key("10.1.2.4"), 6, T0).count(Decision.ANSWER) == 4  # the same /24
    assert run(lim, key("10.1.3.4"), 6, T0) == [Decision.ANSWER] * 6  # another /24
    host = RrlConfig(ipv4_prefix=32, ipv6_prefix=128)
    assert key("10.1.2.3", host) != key("10.1.2.4", host)
    assert key("2001:db8::1", host) != key("2001:db8::2", host)
    assert prefix_key(ipaddress.ip_address("10.1.2.3").packed, 0, 0) == 0  # one bucket for all
    assert DEFAULT.ipv4_prefix == 24 and DEFAULT.ipv6_prefix == 56


def test_table_cap_holds_under_100k_random_sources() -> None:
    cfg = RrlConfig(rate=1, burst=2, slip=0, max_sources=1000)
    lim = ResponseLimiter(cfg)
    rng = random.Random(7)
    victim = key("203.0.113.1")
    run(lim, victim, 2, T0)
    for i in range(100_000):
        address = rng.randbytes(16) if i % 2 else rng.randbytes(4)
        lim.decide(prefix_key(address, cfg.ipv4_prefix, cfg.ipv6_prefix), T0 + i * 1e-6)
        if i % 50 == 0:  # the victim is asked all along: it stays in the table, limited
            assert lim.decide(victim, T0 + i * 1e-6) is Decision.DROP
        assert len(lim) <= 1000
    assert len(lim) == 1000 and lim.stats.evicted > 98_000


def test_a_clock_that_goes_back_does_not_lock_a_prefix_out() -> None:
    lim = ResponseLimiter(RrlConfig(rate=1, burst=5, slip=0))
    k = key("192.0.2.1")
    run(lim, k, 10, T0)
    assert lim.decide(k, T0 - 3600) is Decision.ANSWER


@pytest.mark.parametrize(
    "bad",
    [
        {"rate": -1},
        {"burst": 0.5},
        {"slip": -1},
        {"ipv4_prefix": 33},
        {"ipv6_prefix": -1},
        {"max_sources": 0},
        {"amplification": -1},
        {"amplification_floor": 100},
    ],
)
def test_bad_config_is_a_config_error(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RrlConfig(**bad)  # type: ignore[arg-type]


# -- the guard: rate, size cap, cookies -------------------------------------------------------


def guard(z: Zone | None = None, **kw: object) -> UdpGuard:
    z = zone() if z is None else z
    return UdpGuard(
        RrlConfig(**kw),  # type: ignore[arg-type]
        z.answer,
        max_udp=z.config.max_udp,
        secret=SECRET,
    )


def big_zone(n: int = 60) -> Zone:
    z = Zone(config())
    for i in range(n):
        z.upsert(peer(os.urandom(32), 1000 + i))
    return z


def alternates(key: bytes) -> str:
    """The name of a peer's SRVs other than its public one (the big answer of a peer)."""
    return "_alt." + name(key)


def eight_addresses() -> Zone:
    z = zone()
    extra = [
        Candidate(Endpoint.parse(f"10.0.{i}.7:51820"), CandidateKind.LAN, 10 + i) for i in range(6)
    ] + [Candidate(Endpoint.parse("[2001:db8::7]:51821"), CandidateKind.IPV6, 5)]
    z.upsert(peer(K1, 51820, False, *extra))
    return z


def query(
    qname: str, rdtype: str, *, payload: int = 4096, cookie: bytes | None = None
) -> dns.message.Message:
    options: list[dns.edns.Option] = []
    if cookie is not None:
        options.append(dns.edns.CookieOption(cookie[:8], cookie[8:]))
    return dns.message.make_query(qname, rdtype, use_edns=0, payload=payload, options=options)


def server_cookie(wire: bytes) -> bytes:
    [opt] = [o for o in dns.message.from_wire(wire).options if o.otype == dns.edns.COOKIE]
    assert isinstance(opt, dns.edns.CookieOption)
    return opt.client + opt.server


def test_unproven_answers_are_capped_at_512_or_twice_the_query() -> None:
    z = eight_addresses()
    g = guard(z)
    # a browse of two peers: its PTRs, with as much additional data as fits (RFC 2181 s. 9)
    wire = query(SERVICE, "PTR").to_wire()
    uncapped = z.answer(wire, tcp=False)
    assert uncapped is not None and len(uncapped) > 1000
    out = g.udp(wire, ME, T0)
    assert out is not None and len(out) <= max(512, 2 * len(wire))
    r = dns.message.from_wire(out)
    assert len(r.answer[0]) == 2 and not r.flags & dns.flags.TC
    # a peer with 8 addresses: its 7 alternates' SRVs alone are over 512 bytes, so TC and
    # no records ...
    wire = query(alternates(K1), "SRV").to_wire()
    out = g.udp(wire, ME, T0)
    assert out is not None and len(out) <= 512
    r = dns.message.from_wire(out)
    assert r.flags & dns.flags.TC and not r.answer
    assert g.stats.capped == 2
    # ... and the client asks over TCP, where it gets everything
    tcp = g.tcp(wire, ME, T0)
    assert tcp is not None and len(dns.message.from_wire(tcp).answer[0]) == 7
    # a browse too long for 512 bytes is sent with TC and no records too
    out = guard(big_zone()).udp(query(SERVICE, "PTR").to_wire(), ME, T0)
    assert out is not None and len(out) <= 512
    r = dns.message.from_wire(out)
    assert r.flags & dns.flags.TC and not r.answer


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(QUERIES), st.integers(0, 200), st.integers(0, 255), st.booleans())
def test_no_unproven_answer_is_over_the_cap(q: bytes, pos: int, xor: int, tcp: bool) -> None:
    g = guard(eight_addresses())
    data = bytearray(q)
    data[pos % len(data)] ^= xor
    out = g.tcp(bytes(data), ME, T0) if tcp else g.udp(bytes(data), ME, T0)
    if out is None:
        return
    r = dns.message.from_wire(out)
    assert out[:2] == data[:2] and r.flags & 0x8000
    if not tcp:  # the cap, plus the 28 bytes of a server cookie when the query sent 12 or more
        assert len(out) <= max(512, 2 * len(data)) + COOKIE_OPTION


def test_a_valid_cookie_lifts_the_cap() -> None:
    g = guard(eight_addresses())
    first = g.udp(query(alternates(K1), "SRV", cookie=b"c" * 8).to_wire(), ME, T0)
    assert first is not None and len(first) <= 512 + COOKIE_OPTION
    assert dns.message.from_wire(first).flags & dns.flags.TC  # 7 SRV records: over the cap
    cookie = server_cookie(first)
    assert cookie[:8] == b"c" * 8 and len(cookie) == 24 and g.stats.cookie_new == 1
    again = g.udp(query(alternates(K1), "SRV", cookie=cookie).to_wire(), ME, T0 + 10)
    assert again is not None and 1000 < len(again) <= 1232  # proven: up to its buffer and ours
    r = dns.message.from_wire(again)
    assert len(r.answer[0]) == 7 and r.additional and not r.flags & dns.flags.TC
    assert server_cookie(again) == cookie and g.stats.cookie_good == 1
    # the answer still fits the client's own buffer, the cookie included
    small = g.udp(query(alternates(K1), "SRV", payload=1100, cookie=cookie).to_wire(), ME, T0 + 10)
    assert small is not None and 1000 < len(small) <= 1100


@pytest.mark.parametrize(
    "why", ["another address", "expired", "from the future", "forged", "another client"]
)
def test_an_invalid_server_cookie_proves_nothing(why: str) -> None:
    g = guard(eight_addresses())
    first = g.udp(query(name(K1), "SRV", cookie=b"c" * 8).to_wire(), ME, T0)
    assert first is not None
    cookie = server_cookie(first)
    address, now = ME, T0 + 10
    if why == "another address":
        address = OTHER
    elif why == "expired":
        now = T0 + 3601
    elif why == "from the future":
        now = T0 - 301
    elif why == "forged":
        cookie = cookie[:-1] + bytes([cookie[-1] ^ 1])
    else:
        cookie = b"d" + cookie[1:]
    out = g.udp(query(name(K1), "SRV", cookie=cookie).to_wire(), address, now)
    assert out is not None and len(out) <= 512 + COOKIE_OPTION
    assert g.stats.cookie_bad == 1 and g.stats.cookie_good == 0
    fresh = server_cookie(out)
    assert fresh[:8] == cookie[:8] and fresh != cookie  # a new server cookie to prove with


def test_old_cookies_are_renewed_and_still_accepted() -> None:
    cookies = ServerCookies(SECRET)
    made = cookies.make(b"c" * 8, ME, T0)
    assert cookies.check(b"c" * 8, made, ME, T0 + 1799) == made
    renewed = cookies.check(b"c" * 8, made, ME, T0 + 1801)
    assert renewed is not None and renewed != made
    assert cookies.check(b"c" * 8, renewed, ME, T0 + 1801) == renewed
    assert cookies.check(b"c" * 8, made, ME, T0 + 3601) is None
    assert ServerCookies(bytes(32)).check(b"c" * 8, made, ME, T0) is None  # another secret
    with pytest.raises(ConfigError):
        ServerCookies(b"short")


@pytest.mark.parametrize("length", [0, 5, 9, 15, 41])
def test_a_malformed_cookie_gets_formerr(length: int) -> None:
    g = guard()
    bad = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"x" * length)
    q = dns.message.make_query(name(K1), "SRV", use_edns=0, options=[bad])
    out = g.udp(q.to_wire(), ME, T0)
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR
    assert g.stats.cookie_malformed == 1
    out = g.tcp(q.to_wire(), ME, T0)
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR
    with pytest.raises(DecodeError):
        find_cookie(b"\x00\x0a\x00\x09" + b"x" * 9)
    with pytest.raises(DecodeError):
        find_cookie(b"\x00\x0a\x00\x08xx")  # overruns the RDATA


FORGED = ipaddress.ip_address("192.0.2.77").packed  # ME's /24: a flood forged from it


def engage(g: UdpGuard, now: float, extra: int = 0) -> None:
    """Run the bucket of ME's /24 dry at ``now`` with plain queries from FORGED (the limit
    engages at the first one over the rate), then ``extra`` more."""
    q = dns.message.make_query(name(K1), "SRV").to_wire()
    over = g.stats.dropped + g.stats.slipped
    while g.stats.dropped + g.stats.slipped == over:
        g.udp(q, FORGED, now)
    for _ in range(extra):
        g.udp(q, FORGED, now)


def is_minimal_tc(out: bytes, q: bytes) -> bool:
    """A TC answer with the question only, or (for a query the zone could not read) its
    header-only FORMERR; either no longer than the query."""
    r = dns.message.from_wire(out)
    header_only = len(out) == 12 and r.rcode() == dns.rcode.FORMERR
    return (
        (bool(r.flags & dns.flags.TC) or header_only) and len(out) <= len(q) and out[:2] == q[:2]
        and not r.answer and not r.authority and not r.additional
    )  # fmt: skip


def test_once_the_limit_engages_unproven_answers_are_at_most_twice_the_query() -> None:
    g = guard(rate=10, burst=5, slip=2)
    browse = dns.message.make_query(SERVICE, "PTR").to_wire()  # no EDNS: 43 bytes for 394
    out = g.udp(browse, ME, T0)  # within the rate: the floor (512) holds, the answer is whole
    assert out is not None and len(out) > 8 * len(browse)
    assert len(dns.message.from_wire(out).answer[0]) == 2
    engage(g, T0)
    out = g.udp(browse, ME, T0 + 0.1)  # a token back, but the limit is engaged: TC
    assert out is not None and is_minimal_tc(out, browse) and g.stats.engaged_truncated == 1
    small = dns.message.make_query("lan1." + name(K1), "A").to_wire()  # 105 bytes for 121
    out = g.udp(small, ME, T0 + 0.2)
    assert out is not None and dns.message.from_wire(out).answer and len(out) <= 2 * len(small)
    for q in (  # with EDNS too, with a client cookie or none: no floor
        query(name(K1), "SRV").to_wire(),
        query(name(K1), "SRV", cookie=b"c" * 8).to_wire(),
    ):
        out = g.udp(q, ME, T0 + 0.4)
        assert out is not None and is_minimal_tc(out, q)
    assert g.stats.engaged_truncated == 3 and g.stats.cap_truncated == 0
    tcp = g.tcp(browse, ME, T0 + 0.4)  # TCP is whole, as ever
    assert tcp is not None and len(dns.message.from_wire(tcp).answer[0]) == 2
    out = g.udp(browse, OTHER, T0 + 0.4)  # another /24 is not engaged
    assert out is not None and dns.message.from_wire(out).answer
    # full again (5 tokens at 10/s after the last answer at 0.4 s): the floor is back
    assert g.udp(browse, ME, T0 + 0.89) is not None and g.stats.engaged_truncated == 4
    out = g.udp(browse, ME, T0 + 1.5)
    assert out is not None and len(dns.message.from_wire(out).answer[0]) == 2
    assert g.stats.engaged_truncated == 4
    # amplification 0 is no cap, engaged or not
    g = guard(rate=10, burst=5, amplification=0)
    engage(g, T0)
    out = g.udp(browse, ME, T0 + 0.1)
    assert out is not None and len(dns.message.from_wire(out).answer[0]) == 2


ENGAGED_QUERIES = [
    *QUERIES,
    dns.message.make_query(SERVICE, "PTR").to_wire(),
    dns.message.make_query(name(K1), "ANY").to_wire(),
    query(name(K1), "SRV", cookie=b"c" * 8).to_wire(),
    query(name(K1), "SRV", cookie=b"c" * 8 + bytes(16)).to_wire(),  # a bad server cookie
    query(SERVICE, "PTR", payload=512).to_wire(),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ENGAGED_QUERIES),
    st.integers(0, 200),
    st.integers(0, 255),
    st.integers(0, 30),
    st.lists(st.floats(0, 1.99), min_size=1, max_size=6),
    st.booleans(),
)
def test_engaged_unproven_answers_are_twice_the_query_or_a_tc_no_longer(
    q: bytes, pos: int, xor: int, extra: int, times: list[float], cookies: bool
) -> None:
    """Any query (mutated), in any engaged state (the bucket ran dry at T0, over the rate by
    ``extra`` more, answers taken at ``times`` since: 20 tokens at 10/s, so not full again
    before T0 + 2): at most 2x the query, and a TC answer in place of a longer one is minimal
    and no longer than the query."""
    g = guard(eight_addresses(), rate=10, burst=20, slip=2, cookies=cookies)
    engage(g, T0, extra)
    data = bytearray(q)
    data[pos % len(data)] ^= xor
    wire = bytes(data)
    for t in sorted(times):
        truncated_before = g.stats.engaged_truncated + g.stats.slipped
        out = g.udp(wire, ME, T0 + t)
        if out is None:
            continue
        assert len(out) <= 2 * len(wire)
        if g.stats.engaged_truncated + g.stats.slipped > truncated_before:
            assert is_minimal_tc(out, wire)
    assert g.stats.proven == 0


def test_a_valid_server_cookie_is_not_charged_to_the_prefix() -> None:
    """A flood forged from the resolver's own /24 does not lock it out: echoing its server
    cookie, it is answered in full over UDP however dry the prefix's bucket; an invalid cookie
    proves nothing and is limited like no cookie."""
    g = guard(eight_addresses(), rate=1, burst=2, slip=2)
    first = g.udp(query(alternates(K1), "SRV", cookie=b"c" * 8).to_wire(), ME, T0)
    assert first is not None and g.stats.answered == 1  # no server cookie yet: charged
    cookie = server_cookie(first)
    engage(g, T0, extra=50)
    decided = g.stats.answered + g.stats.dropped + g.stats.slipped
    proven = query(alternates(K1), "SRV", cookie=cookie).to_wire()
    for i in range(100):
        out = g.udp(proven, ME, T0 + i / 1000)
        assert out is not None and 1000 < len(out) <= 1232  # whole, as its own buffer allows
        r = dns.message.from_wire(out)
        assert len(r.answer[0]) == 7 and not r.flags & dns.flags.TC
    assert g.stats.proven == 100 and g.stats.cookie_good == 100
    assert g.stats.answered + g.stats.dropped + g.stats.slipped == decided  # none charged
    assert g.stats.engaged_truncated == 0
    # the same cookie from another address of the /24, or altered: charged, and limited
    forged = query(alternates(K1), "SRV", cookie=cookie[:-1] + bytes([cookie[-1] ^ 1])).to_wire()
    for q, address in ((proven, FORGED), (forged, ME)):
        outs = [g.udp(q, address, T0 + 0.2) for _ in range(4)]  # dropped or slipped
        assert [o is None for o in outs].count(True) == 2
        assert all(is_minimal_tc(o, q) for o in outs if o is not None)
    assert g.stats.cookie_bad == 8 and g.stats.proven == 100
    assert g.stats.answered + g.stats.dropped + g.stats.slipped == decided + 8
    # a token back (1/s), the limit still engaged: a browse without EDNS (9x) gets a minimal TC
    browse = dns.message.make_query(SERVICE, "PTR").to_wire()
    out = g.udp(browse, ME, T0 + 1.0)
    assert out is not None and is_minimal_tc(out, browse) and g.stats.engaged_truncated == 1


def test_cookies_off_ignores_them() -> None:
    g = guard(eight_addresses(), cookies=False)
    out = g.udp(query(name(K1), "SRV", cookie=b"c" * 8).to_wire(), ME, T0)
    assert out is not None and len(out) <= 512
    assert not [o for o in dns.message.from_wire(out).options if o.otype == dns.edns.COOKIE]


def test_over_the_rate_drops_and_slips_a_minimal_tc_answer() -> None:
    g = guard(rate=1, burst=3, slip=2)
    q = query(name(K1), "SRV", cookie=b"c" * 8).to_wire()
    out = [g.udp(q, ME, T0) for _ in range(3 + 10)]
    assert all(o is not None and dns.message.from_wire(o).answer for o in out[:3])
    assert out[3::2] == [None] * 5
    for slip in out[4::2]:
        assert slip is not None and len(slip) <= len(q)
        r = dns.message.from_wire(slip)
        assert r.flags & dns.flags.TC and r.flags & dns.flags.QR and r.id == int.from_bytes(q[:2])
        assert not r.answer and not r.authority and not r.additional
        assert str(r.question[0].name) == name(K1)
    assert (g.stats.answered, g.stats.dropped, g.stats.slipped) == (3, 5, 5)
    assert g.udp(q, OTHER, T0) is not None  # another prefix: its own bucket
    for _ in range(20):  # TCP is not limited (return routability): every query is answered
        tcp = g.tcp(q, ME, T0)
        assert tcp is not None and dns.message.from_wire(tcp).answer
    assert server_cookie(tcp)[:8] == b"c" * 8  # a TCP answer carries a server cookie too
    assert guard(rate=0).limiter is None  # rate 0: no limit
    # the slip answer is built from the query: garbage gets nothing
    assert g.udp(b"\x80" + bytes(40), ME, T0) is None


def test_a_slipped_formerr_is_the_formerr() -> None:
    """An UPDATE the zone cannot read gets a header-only FORMERR; over the rate it is sent as
    is, not as a TC echoing a zone section dnspython (and others) refuse to parse (found by
    bench/fuzz.py)."""
    update = bytes.fromhex("005f2800000100000600010000000000046d65736804746573740000060001")
    g = guard(rate=1, burst=1, slip=1)
    outs = [g.udp(update, ME, T0) for _ in range(3)]  # answered, slipped, slipped
    assert outs[0] == outs[1] == outs[2] and outs[0] is not None and len(outs[0]) == 12
    assert dns.message.from_wire(outs[0]).rcode() == dns.rcode.FORMERR
    assert g.stats.slipped == 2


def test_wire_helpers() -> None:
    q = query(name(K1), "SRV").to_wire()
    end = question_end(q)
    assert end == len(q) - 11
    tc = truncated(q, end)
    assert len(tc) == end and dns.message.from_wire(tc).flags & dns.flags.TC
    assert question_end(b"\0" * 11) == -1 and question_end(q[:20]) == -1
    answer = zone().answer(q, tcp=False)
    assert answer is not None
    patched = with_option(answer, cookie_option(b"c" * 8, b"s" * 16))
    assert patched is not None and len(patched) == len(answer) + 4 + 24
    assert server_cookie(patched) == b"c" * 8 + b"s" * 16
    assert dns.message.from_wire(patched).answer == dns.message.from_wire(answer).answer
    no_opt = zone().answer(dns.message.make_query(name(K1), "SRV").to_wire(), tcp=False)
    assert no_opt is not None and with_option(no_opt, b"xxxx") is None
    assert with_option(answer[:30], b"xxxx") is None


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=12, max_size=600), st.booleans())
def test_random_bytes_never_raise(data: bytes, tcp: bool) -> None:
    g = guard(rate=1, burst=1, slip=1)
    for _ in range(3):  # answered, then slipped: both paths
        out = g.tcp(data, ME, T0) if tcp else g.udp(data, ME, T0)
        if out is not None:
            assert dns.message.from_wire(out).flags & 0x8000
