"""The per-peer state table (wgmesh.proto.pathstate), walked through the Planner on a float
clock: every row of TRANSITIONS is taken by one scenario, and random input sequences never
raise nor touch peers that are not on the interface."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgmesh.proto import punch
from wgmesh.proto.device import DeviceState, PeerState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.pathstate import (
    TRANSITIONS,
    PathEvent,
    PathState,
    Punch,
    Rounds,
    Trial,
    next_state,
)
from wgmesh.proto.punch import Hint, PeerRecord, Plan, Planner, PunchConfig, Source

A = bytes([1]) * 32
PUB = Endpoint.parse("198.51.100.7:51820")
PUB2 = Endpoint.parse("198.51.100.7:40001")
LAN = Endpoint.parse("10.1.0.7:51820")
PUBLIC = Hint(PUB, CandidateKind.PUBLIC, 0)
LANH = Hint(LAN, CandidateKind.LAN, 10)

S, E = PathState, PathEvent
Row = tuple[PathState, PathEvent]


def dev(endpoint: Endpoint | None = None, hs: float = 0.0) -> DeviceState:
    return DeviceState("wg0", bytes(32), 51820, (PeerState(A, endpoint, (), hs, 0, 0, 25),))


def idle(plan: Plan) -> bool:
    """Nothing to do on the interface (the relay wanted or not)."""
    return plan.updates == () and plan.prime == ()


def record(*hints: Hint) -> PeerRecord:
    return PeerRecord(A, hints, name="a")


def state_of(p: Planner) -> PathState:
    return p._peers[A].state


class Walk:
    """A planner for peer A whose transitions are recorded."""

    def __init__(self, taken: list[Row], *hints: Hint, **config: float) -> None:
        cfg = {"punch_delay": 0.0, "candidate_trial": 3.0, "retry_min": 5.0, **config}
        self.p = Planner(PunchConfig(**cfg))  # type: ignore[arg-type]
        self.p.set_record(record(*hints))
        self.taken = taken

    def plan(self, now: float, device: DeviceState | None = None) -> Plan:
        self.taken.clear()
        return self.p.plan(device if device is not None else dev(), now)


# One scenario per row: each ends with the plan that takes the row's transition.


def unknown_fresh(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC)
    assert x.plan(1000.0, dev(PUB, hs=999.0)).updates == ()
    return x


def unknown_punch(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, punch_delay=0.2)
    plan = x.plan(1000.0)
    assert plan.prime == (PUB,) and plan.updates == ()
    assert x.p._peers[A].attempt == Punch(PUB, 1000.2, 0.0)
    return x


def unknown_set(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC)
    plan = x.plan(1000.0)
    assert plan.prime == (PUB,) and plan.updates[0].endpoint == PUB
    assert x.p._peers[A].attempt == Trial(PUB, 1000.0)
    return x


def unknown_no_candidate(w: Callable[..., Walk]) -> Walk:
    x = w()  # a record without candidates
    assert idle(x.plan(1000.0))
    return x


def primed_wait(w: Callable[..., Walk]) -> Walk:
    x = unknown_punch(w)
    assert idle(x.plan(1000.1))
    return x


def primed_answered(w: Callable[..., Walk]) -> Walk:
    x = unknown_punch(w)
    assert idle(x.plan(1000.2, dev(PUB, hs=1000.1)))  # the peer's initiation came through
    assert x.p._peers[A].proven == PUB
    return x


def primed_fire(w: Callable[..., Walk]) -> Walk:
    x = unknown_punch(w)
    plan = x.plan(1000.2)
    assert plan.prime == () and plan.updates[0].endpoint == PUB
    assert x.p._peers[A].attempt == Trial(PUB, 1000.2)
    return x


def trying_wait(w: Callable[..., Walk]) -> Walk:
    x = unknown_set(w)
    assert idle(x.plan(1002.9, dev(PUB)))
    return x


def trying_handshake(w: Callable[..., Walk]) -> Walk:
    x = unknown_set(w)
    assert idle(x.plan(1001.0, dev(PUB, hs=1000.0)))
    return x


def trying_punch(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, LANH, punch_delay=0.2)
    x.plan(1000.0)
    x.plan(1000.2)  # FIRE: the trial runs from here
    assert idle(x.plan(1003.1, dev(PUB)))
    plan = x.plan(1003.2, dev(PUB))
    assert plan.prime == (LAN,) and plan.updates == ()
    return x


def trying_set(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, LANH)
    x.plan(1000.0)
    assert x.plan(1003.0, dev(PUB)).updates[0].endpoint == LAN
    return x


def trying_backoff(w: Callable[..., Walk]) -> Walk:
    x = unknown_set(w)  # the only candidate; the next round is due at 1000 + 3 + 5
    assert idle(x.plan(1003.0, dev(PUB)))
    assert x.p._peers[A].rounds.next_at == 1008.0
    return x


def trying_no_candidate(w: Callable[..., Walk]) -> Walk:
    x = unknown_set(w)
    x.p.withdraw(A)
    assert idle(x.plan(1003.0, dev(PUB)))
    return x


def direct_fresh(w: Callable[..., Walk]) -> Walk:
    x = trying_handshake(w)
    assert idle(x.plan(1100.0, dev(PUB, hs=1000.0)))
    return x


def direct_punch(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, punch_delay=0.2)
    x.plan(1000.0)
    x.plan(1000.2, dev(PUB, hs=1000.1))  # ANSWERED
    x.p.set_record(record(Hint(PUB2, CandidateKind.PUBLIC, 0)))  # the peer moved
    plan = x.plan(1010.0, dev(PUB, hs=1000.1))
    assert plan.prime == (PUB2,) and plan.updates == ()
    return x


def direct_set(w: Callable[..., Walk]) -> Walk:
    x = trying_handshake(w)
    x.p.set_record(record(Hint(PUB2, CandidateKind.PUBLIC, 0)))  # the peer moved
    assert x.plan(1010.0, dev(PUB, hs=1000.0)).updates[0].endpoint == PUB2
    return x


def direct_backoff(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, handshake_fresh=2.0)
    x.plan(1000.0)
    x.plan(1000.5, dev(PUB, hs=1000.0))  # HANDSHAKE; every candidate tried, next round 1008
    assert idle(x.plan(1003.0, dev(PUB, hs=1000.0)))  # stale, and no round due
    return x


def direct_no_candidate(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, handshake_fresh=2.0)
    x.plan(1000.0)
    x.plan(1000.5, dev(PUB, hs=1000.0))
    x.p.withdraw(A)
    assert idle(x.plan(1003.0, dev(PUB, hs=1000.0)))
    return x


def waiting_fresh(w: Callable[..., Walk]) -> Walk:
    x = trying_backoff(w)
    assert idle(x.plan(1004.0, dev(PUB, hs=1004.0)))  # a late handshake: the peer's
    return x


def waiting_punch(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, punch_delay=0.2)
    x.plan(1000.0)
    x.plan(1000.2)
    x.plan(1003.2, dev(PUB))  # BACKOFF until 1008
    plan = x.plan(1008.0, dev(PUB))
    assert plan.prime == () and plan.updates == ()  # PUB is the endpoint already: no priming
    assert x.p._peers[A].rounds.count == 1
    return x


def waiting_set(w: Callable[..., Walk]) -> Walk:
    x = trying_backoff(w)
    assert x.plan(1008.0, dev(PUB)).updates[0].endpoint == PUB
    assert x.p._peers[A].rounds == Rounds((PUB,), 1, 1008.0 + 3.0 + 10.0)  # retry doubled
    return x


def waiting_backoff(w: Callable[..., Walk]) -> Walk:
    x = trying_backoff(w)
    assert idle(x.plan(1007.9, dev(PUB)))
    return x


def waiting_no_candidate(w: Callable[..., Walk]) -> Walk:
    x = trying_backoff(w)
    x.p.withdraw(A)
    assert idle(x.plan(1008.0, dev(PUB)))
    return x


# -- the relay (rule 8) ------------------------------------------------------------------------

RLY = Endpoint.parse("203.0.113.10:40000")


def predicted(x: Walk) -> Walk:
    """Our NAT is symmetric, the peer's unclassified: direct is predicted impossible."""
    x.p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.SYMMETRIC)
    return x


def unknown_relay(w: Callable[..., Walk]) -> Walk:
    x = predicted(w(PUBLIC))
    x.p.set_relay(A, RLY)
    plan = x.plan(1000.0)
    assert plan.prime == () and plan.updates[0].endpoint == RLY and A in plan.relay
    assert x.p._peers[A].attempt == Trial(RLY, 1000.0)
    return x


def primed_relay(w: Callable[..., Walk]) -> Walk:
    x = predicted(w(PUBLIC, punch_delay=0.2, relay_grace=0.0))
    x.plan(1000.0)  # PRIMED toward PUB: the relay is not ready yet
    x.p.set_relay(A, RLY)  # now it is: the punch that cannot work is not waited out
    assert x.plan(1000.1).updates[0].endpoint == RLY
    return x


def unknown_relay_fresh(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC)
    x.p.set_relay(A, RLY)
    assert x.plan(1000.0, dev(RLY, hs=999.0)).updates == ()  # e.g. after a daemon restart
    return x


def trying_relay_fresh(w: Callable[..., Walk]) -> Walk:
    x = unknown_relay(w)
    plan = x.plan(1000.5, dev(RLY, hs=1000.0))
    assert plan.updates == () and plan.relay == {A}
    assert x.p._peers[A].proven_source is Source.RELAY
    assert x.p._peers[A].upgrade_at == 1200.0  # the next multiple of relay_retry (300 s)
    return x


def trying_relay(w: Callable[..., Walk]) -> Walk:
    x = unknown_set(w)  # the only candidate fails ...
    x.p.set_relay(A, RLY)  # ... while the relay became ready
    plan = x.plan(1003.0, dev(PUB))
    assert plan.updates[0].endpoint == RLY  # no backoff: the relay at once
    return x


def direct_relay(w: Callable[..., Walk]) -> Walk:
    x = w(PUBLIC, handshake_fresh=2.0)
    x.plan(1000.0)
    x.plan(1000.5, dev(PUB, hs=1000.0))  # HANDSHAKE
    x.p.set_relay(A, RLY)
    assert x.plan(1003.0, dev(PUB, hs=1000.0)).updates[0].endpoint == RLY  # stale, all tried
    return x


def direct_relay_fresh(w: Callable[..., Walk]) -> Walk:
    x = trying_handshake(w)
    x.p.set_relay(A, RLY)  # WireGuard roamed to the relay: the peer sends through it
    assert x.plan(1010.0, dev(RLY, hs=1009.0)).updates == ()
    return x


def waiting_relay(w: Callable[..., Walk]) -> Walk:
    x = trying_backoff(w)
    x.p.set_relay(A, RLY)
    assert x.plan(1004.0, dev(PUB)).updates[0].endpoint == RLY
    return x


def waiting_relay_fresh(w: Callable[..., Walk]) -> Walk:
    x = trying_backoff(w)
    x.p.set_relay(A, RLY)
    assert x.plan(1004.0, dev(RLY, hs=1004.0)).updates == ()
    return x


def relayed_relay_fresh(w: Callable[..., Walk]) -> Walk:
    x = trying_relay_fresh(w)
    assert x.plan(1100.0, dev(RLY, hs=1000.0)).relay == {A}
    return x


def relayed_fresh(w: Callable[..., Walk]) -> Walk:
    x = trying_relay_fresh(w)  # the peer reached us directly: WireGuard roamed to it
    plan = x.plan(1100.0, dev(PUB, hs=1099.0))
    assert plan.updates == () and plan.relay == frozenset()  # direct: release the relay
    return x


def relayed_set(w: Callable[..., Walk]) -> Walk:
    x = trying_relay_fresh(w)
    assert x.plan(1199.0, dev(RLY, hs=1150.0)).updates == ()  # not yet
    plan = x.plan(1200.0, dev(RLY, hs=1150.0))  # the slot: try direct, keep the relay
    assert plan.updates[0].endpoint == PUB and plan.relay == {A}
    assert x.p._peers[A].upgrading
    return x


def relayed_punch(w: Callable[..., Walk]) -> Walk:
    x = predicted(w(PUBLIC, punch_delay=0.2))
    x.p.set_relay(A, RLY)
    x.plan(1000.0)
    x.plan(1000.5, dev(RLY, hs=1000.0))  # RELAYED
    x.p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.CONE)  # NAT changed
    assert x.p._peers[A].upgrade_now  # predicted no more: try direct now
    plan = x.plan(1001.0, dev(RLY, hs=1000.0))
    assert plan.prime == (PUB,) and plan.updates == ()
    return x


def relayed_relay(w: Callable[..., Walk]) -> Walk:
    x = predicted(w(PUBLIC))
    x.p.set_relay(A, RLY)
    x.plan(1000.0)
    x.plan(1000.5, dev(RLY, hs=1000.0))  # RELAYED; its slot is 1200
    assert idle(x.plan(1150.0, dev(RLY, hs=1000.0)))  # 150 s: a quiet tunnel, not stale
    assert x.plan(1190.0, dev(RLY, hs=1000.0)).updates[0].endpoint == RLY  # 190 s: again
    return x


def unknown_backoff(w: Callable[..., Walk]) -> Walk:
    x = predicted(w(PUBLIC))  # the relay is called for and asked for, not ready yet
    assert idle(x.plan(1000.0))  # no direct initiation to hold WireGuard's next one back 5 s
    assert x.p.next_deadline() == 1001.0
    return x


def test_without_a_relay_within_the_grace_direct_is_tried_meanwhile() -> None:
    x = unknown_backoff(lambda *h, **c: Walk([], *h, **c))
    assert idle(x.plan(1000.5))
    assert x.plan(1001.0).updates[0].endpoint == PUB


def relayed_backoff(w: Callable[..., Walk]) -> Walk:
    x = trying_relay_fresh(w)
    x.p._peers[A].rounds = Rounds((PUB,), 1, 2000.0)  # every candidate tried, none due
    x.p.set_relay(A, None)  # the allocation went
    assert idle(x.plan(1200.0, dev(RLY)))
    return x


def relayed_no_candidate(w: Callable[..., Walk]) -> Walk:
    x = trying_relay_fresh(w)
    x.p.withdraw(A)
    assert x.plan(1100.0, dev(RLY)).relay == frozenset()
    return x


def test_a_nat_change_during_a_try_still_tries_again_after_it() -> None:
    """The prediction lifts while a try from the relay (at its slot) is under way and fails:
    back on the relay, direct is tried again at once, not at the next slot."""
    x = relayed_set(lambda *h, **c: Walk([], *h, **c))  # trying PUB from the relay at 1200
    x.p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.SYMMETRIC)
    x.p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.CONE)  # unchanged map
    assert x.plan(1203.0, dev(PUB)).updates[0].endpoint == RLY  # the try failed
    x.plan(1203.5, dev(RLY, hs=1203.0))  # RELAYED again
    assert x.plan(1204.0, dev(RLY, hs=1203.0)).updates[0].endpoint == PUB  # at once


def test_a_nat_change_on_the_way_to_the_relay_still_tries_direct_once_there() -> None:
    """The prediction lifts while the path is on its way to the relay (the relay endpoint is
    set, its handshake not seen yet): once the relay's handshake is seen, direct is tried at
    once, not at the relay's slot 300 s on (lab: a plan every 2 s on a loaded host let the
    peer's class change land between the two)."""
    x = predicted(Walk([], PUBLIC, punch_delay=0.2))
    x.p.set_relay(A, RLY)
    assert x.plan(1000.0).updates[0].endpoint == RLY  # TRYING the relay
    x.p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.CONE)  # predicted no more
    x.plan(1000.5, dev(RLY, hs=1000.2))  # RELAYED
    plan = x.plan(1001.0, dev(RLY, hs=1000.2))
    assert plan.prime == (PUB,), plan


def test_a_direct_handshake_clears_a_try_owed_from_the_relay() -> None:
    """The prediction lifts on the way to the relay, and the peer's handshake then comes
    directly: the try of direct owed from the relay is not kept for a later relaying, where it
    would skip the relay's slot."""
    x = predicted(Walk([], PUBLIC, punch_delay=0.2))
    x.p.set_relay(A, RLY)
    assert x.plan(1000.0).updates[0].endpoint == RLY
    x.p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.CONE)
    assert x.p._peers[A].upgrade_now
    x.plan(1000.5, dev(PUB, hs=1000.2))  # WireGuard roamed to the peer's direct address
    assert x.p._peers[A].state is S.DIRECT and not x.p._peers[A].upgrade_now


def test_a_failed_try_of_direct_goes_back_to_the_relay_at_once() -> None:
    x = relayed_set(lambda *h, **c: Walk([], *h, **c))
    plan = x.plan(1203.0, dev(PUB))  # the trial of PUB failed: no backoff, the relay
    assert plan.updates[0].endpoint == RLY and not x.p._peers[A].upgrading
    assert x.p._peers[A].upgrade_at == 1500.0


SCENARIOS: dict[Row, Callable[[Callable[..., Walk]], Walk]] = {
    (S.UNKNOWN, E.RELAY): unknown_relay,
    (S.UNKNOWN, E.BACKOFF): unknown_backoff,
    (S.PRIMED, E.RELAY): primed_relay,
    (S.UNKNOWN, E.RELAY_FRESH): unknown_relay_fresh,
    (S.TRYING, E.RELAY): trying_relay,
    (S.TRYING, E.RELAY_FRESH): trying_relay_fresh,
    (S.DIRECT, E.RELAY): direct_relay,
    (S.DIRECT, E.RELAY_FRESH): direct_relay_fresh,
    (S.WAITING, E.RELAY): waiting_relay,
    (S.WAITING, E.RELAY_FRESH): waiting_relay_fresh,
    (S.RELAYED, E.FRESH): relayed_fresh,
    (S.RELAYED, E.PUNCH): relayed_punch,
    (S.RELAYED, E.SET): relayed_set,
    (S.RELAYED, E.BACKOFF): relayed_backoff,
    (S.RELAYED, E.NO_CANDIDATE): relayed_no_candidate,
    (S.RELAYED, E.RELAY): relayed_relay,
    (S.RELAYED, E.RELAY_FRESH): relayed_relay_fresh,
    (S.UNKNOWN, E.FRESH): unknown_fresh,
    (S.UNKNOWN, E.PUNCH): unknown_punch,
    (S.UNKNOWN, E.SET): unknown_set,
    (S.UNKNOWN, E.NO_CANDIDATE): unknown_no_candidate,
    (S.PRIMED, E.WAIT): primed_wait,
    (S.PRIMED, E.ANSWERED): primed_answered,
    (S.PRIMED, E.FIRE): primed_fire,
    (S.TRYING, E.WAIT): trying_wait,
    (S.TRYING, E.HANDSHAKE): trying_handshake,
    (S.TRYING, E.PUNCH): trying_punch,
    (S.TRYING, E.SET): trying_set,
    (S.TRYING, E.BACKOFF): trying_backoff,
    (S.TRYING, E.NO_CANDIDATE): trying_no_candidate,
    (S.DIRECT, E.FRESH): direct_fresh,
    (S.DIRECT, E.PUNCH): direct_punch,
    (S.DIRECT, E.SET): direct_set,
    (S.DIRECT, E.BACKOFF): direct_backoff,
    (S.DIRECT, E.NO_CANDIDATE): direct_no_candidate,
    (S.WAITING, E.FRESH): waiting_fresh,
    (S.WAITING, E.PUNCH): waiting_punch,
    (S.WAITING, E.SET): waiting_set,
    (S.WAITING, E.BACKOFF): waiting_backoff,
    (S.WAITING, E.NO_CANDIDATE): waiting_no_candidate,
}


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[Row]:
    """Every (state, event) the Planner looks up in the table, in order."""
    rows: list[Row] = []

    def recording(state: PathState, event: PathEvent) -> PathState:
        rows.append((state, event))
        return next_state(state, event)

    monkeypatch.setattr(punch, "next_state", recording)
    return rows


def test_every_row_of_the_table_has_a_scenario() -> None:
    rows = {(state, event) for state, events in TRANSITIONS.items() for event in events}
    assert set(SCENARIOS) == rows
    assert set(TRANSITIONS) == set(PathState)


@pytest.mark.parametrize("row", list(SCENARIOS), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_transition(row: Row, taken: list[Row]) -> None:
    walk = SCENARIOS[row](lambda *hints, **cfg: Walk(taken, *hints, **cfg))
    assert taken == [row]
    assert state_of(walk.p) is TRANSITIONS[row[0]][row[1]]


def test_an_event_a_state_does_not_take_is_a_local_error() -> None:
    from wgmesh.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError, match="no transition from primed on set"):
        next_state(PathState.PRIMED, PathEvent.SET)


def test_a_rebinding_kick_waits_out_a_punch() -> None:
    """PRIMED keeps the kick for the plan after the punch; TRYING drops it."""
    p = Planner(PunchConfig(punch_delay=0.2))
    p.set_our_mapping((Endpoint.parse("203.0.113.50:51820"),), NatKind.CONE)
    p.set_record(record(PUBLIC))
    p.plan(dev(), 1000.0)
    assert p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.CONE)
    assert p.plan(dev(PUB, hs=1000.1), 1000.2) == Plan()  # ANSWERED: the kick is kept
    u = p.plan(dev(PUB, hs=1000.1), 1001.0).updates  # FRESH: now it goes out
    assert u and u[0].handshake_now and u[0].endpoint is None
    q = Planner(PunchConfig(punch_delay=0))
    q.set_our_mapping((Endpoint.parse("203.0.113.50:51820"),), NatKind.CONE)
    q.set_record(record(PUBLIC))
    q.plan(dev(), 1000.0)
    assert q.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.CONE)
    assert q.plan(dev(PUB), 1001.0) == Plan()  # TRYING: its own initiation is under way
    assert q.plan(dev(PUB, hs=1001.0), 1001.5) == Plan()  # HANDSHAKE
    assert q.plan(dev(PUB, hs=1001.0), 1002.0) == Plan()  # FRESH, and no kick left


def test_rounds_pick_in_order_then_back_off_then_start_again() -> None:
    r = Rounds()
    order = [PUB, LAN]
    event, target, r = r.pick(order, 1000.0, 3.0, 5.0, 60.0)
    assert (event, target, r) == (E.SET, PUB, Rounds((PUB,), 0, 0.0))
    event, target, r = r.pick(order, 1003.0, 3.0, 5.0, 60.0)
    assert (event, target, r) == (E.SET, LAN, Rounds((PUB, LAN), 0, 1011.0))
    assert r.pick(order, 1010.0, 3.0, 5.0, 60.0) == (E.BACKOFF, None, r)
    event, target, r = r.pick(order, 1011.0, 3.0, 5.0, 60.0)
    assert (event, target, r) == (E.SET, PUB, Rounds((PUB,), 1, 1011.0))
    assert r.proven() == Rounds((PUB,), 0, 1011.0)
    assert r.restart() == Rounds((), 1, 1011.0)
    assert Rounds((), 9, 0.0).pick([PUB], 0.0, 3.0, 5.0, 60.0)[2].next_at == 63.0  # capped
    assert Rounds().pick([], 0.0, 3.0, 5.0, 60.0)[0] is E.NO_CANDIDATE


# -- random inputs -------------------------------------------------------------------------------

KEYS = [bytes([k]) * 32 for k in (1, 3, 5)]
EPS = [
    Endpoint.parse(s)
    for s in (
        "198.51.100.7:51820",
        "198.51.100.7:40001",
        "10.1.0.7:51820",
        "[2001:db8::7]:51820",
        "203.0.113.50:51820",
        "192.0.2.5:51820",
    )
]
MAPPINGS = [
    Endpoint.parse(s)
    for s in ("198.51.100.7:51821", "203.0.113.50:40000", "[2001:db8::1]:51820", "[2001:db8::2]:1")
]

hints = st.lists(
    st.builds(
        Hint,
        st.sampled_from(EPS),
        st.sampled_from(list(CandidateKind)),
        st.integers(0, 20),
        st.sampled_from(list(Source)),
    ),
    max_size=4,
)
records = st.builds(
    PeerRecord,
    st.sampled_from(KEYS),
    hints.map(tuple),
    allowed_ips=st.sampled_from([(), ("100.64.0.9/32",)]),
    nat=st.sampled_from(list(NatKind)),
)
peer_states = st.tuples(
    st.sampled_from(KEYS),
    st.one_of(st.none(), st.sampled_from(EPS)),
    st.sampled_from([None, 0.0, 0.3, 2.0, 10.0, 140.0]),  # seconds since the handshake
    st.sampled_from([0, 25]),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
)
device_rows = st.lists(peer_states, max_size=3, unique_by=lambda t: t[0])
mappings = st.lists(st.sampled_from(MAPPINGS), max_size=2, unique_by=lambda ep: ep.family)
ops = st.one_of(
    st.tuples(st.just("record"), records),
    st.tuples(st.just("withdraw"), st.sampled_from(KEYS)),
    st.tuples(st.just("lan"), st.sampled_from(KEYS)),
    st.tuples(st.just("mapping"), mappings, st.sampled_from(list(NatKind))),
    st.tuples(st.just("rtt"), st.floats(0.001, 2.0)),
    st.tuples(st.just("time"), st.sampled_from([0.0, 0.05, 0.2, 0.35, 1.0, 3.0, 6.0, 30.0, 140.0])),
    st.tuples(st.just("device"), device_rows),
    st.tuples(st.just("plan")),
    st.tuples(st.just("traffic")),
)
weighted_ops = st.one_of(ops, st.tuples(st.just("plan")), st.tuples(st.just("plan")))


def interface(
    rows: list[tuple[bytes, Endpoint | None, float | None, int, int, int]], now: float
) -> DeviceState:
    peers = tuple(
        PeerState(key, ep, (), 0.0 if ago is None else now - ago, rx, tx, keepalive)
        for key, ep, ago, keepalive, rx, tx in rows
    )
    return DeviceState("wg0", bytes(32), 51820, peers)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    own_key=st.sampled_from([b"", bytes([0]) * 32, bytes([4]) * 32]),
    mesh=st.booleans(),
    punch_delay=st.sampled_from([0.0, 0.05]),
    handshake_fresh=st.sampled_from([5.0, 135.0]),
    first=st.lists(records, min_size=1, max_size=3),
    first_device=device_rows,
    steps=st.lists(weighted_ops, min_size=8, max_size=60),
)
def test_random_inputs_never_raise_nor_touch_peers_off_the_interface(
    own_key: bytes,
    mesh: bool,
    punch_delay: float,
    handshake_fresh: float,
    first: list[PeerRecord],
    first_device: list[tuple[bytes, Endpoint | None, float | None, int, int, int]],
    steps: list[tuple[object, ...]],
) -> None:
    cfg = PunchConfig(
        mesh=mesh,
        punch_delay=punch_delay,
        handshake_fresh=handshake_fresh,
        candidate_trial=3.0,
        retry_min=1.0,
    )
    p = Planner(cfg, own_key=own_key)
    now = 1000.0
    device = interface(first_device, now)
    for rec in first:
        p.set_record(rec)
    for step in steps:
        match step:
            case ("record", PeerRecord() as rec):
                p.set_record(rec)
            case ("withdraw", bytes() as key):
                p.withdraw(key)
            case ("lan", bytes() as key):
                p.add_lan_peer(key)
            case ("mapping", list() as observed, NatKind() as nat):
                p.set_our_mapping(tuple(observed), nat)
            case ("rtt", float() as sample):
                p.observe_rtt(sample)
            case ("time", float() as step_s):
                now += step_s
            case ("device", list() as rows):
                device = interface(rows, now)
            case ("plan",):
                check_plan(p.plan(device, now), device, mesh)
                # what was due by now, this plan did: the daemon's loop sleeps until the next
                # deadline, and a past one would make it plan again at once, forever
                due = p.next_deadline()
                assert due is None or due > now, (due, now)
            case ("traffic",):
                p.watch_traffic(device, now)
        for peer in p._peers.values():  # each state holds its own data, and only it
            if peer.state is PathState.PRIMED:
                assert isinstance(peer.attempt, Punch)
            elif peer.state is PathState.TRYING:
                assert isinstance(peer.attempt, Trial)
            else:
                assert peer.attempt is None
        deadline = p.next_deadline()
        assert deadline is None or deadline >= 1000.0
        assert len(p.views(device, now)) == len(device.peers)
    check_plan(p.plan(device, now), device, mesh)


def check_plan(plan: Plan, device: DeviceState, mesh: bool) -> None:
    """Every update is for a peer on the interface, or one mesh mode adds in this plan."""
    on_device = {d.public_key for d in device.peers}
    added: set[bytes] = set()
    for u in plan.updates:
        if u.public_key in on_device:
            continue
        if u.allowed_ips is not None and not u.remove:
            added.add(u.public_key)  # mesh mode adds it, then may set its endpoint
        assert mesh and u.public_key in added, u


def test_a_stall_that_re_punching_does_not_repair_goes_to_the_relay() -> None:
    """A direct path stalls (we keep sending, nothing comes back), is re-punched, and still
    receives nothing 4 s later: with a relay ready, the relay takes it; traffic coming back
    before that keeps it direct."""
    for repaired in (False, True):
        p = Planner(PunchConfig(punch_delay=0.0))
        p.set_record(record(PUBLIC))
        p.plan(dev(), 1000.0)
        p.plan(dev(PUB, hs=1000.0), 1000.5)  # DIRECT
        p.set_relay(A, RLY)
        rx, tx, stalled = 500, 500, frozenset[bytes]()
        t = 1001.0
        while not stalled and t < 1010.0:  # we send, nothing comes back
            tx += 200
            d = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB, (), 1000.0, rx, tx, 25),))
            stalled = p.watch_traffic(d, t)
            t += 0.3
        assert stalled == {A}
        if repaired:
            rx += 400
        d = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB, (), 1000.0, rx, tx, 25),))
        p.watch_traffic(d, t + 1.0)
        assert p.next_deadline() is not None
        plan = p.plan(d, t + 4.5)
        moved = [u.endpoint for u in plan.updates if u.endpoint is not None]
        assert moved == ([] if repaired else [RLY]), (repaired, plan)


def test_a_trial_on_a_live_session_is_proven_by_traffic() -> None:
    """With a live session the kick is a keepalive, not an initiation, so no handshake comes:
    traffic received while the endpoint is still the trial's target proves it."""
    p = Planner(PunchConfig(punch_delay=0.0))
    p.set_record(record(PUBLIC, LANH))
    p.plan(dev(), 1000.0)  # trying PUB
    live = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB, (), 990.0, 1000, 0, 25),))
    p.plan(live, 1000.5)
    p.set_record(record(Hint(PUB2, CandidateKind.PUBLIC, 0), LANH))  # the peer moved
    plan = p.plan(live, 1001.0)
    assert plan.updates[0].endpoint == PUB2  # a trial of PUB2 on the live session
    after = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB2, (), 990.0, 1100, 0, 25),))
    assert idle(p.plan(after, 1003.0)) and state_of(p) is PathState.DIRECT


def test_a_restarted_daemon_on_a_relay_address_asks_for_its_allocation() -> None:
    """After a daemon restart the interface still sends to a relay port, with a fresh
    handshake, but the new daemon holds no lease: it wants the relay (the registrar returns the
    pair's allocation) so that it binds it again, and takes the path as relayed once ready."""
    p = Planner(PunchConfig(punch_delay=0.0))
    p.registrar_ip = RLY.ip
    p.set_record(record(PUBLIC))
    plan = p.plan(dev(RLY, hs=999.0), 1000.0)
    assert idle(plan) and A in plan.relay
    p.set_relay(A, RLY)
    assert idle(p.plan(dev(RLY, hs=999.0), 1001.0)) and state_of(p) is PathState.RELAYED


def stall_direct(p: Planner) -> tuple[int, int, float]:
    """On a DIRECT path to PUB we keep sending and nothing comes back until the stall is
    reported: (rx, tx, the time after the last sample)."""
    rx, tx, stalled = 500, 500, frozenset[bytes]()
    t = 1001.0
    while not stalled and t < 1010.0:
        tx += 200
        d = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB, (), 1000.0, rx, tx, 25),))
        stalled = p.watch_traffic(d, t)
        t += 0.3
    assert stalled == {A}
    return rx, tx, t


def test_a_relay_ready_only_after_the_stall_was_found_unrepaired_takes_the_path() -> None:
    """The re-punch did not repair the stall and the relay is not ready yet: the daemon asks
    for it and tries the record's candidates meanwhile; the moment it is ready the relay takes
    the path, without waiting out the direct try (the clash of two hosts on one NAT port:
    retrying the record's candidates cost 10 s in CI)."""
    p = Planner(PunchConfig(punch_delay=0.0))
    p.set_record(record(PUBLIC, LANH))
    p.plan(dev(), 1000.0)
    p.plan(dev(PUB, hs=1000.0), 1000.5)  # DIRECT
    rx, tx, t = stall_direct(p)
    d = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB, (), 1000.0, rx, tx + 200, 25),))
    p.watch_traffic(d, t + 1.0)
    plan = p.plan(d, t + 4.5)
    assert A in plan.relay, plan  # asked for
    assert [u.endpoint for u in plan.updates if u.endpoint] in ([], [PUB], [LAN]), plan
    assert A in p.plan(d, t + 5.0).relay  # still wanted on the next plan
    p.set_relay(A, RLY)
    plan = p.plan(d, t + 5.5)
    assert [u.endpoint for u in plan.updates if u.endpoint is not None] == [RLY], plan
    # the relay stays wanted while its trial runs (CI: releasing it in the plan that took it
    # made both sides allocate and release a new pair of ports every 0.25 s for 20 s)
    assert A in plan.relay, plan
    on_relay = DeviceState("wg0", bytes(32), 51820, (PeerState(A, RLY, (), 1000.0, rx, tx, 25),))
    assert A in p.plan(on_relay, t + 5.6).relay
    relayed = DeviceState("wg0", bytes(32), 51820, (PeerState(A, RLY, (), t + 5.6, rx, tx, 25),))
    assert A in p.plan(relayed, t + 6.0).relay
    assert state_of(p) is PathState.RELAYED and not p._peers[A].unrepaired


def test_a_handshake_after_a_stall_ends_it() -> None:
    """A path stalls and, before ``stall_repair`` runs out, a handshake proves a new path (the
    peer moved, or a try of direct from the relay succeeded): the old stall is over, so 4 s
    after it neither is the relay asked for nor does it take the working path (the lab: a pair
    upgraded from the relay went back to it 0.1 s after its direct handshake)."""
    p = Planner(PunchConfig(punch_delay=0.0))
    p.set_record(record(PUBLIC, LANH))
    p.plan(dev(), 1000.0)
    p.plan(dev(PUB, hs=1000.0), 1000.5)  # DIRECT
    p.set_relay(A, RLY)
    rx, tx, t = stall_direct(p)
    p.set_record(record(Hint(PUB2, CandidateKind.PUBLIC, 0), LANH))  # the peer moved
    d = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB, (), 1000.0, rx, tx, 25),))
    plan = p.plan(d, t + 0.5)
    assert [u.endpoint for u in plan.updates if u.endpoint is not None] == [PUB2], plan
    moved = DeviceState("wg0", bytes(32), 51820, (PeerState(A, PUB2, (), t + 0.7, rx, tx, 25),))
    p.plan(moved, t + 1.0)
    assert state_of(p) is PathState.DIRECT
    for later in (t + 4.5, t + 5.0, t + 6.0):
        plan = p.plan(moved, later)
        assert A not in plan.relay and not plan.updates, (later, plan)


def test_a_pair_the_known_nat_classes_keep_relayed_does_not_try_direct_at_its_slots() -> None:
    """Both sides classified symmetric: the relayed pair is not taken off its working relay
    at each 300 s slot (both sides would try at once, and each futile trial is a stretch of
    lost traffic); a class change still tries direct at once (upgrade_now)."""
    p = Planner(PunchConfig(punch_delay=0.0))
    p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.SYMMETRIC)
    p.set_record(PeerRecord(A, (PUBLIC,), nat=NatKind.SYMMETRIC))
    p.set_relay(A, RLY)
    p.plan(dev(), 1000.0)
    p.plan(dev(RLY, hs=1000.0), 1000.5)
    assert state_of(p) is PathState.RELAYED
    t, hs = 1001.0, 1000.0
    while t < 2500.0:  # five slots; WireGuard rekeys the busy tunnel every 120 s
        if t - hs >= 120:
            hs = float(int(t))
        plan = p.plan(dev(RLY, hs=hs), t)
        assert not [u for u in plan.updates if u.endpoint not in (None, RLY)], (t, plan)
        t += 5.0
    p.set_our_mapping((Endpoint.parse("192.0.2.1:1000"),), NatKind.CONE)
    p.set_record(PeerRecord(A, (PUBLIC,), nat=NatKind.CONE))  # predicted no more
    plan = p.plan(dev(RLY, hs=hs), t)
    assert plan.prime == (PUB,) or [u.endpoint for u in plan.updates] == [PUB], plan


def test_nothing_is_due_again_that_the_last_plan_reached() -> None:
    """A peer on trial that leaves the interface keeps its trial (nothing plans it any more);
    its end, reached by the last plan, must not stay due: the daemon's loop would plan again
    at once, forever (it did, at 360 interface reads a second)."""
    p = Planner(PunchConfig(punch_delay=0.0, candidate_trial=3.0))
    p.set_record(record(PUBLIC))
    p.plan(dev(), 1000.0)  # trying PUB until 1003
    assert p.next_deadline() == 1003.0
    gone = DeviceState("wg0", bytes(32), 51820, ())
    p.plan(gone, 1006.0)
    assert p.next_deadline() is None
    p.plan(dev(), 1007.0)  # back on the interface: the ended trial is judged, and a new one set
    assert state_of(p) is not PathState.TRYING or p.next_deadline() == 1010.0
