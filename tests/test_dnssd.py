"""The DNS-SD zone, pure: layout, negative answers, EDNS, truncation, cache invalidation."""

from __future__ import annotations

import base64
import itertools
import math
import os
import random
from dataclasses import replace
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.errors import ConfigError
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig, _record
from wgmesh.proto.dnswire import ENTRY_OVERHEAD, query_shape, txt_strings, unpack_record
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label, label_key
from wgmesh.proto.kinds import CandidateKind, NatKind

K1, K2, K3 = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
ORIGIN = "mesh.test."
SERVICE = "_wireguard._udp.mesh.test."


def peer(key: bytes, port: int = 51820, lan: bool = True, *extra: Candidate) -> PublishedPeer:
    cands = [Candidate(Endpoint.parse(f"198.51.100.7:{port}"), CandidateKind.PUBLIC, 0)]
    if lan:
        cands.append(Candidate(Endpoint.parse(f"10.0.0.7:{port}"), CandidateKind.LAN, 10))
    cands += extra
    return PublishedPeer(key, "alice", tuple(cands), ("100.64.0.1/32",), NatKind.CONE, 1700000000)


def config(**kw: object) -> ZoneConfig:
    return ZoneConfig(ORIGIN, ("ns1.mesh.test.", "ns.elsewhere.example."),
                      "hostmaster.mesh.test.", ns_addresses=("203.0.113.10", "2001:db8::53"),
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def zone(**kw: object) -> Zone:
    z = Zone(config(**kw))
    z.upsert(peer(K1))
    z.upsert(peer(K2, lan=False))
    return z


def name(key: bytes) -> str:
    return f"{key_label(key)}.{SERVICE}"


def ask(
    z: Zone, qname: str, rdtype: str, *, tcp: bool = False, **kw: object
) -> dns.message.Message:
    q = dns.message.make_query(qname, rdtype, **kw)  # type: ignore[arg-type]
    return send(z, q, tcp=tcp)


def send(z: Zone, q: dns.message.Message, *, tcp: bool = False) -> dns.message.Message:
    wire = z.answer(q.to_wire(), tcp=tcp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id and r.question == q.question
    return r


def rrsets(section: list[dns.rrset.RRset]) -> set[tuple[str, str]]:
    return {(str(rrs.name), dns.rdatatype.to_text(rrs.rdtype)) for rrs in section}


def only(rrs: dns.rrset.RRset) -> Any:
    assert len(rrs) == 1
    return next(iter(rrs))


# -- layout ----------------------------------------------------------------------------------


def test_srv_layout_is_wgsds_with_public_first() -> None:
    r = ask(zone(), name(K1), "SRV")
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl == 5
    (srv,) = r.answer
    assert [(s.priority, s.weight, s.port, str(s.target)) for s in srv] == [
        (0, 0, 51820, name(K1)),  # exactly wgsd's record: the target is the peer's own name
    ]
    # the other candidates' SRVs are at the alternates' name, offered after the TXT
    assert [(str(rrs.name), dns.rdatatype.to_text(rrs.rdtype)) for rrs in r.additional] == [
        (name(K1), "A"), (name(K1), "TXT"), ("_alt." + name(K1), "SRV"),
        ("lan1." + name(K1), "A"),
    ]  # fmt: skip
    alt = [(s.priority, s.port, str(s.target)) for s in r.additional[2]]
    assert alt == [(10, 51820, "lan1." + name(K1))]
    addresses = {str(rrs.name): str(only(rrs)) for rrs in r.additional if rrs.rdtype == 1}
    assert addresses == {name(K1): "198.51.100.7", "lan1." + name(K1): "10.0.0.7"}
    asked = ask(z := zone(), "_alt." + name(K1), "SRV")
    assert asked.answer[0] == r.additional[2] and asked.flags & dns.flags.AA
    assert rrsets(asked.additional) == {("lan1." + name(K1), "A")}
    assert ask(z, "_alt." + name(K1), "A").answer == []  # NODATA
    assert ask(z, "_alt." + name(K2), "SRV").rcode() == dns.rcode.NXDOMAIN  # no alternates
    assert ask(z, name(K2), "SRV").additional[1].name == dns.name.from_text(name(K2))  # TXT


def test_srv_sorted_by_priority_and_ipv6_targets() -> None:
    z = Zone(config())
    v6 = Candidate(Endpoint.parse("[2001:db8::7]:51821"), CandidateKind.IPV6, 5)
    z.upsert(peer(K1, 51820, True, v6))
    r = ask(z, "_alt." + name(K1), "SRV", use_edns=0)
    assert [(s.priority, str(s.target)) for s in r.answer[0]] == [
        (5, "ipv62." + name(K1)), (10, "lan1." + name(K1))
    ]  # fmt: skip
    assert ("ipv62." + name(K1), "AAAA") in rrsets(r.additional)
    assert ("ipv62." + name(K1), "AAAA") in rrsets(ask(z, name(K1), "SRV", use_edns=0).additional)
    aaaa = ask(z, "ipv62." + name(K1), "AAAA")
    assert str(only(aaaa.answer[0])) == "2001:db8::7" and aaaa.flags & dns.flags.AA
    nodata = ask(z, "ipv62." + name(K1), "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert str(only(ask(z, "lan1." + name(K1), "A").answer[0])) == "10.0.0.7"
    assert str(only(ask(z, name(K1), "A").answer[0])) == "198.51.100.7"


def test_txt_keys() -> None:
    r = ask(zone(), name(K1), "TXT")
    strings = [s.decode() for s in only(r.answer[0]).strings]
    assert strings == ["txtvers=1", f"pub={encode_key(K1)}", "allowed=100.64.0.1/32",
                       "name=alice", "nat=cone", "since=1700000000", "alt=1"]  # fmt: skip
    z = Zone(config())
    z.upsert(PublishedPeer(K3, "", peer(K3, lan=False).candidates, (), NatKind.SYMMETRIC, 5))
    bare = only(ask(z, name(K3), "TXT").answer[0]).strings
    assert [s.decode() for s in bare] == ["txtvers=1", f"pub={encode_key(K3)}",
                                          "nat=symmetric", "since=5"]  # fmt: skip


def test_browse_lists_every_peer_with_its_records_as_additional() -> None:
    z = zone()
    z.upsert(
        PublishedPeer(K3, "nothing yet", (), (), NatKind.UNKNOWN, 0)
    )  # no endpoint: not listed
    r = ask(z, SERVICE, "PTR", use_edns=0, payload=4096)
    assert r.flags & dns.flags.AA
    assert sorted(str(rr.target) for rr in r.answer[0]) == sorted([name(K1), name(K2)])
    assert {(name(K1), "SRV"), (name(K1), "TXT"), (name(K2), "SRV")} <= rrsets(r.additional)


def test_apex_soa_ns_and_glue() -> None:
    z = zone(negative_ttl=7)
    r = ask(z, ORIGIN, "SOA")
    soa = only(r.answer[0])
    assert r.flags & dns.flags.AA
    assert (str(soa.mname), str(soa.rname)) == ("ns1.mesh.test.", "hostmaster.mesh.test.")
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        z.serial,
        60,
        30,
        1209600,  # SOA_EXPIRE: Zonemaster's ZONE05 warns below one week
        7,
    )
    ns = ask(z, ORIGIN, "NS")
    assert sorted(str(rd.target) for rd in ns.answer[0]) == [
        "ns.elsewhere.example.",
        "ns1.mesh.test.",
    ]
    assert rrsets(ns.additional) == {("ns1.mesh.test.", "A"), ("ns1.mesh.test.", "AAAA")}
    assert str(only(ask(z, "ns1.mesh.test.", "A").answer[0])) == "203.0.113.10"
    assert str(only(ask(z, "NS1.mesh.test.", "AAAA").answer[0])) == "2001:db8::53"


def test_any_gets_one_rrset() -> None:
    z = zone()
    assert rrsets(ask(z, ORIGIN, "ANY").answer) == {(ORIGIN, "SOA")}
    assert rrsets(ask(z, SERVICE, "ANY").answer) == {(SERVICE, "PTR")}
    assert rrsets(ask(z, name(K1), "ANY").answer) == {(name(K1), "SRV")}
    assert rrsets(ask(z, "lan1." + name(K1), "ANY").answer) == {("lan1." + name(K1), "A")}
    assert ask(z, "nope." + SERVICE, "ANY").rcode() == dns.rcode.NXDOMAIN


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="NS"):
        Zone(ZoneConfig(ORIGIN, (), "h.mesh.test."))
    with pytest.raises(ConfigError, match="bad zone configuration"):
        Zone(ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "h.mesh.test.", ns_addresses=("nope",)))


# -- negative answers and errors -------------------------------------------------------------


def test_negative_answers_carry_the_soa() -> None:
    z = zone(negative_ttl=9)
    nx = ask(z, f"{'a' * 56}.{SERVICE}", "SRV")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA and not nx.answer
    assert rrsets(nx.authority) == {(ORIGIN, "SOA")} and nx.authority[0].ttl == 9
    assert only(nx.authority[0]).serial == z.serial
    nodata = ask(z, name(K1), "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert rrsets(nodata.authority) == {(ORIGIN, "SOA")} and nodata.flags & dns.flags.AA
    for ent in ("_udp.mesh.test.",):  # empty non-terminal: exists, has nothing
        r = ask(z, ent, "A")
        assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority
    assert ask(z, "x.lan1." + name(K1), "A").rcode() == dns.rcode.NXDOMAIN
    assert ask(z, "lan1." + name(K2), "A").rcode() == dns.rcode.NXDOMAIN  # K2 has no LAN
    assert ask(z, SERVICE, "SRV").rcode() == dns.rcode.NOERROR
    assert z.stats.nxdomain == 3


def test_outside_the_zone_class_and_transfers_are_refused() -> None:
    z = zone()
    for r in (
        ask(z, "example.org.", "A"),
        ask(z, "test.", "SOA"),
        ask(z, ORIGIN, "SOA", rdclass="CH"),
        ask(z, ORIGIN, "AXFR", tcp=True),
    ):
        assert r.rcode() == dns.rcode.REFUSED and not r.answer
        assert not r.flags & (dns.flags.RA | dns.flags.AA)
    assert z.stats.refused == 4


def test_formerr_notimp_badvers_and_drops() -> None:
    z = zone()
    assert z.answer(b"\x00" * 3, tcp=False) is None
    r = z.answer(b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 20, tcp=False)
    assert r is not None and r[:2] == b"\x12\x34" and r[2] & 0x80 and r[3] & 0x0F == 1
    response = dns.message.make_response(dns.message.make_query("a.mesh.test.", "A")).to_wire()
    assert z.answer(response, tcp=False) is None
    assert z.stats.dropped == 2
    no_question = dns.message.Message(id=7)
    assert send(z, no_question).rcode() == dns.rcode.FORMERR
    two = dns.message.make_query(ORIGIN, "SOA")
    two.question.append(
        dns.rrset.RRset(dns.name.from_text(SERVICE), dns.rdataclass.IN, dns.rdatatype.PTR)
    )
    assert dns.message.from_wire(z.answer(two.to_wire(), tcp=False) or b"").rcode() == 1
    notify = dns.message.make_query(name(K1), "SRV")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert send(z, notify).rcode() == dns.rcode.NOTIMP
    bad = ask(z, name(K1), "SRV", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS and bad.edns == 0 and not bad.answer


# -- EDNS, case and size ---------------------------------------------------------------------


def test_edns_is_echoed_with_our_size_and_the_do_bit() -> None:
    z = zone()
    r = ask(z, name(K1), "SRV", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload == 1232 and not r.ednsflags & dns.flags.DO
    assert ask(z, name(K1), "SRV", want_dnssec=True).ednsflags & dns.flags.DO
    assert ask(z, name(K1), "SRV").edns == -1


def test_question_case_is_echoed_and_names_match_any_case() -> None:
    z = zone()
    for qname in (name(K1).upper(), name(K1), "MeSh.TeSt."):
        for _ in range(2):  # the second comes from the cache
            q = dns.message.make_query(qname, "SRV" if qname != "MeSh.TeSt." else "SOA")
            r = send(z, q)
            assert str(r.question[0].name) == qname and r.answer
    assert z.stats.cache_hits == 3


def test_truncation_over_udp_full_over_tcp() -> None:
    z = Zone(config())
    for i in range(60):
        z.upsert(peer(os.urandom(32), 1000 + i))
    sizes: list[dict[str, Any]] = [{}, {"use_edns": 0, "payload": 4096}]
    for kw in sizes:
        udp = ask(z, SERVICE, "PTR", **kw)
        assert udp.flags & dns.flags.TC and not udp.answer and not udp.additional
    tcp = ask(z, SERVICE, "PTR", tcp=True)
    assert len(tcp.answer[0]) == 60 and not tcp.flags & dns.flags.TC
    assert z.stats.truncated == 2


def test_additional_data_goes_before_truncation() -> None:
    z = Zone(config())
    lans = [
        Candidate(Endpoint.parse(f"10.0.{i}.7:51820"), CandidateKind.LAN, 10 + i) for i in range(2)
    ]
    z.upsert(peer(K1, 51820, False, *lans))
    small = ask(z, "_alt." + name(K1), "SRV")  # 512 bytes without EDNS: the SRVs fit
    assert not small.flags & dns.flags.TC and len(small.answer[0]) == 2
    own = ask(z, name(K1), "SRV")  # the public SRV, its address and the TXT; the rest cut
    assert len(own.answer[0]) == 1 and len(own.additional) == 2 and not own.flags & dns.flags.TC
    big = ask(z, name(K1), "SRV", use_edns=0, payload=1232)
    assert len(big.additional) == 5 > len(own.additional)
    # SRV targets are never compressed (RFC 2782), so seven do not fit in 512 bytes: TC
    z.upsert(peer(K1, 51820, False, *lans, *lans, *lans, *lans[:1]))
    assert ask(z, "_alt." + name(K1), "SRV").flags & dns.flags.TC
    assert len(ask(z, "_alt." + name(K1), "SRV", use_edns=0).answer[0]) == 7
    assert not ask(z, name(K1), "SRV").flags & dns.flags.TC


def test_huge_browse_over_tcp_is_cut_to_fit() -> None:
    z = Zone(config())
    for i in range(1500):
        z.upsert(peer(os.urandom(32), 1000 + i, lan=False))
    r = ask(z, SERVICE, "PTR", tcp=True)
    assert 900 < len(r.answer[0]) < 1000 and not r.flags & dns.flags.TC and not r.additional
    assert ask(z, SERVICE, "PTR", use_edns=0).flags & dns.flags.TC
    assert ask(z, name(K1), "SRV").rcode() == dns.rcode.NXDOMAIN
    z.upsert(peer(K1))  # per-peer lookups never depend on the browse list
    assert ask(z, name(K1), "SRV").answer


def test_serial_rises_on_changes_at_most_once_per_interval() -> None:
    z = zone()  # two peers added, not published yet: answers show them, the serial waits
    s = z.serial
    assert z.next_publish() == -math.inf and z.publish(100.0) is not None and z.serial == s + 1
    assert z.next_publish() is None and z.publish(100.5) is None  # nothing changed since
    assert not z.upsert(peer(K1)) and z.next_publish() is None
    assert z.upsert(peer(K1, port=2)) and ask(z, ORIGIN, "SOA").answer[0][0].serial == s + 1
    assert [s.port for s in ask(z, name(K1), "SRV").answer[0]] == [2]  # at once
    assert z.remove(K2) and z.next_publish() == 101.0
    assert z.publish(100.9) is None and z.serial == s + 1  # within the interval: held
    delta = z.publish(101.0)
    assert delta is not None and (delta.start, delta.end) == (s + 1, s + 2) == (s + 1, z.serial)
    assert {c.key for c in delta.changes} == {K1, K2}  # both changes in one serial
    assert ask(z, ORIGIN, "SOA").answer[0][0].serial == s + 2
    assert not z.remove(K2) and z.next_publish() is None
    z.upsert(peer(K2))  # and back: nothing changed in the end, no serial
    z.remove(K2)
    assert z.publish(200.0) is None and z.serial == s + 2 and z.next_publish() is None
    every = Zone(config(serial_interval=0))
    every.upsert(peer(K1))
    assert every.publish(5.0) is not None and every.upsert(peer(K2)) and every.publish(5.0)


# -- the cache -------------------------------------------------------------------------------


def test_cache_serves_repeats_and_patches_the_id() -> None:
    z = zone()
    first = dns.message.make_query(name(K1), "SRV")
    again = dns.message.make_query(name(K1), "SRV")
    again.id = (first.id + 1) % 65536
    a, b = send(z, first), send(z, again)
    assert z.stats.cache_hits == 1 and a.answer == b.answer and b.id == again.id
    # EDNS options (a cookie) do not change the answer: keyed with them left out
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, os.urandom(8))
    for _ in range(3):
        send(z, dns.message.make_query(name(K1), "TXT", use_edns=0, options=[cookie]))
        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, os.urandom(8))
    assert z.stats.cache_hits == 3


def test_a_change_invalidates_exactly_the_answers_it_touches() -> None:
    z = zone()
    v6 = Candidate(Endpoint.parse("[2001:db8::7]:51821"), CandidateKind.IPV6, 5)
    z.upsert(peer(K1, 51820, True, v6))
    k1 = [(name(K1), t) for t in ("SRV", "TXT", "A")] + [("lan1." + name(K1), "A")]
    k2 = [(name(K2), t) for t in ("SRV", "TXT", "A", "AAAA")]  # AAAA: a cached NODATA
    shared = [(SERVICE, "PTR"), (ORIGIN, "SOA"), ("nope." + SERVICE, "SRV")]
    for q in k1 + k2 + shared:
        ask(z, *q)
    hits = z.stats.cache_hits
    for q in k1 + k2 + shared:
        ask(z, *q)
    assert z.stats.cache_hits == hits + len(k1 + k2 + shared)  # all cached, negatives too

    bob = Candidate(Endpoint.parse("192.0.2.1:4444"), CandidateKind.PUBLIC, 0)
    z.upsert(PublishedPeer(K1, "bob", (bob, v6), (), NatKind.NONE, 1))
    hits = z.stats.cache_hits
    for q in k2[:3]:  # K2's positive answers are untouched by a change of K1
        ask(z, *q)
    assert z.stats.cache_hits == hits + 3
    srv = ask(z, name(K1), "SRV")
    assert [s.port for s in srv.answer[0]] == [4444]
    assert [s.port for s in ask(z, "_alt." + name(K1), "SRV").answer[0]] == [51821]
    assert str(only(ask(z, name(K1), "A").answer[0])) == "192.0.2.1"
    assert "name=bob" in str(ask(z, name(K1), "TXT").answer[0])
    assert ask(z, "lan1." + name(K1), "A").rcode() == dns.rcode.NXDOMAIN  # gone
    assert str(only(ask(z, "ipv61." + name(K1), "AAAA").answer[0])) == "2001:db8::7"  # renamed
    soa = ask(z, ORIGIN, "SOA")
    assert only(soa.answer[0]).serial == z.serial
    nodata = ask(z, name(K2), "AAAA")  # negative answers carry the new serial
    assert only(nodata.authority[0]).serial == z.serial
    assert z.stats.cache_hits == hits + 3  # nothing of the above came from the cache

    # a new peer is visible at once: the cached NXDOMAIN for its name is stale
    assert ask(z, name(K3), "SRV").rcode() == dns.rcode.NXDOMAIN
    z.upsert(peer(K3))
    assert ask(z, name(K3), "SRV").answer
    assert name(K3) in {str(rr.target) for rr in ask(z, SERVICE, "PTR", tcp=True).answer[0]}
    z.remove(K2)
    assert ask(z, name(K2), "SRV").rcode() == dns.rcode.NXDOMAIN
    assert ask(z, name(K1), "SRV").answer[0] == srv.answer[0]  # still cached: hit
    assert z.stats.cache_hits == hits + 4


def test_truncated_answers_are_cached_and_counted() -> None:
    z = Zone(config())
    for i in range(40):
        z.upsert(peer(os.urandom(32), 1000 + i))
    for _ in range(3):
        assert ask(z, SERVICE, "PTR").flags & dns.flags.TC
    assert z.stats.truncated == 3 and z.stats.cache_hits == 2


def test_caches_are_capped_against_floods() -> None:
    z = Zone(config(cache_size=50, negative_cache_size=20))
    z.upsert(peer(K1))
    label = key_label(K1)
    for i in range(300):  # case variants are different cache keys
        variant = "".join(c.upper() if (i >> (j % 8)) & 1 else c for j, c in enumerate(label))
        ask(z, f"{variant}.{SERVICE}", "SRV")
        ask(z, f"{os.urandom(8).hex()}.{SERVICE}", "SRV")
    assert len(z._cache) == 50 and z._cache.indexed == 50
    assert z._cache.negative_count == 20
    off = Zone(config(cache_size=0, negative_cache_size=0))
    off.upsert(peer(K1))
    for _ in range(3):
        ask(off, name(K1), "SRV")
        ask(off, name(K2), "SRV")
    assert off.stats.cache_hits == 0 and len(off._cache) == 0


def test_uncacheable_queries_still_answer() -> None:
    z = zone()
    rd = dns.message.make_query(name(K1), "SRV")
    rd.flags &= ~dns.flags.RD  # another flag set: another key, same records
    r = send(z, rd)
    assert r.answer and not r.flags & dns.flags.RD
    assert send(z, dns.message.make_query(name(K1), "SRV")).flags & dns.flags.RD
    assert r.question[0].rdclass == dns.rdataclass.IN


# -- the packed records and the fast encoder -------------------------------------------------


def test_peer_answers_are_dnspythons_byte_for_byte() -> None:
    """Every answer the fast encoder writes equals what the dnspython path renders for it."""
    rng = random.Random(6)
    z = Zone(config(cache_size=0))
    keys = [rng.randbytes(32) for _ in range(12)]
    for i, key in enumerate(keys):
        cands = [Candidate(Endpoint.parse(f"198.51.100.{i}:{1000 + i}"), CandidateKind.PUBLIC, 0)]
        for j in range(i % 6):
            ep = f"[2001:db8::{j}]:{j + 1}" if j % 2 else f"10.0.{i}.{j}:{j + 1}"
            kind = CandidateKind.IPV6 if j % 2 else CandidateKind.LAN
            cands.append(Candidate(Endpoint.parse(ep), kind, rng.choice([5, 10])))
        z.upsert(PublishedPeer(key, "n" * (i * 25), tuple(cands), ("10.1.0.0/16",) * (i % 3),
                               NatKind.CONE, rng.randrange(2**40)))  # fmt: skip
    edns: list[dict[str, Any]] = [{}, {"use_edns": 0}, {"use_edns": 0, "payload": 4096},
                                  {"use_edns": 0, "payload": 600, "want_dnssec": True}]  # fmt: skip
    covered = 0
    for key in keys * 3:
        names = [name(key), name(key).upper(), "lan1." + name(key), "IPV62." + name(key),
                 "_alt." + name(key), "_ALT." + name(key).upper()]  # fmt: skip
        types = ("SRV", "TXT", "A", "AAAA")
        for qname, rdtype, kw, tcp in itertools.product(names, types, edns, (False, True)):
            if kw.get("payload") == 600:  # sizes around where additional data is cut
                kw = {**kw, "payload": rng.randrange(512, 1000)}
            q = dns.message.make_query(qname, rdtype, **kw)
            if rng.random() < 0.3:
                q.flags &= ~dns.flags.RD
            wire = q.to_wire()
            shape = query_shape(wire, tcp)
            assert shape is not None
            found = z._locate(shape.qname)
            fast = None if found is None else z._encoder.answer(wire, shape, tcp, *found)
            if fast is not None:
                covered += 1
                assert fast == z._slow(wire, tcp, shape), (qname, rdtype, kw, tcp)
    assert covered > 500


def test_labels_map_back_to_keys_only_when_canonical() -> None:
    for key in (bytes(32), b"\xff" * 32, K1, os.urandom(32)):
        label = key_label(key).encode()
        assert label_key(label) == key
        assert label_key(label[:51] + b"b====") is None  # the same bits plus a stray one
        assert label_key(label.upper()) is None  # callers lowercase the question first
    bad = key_label(K1).encode()
    for other in (bad[:-1], bad + b"=", bad[:52] + b"a===", b"0" + bad[1:], b"_" + bad[1:],
                  b"+" + bad[1:], bad[:10] + b" " + bad[11:]):  # fmt: skip
        assert label_key(other) is None


def test_cache_is_capped_in_bytes_and_stays_exact() -> None:
    z = Zone(config(cache_bytes=20_000))
    keys = [os.urandom(32) for _ in range(40)]
    for key in keys:
        z.upsert(peer(key))
    for key in keys:
        ask(z, name(key), "SRV")
        ask(z, name(key), "TXT")
    cache = z._cache
    assert 0 < len(cache) < 40 and cache.indexed == len(cache) and cache.bytes <= 20_000
    costs = [len(k) + len(w) + ENTRY_OVERHEAD for k, (w, _) in cache.positive.items()]
    assert cache.bytes == sum(costs)
    last = keys[-1]
    assert ask(z, name(last), "TXT").answer and z.stats.cache_hits == 1
    z.upsert(PublishedPeer(last, "renamed", peer(last).candidates, (), NatKind.CONE, 1))
    assert "name=renamed" in str(ask(z, name(last), "TXT").answer[0])
    assert z.stats.cache_hits == 1 and cache.indexed == len(cache)


def test_each_ns_name_inside_the_zone_gets_its_own_glue() -> None:
    """``--ns ns2.mesh.test=192.0.2.53``: the secondary named inside the zone is served at its
    own address, the registrar's name at ``--ns-address`` (it used to get the registrar's
    address for every in-zone name: Zonemaster's CONSISTENCY05)."""
    z = Zone(ZoneConfig(ORIGIN, ("ns1.mesh.test.", "ns2.mesh.test."), "hostmaster.mesh.test.",
                        ns_addresses=("203.0.113.10",),
                        ns_glue=(("ns2.mesh.test.", ("192.0.2.53", "2001:db8::53")),)))  # fmt: skip

    def rdatas(qname: str, rdtype: str) -> set[str]:
        q = dns.message.make_query(qname, rdtype)
        r = dns.message.from_wire(z.answer(q.to_wire(), tcp=True) or b"")
        return {rd.to_text() for rrset in r.answer for rd in rrset}

    assert rdatas("ns1.mesh.test.", "A") == {"203.0.113.10"}
    assert rdatas("ns2.mesh.test.", "A") == {"192.0.2.53"}
    assert rdatas("ns2.mesh.test.", "AAAA") == {"2001:db8::53"}
    glue = {(r.name.to_text(), rd.to_text()) for r in z.apex_rrsets()[1:] for rd in r}
    assert glue == {("ns1.mesh.test.", "203.0.113.10"), ("ns2.mesh.test.", "192.0.2.53"),
                    ("ns2.mesh.test.", "2001:db8::53")}  # fmt: skip


# -- the packed record: NAT class and since as 9 bytes, written out when read ----------------


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(max_size=70),
    allowed=st.lists(st.sampled_from(("100.64.0.1/32", "10.9.0.0/16", "2001:db8::/64"))),
    nat=st.sampled_from(tuple(NatKind)),
    since=st.integers(-(2**63), 2**63 - 1),
    extra=st.integers(0, 3),
)
def test_a_record_reads_back_the_txt_strings_a_peer_publishes(
    name: str, allowed: list[str], nat: NatKind, since: int, extra: int
) -> None:
    """The TXT strings read from a packed record are the ones the peer publishes, in wgsd's
    order: txtvers, pub, allowed, name, nat, since, alt (the last three derived from 9 packed
    bytes and the targets, not stored as text)."""
    cands = [Candidate(Endpoint.parse(f"198.51.100.7:{4000 + i}"), CandidateKind.LAN, 10 + i)
             for i in range(extra)]  # fmt: skip
    published = replace(peer(K1, 51820, False, *cands), name=name, allowed_ips=tuple(allowed),
                        nat=nat, since=since)  # fmt: skip
    record = _record(published)
    targets, tail = unpack_record(record)
    expected = [b"txtvers=1", b"pub=" + base64.b64encode(K1)]
    if allowed:
        expected.append(f"allowed={','.join(allowed)}".encode()[:255])
    if name:
        expected.append(f"name={name}".encode()[:255])
    expected += [f"nat={nat.value}".encode(), f"since={since}".encode()]
    if extra:
        expected.append(f"alt={extra}".encode())
    assert txt_strings(K1, tail) == expected and len(targets) == 1 + extra
    stored = expected[2 : 2 + bool(allowed) + bool(name)]  # the only strings kept as text
    size = 1 + sum(1 + len(t.label) + 5 + len(t.ip) for t in targets) + 9
    assert len(record) == size + sum(1 + len(t) for t in stored)


def test_a_since_past_64_bits_is_refused_before_the_zone_changes() -> None:
    z = zone()
    before = z.record_of(K1)
    with pytest.raises(ValueError, match="since"):
        z.upsert(replace(peer(K1), since=2**63))
    assert z.record_of(K1) == before
