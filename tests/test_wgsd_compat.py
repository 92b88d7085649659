"""wgsd-client (``cmd/wgsd-client/main.go`` in jwhited/wgsd) reads the zone, against the real
DNS server on loopback, exactly as it does: per peer one SRV query for
``<base32 key>._wireguard._udp.ZONE`` over UDP without EDNS, no retry over TCP, the rcode and
the TC bit ignored, the port from Answer[0] (which must be an SRV) and the address from Extra[0]
(which must be an A or AAAA); a missing one crashes it. For 0 to 8 extra candidates and zone
names of 10, 40 and 100 characters (and the longest that fits, 150), that answer must hold the
public SRV and its address within 512 bytes, and wgmesh's own resolver must still find every
candidate."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rdatatype
import pytest

from wgmesh.daemon.resolver import ZoneResolver
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import key_label
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.registry.dns import start_dns


def zone_of(length: int) -> str:
    """A zone name of exactly ``length`` characters (no trailing dot), in labels of <= 51."""
    labels, left = [], length - len(".test")  # each label costs its length and a dot
    while left > 0:
        take = min(50, left) if left != 51 else 51
        labels.append("w" * take)
        left -= take + 1
    name = ".".join([*labels, "test"]) if left == -1 else ""
    assert len(name) == length, (name, length)
    return name


def peers(extra: int, public_v6: bool) -> list[PublishedPeer]:
    """One peer per count of extra candidates 0..extra: LAN and IPv6 addresses as a host with
    Docker, libvirt and VPN bridges reports them, and a long TXT."""
    out = []
    for n in range(extra + 1):
        key = bytes([n + (64 if public_v6 else 0)] * 32)
        public = f"[2001:db8:1::{n + 1}]:51820" if public_v6 else f"198.51.100.{n + 1}:51820"
        cands = [Candidate(Endpoint.parse(public), CandidateKind.PUBLIC, 0)]
        for i in range(n):
            if i % 3 == 2:
                ep, kind, prio = f"[2001:db8:2::{i}]:{51821 + i}", CandidateKind.IPV6, 5
            else:
                ep, kind, prio = f"172.{16 + i}.0.{n}:{51821 + i}", CandidateKind.LAN, 10
            cands.append(Candidate(Endpoint.parse(ep), kind, prio))
        allowed = tuple(f"100.64.{n}.{i}/32" for i in range(6))
        out.append(PublishedPeer(key, "h" * 63, tuple(cands), allowed, NatKind.CONE, 1 << 40))
    return out


def wgsd_client_exchange(wire: bytes, port: int) -> bytes:
    """One UDP datagram out, one back: no retry, no TCP (blocking: run in a thread)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
        return data


@pytest.mark.parametrize("length", [10, 40, 100, 150])
@pytest.mark.parametrize("public_v6", [False, True])
async def test_wgsd_client_reads_every_peer(length: int, public_v6: bool) -> None:
    origin = zone_of(length) + "."
    zone = Zone(ZoneConfig(origin, (f"ns1.{origin}",), f"hostmaster.{origin}"))
    published = peers(8, public_v6)
    for p in published:
        zone.upsert(p)
    server = await start_dns(zone, "127.0.0.1", 0)
    try:
        for p in published:  # the client's loop over its configured peers
            qname = f"{key_label(p.key)}._wireguard._udp.{origin}"
            q = dns.message.make_query(qname, "SRV", use_edns=False)  # miekg/dns SetQuestion
            assert q.edns < 0
            raw = await asyncio.to_thread(wgsd_client_exchange, q.to_wire(), server.udp_port)
            assert len(raw) <= 512, (length, len(p.candidates), len(raw))
            r = dns.message.from_wire(raw)  # rcode and TC ignored, as the client ignores them
            assert r.id == q.id
            first = r.answer[0]
            assert first.rdtype == dns.rdatatype.SRV  # Answer[0].(*dns.SRV)
            srv = first[0]
            public = p.candidates[0].endpoint
            assert srv.port == public.port and str(srv.target) == qname
            extra = r.additional[0]  # Extra[0]: no OPT to skip, the query had no EDNS
            want = dns.rdatatype.AAAA if public_v6 else dns.rdatatype.A
            assert extra.rdtype == want and str(extra.name) == str(srv.target)
            assert extra[0].address == str(public.ip)
            assert (len(first), r.flags & dns.flags.TC) == (1, 0)

        # and the daemon's own resolver finds every candidate of every peer
        resolver = ZoneResolver(origin, Endpoint.parse(f"127.0.0.1:{server.udp_port}"))
        for p in published:
            record = await resolver.lookup(p.key)
            assert record is not None
            got = {(h.endpoint, h.kind, h.priority) for h in record.hints}
            assert got == {(c.endpoint, c.kind, c.priority) for c in p.candidates}
            assert record.name == p.name and record.allowed_ips == p.allowed_ips
    finally:
        server.close()
        await server.wait_closed()
