"""Hostile input to the zone and the running server: never an exception, never a bad answer."""

from __future__ import annotations

import asyncio
import os
import struct

import dns.asyncquery
import dns.message
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dnssd import K1, K2, ORIGIN, SERVICE, name, zone
from wgmesh.registry.dns import start_dns

QUERIES = [
    dns.message.make_query(name(K1), "SRV").to_wire(),
    dns.message.make_query(name(K2).upper(), "TXT", use_edns=0, payload=700).to_wire(),
    dns.message.make_query(SERVICE, "PTR", use_edns=0).to_wire(),
    dns.message.make_query(ORIGIN, "SOA", want_dnssec=True).to_wire(),
    dns.message.make_query("lan1." + name(K1), "A", use_edns=0, options=[]).to_wire(),
    dns.message.make_query("nope." + SERVICE, "SRV").to_wire(),
]


def check(query: bytes, out: bytes | None, tcp: bool) -> None:
    if out is None:
        return
    r = dns.message.from_wire(out)
    assert out[:2] == query[:2] and r.flags & 0x8000
    assert len(out) <= (65535 if tcp else 1232)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_give_none_or_a_dns_message(data: bytes, tcp: bool) -> None:
    check(data, zone().answer(data, tcp=tcp), tcp)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(QUERIES),
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=4),
    st.integers(0, 60),
    st.booleans(),
)
def test_mutated_queries_give_none_or_a_dns_message(
    q: bytes, flips: list[tuple[int, int]], cut: int, tcp: bool
) -> None:
    data = bytearray(q)
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    z = zone()
    for candidate in (bytes(data), bytes(data[: max(0, len(data) - cut)]), bytes(data) + b"\0"):
        check(candidate, z.answer(candidate, tcp=tcp), tcp)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(QUERIES), st.integers(0, 200), st.integers(0, 255))))
def test_hostile_queries_never_poison_the_cache(mutations: list[tuple[bytes, int, int]]) -> None:
    """Whatever was asked before, a good query gets the answer a fresh zone gives."""
    z = zone()
    for q, pos, xor in mutations:
        data = bytearray(q)
        data[pos % len(data)] ^= xor
        z.answer(bytes(data), tcp=False)
    fresh = zone()
    for q in QUERIES:
        assert z.answer(q, tcp=False) == fresh.answer(q, tcp=False)


async def test_running_server_answers_after_garbage() -> None:
    z = zone()
    server = await start_dns(z, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", server.udp_port)
        )
        for _ in range(10):  # paced: a burst would overflow the socket buffer, not the server
            for _ in range(50):
                transport.sendto(os.urandom(int.from_bytes(os.urandom(1), "big") * 8))
            transport.sendto(b"\x01" * 5000)  # oversized: dropped before parsing
            transport.sendto(b"\x01" * 5)  # shorter than a header
            await asyncio.sleep(0.01)
        transport.close()
        for junk in (b"\x00\x05hello", struct.pack("!H", 20) + os.urandom(20), b"\xff\xff"):
            _reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
            writer.write(junk)  # garbage over TCP too
            await writer.drain()
            writer.close()
        q = dns.message.make_query(name(K1), "SRV")
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=server.udp_port, timeout=2)
        assert r.answer and r.rcode() == dns.rcode.NOERROR
        r = await dns.asyncquery.tcp(q, "127.0.0.1", port=server.tcp_port, timeout=2)
        assert r.answer and r.rcode() == dns.rcode.NOERROR
        assert server.stats.udp_dropped >= 20 and server.stats.errors == 0
        assert z.stats.queries >= 400
    finally:
        server.close()
        await server.wait_closed()
