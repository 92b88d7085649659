"""Read the registrar's DNS-SD records with dnspython (RFC 6763 layout, docs/protocol.md).

Per-peer lookups go by key (``<base32 key>._wireguard._udp.ZONE SRV``) and never depend on
browsing, which cannot list more than a few thousand peers in one answer. Targets whose
address is missing from the additional section are looked up on their own (wgsd-client
crashes on such answers; we do not). Answers that are truncated over UDP are retried over TCP.
"""

from __future__ import annotations

import logging

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from wgmesh.errors import ConfigError, RemoteProtocolError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import key_label, label_key
from wgmesh.proto.kinds import CandidateKind
from wgmesh.proto.punch import Hint, PeerRecord

log = logging.getLogger("wgmesh.daemon")


class ZoneResolver:
    """Queries one authoritative server for the zone's records."""

    def __init__(self, zone: str, server: Endpoint | None, timeout: float = 2.0) -> None:
        self.origin = dns.name.from_text(zone)
        self.service = dns.name.from_text("_wireguard._udp", self.origin)
        self.server = server
        self.timeout = timeout

    async def _server(self) -> Endpoint:
        if self.server is not None:
            return self.server
        # No --dns: ask the zone's own name servers, found through the system resolver.
        try:
            ns = await dns.asyncresolver.resolve(self.origin, "NS", lifetime=self.timeout)
            target = str(next(iter(ns)).target)
            addr = await dns.asyncresolver.resolve(target, "A", lifetime=self.timeout)
        except dns.exception.DNSException as exc:
            raise ConfigError(
                f"cannot find the name servers of {self.origin}: {exc}; give --dns SERVER[:PORT]"
            ) from None
        self.server = Endpoint.of(str(next(iter(addr))), 53)
        return self.server

    async def query(self, name: dns.name.Name, rdtype: str) -> dns.message.Message:
        server = await self._server()
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
        q.flags &= ~dns.flags.RD
        try:
            r = await dns.asyncquery.udp(q, str(server.ip), port=server.port, timeout=self.timeout)
            if r.flags & dns.flags.TC:
                r = await dns.asyncquery.tcp(
                    q, str(server.ip), port=server.port, timeout=self.timeout
                )
        except (dns.exception.DNSException, OSError) as exc:
            raise RemoteProtocolError(
                f"DNS query {name} {rdtype} to {server} failed: {exc}"
            ) from None
        return r

    async def lookup(self, key: bytes) -> PeerRecord | None:
        """The record of one peer, or None when the zone has none (NXDOMAIN/NODATA)."""
        name = dns.name.Name((key_label(key).encode(),)).concatenate(self.service)
        r = await self.query(name, "SRV")
        if r.rcode() == dns.rcode.NXDOMAIN:
            return None
        if r.rcode() != dns.rcode.NOERROR:
            raise RemoteProtocolError(f"DNS {name} SRV: {dns.rcode.to_text(r.rcode())}")
        srvs = [rr for rrs in r.answer if rrs.rdtype == dns.rdatatype.SRV for rr in rrs]
        if not srvs:
            return None
        addresses: dict[dns.name.Name, list[str]] = {}
        txt: dict[str, str] = {}
        for rrs in list(r.additional) + list(r.answer):
            if rrs.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses.setdefault(rrs.name, []).extend(rr.address for rr in rrs)
            elif rrs.rdtype == dns.rdatatype.TXT and rrs.name == name:
                txt.update(parse_txt(rrs))
        if not txt:
            t = await self.query(name, "TXT")
            for rrs in t.answer:
                if rrs.rdtype == dns.rdatatype.TXT:
                    txt.update(parse_txt(rrs))
        hints = []
        for srv in srvs:
            target = srv.target
            if target not in addresses:
                addresses[target] = []
                for rdtype in ("A", "AAAA"):
                    a = await self.query(target, rdtype)
                    addresses[target] += [
                        rr.address
                        for rrs in a.answer
                        if rrs.rdtype == dns.rdatatype.from_text(rdtype)
                        for rr in rrs
                    ]
            if target == name:
                kind: CandidateKind | None = CandidateKind.PUBLIC
            else:
                kind = CandidateKind.of_target_label(target.labels[0].decode("ascii", "replace"))
            if kind is None:
                continue
            for ip in addresses[target]:
                try:
                    hints.append(Hint(Endpoint.of(ip, srv.port), kind, srv.priority))
                except ValueError:
                    continue
        allowed = tuple(a for a in txt.get("allowed", "").split(",") if a)
        since = txt.get("since", "0")
        return PeerRecord(
            key=key,
            hints=tuple(hints),
            name=txt.get("name", ""),
            allowed_ips=allowed,
            nat=txt.get("nat", "unknown"),
            since=int(since) if since.isdigit() else 0,
        )

    async def browse(self) -> list[bytes]:
        """Keys of every peer listed under _wireguard._udp.ZONE (mesh mode)."""
        r = await self.query(self.service, "PTR")
        keys = []
        for rrs in r.answer:
            if rrs.rdtype != dns.rdatatype.PTR:
                continue
            for rr in rrs:
                key = label_key(rr.target.labels[0].lower())
                if key is None:
                    log.debug("ignoring odd PTR target %s", rr.target)
                else:
                    keys.append(key)
        return keys


def parse_txt(rrset: dns.rrset.RRset) -> dict[str, str]:
    """``key=value`` strings of a TXT RRset (RFC 6763 section 6.3); odd strings ignored."""
    out: dict[str, str] = {}
    for rr in rrset:
        for raw in rr.strings:
            text = raw.decode("utf-8", "replace")
            k, sep, v = text.partition("=")
            if sep and k and k.lower() not in out:
                out[k.lower()] = v
    return out
