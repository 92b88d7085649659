"""Ask the registrar's DNS server for its DNS-SD records with dnspython (RFC 6763 layout,
docs/protocol.md); the answers are read by :mod:`wgmesh.proto.records` (sans-IO).

Per-peer lookups go by key (``<base32 key>._wireguard._udp.ZONE SRV``) and never depend on
browsing, which cannot list more than a few thousand peers in one answer. What the additional
section left out is looked up on its own: the TXT, the alternates' SRVs (``_alt.<key>...``) the
TXT announces, and targets' addresses (wgsd-client crashes on answers without the address; we
do not). Answers that are truncated over UDP are retried over TCP.
"""

from __future__ import annotations

import os

import dns.asyncquery
import dns.asyncresolver
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name

from wgmesh.errors import ConfigError, RemoteProtocolError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.punch import PeerRecord
from wgmesh.proto.records import (
    browse_keys,
    instance_name,
    peer_record,
    read_srv_answer,
    service_name,
)


class ZoneResolver:
    """Queries one authoritative server for the zone's records."""

    def __init__(self, zone: str, server: Endpoint | None, timeout: float = 2.0) -> None:
        self.origin = dns.name.from_text(zone)
        self.service = service_name(self.origin)
        self.server = server
        self.timeout = timeout
        self._client_cookie = os.urandom(8)
        self._server_cookie = b""
        """The DNS cookie (RFC 7873) the server gave us last: echoing it proves we receive at
        our address, so the registrar's DNS answers us in full instead of capping unproven
        sources at 512 bytes (wgmesh.proto.rrl)."""

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
        cookie = dns.edns.CookieOption(self._client_cookie, self._server_cookie)
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232, options=[cookie])
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
        for option in r.options:
            if isinstance(option, dns.edns.CookieOption) and option.client == self._client_cookie:
                self._server_cookie = option.server
        return r

    async def lookup(self, key: bytes) -> PeerRecord | None:
        """The record of one peer, or None when the zone has none (NXDOMAIN/NODATA).
        RemoteProtocolError when a query fails. What the answers mean is
        :mod:`wgmesh.proto.records`; this only asks what they left out."""
        name = instance_name(key, self.origin)
        answer = read_srv_answer(name, await self.query(name, "SRV"))
        if answer is None:
            return None
        if answer.txt is None:
            answer = answer.with_txt(await self.query(name, "TXT"))
        if answer.missing_alternates:
            alternates = answer.alternates_name
            answer = answer.with_alternates(await self.query(alternates, "SRV"))
        for target in answer.missing_targets:
            answer = answer.with_addresses(
                target, (await self.query(target, "A"), await self.query(target, "AAAA"))
            )
        return peer_record(key, answer)

    async def browse(self) -> list[bytes]:
        """Keys of every peer listed under _wireguard._udp.ZONE (mesh mode)."""
        return browse_keys(await self.query(self.service, "PTR"))
