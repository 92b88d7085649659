"""The DNS adapters on loopback, asked by the real ``dig``: wgsd's layout as a client sees it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.message
import pytest

from tests.test_dnssd import K1, K2, ORIGIN, SERVICE, config, name, peer, zone
from wgmesh.proto.dnssd import Zone
from wgmesh.proto.keys import encode_key
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
                            "60", "30", "3600", "5"]  # fmt: skip
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

    srv = await dig(server, name(K1), "SRV")
    assert [rr[4] for rr in srv.records()] == [
        f"0 0 51820 {name(K1)}", f"10 0 51820 lan1.{name(K1)}"
    ]  # fmt: skip
    additional = {(rr[0], rr[3]): rr[4] for rr in srv.records("ADDITIONAL")}
    assert additional[(f"lan1.{name(K1)}", "A")] == "10.0.0.7"

    txt = await dig(server, name(K1), "TXT")
    assert txt.records()[0][4] == (
        f'"txtvers=1" "pub={encode_key(K1)}" "allowed=100.64.0.1/32" "name=alice" '
        '"nat=cone" "since=1700000000"'
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
    assert text.count("status: NOERROR") == 2 and text.count("ANSWER: 1,") == 1
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
