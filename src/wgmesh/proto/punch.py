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
   two instead of at the next periodic probe; and it is re-punched from both sides whether or
   not a mapping changed: we shake hands again at once, and the registrar passes a Repunch to
   the peer, which does the same (a NAT that lost the flow's state lets packets in again only
   after one went out from behind it).
8. The relay (wgmesh.proto.relay) is wanted (:attr:`Plan.relay`) for a peer whose NAT class
   and ours leave no direct path (:func:`wgmesh.proto.kinds.relay_predicted`), or once a whole
   round of its candidates failed, and for as long as the path uses it. Once the relay's
   address is ready (:meth:`Planner.set_relay`) it is used at once when predicted, else when
   the round's candidates are all tried (instead of backing off). From the relay, direct is
   tried again every ``relay_retry`` seconds, at multiples of it on the wall clock so that both
   peers try at the same moment, and at once when a NAT class changes so that the prediction
   no longer holds; a failed try goes back to the relay at once. The initiation through the
   relay is made by a renewed peer (``PeerUpdate.renew``) when there is no session: a direct
   initiation in the last 5 s would otherwise hold it back until WireGuard's retry. A proven
   direct path releases the relay: the relay is left only for a handshake, never for a record.

9. Address families (docs/protocol.md, "Choosing an address family"). An IPv6 candidate is
   tried only when we have an IPv6 mapping ourselves (the registrar saw us over IPv6, so we
   have a route); an IPv4 candidate is always kept (an IPv6-only host tries them last, and a
   send without a route costs one trial). When we have an IPv6 mapping and the record has an
   IPv6 candidate (the peer registered over IPv6 too), the IPv6 candidates go first: both
   sides order alike and punch them at once as in rule 6, the NAT classes (an IPv4 matter:
   IPv6 has firewalls, not NATs) predict no relay for them, and a failed IPv6 trial falls
   back to the IPv4 ones, then to the relay. Once the pair's path is proven on IPv4 (a
   fallback, a roaming, a session older than this daemon) or its IPv6 path stalled
   unrepaired, IPv4 goes first for that peer and stays first: there is no timed return to
   IPv6, which could only flap. IPv6 goes first again when the IPv4 path fails and an IPv6
   one is proven, or when the peer's IPv6 candidates or our IPv6 mapping change (a new
   network). Candidates are deduplicated by endpoint, so a global address the peer reports
   for itself behind a firewall without NAT, which is its IPv6 mapping too, is tried once.

Each peer's path is in one explicit state (UNKNOWN, PRIMED, TRYING, DIRECT, WAITING), and the
transitions between them are one table, :data:`wgmesh.proto.pathstate.TRANSITIONS`. A plan
reads each peer's inputs as one event of its state (``Planner._observe``), takes the
transition the table gives and does what the event does (``Planner._take``). The stall watch
of rule 7 is :mod:`wgmesh.proto.stall`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from wgmesh.errors import LocalProtocolError
from wgmesh.proto.candidates import Hint, PeerRecord, Source, merge_hints
from wgmesh.proto.clash import ClashIndex, Seen, explain, seen_of
from wgmesh.proto.device import SESSION_LIFETIME, DeviceState, PeerState, PeerUpdate
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind, NatKind, relay_predicted
from wgmesh.proto.pathstate import (
    HANDSHAKE_FRESH,
    PathEvent,
    PathState,
    PeerPath,
    Punch,
    Rounds,
    Trial,
    next_state,
)
from wgmesh.proto.peerview import PeerView, view_of, why_not_direct
from wgmesh.proto.punchconfig import PunchConfig
from wgmesh.proto.stall import StallWatch

__all__ = [
    "HANDSHAKE_FRESH",
    "Hint",
    "PathEvent",
    "PathState",
    "PeerPath",
    "PeerRecord",
    "PeerView",
    "Plan",
    "Planner",
    "PunchConfig",
    "Source",
    "merge_hints",
    "view_of",
    "why_not_direct",
]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now."""

    updates: tuple[PeerUpdate, ...] = ()
    """WireGuard changes to apply."""
    prime: tuple[Endpoint, ...] = ()
    """Send one low-TTL packet from the WireGuard port to each, before the updates (it opens our
    own NAT toward the peer without reaching the far NAT; see docs/lab.md, "What the lab
    machines do", on masquerade without a firewall)."""
    relay: frozenset[bytes] = frozenset()
    """The peers to keep a relay allocation for (rule 8)."""
    why: Mapping[bytes, str] = field(default_factory=dict)
    """Per peer with an update: why, for the log."""


class Planner:
    """Per-interface endpoint choice; see the module docstring."""

    def __init__(self, config: PunchConfig, own_key: bytes = b"") -> None:
        self.config = config
        """The timings."""
        self.registrar_rtt = 0.0
        """Smoothed registration round trip in seconds (scales the punch delays)."""
        self.registrar_ips: frozenset[object] = frozenset()
        """The registrar's addresses: an endpoint on one of them is one of its relay ports."""
        self._ipv4_first: dict[bytes, tuple[Endpoint | None, frozenset[Endpoint]]] = {}
        self._ipv6_from_relay: set[bytes] = set()  # relayed peers that tried IPv6 once since
        # peers whose IPv4 path is preferred (rule 9): our IPv6 mapping and the record's IPv6
        # candidates when that was decided; a change of either lifts it
        self._own_key = own_key
        self._peers: dict[bytes, PeerPath] = {}
        self._mappings: dict[int, Endpoint] = {}
        self._nat = NatKind.UNKNOWN
        self._lan_keys: set[bytes] = set()
        self._members: dict[bytes, tuple[str, ...]] = {}  # mesh mode: vouched for, sealed
        self._kick_others = False
        self._stalls = StallWatch(config)
        self._why: dict[bytes, str] = {}
        self._planned_at = float("-inf")
        """The ``now`` of the last :meth:`plan`: whatever was due by then, it did."""
        self._listen_port = 0
        self._clashes: ClashIndex | None = None  # rebuilt after the records or ours change

    @property
    def registrar_ip(self) -> object:
        """One registrar address (the lowest), None when unset; setting it sets
        :attr:`registrar_ips` to that address alone."""
        return min(self.registrar_ips, key=str, default=None)

    @registrar_ip.setter
    def registrar_ip(self, ip: object) -> None:
        self.registrar_ips = frozenset() if ip is None else frozenset({ip})

    @property
    def own_key(self) -> bytes:
        """Our public key: decides which side of a pair leads the punch (rule 6)."""
        return self._own_key

    @property
    def our_mappings(self) -> tuple[Endpoint, ...]:
        """Our WireGuard port's public mappings as the registrar last observed them, at most
        one per address family, IPv4 first."""
        return tuple(self._mappings[f] for f in sorted(self._mappings))

    @property
    def our_nat(self) -> NatKind:
        """Our NAT class as the registrar last classified it."""
        return self._nat

    @property
    def traffic_active(self) -> bool:
        """The last :meth:`watch_traffic` saw data move (``busy_bytes`` or more; keepalives
        do not count) or a stall building up: worth sampling often (the daemon samples idle
        interfaces only as often as it plans)."""
        return self._stalls.active

    # -- inputs -------------------------------------------------------------------------------

    def set_record(self, record: PeerRecord) -> None:
        """A fresh record for a peer (from DNS-SD or mDNS, merged by the caller). A record
        whose candidates differ from the last one restarts the search through them."""
        peer = self._peers.setdefault(record.key, PeerPath())
        old = peer.record
        had_ipv6 = old is not None and bool(self._ipv6_candidates(old))
        peer.record = record
        self._clashes = None
        if old is None or _endpoints(old) != _endpoints(record):
            peer.rounds = Rounds()
        if old is not None and old.nat != record.nat:
            self._prediction_moved(peer, self._nat, old.nat)
        if not had_ipv6:
            self._ipv6_appeared(peer)

    def set_relay(self, key: bytes, relay: Endpoint | None) -> None:
        """The relay's address for ``key`` is ready (or gone: None)."""
        peer = self._peers.setdefault(key, PeerPath())
        peer.relay = relay

    def withdraw(self, key: bytes) -> None:
        """The registrar no longer lists the peer."""
        peer = self._peers.get(key)
        if peer is not None:
            peer.record = None
            self._clashes = None

    def record(self, key: bytes) -> PeerRecord | None:
        """The record currently held for a peer."""
        peer = self._peers.get(key)
        return peer.record if peer is not None else None

    def recorded_keys(self) -> set[bytes]:
        """Keys that currently have a record."""
        return {key for key, peer in self._peers.items() if peer.record is not None}

    def set_members(self, members: Mapping[bytes, tuple[str, ...]]) -> None:
        """Mesh mode: the members the registrar vouched for over the sealed channel, with their
        allowed IPs (wgmesh.proto.roster). Only these are ever added to the interface, with
        exactly these allowed IPs; a record's ``allowed_ips`` (read from DNS) never is."""
        self._members = dict(members)

    @property
    def members(self) -> Mapping[bytes, tuple[str, ...]]:
        """Mesh mode: the members and allowed IPs last vouched for (:meth:`set_members`)."""
        return self._members

    def add_lan_peer(self, key: bytes) -> None:
        """mDNS saw this peer on our LAN: its LAN candidates go first (rule 4)."""
        self._lan_keys.add(key)

    def set_our_mapping(self, observed: tuple[Endpoint, ...], nat: NatKind) -> bool:
        """Our WireGuard port's public mappings as the registrar observed them, at most one per
        address family, and our NAT class. True when the mapping of a family we already had
        changed (a rebinding): every peer is then made to shake hands again (rule 5). A family
        missing from ``observed`` is forgotten (the registrar has none for it now), which is
        not a change. Raises LocalProtocolError for two mappings of one family."""
        mappings: dict[int, Endpoint] = {}
        for ep in observed:
            if ep.family in mappings:
                raise LocalProtocolError(f"two observed mappings for IPv{ep.family}")
            mappings[ep.family] = ep
        changed = any(
            family in self._mappings and self._mappings[family] != ep
            for family, ep in mappings.items()
        )
        had_ipv6 = 6 in self._mappings
        self._mappings = mappings
        self._clashes = None
        before, self._nat = self._nat, nat
        if nat != before:
            for peer in self._peers.values():
                self._prediction_moved(peer, before, None)
        if not had_ipv6 and 6 in mappings:
            for peer in self._peers.values():
                self._ipv6_appeared(peer)
        if changed:
            for peer in self._peers.values():
                peer.kick, peer.kick_why = True, "our public mapping changed: shaking hands again"
            self._kick_others = True
        return changed

    def _ipv6_appeared(self, peer: PeerPath) -> None:
        """The pair can now use IPv6 (the peer's record gained an IPv6 candidate, or we got an
        IPv6 mapping): a peer on the relay tries direct over IPv6 at its next plan, where the
        NAT classes that sent it to the relay do not apply (rules 8 and 9; the first record a
        daemon reads often predates the peer's IPv6 registration)."""
        record = peer.record
        if record is None or not self._ipv6_candidates(record):
            return
        self._ipv6_from_relay.discard(record.key)
        if peer.state in (PathState.TRYING, PathState.WAITING, PathState.UNKNOWN):
            peer.rounds = Rounds()  # the search starts again, IPv6 first
        if peer.relay is not None or peer.state is PathState.RELAYED or peer.upgrading:
            peer.upgrade_now = True  # (a relay still on its way: the RELAY event tries IPv6)

    def _prediction_moved(
        self, peer: PeerPath, ours_before: NatKind, theirs_before: NatKind | None
    ) -> None:
        """A NAT class changed: a relayed peer for which direct was predicted impossible and
        no longer is tries direct at its next plan on the relay (rule 8), also when it is on
        its way there (the relay's endpoint set, its handshake not seen yet)."""
        if peer.relay is None or peer.record is None:
            return
        attempt = peer.attempt
        on_the_way = attempt is not None and attempt.target == peer.relay
        if peer.state is not PathState.RELAYED and not peer.upgrading and not on_the_way:
            return
        before = relay_predicted(ours_before, theirs_before or peer.record.nat)
        if before and not relay_predicted(self._nat, peer.record.nat):
            peer.upgrade_now = True

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
        if device.listen_port != self._listen_port:
            self._listen_port, self._clashes = device.listen_port, None
        on_device = {p.public_key: p for p in device.peers}
        updates: list[PeerUpdate] = []
        prime: list[Endpoint] = []
        self._why = {}
        self._planned_at = now
        if self._kick_others:  # rule 5 for peers without a record (static endpoints): a
            self._kick_others = False  # public one roams to our new port when it hears us
            for other in device.peers:
                if other.public_key in self._peers or not other.endpoint:
                    continue
                if _fresh(other, now, cfg):
                    keepalive = None if other.persistent_keepalive else cfg.keepalive
                    updates.append(
                        PeerUpdate(other.public_key, handshake_now=True,
                                   persistent_keepalive=keepalive)
                    )  # fmt: skip
                    self._because(other.public_key, "our public mapping changed")
        for key, peer in self._peers.items():
            dev = on_device.get(key)
            vouched = self._members.get(key) if cfg.mesh else None
            if dev is None:
                if vouched and peer.record is not None:
                    peer.added_by_us = True
                    dev = PeerState(key, None, vouched, 0.0, 0, 0, 0)
                    updates.append(
                        PeerUpdate(key, allowed_ips=vouched, persistent_keepalive=cfg.keepalive)
                    )
                    self._because(key, "a mesh member the registrar vouches for")
                else:
                    continue
            elif cfg.mesh and peer.added_by_us:
                if peer.record is None or not vouched:  # withdrawn, or no longer a member
                    updates.append(PeerUpdate(key, remove=True))
                    self._because(key, "withdrawn, or no longer a mesh member")
                    continue
                if sorted(dev.allowed_ips) != sorted(vouched):  # the admission file changed
                    updates.append(PeerUpdate(key, allowed_ips=vouched))
                    self._because(key, "the admission file changed its allowed IPs")
            event, target, rounds = self._observe(key, peer, dev, now)
            self._take(key, peer, dev, now, event, target, rounds, updates, prime)
            self._relay_kick_due(key, peer, dev, now, updates)
        relay = frozenset(
            key for key, peer in self._peers.items()
            if key in on_device and self._wants_relay(peer, on_device[key], now)
        )  # fmt: skip
        return Plan(tuple(updates), tuple(prime), relay, self._why)

    def _upgrade_due(self, peer: PeerPath, now: float) -> bool:
        """A relayed peer tries direct now (rule 8): at once after a change that may have
        opened a direct path (``upgrade_now``), else at its slot, but not while both sides'
        NAT classes are known and leave no direct path: each try sets a direct endpoint on a working
        relayed path, and both sides try at the same slot, so a futile try costs the tunnel
        up to a trial per candidate every ``relay_retry`` seconds."""
        if peer.upgrade_now:
            return True
        if now < peer.upgrade_at:
            return False
        record = peer.record
        known = record is not None and NatKind.UNKNOWN not in (self._nat, record.nat)
        return not (known and self._predicted(peer, None))  # an unclassified side may surprise

    def _because(self, key: bytes, why: str) -> None:
        self._why[key] = f"{self._why[key]}; {why}" if key in self._why else why

    def _wants_relay(self, peer: PeerPath, dev: PeerState, now: float) -> bool:
        """Rule 8: keep a relay allocation for this peer."""
        if peer.record is None or not peer.record.hints:
            return False
        if peer.state is PathState.RELAYED or peer.upgrading or peer.unrepaired:
            return True
        if self._unrepaired(peer.record.key, peer, now):
            return True
        if (
            peer.relay is None
            and dev.endpoint is not None
            and dev.endpoint.ip in self.registrar_ips
        ):  # a relay address we hold no lease for (we restarted): ask, the registrar returns
            return True  # the pair's allocation, and we bind it again
        target = peer.attempt.target if peer.attempt is not None else None
        if peer.relay is not None and peer.relay in (dev.endpoint, target):
            return True  # the path uses the relay, or is trying it: releasing it would undo it
        if peer.state is PathState.DIRECT and _fresh(dev, now, self.config):
            return False  # a proven direct path
        if self._predicted(peer, target) or self.clash_reason(peer.record.key):
            return True  # a clash: allocate now, use it once direct fails (it may be ours)
        return peer.rounds.count > 0 or (
            peer.state is PathState.WAITING and bool(peer.rounds.tried)
        )

    def clash_reason(self, key: bytes) -> str:
        """Why ``key`` may be unreachable directly: it shares a NAT and a WireGuard port with
        another host of the mesh (wgmesh.proto.clash); "" when it does not."""
        if self._clashes is None:
            hosts = {
                k: seen_of(p.record.name, ((h.endpoint, h.kind) for h in p.record.hints))
                for k, p in self._peers.items()
                if p.record is not None
            }
            if self._own_key and self._listen_port:
                hosts[self._own_key] = Seen("", self.our_mappings, frozenset({self._listen_port}))
            self._clashes = ClashIndex(hosts)
        return explain(key, self._clashes, self._own_key)

    def _observe(
        self, key: bytes, peer: PeerPath, dev: PeerState, now: float
    ) -> tuple[PathEvent, Endpoint | None, Rounds]:
        """Which event the inputs amount to in the peer's state; with the candidate it is
        about, and the search after it. Reads only: :meth:`_take` changes things."""
        cfg = self.config
        attempt = peer.attempt
        restart = starting_upgrade = False
        if (
            peer.relay is not None
            and dev.endpoint != peer.relay
            and attempt is None
            and self._unrepaired(key, peer, now)
        ):  # re-punching did not bring the path back: the relay takes it (rule 8)
            peer.stall_at = 0.0
            return PathEvent.RELAY, peer.relay, peer.rounds
        if (
            attempt is not None
            and peer.relay is not None
            and attempt.target != peer.relay
            and not peer.upgrading
            and peer.record is not None
            and (peer.unrepaired or self._predicted(peer, attempt.target))
        ):  # a direct try that cannot work (or is made while a stall waits for the relay), and
            # the relay just became ready: no waiting it out
            return PathEvent.RELAY, peer.relay, peer.rounds
        match peer.state:
            case PathState.PRIMED:
                assert isinstance(attempt, Punch)
                if now < attempt.fire_at:
                    return PathEvent.WAIT, None, peer.rounds
                if dev.latest_handshake > attempt.handshake:
                    return PathEvent.ANSWERED, dev.endpoint, peer.rounds
                return PathEvent.FIRE, attempt.target, peer.rounds
            case PathState.TRYING:
                assert isinstance(attempt, Trial)
                shaken = dev.latest_handshake >= int(attempt.since) and (
                    dev.latest_handshake != attempt.handshake
                )
                if shaken or _carried(attempt, dev, now):
                    if peer.relay is not None and dev.endpoint == peer.relay:
                        return PathEvent.RELAY_FRESH, dev.endpoint, peer.rounds
                    return PathEvent.HANDSHAKE, dev.endpoint, peer.rounds
                if now - attempt.since < cfg.candidate_trial:
                    return PathEvent.WAIT, None, peer.rounds
            case _ if (
                peer.relay is not None
                and dev.endpoint == peer.relay
                and _fresh_relayed(dev, now)
                and not _fresh(dev, now, cfg)
                and peer.state is PathState.RELAYED
                and not self._upgrade_due(peer, now)
            ):  # a quiet relayed tunnel: its rekey may come as late as 145 s (rule 8)
                return PathEvent.RELAY_FRESH, dev.endpoint, peer.rounds
            case _ if _fresh(dev, now, cfg) and dev.endpoint is not None:  # settled
                if peer.relay is not None and dev.endpoint == peer.relay:
                    upgrade = peer.state is PathState.RELAYED and self._upgrade_due(peer, now)
                    if not upgrade or peer.record is None or not peer.record.hints:
                        return PathEvent.RELAY_FRESH, dev.endpoint, peer.rounds
                    restart = starting_upgrade = True  # try direct again (rule 8): a fresh round
                elif self._unrepaired(key, peer, now) and peer.record is not None:
                    restart = True  # re-punched and still silent: the record's candidates
                    peer.stall_at = 0.0  # (a roamed or static endpoint included) until the
                    peer.unrepaired = True  # relay asked for now is ready
                    if dev.endpoint.family == 6:  # IPv4 first from now on (rule 9)
                        self._prefer_ipv4(key, peer.record)
                else:
                    source = self._proven_source(peer, dev.endpoint)
                    in_record = peer.record is None or dev.endpoint in _endpoints(peer.record)
                    # Only an endpoint we took from a record (or the relay) can be outdated by
                    # a record; a static or roaming endpoint with a fresh handshake is newer
                    # than anything the zone says.
                    if in_record or source not in (Source.REGISTRAR, Source.LAN, Source.RELAY):
                        return PathEvent.FRESH, dev.endpoint, peer.rounds
                    restart = True  # the peer moved: its record no longer has this endpoint
        rounds = peer.rounds.restart() if restart else peer.rounds
        if peer.record is None:
            return PathEvent.NO_CANDIDATE, None, rounds
        if (
            peer.relay is None
            and peer.state in (PathState.UNKNOWN, PathState.WAITING)
            and (
                self._predicted(peer, None)
                or (cfg.wait_unclassified and NatKind.UNKNOWN in (self._nat, peer.record.nat))
            )
        ):  # the relay is (or may be about to be) asked for: a direct initiation now would
            # hold the relayed one back 5 s; an unclassified NAT is classified within moments
            if not peer.relay_wait_until:
                peer.relay_wait_until = now + cfg.relay_grace
            if now < peer.relay_wait_until:
                return PathEvent.BACKOFF, None, rounds
        order = self._order(peer.record)
        event, target, rounds = rounds.pick(
            order, now, cfg.candidate_trial, cfg.retry_min, cfg.retry_max
        )
        relay = peer.relay
        if relay is not None:
            upgrading = peer.upgrading or starting_upgrade
            predicted = self._predicted(peer, target)
            # A relayed peer leaves the relay only to try direct at its slot or after a NAT
            # change (or when WireGuard roams); a stale relayed path shakes hands through the
            # relay again rather than wander through the direct candidates.
            stays = peer.state is PathState.RELAYED and not upgrading
            if event is PathEvent.BACKOFF or stays or (predicted and not upgrading):
                return PathEvent.RELAY, relay, rounds
        if event is PathEvent.SET and self.punch_delay(key, session=_fresh(dev, now, cfg)) > 0:
            event = PathEvent.PUNCH
        return event, target, rounds

    def _take(
        self,
        key: bytes,
        peer: PeerPath,
        dev: PeerState,
        now: float,
        event: PathEvent,
        target: Endpoint | None,
        rounds: Rounds,
        updates: list[PeerUpdate],
        prime: list[Endpoint],
    ) -> None:
        """Move the peer to the state :data:`TRANSITIONS` gives for ``event`` and do what the
        event does."""
        state = next_state(peer.state, event)
        keepalive = None if dev.persistent_keepalive else self.config.keepalive
        kick = False
        if peer.state is not PathState.PRIMED:  # a kick waits out a punch (see PeerPath.kick)
            kick, peer.kick = peer.kick, False
        peer.rounds = rounds
        match event:
            case PathEvent.WAIT:
                pass
            case PathEvent.RELAY:
                assert target is not None
                peer.unrepaired = False
                record = peer.record
                if (
                    record is not None
                    and key not in self._ipv6_from_relay
                    and not any(ep.family == 6 for ep in rounds.tried)
                    and self.ipv6_first(record)
                ):  # relayed before IPv6 was tried (the NAT classes spoke first): try it once
                    self._ipv6_from_relay.add(key)  # from the relay (rules 8 and 9)
                    peer.upgrade_now = True
                predicted = peer.record is not None and relay_predicted(self._nat, peer.record.nat)
                self._because(key, "to the relay: " + (
                    "the NAT classes leave no direct path" if predicted
                    else "every direct candidate failed"))  # fmt: skip
                if peer.upgrading or peer.upgrade_at <= now:
                    peer.upgrade_at = _next_slot(now, self.config.relay_retry)
                peer.upgrading = False
                stagger = self.stagger(key, session=_fresh(dev, now, self.config))
                lead = stagger == 0
                renew = lead and _renewable(key, dev, now, updates)
                peer.attempt = _relay_trial(target, now, dev, renew)
                peer.relay_kick_at = 0.0 if lead else now + stagger
                updates.append(  # (a keepalive turned on sends one: an initiation, so not yet)
                    PeerUpdate(key, endpoint=target, handshake_now=lead,
                               persistent_keepalive=keepalive if lead else None, renew=renew)
                )  # fmt: skip
            case PathEvent.RELAY_FRESH:
                peer.proven, peer.proven_source = dev.endpoint, Source.RELAY
                peer.attempt, peer.upgrading = None, False
                if peer.upgrade_at <= now:
                    peer.upgrade_at = _next_slot(now, self.config.relay_retry)
                if kick:
                    updates.append(
                        PeerUpdate(key, handshake_now=True, persistent_keepalive=keepalive)
                    )
                    self._because(key, peer.kick_why or "re-punch")
            case PathEvent.ANSWERED | PathEvent.HANDSHAKE:  # keep the path the handshake used
                peer.upgrading = peer.unrepaired = False
                if dev.endpoint != peer.relay:  # proven direct: no try from the relay is owed
                    peer.upgrade_now = False
                self._proved_family(key, peer, dev.endpoint)
                peer.stall_at = peer.stall_check = 0.0  # the peer answered: a stall is over
                source = self._source_of(peer, dev.endpoint)
                if event is PathEvent.HANDSHAKE and dev.endpoint is None:
                    source = Source.ROAMING
                peer.proven, peer.proven_source = dev.endpoint, source
                peer.rounds, peer.attempt = rounds.proven(), None
            case PathEvent.FRESH:
                self._proved_family(key, peer, dev.endpoint)
                if peer.proven != dev.endpoint:  # WireGuard roamed, or a static endpoint works
                    peer.proven = dev.endpoint
                    peer.proven_source = self._source_of(peer, dev.endpoint)
                if kick:
                    updates.append(
                        PeerUpdate(key, handshake_now=True, persistent_keepalive=keepalive)
                    )
                    self._because(key, peer.kick_why or "re-punch")
            case PathEvent.FIRE | PathEvent.SET:
                assert target is not None
                if peer.state is PathState.RELAYED:
                    peer.upgrading, peer.upgrade_now = True, False
                self._because(key, self._trial_why(peer, target))
                if event is PathEvent.SET and target != dev.endpoint:
                    prime.append(target)  # open our NAT toward it first
                peer.attempt = Trial(target, now, dev.rx_bytes, dev.latest_handshake)
                updates.append(
                    PeerUpdate(key, endpoint=target, handshake_now=True,
                               persistent_keepalive=keepalive)
                )  # fmt: skip
            case PathEvent.PUNCH:
                assert target is not None
                if peer.state is PathState.RELAYED:
                    peer.upgrading, peer.upgrade_now = True, False
                if target != dev.endpoint:
                    prime.append(target)
                delay = self.punch_delay(key, session=_fresh(dev, now, self.config))
                peer.attempt = Punch(target, now + delay, dev.latest_handshake)
            case PathEvent.BACKOFF | PathEvent.NO_CANDIDATE:
                peer.attempt = None
        peer.state = state

    def _trial_why(self, peer: PeerPath, target: Endpoint) -> str:
        kind = next((h.kind for h in (peer.record.hints if peer.record else ())
                     if h.endpoint == target), "static")  # fmt: skip
        order = self._order(peer.record) if peer.record else []
        n = order.index(target) + 1 if target in order else 0
        why = f"trying the {kind} candidate ({n} of {len(order)})"
        if peer.upgrading:
            why += ", direct again from the relay"
        elif peer.proven is not None and peer.proven != target:
            why += f" (the record no longer lists {peer.proven}, or it went stale)"
        return why

    def punch_delay(self, key: bytes, session: bool = False) -> float:
        """Seconds from priming to initiating toward peer ``key`` (rule 6). With a live
        ``session`` the kick sends a keepalive, not an initiation, so nothing can cross and the
        follower does not wait."""
        cfg = self.config
        delay = max(cfg.punch_delay, 2 * self.registrar_rtt) if cfg.punch_delay > 0 else 0.0
        return delay + self.stagger(key, session)

    def stagger(self, key: bytes, session: bool = False) -> float:
        """Seconds the follower (the higher key) initiates after the leader, toward a punched
        candidate or through a new relay (rule 6): 0 for the leader, or over a live session (a
        kick then sends a keepalive, which cannot cross)."""
        if session or not (self._own_key and self._own_key > key):
            return 0.0
        return max(self.config.punch_stagger, 3 * self.registrar_rtt)

    def _relay_kick_due(
        self, key: bytes, peer: PeerPath, dev: PeerState, now: float, updates: list[PeerUpdate]
    ) -> None:
        """The follower's delayed initiation through the relay, unless the leader's handshake
        came first or the path left the relay meanwhile."""
        if not peer.relay_kick_at or now < peer.relay_kick_at:
            return
        peer.relay_kick_at = 0.0
        attempt = peer.attempt
        keepalive = None if dev.persistent_keepalive else self.config.keepalive
        if peer.relay is None or dev.endpoint != peer.relay:
            return  # the path left the relay meanwhile
        if _fresh(dev, now, self.config):  # the leader's handshake came (there was no session)
            if keepalive is not None:  # only the keepalive held back (turning it on initiates)
                updates.append(PeerUpdate(key, persistent_keepalive=keepalive))
                self._because(key, "the leading side's handshake came through the relay")
            return
        if not isinstance(attempt, Trial) or attempt.target != peer.relay:
            return
        renew = _renewable(key, dev, now, updates)
        if renew:
            peer.attempt = _relay_trial(attempt.target, attempt.since, dev, renew)
        updates.append(
            PeerUpdate(key, handshake_now=True, persistent_keepalive=keepalive, renew=renew)
        )
        self._because(key, "no handshake through the relay from the leading side: initiating")

    def next_deadline(self) -> float | None:
        """When ``plan`` next has something to do on its own (a delayed punch, a trial end);
        None when nothing is due after the last plan. A time the last plan already reached is
        not due again: that plan did what it could (``plan`` is idempotent), and only new input
        changes that, for example a peer on trial that left the interface, or a stall check of
        a path that left for the relay. Returning it would have the caller plan again at once,
        in a loop (the daemon did: 360 interface reads a second)."""
        times = []
        for peer in self._peers.values():
            if peer.relay is None and peer.relay_wait_until and peer.state is PathState.WAITING:
                times.append(peer.relay_wait_until)
            if peer.stall_check:
                times.append(peer.stall_check)
            if peer.relay_kick_at:
                times.append(peer.relay_kick_at)
            if isinstance(peer.attempt, Punch):
                times.append(peer.attempt.fire_at)
            elif isinstance(peer.attempt, Trial):
                times.append(peer.attempt.since + self.config.candidate_trial)
        due = [t for t in times if t > self._planned_at]
        return min(due) if due else None

    def _order(self, record: PeerRecord) -> list[Endpoint]:
        """The record's usable candidates in the order to try them, each endpoint once: LAN
        first when the peer was seen on our LAN, or its public candidate is behind our own
        public address (our mapping of the same family) (rule 4); then IPv6 first when we
        both have it and IPv4 is not preferred for the peer (rule 9); then SRV priority."""
        hints = self.usable_hints(record)
        lan_first = record.key in self._lan_keys or any(
            h.kind == CandidateKind.PUBLIC
            and (ours := self._mappings.get(h.endpoint.family)) is not None
            and h.endpoint.ip == ours.ip
            for h in hints
        )
        ipv6_first = self.ipv6_first(record)

        def rank(h: Hint) -> tuple[int, int, int]:
            lan = 0 if not lan_first or h.kind == CandidateKind.LAN else 1
            family = 0 if ipv6_first == (h.endpoint.family == 6) else 1
            return (lan, family, h.priority)

        out: list[Endpoint] = []
        for h in sorted(hints, key=rank):
            if h.endpoint not in out:
                out.append(h.endpoint)
        return out

    # -- address families (rule 9) ------------------------------------------------------------

    def usable_hints(self, record: PeerRecord) -> tuple[Hint, ...]:
        """The record's hints we can use: IPv6 ones only with an IPv6 mapping of our own."""
        if 6 in self._mappings:
            return record.hints
        return tuple(h for h in record.hints if h.endpoint.family != 6)

    def _ipv6_candidates(self, record: PeerRecord) -> frozenset[Endpoint]:
        if 6 not in self._mappings:
            return frozenset()
        return frozenset(h.endpoint for h in record.hints if h.endpoint.family == 6)

    def ipv6_first(self, record: PeerRecord) -> bool:
        """IPv6 candidates go first for this peer: we both have IPv6, and IPv4 is not
        preferred for it (or that preference lapsed: our IPv6 mapping or its IPv6 candidates
        changed since)."""
        v6 = self._ipv6_candidates(record)
        if not v6:
            return False
        held = self._ipv4_first.get(record.key)
        if held is not None and held == (self._mappings.get(6), v6):
            return False
        self._ipv4_first.pop(record.key, None)
        return True

    def _prefer_ipv4(self, key: bytes, record: PeerRecord) -> None:
        self._ipv4_first[key] = (self._mappings.get(6), self._ipv6_candidates(record))

    def _proved_family(self, key: bytes, peer: PeerPath, endpoint: Endpoint | None) -> None:
        """A handshake proved ``endpoint``: a direct IPv4 path of a pair that has IPv6 makes
        IPv4 the peer's first family; an IPv6 path makes IPv6 first again (rule 9)."""
        record = peer.record
        if endpoint is None or record is None or endpoint == peer.relay:
            return
        if endpoint.family == 6:
            self._ipv4_first.pop(key, None)
        elif self.ipv6_first(record):
            self._prefer_ipv4(key, record)

    def _predicted(self, peer: PeerPath, target: Endpoint | None) -> bool:
        """The NAT classes leave no direct path toward ``target`` (or, with None, toward the
        peer's first candidate): never for IPv6 (no NAT), else as for IPv4 (rule 9)."""
        record = peer.record
        if record is None:
            return False
        if target is not None and target.family == 6:
            return False
        if target is None and self.ipv6_first(record):
            return False
        return relay_predicted(self._nat, record.nat)

    def _proven_source(self, peer: PeerPath, endpoint: Endpoint) -> Source | None:
        """Where the endpoint in use came from, as FRESH would record it."""
        if peer.proven == endpoint:
            return peer.proven_source
        return self._source_of(peer, endpoint)

    @staticmethod
    def _source_of(peer: PeerPath, endpoint: Endpoint | None) -> Source:
        if peer.relay is not None and endpoint == peer.relay:
            return Source.RELAY
        if peer.record is not None:
            for h in peer.record.hints:
                if h.endpoint == endpoint:
                    return Source.LAN if h.source == Source.LAN else Source.REGISTRAR
        return Source.ROAMING if peer.proven_source is not None else Source.STATIC

    # -- stalled paths ------------------------------------------------------------------------

    def watch_traffic(self, device: DeviceState, now: float) -> frozenset[bytes]:
        """Feed the interface's transfer counters, sampled every fraction of a second; the
        peers whose paths stalled now (empty: none), each of which is re-punched at once
        (rule 7: a handshake from our side at the next plan), when a registrar probe and a
        Repunch to the peers should go out, because a path that carried traffic has stalled:

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
        stalled = self._stalls.sample(device, now)
        self.kick(stalled)
        for key in stalled:
            peer = self._peers.get(key)
            if peer is not None:
                peer.stall_at, peer.stall_check = now, now + self.config.stall_repair
        return stalled

    def _unrepaired(self, key: bytes, peer: PeerPath, now: float) -> bool:
        """The path stalled, was re-punched, and still receives nothing ``stall_repair``
        seconds later."""
        if not peer.stall_at or now - peer.stall_at < self.config.stall_repair:
            return False
        peer.stall_check = 0.0
        t = self._stalls.traffic.get(key)
        if t is None or not t.stalled:
            peer.stall_at = 0.0  # traffic came back
            return False
        return True

    def kick(self, keys: Iterable[bytes], why: str = "the path stalled: re-punching") -> None:
        """Shake hands with these peers again at the next plan (a stalled path, or the peer
        asked: its NAT or ours may have lost the flow's state; a packet from our side
        re-opens ours)."""
        for key in keys:
            peer = self._peers.get(key)
            if peer is not None:
                peer.kick, peer.kick_why = True, why

    # -- reporting ----------------------------------------------------------------------------

    def views(self, device: DeviceState, now: float) -> list[PeerView]:
        """Rows for ``wgmesh peers``."""
        out = []
        for dev in device.peers:
            peer = self._peers.get(dev.public_key, PeerPath())
            out.append(view_of(dev, peer.record, self, now, peer))
        return out


def _carried(trial: Trial, dev: PeerState, now: float) -> bool:
    """The trial's endpoint carries a live session: we still send to it and received at least
    a keepalive since the trial began, with a handshake young enough that the session lives."""
    return (
        trial.rx >= 0
        and dev.endpoint == trial.target
        and dev.rx_bytes >= trial.rx + 32
        and _fresh_relayed(dev, now)
    )


def _fresh_relayed(dev: PeerState, now: float) -> bool:
    """A relayed session is alive: its handshake may be up to 120 s (REKEY_AFTER_TIME) plus a
    25 s keepalive old before the initiator rekeys, so HANDSHAKE_FRESH (135 s) is too short."""
    return dev.latest_handshake > 0 and now - dev.latest_handshake < SESSION_LIFETIME


def _renewable(key: bytes, dev: PeerState, now: float, updates: list[PeerUpdate]) -> bool:
    """The peer may be renewed before initiating through the relay: it has no session to lose,
    and this plan does not change it already (mesh mode adding it, or setting its allowed IPs:
    a renewal carries over what the interface had before the plan, and would undo that)."""
    return not _fresh_relayed(dev, now) and not any(u.public_key == key for u in updates)


def _relay_trial(target: Endpoint, since: float, dev: PeerState, renew: bool) -> Trial:
    """The trial of the relay endpoint; a renewed peer starts from no handshake and no bytes."""
    if renew:
        return Trial(target, since, 0, 0.0)
    return Trial(target, since, dev.rx_bytes, dev.latest_handshake)


def _fresh(dev: PeerState, now: float, cfg: PunchConfig) -> bool:
    return dev.latest_handshake > 0 and now - dev.latest_handshake < cfg.handshake_fresh


def _next_slot(now: float, interval: float) -> float:
    """The first multiple of ``interval`` on the wall clock at least half an interval away:
    both peers of a pair, reaching the relay within moments of each other, pick the same one
    (rule 8), and neither tries direct again the moment it arrived."""
    return ((now + interval / 2) // interval + 1) * interval


def _endpoints(record: PeerRecord) -> list[Endpoint]:
    return [h.endpoint for h in record.hints]
