"""The relay's kernel path: nftables rules in a table of the registrar's own (``ip wgmesh_relay``).

The forwarding table is :mod:`wgmesh.proto.relayroute`'s: a datagram arriving at relay port
``a.port`` from ``a.peer`` leaves from ``b.port`` to ``b.peer``, and back; nothing else is
forwarded. This module renders it as one nft table (pure functions, testable without root) and
installs it (:class:`KernelRelay`, ``nft`` through subprocess). docs/relay-kernel.md has the
measurements behind the choices below.

**Stateless rewrites, no conntrack.** Every datagram to or from the relay port range is
``notrack``ed, and a bound leg's datagram is rewritten by payload statements (which fix the IP
and UDP checksums, the pseudo-header included)::

    prerouting, priority raw:  ip daddr RELAY udp dport LOW-HIGH -> relay_in
    relay_in:  notrack
               payload[4:8] != STUN cookie and (dport . saddr . sport) in @legs (counted):
                   sport := @twin[dport]; daddr := @peer_addr[sport]; dport := @peer_port[sport]
    output:    ip saddr RELAY udp sport LOW-HIGH: notrack (the relay sockets' replies)
    forward:   (sport . daddr . dport) in @legs_out: saddr := RELAY, accept
               [relay-only mode: anything else forwarded is dropped]

Not DNAT + SNAT (both failures reproduced in the lab, docs/relay-kernel.md): conntrack makes
one NAT decision per 5-tuple, at its first packet, and a bound peer's STUN-framed binds and its
WireGuard datagrams share one 5-tuple. The bind comes first (a pair exists only once both sides
bound), and its entry, delivered locally, keeps WireGuard from being DNATed until someone runs
``conntrack -D``; once a flow is DNATed, later binds are DNATed with it and go to the other
peer instead of the relay socket. Every rebind and restart would need deletions by tuple, raced
by live traffic. Stateless, the rules alone decide: a change takes effect at the next datagram,
there is nothing to flush, and the table forwards on after a kill -9 of the registrar exactly
as last set.

The source is rewritten in ``forward``: in ``prerouting`` a source that is one of our own
addresses makes the packet a martian to the routing decision (unless ``accept_local``, which we
leave alone). No ``ct`` expression appears: the first ``ct`` match in a namespace turns
conntrack on for all of its traffic (the registrar's STUN and DNS load too); ``notrack`` does not.

Lookups are O(1) at any size: two hash sets keyed on ``port . addr . port`` and three maps keyed
on a port (a relay port is in one pair only, so it decides the rest); a leg is one element in
each, a pair ten. :meth:`KernelRelay.set_pairs` is one ``nft -f -`` transaction deleting and
adding the elements of the pairs that changed (atomic; the others keep their counters); nft
never lists the table for it. Whole-table replacements (one transaction too, and with no
connection state nothing in flight is lost; counters restart from zero) happen at
:meth:`KernelRelay.start` given pairs, at the first update after a start that kept a previous
run's table (its comment carries a fingerprint of everything but the elements), and when an
update fails.

Forwarding needs ``net.ipv4.ip_forward=1`` in the registrar's network namespace (the setting is
per namespace); :meth:`KernelRelay.start` turns it on there, never off. That makes the host a
router for anything sent to it, so when it was off the table also drops every other forwarded
packet (:attr:`Forwarding.RELAY_ONLY`, remembered in the table's comment across restarts); when
it was on already, the host routes for something else and that is left alone
(:attr:`Forwarding.SHARED`). IPv4 only for now: an IPv6 relay is one more :class:`Family`
rendered into its own ``table ip6 wgmesh_relay``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from wgmesh.errors import LocalProtocolError, WgmeshError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayPair
from wgmesh.proto.stun import MAGIC_COOKIE

TABLE = "wgmesh_relay"
"""Our table's name (in the family of the relay address: ``ip`` for now)."""
COMMENT_PREFIX = "wgmesh relay"
"""The table's comment: this, the :class:`Forwarding` mode and the :func:`fingerprint`."""
SETS = ("legs", "legs_out", "twin", "peer_addr", "peer_port")
"""Our sets and maps, in the order the table declares them."""


@dataclass(frozen=True, slots=True)
class Family:
    """How one address family is spelled in nft."""

    table: str
    """The table family (``ip``; ``ip6`` for an IPv6 relay)."""
    proto: str
    """The network header's payload keyword (``ip`` / ``ip6``)."""
    addr_type: str
    """The set data type of an address."""
    version: int
    """4 or 6: which relay addresses and peers belong here."""


IPV4 = Family("ip", "ip", "ipv4_addr", 4)


class Forwarding(StrEnum):
    """What the table does with forwarded packets that are not relayed datagrams."""

    RELAY_ONLY = "relay-only"
    """Drop them: the host routed nothing before the relay turned ip_forward on."""
    SHARED = "shared"
    """Leave them alone: the host also routes for something else (containers, a VPN)."""


@dataclass(frozen=True, slots=True)
class RelayTable:
    """Everything the ruleset is made of besides the pairs."""

    relay_ip: ipaddress.IPv4Address
    """The relay's address: what peers send to and what forwarded datagrams come from."""
    ports: range
    """The relay port range (``RelayConfig.ports``), all of it notracked."""
    forwarding: Forwarding = Forwarding.RELAY_ONLY
    """Whether other forwarded traffic is dropped."""
    name: str = TABLE
    """The table's name."""
    family: Family = IPV4
    """The relay address's family."""

    def __post_init__(self) -> None:
        if self.relay_ip.version != self.family.version:
            raise ValueError(f"relay address {self.relay_ip} is not IPv{self.family.version}")
        if (
            not self.ports
            or self.ports.step != 1
            or not 0 < self.ports[0] <= self.ports[-1] < 65536
        ):
            raise ValueError(f"bad relay port range {self.ports!r}")

    @property
    def port_match(self) -> str:
        """The range as nft writes it."""
        low, high = self.ports[0], self.ports[-1]
        return str(low) if low == high else f"{low}-{high}"

    @property
    def head(self) -> str:
        """``table ip wgmesh_relay``."""
        return f"table {self.family.table} {self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Element:
    """One element of one of our sets or maps, in nft's text form."""

    set_name: str
    """One of :data:`SETS`."""
    key: str
    """The key (``40000 . 198.51.100.11 . 51820`` or ``40000``)."""
    value: str | None = None
    """The mapped value (maps only)."""

    def text(self) -> str:
        return self.key if self.value is None else f"{self.key} : {self.value}"


@dataclass(frozen=True, slots=True)
class LegCounter:
    """What the kernel forwarded from one leg's peer (counted where it arrived)."""

    packets: int
    """Datagrams."""
    bytes: int
    """IP bytes, headers included."""


@dataclass(frozen=True, slots=True)
class PairCounters:
    """What one pair forwarded since its legs were installed."""

    a: LegCounter
    """From ``pair.a.peer`` (to ``pair.b.peer``)."""
    b: LegCounter
    """From ``pair.b.peer``."""

    @property
    def packets(self) -> int:
        return self.a.packets + self.b.packets

    @property
    def bytes(self) -> int:
        return self.a.bytes + self.b.bytes


# -- rendering (pure) -----------------------------------------------------------------------


def leg_key(port: int, peer: Endpoint) -> str:
    """The key of a leg in ``legs`` and ``legs_out``."""
    return f"{port} . {peer.ip} . {peer.port}"


def check_pairs(table: RelayTable, pairs: Iterable[RelayPair]) -> None:
    """ValueError for pairs the table cannot hold: another family, a port outside the range or
    in two pairs, a peer at the relay's own address."""
    seen: set[int] = set()
    version = table.family.version
    for pair in pairs:
        for leg in (pair.a, pair.b):
            if leg.port not in table.ports:
                raise ValueError(f"relay port {leg.port} is outside {table.port_match}")
            if leg.port in seen:
                raise ValueError(f"relay port {leg.port} is in two pairs")
            if leg.peer.ip.version != version:
                raise ValueError(f"peer {leg.peer} is not IPv{version}")
            if leg.peer.ip == table.relay_ip:
                raise ValueError(f"peer {leg.peer} is at the relay's own address")
            seen.add(leg.port)


def _leg_elements(pair: RelayPair) -> Iterable[tuple[str, str, str | None]]:
    for this, other in ((pair.a, pair.b), (pair.b, pair.a)):
        key, port = leg_key(this.port, this.peer), str(this.port)
        yield "legs", key, None
        yield "legs_out", key, None
        yield "twin", port, str(other.port)
        yield "peer_addr", port, str(this.peer.ip)
        yield "peer_port", port, str(this.peer.port)


def pair_elements(pair: RelayPair) -> frozenset[Element]:
    """The ten elements of ``pair`` (five per leg)."""
    return frozenset(Element(*e) for e in _leg_elements(pair))


def _skeleton(table: RelayTable) -> list[str]:
    """The table's body, one line per declaration; ``%name%`` is where a set's elements go."""
    return [f'comment "{table_comment(table)}"', *_declarations(table)]


def fingerprint(table: RelayTable) -> str:
    """Names everything in the table but its elements (relay address, ports, mode, rules): a
    table left by an earlier run is kept only if it has the same one."""
    return hashlib.sha256("\n".join(_declarations(table)).encode()).hexdigest()[:16]


def table_comment(table: RelayTable) -> str:
    return f"{COMMENT_PREFIX} {table.forwarding} {fingerprint(table)}"


def _declarations(table: RelayTable) -> list[str]:
    f, relay, ports = table.family, table.relay_ip, table.port_match
    leg_type = f"inet_service . {f.addr_type} . inet_service"
    guard = ['counter drop comment "not relayed: dropped"']
    return [
        # arriving: (relay port . peer address . peer port) of each bound leg, counted
        f"set legs {{ type {leg_type}; counter;%legs% }}",
        # leaving, after the rewrite: the same keys, uncounted
        f"set legs_out {{ type {leg_type};%legs_out% }}",
        "map twin { type inet_service : inet_service;%twin% }",
        f"map peer_addr {{ type inet_service : {f.addr_type};%peer_addr% }}",
        "map peer_port { type inet_service : inet_service;%peer_port% }",
        "chain prerouting {",
        "type filter hook prerouting priority raw; policy accept;",
        f"{f.proto} daddr {relay} udp dport {ports} jump relay_in",
        "}",
        "chain relay_in {",
        "notrack",
        # payload bytes 4..8 (transport header offset 96 bits) hold a bind's STUN cookie; a
        # datagram too short to have them fails the load and is not forwarded either
        f"@th,96,32 != {MAGIC_COOKIE:#010x} udp dport . {f.proto} saddr . udp sport @legs "
        f"udp sport set udp dport map @twin {f.proto} daddr set udp sport map @peer_addr "
        "udp dport set udp sport map @peer_port accept",
        'counter comment "not forwarded: for the relay sockets"',
        "}",
        "chain output {",
        "type filter hook output priority raw; policy accept;",
        f"{f.proto} saddr {relay} udp sport {ports} notrack",
        "}",
        "chain forward {",
        "type filter hook forward priority filter - 10; policy accept;",
        f"udp sport . {f.proto} daddr . udp dport @legs_out {f.proto} saddr set {relay} accept",
        *(guard if table.forwarding is Forwarding.RELAY_ONLY else []),
        "}",
    ]


def render_ruleset(table: RelayTable, pairs: Iterable[RelayPair]) -> str:
    """The complete table, elements included, as ``nft -f`` reads it (ValueError: see
    :func:`check_pairs`). Plain string building: 5,000 pairs take milliseconds."""
    ordered = sorted(pairs, key=lambda p: p.a.port)
    check_pairs(table, ordered)
    by_set: dict[str, list[str]] = {name: [] for name in SETS}
    for pair in ordered:
        for name, key, value in _leg_elements(pair):
            by_set[name].append(key if value is None else f"{key} : {value}")
    lines = []
    for line in _skeleton(table):
        for name, items in by_set.items():
            fill = f" elements = {{ {', '.join(items)} }};" if items else ""
            line = line.replace(f"%{name}%", fill)
        lines.append(line)
    return f"{table.head} {{\n" + "\n".join(lines) + "\n}\n"


def render_replace(table: RelayTable, pairs: Iterable[RelayPair]) -> str:
    """One transaction that creates the table or replaces it whole (atomically: a packet
    meets the old table or the new one)."""
    return f"{table.head}\ndelete {table.head}\n{render_ruleset(table, pairs)}"


def render_delete(table: RelayTable) -> str:
    """One transaction that removes our table if it exists, and nothing else."""
    return f"{table.head}\ndelete {table.head}\n"


def render_update(table: RelayTable, old: Iterable[RelayPair], new: Iterable[RelayPair]) -> str:
    """The transaction that turns the table holding ``old`` into one holding ``new``, touching
    only the elements of pairs that changed: deletions first (a map key whose value changed is
    deleted and added again); "" when nothing changed. ``new`` is checked whole."""
    new = tuple(new)
    check_pairs(table, new)
    before, after = set(old), set(new)
    gone: frozenset[Element] = frozenset().union(*(pair_elements(p) for p in before - after))
    came: frozenset[Element] = frozenset().union(*(pair_elements(p) for p in after - before))
    where = f"{table.family.table} {table.name}"
    lines = []
    for verb, todo in (("delete", gone - came), ("add", came - gone)):
        by_set: dict[str, list[str]] = {}
        for e in sorted(todo):
            by_set.setdefault(e.set_name, []).append(e.key if verb == "delete" else e.text())
        lines += [f"{verb} element {where} {s} {{ {', '.join(t)} }}\n" for s, t in by_set.items()]
    return "".join(lines)


# -- reading nft's output (pure) ------------------------------------------------------------


def parse_counters(listing: str) -> dict[str, LegCounter]:
    """Per leg key (:func:`leg_key`), the counter in ``nft -j list set ... legs`` output."""
    out: dict[str, LegCounter] = {}
    for item in json.loads(listing).get("nftables", []):
        body = item.get("set")
        if not isinstance(body, dict) or body.get("name") != "legs":
            continue
        for elem in body.get("elem", []):
            inner = elem.get("elem") if isinstance(elem, dict) else None
            if not isinstance(inner, dict) or "concat" not in inner.get("val", {}):
                continue
            key = " . ".join(str(v) for v in inner["val"]["concat"])
            counter = inner.get("counter") or {}
            out[key] = LegCounter(int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return out


def parse_comment(terse_listing: str) -> str | None:
    """Our table's comment, from ``nft -t list table`` (nft 1.0.6's JSON leaves table comments
    out); None without one."""
    m = re.search(r'^\tcomment "([^"]*)"$', terse_listing, re.MULTILINE)
    return m.group(1) if m else None


def forwarding_of(comment: str | None) -> Forwarding | None:
    """The mode a comment of ours records."""
    words = (comment or "").removeprefix(COMMENT_PREFIX + " ").split()
    if not comment or not comment.startswith(COMMENT_PREFIX) or not words:
        return None
    return next((f for f in Forwarding if f.value == words[0]), None)


# -- the adapter ----------------------------------------------------------------------------


class KernelRelayError(WgmeshError):
    """An nft command (or the ip_forward switch) failed; the message has the command and
    nft's stderr."""


class Runner(Protocol):
    """Runs a command to completion (default: :func:`run_command`; tests pass fakes)."""

    def __call__(
        self, argv: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]: ...


def run_command(
    argv: Sequence[str], stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


class KernelRelay:
    """The relay's forwarding table, installed in the kernel of this network namespace.

    Blocking (the registrar calls it from a thread). Needs CAP_NET_ADMIN, ``nft``, nf_tables
    with ``notrack`` (nft_ct, which needs nf_conntrack; nf_nat is not used) and a writable
    ``net.ipv4.ip_forward``; :meth:`available` says what is missing. ``forwarding`` None:
    decided at :meth:`start` (relay-only if ip_forward was off, or if our table left by an
    earlier run says so; shared otherwise).
    """

    def __init__(
        self,
        relay_ip: ipaddress.IPv4Address | str,
        ports: range,
        *,
        forwarding: Forwarding | None = None,
        nft: str = "nft",
        timeout: float = 10.0,
        runner: Runner = run_command,
        proc_sys: Path = Path("/proc/sys"),
    ) -> None:
        ip = ipaddress.ip_address(relay_ip)
        if not isinstance(ip, ipaddress.IPv4Address):
            raise ValueError("the kernel relay path is IPv4 only for now")
        self.forwarding = forwarding
        self.table = RelayTable(ip, ports, forwarding or Forwarding.RELAY_ONLY)
        self.nft = nft
        self.timeout = timeout
        self._runner = runner
        self._ip_forward = proc_sys / "net/ipv4/ip_forward"
        self.pairs: tuple[RelayPair, ...] | None = None
        """What the table holds now; None when unknown (not started, stopped, or a previous
        run's table kept by :meth:`start`)."""
        self._started = False
        self.replacements = 0
        """Whole-table replacements: one per start, and one per failed update."""
        self.enabled_ip_forward = False
        """Whether :meth:`start` turned ip_forward on (worth a log line)."""

    def available(self) -> str | None:
        """None if the kernel path works here, else why not (to log before falling back to
        userspace). Changes nothing: the table is only checked (``nft -c``, which the kernel
        validates and then aborts)."""
        if shutil.which(self.nft) is None:
            return f"{self.nft} not found (Debian: apt-get install nftables)"
        try:
            self._nft("-c", "-f", "-", stdin=render_replace(self.table, ()))
        except KernelRelayError as exc:
            hint = " (it needs CAP_NET_ADMIN)" if "not permitted" in str(exc) else ""
            return f"cannot load the relay table{hint}: {exc}"
        try:
            value = self._ip_forward.read_text().strip()
        except OSError as exc:
            return f"cannot read {self._ip_forward}: {exc}"
        if value != "1" and not os.access(self._ip_forward, os.W_OK):
            return f"net.ipv4.ip_forward is {value} and {self._ip_forward} is not writable"
        return None

    def start(self, pairs: Iterable[RelayPair] | None = None) -> None:
        """Turn ip_forward on, then make sure our table is there.

        With ``pairs``: the table holds exactly them from now on (created, or the one a
        previous run left replaced in one transaction: flows still in ``pairs`` never stop).
        Without: a table a previous run left with our fingerprint is kept as it is and goes on
        forwarding until the first :meth:`set_pairs` replaces it (in one transaction), so a
        registrar restoring its state after start leaves no gap; any other is replaced by an
        empty one. Other tables are never touched."""
        comment = self._existing_comment()
        was_on = self._enable_ip_forward()
        if self.forwarding is None:
            relay_only = not was_on or forwarding_of(comment) is Forwarding.RELAY_ONLY
            mode = Forwarding.RELAY_ONLY if relay_only else Forwarding.SHARED
            self.table = RelayTable(self.table.relay_ip, self.table.ports, mode)
        self._started = True
        if pairs is None and comment == table_comment(self.table):
            self.pairs = None  # kept: what it holds is the previous run's, unknown to us
        else:
            self._replace(tuple(pairs or ()))

    def set_pairs(self, pairs: Iterable[RelayPair]) -> None:
        """Forward exactly ``pairs`` from now on: one transaction of the elements that changed.
        A changed mapping takes effect at the next datagram (no connection state to flush). The
        first call after a :meth:`start` that kept a previous run's table replaces it whole, as
        does a failed update (our table edited behind our back)."""
        if not self._started:
            raise LocalProtocolError("KernelRelay.start() first")
        pairs = tuple(pairs)
        if self.pairs is None:
            self._replace(pairs)
            return
        update = render_update(self.table, self.pairs, pairs)
        if update:
            try:
                self._nft("-f", "-", stdin=update)
            except KernelRelayError:
                self._replace(pairs)
                return
        self.pairs = pairs

    def counters(self) -> dict[RelayPair, PairCounters]:
        """Per installed pair, what each side forwarded since its leg was installed."""
        legs = parse_counters(self._nft("-j", "list", "set", *self._where(), "legs"))
        zero = LegCounter(0, 0)
        return {
            p: PairCounters(
                legs.get(leg_key(p.a.port, p.a.peer), zero),
                legs.get(leg_key(p.b.port, p.b.peer), zero),
            )
            for p in self.pairs or ()
        }

    def stop(self) -> None:
        """Delete our table (only ours; a missing one is fine). ip_forward stays as it is:
        something else may rely on it by now."""
        self._nft("-f", "-", stdin=render_delete(self.table))
        self.pairs, self._started = None, False

    # -- internals ---------------------------------------------------------------------------

    def _where(self) -> tuple[str, str]:
        return (self.table.family.table, self.table.name)

    def _replace(self, pairs: tuple[RelayPair, ...]) -> None:
        self._nft("-f", "-", stdin=render_replace(self.table, pairs))
        self.pairs = pairs
        self.replacements += 1

    def _existing_comment(self) -> str | None:
        try:
            return parse_comment(self._nft("-t", "list", "table", *self._where()))
        except KernelRelayError:
            return None  # no table yet (or unreadable: the replacement will say why)

    def _enable_ip_forward(self) -> bool:
        """Turn ip_forward on; True if it was on already."""
        try:
            if self._ip_forward.read_text().strip() == "1":
                return True
            self._ip_forward.write_text("1\n")
        except OSError as exc:
            raise KernelRelayError(f"cannot turn on {self._ip_forward}: {exc}") from None
        self.enabled_ip_forward = True
        return False

    def _nft(self, *args: str, stdin: str | None = None) -> str:
        argv = (self.nft, *args)
        try:
            r = self._runner(argv, stdin, self.timeout)
        except subprocess.TimeoutExpired:
            raise KernelRelayError(
                f"{' '.join(argv)}: timed out after {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise KernelRelayError(f"{' '.join(argv)}: {exc}") from None
        if r.returncode != 0:
            err = (r.stderr or "").strip() or f"exit {r.returncode}"
            raise KernelRelayError(f"{' '.join(argv)}: {err}")
        return r.stdout or ""
