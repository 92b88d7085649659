"""NAT routers of the lab: the kinds, their nftables rulesets, and what a test does to a running
one (flush its conntrack table, rebind its public ports).

Behaviour follows RFC 4787's vocabulary: PORT_RESTRICTED is endpoint-independent mapping with
address-and-port-dependent filtering (a typical home router); SYMMETRIC is address-and-port-
dependent mapping (a new random public port per destination) with the same filtering. No kind
hairpins (RFC 4787 REQ-9 is not met, as on many real routers). docs/lab.md has the rules as text.
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
) -> str:
    """The whole nft ruleset (one ``nft -f -`` transaction) of a router of this kind.

    ``forward``: (LAN address, UDP port) forwarded from the WAN, for PORT_FORWARD.
    ``port_range``: ``"LO-HI"`` to pin TCP/UDP public ports into (what :meth:`Nat.rebind` uses).
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

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "".join(f"\n        {r}" for r in rules)
        return f"    chain {name} {{\n        {hook}; policy accept;{body}\n    }}\n"

    return (
        "table ip wgmlab {\n"
        + chain("prerouting", "type nat hook prerouting priority dstnat", pre)
        + chain("postrouting", "type nat hook postrouting priority srcnat", post)
        + chain("forward", "type filter hook forward priority filter", fwd)
        + chain("input", "type filter hook input priority filter", inp)
        + "}\n"
    )


class Nat:
    """A NAT router namespace: ``eth0`` on the internet with ``wan_ip``, a bridge ``br0`` with
    ``gateway`` for the LAN ``lan_subnet`` behind it. Made by ``Lab.add_nat``."""

    def __init__(
        self,
        name: str,
        kind: RouterKind,
        netns: str,
        wan_ip: str,
        index: int,
        forward_port: int | None = None,
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
        self._hosts = 0
        self._rebinds = 0

    def __repr__(self) -> str:
        return f"Nat({self.name!r}, {self.kind}, wan={self.wan_ip}, lan={self.lan_subnet})"

    def next_lan_address(self) -> ipaddress.IPv4Address:
        """The next free LAN address, from .10 up."""
        address = ipaddress.IPv4Address(f"{self.lan_prefix}.{10 + self._hosts}")
        self._hosts += 1
        return address

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
        return ruleset(self.kind, forward=forward, port_range=self.port_range)

    def apply_rules(self) -> None:
        """Replace the router's whole ruleset atomically (one nft transaction)."""
        self.run("nft", "-f", "-", stdin=f"flush ruleset\n{self.ruleset}")

    def flush_conntrack(self) -> None:
        """Forget every flow, as a router reboot or the timeouts (UDP: 30 s one-way, 120 s
        once both directions were seen) would."""
        self.run("conntrack", "-F", check=False)

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
        """``conntrack -L`` of the router, for debugging."""
        return self.run("conntrack", "-L", check=False).stdout
