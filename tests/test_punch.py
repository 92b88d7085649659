"""The daemon's endpoint choice, on the sans-IO Planner with a float clock (no WireGuard)."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, replace

import pytest

from wgmesh.errors import LocalProtocolError
from wgmesh.proto.device import DeviceState, PeerState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.punch import Hint, PeerRecord, Planner, PunchConfig, Source

A = bytes([1]) * 32
PUB = Endpoint.parse("198.51.100.7:51820")
LAN = Endpoint.parse("10.1.0.7:51820")
PUB2 = Endpoint.parse("198.51.100.7:40001")


def device(*peers: PeerState) -> DeviceState:
    return DeviceState(name="wg0", public_key=bytes(32), listen_port=51820, peers=peers)


def peer(endpoint: Endpoint | None = None, hs: float = 0.0, keepalive: int = 25) -> PeerState:
    return PeerState(A, endpoint, ("100.64.0.2/32",), hs, 0, 0, keepalive)


def record(*hints: Hint, allowed: tuple[str, ...] = ()) -> PeerRecord:
    return PeerRecord(A, hints, name="a", allowed_ips=allowed)


PUBLIC = Hint(PUB, CandidateKind.PUBLIC, 0)
LANH = Hint(LAN, CandidateKind.LAN, 10)


def test_new_record_sets_best_candidate_and_shakes_hands_now() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(LANH, PUBLIC))
    plan = p.plan(device(peer()), now=1000.0)
    assert len(plan.updates) == 1
    u = plan.updates[0]
    assert u.endpoint == PUB and u.handshake_now
    assert u.persistent_keepalive is None  # the peer already has one
    assert plan.prime == (PUB,)


def test_failed_candidate_falls_back_to_the_next_then_backs_off() -> None:
    p = Planner(PunchConfig(punch_delay=0, candidate_trial=3.0, retry_min=5.0))
    p.set_record(record(LANH, PUBLIC))
    assert p.plan(device(peer()), 1000.0).updates[0].endpoint == PUB
    assert p.plan(device(peer(PUB)), 1002.0).updates == ()  # still within its trial
    second = p.plan(device(peer(PUB)), 1003.5).updates
    assert second[0].endpoint == LAN
    assert p.plan(device(peer(LAN)), 1007.0).updates == ()  # all tried: backing off
    again = p.plan(device(peer(LAN)), 1030.0).updates
    assert again and again[0].endpoint == PUB


def test_handshake_proves_the_candidate_and_stops_changes() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(PUBLIC, LANH))
    p.plan(device(peer()), 1000.0)
    assert p.plan(device(peer(PUB, hs=1001.0)), 1001.2).updates == ()
    assert p.plan(device(peer(PUB, hs=1001.0)), 1100.0).updates == ()
    assert p.views(device(peer(PUB, hs=1001.0)), 1002.0)[0].source == "registrar"


def test_fresh_endpoint_is_kept_when_a_new_candidate_appears() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    p.plan(device(peer(PUB, hs=1000.0)), 1000.5)
    p.set_record(
        record(PUBLIC, LANH, Hint(Endpoint.parse("[2001:db8::7]:51820"), CandidateKind.IPV6, 5))
    )
    assert p.plan(device(peer(PUB, hs=1000.0)), 1010.0).updates == ()


def test_peer_that_moved_is_followed_even_while_the_handshake_is_fresh() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    p.plan(device(peer(PUB, hs=1000.0)), 1000.5)
    p.set_record(record(Hint(PUB2, CandidateKind.PUBLIC, 0)))
    u = p.plan(device(peer(PUB, hs=1000.0)), 1020.0).updates
    assert u and u[0].endpoint == PUB2 and u[0].handshake_now


def test_roaming_by_wireguard_wins_over_the_record() -> None:
    roamed = Endpoint.parse("192.0.2.99:1234")
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    p.plan(device(peer(PUB, hs=1000.0)), 1000.5)
    # WireGuard itself moved the endpoint (an authenticated packet came from elsewhere)
    assert p.plan(device(peer(roamed, hs=1010.0)), 1010.5).updates == ()
    p.set_record(record(PUBLIC, LANH))
    assert p.plan(device(peer(roamed, hs=1010.0)), 1020.0).updates == ()
    assert p.views(device(peer(roamed, hs=1010.0)), 1020.0)[0].source == "roaming"


def test_static_endpoint_with_fresh_handshake_is_left_alone() -> None:
    static = Endpoint.parse("192.0.2.5:51820")
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(PUBLIC))
    assert p.plan(device(peer(static, hs=999.0)), 1000.0).updates == ()


def test_lan_first_when_the_registrar_saw_us_behind_the_same_address() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_our_mapping((Endpoint.parse("198.51.100.7:51821"),), NatKind.CONE)
    p.set_record(record(PUBLIC, LANH))
    assert p.plan(device(peer()), 1000.0).updates[0].endpoint == LAN
    q = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    q.set_our_mapping((Endpoint.parse("203.0.113.50:51820"),), NatKind.CONE)
    q.set_record(record(PUBLIC, LANH))
    assert q.plan(device(peer()), 1000.0).updates[0].endpoint == PUB


def test_lan_first_when_seen_over_mdns() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.add_lan_peer(A)
    p.set_record(record(PUBLIC, replace(LANH, source=Source.LAN)))
    assert p.plan(device(peer()), 1000.0).updates[0].endpoint == LAN


def test_our_mapping_change_rekicks_working_peers() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    p.plan(device(peer(PUB, hs=1000.0)), 1000.5)
    assert not p.set_our_mapping((Endpoint.parse("203.0.113.50:51820"),), NatKind.CONE)
    assert p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.CONE)
    u = p.plan(device(peer(PUB, hs=1000.0)), 1010.0).updates
    assert u and u[0].handshake_now and u[0].endpoint is None
    assert p.plan(device(peer(PUB, hs=1000.0)), 1010.5).updates == ()


def test_our_mapping_change_also_kicks_peers_without_a_record() -> None:
    static = Endpoint.parse("192.0.2.5:51820")
    p = Planner(PunchConfig())
    p.set_our_mapping((Endpoint.parse("203.0.113.50:51820"),), NatKind.CONE)
    assert p.plan(device(peer(static, hs=999.0)), 1000.0).updates == ()
    assert p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.CONE)
    u = p.plan(device(peer(static, hs=999.0)), 1000.5).updates
    assert u and u[0].handshake_now and u[0].endpoint is None
    assert p.plan(device(peer(static, hs=999.0)), 1001.0).updates == ()


def test_missing_keepalive_is_set() -> None:
    p = Planner(PunchConfig(punch_delay=0, keepalive=25))
    p.set_record(record(PUBLIC))
    assert p.plan(device(peer(keepalive=0)), 1000.0).updates[0].persistent_keepalive == 25


def test_endpoints_mode_ignores_peers_not_on_the_interface() -> None:
    p = Planner(PunchConfig(punch_delay=0, mesh=False))
    p.set_record(record(PUBLIC, allowed=("100.64.0.9/32",)))
    assert p.plan(device(), 1000.0).updates == ()


def test_mesh_mode_adds_and_removes_peers() -> None:
    p = Planner(PunchConfig(punch_delay=0, mesh=True))
    p.set_members({A: ("100.64.0.9/32",)})
    p.set_record(record(PUBLIC))
    ups = p.plan(device(), 1000.0).updates
    assert ups[0].allowed_ips == ("100.64.0.9/32",)
    assert ups[1].endpoint == PUB
    p.withdraw(A)
    ups = p.plan(device(peer(PUB, hs=1000.0)), 1100.0).updates
    assert len(ups) == 1 and ups[0].remove


def test_mesh_mode_never_removes_peers_it_did_not_add() -> None:
    p = Planner(PunchConfig(punch_delay=0, mesh=True))
    p.set_members({A: ("100.64.0.9/32",)})
    p.set_record(record(PUBLIC))
    p.withdraw(A)
    assert p.plan(device(peer(PUB, hs=1000.0)), 1100.0).updates == ()


def test_mesh_mode_takes_membership_and_routes_only_from_the_roster() -> None:
    """DNS (a record's allowed IPs) proposes nothing: a key the roster does not vouch for is
    never added, whatever its TXT claims, and a member gets the roster's allowed IPs."""
    p = Planner(PunchConfig(punch_delay=0, mesh=True))
    p.set_record(record(PUBLIC, allowed=("100.64.0.9/32", "0.0.0.0/0")))
    assert p.plan(device(), 1000.0).updates == ()  # no roster: nobody is added
    p.set_members({A: ("100.64.0.2/32",)})
    ups = p.plan(device(), 1000.5).updates
    assert ups[0].allowed_ips == ("100.64.0.2/32",)  # the roster's, not the record's


def test_mesh_mode_follows_roster_changes() -> None:
    p = Planner(PunchConfig(punch_delay=0, mesh=True))
    p.set_members({A: ("100.64.0.2/32",)})
    p.set_record(record(PUBLIC))
    p.plan(device(), 1000.0)
    on = peer(PUB, hs=1000.0)  # allowed IPs 100.64.0.2/32, as added
    assert p.plan(device(on), 1000.5).updates == ()
    p.set_members({A: ("100.64.0.2/32", "10.9.0.0/16")})  # the admission file grew a subnet
    (u,) = p.plan(device(on), 1001.0).updates
    assert u.allowed_ips == ("100.64.0.2/32", "10.9.0.0/16") and not u.remove
    p.set_members({})  # revoked
    (u,) = p.plan(device(on), 1001.5).updates
    assert u.remove


def test_reasons_for_no_direct_path() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.CONE)
    p.set_record(replace(record(PUBLIC), nat=NatKind.SYMMETRIC))
    v = p.views(device(peer()), 1000.0)[0]
    assert v.path == "none"
    assert "symmetric NAT" in v.reason
    p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.SYMMETRIC)
    assert "both peers are behind symmetric NATs" in p.views(device(peer()), 1000.0)[0].reason


def test_punch_primes_first_and_initiates_after_the_delay() -> None:
    p = Planner(PunchConfig(punch_delay=0.2))
    p.set_record(record(PUBLIC))
    first = p.plan(device(peer()), 1000.0)
    assert first.prime == (PUB,) and first.updates == ()
    assert p.next_deadline() == 1000.2
    assert p.plan(device(peer()), 1000.1).updates == ()
    second = p.plan(device(peer()), 1000.2)
    assert second.prime == ()
    assert second.updates[0].endpoint == PUB and second.updates[0].handshake_now
    # the trial runs from the kick, not from the priming
    assert p.next_deadline() == 1000.2 + PunchConfig().candidate_trial


# -- who initiates when (rule 6) ---------------------------------------------------------------

LOW, HIGH = bytes([0]) * 32, bytes([2]) * 32  # A (the peer) sorts between them


def test_lower_key_leads_and_the_higher_key_follows_later() -> None:
    cfg = PunchConfig(punch_delay=0.05, punch_stagger=0.3)
    lead, follow = Planner(cfg, own_key=LOW), Planner(cfg, own_key=HIGH)
    for p in (lead, follow):
        p.set_record(record(PUBLIC))
        assert p.plan(device(peer()), 1000.0).prime == (PUB,)
    assert lead.next_deadline() == 1000.05
    assert follow.next_deadline() == 1000.35
    assert lead.plan(device(peer()), 1000.05).updates[0].handshake_now
    assert follow.plan(device(peer()), 1000.05).updates == ()
    assert follow.plan(device(peer()), 1000.35).updates[0].handshake_now


def test_delays_grow_with_the_registrar_round_trip() -> None:
    cfg = PunchConfig(punch_delay=0.05, punch_stagger=0.3)
    lead, p = Planner(cfg, own_key=LOW), Planner(cfg, own_key=HIGH)
    lead.observe_rtt(0.2)
    p.observe_rtt(0.2)
    assert lead.punch_delay(A) == 0.4
    assert p.punch_delay(A) == pytest.approx(0.4 + 0.6)
    assert p.punch_delay(A, session=True) == 0.4  # a keepalive cannot cross anything
    p.observe_rtt(1.8)  # one slow answer moves the estimate by an eighth
    assert p.registrar_rtt == pytest.approx(0.4)


def test_follower_keeps_quiet_when_the_leads_handshake_came_through() -> None:
    p = Planner(PunchConfig(punch_delay=0.05, punch_stagger=0.3), own_key=HIGH)
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    # the lead's initiation arrived; WireGuard learned the endpoint from it
    done = device(peer(PUB, hs=1000.1))
    assert p.plan(done, 1000.35).updates == ()
    assert p.next_deadline() is None
    assert p.views(done, 1000.4)[0].source == "registrar"
    assert p.plan(done, 1010.0).updates == ()


def test_follower_of_a_working_session_does_not_wait_for_the_stagger() -> None:
    p = Planner(PunchConfig(punch_delay=0.05, punch_stagger=0.3), own_key=HIGH)
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    p.plan(device(peer(PUB, hs=1000.1)), 1000.35)
    p.set_record(record(Hint(PUB2, CandidateKind.PUBLIC, 0)))  # the peer's NAT rebound
    plan = p.plan(device(peer(PUB, hs=1000.1)), 1010.0)
    assert plan.prime == (PUB2,) and p.next_deadline() == 1010.05
    u = p.plan(device(peer(PUB, hs=1000.1)), 1010.05).updates
    assert u[0].endpoint == PUB2 and u[0].handshake_now


# -- stalled paths (rule 7) ----------------------------------------------------------------------


def counters(rx: int, tx: int, hs: float = 990.0) -> DeviceState:
    return device(PeerState(A, PUB, ("100.64.0.2/32",), hs, rx, tx, 25))


def test_unanswered_traffic_asks_for_one_probe() -> None:
    p = Planner(PunchConfig(stall_after=1.0))
    assert not p.watch_traffic(counters(1000, 1000), 1000.0)
    assert not p.watch_traffic(counters(1100, 1100), 1000.5)  # both ways: fine
    assert not p.watch_traffic(counters(1100, 1200), 1001.0)  # tx only, once
    assert not p.watch_traffic(counters(1100, 1300), 1001.3)  # twice, but within stall_after
    assert p.watch_traffic(counters(1100, 1400), 1001.6)
    assert not p.watch_traffic(counters(1100, 1500), 1002.0)  # reported once
    assert not p.watch_traffic(counters(1200, 1600), 1002.5)  # answered again: re-armed
    assert not p.watch_traffic(counters(1200, 1700), 1003.0)
    assert p.watch_traffic(counters(1200, 1800), 1003.5)


def test_a_busy_peer_going_silent_asks_for_a_probe() -> None:
    """Pings from the peer: rx and tx grow together, then nothing at all (our NAT rebound, so
    its packets no longer reach us and we have nothing to answer)."""
    p = Planner(PunchConfig(stall_after=1.0))
    for i in range(4):
        assert not p.watch_traffic(counters(1000 + 100 * i, 1000 + 100 * i), 1000.0 + i / 2)
    assert not p.watch_traffic(counters(1300, 1300), 1002.0)
    assert p.watch_traffic(counters(1300, 1300), 1002.5)
    assert not p.watch_traffic(counters(1300, 1300), 1003.0)


def test_samples_too_close_together_are_ignored() -> None:
    p = Planner(PunchConfig(stall_after=1.0))
    p.watch_traffic(counters(1000, 1000), 1000.0)
    p.watch_traffic(counters(1100, 1100), 1000.5)
    p.watch_traffic(counters(1100, 1100), 1000.51)  # a plan right after: no new information
    p.watch_traffic(counters(1200, 1200), 1001.0)
    assert p._stalls.traffic[A].busy  # two growing samples in a row, despite the extra read
    assert p.traffic_active


def test_idle_counters_are_not_worth_sampling_often() -> None:
    p = Planner(PunchConfig(stall_after=1.0))
    p.watch_traffic(counters(1000, 1000), 1000.0)
    p.watch_traffic(counters(1000, 1000), 1002.0)
    assert not p.traffic_active
    p.watch_traffic(counters(1032, 1032), 1004.0)  # keepalives both ways
    assert not p.traffic_active
    p.watch_traffic(counters(1032, 1032 + 5 * 116), 1006.0)  # pings
    assert p.traffic_active


def test_one_sample_of_data_then_silence_asks_for_a_probe() -> None:
    """Traffic began just before the rebinding: one (sparse) sample saw it, as data."""
    p = Planner(PunchConfig(stall_after=1.0, busy_bytes=256))
    p.watch_traffic(counters(1000, 1000), 1000.0)
    assert not p.watch_traffic(counters(1000 + 5 * 116, 1000 + 5 * 116), 1002.0)
    assert not p.watch_traffic(counters(1580, 1580), 1002.5)
    assert p.watch_traffic(counters(1580, 1580), 1003.0)
    q = Planner(PunchConfig(stall_after=1.0, busy_bytes=256))  # a handshake is not data
    q.watch_traffic(counters(1000, 1000), 1000.0)
    q.watch_traffic(counters(1000 + 148 + 32, 1000 + 92), 1002.0)
    for i in range(1, 10):
        assert not q.watch_traffic(counters(1180, 1092), 1002.0 + i / 2)


def test_a_handshake_with_data_in_the_same_sample_counts_as_busy() -> None:
    """The sparse samples of an idle daemon: the one before the handshake, then one after the
    peer's pings flowed for a while and our NAT rebound. The data is seen despite the handshake
    in the same sample, and the silence after it is a stall."""
    p = Planner(PunchConfig(stall_after=1.0, busy_bytes=256))
    p.watch_traffic(counters(0, 0, hs=0.0), 1000.0)
    data = 148 + 32 + 6 * 128  # a handshake, then six pings received
    assert not p.watch_traffic(counters(data, 92 + 6 * 128, hs=1000.2), 1002.0)
    assert p._stalls.traffic[A].busy and p.traffic_active
    assert not p.watch_traffic(counters(data, 92 + 6 * 128, hs=1000.2), 1002.5)
    assert p.watch_traffic(counters(data, 92 + 6 * 128, hs=1000.2), 1003.0)


def test_a_handshake_and_its_keepalive_are_not_data() -> None:
    p = Planner(PunchConfig(stall_after=1.0))
    p.watch_traffic(counters(0, 0, hs=0.0), 1000.0)
    p.watch_traffic(counters(148 + 32, 92, hs=1000.2), 1000.5)  # handshake, first keepalive
    assert not p._stalls.traffic[A].busy
    p.watch_traffic(counters(212, 92, hs=1000.2), 1001.0)  # one more keepalive
    for i in range(1, 10):
        assert not p.watch_traffic(counters(212, 92, hs=1000.2), 1001.0 + i / 2)


def test_keepalives_and_quiet_peers_never_ask() -> None:
    p = Planner(PunchConfig(stall_after=1.0))
    rx = tx = 1000
    for i in range(40):  # 20 s: the peer's keepalive every 5 s, ours offset by 2.5 s
        now = 1000.0 + i / 2
        rx += 32 if i % 10 == 0 else 0
        tx += 32 if i % 10 == 5 else 0
        assert not p.watch_traffic(counters(rx, tx), now), now
    q = Planner(PunchConfig(stall_after=1.0))
    for i in range(10):  # never had a handshake: connecting, not stalled
        assert not q.watch_traffic(counters(0, 148 * i, hs=0.0), 1000.0 + i / 2)


def test_stall_probes_are_rate_limited() -> None:
    p = Planner(PunchConfig(stall_after=1.0, stall_probes=1, stall_refill=10.0))
    now, rx, tx = 1000.0, 1000, 1000
    fired = []
    for _ in range(60):  # a peer that answers in bursts: 1.5 s of traffic, 1.5 s of nothing
        for step in range(6):
            now += 0.5
            if step < 3:
                rx, tx = rx + 100, tx + 100
            if p.watch_traffic(counters(rx, tx), now):
                fired.append(now)
    assert len(fired) <= 1 + (now - 1000.0) / 10.0
    assert all(b - a >= 10.0 - 1e-9 for a, b in itertools.pairwise(fired))


def test_a_stall_without_tokens_fires_when_one_is_earned() -> None:
    p = Planner(PunchConfig(stall_after=1.0, stall_probes=1, stall_refill=10.0))
    p._stalls.tokens = 0.0
    p.watch_traffic(counters(1000, 1000), 1000.0)
    for i in range(1, 4):
        assert not p.watch_traffic(counters(1000, 1000 + 100 * i), 1000.0 + i / 2)
    assert not p.watch_traffic(counters(1000, 1400), 1005.0)
    assert p.watch_traffic(counters(1000, 1500), 1010.0)


def test_rebinding_is_repaired_by_both_planners() -> None:
    """Our NAT rebinds while the peer pings us: we notice the silence, our probe reports a new
    mapping, which kicks our side; the peer's new record makes it punch toward the new port."""
    old_us, new_us = Endpoint.parse("198.51.100.11:51820"), Endpoint.parse("198.51.100.11:61000")
    B = bytes([9]) * 32
    us, them = Planner(PunchConfig(), own_key=A), Planner(PunchConfig(), own_key=B)
    us.set_our_mapping((old_us,), NatKind.CONE)
    us_dev = lambda rx, hs=990.0: DeviceState(  # noqa: E731
        "wg0", A, 51820, (PeerState(B, PUB, ("100.64.0.2/32",), hs, rx, rx, 25),)
    )
    them_dev = DeviceState("wg1", B, 51820, (PeerState(A, old_us, (), 990.0, 5000, 9000, 25),))
    them.set_record(PeerRecord(A, (Hint(old_us, CandidateKind.PUBLIC, 0),)))
    assert them.plan(them_dev, 995.0).updates == ()  # working
    us.set_record(PeerRecord(B, (Hint(PUB, CandidateKind.PUBLIC, 0),)))
    assert us.plan(us_dev(1000), 995.0).updates == ()
    for i in range(4):
        us.watch_traffic(us_dev(1000 + 100 * i), 1000.0 + i / 2)
    assert not us.watch_traffic(us_dev(1300), 1002.0)
    assert us.watch_traffic(us_dev(1300), 1002.5)  # -> probe
    assert us.set_our_mapping((new_us,), NatKind.CONE)  # the registrar saw the new port
    kick = us.plan(us_dev(1300), 1002.51).updates
    assert kick and kick[0].handshake_now and kick[0].endpoint is None
    # the registrar pushed; the peer resolved our new record
    them.set_record(PeerRecord(A, (Hint(new_us, CandidateKind.PUBLIC, 0),)))
    plan = them.plan(them_dev, 1002.53)
    assert plan.prime == (new_us,)
    deadline = them.next_deadline()
    assert deadline is not None and deadline - 1002.53 < 0.1  # a session: no stagger
    u = them.plan(them_dev, deadline).updates
    assert u[0].endpoint == new_us and u[0].handshake_now


# -- the Planner's inputs and what it holds ------------------------------------------------------

V4, V4_NEW = Endpoint.parse("203.0.113.50:51820"), Endpoint.parse("203.0.113.50:40000")
V6, V6_NEW = Endpoint.parse("[2001:db8::1]:51820"), Endpoint.parse("[2001:db8::1]:40000")


def test_our_mappings_are_kept_one_per_family() -> None:
    p = Planner(PunchConfig())
    assert p.our_mappings == () and p.our_nat is NatKind.UNKNOWN
    assert not p.set_our_mapping((V4,), NatKind.CONE)
    assert not p.set_our_mapping((V4, V6), NatKind.CONE)  # a new family is not a change
    assert p.our_mappings == (V4, V6) and p.our_nat is NatKind.CONE
    assert p.set_our_mapping((V4, V6_NEW), NatKind.CONE)  # the IPv6 one moved
    assert not p.set_our_mapping((V4,), NatKind.SYMMETRIC)  # no IPv6 mapping now: forgotten
    assert p.our_mappings == (V4,) and p.our_nat is NatKind.SYMMETRIC
    assert not p.set_our_mapping((V6,), NatKind.CONE)  # IPv4 forgotten, IPv6 back: no change
    assert p.our_mappings == (V6,)
    assert not p.set_our_mapping((V6, V4), NatKind.CONE)
    assert p.our_mappings == (V4, V6)  # IPv4 first, whatever the order given
    with pytest.raises(LocalProtocolError, match="two observed mappings for IPv4"):
        p.set_our_mapping((V4, V4_NEW), NatKind.CONE)


def test_a_changed_mapping_of_either_family_kicks_every_peer() -> None:
    p = Planner(PunchConfig(punch_delay=0))
    p.set_our_mapping((V4, V6), NatKind.CONE)
    p.set_record(record(PUBLIC))
    p.plan(device(peer()), 1000.0)
    p.plan(device(peer(PUB, hs=1000.0)), 1000.5)
    assert p.set_our_mapping((V4, V6_NEW), NatKind.CONE)
    u = p.plan(device(peer(PUB, hs=1000.0)), 1001.0).updates
    assert u and u[0].handshake_now and u[0].endpoint is None


def test_lan_first_compares_with_our_mapping_of_the_same_family() -> None:
    v6_public = Hint(Endpoint.parse("[2001:db8::1]:51821"), CandidateKind.PUBLIC, 0)
    p = Planner(PunchConfig(punch_delay=0))
    p.set_our_mapping((V4, V6), NatKind.NONE)  # the peer's IPv6 public address is ours
    p.set_record(record(v6_public, LANH))
    assert p.plan(device(peer()), 1000.0).updates[0].endpoint == LAN
    q = Planner(PunchConfig(punch_delay=0))
    q.set_our_mapping((Endpoint.parse("198.51.100.7:51821"),), NatKind.CONE)
    q.set_our_mapping((V6,), NatKind.CONE)  # the IPv4 mapping is gone: nothing to compare
    q.set_record(record(PUBLIC, LANH))
    assert q.plan(device(peer()), 1000.0).updates[0].endpoint == PUB


def test_records_are_read_through_the_api() -> None:
    p = Planner(PunchConfig())
    rec = record(PUBLIC)
    assert p.record(A) is None and p.recorded_keys() == set()
    p.set_record(rec)
    assert p.record(A) is rec and p.recorded_keys() == {A}
    p.withdraw(A)
    assert p.record(A) is None and p.recorded_keys() == set()
    p.withdraw(bytes([7]) * 32)  # unknown: nothing happens
    assert p.own_key == b"" and Planner(PunchConfig(), own_key=A).own_key == A


def test_the_peers_row_shows_nat_as_its_string_value() -> None:
    p = Planner(PunchConfig())
    assert PeerRecord(A, ()).nat is NatKind.UNKNOWN
    p.set_record(replace(record(PUBLIC), nat=NatKind.CONE))
    row = asdict(p.views(device(peer()), 1000.0)[0])
    assert type(row["nat"]) is str and json.loads(json.dumps(row))["nat"] == "cone"
    assert asdict(p.views(device(replace(peer(), public_key=bytes(32))), 1000.0)[0])["nat"] == (
        "unknown"
    )


RELAY_EP = Endpoint.parse("203.0.113.10:40000")


def relayed_pair(own: bytes) -> Planner:
    """Symmetric here, port-restricted there: the relay is predicted and ready at once."""
    p = Planner(PunchConfig(punch_delay=0.05, punch_stagger=0.3), own_key=own)
    p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.SYMMETRIC)
    p.set_record(replace(record(PUBLIC), nat=NatKind.CONE))
    p.set_relay(A, RELAY_EP)
    return p


def test_through_a_new_relay_the_lower_key_initiates_and_the_higher_key_later() -> None:
    """Both daemons get the relay's READY in the same moment: two initiations crossing at the
    relay would both fail until WireGuard's 5 s retry. The lower key initiates at once; the
    higher key sets the relay endpoint without a kick and initiates after the stagger only if
    no handshake came."""
    lead, follow = relayed_pair(LOW), relayed_pair(HIGH)
    first = lead.plan(device(peer()), 1000.0).updates[0]
    assert first.endpoint == RELAY_EP and first.handshake_now
    quiet = follow.plan(device(peer(keepalive=0)), 1000.0).updates[0]
    assert quiet.endpoint == RELAY_EP and not quiet.handshake_now
    assert quiet.persistent_keepalive is None  # 0 -> 25 would send one: an initiation
    assert follow.next_deadline() == 1000.3
    assert follow.plan(device(peer(RELAY_EP)), 1000.2).updates == ()
    kick = follow.plan(device(peer(RELAY_EP)), 1000.3).updates
    assert len(kick) == 1 and kick[0].handshake_now and kick[0].endpoint is None
    assert follow.plan(device(peer(RELAY_EP)), 1000.4).updates == ()  # once


def test_the_follower_stays_quiet_when_the_leaders_relayed_handshake_came() -> None:
    follow = relayed_pair(HIGH)
    follow.plan(device(peer()), 1000.0)
    assert follow.plan(device(peer(RELAY_EP, hs=1000.1)), 1000.3).updates == ()
    other = relayed_pair(HIGH)  # with no keepalive of its own: it is turned on now
    other.plan(device(peer(keepalive=0)), 1000.0)
    (update,) = other.plan(device(peer(RELAY_EP, hs=1000.1, keepalive=0)), 1000.3).updates
    assert update.persistent_keepalive == 25 and not update.handshake_now


def test_with_no_session_the_relayed_initiation_comes_from_a_renewed_peer() -> None:
    """A direct initiation in the last 5 s holds WireGuard's next one back until its retry:
    so the initiation through the relay, the leader's at once and the follower's after the
    stagger, is made by a renewed peer when there is no session to lose (none, or a handshake
    older than 180 s); over a live session neither side renews."""
    lead, follow = relayed_pair(LOW), relayed_pair(HIGH)
    (first,) = lead.plan(device(peer(PUB)), 1000.0).updates
    assert first.endpoint == RELAY_EP and first.handshake_now and first.renew
    (quiet,) = follow.plan(device(peer(PUB)), 1000.0).updates
    assert not quiet.renew and not quiet.handshake_now  # the leader's may be on its way
    (kick,) = follow.plan(device(peer(RELAY_EP)), 1000.3).updates
    assert kick.handshake_now and kick.renew
    stale = relayed_pair(LOW)  # the last session ended long ago: nothing left to lose
    (update,) = stale.plan(device(peer(PUB, hs=800.0)), 1000.0).updates
    assert update.renew and update.handshake_now
    live = relayed_pair(LOW)  # a session from 150 s ago still carries traffic
    (update,) = live.plan(device(peer(PUB, hs=850.0)), 1000.0).updates
    assert update.endpoint == RELAY_EP and not update.renew
    follow_live = relayed_pair(HIGH)
    follow_live.plan(device(peer(PUB, hs=850.0)), 1000.0)
    for u in follow_live.plan(device(peer(RELAY_EP, hs=850.0)), 1000.3).updates:
        assert not u.renew


def test_a_renewed_relay_trial_is_proven_by_the_renewed_peers_first_handshake() -> None:
    """Renewing resets WireGuard's handshake time and counters: the trial starts from zero as
    they do, and the renewed peer's first handshake proves the relay."""
    lead = relayed_pair(LOW)
    dev = peer(PUB, hs=700.0)
    (update,) = lead.plan(device(dev), 1000.0).updates
    assert update.renew
    renewed = peer(RELAY_EP)  # what WireGuard shows after the renewal: no handshake yet
    assert lead.plan(device(renewed), 1000.2).updates == ()
    (row,) = lead.views(device(renewed), 1000.2)
    assert row.path != "relay"  # not proven yet
    proven = peer(RELAY_EP, hs=1000.0)
    lead.plan(device(proven), 1000.4)
    (row,) = lead.views(device(proven), 1000.4)
    assert row.path == "relay" and row.relay == str(RELAY_EP)


def test_a_peer_this_plan_adds_is_not_renewed_in_the_same_plan() -> None:
    """Mesh mode adds a member with its allowed IPs, and the relay is ready at once: the
    relayed initiation must not renew it in the same plan (a renewal carries over what the
    interface had before the plan, and would drop the allowed IPs just added)."""
    p = Planner(PunchConfig(punch_delay=0.05, punch_stagger=0.3, mesh=True), own_key=LOW)
    p.set_our_mapping((Endpoint.parse("203.0.113.50:40000"),), NatKind.SYMMETRIC)
    p.set_members({A: ("100.64.0.9/32",)})
    p.set_record(replace(record(PUBLIC), nat=NatKind.CONE))
    p.set_relay(A, RELAY_EP)
    ups = p.plan(device(), 1000.0).updates
    assert ups[0].allowed_ips == ("100.64.0.9/32",)
    assert not any(u.renew for u in ups)
    relayed = [u for u in ups if u.endpoint == RELAY_EP]
    assert relayed and relayed[0].handshake_now  # it still initiates through the relay
