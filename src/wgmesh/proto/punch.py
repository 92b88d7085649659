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
6. Both peers act on the same registrar event, so the two initiations are staggered: the peer
   with the lower key (the *lead*) initiates ``punch_delay`` after opening its NAT, the other one
   ``punch_stagger`` later, and only if no handshake came in meanwhile. WireGuard drops the
   response to its own initiation once it has answered the peer's, so two initiations that
   cross in flight both fail and the next try waits for WireGuard's 5 s retry; a lost lead
   initiation (the far NAT not open yet) costs only the stagger, since the follower's then
   finds both NATs open.
7. A path that stops carrying traffic (see :meth:`Planner.watch_traffic`) asks for a registrar
   probe at once, so a NAT rebinding is registered and pushed to the peers within a second or
   two instead of at the next periodic probe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from wgmesh.proto.device import DEFAULT_KEEPALIVE, DeviceState, PeerState, PeerUpdate
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.proto.kinds import CandidateKind

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
    kind: CandidateKind
    """What the address is (the registrar-observed mapping, a LAN or an IPv6 address)."""
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
    punch_delay: float = 0.05
    """Seconds between opening our NAT toward a candidate (the low-TTL priming packet) and
    making WireGuard initiate to it when we lead, so that the peer, acting at about the same
    moment, has opened its NAT too (at least this, and twice the registrar round trip)."""
    punch_stagger: float = 0.3
    """Further seconds the follower (the higher key) waits before initiating, and then only if
    no handshake came in (at least this, and three registrar round trips)."""
    stall_after: float = 1.0
    """Seconds without received bytes after which a busy path counts as stalled."""
    busy_bytes: int = 256
    """Bytes received in one sample that show the peer is sending data, not just a handshake
    (148 + 32 bytes) or a keepalive (32); two samples in a row with any growth show it too."""
    stall_probes: int = 3
    """Stall-triggered registrar probes allowed in a burst ..."""
    stall_refill: float = 10.0
    """... and seconds to earn one more (a token bucket)."""
    retry_min: float = 5.0
    """First pause after every candidate failed."""
    retry_max: float = 60.0
    """Longest pause between rounds of attempts (doubling from ``retry_min``)."""
    keepalive: int = DEFAULT_KEEPALIVE
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
    hs_at_prime: float = 0.0


@dataclass(slots=True)
class _Traffic:
    """What :meth:`Planner.watch_traffic` remembers of one peer's counters."""

    rx: int
    tx: int
    rx_at: float
    """When rx last grew (or when first seen)."""
    handshake: float = 0.0
    """latest_handshake at the last sample."""
    rx_streak: int = 0
    """Consecutive samples in which rx grew."""
    tx_only: int = 0
    """Samples in which tx grew but rx did not, since rx last grew."""
    busy: bool = False
    """The peer has been sending data to us (since the last stall)."""
    stalled: bool = False
    """A stall was reported; not again until rx grows."""


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
        self.own_key = b""
        """Our public key: decides which side of a pair leads the punch (rule 6)."""
        self.registrar_rtt = 0.0
        """Smoothed registration round trip in seconds (scales the punch delays)."""
        self.traffic: dict[bytes, _Traffic] = {}
        self.traffic_active = False
        """The last :meth:`watch_traffic` saw data move (``busy_bytes`` or more; keepalives
        do not count) or a stall building up: worth sampling often (the daemon samples idle
        interfaces only as often as it plans)."""
        self._kick_others = False
        self._tokens = float(config.stall_probes)
        self._tokens_at: float | None = None

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
            self._kick_others = True
        return changed

    def observe_rtt(self, sample: float) -> None:
        """One registration round trip: smoothed as TCP's SRTT (RFC 6298: 1/8 of each new
        sample), so one slow answer does not stretch the next punch."""
        if self.registrar_rtt == 0.0:
            self.registrar_rtt = sample
        else:
            self.registrar_rtt += (sample - self.registrar_rtt) / 8

    # -- the decision -------------------------------------------------------------------------

    def plan(self, device: DeviceState, now: float) -> Plan:
        """Decide what to change on the interface now. Idempotent: call it after any input."""
        cfg = self.config
        on_device = {p.public_key: p for p in device.peers}
        updates: list[PeerUpdate] = []
        prime: list[Endpoint] = []
        if self._kick_others:  # rule 5 for peers without a record (static endpoints): a
            self._kick_others = False  # public one roams to our new port when it hears us
            for other in device.peers:
                if other.public_key in self.peers or not other.endpoint:
                    continue
                if _fresh(other, now, cfg):
                    keepalive = None if other.persistent_keepalive else cfg.keepalive
                    updates.append(
                        PeerUpdate(other.public_key, handshake_now=True,
                                   persistent_keepalive=keepalive)
                    )  # fmt: skip
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
                    if dev.latest_handshake > peer.hs_at_prime:
                        # the peer's initiation came through: keep the path it used
                        peer.chosen, peer.pending = dev.endpoint, None
                        peer.chosen_source = self._source_of(peer, dev.endpoint)
                        peer.rounds = 0
                        continue
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
            delay = self.punch_delay(key, session=_fresh(dev, now, cfg))
            if update.endpoint is not None and delay > 0:
                peer.fire_at = now + delay  # set and initiate after the delay
                peer.hs_at_prime = dev.latest_handshake
            else:
                updates.append(update)
        return Plan(tuple(updates), tuple(prime))

    def punch_delay(self, key: bytes, session: bool = False) -> float:
        """Seconds from priming to initiating toward peer ``key`` (rule 6). With a live
        ``session`` the kick sends a keepalive, not an initiation, so nothing can cross and the
        follower does not wait."""
        cfg = self.config
        delay = max(cfg.punch_delay, 2 * self.registrar_rtt) if cfg.punch_delay > 0 else 0.0
        if not session and self.own_key and self.own_key > key:
            delay += max(cfg.punch_stagger, 3 * self.registrar_rtt)
        return delay

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
        fresh = _fresh(dev, now, cfg)
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
                h.kind == CandidateKind.PUBLIC and h.endpoint.ip == self.our_public.ip
                for h in record.hints
            )
        )

        def rank(h: Hint) -> tuple[int, int]:
            if lan_first:
                return (0 if h.kind == CandidateKind.LAN else 1, h.priority)
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

    # -- stalled paths ------------------------------------------------------------------------

    def watch_traffic(self, device: DeviceState, now: float) -> bool:
        """Feed the interface's transfer counters, sampled every fraction of a second; True when
        a registrar probe should go out now, because a path that carried traffic has stalled:

        - we keep sending but nothing has come back for ``stall_after`` seconds (tx grew in two
          samples since rx last did), or
        - the peer was sending data (rx grew in two samples in a row, or by ``busy_bytes`` in
          one) and went silent for ``stall_after`` seconds.

        Either is what a rebinding of our NAT looks like from inside (both also happen when
        traffic merely ends, which costs one probe). A sample in which a handshake completed
        does not count as data, so a new connection that carries nothing is not a stall. Only
        peers that have completed a handshake count; each stall is reported once, until rx
        grows again; probes are rate-limited by a token bucket (``stall_probes``, one more
        every ``stall_refill`` seconds), and a stall that finds the bucket empty waits for the
        next token. Samples closer than a quarter of ``stall_after`` to the previous one are
        ignored (a plan right after a sample).
        """
        cfg = self.config
        if self._tokens_at is not None and now - self._tokens_at < cfg.stall_after / 4:
            return False  # too close to the last sample to say anything about rates
        if self._tokens_at is not None:
            earned = (now - self._tokens_at) / cfg.stall_refill
            self._tokens = min(float(cfg.stall_probes), self._tokens + earned)
        self._tokens_at = now
        stalled: list[_Traffic] = []
        seen = set()
        self.traffic_active = False
        for dev in device.peers:
            seen.add(dev.public_key)
            t = self.traffic.get(dev.public_key)
            if t is None or dev.rx_bytes < t.rx or dev.tx_bytes < t.tx:  # new, or counters reset
                self.traffic[dev.public_key] = _Traffic(
                    dev.rx_bytes, dev.tx_bytes, now, dev.latest_handshake
                )
                continue
            moved = dev.rx_bytes - t.rx + dev.tx_bytes - t.tx
            shook, t.handshake = dev.latest_handshake != t.handshake, dev.latest_handshake
            if dev.rx_bytes > t.rx and shook:  # handshake bytes are not data: a connection
                t.rx_at, t.tx_only, t.stalled = now, 0, False  # that stays quiet after it
                t.rx_streak = 0  # has not stalled
            elif dev.rx_bytes > t.rx:
                t.rx_at, t.tx_only, t.stalled = now, 0, False
                t.rx_streak += 1
                t.busy = t.busy or t.rx_streak >= 2 or dev.rx_bytes - t.rx >= cfg.busy_bytes
            else:
                t.rx_streak = 0
                if dev.tx_bytes > t.tx:
                    t.tx_only += 1
            t.rx, t.tx = dev.rx_bytes, dev.tx_bytes
            if moved >= cfg.busy_bytes or (t.busy and not t.stalled):
                self.traffic_active = True  # data flows, or a stall may be building up
            if (
                not t.stalled
                and dev.latest_handshake > 0
                and (t.busy or t.tx_only >= 2)
                and now - t.rx_at >= cfg.stall_after
            ):
                stalled.append(t)
        for key in self.traffic.keys() - seen:
            del self.traffic[key]
        if not stalled or self._tokens < 1.0:
            return False  # without a token the stall stays pending until one is earned
        self._tokens -= 1.0
        for t in stalled:
            t.stalled, t.busy = True, False
        return True

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


def _fresh(dev: PeerState, now: float, cfg: PunchConfig) -> bool:
    return dev.latest_handshake > 0 and now - dev.latest_handshake < cfg.handshake_fresh


def _endpoints(record: PeerRecord) -> list[Endpoint]:
    return [h.endpoint for h in record.hints]


def merge_hints(*groups: Iterable[Hint]) -> tuple[Hint, ...]:
    """Union of hints from several sources (DNS-SD, mDNS), first occurrence wins."""
    seen: dict[Endpoint, Hint] = {}
    for group in groups:
        for h in group:
            seen.setdefault(h.endpoint, h)
    return tuple(seen.values())
