"""What the registrar's DNS-SD answers say about a peer, as a :class:`PeerRecord` (sans-IO).

The daemon asks ``<base32 key>._wireguard._udp.ZONE SRV`` (docs/protocol.md has the layout);
the answer holds the public candidate's SRV (wgsd's one SRV), normally with its A/AAAA, the
instance's TXT, and the other candidates' SRVs (at ``_alt.<base32 key>._wireguard._udp.ZONE``)
with their addresses in the additional section. A registrar from before that layout put every
SRV at the instance name: both are read. :func:`read_srv_answer` reads it into an
:class:`SrvAnswer` that says what is still missing (the TXT, the alternates' SRVs that the TXT's
``alt=`` announces, targets without addresses: the registrar leaves out additional data before
it truncates, and a secondary server adds none but addresses); the resolver asks for those and
merges the answers with :meth:`SrvAnswer.with_txt` / :meth:`SrvAnswer.with_alternates` /
:meth:`SrvAnswer.with_addresses`; :func:`peer_record` then builds the record. The candidate
kind comes from the SRV target's first label (:meth:`CandidateKind.of_target_label`); a target
named otherwise is ignored.

Nothing here decides who is a peer or what it routes: a record only proposes candidates, which
the Planner trusts once a WireGuard handshake (authenticated by the peer's key) goes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from wgmesh.errors import RemoteProtocolError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label, label_key
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.punch import Hint, PeerRecord

SERVICE = "_wireguard._udp"
"""The DNS-SD service under the zone (wgsd's layout)."""
MAX_SRVS = 32
"""SRVs read about one peer (the registrar publishes at most 9); the rest are ignored."""
ALT_LABEL = b"_alt"
"""First label of a peer's alternates' name (its candidates other than the public one)."""
MAX_ALT = 64
"""Largest TXT ``alt=`` count believed; a larger or malformed one reads as 0."""


@dataclass(frozen=True, slots=True)
class Srv:
    """One SRV of a peer's instance name."""

    target: dns.name.Name
    """The candidate's name (the instance name itself for the public candidate)."""
    port: int
    """The candidate's UDP port."""
    priority: int
    """Lower is tried first."""


@dataclass(frozen=True, slots=True)
class SrvAnswer:
    """What the answers about one peer said so far."""

    name: dns.name.Name
    """The peer's instance name."""
    srvs: tuple[Srv, ...]
    """Its SRVs, in answer order."""
    addresses: Mapping[dns.name.Name, tuple[str, ...]]
    """Addresses (A and AAAA) per target name seen so far."""
    txt: Mapping[str, str] | None
    """The instance's TXT ``key=value`` pairs; None when no TXT was seen yet."""
    alternates: bool = False
    """The SRVs at the alternates' name were seen (or asked for and found absent)."""

    @property
    def alternates_name(self) -> dns.name.Name:
        """``_alt.<label>._wireguard._udp.ZONE``: ask SRV there for :attr:`missing_alternates`."""
        return alternates_name(self.name)

    @property
    def missing_alternates(self) -> bool:
        """The TXT announces alternates (``alt=`` above 0) whose SRVs were not seen yet."""
        if self.alternates or self.txt is None:
            return False
        count = self.txt.get("alt", "0")
        return count.isascii() and count.isdigit() and 0 < int(count[:3]) <= MAX_ALT

    @property
    def missing_targets(self) -> tuple[dns.name.Name, ...]:
        """Targets whose addresses are not known yet (ask A and AAAA for each)."""
        out: list[dns.name.Name] = []
        for srv in self.srvs:
            if srv.target not in self.addresses and srv.target not in out:
                out.append(srv.target)
        return tuple(out)

    def with_addresses(
        self, target: dns.name.Name, answers: tuple[dns.message.Message, ...]
    ) -> SrvAnswer:
        """Merge the A/AAAA answers for ``target`` (a target with none is then known empty)."""
        found = list(self.addresses.get(target, ()))
        for message in answers:
            found += _addresses(message.answer).get(target, [])
        return replace(self, addresses={**self.addresses, target: tuple(found)})

    def with_alternates(self, message: dns.message.Message) -> SrvAnswer:
        """Merge the answer to an SRV query for :attr:`alternates_name` (and the addresses in
        it). RemoteProtocolError as for :func:`read_srv_answer`."""
        _check(self.alternates_name, message)
        srvs = _srvs(self.alternates_name, list(message.answer))
        sections = list(message.additional) + list(message.answer)
        return self._merged(srvs, sections)

    def _merged(self, srvs: tuple[Srv, ...], sections: list[dns.rrset.RRset]) -> SrvAnswer:
        known = set(self.srvs)
        merged = self.srvs + tuple(s for s in srvs if s not in known)
        addresses = dict(self.addresses)
        for target, found in _addresses(sections).items():
            addresses.setdefault(target, tuple(found))
        return replace(self, srvs=merged[:MAX_SRVS], addresses=addresses, alternates=True)

    def with_txt(self, message: dns.message.Message) -> SrvAnswer:
        """Merge the answer to a TXT query for the instance name."""
        txt = dict(self.txt or {})
        for rrs in message.answer:
            if _is(rrs, dns.rdatatype.TXT) and rrs.name == self.name:
                for k, v in parse_txt(rrs).items():
                    txt.setdefault(k, v)
        return replace(self, txt=txt)


def instance_name(key: bytes, origin: dns.name.Name) -> dns.name.Name:
    """``<base32 key>._wireguard._udp.ZONE``."""
    return dns.name.Name((key_label(key).encode(),)).concatenate(service_name(origin))


def alternates_name(name: dns.name.Name) -> dns.name.Name:
    """``_alt.<base32 key>._wireguard._udp.ZONE`` of the instance ``name``."""
    return dns.name.Name((ALT_LABEL,)).concatenate(name)


def service_name(origin: dns.name.Name) -> dns.name.Name:
    """``_wireguard._udp.ZONE`` (what a browse asks for PTR)."""
    return dns.name.from_text(SERVICE, origin)


def read_srv_answer(name: dns.name.Name, message: dns.message.Message) -> SrvAnswer | None:
    """The answer to ``name SRV``; None when the zone has no such peer (NXDOMAIN, or no SRV).
    Raises RemoteProtocolError for any other failure rcode (SERVFAIL, REFUSED, ...) and for a
    truncated answer (ask again over TCP: a TC answer may hold no records at all, which must
    not read as "no such peer")."""
    if not _check(name, message):
        return None
    srvs = _srvs(name, list(message.answer))
    if not srvs:
        return None
    sections = list(message.additional) + list(message.answer)
    txt: dict[str, str] | None = None
    for rrs in sections:
        if _is(rrs, dns.rdatatype.TXT) and rrs.name == name:
            txt = txt or {}
            for k, v in parse_txt(rrs).items():
                txt.setdefault(k, v)
    found = _addresses(sections)
    answer = SrvAnswer(name, srvs, {t: tuple(a) for t, a in found.items()}, txt)
    alt = alternates_name(name)
    if any(_is(rrs, dns.rdatatype.SRV) and rrs.name == alt for rrs in sections):
        answer = answer._merged(_srvs(alt, sections), [])
    return answer


def _check(name: dns.name.Name, message: dns.message.Message) -> bool:
    """False for NXDOMAIN; RemoteProtocolError for a truncated answer or another failure."""
    if message.flags & dns.flags.TC:
        raise RemoteProtocolError(f"DNS {name} SRV: truncated")
    rcode = message.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return False
    if rcode != dns.rcode.NOERROR:
        raise RemoteProtocolError(f"DNS {name} SRV: {dns.rcode.to_text(rcode)}")
    return True


def _srvs(owner: dns.name.Name, sections: list[dns.rrset.RRset]) -> tuple[Srv, ...]:
    return tuple(
        Srv(rr.target, rr.port, rr.priority)
        for rrs in sections
        if _is(rrs, dns.rdatatype.SRV) and rrs.name == owner
        for rr in rrs
    )[:MAX_SRVS]


def peer_record(key: bytes, answer: SrvAnswer) -> PeerRecord:
    """The record of a peer from everything its answers said. Addresses that do not parse,
    targets of unknown kind and a malformed ``since=`` are left out; an unknown ``nat=`` reads
    as :attr:`NatKind.UNKNOWN`. A TXT ``pub=`` naming another key than the one asked about
    raises RemoteProtocolError (the record is ignored)."""
    txt = answer.txt or {}
    pub = txt.get("pub")
    if pub is not None and pub != encode_key(key):
        raise RemoteProtocolError(f"DNS {answer.name}: TXT pub= names another key")
    hints: list[Hint] = []
    for srv in answer.srvs:
        if srv.target == answer.name:
            kind: CandidateKind | None = CandidateKind.PUBLIC
        else:
            first = srv.target.labels[0] if srv.target.labels else b""
            kind = CandidateKind.of_target_label(first.decode("ascii", "replace"))
        if kind is None:
            continue
        for ip in answer.addresses.get(srv.target, ()):
            try:
                hints.append(Hint(Endpoint.of(ip, srv.port), kind, srv.priority))
            except ValueError:
                continue
    since = txt.get("since", "0")
    try:
        nat = NatKind(txt.get("nat", "unknown"))
    except ValueError:
        nat = NatKind.UNKNOWN
    return PeerRecord(
        key=key,
        hints=tuple(hints),
        name=txt.get("name", ""),
        allowed_ips=tuple(a for a in txt.get("allowed", "").split(",") if a),
        nat=nat,
        since=int(since) if since.isascii() and since.isdigit() and len(since) <= 12 else 0,
    )


def browse_keys(message: dns.message.Message) -> list[bytes]:
    """Keys of the peers a ``_wireguard._udp.ZONE PTR`` answer lists; odd targets skipped."""
    keys: list[bytes] = []
    for rrs in message.answer:
        if not _is(rrs, dns.rdatatype.PTR):
            continue
        for rr in rrs:
            labels = rr.target.labels
            key = label_key(labels[0].lower()) if labels else None
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def parse_txt(rrset: dns.rrset.RRset) -> dict[str, str]:
    """``key=value`` strings of a TXT RRset (RFC 6763 section 6.3); odd strings ignored, the
    first occurrence of a key wins, keys are case-insensitive."""
    out: dict[str, str] = {}
    for rr in rrset:
        for raw in rr.strings:
            text = raw.decode("utf-8", "replace")
            k, sep, v = text.partition("=")
            if sep and k and k.lower() not in out:
                out[k.lower()] = v
    return out


def _addresses(sections: list[dns.rrset.RRset]) -> dict[dns.name.Name, list[str]]:
    found: dict[dns.name.Name, list[str]] = {}
    for rrs in sections:
        if _is(rrs, dns.rdatatype.A) or _is(rrs, dns.rdatatype.AAAA):
            found.setdefault(rrs.name, []).extend(rr.address for rr in rrs)
    return found


def _is(rrs: dns.rrset.RRset, rdtype: dns.rdatatype.RdataType) -> bool:
    """``rrs`` holds ``rdtype`` records of class IN: only those parse as that type (dnspython
    reads an SRV or AAAA of another class as generic data, and a CHAOS A holds no IP address),
    and only those are ours."""
    return rrs.rdtype == rdtype and rrs.rdclass == dns.rdataclass.IN
