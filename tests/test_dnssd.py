"""The DNS-SD zone, pure: layout, negative answers, EDNS, truncation, cache invalidation."""

from __future__ import annotations

import asyncio
import os

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label
from wgmesh.registry.dns import start_dns

K1, K2 = bytes(range(32)), bytes(range(1, 33))


def peer(key: bytes, port: int = 51820, lan: bool = True) -> PublishedPeer:
    cands = [Candidate(Endpoint.parse(f"198.51.100.7:{port}"), "public", 0)]
    if lan:
        cands.append(Candidate(Endpoint.parse(f"10.0.0.7:{port}"), "lan", 10))
    return PublishedPeer(key, "alice", tuple(cands), ("100.64.0.1/32",), "cone", 1700000000)


def zone() -> Zone:
    z = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "hostmaster.mesh.test.",
                        ns_addresses=("203.0.113.10",)))  # fmt: skip
    z.upsert(peer(K1))
    z.upsert(peer(K2, lan=False))
    return z


def ask(z: Zone, name: str, rdtype: str, *, tcp: bool = False, **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    wire = z.answer(q.to_wire(), tcp=tcp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    return r


def name(key: bytes) -> str:
    return f"{key_label(key)}._wireguard._udp.mesh.test."


def test_srv_layout_is_wgsds_with_public_first() -> None:
    r = ask(zone(), name(K1), "SRV")
    assert r.flags & dns.flags.AA and r.rcode() == dns.rcode.NOERROR
    srvs = list(r.answer[0])
    assert (srvs[0].priority, srvs[0].port, str(srvs[0].target)) == (0, 51820, name(K1))
    assert srvs[1].priority == 10 and str(srvs[1].target) == "lan1." + name(K1)
    add = {(str(rrs.name), dns.rdatatype.to_text(rrs.rdtype)) for rrs in r.additional}
    assert (name(K1), "A") in add and ("lan1." + name(K1), "A") in add and (name(K1), "TXT") in add


def test_txt_keys() -> None:
    r = ask(zone(), name(K1), "TXT")
    strings = [s.decode() for s in next(iter(r.answer[0])).strings]
    assert strings == ["txtvers=1", f"pub={encode_key(K1)}", "allowed=100.64.0.1/32",
                       "name=alice", "nat=cone", "since=1700000000"]  # fmt: skip


def test_browse_lists_every_peer() -> None:
    r = ask(zone(), "_wireguard._udp.mesh.test.", "PTR")
    assert sorted(str(rr.target) for rr in r.answer[0]) == sorted([name(K1), name(K2)])


def test_apex_soa_ns_and_glue() -> None:
    z = zone()
    r = ask(z, "mesh.test.", "SOA")
    assert r.flags & dns.flags.AA and next(iter(r.answer[0])).serial == z.serial
    ns = ask(z, "mesh.test.", "NS")
    assert str(next(iter(ns.answer[0])).target) == "ns1.mesh.test."
    assert str(next(iter(ns.additional[0])).address) == "203.0.113.10"


def test_negative_answers_carry_the_soa() -> None:
    z = zone()
    nx = ask(z, f"{'a' * 56}._wireguard._udp.mesh.test.", "SRV")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    assert nx.authority[0].ttl == 5
    nodata = ask(z, name(K1), "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    ent = ask(z, "_udp.mesh.test.", "A")
    assert ent.rcode() == dns.rcode.NOERROR


def test_outside_the_zone_is_refused_and_never_recursed() -> None:
    r = ask(zone(), "example.org.", "A")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.RA


def test_edns_and_badvers_and_notimp() -> None:
    z = zone()
    r = ask(z, name(K1), "SRV", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload == 1232
    bad = ask(z, name(K1), "SRV", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS
    q = dns.message.make_query(name(K1), "SRV")
    q.set_opcode(dns.opcode.NOTIFY)
    wire = z.answer(q.to_wire(), tcp=False)
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.NOTIMP


def test_truncation_over_udp_full_over_tcp() -> None:
    z = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test."))
    for i in range(60):
        z.upsert(peer(os.urandom(32), 1000 + i))
    udp = ask(z, "_wireguard._udp.mesh.test.", "PTR")
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(z, "_wireguard._udp.mesh.test.", "PTR", tcp=True)
    assert len(tcp.answer[0]) == 60


def test_serial_rises_on_every_change_only() -> None:
    z = zone()
    s = z.serial
    assert not z.upsert(peer(K1))
    assert z.serial == s
    assert z.upsert(peer(K1, port=2))
    assert z.serial == s + 1
    assert z.remove(K2) and z.serial == s + 2
    assert not z.remove(K2)


def test_cache_serves_hits_and_changes_invalidate_exactly() -> None:
    z = zone()
    ask(z, name(K1), "SRV")
    ask(z, name(K2), "SRV")
    hits = z.stats.cache_hits
    ask(z, name(K1), "SRV")
    ask(z, name(K2), "SRV")
    assert z.stats.cache_hits == hits + 2
    z.upsert(peer(K1, port=4444))  # K1 changed: its answers go, K2's stay
    r = ask(z, name(K1), "SRV")
    assert next(iter(r.answer[0])).port == 4444
    assert z.stats.cache_hits == hits + 2
    ask(z, name(K2), "SRV")
    assert z.stats.cache_hits == hits + 3
    # the browse list and the SOA change with any peer
    ask(z, "mesh.test.", "SOA")
    z.remove(K2)
    soa = ask(z, "mesh.test.", "SOA")
    assert next(iter(soa.answer[0])).serial == z.serial
    assert [str(rr.target) for rr in ask(z, "_wireguard._udp.mesh.test.", "PTR").answer[0]] == [
        name(K1)
    ]
    assert ask(z, name(K2), "SRV").rcode() == dns.rcode.NXDOMAIN


def test_cache_is_capped_against_case_variant_floods() -> None:
    z = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test.", cache_size=50))
    z.upsert(peer(K1))
    label = key_label(K1)
    for i in range(300):
        variant = "".join(c.upper() if (i >> (j % 8)) & 1 else c for j, c in enumerate(label))
        ask(z, f"{variant}._wireguard._udp.mesh.test.", "SRV")
    assert len(z._cache) <= 50
    assert sum(len(v) for v in z._cache_by_name.values()) <= 50


def test_garbage_is_dropped_or_formerr() -> None:
    z = zone()
    assert z.answer(b"\x00" * 3, tcp=False) is None
    r = z.answer(b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 20, tcp=False)
    assert r is not None and r[:2] == b"\x12\x34" and r[3] & 0x0F == dns.rcode.FORMERR
    response = dns.message.make_response(dns.message.make_query("a.mesh.test.", "A")).to_wire()
    assert z.answer(response, tcp=False) is None


QUERIES = [
    dns.message.make_query(name(K1), "SRV").to_wire(),
    dns.message.make_query("_wireguard._udp.mesh.test.", "PTR", use_edns=0).to_wire(),
    dns.message.make_query("mesh.test.", "SOA", want_dnssec=True).to_wire(),
]


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_give_none_or_a_dns_message(data: bytes) -> None:
    out = zone().answer(data, tcp=False)
    if out is not None:
        dns.message.from_wire(out)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(QUERIES), st.integers(0, 200), st.integers(1, 255), st.integers(0, 60))
def test_mutated_queries_give_none_or_a_dns_message(q: bytes, pos: int, xor: int, cut: int) -> None:
    data = bytearray(q)
    data[pos % len(data)] ^= xor
    z = zone()
    for candidate in (bytes(data), bytes(data[: max(0, len(data) - cut)])):
        out = z.answer(candidate, tcp=False)
        if out is not None:
            dns.message.from_wire(out)


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
            await asyncio.sleep(0.02)
        transport.close()
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(b"\x00\x05hello")  # garbage over TCP too
        await writer.drain()
        writer.close()
        q = dns.message.make_query(name(K1), "SRV")
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=server.udp_port, timeout=2)
        assert r.answer and r.rcode() == dns.rcode.NOERROR
    finally:
        server.close()
        await server.wait_closed()


def test_huge_browse_over_tcp_is_cut_to_fit() -> None:
    z = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test."))
    for i in range(1500):
        z.upsert(peer(os.urandom(32), 1000 + i, lan=False))
    r = ask(z, "_wireguard._udp.mesh.test.", "PTR", tcp=True)
    assert 500 < len(r.answer[0]) < 1500
