"""Outgoing zone transfers and NOTIFY: pure (plans, messages pumped into dnspython's own
secondary code, TSIG, the journal, the NOTIFY schedule, key files) and on loopback against the
real DNS server, with dnspython as the secondary."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.xfr
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dnssd import K1, K3, ORIGIN, config, peer
from wgmesh.errors import ConfigError
from wgmesh.proto import xfr
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.journal import Journal, next_serial, serial_newer
from wgmesh.proto.keys import key_label
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.notify import Notifier, NotifyConfig, is_notify_response, notify_message
from wgmesh.proto.tsigkey import TsigKey, parse_key_file
from wgmesh.registry.dns import DnsServer, start_dns
from wgmesh.registry.xfr import XfrService, XfrSettings

SECRET = "d9NM5is+ktHzOPgemJzYquzcHtJML+IH1tvzNUGY8q8="
KEY_FILE = f'key "xfr.mesh.test" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'
KEY = parse_key_file(KEY_FILE)
OTHER = TsigKey("xfr.mesh.test.", "hmac-sha256", os.urandom(32))  # same name, wrong secret


def keyring(key: TsigKey | None) -> dict[dns.name.Name, dns.tsig.Key] | None:
    return None if key is None else {dns.name.from_text(key.name): key.dns_key()}


def secondary() -> dns.zone.Zone:
    return dns.zone.Zone(ORIGIN, relativize=False)


def pump(z: Zone, into: dns.zone.Zone, serial: int | None = None, size: int = 600) -> xfr.Plan:
    """One transfer, from ``z`` to dnspython's secondary code, signed with KEY, in messages of
    ``size`` bytes (small: many messages)."""
    ring = keyring(KEY)
    q = dns.xfr.make_query(into, serial=serial, keyring=ring, keyname=KEY.name)[0]
    q = dns.message.from_wire(q.to_wire(), keyring=ring)
    decided = xfr.plan(z, q)
    assert isinstance(decided, xfr.Plan)
    key, mac, ctx = KEY.dns_key(), q.mac, None
    rdtype = q.question[0].rdtype
    tsig_ctx = None
    with dns.xfr.Inbound(into, rdtype, serial) as inbound:
        wires = xfr.messages(z, xfr.rrsets(z, decided), q.id, (z.origin, rdtype), size,
                             xfr.tsig_size(key))  # fmt: skip
        for wire in wires:
            assert len(wire) + xfr.tsig_size(key) <= size
            signed, _, ctx = xfr.sign(wire, key, int(time.time()), mac, ctx)
            mac = b""
            m = dns.message.from_wire(signed, keyring=ring, request_mac=q.mac, xfr=True,
                                      tsig_ctx=tsig_ctx, multi=True,
                                      one_rr_per_rrset=rdtype == dns.rdatatype.IXFR)  # fmt: skip
            tsig_ctx = m.tsig_ctx
            done = inbound.process_message(m)
        assert done
    return decided


def axfr_of(z: Zone, size: int = 600) -> dns.zone.Zone:
    copy = secondary()
    pump(z, copy, size=size)
    return copy


def serial_of(copy: dns.zone.Zone) -> int:
    soa = copy.get_rdataset(copy.origin, "SOA")
    assert soa is not None
    return int(next(iter(soa)).serial)


def big_zone(n: int = 12) -> tuple[Zone, list[bytes]]:
    z = Zone(config())
    keys = [bytes([i]) * 32 for i in range(1, n + 1)]
    for i, key in enumerate(keys):
        z.upsert(peer(key, 1000 + i, i % 2 == 0))
    z.publish(0.0)
    return z, keys


# -- pure ----------------------------------------------------------------------------------


def test_axfr_holds_the_zone_as_its_answers_show_it() -> None:
    z, keys = big_zone()
    v6 = Candidate(Endpoint.parse("[2001:db8::7]:51821"), CandidateKind.IPV6, 5)
    public6 = Candidate(Endpoint.parse("[2001:db8::9]:7"), CandidateKind.PUBLIC, 0)
    z.upsert(PublishedPeer(K1, "none yet", (), (), NatKind.UNKNOWN, 0))  # no endpoint
    z.upsert(peer(K3, 9, True, v6))
    z.upsert(PublishedPeer(bytes(32), "v6", (public6, v6), (), NatKind.NONE, 1))
    keys += [K1, K3, bytes(32)]
    z.publish(5.0)
    copy = secondary()
    p = pump(z, copy, size=700)
    assert p.kind is xfr.Kind.AXFR and serial_of(copy) == z.serial == 3
    ptrs = copy.get_rdataset(z.service, "PTR")
    assert ptrs is not None and len(ptrs) == 14  # not the peer without an endpoint
    assert copy == axfr_of(z, size=16383)  # the same in a few big messages
    first = dns.name.from_text(ORIGIN)
    assert copy.get_rdataset(first, "NS") is not None
    # every RRset the zone answers with is in the copy, exactly
    for key in keys:
        for rrs in z.peer_rrsets(key, z._peers[key]):
            have = copy.get_rdataset(rrs.name, rrs.rdtype)
            assert have is not None and set(rrs) <= set(have) and have.ttl == 5
            assert rrs.rdtype == dns.rdatatype.PTR or set(have) == set(rrs)


def test_ixfr_brings_a_copy_to_what_an_axfr_gives() -> None:
    z, keys = big_zone()
    copy = axfr_of(z)
    start = z.serial
    z.upsert(peer(keys[0], 4444))  # moved
    z.publish(10.0)
    z.remove(keys[1])  # withdrawn
    z.upsert(peer(K3, 7))  # added
    z.upsert(peer(keys[2], 1002, False))  # lost its LAN candidate
    z.publish(11.0)
    p = pump(z, copy, serial=start)
    assert p.kind is xfr.Kind.IXFR and [(d.start, d.end) for d in p.deltas] == [(2, 3), (3, 4)]
    assert copy == axfr_of(z) and serial_of(copy) == 4
    assert pump(z, copy, serial=4).kind is xfr.Kind.CURRENT  # up to date: the SOA alone
    newer = dns.message.make_query(ORIGIN, "IXFR")
    newer.authority.append(z.soa(next_serial(z.serial)))  # a client ahead of us: the SOA too
    assert xfr.plan(z, newer) == xfr.Plan(xfr.Kind.CURRENT, 4, 5)


def test_ixfr_falls_back_to_the_whole_zone() -> None:
    z, keys = big_zone(70)
    copy = axfr_of(z)
    z.set_serial(50)  # a restart: the journal starts over
    z.upsert(peer(keys[0], 9))
    z.publish(1.0)
    p = pump(z, copy, serial=2)  # older than the journal
    assert p.kind is xfr.Kind.IXFR_FULL and copy == axfr_of(z) and serial_of(copy) == 51
    for key in keys[5:]:  # more changes than peers: the whole zone is smaller
        z.upsert(peer(key, 7))
    for key in keys[:5]:
        z.remove(key)
    z.publish(5.0)
    assert pump(z, copy, serial=51).kind is xfr.Kind.IXFR_FULL and copy == axfr_of(z)


def test_transfers_hold_the_browse_ptrs_one_answer_lists() -> None:
    """An RRset must fit in one message for a secondary to serve it (and Knot to transfer it
    on): the zone's PTRs in a transfer are those its browse answer lists, the first peers."""
    z = Zone(config(browse_limit=5))
    keys = [bytes([i]) * 32 for i in range(1, 10)]
    for i, key in enumerate(keys):
        z.upsert(peer(key, 1000 + i))
    z.publish(0.0)
    assert z.published_listing == tuple(keys[:5]) == z.listing()
    copy = axfr_of(z)
    ptrs = copy.get_rdataset(z.service, "PTR")
    assert ptrs is not None and {str(rd.target) for rd in ptrs} == {
        f"{key_label(k)}._wireguard._udp.{ORIGIN}" for k in keys[:5]}  # fmt: skip
    assert copy.get_rdataset(dns.name.from_text(f"{key_label(keys[8])}.{z.service}"), "SRV")
    z.remove(keys[1])  # a listed peer goes: the next one is listed
    z.upsert(peer(keys[7], 1))  # an unlisted one changes: no PTR change
    delta = z.publish(1.0)
    assert delta is not None and delta.listed == (keys[5],) and delta.unlisted == (keys[1],)
    p = pump(z, copy, serial=2)
    assert p.kind is xfr.Kind.IXFR and copy == axfr_of(z)
    assert len(copy.get_rdataset(z.service, "PTR") or ()) == 5


def test_a_transfer_is_the_zone_at_its_serial_not_the_changes_held_back() -> None:
    z, keys = big_zone()
    z.upsert(peer(keys[0], 4444))  # within the serial interval: not published yet
    z.remove(keys[1])
    z.upsert(peer(K3))
    assert z.next_publish() == 1.0
    before = axfr_of(z)
    assert serial_of(before) == 2 and len(before.get_rdataset(z.service, "PTR") or ()) == 12
    z.publish(1.0)
    p = pump(z, before, serial=2)
    assert p.kind is xfr.Kind.IXFR and before == axfr_of(z)


def test_refusals_and_the_cheap_sniff() -> None:
    z, _ = big_zone(1)
    axfr = dns.message.make_query(ORIGIN, "AXFR")
    other = dns.message.make_query("other.test.", "AXFR")
    chaos = dns.message.make_query(ORIGIN, "AXFR", rdclass="CH")
    no_soa = dns.message.make_query(ORIGIN, "IXFR")
    assert xfr.plan(z, other) == xfr.plan(z, chaos) == dns.rcode.NOTAUTH
    assert xfr.plan(z, no_soa) == dns.rcode.FORMERR
    assert xfr.transfer_query(axfr.to_wire()) == xfr.AXFR
    assert xfr.transfer_query(no_soa.to_wire()) == xfr.IXFR
    assert xfr.transfer_query(dns.message.make_query(ORIGIN, "SOA").to_wire()) == 0
    response = dns.message.make_response(axfr).to_wire()
    assert xfr.transfer_query(response) == 0 and xfr.transfer_query(b"\0" * 12) == 0
    for n in range(40):  # never raises on garbage
        xfr.transfer_query(os.urandom(n))


def test_one_rrset_too_large_for_a_message_is_split() -> None:
    z, _ = big_zone(40)
    big = z.browse_ptr([key for key, _ in z.published_peers()])
    assert len(big) == 40
    wires = list(xfr.messages(z, [big], 1, (z.origin, xfr.AXFR), 600))
    assert len(wires) > 2 and all(len(w) <= 600 for w in wires)
    got = sum(len(rrs) for w in wires for rrs in dns.message.from_wire(w).answer)
    assert got == 40


def test_journal_caps_and_serial_arithmetic() -> None:
    _, keys = big_zone()
    assert serial_newer(1, 2**32 - 1) and not serial_newer(2**32 - 1, 1)
    assert next_serial(2**32 - 1) == 1
    j = Journal(5, max_deltas=3, max_bytes=10_000)
    z2 = Zone(config(journal_size=3, journal_bytes=2000), serial=2**32 - 2)
    for i in range(6):
        z2.upsert(peer(K1, 100 + i))
        assert z2.publish(float(i)) is not None
    assert len(z2.journal) == 3 and z2.journal.oldest == 2 and z2.serial == 5  # wrapped, no 0
    assert z2.journal.since(2) is not None and z2.journal.since(1) is None
    assert z2.journal.since(z2.serial) == () and j.since(5) == ()
    for key in keys:  # a delta larger than the byte cap empties the journal
        z2.upsert(peer(key, 1))
    z2.publish(10.0)
    assert len(z2.journal) == 0 and z2.journal.since(5) is None and z2.journal.oldest == 6


def test_tsig_signatures_verify_in_dnspython_and_chain() -> None:
    key = KEY.dns_key()
    q = dns.message.make_query(ORIGIN, "SOA")
    q.use_tsig(keyring(KEY), KEY.name)
    q = dns.message.from_wire(q.to_wire(), keyring=keyring(KEY))
    r = dns.message.make_response(q)
    plain = dns.message.make_response(dns.message.make_query(ORIGIN, "SOA"))
    plain.id = q.id
    signed, mac, _ = xfr.sign(plain.to_wire(), key, int(time.time()), q.mac)
    back = dns.message.from_wire(signed, keyring=keyring(KEY), request_mac=q.mac)
    assert back.had_tsig and back.mac == mac and r.id == back.id
    with pytest.raises(dns.tsig.BadSignature):
        dns.message.from_wire(signed, keyring=keyring(OTHER), request_mac=q.mac)
    with pytest.raises(dns.tsig.BadTime):
        old, _, _ = xfr.sign(plain.to_wire(), key, int(time.time()) - 3600, q.mac)
        dns.message.from_wire(old, keyring=keyring(KEY), request_mac=q.mac)
    assert xfr.tsig_size(key) == len(signed) - len(plain.to_wire())


def test_key_files() -> None:
    assert (KEY.name, KEY.algorithm, len(KEY.secret)) == ("xfr.mesh.test.", "hmac-sha256", 32)
    odd = f'# x\nkey XFR.Mesh.Test {{ algorithm "HMAC-SHA512" ; /* x */ secret "{SECRET}";}};'
    assert parse_key_file(odd) == TsigKey("xfr.mesh.test.", "hmac-sha512", KEY.secret)
    bad = {
        "": "no key statement",
        "garbage": "not a key statement",
        f'key a {{ secret "{SECRET}"; }};': "no algorithm",
        "key a { algorithm hmac-sha256; };": "no secret",
        f'key a {{ algorithm hmac-md5; secret "{SECRET}"; }};': "'hmac-md5' is not supported",
        'key a { algorithm hmac-sha256; secret "!!"; };': "not base64",
        'key a { algorithm hmac-sha256; secret "YWJj"; };': "3 bytes",
        KEY_FILE + KEY_FILE: "more than one key",
        f'key a {{ algorithm hmac-sha256; secret "{SECRET}"; x y; }};': "unknown field 'x'",
        f'key a {{ algorithm hmac-sha256; algorithm hmac-sha1; secret "{SECRET}"; }};': "twice",
        f'key "a..b" {{ algorithm hmac-sha256; secret "{SECRET}"; }};': "not a DNS name",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_key_file(text)


def test_notify_schedule_retries_then_gives_up() -> None:
    a, b = Endpoint.parse("192.0.2.1:53"), Endpoint.parse("[2001:db8::1]:5300")
    ids = iter(range(1000))
    n = Notifier([a, b, a], lambda: next(ids), NotifyConfig(first_retry=1, max_retry=3, attempts=4))
    assert n.next_timer() is None and n.due(0.0) == []
    n.notify(7, 100.0)
    first = n.due(100.0)
    assert [(x.secondary, x.serial, x.attempt) for x in first] == [(a, 7, 1), (b, 7, 1)]
    assert n.next_timer() == 101.0 and n.due(100.5) == []
    assert n.acknowledged(a, first[0].qid) and not n.acknowledged(a, first[0].qid)
    assert not n.acknowledged(b, 999)  # a wrong id ends nothing
    times = []
    for t in (101.0, 103.0, 106.0):  # 1, 2, then 3 s (the cap)
        (retry,) = n.due(t)
        times.append((t, retry.attempt))
    assert times == [(101.0, 2), (103.0, 3), (106.0, 4)] and n.failed() == []
    assert n.due(109.0) == [] and n.failed() == [(b, 7)] and n.next_timer() is None
    assert (n.stats.sent, n.stats.retried, n.stats.acknowledged, n.stats.given_up) == (2, 3, 1, 1)
    n.notify(8, 200.0)
    n.notify(9, 200.5)  # a newer serial replaces the one in flight
    assert {x.serial for x in n.due(200.5)} == {9}


def test_notify_message() -> None:
    z, _ = big_zone(1)
    wire = notify_message(z.origin, z.soa(z.serial), 0x1234)
    m = dns.message.from_wire(wire)
    assert m.opcode() == dns.opcode.NOTIFY and m.flags & dns.flags.AA and m.id == 0x1234
    assert m.question[0].rdtype == dns.rdatatype.SOA and m.answer[0][0].serial == z.serial
    response = dns.message.make_response(m).to_wire()
    assert is_notify_response(response) == 0x1234 and is_notify_response(wire) is None


# -- on loopback ----------------------------------------------------------------------------


@dataclass
class Primary:
    server: DnsServer
    service: XfrService
    zone: Zone

    @property
    def port(self) -> int:
        return self.server.tcp_port


@pytest.fixture
async def primary() -> AsyncIterator[Primary]:
    z, _ = big_zone()
    secondaries = (Endpoint.parse("127.0.0.1:9"),)  # the allow-list: 127.0.0.1 (port unused)
    service = XfrService(z, XfrSettings(secondaries, KEY))
    server = await start_dns(z, "127.0.0.1", 0, xfr=service)
    yield Primary(server, service, z)
    server.close()
    await server.wait_closed()


async def inbound(
    p: Primary, into: dns.zone.Zone, key: TsigKey | None, serial: int | None = None,
    source: str = "127.0.0.1",
) -> None:  # fmt: skip
    q = dns.xfr.make_query(into, serial=serial, keyring=keyring(key),
                           keyname=None if key is None else key.name)[0]  # fmt: skip
    await dns.asyncquery.inbound_xfr("127.0.0.1", into, q, port=p.port, timeout=5, source=source)


async def test_dnspython_transfers_with_tsig_over_tcp(primary: Primary) -> None:
    copy = secondary()
    await inbound(primary, copy, KEY)
    assert copy == axfr_of(primary.zone) and primary.service.stats.axfr == 1
    primary.zone.upsert(peer(K1, 4321))
    primary.zone.publish(10.0)
    await inbound(primary, copy, KEY, serial=2)
    assert copy == axfr_of(primary.zone) and primary.service.stats.ixfr == 1
    assert primary.service.stats.messages >= 2 and primary.service.stats.bytes > 1000
    # the zone's other answers on the same server are untouched
    r = await dns.asyncquery.tcp(dns.message.make_query(ORIGIN, "SOA"), "127.0.0.1",
                                 port=primary.port, timeout=2)  # fmt: skip
    assert r.answer[0][0].serial == 3


async def test_transfers_without_the_right_key_or_address_are_refused(primary: Primary) -> None:
    stats = primary.service.stats
    with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
        await inbound(primary, secondary(), None)  # unsigned
    assert stats.refused_unsigned == 1
    with pytest.raises(dns.exception.DNSException):  # NOTAUTH, BADSIG (its TSIG unsigned)
        await inbound(primary, secondary(), OTHER)
    with pytest.raises(dns.exception.DNSException):  # NOTAUTH, BADKEY
        await inbound(primary, secondary(), TsigKey("nope.", "hmac-sha256", KEY.secret))
    assert stats.tsig_failed == 2
    with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
        await inbound(primary, secondary(), KEY, source="127.0.0.2")  # not a secondary
    assert stats.refused_address == 1 and stats.axfr == 0
    # the BADSIG answer as it is on the wire: NOTAUTH, an unsigned TSIG naming the error
    q = dns.message.make_query(ORIGIN, "AXFR")
    q.use_tsig(keyring(OTHER), OTHER.name)
    reader, writer = await asyncio.open_connection("127.0.0.1", primary.port)
    wire = q.to_wire()
    writer.write(len(wire).to_bytes(2, "big") + wire)
    length = int.from_bytes(await reader.readexactly(2), "big")
    r = dns.message.from_wire(await reader.readexactly(length), keyring=False)
    writer.close()
    assert r.rcode() == dns.rcode.NOTAUTH and r.tsig is not None
    assert r.tsig[0].error == dns.rcode.BADSIG and r.tsig[0].mac == b""


async def test_signed_queries_are_answered_signed(primary: Primary) -> None:
    for rdtype, tcp in (("SOA", False), ("SOA", True), ("IXFR", False)):
        q = dns.message.make_query(ORIGIN, rdtype)
        if rdtype == "IXFR":
            q.authority.append(primary.zone.soa(1))
        q.use_tsig(keyring(KEY), KEY.name)
        send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        r = await send(q, "127.0.0.1", port=primary.port, timeout=2)
        assert r.had_tsig and r.answer[0][0].serial == primary.zone.serial and r.answer[0].name
        assert r.flags & dns.flags.AA
    q = dns.message.make_query(ORIGIN, "SOA")
    q.use_tsig(keyring(OTHER), OTHER.name)
    wire = await asyncio.to_thread(udp_exchange, q.to_wire(), primary.port)
    r = dns.message.from_wire(wire, keyring=False)
    assert r.rcode() == dns.rcode.NOTAUTH and r.tsig is not None
    assert r.tsig[0].error == dns.rcode.BADSIG
    assert primary.service.stats.signed_answered == 2 and primary.service.stats.current == 1


def udp_exchange(wire: bytes, port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recvfrom(65535)[0]


async def test_notify_is_sent_signed_retried_and_stops_when_answered() -> None:
    """A fake secondary on loopback: it ignores the first NOTIFY and answers the retry."""
    z, _ = big_zone(2)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Fake(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            got.put_nowait((data, addr))

    transport, _ = await loop.create_datagram_endpoint(Fake, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    settings = XfrSettings((Endpoint.parse(f"127.0.0.1:{port}"),), KEY,
                           NotifyConfig(first_retry=0.2, attempts=3))  # fmt: skip
    service = XfrService(z, settings)
    await service.start("127.0.0.1")
    try:
        sent = time.monotonic()
        service.notify(z.serial)
        data, addr = await asyncio.wait_for(got.get(), 2)
        m = dns.message.from_wire(data, keyring=keyring(KEY))  # signed with the key
        assert m.opcode() == dns.opcode.NOTIFY and m.answer[0][0].serial == z.serial
        data, addr = await asyncio.wait_for(got.get(), 2)  # not answered: retried
        assert time.monotonic() - sent >= 0.19
        m2 = dns.message.from_wire(data, keyring=keyring(KEY))
        response = dns.message.make_response(m2)
        transport.sendto(response.to_wire(), addr)
        await asyncio.sleep(0.7)  # past the next retry (0.4 s later): none came
        assert got.empty() and service.notifier.in_flight == 0
        assert service.notifier.stats.acknowledged == 1 and service._timer is None
        service.notify(next_serial(z.serial))  # unanswered: given up after 3 tries
        for _ in range(3):
            await asyncio.wait_for(got.get(), 2)
        await asyncio.sleep(1.0)
        assert service.notifier.stats.given_up == 1 and service._timer is None
    finally:
        service.close()
        transport.close()


def test_every_transfer_counter_has_a_family() -> None:
    """Each XfrStats and NotifyStats field moves a metric (Registrar.metrics maps them)."""
    from dataclasses import fields

    from wgmesh.proto.metrics import render
    from wgmesh.proto.notify import NotifyStats
    from wgmesh.registry.xfr import XfrStats, xfr_metrics

    z, _ = big_zone(1)
    service = XfrService(z, XfrSettings((Endpoint.parse("127.0.0.1:53"),), KEY))
    zero = render(xfr_metrics("p_", z, service))
    for stats, kind in ((service.stats, XfrStats), (service.notifier.stats, NotifyStats)):
        for f in fields(kind):
            if f.name == "failures":
                continue
            setattr(stats, f.name, 7)
            assert render(xfr_metrics("p_", z, service)) != zero, f.name
            setattr(stats, f.name, 0)
    assert "p_xfr_transfers_total" in zero and "p_zone_journal_deltas" in zero
    assert render(xfr_metrics("p_", z, None)).count("\n") == zero.count("\n")


def test_the_registrar_command_serves_transfers_to_its_secondaries(tmp_path: Path) -> None:
    """The flags end to end: wgmesh registrar --secondary --tsig-key, a signed AXFR and IXFR
    by dnspython, an unsigned one refused."""
    from tests.procs import registrar

    key_file = tmp_path / "xfr.key"
    key_file.write_text(KEY_FILE)
    flags = ["--open", "--secondary", "127.0.0.1:9", "--tsig-key", str(key_file)]
    with registrar(tmp_path, flags) as r:
        copy = secondary()
        dns.query.inbound_xfr(
            "127.0.0.1",
            copy,
            dns.xfr.make_query(copy, keyring=keyring(KEY), keyname=KEY.name)[0],
            port=r.dns_port,
            timeout=5,
        )
        assert serial_of(copy) >= 1 and copy.get_rdataset(copy.origin, "NS") is not None
        q = dns.xfr.make_query(copy, serial=serial_of(copy), keyring=keyring(KEY),
                               keyname=KEY.name)[0]  # fmt: skip
        dns.query.inbound_xfr("127.0.0.1", copy, q, port=r.dns_port, timeout=5)  # current
        with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
            dns.query.inbound_xfr("127.0.0.1", secondary(), port=r.dns_port, timeout=5)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 4), st.integers(0, 300), st.integers(1, 255), st.booleans())
def test_hostile_queries_only_ever_get_an_answer_or_nothing(
    which: int, pos: int, xor: int, tcp: bool
) -> None:
    """Signed, transfer and NOTIFY-shaped queries with one byte flipped: the answer function
    returns bytes or None and never raises; the sniff never raises either."""
    z, _ = big_zone(2)
    service = XfrService(z, XfrSettings((Endpoint.parse("127.0.0.1:53"),), KEY))
    q = dns.message.make_query(ORIGIN, ["SOA", "IXFR", "AXFR", "SRV", "SOA"][which])
    if which == 1:
        q.authority.append(z.soa(1))
    if which != 3:
        q.use_tsig(keyring(KEY if which != 4 else OTHER), KEY.name)
    data = bytearray(q.to_wire())
    data[pos % len(data)] ^= xor
    out = service.answer(bytes(data), tcp=tcp)
    assert out is None or isinstance(out, bytes)
    if service.is_transfer(bytes(data)):  # the TCP transfer path, up to the messages
        parsed = service._refusal(bytes(data), bytes([127, 0, 0, 1]))
        if isinstance(parsed, dns.message.Message):
            decided = xfr.plan(z, parsed)
            if isinstance(decided, xfr.Plan):
                question = (parsed.question[0].name, parsed.question[0].rdtype)
                assert list(xfr.messages(z, xfr.rrsets(z, decided), parsed.id, question))
