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
    assert run(lim, k, 300, T0 + 1.0).count(Decision.ANSWER) == 200  # one second: 200 more
    assert run(lim, k, 10, T0 + 1.0) == [Decision.DROP] * 10  # dropped answers cost nothing
    assert run(lim, k, 1000, T0 + 100.0).count(Decision.ANSWER) == 400  # full, not more
    for i in range(1, 201):  # a steady 200/s is always answered
        assert lim.decide(k, T0 + 200.0 + i / 200) is Decision.ANSWER


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
    # a peer with 8 addresses: its SRV alone is over 512 bytes, so TC and no records ...
    wire = query(name(K1), "SRV").to_wire()
    out = g.udp(wire, ME, T0)
    assert out is not None and len(out) <= 512
    r = dns.message.from_wire(out)
    assert r.flags & dns.flags.TC and not r.answer
    assert g.stats.capped == 2
    # ... and the client asks over TCP, where it gets everything
    tcp = g.tcp(wire, ME, T0)
    assert tcp is not None and len(dns.message.from_wire(tcp).answer[0]) == 8
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
    first = g.udp(query(name(K1), "SRV", cookie=b"c" * 8).to_wire(), ME, T0)
    assert first is not None and len(first) <= 512 + COOKIE_OPTION
    assert dns.message.from_wire(first).flags & dns.flags.TC  # 8 SRV records: over the cap
    cookie = server_cookie(first)
    assert cookie[:8] == b"c" * 8 and len(cookie) == 24 and g.stats.cookie_new == 1
    again = g.udp(query(name(K1), "SRV", cookie=cookie).to_wire(), ME, T0 + 10)
    assert again is not None and 1000 < len(again) <= 1232  # proven: up to its buffer and ours
    r = dns.message.from_wire(again)
    assert len(r.answer[0]) == 8 and r.additional and not r.flags & dns.flags.TC
    assert server_cookie(again) == cookie and g.stats.cookie_good == 1
    # the answer still fits the client's own buffer, the cookie included
    small = g.udp(query(name(K1), "SRV", payload=1100, cookie=cookie).to_wire(), ME, T0 + 10)
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
