"""DNS-SD answers -> PeerRecord (wgmesh.proto.records), pure and against the real DNS adapter."""

from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dnssd import K1, K2, K3, ORIGIN, ask, config, peer, zone
from wgmesh.daemon.resolver import ZoneResolver
from wgmesh.errors import RemoteProtocolError
from wgmesh.proto.dnssd import Candidate, Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.punch import Hint
from wgmesh.proto.records import (
    browse_keys,
    instance_name,
    peer_record,
    read_srv_answer,
    service_name,
)
from wgmesh.registry.dns import start_dns

ORIGIN_NAME = dns.name.from_text(ORIGIN)
V6 = Candidate(Endpoint.parse("[2001:db8::7]:51821"), CandidateKind.IPV6, 5)


def record_from_zone(z: Zone, key: bytes, **kw: object):  # type: ignore[no-untyped-def]
    name = instance_name(key, ORIGIN_NAME)
    answer = read_srv_answer(name, ask(z, str(name), "SRV", **kw))
    assert answer is not None
    return answer, name


def test_a_whole_answer_gives_the_whole_record() -> None:
    z = Zone(config())
    z.upsert(peer(K1, 51820, True, V6))
    answer, _ = record_from_zone(z, K1, use_edns=0, payload=1232)
    assert answer.missing_targets == () and answer.txt is not None
    record = peer_record(K1, answer)
    assert set(record.hints) == {
        Hint(Endpoint.parse("198.51.100.7:51820"), CandidateKind.PUBLIC, 0),
        Hint(Endpoint.parse("10.0.0.7:51820"), CandidateKind.LAN, 10),
        Hint(Endpoint.parse("[2001:db8::7]:51821"), CandidateKind.IPV6, 5),
    }
    assert record.name == "alice" and record.allowed_ips == ("100.64.0.1/32",)
    assert record.nat is NatKind.CONE and record.since == 1700000000


def test_what_the_answer_left_out_is_asked_for_and_merged() -> None:
    """Nine candidates, asked without EDNS (the 512-byte answer holds the public SRV and its
    address only) and at EDNS 1232 (as the daemon asks: the registrar leaves out additional
    data to fit): the record still comes out whole once the TXT, the alternates' SRVs and the
    missing addresses are asked for, as the resolver asks them."""
    z = Zone(config())
    lans = [Candidate(Endpoint.parse(f"10.0.{i}.7:51820"), CandidateKind.LAN, 10) for i in range(8)]
    z.upsert(peer(K1, 51820, False, *lans))
    for kw in ({}, {"use_edns": 0, "payload": 1232}):
        answer, name = record_from_zone(z, K1, **kw)
        assert [(s.target, s.port) for s in answer.srvs] == [(name, 51820)]  # the rest cut
        if answer.txt is None:
            assert not answer.missing_alternates  # not known yet: the TXT says
            answer = answer.with_txt(ask(z, str(name), "TXT"))
        assert answer.missing_alternates and answer.txt is not None and answer.txt["alt"] == "8"
        answer = answer.with_alternates(ask(z, str(answer.alternates_name), "SRV", tcp=True))
        assert not answer.missing_alternates and len(answer.srvs) == 9
        for target in answer.missing_targets:
            answer = answer.with_addresses(
                target, (ask(z, str(target), "A"), ask(z, str(target), "AAAA"))
            )
        assert answer.missing_targets == ()
        record = peer_record(K1, answer)
        assert len(record.hints) == 9 and record.name == "alice"
        assert sorted(h.endpoint.port for h in record.hints) == [51820] * 9
    alternates = instance_name(K1, ORIGIN_NAME).concatenate(dns.name.empty)
    with pytest.raises(RemoteProtocolError, match="truncated"):  # over UDP: TC, not "none"
        answer.with_alternates(ask(z, "_alt." + str(alternates), "SRV"))


def test_every_srv_at_the_instance_name_still_reads() -> None:
    """A registrar from before the alternates' name listed every SRV at the instance name."""
    name = instance_name(K1, ORIGIN_NAME)
    lan = dns.name.Name((b"lan1",)).concatenate(name)
    srv = dns.rrset.from_text(name, 0, "IN", "SRV", f"0 0 1 {name}", f"10 0 2 {lan}")
    a = dns.rrset.from_text(name, 0, "IN", "A", "192.0.2.1")
    a2 = dns.rrset.from_text(lan, 0, "IN", "A", "10.0.0.2")
    txt = dns.rrset.from_text(name, 0, "IN", "TXT", '"txtvers=1"')
    answer = read_srv_answer(name, _answer(name, srv, a, a2, txt))
    assert answer is not None and not answer.missing_alternates and not answer.missing_targets
    assert {h.endpoint.port for h in peer_record(K1, answer).hints} == {1, 2}


def _answer(name: dns.name.Name, *rrsets: dns.rrset.RRset, rcode: int = 0) -> dns.message.Message:
    m = dns.message.make_response(dns.message.make_query(name, "SRV"))
    m.set_rcode(rcode)
    for rrs in rrsets:
        (m.additional if rrs.rdtype != dns.rdatatype.SRV else m.answer).append(rrs)
    return m


def test_negative_and_failed_answers() -> None:
    name = instance_name(K1, ORIGIN_NAME)
    assert read_srv_answer(name, _answer(name, rcode=dns.rcode.NXDOMAIN)) is None
    assert read_srv_answer(name, _answer(name)) is None  # NODATA
    with pytest.raises(RemoteProtocolError, match="SERVFAIL"):
        read_srv_answer(name, _answer(name, rcode=dns.rcode.SERVFAIL))


def test_a_record_whose_pub_names_another_key_is_ignored() -> None:
    """A forged TXT under K1's name whose ``pub=`` names K2 (an attacker's key): the record is
    refused whole (the daemon's lookup fails and the planner keeps what it had), so nothing
    read under one key's name can speak for another key. The same answer with K1's own
    ``pub=`` reads."""
    name = instance_name(K1, ORIGIN_NAME)
    srv = dns.rrset.from_text(name, 0, "IN", "SRV", f"0 0 51820 {name}")
    a = dns.rrset.from_text(name, 0, "IN", "A", "192.0.2.66")
    for pub, ok in ((encode_key(K2), False), (encode_key(K1), True)):
        txt = dns.rrset.from_text(name, 0, "IN", "TXT", f'"pub={pub}"', '"allowed=0.0.0.0/0"')
        answer = read_srv_answer(name, _answer(name, srv, a, txt))
        assert answer is not None
        if ok:
            assert peer_record(K1, answer).key == K1
        else:
            with pytest.raises(RemoteProtocolError, match="pub= names another key"):
                peer_record(K1, answer)


def test_targets_of_unknown_kind_and_bad_fields_are_left_out() -> None:
    name = instance_name(K1, ORIGIN_NAME)
    odd = dns.name.Name((b"relay1",)).concatenate(name)
    lan0 = dns.name.Name((b"lan0",)).concatenate(name)  # index 0 is never a target label
    srv = dns.rrset.from_text(
        name, 0, "IN", "SRV", f"0 0 1 {name}", f"10 0 2 {odd}", f"10 0 3 {lan0}"
    )
    a = dns.rrset.from_text(name, 0, "IN", "A", "192.0.2.1")
    a2 = dns.rrset.from_text(odd, 0, "IN", "A", "192.0.2.2")
    txt = dns.rrset.from_text(name, 0, "IN", "TXT", '"nat=sideways"', '"since=12x"', '"NAME=b"')
    answer = read_srv_answer(name, _answer(name, srv, a, a2, txt))
    assert answer is not None
    record = peer_record(K1, answer)
    assert record.hints == (Hint(Endpoint.parse("192.0.2.1:1"), CandidateKind.PUBLIC, 0),)
    assert record.nat is NatKind.UNKNOWN and record.since == 0 and record.name == "b"


def test_candidate_kinds_round_trip_through_target_labels() -> None:
    for kind in CandidateKind:
        for i in (1, 2, 9, 10, 255):
            assert CandidateKind.of_target_label(kind.target_label(i)) is kind
    for label in ("", "lan", "lan01", "ipv6", "lan1x", "relay1", "lan-1", "LAN1", "lan\u0661"):
        assert CandidateKind.of_target_label(label) is None, label


_names = st.sampled_from(
    [instance_name(K1, ORIGIN_NAME), dns.name.from_text("lan1", instance_name(K1, ORIGIN_NAME)),
     dns.name.from_text("x.example."), service_name(ORIGIN_NAME)]
)  # fmt: skip
_rdata = st.one_of(
    st.tuples(st.just("A"), st.sampled_from(["192.0.2.1", "10.0.0.1"])),
    st.tuples(st.just("AAAA"), st.sampled_from(["2001:db8::1", "::1"])),
    st.tuples(st.just("TXT"), st.text(max_size=20).map(lambda t: '"' + t.replace('"', "") + '"')),
    st.tuples(st.just("SRV"), st.tuples(st.integers(0, 65535), st.integers(0, 65535), _names).map(
        lambda t: f"{t[0]} 0 {t[1]} {t[2]}")),
    st.tuples(st.just("PTR"), _names.map(str)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, _rdata), max_size=12), st.sampled_from([0, 2, 3, 5]))
def test_any_answer_gives_a_record_or_a_clear_error(
    records: list[tuple[dns.name.Name, tuple[str, str]]], rcode: int
) -> None:
    name = instance_name(K1, ORIGIN_NAME)
    m = dns.message.make_response(dns.message.make_query(name, "SRV"))
    m.set_rcode(rcode)
    for owner, (rdtype, text) in records:
        try:
            rrs = dns.rrset.from_text(owner, 0, "IN", rdtype, text)
        except Exception:  # text hypothesis made that dnspython refuses
            continue
        m.answer.append(rrs) if rdtype in ("SRV", "PTR") else m.additional.append(rrs)
    try:
        answer = read_srv_answer(name, m)
    except RemoteProtocolError:
        assert rcode not in (0, 3)
        return
    if answer is not None:
        record = peer_record(K1, answer)
        assert all(isinstance(h.kind, CandidateKind) for h in record.hints)
    assert all(len(k) == 32 for k in browse_keys(m))


async def test_resolver_reads_the_running_dns_server() -> None:
    """The IO half against the real DNS adapter on loopback: lookups, a peer it does not
    know, and a browse."""
    z = zone()
    z.upsert(peer(K3, 4000, True, V6))
    server = await start_dns(z, "127.0.0.1", 0)
    try:
        resolver = ZoneResolver(ORIGIN, Endpoint.parse(f"127.0.0.1:{server.udp_port}"))
        record = await resolver.lookup(K3)
        assert record is not None and len(record.hints) == 3
        assert {h.kind for h in record.hints} == set(CandidateKind)
        assert await resolver.lookup(bytes(32)) is None
        assert sorted(await resolver.browse()) == sorted([K1, K2, K3])
    finally:
        server.close()
        await server.wait_closed()


async def test_the_resolver_proves_itself_with_a_dns_cookie() -> None:
    """The registrar caps answers to unproven sources at 512 bytes (wgmesh.proto.rrl); the
    resolver echoes the server cookie, so from its second query on a peer with nine candidates
    comes back whole over UDP, with no TCP retry."""
    z = Zone(config())
    lans = [Candidate(Endpoint.parse(f"10.0.{i}.7:51820"), CandidateKind.LAN, 10) for i in range(8)]
    z.upsert(peer(K1, 51820, False, *lans))
    server = await start_dns(z, "127.0.0.1", 0)
    try:
        resolver = ZoneResolver(ORIGIN, Endpoint.parse(f"127.0.0.1:{server.udp_port}"))
        first = await resolver.lookup(K1)
        assert resolver._server_cookie  # learnt from the first answer
        good = server.stats.rrl.cookie_good
        capped = server.stats.rrl.capped
        again = await resolver.lookup(K1)
        assert first is not None and again is not None and len(again.hints) == 9
        assert server.stats.rrl.cookie_good > good and server.stats.rrl.capped == capped
    finally:
        server.close()
        await server.wait_closed()
