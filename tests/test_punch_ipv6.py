"""The per-family choice of the Planner (rule 9 of wgmesh.proto.punch), pure, on a float
clock: IPv6 first when both sides have it, IPv4 when either lacks it, the fallback from a
failed IPv6 trial to IPv4, and a broken IPv6 path that moves to IPv4 and stays there."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.proto.device import DeviceState, PeerState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.punch import Hint, PathState, PeerRecord, Plan, Planner, PunchConfig

A, B = b"\x01" * 32, b"\x02" * 32  # A leads (the lower key)
LEAD = b"\x00" * 32  # our key in most tests: we lead, so no stagger delays our initiations
OUR4, OUR6 = Endpoint.parse("198.51.100.1:51820"), Endpoint.parse("[2001:db8:1::1]:51820")
PUB = Endpoint.parse("198.51.100.7:51820")
V6 = Endpoint.parse("[2001:db8:7::7]:51820")
LAN = Endpoint.parse("10.1.0.7:51820")
PUBLIC = Hint(PUB, CandidateKind.PUBLIC, 0)
MAPPED6 = Hint(V6, CandidateKind.IPV6, 5)  # the registrar's IPv6 mapping of the peer
REPORTED6 = Hint(V6, CandidateKind.IPV6, 5)  # ... the same address the peer reported itself
LANH = Hint(LAN, CandidateKind.LAN, 10)
NOW = 1000.0


def record(*hints: Hint, key: bytes = A, nat: NatKind = NatKind.CONE) -> PeerRecord:
    return PeerRecord(key, hints, name="peer", nat=nat)


@dataclass
class Wire:
    """One WireGuard peer as the interface shows it, and the network under it: a handshake
    comes back through ``working`` endpoints only."""

    key: bytes = A
    endpoint: Endpoint | None = None
    handshake: float = 0.0
    rx: int = 0
    tx: int = 0
    working: frozenset[Endpoint] = frozenset()

    def device(self) -> DeviceState:
        state = PeerState(self.key, self.endpoint, ("100.64.0.2/32",), self.handshake,
                          self.rx, self.tx, 25)  # fmt: skip
        return DeviceState("wg0", bytes(32), 51820, (state,))

    def rekey(self, now: float) -> None:
        """WireGuard's own rekey of a session in use (REKEY_AFTER_TIME, 120 s), which goes
        through only while the path works."""
        if self.handshake and now - self.handshake >= 120 and self.endpoint in self.working:
            self.handshake = float(int(now))

    def apply(self, plan: Plan, now: float) -> list[Endpoint]:
        """Apply the plan as WireGuard would; the endpoints set."""
        moved = []
        for u in plan.updates:
            if u.endpoint is not None:
                self.endpoint = u.endpoint
                moved.append(u.endpoint)
            if u.handshake_now and self.endpoint in self.working:
                self.handshake, self.rx = float(int(now)), self.rx + 180
        return moved


def run(p: Planner, wire: Wire, start: float, until: float, step: float = 0.25) -> list[Endpoint]:
    """Plan every ``step`` seconds; the endpoints set, in order."""
    out: list[Endpoint] = []
    now = start
    while now < until:
        wire.rekey(now)
        out += wire.apply(p.plan(wire.device(), now), now)
        now += step
    return out


def planner(*mappings: Endpoint, **config: float) -> Planner:
    p = Planner(PunchConfig(**config), LEAD)  # type: ignore[arg-type]
    p.set_our_mapping(mappings, NatKind.CONE)
    return p


def test_ipv6_goes_first_when_both_sides_have_it() -> None:
    p = planner(OUR4, OUR6, punch_delay=0.0)
    p.set_record(record(PUBLIC, MAPPED6, LANH))
    wire = Wire(working=frozenset({V6, PUB}))
    assert run(p, wire, NOW, NOW + 1.0) == [V6]
    assert p._peers[A].state is PathState.DIRECT and p.ipv6_first(record(PUBLIC, MAPPED6))


def test_both_sides_punch_ipv6_at_once() -> None:
    """Rule 6 over IPv6: each side primes the other's IPv6 mapping when the record comes; the
    lead (the lower key) initiates after the punch delay, the follower a stagger later."""
    ours, theirs = Planner(PunchConfig(), A), Planner(PunchConfig(), B)
    ours.set_our_mapping((OUR4, OUR6), NatKind.SYMMETRIC)
    theirs.set_our_mapping((PUB, V6), NatKind.SYMMETRIC)  # both behind symmetric IPv4 NATs
    ours.set_record(record(PUBLIC, MAPPED6, key=B, nat=NatKind.SYMMETRIC))
    theirs.set_record(record(Hint(OUR4, CandidateKind.PUBLIC, 0),
                             Hint(OUR6, CandidateKind.IPV6, 5), key=A,
                             nat=NatKind.SYMMETRIC))  # fmt: skip
    wa, wb = Wire(key=B), Wire(key=A)
    first_a, first_b = ours.plan(wa.device(), NOW), theirs.plan(wb.device(), NOW)
    assert first_a.prime == (V6,) and first_b.prime == (OUR6,)  # no relay predicted for IPv6
    assert not first_a.updates and not first_b.updates
    fire_a = [t for t in (NOW + 0.04, NOW + 0.06) if ours.plan(wa.device(), t).updates]
    fire_b = [t for t in (NOW + 0.06, NOW + 0.34, NOW + 0.36)
              if theirs.plan(wb.device(), t).updates]  # fmt: skip
    assert fire_a == [NOW + 0.06] and fire_b == [NOW + 0.36]
    assert ours._peers[B].attempt is not None
    assert ours._peers[B].attempt.target == V6 and theirs._peers[A].attempt is not None
    assert theirs._peers[A].attempt.target == OUR6


def test_ipv4_when_we_have_no_ipv6_mapping() -> None:
    p = planner(OUR4, punch_delay=0.0)
    p.set_record(record(MAPPED6, PUBLIC, LANH))
    wire = Wire(working=frozenset({V6, PUB}))
    assert run(p, wire, NOW, NOW + 30.0) == [PUB]  # the IPv6 candidate is never tried


def test_ipv4_when_the_peer_has_no_ipv6() -> None:
    p = planner(OUR4, OUR6, punch_delay=0.0)
    p.set_record(record(PUBLIC, LANH))
    assert run(p, Wire(working=frozenset({PUB})), NOW, NOW + 1.0) == [PUB]
    assert not p.ipv6_first(record(PUBLIC, LANH))


def test_a_failed_ipv6_trial_falls_back_to_ipv4_and_ipv4_stays_first() -> None:
    p = planner(OUR4, OUR6, punch_delay=0.0)
    rec = record(PUBLIC, MAPPED6)
    p.set_record(rec)
    wire = Wire(working=frozenset({PUB}))  # a firewall drops IPv6 both ways
    assert run(p, wire, NOW, NOW + 7.0) == [V6, PUB]  # 6 s for IPv6, then IPv4
    assert p._peers[A].state is PathState.DIRECT and wire.endpoint == PUB
    assert not p.ipv6_first(rec)  # the pair's path is IPv4 now
    # WireGuard's rekeys keep the IPv4 path fresh: nothing moves back to IPv6
    assert run(p, wire, NOW + 7.0, NOW + 1000.0, step=1.0) == []


def test_fallback_to_the_relay_after_both_families() -> None:
    """Symmetric IPv4 NATs on both sides: IPv6 is tried (not predicted to fail); once it
    fails, the IPv4 try asks for the relay, which takes the path when ready."""
    p = Planner(PunchConfig(punch_delay=0.0), LEAD)
    p.set_our_mapping((OUR4, OUR6), NatKind.SYMMETRIC)
    p.set_record(record(PUBLIC, MAPPED6, nat=NatKind.SYMMETRIC))
    wire = Wire()
    first = p.plan(wire.device(), NOW)
    assert [u.endpoint for u in first.updates] == [V6] and A not in first.relay
    wire.apply(first, NOW)
    relay = Endpoint.parse("203.0.113.10:40000")
    p.registrar_ips = frozenset({relay.ip, Endpoint.parse("[2001:db8::10]:1").ip})
    moved: list[Endpoint] = []
    now = NOW + 0.5
    while now < NOW + 20.0 and relay not in moved:
        plan = p.plan(wire.device(), now)
        if A in plan.relay and p._peers[A].relay is None:
            p.set_relay(A, relay)
        moved += wire.apply(plan, now)
        now += 0.5
    assert moved[-1] == relay and V6 not in moved  # never IPv6 again on the way down


def test_an_ipv6_path_that_breaks_moves_to_ipv4_without_flapping() -> None:
    p = planner(OUR4, OUR6, punch_delay=0.0)
    rec = record(PUBLIC, MAPPED6)
    p.set_record(rec)
    wire = Wire(working=frozenset({V6, PUB}))
    assert run(p, wire, NOW, NOW + 1.0) == [V6]
    wire.working = frozenset({PUB})  # the IPv6 path breaks: we send, nothing comes back
    wire.rx, wire.tx = 5000, 5000
    stalled: frozenset[bytes] = frozenset()
    now = NOW + 2.0
    while not stalled and now < NOW + 10.0:
        wire.tx += 300
        stalled = p.watch_traffic(wire.device(), now)
        now += 0.3
    assert stalled == {A}
    moved: list[Endpoint] = []
    for _ in range(400):  # re-punched, still silent: the record's candidates, IPv4 first
        wire.tx += 300
        p.watch_traffic(wire.device(), now)
        moved += wire.apply(p.plan(wire.device(), now), now)
        if wire.endpoint == PUB and wire.handshake >= int(now) - 1:
            wire.rx += 400  # the IPv4 path carries the traffic
        now += 0.5
    assert moved and moved[0] == PUB and wire.endpoint == PUB
    assert V6 not in moved, moved  # over 200 s of plans, never back to IPv6


def test_a_broken_ipv4_path_goes_back_to_ipv6() -> None:
    """IPv4 first is kept only while IPv4 works: its failure tries IPv6, which is then first."""
    p = planner(OUR4, OUR6, punch_delay=0.0)
    rec = record(PUBLIC, MAPPED6)
    p.set_record(rec)
    wire = Wire(working=frozenset({PUB}))
    run(p, wire, NOW, NOW + 7.0)
    assert wire.endpoint == PUB and not p.ipv6_first(rec)
    wire.working = frozenset({V6})  # IPv4 breaks, IPv6 comes up
    moved = run(p, wire, NOW + 7.0, NOW + 400.0, step=1.0)
    assert V6 in moved and wire.endpoint == V6 and p.ipv6_first(rec)


def test_new_ipv6_candidates_lift_the_ipv4_preference() -> None:
    p = planner(OUR4, OUR6, punch_delay=0.0)
    rec = record(PUBLIC, MAPPED6)
    p.set_record(rec)
    run(p, Wire(working=frozenset({PUB})), NOW, NOW + 7.0)
    assert not p.ipv6_first(rec)
    moved6 = Endpoint.parse("[2001:db8:8::8]:51820")
    assert p.ipv6_first(record(PUBLIC, Hint(moved6, CandidateKind.IPV6, 5)))
    p.set_our_mapping((OUR4, Endpoint.parse("[2001:db8:9::1]:51820")), NatKind.CONE)
    assert p.ipv6_first(rec)  # our own IPv6 moved (a new network): IPv6 first again


def test_the_ipv6_mapping_and_the_reported_address_are_tried_once() -> None:
    """Behind a firewall without NAT the peer's own global address is its IPv6 mapping: one
    candidate, one trial."""
    p = planner(OUR4, OUR6, punch_delay=0.0)
    p.set_record(record(PUBLIC, MAPPED6, replace(REPORTED6, priority=6), LANH))
    assert p._order(p._peers[A].record) == [V6, PUB, LAN]  # type: ignore[arg-type]
    assert run(p, Wire(), NOW, NOW + 25.0)[:3] == [V6, PUB, LAN]


def test_the_relay_is_recognised_on_any_registrar_address() -> None:
    p = planner(OUR4, punch_delay=0.0)
    relay = Endpoint.parse("203.0.113.10:40001")
    p.registrar_ips = frozenset({Endpoint.parse("[2001:db8::10]:1").ip, relay.ip})
    p.set_record(record(PUBLIC))
    assert A in p.plan(Wire(endpoint=relay, handshake=NOW - 1).device(), NOW).relay
    p.registrar_ip = None
    assert p.registrar_ips == frozenset() and p.registrar_ip is None


v4_endpoints = st.builds(lambda n, port: Endpoint.parse(f"198.51.100.{n}:{port}"),
                         st.integers(1, 254), st.integers(1, 65535))  # fmt: skip
v6_endpoints = st.builds(lambda n, port: Endpoint.parse(f"[2001:db8::{n:x}]:{port}"),
                         st.integers(1, 0xFFFF), st.integers(1, 65535))  # fmt: skip
hints = st.builds(Hint, st.one_of(v4_endpoints, v6_endpoints), st.sampled_from(CandidateKind),
                  st.integers(0, 20))  # fmt: skip
steps = st.lists(st.tuples(st.floats(0.0, 30.0), st.booleans(), st.booleans()), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(hints, min_size=1, max_size=6),
    st.sampled_from([(), (OUR4,)]),
    st.sampled_from(NatKind),
    st.sampled_from(NatKind),
    steps,
    st.booleans(),
)
def test_no_ipv6_candidate_without_an_ipv6_mapping(
    recorded: list[Hint],
    ours: tuple[Endpoint, ...],
    our_nat: NatKind,
    their_nat: NatKind,
    script: list[tuple[float, bool, bool]],
    lan: bool,
) -> None:
    """Whatever the record, the NAT classes, the handshakes and the stalls: with no IPv6
    mapping of our own, no IPv6 endpoint is ever set or primed."""
    p = Planner(PunchConfig(), B)
    p.set_our_mapping(ours, our_nat)
    if lan:
        p.add_lan_peer(A)
    p.set_record(record(*recorded, nat=their_nat))
    wire = Wire(working=frozenset(h.endpoint for h in recorded))
    now = NOW
    for advance, shakes, traffic in script:
        now += advance
        if traffic:
            wire.tx += 300
            wire.rx += 300 if shakes else 0
            p.watch_traffic(wire.device(), now)
        plan = p.plan(wire.device(), now)
        assert all(ep.family == 4 for ep in plan.prime), plan
        assert all(u.endpoint is None or u.endpoint.family == 4 for u in plan.updates), plan
        wire.working = wire.working if shakes else frozenset()
        wire.apply(plan, now)


def test_wgmesh_peers_shows_the_family_and_the_candidates_of_each() -> None:
    from wgmesh.cli.peers import _table

    p = planner(OUR4, OUR6, punch_delay=0.0)
    p.set_record(record(PUBLIC, MAPPED6, REPORTED6, LANH))
    wire = Wire(working=frozenset({V6}))
    run(p, wire, NOW, NOW + 1.0)
    (view,) = p.views(wire.device(), NOW + 1.0)
    assert (view.path, view.family, view.first_family) == ("direct", 6, 6)
    assert view.candidates_by_family == {
        "ipv4": ("public:198.51.100.7:51820", "lan:10.1.0.7:51820"),
        "ipv6": ("ipv6:[2001:db8:7::7]:51820",),  # the reported address is the mapping: once
    }
    from dataclasses import asdict

    table = _table({"interface": "wg0", "daemon": True, "peers": [asdict(view)]})
    assert "direct (IPv6)" in table
    assert (
        "IPv4 public:198.51.100.7:51820 lan:10.1.0.7:51820; "
        "IPv6 ipv6:[2001:db8:7::7]:51820 (IPv6 first)" in table
    )
    q = planner(OUR4, punch_delay=0.0)  # no IPv6 of ours: IPv4 first, IPv6 listed all the same
    q.set_record(record(PUBLIC, MAPPED6))
    (view,) = q.views(Wire().device(), NOW)
    assert view.first_family == 4 and set(view.candidates_by_family) == {"ipv4", "ipv6"}


@pytest.mark.parametrize("late", ["record", "mapping"])
def test_a_relayed_pair_goes_direct_over_ipv6_once_it_can(late: str) -> None:
    """Symmetric IPv4 NATs: the first record (or our first mapping) has no IPv6, so the pair
    is relayed; when the peer's IPv6 candidate (or our IPv6 mapping) arrives, the relayed
    path tries IPv6 at once, not at the relay's next slot (the lab: they stayed relayed)."""
    relay = Endpoint.parse("203.0.113.10:40000")
    p = Planner(PunchConfig(punch_delay=0.0), LEAD)
    p.registrar_ips = frozenset({relay.ip})
    p.set_our_mapping((OUR4,) if late == "mapping" else (OUR4, OUR6), NatKind.SYMMETRIC)
    p.set_record(record(PUBLIC, *(() if late == "record" else (MAPPED6,)),
                        nat=NatKind.SYMMETRIC))  # fmt: skip
    p.set_relay(A, relay)
    wire = Wire(working=frozenset({relay, V6}))
    assert run(p, wire, NOW, NOW + 3.0) == [relay]
    assert p._peers[A].state is PathState.RELAYED
    if late == "record":
        p.set_record(record(PUBLIC, MAPPED6, nat=NatKind.SYMMETRIC))
    else:
        p.set_our_mapping((OUR4, OUR6), NatKind.SYMMETRIC)
    assert run(p, wire, NOW + 3.0, NOW + 6.0) == [V6]
    assert p._peers[A].state is PathState.DIRECT


def test_our_ipv6_mapping_and_nat_class_in_one_status_go_ipv6_first() -> None:
    """Our first Status had IPv4 and no class; the next brings our IPv6 mapping and a
    symmetric class at once (the peer symmetric too): IPv6 is tried, not the relay, even
    though the relay is asked for and ready moments later (the lab's order of events)."""
    relay = Endpoint.parse("203.0.113.10:40000")
    p = Planner(PunchConfig(punch_delay=0.0), LEAD)
    p.registrar_ips = frozenset({relay.ip})
    p.set_our_mapping((OUR4,), NatKind.UNKNOWN)
    p.set_record(record(PUBLIC, MAPPED6, LANH, nat=NatKind.SYMMETRIC))
    wire = Wire(working=frozenset({relay, V6}))
    run(p, wire, NOW, NOW + 0.5)
    p.set_our_mapping((OUR4, OUR6), NatKind.SYMMETRIC)
    assert run(p, wire, NOW + 0.5, NOW + 1.0) == [V6]
    p.set_relay(A, relay)
    assert run(p, wire, NOW + 1.0, NOW + 8.0) == []
    assert p._peers[A].state is PathState.DIRECT


@pytest.mark.parametrize("v6_works", [True, False])
def test_relayed_before_ipv6_was_tried_tries_it_once_from_the_relay(v6_works: bool) -> None:
    """The lab's order: an IPv4 trial is in flight when IPv6 becomes usable (the peer's IPv6
    candidate, then our IPv6 mapping with our NAT class still unknown), then the classes send
    the pair to the relay mid-trial: once relayed it tries IPv6 (direct when it works); when
    IPv6 does not work it goes back to the relay and stays there: one try, no flapping."""
    relay = Endpoint.parse("203.0.113.10:40000")
    p = Planner(PunchConfig(punch_delay=0.0), LEAD)
    p.registrar_ips = frozenset({relay.ip})
    p.set_our_mapping((OUR4,), NatKind.UNKNOWN)
    p.set_record(record(PUBLIC, LANH, nat=NatKind.UNKNOWN))
    wire = Wire(working=frozenset({relay, V6} if v6_works else {relay}))
    moved = run(p, wire, NOW, NOW + 0.25)
    assert moved == [PUB]
    p.set_record(record(PUBLIC, MAPPED6, LANH, nat=NatKind.SYMMETRIC))
    p.set_our_mapping((OUR4, OUR6), NatKind.UNKNOWN)
    p.set_our_mapping((OUR4, OUR6), NatKind.SYMMETRIC)
    p.set_relay(A, relay)
    moved += run(p, wire, NOW + 0.25, NOW + 60.0)
    assert moved[:3] == [PUB, relay, V6], moved
    if v6_works:
        assert p._peers[A].state is PathState.DIRECT and wire.endpoint == V6
    else:
        assert wire.endpoint == relay and moved.count(V6) == 1, moved
        assert run(p, wire, NOW + 60.0, NOW + 200.0) == []  # stays relayed until its slot
