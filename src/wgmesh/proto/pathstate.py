"""The state of our path to one peer, and the transitions between states as data.

As in h11's ``_state.py``, the state machine is a table (:data:`TRANSITIONS`): the Planner
(:mod:`wgmesh.proto.punch`) reads the interface and the clock, names what it sees as one
:class:`PathEvent`, and the table alone says which :class:`PathState` the peer is in next. What
each event *does* (a WireGuard update, a priming packet) is the Planner's ``_take``; which event
the inputs amount to in each state is its ``_observe``. A new state (say RELAYED) is a member of
:class:`PathState`, its rows here, and its event's effect there.

The *settled* states (UNKNOWN, DIRECT, WAITING) read their inputs alike: a fresh handshake on
the endpoint in use that the record does not contradict is FRESH; anything else asks for the
next candidate (PUNCH, SET, BACKOFF or NO_CANDIDATE). They differ in what the last plan found,
not in how they read the next one.

Data. The peer itself is one slotted, mutable record (:class:`PeerPath`), because most
of what it holds outlives any one state: the record, the round of candidates (:class:`Rounds`:
the round that found a path is where the next search resumes, rule 3), the last proven path
(rules 1-2 compare against it in every state), the mesh and kick flags. What belongs to one
state alone is a small frozen value replaced on each transition: :class:`Punch` in PRIMED,
:class:`Trial` in TRYING, nothing in the settled states. So a state's data cannot outlive it,
and nothing needs a reset when the state changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from wgmesh.errors import LocalProtocolError
from wgmesh.proto.candidates import Source
from wgmesh.proto.endpoint import Endpoint

if TYPE_CHECKING:
    from wgmesh.proto.candidates import PeerRecord

HANDSHAKE_FRESH = 135.0
"""A handshake this recent proves a path (WireGuard re-handshakes every 120 s when busy)."""


class PathState(StrEnum):
    """Where our path to one peer stands."""

    UNKNOWN = "unknown"
    """Nothing proven, nothing in flight: not planned yet, or nothing to try (no record, or a
    record without candidates)."""
    PRIMED = "primed"
    """Our NAT was opened toward a candidate (:class:`Punch`); WireGuard initiates to it when
    the punch delay is over, unless the peer's initiation comes through first (rule 6)."""
    TRYING = "trying"
    """The endpoint is set to a candidate and WireGuard initiated (:class:`Trial`); a handshake
    must come within ``candidate_trial`` (rule 3)."""
    DIRECT = "direct"
    """A handshake proves the endpoint in use (rules 1 and 2)."""
    WAITING = "waiting"
    """Every candidate of the round failed: backing off until the next round (rule 3)."""
    RELAYED = "relayed"
    """A handshake proves the relay's address for this peer (rule 8); direct is tried again
    at ``upgrade_at``."""


class PathEvent(StrEnum):
    """What one plan found for one peer, named in the terms of its current state."""

    WAIT = "wait"
    """Nothing is due: the punch delay (PRIMED) or the trial (TRYING) is still running."""
    ANSWERED = "answered"
    """PRIMED: a handshake came in before our own initiation was due; keep its path."""
    FIRE = "fire"
    """PRIMED: the punch delay is over and no handshake came: set the endpoint, initiate."""
    HANDSHAKE = "handshake"
    """TRYING: a handshake at or after our initiation: the candidate works."""
    FRESH = "fresh"
    """Settled: a fresh handshake on the endpoint in use, which the record does not say the
    peer left (a rebinding kick, if one is due, goes out now)."""
    PUNCH = "punch"
    """The next candidate, with a punch delay: open our NAT toward it now, initiate later."""
    SET = "set"
    """The next candidate, without a delay: set it and initiate now."""
    BACKOFF = "backoff"
    """Every candidate of the round was tried and the next round is not due yet."""
    NO_CANDIDATE = "no-candidate"
    """Nothing to try: no record, or a record without candidates."""
    RELAY = "relay"
    """Direct cannot work (the NAT classes) or every candidate failed, and the relay is ready:
    set its address and initiate (a trial, like SET)."""
    RELAY_FRESH = "relay-fresh"
    """A handshake proves the relay's address (a trial of it succeeded, or it stays fresh)."""


_S, _E = PathState, PathEvent

_PICK: Final[Mapping[PathEvent, PathState]] = {
    _E.PUNCH: _S.PRIMED,
    _E.SET: _S.TRYING,
    _E.BACKOFF: _S.WAITING,
    _E.NO_CANDIDATE: _S.UNKNOWN,
    _E.RELAY: _S.TRYING,
    _E.RELAY_FRESH: _S.RELAYED,
}
"""What a plan that reads the next candidate (or the relay) leads to, from any state but
PRIMED."""

TRANSITIONS: Final[Mapping[PathState, Mapping[PathEvent, PathState]]] = {
    **{settled: {_E.FRESH: _S.DIRECT, **_PICK}
       for settled in (_S.UNKNOWN, _S.DIRECT, _S.WAITING, _S.RELAYED)},
    _S.PRIMED: {
        _E.WAIT: _S.PRIMED,
        _E.ANSWERED: _S.DIRECT,
        _E.FIRE: _S.TRYING,
        _E.RELAY: _S.TRYING,
    },
    _S.TRYING: {_E.WAIT: _S.TRYING, _E.HANDSHAKE: _S.DIRECT, **_PICK},
}  # fmt: skip
"""State -> event -> next state. UNKNOWN's BACKOFF is the wait for a relay that the NAT classes
call for (rule 8): a direct initiation sent meanwhile would hold WireGuard's next one back 5 s
(REKEY_TIMEOUT), whatever the endpoint."""


def next_state(state: PathState, event: PathEvent) -> PathState:
    """The state :data:`TRANSITIONS` gives; LocalProtocolError for an event the state does not
    take (a bug in the Planner's observation, never an input's fault)."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise LocalProtocolError(f"no transition from {state} on {event}") from None


@dataclass(frozen=True, slots=True)
class Punch:
    """PRIMED's data: a punch under way."""

    target: Endpoint
    """The candidate our NAT was opened toward."""
    fire_at: float
    """When WireGuard is made to initiate to it."""
    handshake: float
    """The peer's ``latest_handshake`` at priming: a newer one means its initiation came
    through, so ours is not sent."""


@dataclass(frozen=True, slots=True)
class Trial:
    """TRYING's data: a candidate on trial."""

    target: Endpoint
    """The endpoint we set."""
    since: float
    """When WireGuard was made to initiate to it; the trial runs ``candidate_trial`` from here
    and a handshake at or after this second (WireGuard reports whole seconds) proves it."""
    rx: int = field(default=-1, compare=False)
    """Bytes received when the trial began (-1: unknown). On a live session the kick sends
    a keepalive, not an initiation, so no new handshake comes: traffic received while the
    endpoint is still the target proves it as well."""
    handshake: float = field(default=-1.0, compare=False)
    """The interface's latest handshake when the trial began (-1: unknown): only another one
    proves it (a handshake through the relay in the trial's first second is not the trial's)."""


Attempt = Punch | Trial
"""The candidate in flight, in PRIMED or TRYING."""


@dataclass(frozen=True, slots=True)
class Rounds:
    """The search through a peer's candidates (rule 3); a new record restarts it."""

    tried: tuple[Endpoint, ...] = ()
    """Candidates already tried in this round, in order."""
    count: int = 0
    """Rounds restarted since the last handshake that proved a candidate (the backoff
    exponent)."""
    next_at: float = 0.0
    """When a round whose candidates are all tried may start again."""

    def restart(self) -> Rounds:
        """The same search with nothing tried (the peer moved off its proven endpoint)."""
        return Rounds((), self.count, self.next_at)

    def proven(self) -> Rounds:
        """After a handshake proved a candidate: the backoff starts over; what was tried stays,
        so a path that goes stale resumes with the candidates after it."""
        return Rounds(self.tried, 0, self.next_at)

    def pick(
        self, order: list[Endpoint], now: float, trial: float, retry_min: float, retry_max: float
    ) -> tuple[PathEvent, Endpoint | None, Rounds]:
        """The next candidate of ``order`` (SET, with the search after it), or BACKOFF when
        every one was tried and the next round is not due, or NO_CANDIDATE for an empty
        ``order``. Picking the last candidate of a round schedules the next round: ``trial``
        seconds for it plus ``retry_min`` doubling per round, at most ``retry_max``."""
        tried, count, next_at = self.tried, self.count, self.next_at
        untried = [ep for ep in order if ep not in tried]
        if not untried:
            if now < next_at:
                return PathEvent.BACKOFF, None, self
            tried, count, untried = (), count + 1, order
        if not untried:
            return PathEvent.NO_CANDIDATE, None, Rounds(tried, count, next_at)
        target = untried[0]
        tried = (*tried, target)
        if len(tried) == len(order):
            next_at = now + trial + min(retry_max, retry_min * 2 ** min(count, 8))
        return PathEvent.SET, target, Rounds(tried, count, next_at)


@dataclass(slots=True)
class PeerPath:
    """The Planner's memory of one peer: mutable, since most of it outlives any one state; the
    state's own data is the frozen :attr:`attempt` (see the module docstring)."""

    record: PeerRecord | None = None
    """The record held for the peer, None when withdrawn (or never resolved)."""
    state: PathState = PathState.UNKNOWN
    """Where our path to it stands."""
    attempt: Attempt | None = None
    """The candidate in flight: a :class:`Punch` in PRIMED, a :class:`Trial` in TRYING, None in
    the settled states."""
    rounds: Rounds = field(default_factory=Rounds)
    """The search through its candidates."""
    proven: Endpoint | None = None
    """The endpoint a handshake last proved (or that WireGuard last used with a fresh one)."""
    proven_source: Source | None = None
    """Where :attr:`proven` came from; None until a path was proven."""
    added_by_us: bool = False
    """Mesh mode added the peer to the interface (so it may remove it)."""
    relay: Endpoint | None = None
    """The relay's address for this peer once its allocation is READY (None: none)."""
    upgrade_at: float = 0.0
    """RELAYED: when direct is tried again (rule 8)."""
    stall_at: float = 0.0
    """When the path last stalled and was re-punched (0: not stalled since)."""
    stall_check: float = 0.0
    """When to look whether the re-punch repaired it (0: looked already)."""
    unrepaired: bool = False
    """Re-punching a stall did not bring the path back: the relay is asked for and takes the
    path the moment it is ready, even from a direct try made meanwhile (rule 8). Cleared once
    a path is proven."""
    relay_wait_until: float = 0.0
    """When the relay is predicted: until then no direct try is made while the relay is asked
    for (0: not started)."""
    relay_kick_at: float = 0.0
    """The follower's delayed initiation toward the relay (0: none due): both sides reach the
    relay at the same moment (its READY goes to both at once), and two initiations crossing
    there both fail until WireGuard's 5 s retry, so the higher key sets the relay endpoint
    without a kick (and without turning a keepalive on, which sends one: an initiation) and
    initiates only if no handshake came by then (rule 6, as for punches)."""
    upgrade_now: bool = False
    """A NAT class changed so that direct may work now: try it at the next settled plan on
    the relay, whatever ``upgrade_at`` says (kept through a try already under way)."""
    upgrading: bool = False
    """The candidate in flight is a try of direct from RELAYED: its failure goes back to the
    relay at once, without a backoff."""
    kick_why: str = ""
    """What asked for the kick (for the log)."""
    kick: bool = False
    """Our mapping changed: shake hands again on the next plan that finds the path FRESH
    (rule 5). Any other plan outside PRIMED drops it; PRIMED keeps it for after the punch."""
