"""NAT routers of the lab: the kinds, their nftables rulesets, and what a test does to a running
one (flush its conntrack table, rebind its public ports).

Behaviour follows RFC 4787's vocabulary: PORT_RESTRICTED is endpoint-independent mapping with
address-and-port-dependent filtering (a typical home router); SYMMETRIC is address-and-port-
dependent mapping (a new random public port per destination) with the same filtering. No kind
hairpins (RFC 4787 REQ-9 is not met, as on many real routers). docs/lab.md has the rules as text.

A router made with IPv6 also routes a global /64 to its LAN, with no NAT66 and, for every kind but
OPEN, the stateful firewall of a home router (RFC 6092, the filtering of RFC 4787 REQ-8 applied
to IPv6): replies to flows from the LAN come in, nothing new does, the ICMPv6 errors of RFC 4890
section 4.3.1 and neighbour discovery always work. UDP filtering is per remote address and port
(conntrack's 5-tuple): an outbound datagram lan:p -> r:q admits only r:q -> lan:p, the IPv6
"hole" a punch relies on.
"""

from __future__ import annotations

import ipaddress
import subprocess
from enum import StrEnum

from wgmesh.lab.netns import in_netns, run
from wgmesh.proto.kinds import NatKind

WAN_IF = "eth0"
"""The router's interface on the internet."""
LAN_IF = "br0"
"""The bridge its LAN hosts hang off."""
REBIND_RANGES = ("61000-62999", "63000-64999")
"""Public port ranges :meth:`Nat.rebind` alternates between: above Linux's ephemeral ports
(32768-60999) and the usual WireGuard ports, so a flow's port really changes."""


ICMP6_ESSENTIAL = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"
"""ICMPv6 errors a firewall must not drop (RFC 4890 section 4.3.1): path MTU discovery needs
packet-too-big, traceroute and hop-limit probes need time-exceeded."""
ICMP6_ND = "nd-neighbor-solicit, nd-neighbor-advert"
"""Neighbour discovery the router itself must answer on its WAN link (RFC 4861)."""


class RouterKind(StrEnum):
    """Kinds of router (NAT and firewall) the lab builds; what the registrar should classify
    each as is :attr:`classified` (a wgmesh.proto.kinds.NatKind)."""

    PORT_RESTRICTED = "port-restricted"
    """Port-preserving masquerade + stateful firewall: a typical home router."""
    SYMMETRIC = "symmetric"
    """Masquerade ``fully-random`` (a new public port per destination) + the same firewall."""
    NONE = "none"
    """No NAT: the peer has a public address (``Lab.add_peer(name, None)``)."""
    PORT_FORWARD = "port-forward"
    """Port-restricted plus a DNAT port forward of one UDP port to the first LAN host."""
    OPEN = "open"
    """Port-preserving masquerade with no firewall at all."""

    @property
    def classified(self) -> NatKind:
        """What the registrar should classify a peer behind this router as."""
        if self is RouterKind.SYMMETRIC:
            return NatKind.SYMMETRIC
        return NatKind.NONE if self is RouterKind.NONE else NatKind.CONE


def ruleset(
    kind: RouterKind,
    *,
    forward: tuple[str, int] | None = None,
    port_range: str | None = None,
    ipv6: bool = False,
    forward6: str | None = None,
) -> str:
    """The whole nft ruleset (one ``nft -f -`` transaction) of a router of this kind.

    ``forward``: (LAN address, UDP port) forwarded from the WAN, for PORT_FORWARD.
    ``port_range``: ``"LO-HI"`` to pin TCP/UDP public ports into (what :meth:`Nat.rebind` uses).
    ``ipv6``: add the IPv6 firewall (table ``ip6 wgmlab``, see :func:`ruleset6`); ``forward6``:
    PORT_FORWARD's LAN host's IPv6 address, which gets the same port opened (a pinhole).
    """
    if kind == RouterKind.NONE:
        raise ValueError("RouterKind.NONE has no router")
    random = " fully-random" if kind == RouterKind.SYMMETRIC else ""
    wan = f'iifname "{WAN_IF}"'
    pre: list[str] = []
    post: list[str] = []
    fwd: list[str] = []
    inp: list[str] = []
    if kind == RouterKind.PORT_FORWARD:
        if forward is None:
            raise ValueError("PORT_FORWARD needs the forwarded (address, port)")
        address, port = forward
        pre.append(f"{wan} udp dport {port} dnat to {address}:{port}")
    if port_range:
        post.append(f'oifname "{WAN_IF}" meta l4proto {{ tcp, udp }} masquerade to :{port_range}'
                    f"{random}")  # fmt: skip
    post.append(f'oifname "{WAN_IF}" masquerade{random}')
    if kind != RouterKind.OPEN:
        fwd.append(f"{wan} ct state established,related accept")
        if kind == RouterKind.PORT_FORWARD:
            fwd.append(f"{wan} ct status dnat accept")
        fwd.append(f"{wan} drop")
        inp.append(f"{wan} ct state established,related accept")
        inp.append(f"{wan} drop")

    table = (
        "table ip wgmlab {\n"
        + _chain("prerouting", "type nat hook prerouting priority dstnat", pre)
        + _chain("postrouting", "type nat hook postrouting priority srcnat", post)
        + _chain("forward", "type filter hook forward priority filter", fwd)
        + _chain("input", "type filter hook input priority filter", inp)
        + "}\n"
    )
    if not ipv6:
        return table
    pinhole = None
    if kind == RouterKind.PORT_FORWARD:
        if forward is None or forward6 is None:
            raise ValueError("PORT_FORWARD over IPv6 needs the forwarded IPv6 address")
        pinhole = (forward6, forward[1])
    return table + ruleset6(kind, pinhole=pinhole)


def ruleset6(kind: RouterKind, *, pinhole: tuple[str, int] | None = None) -> str:
    """The IPv6 table of a router of this kind: routing only (no NAT66), and unless the kind is
    OPEN a CPE's stateful firewall (RFC 6092): forward what the LAN sends and what answers it
    (``ct state established,related``), the ICMPv6 errors of RFC 4890, and drop anything else
    new from the WAN, echo requests included. ``pinhole``: (LAN address, UDP port) let in, for
    PORT_FORWARD. The router's own input takes neighbour discovery and those errors only."""
    if kind == RouterKind.NONE:
        raise ValueError("RouterKind.NONE has no router")
    wan = f'iifname "{WAN_IF}"'
    fwd: list[str] = []
    inp: list[str] = []
    if kind != RouterKind.OPEN:
        fwd.append("ct state established,related accept")
        fwd.append(f'iifname "{LAN_IF}" oifname "{WAN_IF}" accept')
        fwd.append(f"{wan} icmpv6 type {{ {ICMP6_ESSENTIAL} }} accept")
        if pinhole is not None:
            address, port = pinhole
            fwd.append(f"{wan} ip6 daddr {address} udp dport {port} accept")
        fwd.append(f"{wan} drop")
        inp.append("ct state established,related accept")
        inp.append(f"{wan} icmpv6 type {{ {ICMP6_ND}, {ICMP6_ESSENTIAL} }} accept")
        inp.append(f"{wan} drop")
    return (
        "table ip6 wgmlab {\n"
        + _chain("forward", "type filter hook forward priority filter", fwd)
        + _chain("input", "type filter hook input priority filter", inp)
        + "}\n"
    )


def _chain(name: str, hook: str, rules: list[str]) -> str:
    body = "".join(f"\n        {r}" for r in rules)
    return f"    chain {name} {{\n        {hook}; policy accept;{body}\n    }}\n"


class Nat:
    """A NAT router namespace: ``eth0`` on the internet with ``wan_ip``, a bridge ``br0`` with
    ``gateway`` for the LAN ``lan_subnet`` behind it. Made by ``Lab.add_nat``.

    With ``ipv6`` it also has ``wan_ip6`` (2001:db8:ffff::N) and routes ``lan_subnet6``
    (2001:db8:N::/64, its ``gateway6`` ::1 on br0) without NAT, behind :func:`ruleset6`."""

    def __init__(
        self,
        name: str,
        kind: RouterKind,
        netns: str,
        wan_ip: str,
        index: int,
        forward_port: int | None = None,
        ipv6: bool = False,
    ) -> None:
        self.name = name
        self.kind = kind
        self.netns = netns
        self.wan_ip = ipaddress.IPv4Address(wan_ip)
        self.lan_prefix = f"10.{index}.0"
        self.lan_subnet = ipaddress.IPv4Network(f"{self.lan_prefix}.0/24")
        self.gateway = ipaddress.IPv4Address(f"{self.lan_prefix}.1")
        self.forward_port = forward_port
        self.forward_target = ipaddress.IPv4Address(f"{self.lan_prefix}.10")
        """PORT_FORWARD's target: the first host added behind this NAT."""
        self.port_range: str | None = None
        """The public port range :meth:`rebind` pinned, None for the kind's default."""
        self.ipv6 = ipv6
        """Whether the router also routes (and firewalls) IPv6."""
        self.wan_ip6 = ipaddress.IPv6Address(f"2001:db8:ffff::{index}") if ipv6 else None
        """Its IPv6 address on the internet, None without IPv6."""
        self.lan_subnet6 = ipaddress.IPv6Network(f"2001:db8:{index}::/64") if ipv6 else None
        """The global /64 routed to its LAN (an ISP's delegated prefix), None without IPv6."""
        self.gateway6 = ipaddress.IPv6Address(f"2001:db8:{index}::1") if ipv6 else None
        """The router's address on that LAN, the LAN hosts' default route."""
        self.forward_target6 = ipaddress.IPv6Address(f"2001:db8:{index}::10") if ipv6 else None
        """PORT_FORWARD's IPv6 target: the first host added behind this NAT."""
        self._hosts = 0
        self._rebinds = 0

    def __repr__(self) -> str:
        return f"Nat({self.name!r}, {self.kind}, wan={self.wan_ip}, lan={self.lan_subnet})"

    def next_lan_address(self) -> ipaddress.IPv4Address:
        """The next free LAN address, from .10 up."""
        address = ipaddress.IPv4Address(f"{self.lan_prefix}.{10 + self._hosts}")
        self._hosts += 1
        return address

    def lan_address6(self, address: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
        """The IPv6 LAN address mirroring LAN IPv4 address ``address``: 10.N.0.X is
        2001:db8:N::X (X written in the same digits), so a dual-stack host reads the same in
        both families."""
        if self.lan_subnet6 is None:
            raise ValueError(f"{self.name} has no IPv6")
        if address not in self.lan_subnet:
            raise ValueError(f"{address} is not in {self.name}'s LAN {self.lan_subnet}")
        return ipaddress.IPv6Address(f"{self.lan_subnet6.network_address}{address.packed[3]}")

    def run(
        self, *argv: str, check: bool = True, timeout: float = 10.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the router's namespace."""
        return run(in_netns(self.netns, *argv), timeout=timeout, check=check, stdin=stdin)

    @property
    def ruleset(self) -> str:
        """The nft ruleset this router runs now."""
        forward = None
        if self.kind == RouterKind.PORT_FORWARD:
            if self.forward_port is None:
                raise ValueError(f"{self.name}: PORT_FORWARD needs forward_port")
            forward = (str(self.forward_target), self.forward_port)
        forward6 = str(self.forward_target6) if self.forward_target6 is not None else None
        return ruleset(self.kind, forward=forward, port_range=self.port_range, ipv6=self.ipv6,
                       forward6=forward6)  # fmt: skip

    def apply_rules(self) -> None:
        """Replace the router's whole ruleset atomically (one nft transaction)."""
        self.run("nft", "-f", "-", stdin=f"flush ruleset\n{self.ruleset}")

    def flush_conntrack(self) -> None:
        """Forget every flow, IPv4 and IPv6, as a router reboot or the timeouts (UDP: 30 s
        one-way, 120 s once both directions were seen) would; an IPv6 firewall hole closes.
        (conntrack 1.4.7's ``-F`` flushes both families; ``-f ipv6`` makes sure elsewhere.)"""
        self.run("conntrack", "-F", check=False)
        if self.ipv6:
            self.run("conntrack", "-F", "-f", "ipv6", check=False)

    def rebind(self) -> str:
        """Give every flow a new public port: the masquerade moves to the other range of
        ``REBIND_RANGES`` and conntrack is flushed, so the next packet of any flow leaves from
        a port in the new range (as after a NAT reboot or a new uplink). Returns the range."""
        self.port_range = REBIND_RANGES[self._rebinds % len(REBIND_RANGES)]
        self._rebinds += 1
        self.apply_rules()
        self.flush_conntrack()
        return self.port_range

    def conntrack_entries(self) -> str:
        """``conntrack -L`` of the router (IPv4, then IPv6 if it has IPv6), for debugging."""
        if not self.ipv6:
            return self.run("conntrack", "-L", check=False).stdout
        return "".join(self.run("conntrack", "-L", "-f", family, check=False).stdout
                       for family in ("ipv4", "ipv6"))  # fmt: skip
