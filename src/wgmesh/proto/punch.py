"""The daemon's endpoint choice: which candidate each WireGuard peer should use, and when to
make WireGuard shake hands at once so that both sides punch at the same moment.

Sans-IO: inputs are records resolved from DNS-SD (or mDNS hints), the interface's state and
``now``; the output is a :class:`Plan` of WireGuard updates and NAT-priming packets.

Rules (docs/protocol.md, "Choosing an endpoint"):

1. A handshake newer than ``handshake_fresh`` seconds means the current path works. Such an
   endpoint is kept over any new candidate until the record says the peer itself moved, i.e.
   the endpoint in use is no longer one of the peer's candidates. This is what stops flapping.
2. An endpoint WireGuard chose itself (roaming: an authenticated packet from an address we did
   not set) is newer than any record and is kept while its handshake is fresh.
3. A candidate we set must prove itself with a handshake within ``candidate_trial`` seconds,
   else the next candidate is tried; after the last, all are tried again after a backoff.
4. Candidates are tried LAN-first when the peer is on our LAN (it was seen over mDNS, or the
   registrar saw it behind our own public address), else in SRV priority order (public first).
5. When our own public mapping changes, every peer is made to shake hands again, so that the
   new mapping opens toward them while the registrar tells them about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.wg.control import DeviceState, PeerState, PeerUpdate

HANDSHAKE_FRESH = 135.0
"""A handshake this recent proves a path (WireGuard re-handshakes every 120 s when busy)."""


class Source(StrEnum):
    """Where an endpoint or candidate came from."""

    REGISTRAR = "registrar"
    LAN = "lan"
    STATIC = "static"
    ROAMING = "roaming"


@dataclass(frozen=True, slots=True)
class Hint:
    """One address at which a peer may be reachable."""

    endpoint: Endpoint
    """Where to send."""
    kind: str
    """``public`` (the registrar-observed mapping), ``lan``, ``ipv6``."""
    priority: int
    """SRV priority: lower is tried first."""
    source: Source = Source.REGISTRAR
    """Who told us."""


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What the zone (or mDNS) says about one peer."""

    key: bytes
    """WireGuard public key."""
    hints: tuple[Hint, ...]
    """Candidates, any order."""
    name: str = ""
    """Published name."""
    allowed_ips: tuple[str, ...] = ()
    """Published allowed IPs (admission list)."""
    nat: str = "unknown"
    """Published NAT class."""
    since: int = 0
    """When the public endpoint was first observed."""


@dataclass(frozen=True, slots=True)
class PunchConfig:
    """Timings of the endpoint choice."""

    handshake_fresh: float = HANDSHAKE_FRESH
    """A handshake this recent proves a path (WireGuard re-handshakes every 120 s when busy)."""
    candidate_trial: float = 6.0
    """Seconds a candidate has to produce a handshake before the next is tried. Longer than
    WireGuard's own retry (REKEY_TIMEOUT 5 s + jitter), so that retry lands on the same one."""
    punch_delay: float = 0.2
    """Seconds between opening our NAT toward a candidate (the low-TTL priming packet) and
    making WireGuard initiate to it, so that the peer, acting at the same moment, has opened
    its NAT too before either initiation arrives."""
    retry_min: float = 5.0
    """First pause after every candidate failed."""
    retry_max: float = 60.0
    """Longest pause between rounds of attempts (doubling from ``retry_min``)."""
    keepalive: int = 25
    """Persistent keepalive set on managed peers that have none (keeps NAT mappings open)."""
    mesh: bool = False
    """Mesh mode: add peers found in the zone, remove them when withdrawn."""


@dataclass(slots=True)
class _Peer:
    record: PeerRecord | None = None
    tried: list[Endpoint] = field(default_factory=list)
    pending: Endpoint | None = None
    pending_since: float = 0.0
    fire_at: float | None = None
    chosen: Endpoint | None = None
    chosen_source: Source | None = None
    rounds: int = 0
    next_round: float = 0.0
    added_by_us: bool = False
    kick: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now."""

    updates: tuple[PeerUpdate, ...] = ()
    """WireGuard changes to apply."""
    prime: tuple[Endpoint, ...] = ()
    """Send one low-TTL packet from the WireGuard port to each, before the updates (it opens our
    own NAT toward the peer without reaching the far NAT; see LAB-NOTES on open masquerade)."""


@dataclass(frozen=True, slots=True)
class PeerView:
    """One row of ``wgmesh peers`` (the JSON schema is documented in docs/cli.md)."""

    public_key: str
    name: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    source: str
    path: str
    reason: str
    latest_handshake: float
    rx_bytes: int
    tx_bytes: int
    candidates: tuple[str, ...]
    nat: str


class Planner:
    """Per-interface endpoint choice; see the module docstring."""

    def __init__(self, config: PunchConfig) -> None:
        self.config = config
        self.peers: dict[bytes, _Peer] = {}
        self.our_public: Endpoint | None = None
        """Our WireGuard port's public mapping, as the registrar last observed it."""
        self.our_nat: str = "unknown"
        self.lan_keys: set[bytes] = set()
        """Peers seen on our LAN (mDNS)."""

    # -- inputs -------------------------------------------------------------------------------

    def set_record(self, record: PeerRecord) -> None:
        """A fresh record for a peer (from DNS-SD or mDNS, merged by the caller)."""
        peer = self.peers.setdefault(record.key, _Peer())
        old = peer.record
        peer.record = record
        if old is None or _endpoints(old) != _endpoints(record):
            peer.tried = []
            peer.rounds = 0
            peer.next_round = 0.0

    def withdraw(self, key: bytes) -> None:
        """The registrar no longer lists the peer."""
        peer = self.peers.get(key)
        if peer is not None:
            peer.record = None

    def set_our_mapping(self, observed: Endpoint | None, nat: str) -> bool:
        """Our public mapping as the registrar saw it; True when it changed (rebinding)."""
        changed = (
            self.our_public is not None and observed is not None and observed != self.our_public
        )
        if observed is not None:
            self.our_public = observed
        self.our_nat = nat
        if changed:
            for peer in self.peers.values():
                peer.kick = True
        return changed

    # -- the decision -------------------------------------------------------------------------

    def plan(self, device: DeviceState, now: float) -> Plan:
        """Decide what to change on the interface now. Idempotent: call it after any input."""
        cfg = self.config
        on_device = {p.public_key: p for p in device.peers}
        updates: list[PeerUpdate] = []
        prime: list[Endpoint] = []
        for key, peer in self.peers.items():
            dev = on_device.get(key)
            if dev is None:
                if cfg.mesh and peer.record is not None and peer.record.allowed_ips:
                    peer.added_by_us = True
                    dev = PeerState(key, None, (), 0.0, 0, 0, 0)
                    updates.append(
                        PeerUpdate(
                            key,
                            allowed_ips=peer.record.allowed_ips,
                            persistent_keepalive=cfg.keepalive,
                        )
                    )
                else:
                    continue
            elif cfg.mesh and peer.added_by_us and peer.record is None:
                updates.append(PeerUpdate(key, remove=True))
                continue
            if peer.fire_at is not None:
                if now >= peer.fire_at:
                    peer.fire_at = None
                    peer.pending_since = now
                    keepalive = None if dev.persistent_keepalive else cfg.keepalive
                    assert peer.pending is not None
                    updates.append(
                        PeerUpdate(key, endpoint=peer.pending, handshake_now=True,
                                   persistent_keepalive=keepalive)
                    )  # fmt: skip
                continue
            update = self._plan_peer(key, peer, dev, now)
            if update is None:
                continue
            if update.endpoint is not None and update.endpoint != dev.endpoint:
                prime.append(update.endpoint)  # open our NAT toward it first
            if update.endpoint is not None and cfg.punch_delay > 0:
                peer.fire_at = now + cfg.punch_delay  # set and initiate after punch_delay
            else:
                updates.append(update)
        return Plan(tuple(updates), tuple(prime))

    def next_deadline(self) -> float | None:
        """When ``plan`` next has something to do on its own (a delayed punch, a trial end)."""
        times = [p.fire_at for p in self.peers.values() if p.fire_at is not None]
        times += [
            p.pending_since + self.config.candidate_trial
            for p in self.peers.values()
            if p.pending is not None and p.fire_at is None
        ]
        return min(times) if times else None

    def _plan_peer(self, key: bytes, peer: _Peer, dev: PeerState, now: float) -> PeerUpdate | None:
        cfg = self.config
        fresh = dev.latest_handshake > 0 and now - dev.latest_handshake < cfg.handshake_fresh
        keepalive = None if dev.persistent_keepalive else cfg.keepalive
        kick, peer.kick = peer.kick, False
        if peer.pending is not None:
            if dev.latest_handshake >= int(peer.pending_since):
                peer.chosen, peer.pending = dev.endpoint, None
                peer.chosen_source = (
                    self._source_of(peer, dev.endpoint) if dev.endpoint else Source.ROAMING
                )
                peer.rounds = 0
                return None
            if now - peer.pending_since < cfg.candidate_trial:
                return None
            peer.pending = None  # this candidate failed; fall through to the next one
        elif fresh and dev.endpoint is not None:
            if peer.chosen != dev.endpoint:  # WireGuard roamed, or a static endpoint works
                peer.chosen = dev.endpoint
                peer.chosen_source = self._source_of(peer, dev.endpoint)
            in_record = peer.record is None or dev.endpoint in _endpoints(peer.record)
            # Only an endpoint we took from a record can be outdated by a record; a static or
            # roaming endpoint with a fresh handshake is newer than anything the zone says.
            moved = not in_record and peer.chosen_source in (Source.REGISTRAR, Source.LAN)
            if not moved:
                if kick:
                    return PeerUpdate(key, handshake_now=True, persistent_keepalive=keepalive)
                return None
            peer.tried = []  # the peer itself moved: its record no longer has this endpoint
        if peer.record is None:
            return None
        order = self._order(peer.record)
        untried = [ep for ep in order if ep not in peer.tried]
        if not untried:
            if now < peer.next_round:
                return None
            peer.tried = []
            peer.rounds += 1
            untried = order
        if not untried:
            return None
        target = untried[0]
        peer.tried.append(target)
        if len(peer.tried) == len(order):
            delay = min(cfg.retry_max, cfg.retry_min * 2 ** min(peer.rounds, 8))
            peer.next_round = now + cfg.candidate_trial + delay
        peer.pending = target
        peer.pending_since = now
        return PeerUpdate(key, endpoint=target, handshake_now=True, persistent_keepalive=keepalive)

    def _order(self, record: PeerRecord) -> list[Endpoint]:
        lan_first = record.key in self.lan_keys or (
            self.our_public is not None
            and any(
                h.kind == "public" and h.endpoint.ip == self.our_public.ip for h in record.hints
            )
        )

        def rank(h: Hint) -> tuple[int, int]:
            if lan_first:
                return (0 if h.kind == "lan" else 1, h.priority)
            return (0, h.priority)

        out: list[Endpoint] = []
        for h in sorted(record.hints, key=rank):
            if h.endpoint not in out:
                out.append(h.endpoint)
        return out

    @staticmethod
    def _source_of(peer: _Peer, endpoint: Endpoint | None) -> Source:
        if peer.record is not None:
            for h in peer.record.hints:
                if h.endpoint == endpoint:
                    return Source.LAN if h.source == Source.LAN else Source.REGISTRAR
        return Source.ROAMING if peer.chosen_source is not None else Source.STATIC

    # -- reporting ----------------------------------------------------------------------------

    def views(self, device: DeviceState, now: float) -> list[PeerView]:
        """Rows for ``wgmesh peers``."""
        out = []
        for dev in device.peers:
            peer = self.peers.get(dev.public_key, _Peer())
            out.append(view_of(dev, peer.record, self, now, peer))
        return out


def view_of(
    dev: PeerState,
    record: PeerRecord | None,
    planner: Planner | None,
    now: float,
    peer: _Peer | None = None,
) -> PeerView:
    """A ``wgmesh peers`` row from what is known (the planner's state is optional)."""
    fresh_limit = planner.config.handshake_fresh if planner else HANDSHAKE_FRESH
    fresh = dev.latest_handshake > 0 and now - dev.latest_handshake < fresh_limit
    source = "static"
    if peer is not None and peer.chosen_source is not None and peer.chosen == dev.endpoint:
        source = str(peer.chosen_source)
    elif record is not None and dev.endpoint is not None:
        source = "roaming"
        for h in record.hints:
            if h.endpoint == dev.endpoint:
                source = str(h.source) if h.source == Source.LAN else "registrar"
    elif dev.endpoint is None:
        source = "none"
    if fresh:
        path, reason = "direct", ""
    else:
        path = "none"
        reason = why_not_direct(dev, record, planner, peer)
    return PeerView(
        public_key=encode_key(dev.public_key),
        name=record.name if record else "",
        allowed_ips=dev.allowed_ips,
        endpoint=str(dev.endpoint) if dev.endpoint else None,
        source=source,
        path=path,
        reason=reason,
        latest_handshake=dev.latest_handshake,
        rx_bytes=dev.rx_bytes,
        tx_bytes=dev.tx_bytes,
        candidates=tuple(f"{h.kind}:{h.endpoint}" for h in (record.hints if record else ())),
        nat=record.nat if record else "unknown",
    )


def why_not_direct(
    dev: PeerState, record: PeerRecord | None, planner: Planner | None, peer: _Peer | None
) -> str:
    """A person-readable reason for a peer with no working direct path."""
    if record is None:
        if dev.endpoint is None:
            return "peer is not registered (no DNS-SD record) and has no static endpoint"
        return "no handshake on the static endpoint; peer is not registered"
    ours = planner.our_nat if planner else "unknown"
    theirs = record.nat
    filtering = {"cone", "symmetric", "unknown"}
    if theirs == "symmetric" and ours == "symmetric":
        return "both peers are behind symmetric NATs: no direct path without a relay"
    if theirs == "symmetric" and ours in filtering - {"symmetric"}:
        return (
            "peer is behind a symmetric NAT and we are behind a filtering NAT: "
            "no direct path without a relay (a port forward on either side would fix it)"
        )
    if ours == "symmetric" and theirs in filtering - {"symmetric"}:
        return (
            "we are behind a symmetric NAT and the peer is behind a filtering NAT: "
            "no direct path without a relay (a port forward on either side would fix it)"
        )
    if peer is not None and peer.pending is not None:
        return f"trying {peer.pending} ({len(peer.tried)} of {len(record.hints)} candidates)"
    if dev.latest_handshake > 0:
        return "last handshake is stale; retrying candidates"
    return "no handshake yet on any candidate"


def _endpoints(record: PeerRecord) -> list[Endpoint]:
    return [h.endpoint for h in record.hints]


def merge_hints(*groups: Iterable[Hint]) -> tuple[Hint, ...]:
    """Union of hints from several sources (DNS-SD, mDNS), first occurrence wins."""
    seen: dict[Endpoint, Hint] = {}
    for group in groups:
        for h in group:
            seen.setdefault(h.endpoint, h)
    return tuple(seen.values())
