"""The daemon's side of the registrar protocol, sans-IO (the registrar's is wgmesh.proto.registry).

Shaped like aioquic's connection: the adapter feeds control-socket datagrams to
:meth:`RegistrarClient.receive`, calls :meth:`handle_timer` when :meth:`next_timer` says, sends
what :meth:`datagrams_to_send` returns (each :class:`Transmit` names the socket: the raw sender
on the WireGuard port, or the ordinary control socket) and acts on :meth:`events`. Time is
always the wall clock passed in (``now``, Unix seconds: the sealed timestamps need it), random
bytes come from the ``random`` callable given to the constructor.

A *probe round* (docs/protocol.md, "The daemon's side"):

1. a sealed Register leaves the WireGuard port for the registrar's primary port (its source is
   the mapping peers must use; the registrar never answers it), and a sealed Watch for that
   Register leaves the control socket;
2. the registrar's Status to the Watch says which mappings it recorded. A Status older than
   our Register (the Watch overtook it) is asked again once after ``confirm_delay``; no usable
   Status within ``answer_timeout`` x attempt number starts the next attempt, up to
   ``attempts``;
3. while our NAT class is unknown, a secondary Register goes to the alternate port and its Watch
   ``classify_delay`` later: the registrar compares the two mappings (cone or symmetric);
4. a round that got a Status schedules the next one ``probe_interval`` later; a failed round
   retries after a backoff doubling from ``backoff_min`` up to ``probe_interval``.

Both address families (docs/protocol.md, "One mapping per address family"). The registrar may
be given by one address per family (:attr:`RegistrarClient.registrars`). The round above runs
with the *control* address (:attr:`RegistrarClient.registrar`: Watches, Repunches, relay
requests, path reports, and the round's first Register); once its Status came, a Register
leaves the WireGuard port for each other family's address, and a Watch ``classify_delay``
later reads the Status that records them all, so the registrar keeps one mapping per family,
each refreshed every round. They go only after the first Register was accepted: the registrar
accepts a key's Registers in counter order only, whatever the family, and two sent at once
could overtake each other on different paths. A family whose send finds no route
(:meth:`RegistrarClient.unroutable`: the adapter saw ENETUNREACH, EADDRNOTAVAIL or
EAFNOSUPPORT) is skipped for the rest of the round and tried again at the next. Classification
(step 3) goes over IPv4 when the round registered IPv4: the NAT class is what predicts an IPv4
relay. Control stays on the first address that answers; a round that gets no Status moves it
to the next (:class:`ControlMoved`), at once and without a failure report when the control
address had no route at all (an IPv6-only host given an IPv4 address first), else after the
usual backoff.

A probe asked for during a round (:meth:`request_probe`: a stalled path, new local addresses)
starts as soon as the round ends. The phases of a round and what moves between them are the
table :data:`TRANSITIONS`; the handlers named there do the work.

Events: :class:`MappingObserved` (each accepted Status), :class:`Resolve` (re-read these peers,
or the whole zone: when the zone's serial changes, every ``probe_interval``, and for each Push),
:class:`RegistrarState` (the registrar started or stopped answering; the first round always
reports one), :class:`ControlMoved` (control fails over to another registrar address).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.relaylease import LeaseConfig, RelayChanged, RelayLeases
from wgmesh.proto.roster import RosterSync


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timings of the daemon's registrar protocol."""

    probe_interval: float = 20.0
    """Seconds between probe rounds (keeps NAT mappings alive: conntrack often forgets at 30 s);
    also how often the whole zone is re-read."""
    attempts: int = 3
    """Register + Watch attempts in one round."""
    answer_timeout: float = 0.5
    """Seconds attempt 1 waits for the Status; attempt n waits n times this."""
    confirm_delay: float = 0.05
    """A Status that predates our Register is asked again this much later (the Watch overtook
    the Register on the way)."""
    classify_delay: float = 0.1
    """Seconds between the secondary Register and its Watch."""
    backoff_min: float = 1.0
    """First pause after a failed round; doubles up to ``probe_interval``."""
    push_window: float = 120.0
    """A Push whose timestamp is further than this from our clock is dropped."""
    classify: bool = True
    """Probe the alternate port to classify our NAT (off: ``--registrar-alt-port 0``)."""
    roster: bool = False
    """Mesh mode: after each round, read the mesh's members (wgmesh.proto.roster)."""
    roster_pace: float = 0.1
    """Seconds between two roster pages (the registrar rate-limits sealed messages per source:
    20/s, burst 5, by default)."""
    roster_tries: int = 3
    """Sends of one roster page before the read waits for the next round; each waits
    ``answer_timeout`` x 2 for its answer."""
    relay: LeaseConfig = field(default_factory=LeaseConfig)
    """Timings of relay allocations and binds."""


class Via(StrEnum):
    """Which socket a datagram must leave from."""

    WIREGUARD = "wireguard"
    """The raw sender, from the WireGuard listen port (Registers: their source is the mapping)."""
    CONTROL = "control"
    """The daemon's ordinary UDP socket to the registrar (Watches)."""


@dataclass(frozen=True, slots=True)
class Transmit:
    """One datagram to send."""

    data: bytes
    """The whole STUN message."""
    destination: Endpoint
    """Where to."""
    via: Via
    """From which socket."""


@dataclass(frozen=True, slots=True)
class MappingObserved:
    """The registrar answered a Watch with what it recorded for us."""

    observed: tuple[Endpoint, ...]
    """Our WireGuard port's public mappings, at most one per address family, IPv4 first."""
    nat: NatKind
    """Our NAT class."""
    rtt: float | None
    """Seconds from our Register to this Status (None for the classification probe's)."""


@dataclass(frozen=True, slots=True)
class Resolve:
    """Re-read peers from the zone now."""

    keys: tuple[bytes, ...] | None
    """These peers (a Push named them), or None: every peer (the serial moved, or the periodic
    re-read)."""


@dataclass(frozen=True, slots=True)
class RegistrarState:
    """The registrar started or stopped answering."""

    reachable: bool
    """True: a round got a Status; False: a whole round got none."""
    first: bool
    """The first round's report (the daemon starts mDNS after it, whatever it says)."""


@dataclass(frozen=True, slots=True)
class MembersChanged:
    """The registrar vouched for a new member list (mesh mode)."""

    members: Mapping[bytes, tuple[str, ...]]
    """Every member's key and allowed IPs, as the sealed Roster carried them."""


@dataclass(frozen=True, slots=True)
class PunchAsked:
    """The registrar passed on a peer's Repunch: its path to us stalled; send toward it now."""

    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ControlMoved:
    """Control (Watches, relay requests, reports) moved to another registrar address."""

    previous: Endpoint
    """The address that stopped answering (or had no route)."""
    current: Endpoint
    """Where control goes from now on."""
    unroutable: bool
    """The previous address had no route from this host (else: it did not answer a round)."""


Event = (
    MappingObserved | Resolve | RegistrarState | MembersChanged | RelayChanged | PunchAsked
    | ControlMoved
)  # fmt: skip


class Phase(Enum):
    """Where a probe round stands."""

    IDLE = "idle"
    """No round: the next starts at ``next_probe``."""
    AWAIT_STATUS = "await-status"
    """Register and Watch sent; waiting for the Status."""
    CONFIRM = "confirm"
    """The Status predated our Register; the Watch is sent again at the deadline."""
    AWAIT_CONFIRM = "await-confirm"
    """The second Watch is out; waiting for its Status."""
    CLASSIFY = "classify"
    """The secondary Register is out; its Watch is sent at the deadline."""
    AWAIT_CLASSIFY = "await-classify"
    """The secondary Watch is out; waiting for its Status."""
    FAMILIES = "families"
    """The other families' Registers are out; their Watch is sent at the deadline."""
    AWAIT_FAMILIES = "await-families"
    """The Watch for the other families' Registers is out; waiting for its Status."""


class Input(Enum):
    """What moves a round."""

    DUE = "due"
    """The phase's deadline passed."""
    STATUS = "status"
    """The Status to the Watch in flight, recording our latest Register."""
    STALE_STATUS = "stale-status"
    """The Status to the Watch in flight, from before our latest Register arrived."""


TRANSITIONS: dict[tuple[Phase, Input], str] = {
    (Phase.IDLE, Input.DUE): "_start",
    (Phase.AWAIT_STATUS, Input.STATUS): "_accepted",
    (Phase.AWAIT_STATUS, Input.STALE_STATUS): "_to_confirm",
    (Phase.AWAIT_STATUS, Input.DUE): "_retry",
    (Phase.CONFIRM, Input.DUE): "_confirm",
    (Phase.AWAIT_CONFIRM, Input.STATUS): "_accepted",
    (Phase.AWAIT_CONFIRM, Input.STALE_STATUS): "_retry",
    (Phase.AWAIT_CONFIRM, Input.DUE): "_retry",
    (Phase.CLASSIFY, Input.DUE): "_classify_watch",
    (Phase.AWAIT_CLASSIFY, Input.STATUS): "_classified",
    (Phase.AWAIT_CLASSIFY, Input.STALE_STATUS): "_classified",
    (Phase.AWAIT_CLASSIFY, Input.DUE): "_succeeded",
    (Phase.FAMILIES, Input.DUE): "_families_watch",
    (Phase.AWAIT_FAMILIES, Input.STATUS): "_families_done",
    (Phase.AWAIT_FAMILIES, Input.STALE_STATUS): "_families_done",
    (Phase.AWAIT_FAMILIES, Input.DUE): "_after_families",
}
"""(phase, input) -> the handler that acts and picks the next phase. Anything not listed is
ignored (a late Status, a Status while idle)."""


class RegistrarClient:
    """One daemon's conversation with its registrar; see the module docstring."""

    def __init__(
        self,
        config: ClientConfig,
        private_key: bytes,
        registrar: Endpoint | tuple[Endpoint, ...],
        registrar_key: bytes,
        now: float,
        random: Callable[[int], bytes],
        *,
        alt_port: int | None = None,
        name: str = "",
        software: str = "wgmesh",
    ) -> None:
        self.config = config
        registrars = (registrar,) if isinstance(registrar, Endpoint) else tuple(registrar)
        families = [ep.family for ep in registrars]
        if not registrars or len(set(families)) != len(families):
            raise LocalProtocolError(
                f"expected one registrar address per family, got {', '.join(map(str, registrars))}"
            )
        self.registrars = registrars
        """The registrar's addresses, at most one per family, in the order given."""
        self.registrar = registrars[0]
        """The control address: where Watches and the round's first Register go now."""
        self.registrar_key = registrar_key
        self._alt_port = alt_port
        self._skipped: set[int] = set()  # families without a route this round
        self._control_unroutable = False  # the control address had no route this round
        self._moved: set[Endpoint] = set()  # control addresses failed since the last success
        self.name = name
        self.software = software
        self._sealer = sealed.Sealer(private_key)
        self.own_key = self._sealer.public_key
        """Our WireGuard public key."""
        self._random = random
        self._counter = int(now * 1_000_000)
        self.addresses: tuple[Endpoint, ...] = ()
        """Our own addresses with the WireGuard port, reported in each Register."""
        self.observed: tuple[Endpoint, ...] = ()
        """Our mappings as the registrar last reported them."""
        self.nat = NatKind.UNKNOWN
        """Our NAT class as the registrar last reported it."""
        self.cookie = bytes(sealed.COOKIE_LEN)
        """The registrar's return-routability cookie for our control address, echoed in every
        Watch (a Watch that echoes a valid one makes us a push target)."""
        self.proven = False
        """The last Status said our control address receives pushes."""
        self.interest: tuple[bytes, ...] | None = None
        """Key ids of the peers whose changes we want pushed (None: every peer); see
        :meth:`set_interest`."""
        self.serial = -1
        """The zone serial of the last Status (-1: none yet)."""
        self.last_answer = 0.0
        """When the last Status arrived (0: never)."""
        self.reachable: bool | None = None
        """Whether the last round got a Status (None: no round ended yet)."""
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "rounds",
                "failed_rounds",
                "status",
                "pushes",
                "dropped",
                "late",
                "relay_grants",
                "repunches",
                "unroutable",
                "control_moves",
            ),
            0,
        )
        self.phase = Phase.IDLE
        self._deadline = now  # the first round starts at once
        self._attempt = 0
        self._register = 0  # the Register counter of the round
        self._watch = 0  # the Watch counter in flight
        self._sent_at = 0.0  # when the round's latest Register left
        self._first_rtt = 0.0  # Register to the first Status, when that one was stale
        self._status: sealed.Status | None = None  # the Status being acted on
        self._nat_at_start = NatKind.UNKNOWN
        self._backoff = config.backoff_min
        self._wanted = False
        self._resolve_at = now  # read the zone at once, whatever the registrar says
        self.roster = RosterSync()
        """The mesh's members as the registrar last vouched for them (mesh mode)."""
        self._roster_query = 0  # the RosterQuery counter in flight
        self._roster_at: float | None = None  # when to send (or resend) the page wanted
        self._roster_tries = 0  # sends of the page wanted so far
        self._members: Mapping[bytes, tuple[str, ...]] | None = None  # as last reported
        self._out: list[Transmit] = []
        self._events: list[Event] = []
        self.relays = RelayLeases(config.relay, self._next_counter)
        """Our relay allocations (wgmesh.proto.relaylease)."""

    # -- inputs -------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """A datagram on the control socket: a Status or a Push. Anything that is not a
        sealed message from our registrar is dropped and counted (``dropped``)."""
        try:
            _, payload = sealed.open_sealed(self._sealer, stun.decode(data), self.registrar_key)
        except DecodeError:
            self.counters["dropped"] += 1
            return
        if isinstance(payload, sealed.Push):
            if abs(payload.timestamp_ms / 1000 - now) > self.config.push_window:
                self.counters["dropped"] += 1
                return
            self.counters["pushes"] += 1
            self._events.append(Resolve(payload.changed))
        elif isinstance(payload, sealed.Roster):
            if payload.query_counter != self._roster_query or self.roster.wanted is None:
                self.counters["late"] += 1
                return
            step = self.roster.receive(payload)
            if isinstance(step, int):
                self._roster_tries = 0
                self._roster_at = now + self.config.roster_pace
            else:
                self._roster_at = None
            if step is not None and not isinstance(step, int) and step != self._members:
                self._members = step
                self._events.append(MembersChanged(step))
        elif isinstance(payload, sealed.Repunch):
            if abs(payload.timestamp_ms / 1000 - now) > self.config.push_window:
                self.counters["dropped"] += 1
                return
            self.counters["repunches"] += 1
            self._events.append(PunchAsked(payload.peers))
        elif isinstance(payload, sealed.RelayGrant):
            if abs(payload.timestamp_ms / 1000 - now) > self.config.push_window:
                self.counters["dropped"] += 1
                return
            self.counters["relay_grants"] += 1
            self.relays.on_grant(payload, now)
            self._relay_out()
        elif isinstance(payload, sealed.Status):
            if self.phase is Phase.IDLE or payload.watch_counter != self._watch:
                self.counters["late"] += 1
                return
            self.counters["status"] += 1
            self._status = payload
            stale = payload.register_counter < self._register
            self._step(Input.STALE_STATUS if stale else Input.STATUS, now)
        else:
            self.counters["dropped"] += 1

    @property
    def alt_port(self) -> int:
        """The registrar's alternate STUN port (classification) on the control address."""
        return self._alt_port if self._alt_port is not None else self.registrar.port + 1

    def unroutable(self, destination: Endpoint, now: float) -> None:
        """A send to ``destination`` found no route from this host (ENETUNREACH, EADDRNOTAVAIL,
        EAFNOSUPPORT): its family is skipped for the rest of the round (retried at the next).
        When it is the control address while the round waits for its Status, the round ends
        now and control moves to the next address (see the module docstring)."""
        self.counters["unroutable"] += 1
        self._skipped.add(destination.family)
        if (
            destination.ip == self.registrar.ip
            and self.phase is Phase.AWAIT_STATUS
            and len(self.registrars) > 1
        ):
            self._control_unroutable = True
            self._attempt = self.config.attempts
            self._deadline = now

    def ask_repunch(self, peers: Iterable[bytes], now: float) -> None:
        """Our paths to ``peers`` stalled: have the registrar ask them to send toward us."""
        keys = tuple(dict.fromkeys(peers))[: sealed.MAX_CHANGED]
        if keys:
            payload = sealed.Repunch(int(now * 1000), self._next_counter(now), keys)
            self._out.append(Transmit(self._seal(payload), self.registrar, Via.CONTROL))

    def report_paths(self, paths: tuple[sealed.PeerPath, ...], now: float) -> None:
        """Tell the registrar our paths to these peers (one PathReport, at most
        ``sealed.MAX_PATHS`` entries; wgmesh.proto.pathreport says when)."""
        if paths:
            payload = sealed.PathReport(int(now * 1000), self._next_counter(now), paths)
            self._out.append(Transmit(self._seal(payload), self.registrar, Via.CONTROL))

    def want_relays(self, peers: Iterable[bytes], now: float) -> None:
        """The peers the Planner wants relayed (see wgmesh.proto.relaylease)."""
        self.relays.want(peers, now)
        self._relay_out()

    def _relay_out(self) -> None:
        for send in self.relays.take():
            if send.relay is None:
                self._out.append(Transmit(self._seal(send.payload), self.registrar, Via.CONTROL))
            else:
                self._out.append(Transmit(self._seal(send.payload), send.relay, Via.WIREGUARD))
        self._events += self.relays.changes
        self.relays.changes.clear()

    def request_probe(self, now: float) -> None:
        """Probe now (or right after the round in progress), and bind our relay allocations
        again (a stall or new addresses: our NAT's mappings may have moved)."""
        if self.phase is Phase.IDLE:
            self._deadline = min(self._deadline, now)
        else:
            self._wanted = True
        self.relays.rebind(now)
        self._relay_out()

    def set_interest(self, peers: Iterable[bytes] | None) -> None:
        """Ask, from the next Watch on, only for pushes about ``peers`` (public keys; None:
        every peer, as in mesh mode). More than one Watch can name means every peer."""
        if peers is None:
            self.interest = None
            return
        ids = sorted({sealed.key_id(k) for k in peers})
        self.interest = tuple(ids) if len(ids) <= sealed.MAX_INTEREST else None

    def set_addresses(self, addresses: tuple[Endpoint, ...], now: float) -> None:
        """Our own addresses (LAN, global IPv6) with the WireGuard port, at most
        ``sealed.MAX_ADDRESSES``; a change once we have registered asks for a probe."""
        addresses = addresses[: sealed.MAX_ADDRESSES]
        if addresses != self.addresses:
            changed = bool(self.last_answer)
            self.addresses = addresses
            if changed:
                self.request_probe(now)

    def next_timer(self) -> float:
        """When :meth:`handle_timer` next has something to do."""
        times = [self._deadline, self._resolve_at]
        times += [t for t in (self._roster_at, self.relays.next_timer()) if t is not None]
        return min(times)

    def handle_timer(self, now: float) -> None:
        """Act on whatever is due at ``now``."""
        if now >= self._resolve_at:
            self._resolve_at = now + self.config.probe_interval
            self._events.append(Resolve(None))
        if self._roster_at is not None and now >= self._roster_at:
            self._roster_due(now)
        if now >= self._deadline:
            self._step(Input.DUE, now)
        self.relays.due(now)
        self._relay_out()

    # -- outputs ------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Transmit]:
        """Datagrams to send now, in order."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """What happened since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- the round ----------------------------------------------------------------------------

    def _step(self, what: Input, now: float) -> None:
        handler = TRANSITIONS.get((self.phase, what))
        if handler is not None:
            getattr(self, handler)(now)

    def _start(self, now: float) -> None:
        self.counters["rounds"] += 1
        self._skipped.clear()
        self._control_unroutable = False
        self._wanted = False  # a request from now on asks for another round
        self._nat_at_start = self.nat
        self._attempt = 0
        self._retry(now)

    def _retry(self, now: float) -> None:
        """The next attempt, or the round's end when none is left."""
        if self._attempt >= self.config.attempts:
            self._failed(now)
            return
        self._attempt += 1
        self._register = self._send_register(self.registrar, secondary=False, now=now)
        self._sent_at = now
        self._send_watch(self._register, now)
        self._enter(Phase.AWAIT_STATUS, now + self.config.answer_timeout * self._attempt)

    def _to_confirm(self, now: float) -> None:
        self._first_rtt = now - self._sent_at
        self._enter(Phase.CONFIRM, now + self.config.confirm_delay)

    def _confirm(self, now: float) -> None:
        self._send_watch(self._register, now)
        self._enter(Phase.AWAIT_CONFIRM, now + self.config.answer_timeout)

    def _accepted(self, now: float) -> None:
        rtt = (now - self._sent_at) if self.phase is Phase.AWAIT_STATUS else self._first_rtt
        self._apply(rtt, now)
        others = self._others()
        if not others:
            self._after_families(now)
            return
        for ep in others:
            self._register = self._send_register(ep, secondary=False, now=now)
        self._enter(Phase.FAMILIES, now + self.config.classify_delay)

    def _others(self) -> list[Endpoint]:
        """The registrar addresses of the other families, but those without a route."""
        control = self.registrar.family
        return [ep for ep in self.registrars
                if ep.family != control and ep.family not in self._skipped]  # fmt: skip

    def _families_watch(self, now: float) -> None:
        if not self._others():  # every other family found no route: nothing to read
            self._after_families(now)
            return
        self._send_watch(self._register, now)
        self._enter(Phase.AWAIT_FAMILIES, now + self.config.answer_timeout)

    def _families_done(self, now: float) -> None:
        self._apply(None, now)
        self._after_families(now)

    def _after_families(self, now: float) -> None:
        """Classify (step 3: over IPv4 when it was registered this round), or end the round."""
        if self.config.classify and NatKind.UNKNOWN in (self._nat_at_start, self.nat):
            via = next((ep for ep in self.registrars
                        if ep.family == 4 and 4 not in self._skipped), self.registrar)  # fmt: skip
            alt = self._alt_port if self._alt_port is not None else via.port + 1
            self._register = self._send_register(Endpoint(via.ip, alt), secondary=True, now=now)
            self._enter(Phase.CLASSIFY, now + self.config.classify_delay)
        else:
            self._succeeded(now)

    def _classify_watch(self, now: float) -> None:
        self._send_watch(self._register, now)
        self._enter(Phase.AWAIT_CLASSIFY, now + self.config.answer_timeout)

    def _classified(self, now: float) -> None:
        self._apply(None, now)
        self._succeeded(now)

    def _succeeded(self, now: float) -> None:
        self._backoff = self.config.backoff_min
        self._moved.clear()
        if self.config.roster:  # the Watch just answered made our control address known
            self.roster.start()
            self._roster_tries = 0
            self._roster_due(now)
        self._report(True)
        self._enter(Phase.IDLE, now if self._wanted else now + self.config.probe_interval)

    def _failed(self, now: float) -> None:
        self.counters["failed_rounds"] += 1
        if len(self.registrars) > 1:
            unroutable, self._control_unroutable = self._control_unroutable, False
            previous = self.registrar
            self._moved.add(previous)
            untried = [ep for ep in self.registrars if ep not in self._moved]
            at = self.registrars.index(previous)
            self.registrar = (
                untried[0] if untried else self.registrars[(at + 1) % len(self.registrars)]
            )
            self.cookie, self.proven = bytes(sealed.COOKIE_LEN), False  # a new source address
            self.counters["control_moves"] += 1
            self._events.append(ControlMoved(previous, self.registrar, unroutable))
            if unroutable and untried:  # no route at all: the next address at once, unreported
                self._enter(Phase.IDLE, now)
                return
        self._report(False)
        delay = 0.0 if self._wanted else self._backoff
        self._backoff = min(self._backoff * 2, self.config.probe_interval)
        self._enter(Phase.IDLE, now + delay)

    def _enter(self, phase: Phase, deadline: float) -> None:
        self.phase, self._deadline = phase, deadline

    def _report(self, reachable: bool) -> None:
        if reachable != self.reachable:
            self._events.append(RegistrarState(reachable, first=self.reachable is None))
        self.reachable = reachable

    def _apply(self, rtt: float | None, now: float) -> None:
        status = self._status
        assert status is not None  # set by receive() before any handler that applies it
        self.last_answer = now
        self.observed = status.observed
        self.nat = status.nat
        self._events.append(MappingObserved(status.observed, status.nat, rtt))
        self.cookie, self.proven = status.cookie, status.proven
        if not status.proven:  # prove at once that we receive there: echo the new cookie
            self._send_watch(self._register, now)
        if status.serial != self.serial:
            self.serial = status.serial
            self._resolve_at = now + self.config.probe_interval
            self._events.append(Resolve(None))

    # -- messages -----------------------------------------------------------------------------

    def _next_counter(self, now: float) -> int:
        # microseconds of wall time and strictly increasing: survives daemon restarts
        self._counter = max(self._counter + 1, int(now * 1_000_000))
        return self._counter

    def _seal(self, payload: sealed.Payload) -> bytes:
        return sealed.build_sealed_request(
            self._sealer, self.own_key, self.registrar_key, payload, self._random(12),
            self._random(24),
        )  # fmt: skip

    def _send_register(self, destination: Endpoint, *, secondary: bool, now: float) -> int:
        counter = self._next_counter(now)
        payload = sealed.Register(
            int(now * 1000), counter, self.name, self.addresses, self.software, secondary
        )
        self._out.append(Transmit(self._seal(payload), destination, Via.WIREGUARD))
        return counter

    def _roster_due(self, now: float) -> None:
        """Ask for the roster page wanted (again, if its answer is overdue)."""
        offset = self.roster.wanted
        if offset is None or self._roster_tries >= self.config.roster_tries:
            self._roster_at = None  # done, or given up until the next round
            return
        self._roster_tries += 1
        self._roster_at = now + 2 * self.config.answer_timeout
        self._send_roster_query(offset, now)

    def _send_roster_query(self, offset: int, now: float) -> None:
        self._roster_query = self._next_counter(now)
        payload = sealed.RosterQuery(int(now * 1000), self._roster_query, offset)
        self._out.append(Transmit(self._seal(payload), self.registrar, Via.CONTROL))

    def _send_watch(self, register_counter: int, now: float) -> None:
        self._watch = self._next_counter(now)
        payload = sealed.padded_watch(
            sealed.Watch(int(now * 1000), self._watch, register_counter, self.cookie, self.interest)
        )
        self._out.append(Transmit(self._seal(payload), self.registrar, Via.CONTROL))
