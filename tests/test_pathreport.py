"""Path reports, pure: the daemon's reporter (what it sends, when), the registrar's book (latest
per pair, floors, caps, ttl) and the Registry's handling (only from the proven control address,
replays refused before the key's bucket is charged), on a float clock."""

from __future__ import annotations

import os

from nacl.public import PrivateKey

from tests.test_registry import NOW, PORT, Peer, make, watch
from wgmesh.proto import sealed
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.proto.meshview import snapshot
from wgmesh.proto.pathreport import (
    PathBook,
    PathReporter,
    ReportConfig,
    entry_of,
    reason_code,
)
from wgmesh.proto.peerview import PeerView
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import Registry

K = sealed.PathKind
R = sealed.PathReason
A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))


def view(key: bytes, path: str, reason: str = "", handshake: float = 0.0) -> PeerView:
    return PeerView(encode_key(key), "", (), None, "registrar", path, reason, handshake, 0, 0,
                    (), "cone")  # fmt: skip


def test_reasons_become_codes() -> None:
    assert reason_code("") is R.NONE
    assert reason_code("both peers are behind symmetric NATs: no direct path") is R.BOTH_SYMMETRIC
    assert reason_code("peer is behind a symmetric NAT and we are ...") is R.PEER_SYMMETRIC
    assert reason_code("we are behind a symmetric NAT and the peer ...") is R.OURS_SYMMETRIC
    assert reason_code("lab-c and lab-a share NAT 1.2.3.4 and WireGuard port 5") is R.SHARED_NAT
    assert reason_code("trying 1.2.3.4:5 (1 of 2 candidates)") is R.TRYING
    assert reason_code("no handshake yet on any candidate") is R.NO_HANDSHAKE
    assert reason_code("peer is not registered (no DNS-SD record) and ...") is R.NOT_REGISTERED
    assert reason_code("something new") is R.OTHER
    entry = entry_of(view(A, "relay", "every direct candidate failed; relayed", NOW - 12.7), NOW)
    assert entry == sealed.PeerPath(A, K.RELAY, R.DIRECT_FAILED, 12)
    assert entry_of(view(B, "none"), NOW).handshake_age == sealed.NEVER


def test_the_reporter_sends_on_change_and_refreshes_slowly() -> None:
    r = PathReporter(ReportConfig(check_interval=5.0, refresh_interval=60.0))
    views = [view(A, "direct", "", NOW - 3), view(B, "none", "no handshake yet")]
    assert r.due(NOW)
    first = r.update(views, NOW)
    assert [len(c) for c in first] == [2] and not r.due(NOW + 4.9) and r.due(NOW + 5)
    assert r.update(views, NOW + 5) == []  # nothing changed (a handshake age is no change)
    changed = [view(A, "direct", "", NOW), view(B, "relay", "both peers are behind symmetric NATs")]
    assert r.update(changed, NOW + 10)[0][1] == sealed.PeerPath(B, K.RELAY, R.BOTH_SYMMETRIC,
                                                                 sealed.NEVER)  # fmt: skip
    assert r.update(changed, NOW + 15) == []
    assert len(r.update(changed, NOW + 71)) == 1  # the refresh
    many = [view(bytes([i]) * 32, "direct") for i in range(30)]
    assert [len(c) for c in r.update(many, NOW + 80)] == [12, 12, 6]
    assert r.update([], NOW + 90) == []


def report(counter: int, *paths: sealed.PeerPath) -> sealed.PathReport:
    return sealed.PathReport(int(NOW * 1000), counter, paths)


def test_the_book_keeps_the_latest_per_pair() -> None:
    book = PathBook(max_pairs=4, ttl=300.0)
    book.record(A, report(1, sealed.PeerPath(B, K.NONE, R.NO_HANDSHAKE)), NOW)
    book.record(
        A, report(2, sealed.PeerPath(B, K.DIRECT, R.NONE, 3), sealed.PeerPath(A, K.DIRECT)), NOW + 1
    )  # fmt: skip  (self: ignored)
    assert book.replayed(A, 2) and not book.replayed(A, 3) and not book.replayed(B, 1)
    [pair] = book.pairs(NOW + 1)
    assert (pair.reporter, pair.peer, pair.path, pair.reason, pair.handshake_age) == (
        A, B, "direct", "", 3.0)  # fmt: skip
    book.record(B, report(1, sealed.PeerPath(A, K.RELAY, R.BOTH_SYMMETRIC)), NOW + 2)
    relay = next(p for p in book.pairs(NOW + 2) if p.reporter == B)
    assert relay.reason == "both peers are behind symmetric NATs" and relay.handshake_age is None
    assert len(book.pairs(NOW + 301.5)) == 1  # A's report is older than the ttl
    # the cap: the reporters heard from longest ago go first
    book.record(C, report(1, *(sealed.PeerPath(bytes([9, i]) * 16, K.DIRECT) for i in range(3))),
                NOW + 3)  # fmt: skip
    assert len(book) == 4 and {p.reporter for p in book.pairs(NOW + 3)} == {B, C}
    book.record(C, report(2, *(sealed.PeerPath(bytes([8, i]) * 16, K.DIRECT) for i in range(6))),
                NOW + 4)  # fmt: skip
    assert len(book) == 4 and {p.reporter for p in book.pairs(NOW + 4)} == {C}
    book.forget(C)
    assert len(book) == 0 and book.pairs(NOW + 4) == []


def path_report(peer: Peer, reg_key: bytes, *paths: sealed.PeerPath, now: float = NOW) -> bytes:
    peer.counter += 1
    return peer.message(reg_key, sealed.PathReport(int(now * 1000), peer.counter, paths))


ALICE_WG = Endpoint.parse("198.51.100.20:51820")
ALICE_CONTROL = Endpoint.parse("198.51.100.20:40001")
BOB_WG = Endpoint.parse("198.51.100.21:51820")


def registered(reg_private: PrivateKey) -> tuple[Registry, bytes, Peer, Peer]:
    r = make(reg_private)
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), ALICE_WG, PORT, NOW)
    r.receive(bob.register(reg_key), BOB_WG, PORT, NOW)
    watch(r, alice, reg_key, ALICE_CONTROL)
    return r, reg_key, alice, bob


def test_the_registry_keeps_reports_from_the_proven_control_address() -> None:
    reg_private = PrivateKey.generate()
    r, reg_key, alice, bob = registered(reg_private)
    assert r.counters["path_report"] == 0
    entries = (sealed.PeerPath(bob.key, K.RELAY, R.BOTH_SYMMETRIC, 7),
               sealed.PeerPath(b"\x05" * 32, K.NONE, R.NOT_REGISTERED))  # fmt: skip
    data = path_report(alice, reg_key, *entries)
    assert r.receive(data, ALICE_CONTROL, PORT, NOW + 1) == []
    assert r.counters["path_report"] == 1
    [pair] = r.paths.pairs(NOW + 1)
    assert (pair.reporter, pair.peer, pair.path) == (alice.key, bob.key, "relay")  # registered only
    # a replay, from anywhere, is refused
    assert r.receive(data, ALICE_CONTROL, PORT, NOW + 2) == []
    assert r.counters["replay"] == 1
    # another source (not the proven control address): dropped
    other = path_report(alice, reg_key, sealed.PeerPath(bob.key, K.DIRECT))
    r.receive(other, Endpoint.parse("192.0.2.9:40001"), PORT, NOW + 3)
    assert r.counters["unexpected"] == 1
    # bob has no proven control address: nothing kept
    r.receive(path_report(bob, reg_key, sealed.PeerPath(alice.key, K.DIRECT)), BOB_WG, PORT,
              NOW + 3)  # fmt: skip
    assert len(r.paths) == 1
    snap = snapshot(r.peers, r.paths.pairs(NOW + 3), NOW + 3)
    assert [(p["from"], p["to"], p["path"]) for p in snap["paths"]] == [
        (encode_key(alice.key), encode_key(bob.key), "relay")]  # fmt: skip


def test_replayed_reports_do_not_spend_the_key_bucket() -> None:
    reg_private = PrivateKey.generate()
    r = make(reg_private, key_rate_limit=RateLimitConfig(rate=0.001, burst=4.0))
    reg_key = bytes(reg_private.public_key)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(reg_key), ALICE_WG, PORT, NOW)
    r.receive(bob.register(reg_key), BOB_WG, PORT, NOW)
    watch(r, alice, reg_key, ALICE_CONTROL)  # a Register and two Watches: one left of 4
    data = path_report(alice, reg_key, sealed.PeerPath(bob.key, K.DIRECT))
    r.receive(data, ALICE_CONTROL, PORT, NOW)
    assert r.counters["path_report"] == 1
    for _ in range(50):
        r.receive(data, ALICE_CONTROL, PORT, NOW)
    assert r.counters["replay"] == 50 and r.counters["key_limited"] == 0


def test_a_client_report_reaches_the_registry() -> None:
    """RegistrarClient.report_paths, pumped to the real Registry: kept once the client's
    control address is proven (its first probe round does that)."""
    from tests.test_client import Net

    net = Net()
    net.step(NOW + 5)  # registered, Watch answered, cookie echoed: the control address proven
    bob = Peer()
    reg_key = net.client.registrar_key
    net.registry.receive(bob.register(reg_key, NOW + 5), BOB_WG, PORT, NOW + 5)
    net.client.report_paths((sealed.PeerPath(bob.key, K.RELAY, R.BOTH_SYMMETRIC, 1),), net.now)
    net.flush()
    [pair] = net.registry.paths.pairs(net.now)
    assert (pair.reporter, pair.peer, pair.path) == (net.client.own_key, bob.key, "relay")
    net.client.report_paths((), net.now)  # nothing to say: nothing sent
    assert net.client.datagrams_to_send() == []


async def test_the_daemon_reports_its_paths_when_due() -> None:
    """The adapter: Daemon._report_paths reads the Planner's views and sends the report on
    the control socket, sealed to the registrar; not again before the next look is due."""
    import time

    from wgmesh.daemon.service import Daemon, DaemonSettings
    from wgmesh.proto.client import RegistrarClient
    from wgmesh.proto.device import DeviceState, PeerState
    from wgmesh.proto.stun import decode
    from wgmesh.wg.fake import FakeWireGuard

    reg_private = PrivateKey.generate()
    registrar = Endpoint.parse("192.0.2.1:3478")
    settings = DaemonSettings("wg0", registrar, bytes(reg_private.public_key), "mesh.test.")
    daemon = Daemon(settings, FakeWireGuard())
    own = PrivateKey.generate()
    daemon.client = RegistrarClient(
        settings.client_config(), bytes(own), registrar, bytes(reg_private.public_key),
        time.time(), os.urandom,
    )  # fmt: skip
    sent: list[bytes] = []

    class Control:
        def sendto(self, data: bytes) -> None:
            sent.append(data)

    class Raw:
        def send(self, *args: object, **kwargs: object) -> None:
            pass

    daemon._control = Control()  # type: ignore[assignment]
    daemon._raw = Raw()  # type: ignore[assignment]
    now = time.time()
    bob = PeerState(B, Endpoint.parse("198.51.100.9:51820"), ("100.64.0.2/32",), now - 3, 1, 1, 25)
    device = DeviceState("wg0", bytes(own.public_key), 51820, (bob,))
    daemon._report_paths(device)
    reports = []
    for data in sent:
        _, payload = sealed.open_sealed(sealed.Sealer(bytes(reg_private)), decode(data),
                                        bytes(own.public_key))  # fmt: skip
        if isinstance(payload, sealed.PathReport):
            reports.append(payload)
    assert [r.paths for r in reports] == [(sealed.PeerPath(B, K.DIRECT, R.NONE, 3),)]
    before = len(sent)
    daemon._report_paths(device)
    assert len(sent) == before  # the next look is 5 s away
    if daemon._timer is not None:
        daemon._timer.cancel()
