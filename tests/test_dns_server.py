"""The DNS adapters on loopback, asked by the real ``dig``: wgsd's layout as a client sees it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
import pytest

from tests.test_dnssd import K1, K2, ORIGIN, SERVICE, config, name, peer, zone
from wgmesh.proto.dnssd import Zone
from wgmesh.proto.keys import encode_key
from wgmesh.proto.rrl import RrlConfig
from wgmesh.registry import udpbatch
from wgmesh.registry.dns import DnsLimits, DnsServer, start_dns

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (dnsutils)")


@dataclass
class Dig:
    """What dig printed, split up."""

    status: str
    flags: set[str]
    sections: dict[str, list[list[str]]] = field(default_factory=dict)
    text: str = ""

    def records(self, section: str = "ANSWER") -> list[list[str]]:
        return self.sections.get(section, [])


async def run_dig(server: DnsServer, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(server.udp_port), "+time=2", "+tries=1", "+norec", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, out.decode() + err.decode()
    return out.decode()


async def dig(server: DnsServer, *args: str) -> Dig:
    text = await run_dig(server, *args)
    header = re.search(r"status: (\w+),.*\n;; flags: ([a-z ]*);", text)
    assert header is not None, text
    result = Dig(header.group(1), set(header.group(2).split()), text=text)
    for m in re.finditer(r";; (\w+) SECTION:\n(.*?)(?:\n\n|\Z)", text, re.S):
        lines = [ln.split(None, 4) for ln in m.group(2).splitlines() if not ln.startswith(";")]
        result.sections[m.group(1)] = [ln for ln in lines if ln]
    return result


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    s = await start_dns(zone(), "127.0.0.1", 0)
    yield s
    s.close()
    await s.wait_closed()


async def test_apex_soa_is_authoritative(server: DnsServer) -> None:
    r = await dig(server, ORIGIN, "SOA")
    assert r.status == "NOERROR" and {"qr", "aa"} <= r.flags and "ra" not in r.flags
    [[owner, ttl, cls, rtype, data]] = r.records()
    assert (owner, ttl, cls, rtype) == (ORIGIN, "5", "IN", "SOA")
    assert data.split() == ["ns1.mesh.test.", "hostmaster.mesh.test.", str(server.zone.serial),
                            "60", "30", "1209600", "5"]  # fmt: skip
    assert server.udp_port == server.tcp_port


async def test_browse_srv_txt_and_a_have_wgsds_layout(server: DnsServer) -> None:
    browse = await dig(server, SERVICE, "PTR")
    assert "aa" in browse.flags
    assert sorted(rr[4] for rr in browse.records()) == sorted([name(K1), name(K2)])

    srv = await dig(server, name(K2), "SRV")  # K2: the public mapping only, exactly wgsd's form
    assert srv.records() == [[name(K2), "5", "IN", "SRV", f"0 0 51820 {name(K2)}"]]
    additional = {(rr[0], rr[3]): rr[4] for rr in srv.records("ADDITIONAL")}
    assert additional[(name(K2), "A")] == "198.51.100.7"
    assert f'"pub={encode_key(K2)}"' in additional[(name(K2), "TXT")]

    srv = await dig(server, name(K1), "SRV")  # K1: its LAN candidate at the alternates' name
    assert [rr[4] for rr in srv.records()] == [f"0 0 51820 {name(K1)}"]
    additional = {(rr[0], rr[3]): rr[4] for rr in srv.records("ADDITIONAL")}
    assert additional[(f"_alt.{name(K1)}", "SRV")] == f"10 0 51820 lan1.{name(K1)}"
    assert additional[(f"lan1.{name(K1)}", "A")] == "10.0.0.7"
    alt = await dig(server, f"_alt.{name(K1)}", "SRV")
    assert [rr[4] for rr in alt.records()] == [f"10 0 51820 lan1.{name(K1)}"]

    txt = await dig(server, name(K1), "TXT")
    assert txt.records()[0][4] == (
        f'"txtvers=1" "pub={encode_key(K1)}" "allowed=100.64.0.1/32" "name=alice" '
        '"nat=cone" "since=1700000000" "alt=1"'
    )
    assert (await run_dig(server, "+short", name(K1), "A")).split() == ["198.51.100.7"]
    plain = await dig(server, f"lan1.{name(K1)}", "A")
    assert plain.records() == [[f"lan1.{name(K1)}", "5", "IN", "A", "10.0.0.7"]]


async def test_negative_and_refused(server: DnsServer) -> None:
    nx = await dig(server, f"nope.{SERVICE}", "SRV")
    assert nx.status == "NXDOMAIN" and "aa" in nx.flags
    assert nx.records("AUTHORITY")[0][3] == "SOA"
    nodata = await dig(server, name(K1), "AAAA")
    assert nodata.status == "NOERROR" and not nodata.records() and nodata.records("AUTHORITY")
    out = await dig(server, "+rec", "example.org.", "A")
    assert out.status == "REFUSED" and "aa" not in out.flags and "ra" not in out.flags


async def test_truncated_udp_answer_is_completed_over_tcp() -> None:
    z = Zone(config())
    for i in range(60):
        z.upsert(peer(os.urandom(32), 1000 + i))
    s = await start_dns(z, "127.0.0.1", 0)
    try:
        cut = await dig(s, "+ignore", "+bufsize=512", SERVICE, "PTR")
        assert "tc" in cut.flags and not cut.records()
        full = await dig(s, "+bufsize=512", SERVICE, "PTR")  # dig retries over TCP by itself
        assert "Truncated, retrying in TCP mode" in full.text
        assert "tc" not in full.flags and len(full.records()) == 60
        assert z.stats.truncated >= 2
    finally:
        s.close()
        await s.wait_closed()


async def test_several_queries_on_one_tcp_connection(server: DnsServer) -> None:
    text = await run_dig(server, "+tcp", "+keepopen", name(K1), "SRV", name(K2), "TXT")
    assert text.count("status: NOERROR") == 2 and text.count("ANSWER: 1,") == 2
    reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
    queries = [dns.message.make_query(q, t) for q, t in ((name(K1), "SRV"), (ORIGIN, "SOA"),
                                                          (name(K2), "TXT"))]  # fmt: skip
    writer.write(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
    await writer.drain()
    for q in queries:  # pipelined: answered in order on the one connection
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        r2 = dns.message.from_wire(await reader.readexactly(length))
        assert r2.id == q.id and r2.answer
    assert server.connections == 1
    writer.close()


async def test_tcp_limits() -> None:
    limits = DnsLimits(max_tcp_connections=1, tcp_idle=0.3, max_tcp_query=512)
    s = await start_dns(zone(), "127.0.0.1", 0, limits)
    try:
        _, first = await asyncio.open_connection("127.0.0.1", s.tcp_port)
        await asyncio.sleep(0.05)
        reader, second = await asyncio.open_connection("127.0.0.1", s.tcp_port)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # over the cap: closed at once
        assert s.stats.tcp_rejected == 1
        second.close()
        await asyncio.sleep(0.4)  # the first was idle longer than tcp_idle: closed
        assert s.connections == 0
        first.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", s.tcp_port)
        writer.write(struct.pack("!H", 4000) + b"\0" * 4000)  # longer than max_tcp_query
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert s.stats.tcp_oversized == 1
        writer.close()
    finally:
        s.close()
        await s.wait_closed()


# -- abuse: rate limit, size cap, cookies, TCP slots per source -----------------------------


class Collect(asyncio.DatagramProtocol):
    """Counts what comes back to one client socket: full answers and TC answers."""

    def __init__(self) -> None:
        self.answers = 0
        self.truncated = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        r = dns.message.from_wire(data)
        if r.flags & dns.flags.TC:
            assert not r.answer and len(data) <= 200
            self.truncated += 1
        else:
            assert r.answer
            self.answers += 1


async def flood(server: DnsServer, source: str, count: int, seconds: float) -> Collect:
    """Send ``count`` SRV queries from ``source`` within about ``seconds``, in paced bursts so
    that the server's socket buffer does not overflow; then wait for the stragglers."""
    loop = asyncio.get_running_loop()
    wire = dns.message.make_query(name(K1), "SRV").to_wire()
    transport, collect = await loop.create_datagram_endpoint(
        Collect, local_addr=(source, 0), remote_addr=("127.0.0.1", server.udp_port)
    )
    try:
        bursts = 40
        for _ in range(bursts):
            for _ in range(count // bursts):
                transport.sendto(wire)
            await asyncio.sleep(seconds / bursts / 2)
        await asyncio.sleep(0.3)
    finally:
        transport.close()
    return collect


async def ask_udp(server: DnsServer, source: str, q: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(
        q, "127.0.0.1", port=server.udp_port, source=source, timeout=1, ignore_unexpected=True
    )


async def test_one_flooding_source_is_limited_and_others_are_answered() -> None:
    """Default limits: one /24 gets its burst and then 200 answers/s (every second answer over
    the limit slipped as TC; once over the limit, an answer over 2x its query is sent as TC
    too); another /24 is answered as if nothing happened."""
    s = await start_dns(zone(), "127.0.0.1", 0)
    try:
        start = asyncio.get_running_loop().time()
        got = await flood(s, "127.0.0.1", 2000, 1.0)
        elapsed = asyncio.get_running_loop().time() - start
        rrl = s.stats.rrl
        # all but what the kernel dropped if the machine stalled
        received = s._udp.stats.received if isinstance(s._udp, udpbatch.BatchedUdp) else 2000
        assert rrl.answered + rrl.dropped + rrl.slipped == received >= 1900  # each decided
        assert 400 <= rrl.answered <= 400 + 200 * elapsed + 1 and rrl.dropped > 500
        assert rrl.slipped == (rrl.dropped + rrl.slipped) // 2  # slip 2: exactly every second
        # what came back (the client's socket buffer may overflow: the server's counts rule)
        assert 0 < got.answers <= rrl.answered - rrl.engaged_truncated
        assert got.truncated <= rrl.slipped + rrl.engaged_truncated
        r = await ask_udp(s, "127.0.1.1", dns.message.make_query(name(K1), "SRV"))
        assert r.answer and not r.flags & dns.flags.TC  # another /24: its own bucket
    finally:
        s.close()
        await s.wait_closed()


async def test_a_limited_source_is_served_over_tcp() -> None:
    """A slow bucket (one answer per 10 s) so nothing refills during the test: the flooded /24
    (127.0.0.1 and 127.0.0.2 alike) gets only TC answers or nothing over UDP, retries over TCP
    and is answered; dig behind it does the same by itself."""
    limits = DnsLimits(rrl=RrlConfig(rate=0.1, burst=20, slip=2))
    s = await start_dns(zone(), "127.0.0.1", 0, limits)
    try:
        got = await flood(s, "127.0.0.1", 400, 0.5)
        assert got.answers <= 21 and got.truncated > 150
        q = dns.message.make_query(name(K1), "SRV")
        tc = None
        for _ in range(4):  # slip 2: at most one of two in a row is dropped
            with contextlib.suppress(dns.exception.Timeout):
                tc = await ask_udp(s, "127.0.0.2", q)  # the same /24
                break
        assert tc is not None and tc.flags & dns.flags.TC and not tc.answer
        r = await dns.asyncquery.tcp(q, "127.0.0.1", port=s.tcp_port, source="127.0.0.2", timeout=2)
        assert r.answer and len(r.answer[0]) == 1 and len(r.additional) == 4  # in full
        dug = await dig(s, "+tries=3", name(K1), "SRV")  # from 127.0.0.1: TC, then TCP
        assert len(dug.records()) == 1 and "Truncated, retrying in TCP mode" in dug.text
        r = await ask_udp(s, "127.0.1.1", q)  # another /24
        assert r.answer and not r.flags & dns.flags.TC
    finally:
        s.close()
        await s.wait_closed()


def cookie_query(client: bytes, server: bytes = b"") -> dns.message.Message:
    options: list[dns.edns.Option] = [dns.edns.CookieOption(client, server)]
    return dns.message.make_query(name(K1), "SRV", use_edns=0, payload=1232, options=options)


async def test_a_flood_from_the_resolvers_own_24_neither_amplifies_nor_locks_it_out() -> None:
    """A flood forged from 127.0.0.1 (the resolver is 127.0.0.2, the same /24): once the limit
    engages, unproven answers are at most 2x their query (the SRV answer is 4.8x: TC), and the
    resolver, echoing its server cookie, is answered in full every time."""
    limits = DnsLimits(rrl=RrlConfig(rate=2, burst=5, slip=2))
    s = await start_dns(zone(), "127.0.0.1", 0, limits)
    try:
        first = await ask_udp(s, "127.0.0.2", cookie_query(b"c" * 8))
        [cookie] = [o for o in first.options if isinstance(o, dns.edns.CookieOption)]
        rrl = s.stats.rrl
        assert first.answer and cookie.server and rrl.answered == 1  # no cookie yet: charged
        got = await flood(s, "127.0.0.1", 400, 1.0)  # >= 0.8 s: at least one token back
        assert got.answers == 4 and got.truncated > 150  # the rest of the burst, then TC
        assert rrl.engaged_truncated >= 1 and rrl.answered == 5 + rrl.engaged_truncated
        decided = rrl.answered + rrl.dropped + rrl.slipped
        for _ in range(20):
            r = await ask_udp(s, "127.0.0.2", cookie_query(b"c" * 8, cookie.server))
            assert len(r.additional) == 4 and not r.flags & dns.flags.TC  # in full
        assert rrl.proven == 20 and rrl.answered + rrl.dropped + rrl.slipped == decided
        with contextlib.suppress(dns.exception.Timeout):  # another client's cookie: limited
            r = await ask_udp(s, "127.0.0.2", cookie_query(b"d" * 8, cookie.server))
            assert r.flags & dns.flags.TC and not r.answer
        assert rrl.cookie_bad == 1 and rrl.proven == 20
    finally:
        s.close()
        await s.wait_closed()


async def test_big_answers_need_a_cookie_or_tcp() -> None:
    """Toward an unproven source a UDP answer is at most 512 bytes (2x the query, at least 512);
    dig sends a client cookie, gets a server cookie, and echoing it gets the whole answer."""
    z = Zone(config())
    for i in range(5):
        z.upsert(peer(os.urandom(32), 1000 + i))
    s = await start_dns(z, "127.0.0.1", 0)
    try:
        plain = await dig(s, "+nocookie", "+ignore", "+bufsize=4096", SERVICE, "PTR")
        size = int(re.search(r"MSG SIZE\s+rcvd: (\d+)", plain.text).group(1))  # type: ignore[union-attr]
        assert size <= 512 and len(plain.records()) == 5 and "COOKIE" not in plain.text
        first = await dig(s, "+ignore", "+bufsize=4096", SERVICE, "PTR")
        cookie = re.search(r"; COOKIE: ([0-9a-f]{48}) \(good\)", first.text)
        assert cookie is not None and len(first.records("ADDITIONAL")) < 20
        proven = await dig(s, f"+cookie={cookie.group(1)}", "+ignore", "+bufsize=4096",
                           SERVICE, "PTR")  # fmt: skip
        size = int(re.search(r"MSG SIZE\s+rcvd: (\d+)", proven.text).group(1))  # type: ignore[union-attr]
        assert 512 < size <= 1232 and "tc" not in proven.flags and "(good)" in proven.text
        assert len(proven.records("ADDITIONAL")) > len(first.records("ADDITIONAL"))
        assert s.stats.rrl.cookie_good == 1 and s.stats.rrl.cookie_new == 1
    finally:
        s.close()
        await s.wait_closed()


async def tcp_query(source: str, port: int) -> dns.message.Message:
    q = dns.message.make_query(name(K1), "SRV")
    return await dns.asyncquery.tcp(q, "127.0.0.1", port=port, source=source, timeout=2)


async def test_one_source_cannot_take_every_tcp_slot() -> None:
    s = await start_dns(zone(), "127.0.0.1", 0)
    held: list[asyncio.StreamWriter] = []
    try:
        readers = []
        for _ in range(20):  # one source, 20 connections: 8 are kept, the rest closed at once
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", s.tcp_port, local_addr=("127.0.0.1", 0)
            )
            readers.append(reader)
            held.append(writer)
        for _ in range(100):  # the server has seen all 20 (bounded: 2 s)
            if s.connections + s.stats.tcp_source_rejected == 20:
                break
            await asyncio.sleep(0.02)
        assert s.connections == 8 and s.stats.tcp_source_rejected == 12
        closed = 0
        for reader in readers:
            with contextlib.suppress(TimeoutError):
                closed += await asyncio.wait_for(reader.read(), 0.1) == b""
        assert closed == 12
        r = await tcp_query("127.0.0.2", s.tcp_port)  # another source still gets a slot
        assert r.answer
    finally:
        for w in held:
            w.close()
        s.close()
        await s.wait_closed()


async def test_when_all_tcp_slots_are_taken_the_busiest_source_gives_one_up() -> None:
    s = await start_dns(zone(), "127.0.0.1", 0, DnsLimits(max_tcp_connections=10))
    held: list[asyncio.StreamWriter] = []

    def seen() -> int:
        st = s.stats
        return s.connections + st.tcp_rejected + st.tcp_source_rejected + st.tcp_evicted

    async def hold(source: str) -> asyncio.StreamReader:
        before = seen()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", s.tcp_port, local_addr=(source, 0)
        )
        held.append(writer)
        for _ in range(100):  # until the server has taken or refused it (bounded: 2 s)
            if seen() > before:
                break
            await asyncio.sleep(0.02)
        return reader

    try:
        first = [await hold("127.0.0.1") for _ in range(8)]
        for _ in range(2):
            await hold("127.0.0.2")
        assert s.connections == 10
        newcomer = await hold("127.0.0.3")  # all taken: 127.0.0.1's oldest goes
        assert s.stats.tcp_evicted == 1 and s.connections == 10
        assert await asyncio.wait_for(first[0].read(), 2) == b""
        wire = dns.message.make_query(name(K1), "SRV").to_wire()
        held[-1].write(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await asyncio.wait_for(newcomer.readexactly(2), 2))
        assert dns.message.from_wire(await newcomer.readexactly(length)).answer
        late = await hold("127.0.0.1")  # 127.0.0.1 (7) is the busiest: it cannot evict itself
        assert await asyncio.wait_for(late.read(), 2) == b"" and s.stats.tcp_rejected == 1
        assert s.stats.tcp_evicted == 1
    finally:
        for w in held:
            w.close()
        s.close()
        await s.wait_closed()


async def test_the_asyncio_fallback_limits_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where recvmmsg is missing the source address comes as text: the same policy applies."""
    monkeypatch.setattr(udpbatch, "available", lambda: False)
    limits = DnsLimits(rrl=RrlConfig(rate=1, burst=5, slip=0))
    s = await start_dns(zone(), "127.0.0.1", 0, limits)
    try:
        assert not isinstance(s._udp, udpbatch.BatchedUdp)
        got = await flood(s, "127.0.0.1", 200, 0.2)
        assert got.answers == 5 and s.stats.rrl.dropped == 195
        r = await ask_udp(s, "127.0.1.1", dns.message.make_query(name(K1), "SRV"))
        assert r.answer
    finally:
        s.close()
        await s.wait_closed()
