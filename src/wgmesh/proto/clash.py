"""Two hosts behind one NAT with the same WireGuard port (sans-IO).

Two laptops behind one home router, both listening on 51820: the router can map only one of
them to public port 51820 toward a given destination. Which one gets it depends on who sent
first after the router last forgot its state, and toward each destination the answer may
differ, so the mapping the registrar saw for one of them can land on the other. Punching cannot
repair that; the relay can (the relay binds each host's own mapping toward its relay port),
and a different ListenPort on one host makes both direct. This module finds such pairs from
what the zone publishes: a public candidate's address, and the LAN candidates' port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import short_key
from wgmesh.proto.kinds import CandidateKind


@dataclass(frozen=True, slots=True)
class Seen:
    """What the zone says of one host for this purpose."""

    name: str
    public: tuple[Endpoint, ...]
    """Its public (registrar-observed) candidates."""
    local_ports: frozenset[int]
    """The ports of its LAN candidates: its WireGuard listen port."""


def seen_of(name: str, hints: Iterable[tuple[Endpoint, CandidateKind]]) -> Seen:
    public, ports = [], set()
    for ep, kind in hints:
        if kind == CandidateKind.PUBLIC:
            public.append(ep)
        elif kind == CandidateKind.LAN:
            ports.add(ep.port)
    return Seen(name, tuple(public), frozenset(ports))


class ClashIndex:
    """The hosts by public address, so a lookup costs what the hosts behind that address
    cost, not the whole mesh."""

    def __init__(self, hosts: Mapping[bytes, Seen]) -> None:
        self.hosts = hosts
        self._by_ip: dict[object, list[bytes]] = {}
        for key, seen in hosts.items():
            for ip in {ep.ip for ep in seen.public}:
                self._by_ip.setdefault(ip, []).append(key)

    def clashes_with(self, key: bytes) -> list[tuple[bytes, str, int]]:
        """The hosts that share ``key``'s public address and WireGuard port: (key, address,
        port) for each."""
        me = self.hosts.get(key)
        if me is None or not me.local_ports:
            return []
        out = []
        for ip in sorted({ep.ip for ep in me.public}, key=str):
            for other in self._by_ip.get(ip, ()):
                ports = me.local_ports & self.hosts[other].local_ports
                if other != key and ports:
                    out.append((other, str(ip), min(ports)))
        return out


def explain(key: bytes, index: ClashIndex, us: bytes | None = None) -> str:
    """A person-readable line for ``key``'s clash with a host other than ``us``, "" when there
    is none (a clash with us is no reason: we reach that host over the LAN)."""
    found = index.clashes_with(key)
    if not found or any(other == us for other, _, _ in found):
        return ""
    hosts = index.hosts
    other, address, port = found[0]

    def named(k: bytes) -> str:
        if k == us:
            return "this host"
        seen = hosts.get(k)
        return (seen.name if seen and seen.name else "") or short_key(k)

    return (
        f"{named(key)} and {named(other)} share NAT {address} and WireGuard port {port}: the "
        "router can map only one of them to it (give one of them another ListenPort to go "
        "direct; relayed meanwhile)"
    )
