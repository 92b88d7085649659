"""Mesh membership over the sealed channel (wgmesh.proto.roster), pure: the daemon's client
pumped against the real Registry, and the pieces alone."""

from __future__ import annotations

import random

from tests.test_client import CONTROL_PUBLIC, NOW, Net
from wgmesh.proto import sealed
from wgmesh.proto.client import ClientConfig, MembersChanged, RegistrarClient, Via
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import public_key
from wgmesh.proto.registry import Admission, AdmittedPeer
from wgmesh.proto.roster import RosterBook, RosterSync


def admitted(n: int, rng: random.Random) -> dict[bytes, AdmittedPeer]:
    out = {}
    for i in range(n):
        key = rng.randbytes(32)
        out[key] = AdmittedPeer(key, f"p{i}", (f"100.64.{i // 250}.{i % 250 + 1}/32",))
    return out


def mesh_net(members: int) -> tuple[Net, dict[bytes, AdmittedPeer]]:
    net = Net(config=ClientConfig(classify=False, roster=True))
    peers = admitted(members, net.rng)
    own = net.client.own_key
    peers[own] = AdmittedPeer(own, "alice", ("100.64.9.1/32",))
    peers[b"\x07" * 32] = AdmittedPeer(b"\x07" * 32, "no-routes")  # no allowed IPs: not a member
    net.registry.set_admission(Admission(open=False, peers=peers), NOW)
    return net, peers


def members_of(events: list[object]) -> list[dict[bytes, tuple[str, ...]]]:
    return [dict(e.members) for e in events if isinstance(e, MembersChanged)]


def test_a_mesh_daemon_reads_the_whole_roster_in_pages() -> None:
    net, peers = mesh_net(100)
    net.step(NOW + 1.0)
    (got,) = members_of(net.take())
    assert got == {k: p.allowed_ips for k, p in peers.items() if p.allowed_ips}
    queries = [t for t in net.sent if t.via is Via.CONTROL][2:]  # after the two Watches
    assert len(queries) == -(-101 // len(net.registry.roster.page(0)))  # every page, once
    assert net.registry.counters["roster"] == len(queries)


def test_an_unchanged_roster_costs_one_page_per_round() -> None:
    net, _ = mesh_net(100)
    net.step(NOW + 1.0)
    net.take()
    before = net.registry.counters["roster"]
    net.step(NOW + 21.0)
    assert members_of(net.take()) == []  # nothing new to report
    assert net.registry.counters["roster"] == before + 1


def test_a_changed_roster_is_read_again() -> None:
    net, peers = mesh_net(3)
    net.step(NOW + 1.0)
    net.take()
    victim = next(k for k in peers if k != net.client.own_key and peers[k].allowed_ips)
    del peers[victim]  # revoked on the registrar (SIGHUP)
    net.registry.set_admission(Admission(open=False, peers=peers), net.now)
    net.step(NOW + 21.0)
    (got,) = members_of(net.take())
    assert victim not in got and len(got) == 3


def test_open_registration_vouches_for_nobody() -> None:
    net = Net(config=ClientConfig(classify=False, roster=True))
    net.step(NOW + 1.0)
    assert members_of(net.take()) == [{}]


def test_a_query_from_another_address_than_the_watchers_is_not_answered() -> None:
    """An attacker replaying or forging the source of a RosterQuery gets nothing sent toward
    the address it names (only the peer's own Watch address receives rosters)."""
    net, _ = mesh_net(3)
    net.step(NOW + 1.0)
    client = net.client
    client._send_roster_query(0, net.now)
    (query,) = client.datagrams_to_send()
    victim = Endpoint.parse("192.0.2.77:53")
    assert net.registry.receive(query.data, victim, 3478, net.now) == []
    out = net.registry.receive(query.data, CONTROL_PUBLIC, 3478, net.now)
    assert [dest for _, dest in out] == [CONTROL_PUBLIC]


def test_pages_of_another_version_restart_the_read() -> None:
    book = RosterBook.of((bytes([i]) * 32, (f"10.0.0.{i}/32",)) for i in range(40))
    other = RosterBook.of((bytes([i]) * 32, (f"10.0.1.{i}/32",)) for i in range(40))
    sync = RosterSync()

    def page(b: RosterBook, offset: int) -> sealed.Roster:
        return sealed.Roster(1, 2, 3, b.version, len(b.members), offset, b.page(offset))

    nxt = sync.receive(page(book, sync.start()))
    assert isinstance(nxt, int) and 0 < nxt < 40
    assert sync.receive(page(other, nxt)) is None  # changed mid-way: dropped, start over
    assert sync.receive(page(book, nxt)) is None  # nothing is asked for any more
    offset: int | None = sync.start()
    while isinstance(offset, int):
        step = sync.receive(page(other, offset))
        offset = step if isinstance(step, int) else None
        last = step
    assert dict(last) == {m.key: m.allowed_ips for m in other.members}  # type: ignore[arg-type]
    assert sync.refused == 2


def test_the_version_names_the_content() -> None:
    a = RosterBook.of([(b"\x01" * 32, ("10.0.0.1/32",)), (b"\x02" * 32, ("10.0.0.2/32",))])
    b = RosterBook.of([(b"\x02" * 32, ("10.0.0.2/32",)), (b"\x01" * 32, ("10.0.0.1/32",))])
    c = RosterBook.of([(b"\x01" * 32, ("10.0.0.1/32",)), (b"\x02" * 32, ("10.0.0.3/32",))])
    assert a == b and a.version != c.version
    too_many = RosterBook.of([(b"\x03" * 32, tuple(f"10.0.{i}.0/24" for i in range(17)))])
    assert too_many.members == ()


def test_a_real_key_pair_round_trips() -> None:
    """The client's own key (derived from its private key) is what the registrar lists."""
    rng = random.Random(3)
    private = rng.randbytes(32)
    c = RegistrarClient(ClientConfig(), private, Endpoint.parse("203.0.113.1:3478"),
                        bytes(32), NOW, rng.randbytes)  # fmt: skip
    assert c.own_key == public_key(private)
