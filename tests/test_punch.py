"""The daemon's endpoint choice, on the sans-IO Planner with a float clock (no WireGuard)."""

from __future__ import annotations

from dataclasses import replace

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.punch import Hint, PeerRecord, Planner, PunchConfig, Source
from wgmesh.wg.control import DeviceState, PeerState

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


PUBLIC = Hint(PUB, "public", 0)
LANH = Hint(LAN, "lan", 10)


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
    p.set_record(record(PUBLIC, LANH, Hint(Endpoint.parse("[2001:db8::7]:51820"), "ipv6", 5)))
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
    p.set_record(record(Hint(PUB2, "public", 0)))
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
    p.set_our_mapping(Endpoint.parse("198.51.100.7:51821"), "cone")
    p.set_record(record(PUBLIC, LANH))
    assert p.plan(device(peer()), 1000.0).updates[0].endpoint == LAN
    q = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    q.set_our_mapping(Endpoint.parse("203.0.113.50:51820"), "cone")
    q.set_record(record(PUBLIC, LANH))
    assert q.plan(device(peer()), 1000.0).updates[0].endpoint == PUB


def test_lan_first_when_seen_over_mdns() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.lan_keys.add(A)
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
    assert not p.set_our_mapping(Endpoint.parse("203.0.113.50:51820"), "cone")
    assert p.set_our_mapping(Endpoint.parse("203.0.113.50:40000"), "cone")
    u = p.plan(device(peer(PUB, hs=1000.0)), 1010.0).updates
    assert u and u[0].handshake_now and u[0].endpoint is None
    assert p.plan(device(peer(PUB, hs=1000.0)), 1010.5).updates == ()


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
    p.set_record(record(PUBLIC, allowed=("100.64.0.9/32",)))
    ups = p.plan(device(), 1000.0).updates
    assert ups[0].allowed_ips == ("100.64.0.9/32",)
    assert ups[1].endpoint == PUB
    p.withdraw(A)
    ups = p.plan(device(peer(PUB, hs=1000.0)), 1100.0).updates
    assert len(ups) == 1 and ups[0].remove


def test_mesh_mode_never_removes_peers_it_did_not_add() -> None:
    p = Planner(PunchConfig(punch_delay=0, mesh=True))
    p.set_record(record(PUBLIC, allowed=("100.64.0.9/32",)))
    p.withdraw(A)
    assert p.plan(device(peer(PUB, hs=1000.0)), 1100.0).updates == ()


def test_reasons_for_no_direct_path() -> None:
    p = Planner(
        PunchConfig(
            punch_delay=0,
        )
    )
    p.set_our_mapping(Endpoint.parse("203.0.113.50:40000"), "cone")
    p.set_record(replace(record(PUBLIC), nat="symmetric"))
    v = p.views(device(peer()), 1000.0)[0]
    assert v.path == "none"
    assert "symmetric NAT" in v.reason
    p.our_nat = "symmetric"
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
