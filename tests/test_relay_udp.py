"""The userspace relay's sockets (wgmesh.registry.relayudp) on loopback, batched and not, and
the route table's raw lookups they use (wgmesh.proto.relayroute).

Every 127.0.0.x address is loopback, so each peer is a socket on its own address: a and b are
the two bound legs of a pair, c and a2 (a's address, another port) are strangers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair, Route, RouteTable, in4
from wgmesh.registry import udpbatch
from wgmesh.registry.relayudp import (
    PortCounters,
    RelaySockets,
    RelayUdpConfig,
    looks_like_stun,
)

HOST = "127.0.0.1"
COOKIE = stun.COOKIE_BYTES


def peer(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # capped at rmem_max
    s.bind((ip, 0))
    return s


def ep(s: socket.socket) -> Endpoint:
    return Endpoint.of(*s.getsockname())


def drain(s: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    out: list[tuple[bytes, tuple[str, int]]] = []
    while True:
        try:
            data, addr = s.recvfrom(70000)
        except BlockingIOError:
            return out
        out.append((data, addr))


def wg(i: int, size: int = 100) -> bytes:
    """A WireGuard-shaped transport message (type 4, three zero bytes) numbered i."""
    body = i.to_bytes(4, "big") + os.urandom(max(0, size - 8))
    return b"\x04\x00\x00\x00" + body[: max(0, size - 4)]


def stun_request() -> bytes:
    return stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12), ()))


@dataclass
class Rig:
    relay: RelaySockets
    table: RouteTable
    pa: int
    pb: int
    a: socket.socket
    b: socket.socket
    c: socket.socket
    a2: socket.socket
    control: list[tuple[bytes, Endpoint, int]] = field(default_factory=list)
    sent: int = 0
    inbox: dict[socket.socket, list[tuple[bytes, tuple[str, int]]]] = field(default_factory=dict)

    def watch(self, s: socket.socket) -> None:
        """Read what reaches ``s`` as it comes (a test peer never overflows its buffer)."""
        box = self.inbox.setdefault(s, [])
        asyncio.get_running_loop().add_reader(s.fileno(), lambda: box.extend(drain(s)))

    def unwatch(self, s: socket.socket) -> None:
        asyncio.get_running_loop().remove_reader(s.fileno())
        del self.inbox[s]

    def got(self, s: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
        """What reached ``s`` since the last look."""
        box = self.inbox[s]
        box.extend(drain(s))
        out = list(box)
        box.clear()
        return out

    def pair(self) -> RelayPair:
        return RelayPair(RelayLeg(self.pa, ep(self.a)), RelayLeg(self.pb, ep(self.b)))

    def send(self, s: socket.socket, data: bytes, port: int) -> None:
        s.sendto(data, (HOST, port))
        self.sent += 1

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until the relay has handled every datagram sent, then for the last ones
        forwarded to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.relay.stats.received < self.sent:
            assert loop.time() < deadline, (self.relay.stats, self.sent)
            await asyncio.sleep(0.002)
        # then until 0.1 s brings nothing more to the test peers (a loaded machine delivers
        # the last forwarded datagrams late)
        quiet_since = loop.time()
        seen = -1
        while loop.time() - quiet_since < 0.1 and loop.time() < deadline:
            await asyncio.sleep(0.02)
            for sock, box in self.inbox.items():
                box.extend(drain(sock))
            now_seen = sum(map(len, self.inbox.values()))
            if now_seen != seen:
                seen, quiet_since = now_seen, loop.time()

    def balanced(self) -> bool:
        s = self.relay.stats
        parts = s.forwarded + s.send_failed + s.dropped_unbound + s.dropped_kernel_mode + s.control
        return s.received == parts + s.oversize


@contextmanager
def path(batched: bool) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(udpbatch, "available", lambda: batched)
        yield


@asynccontextmanager
async def rig(
    batched: bool, *, forward: bool = True, config: RelayUdpConfig | None = None
) -> AsyncIterator[Rig]:
    table = RouteTable()
    control: list[tuple[bytes, Endpoint, int]] = []
    with path(batched):
        relay = RelaySockets(
            HOST, table, lambda d, s, p: control.append((d, s, p)), forward=forward, config=config
        )
    assert relay.batched == batched
    socks = [peer("127.0.0.2"), peer("127.0.0.3"), peer("127.0.0.4"), peer("127.0.0.2")]
    try:
        pa, pb = await relay.open(0), await relay.open(0)
        a, b, c, a2 = socks
        r = Rig(relay, table, pa, pb, a, b, c, a2, control=control)
        for s in socks:
            r.watch(s)
        table.set_pairs([r.pair()])
        yield r
        assert r.balanced(), relay.stats
        for s in list(r.inbox):
            r.unwatch(s)
    finally:
        relay.close_all()
        for s in socks:
            s.close()


both = pytest.mark.parametrize("batched", [True, False], ids=["batched", "asyncio"])


@both
async def test_a_pair_forwards_both_ways_byte_for_byte(batched: bool) -> None:
    async with rig(batched, config=RelayUdpConfig(max_datagram=1500)) as r:
        to_b = [wg(i, size) for i, size in enumerate([0, 1, 8, 100, 1400, 1500] * 30)]
        to_a = [wg(i, 1400) for i in range(150)]
        for d in to_b:
            r.send(r.a, d, r.pa)
        for d in to_a:
            r.send(r.b, d, r.pb)
        await r.settle()
        got_b, got_a = r.got(r.b), r.got(r.a)
        assert [d for d, _ in got_b] == to_b  # in order, exact bytes, nothing more
        assert [d for d, _ in got_a] == to_a
        assert {addr for _, addr in got_b} == {(HOST, r.pb)}  # sent from the other leg's port
        assert {addr for _, addr in got_a} == {(HOST, r.pa)}
        assert r.got(r.c) == r.got(r.a2) == []
        s = r.relay.stats
        assert s.forwarded == len(to_a) + len(to_b) == s.received
        assert s.forwarded_bytes == sum(map(len, to_a + to_b))
        assert r.relay.counters(r.pa) == PortCounters(len(to_b), sum(map(len, to_b)))
        assert r.relay.counters(r.pb) == PortCounters(len(to_a), sum(map(len, to_a)))
        assert sorted(r.relay.take_active()) == sorted([r.pa, r.pb])
        assert r.relay.take_active() == []  # nothing since
        r.send(r.b, wg(0), r.pb)
        await r.settle()
        assert r.relay.take_active() == [r.pb] and len(r.got(r.a)) == 1
        if batched:
            assert 0 < s.batches < s.received


@both
async def test_strangers_are_dropped_and_counted_never_forwarded(batched: bool) -> None:
    async with rig(batched) as r:
        legit = [wg(i) for i in range(100)]
        for i, d in enumerate(legit):  # queued before the loop runs: mixed batches
            r.send(r.a, d, r.pa)
            r.send(r.c, b"c" + d, r.pa)  # a stranger at a's port
            if i % 3 == 0:
                r.send(r.a2, b"a2" + d, r.pa)  # a's address, another port: a stranger too
                r.send(r.c, b"c" + d, r.pb)
                r.send(r.a, b"wrong port" + d, r.pb)  # a is bound at pa, not at pb
        await r.settle()
        assert [d for d, _ in r.got(r.b)] == legit
        assert r.got(r.a) == r.got(r.c) == r.got(r.a2) == []
        s = r.relay.stats
        assert s.forwarded == len(legit)
        assert s.dropped_unbound == r.sent - len(legit) == 100 + 3 * 34


@both
async def test_a_port_without_a_pair_drops(batched: bool) -> None:
    async with rig(batched) as r:
        lone = await r.relay.open(0)
        for i in range(80):
            r.send(r.a, wg(i), lone)
            r.send(r.c, wg(i), lone)
        await r.settle()
        assert r.got(r.a) == r.got(r.b) == r.got(r.c) == []
        assert r.relay.stats.dropped_unbound == 160 and r.relay.stats.forwarded == 0
        assert r.relay.counters(lone) == PortCounters(0, 0)
        assert r.relay.take_active() == []  # dropped traffic keeps no pair alive


@both
async def test_stun_framed_datagrams_go_to_on_control_never_forwarded(batched: bool) -> None:
    async with rig(batched) as r:
        bind = stun_request()
        header_only = b"\x00\x01\x00\x00" + COOKIE + bytes(12)
        odd_length = b"\x00\x01\x00\x03" + COOKIE + bytes(15)  # STUN-framed all the same
        near = [
            b"\x00\x01\x00\x00" + COOKIE + bytes(11),  # 19 bytes: too short for STUN
            b"\x40\x01\x00\x00" + COOKIE + bytes(12),  # top bits set: not STUN
            b"\x04\x00\x00\x00" + COOKIE + bytes(24),  # WireGuard whose index is the cookie
        ]
        order = [wg(0), bind, wg(1), header_only, *near, odd_length, wg(2)]
        for d in order:
            r.send(r.a, d, r.pa)  # from the bound peer
        r.send(r.c, bind, r.pb)  # and from a stranger
        await r.settle()
        controls = [bind, header_only, near[2], odd_length]
        assert [d for d, _ in r.got(r.b)] == [d for d in order if d not in controls]
        assert [c for c in r.control if c[2] == r.pa] == [(d, ep(r.a), r.pa) for d in controls]
        assert [c for c in r.control if c[2] == r.pb] == [(bind, ep(r.c), r.pb)]
        assert all(looks_like_stun(d) for d in controls)
        assert not any(looks_like_stun(d) for d in near[:2])
        assert r.relay.stats.control == 5 and r.relay.stats.dropped_unbound == 0


@both
async def test_kernel_mode_forwards_nothing_but_still_takes_binds(batched: bool) -> None:
    async with rig(batched, forward=False) as r:
        bind = stun_request()
        for i in range(100):
            r.send(r.a, wg(i), r.pa)
            r.send(r.b, wg(i), r.pb)
            r.send(r.c, wg(i), r.pa)
        r.send(r.a, bind, r.pa)
        await r.settle()
        assert r.got(r.a) == r.got(r.b) == r.got(r.c) == []
        s = r.relay.stats
        assert s.forwarded == 0 and s.dropped_kernel_mode == 300 and s.control == 1
        assert r.control == [(bind, ep(r.a), r.pa)]
        r.relay.forward = True  # the kernel path went away: userspace takes over at once
        late = wg(7)
        r.send(r.a, late, r.pa)
        await r.settle()
        assert [d for d, _ in r.got(r.b)] == [late]
        assert r.relay.stats.forwarded == 1


@both
async def test_the_table_replaced_while_traffic_flows(batched: bool) -> None:
    async with rig(batched) as r:
        d = peer("127.0.0.5")
        r.watch(d)
        try:
            got_b: list[tuple[bytes, tuple[str, int]]] = []
            got_d: list[tuple[bytes, tuple[str, int]]] = []
            total = 3000
            for i in range(total):
                r.send(r.a, wg(i, 200), r.pa)
                if i == 1000:  # mid-flow: a's traffic at pa now goes to d
                    r.table.set_pairs([RelayPair(RelayLeg(r.pa, ep(r.a)), RelayLeg(r.pb, ep(d)))])
                elif i == 2000:  # once all so far is handled, the pair goes away
                    await r.settle()
                    r.table.set_pairs([])
                if i % 100 == 0:
                    await asyncio.sleep(0)  # the relay takes some of what is queued
            await r.settle()
            got_b += r.got(r.b)
            got_d += r.got(d)
            to_b = [int.from_bytes(x[4:8], "big") for x, _ in got_b]
            to_d = [int.from_bytes(x[4:8], "big") for x, _ in got_d]
            assert to_b and to_d and to_b + to_d == list(range(2001))  # in order, each once
            assert {a for _, a in got_b + got_d} == {(HOST, r.pb)}
            s = r.relay.stats
            assert s.forwarded == 2001 and s.dropped_unbound == total - 2001
            assert r.got(r.a) == r.got(r.c) == []
        finally:
            r.unwatch(d)
            d.close()


@both
async def test_a_bind_that_rebinds_the_pair_moves_the_rest_of_its_batch(batched: bool) -> None:
    async with rig(batched) as r:
        d = peer("127.0.0.5")
        r.watch(d)
        try:

            def rebind(data: bytes, source: Endpoint, port: int) -> None:
                r.control.append((data, source, port))
                r.table.set_pairs([RelayPair(RelayLeg(r.pa, ep(r.a)), RelayLeg(r.pb, ep(d)))])

            r.relay.on_control = rebind
            for d_ in (wg(0), wg(1), stun_request(), wg(2), wg(3)):  # one batch
                r.send(r.a, d_, r.pa)
            await r.settle()
            assert [x[4:8] for x, _ in r.got(r.b)] == [wg(0)[4:8], wg(1)[4:8]]
            assert [x[4:8] for x, _ in r.got(d)] == [wg(2)[4:8], wg(3)[4:8]]
            assert len(r.control) == 1
        finally:
            r.unwatch(d)
            d.close()


@both
async def test_closing_a_port(batched: bool) -> None:
    async with rig(batched) as r:
        r.relay.close(r.pb)  # the destination leg's socket is gone: nothing can be sent
        assert r.relay.ports() == {r.pa} and r.relay.counters(r.pb) is None
        for i in range(10):
            r.send(r.a, wg(i), r.pa)
        await r.settle()
        assert r.relay.stats.send_failed == 10 and r.got(r.b) == []
        r.relay.close(r.pa)
        r.relay.close(r.pa)  # twice is nothing
        assert r.relay.ports() == frozenset()
        r.a.sendto(wg(0), (HOST, r.pa))  # not counted: no socket reads it
        await asyncio.sleep(0.05)
        assert r.relay.stats.received == 10
        await asyncio.sleep(0)  # the fallback's transport closes its socket on the next turn
        assert await r.relay.open(r.pb) == r.pb and await r.relay.open(r.pa) == r.pa
        assert await r.relay.open(r.pa) == r.pa  # open already: left as it is
        again = wg(1)
        r.send(r.a, again, r.pa)
        await r.settle()
        assert r.got(r.b) == [(again, (HOST, r.pb))]
        assert r.relay.stats.forwarded == 1


@both
async def test_oversize_datagrams_are_dropped_unread(batched: bool) -> None:
    async with rig(batched, config=RelayUdpConfig(max_datagram=1000)) as r:
        ok = wg(1, 1000)
        r.send(r.a, wg(0, 1001), r.pa)
        r.send(r.a, ok, r.pa)
        r.send(r.a, stun_request() + bytes(2000), r.pa)  # a STUN-framed one too
        await r.settle()
        assert [x for x, _ in r.got(r.b)] == [ok]
        assert r.relay.stats.oversize == 2 and r.relay.stats.forwarded == 1
        assert r.control == []


@both
async def test_an_on_control_bug_costs_only_its_datagram(
    batched: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(batched) as r:

        def broken(data: bytes, source: Endpoint, port: int) -> None:
            raise RuntimeError("core bug")

        r.relay.on_control = broken
        r.send(r.a, wg(0), r.pa)
        r.send(r.a, stun_request(), r.pa)
        r.send(r.a, stun_request(), r.pa)
        r.send(r.a, wg(1), r.pa)
        await r.settle()
        assert len(r.got(r.b)) == 2
        assert r.relay.stats.control == 2 and r.relay.stats.control_errors == 2
        errors = [x for x in caplog.records if x.levelno == logging.ERROR]
        assert len(errors) == 1 and "core bug" in str(errors[0].exc_info)


def test_only_ipv4_hosts_for_now() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        RelaySockets("::1", RouteTable(), lambda d, s, p: None, forward=True)
    with pytest.raises(ValueError, match="max_datagram"):
        RelayUdpConfig(max_datagram=10)


# -- the property: what comes out is exactly the model's ---------------------------------

SOURCES = ("a", "b", "c", "a2")
payloads = st.one_of(
    st.binary(max_size=1400),
    st.builds(
        lambda t, body: bytes([t, 0, 0, 0]) + body, st.integers(1, 4), st.binary(max_size=200)
    ),
    st.builds(  # STUN-framed (most of them: the model decides)
        lambda head, tail: head[:4] + COOKIE + tail,
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=0, max_size=60),
    ),
)
ops = st.lists(
    st.tuples(st.sampled_from(SOURCES), st.integers(0, 2), payloads), min_size=1, max_size=60
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, batched=st.booleans(), forward=st.booleans())
def test_datagrams_out_are_exactly_the_models(
    ops: list[tuple[str, int, bytes]], batched: bool, forward: bool
) -> None:
    asyncio.run(_against_the_model(ops, batched, forward))


async def _against_the_model(
    ops: list[tuple[str, int, bytes]], batched: bool, forward: bool
) -> None:
    config = RelayUdpConfig(batch=8, max_batches=2, max_datagram=1400)
    async with rig(batched, forward=forward, config=config) as r:
        lone = await r.relay.open(0)
        ports = (r.pa, r.pb, lone)
        socks = {"a": r.a, "b": r.b, "c": r.c, "a2": r.a2}
        bound = {("a", r.pa): ("b", r.pb), ("b", r.pb): ("a", r.pa)}
        expect: dict[str, list[tuple[bytes, tuple[str, int]]]] = {s: [] for s in SOURCES}
        expect_control: dict[int, list[tuple[bytes, Endpoint, int]]] = {p: [] for p in ports}
        for name, i, data in ops:
            port = ports[i]
            r.send(socks[name], data, port)
            if looks_like_stun(data):
                expect_control[port].append((data, ep(socks[name]), port))
            elif forward and (name, port) in bound:
                to, from_port = bound[name, port]
                expect[to].append((data, (HOST, from_port)))
        await r.settle()
        for name in SOURCES:
            assert r.got(socks[name]) == expect[name], name
        got_control: dict[int, list[tuple[bytes, Endpoint, int]]] = {p: [] for p in ports}
        for c in r.control:
            got_control[c[2]].append(c)
        assert got_control == expect_control
        assert r.relay.stats.forwarded == sum(map(len, expect.values()))


# -- the table's raw lookups (pure) ------------------------------------------------------


def test_in4_is_the_sockaddr_in_after_its_family() -> None:
    e = Endpoint.parse("192.0.2.7:8080")
    assert in4(e) == b"\x1f\x90\xc0\x00\x02\x07"
    assert in4(Endpoint.parse("[2001:db8::1]:53")) == b""
    s = peer("127.0.0.9")
    try:  # what the kernel writes (udpbatch reads the same bytes)
        assert in4(ep(s)) == s.getsockname()[1].to_bytes(2, "big") + bytes([127, 0, 0, 9])
    finally:
        s.close()


def test_port_route_and_route_in4_agree_with_route() -> None:
    a, b = Endpoint.parse("198.51.100.1:4000"), Endpoint.parse("203.0.113.9:5000")
    t = RouteTable()
    t.set_pairs([RelayPair(RelayLeg(7000, a), RelayLeg(7001, b))])
    r = t.port_route(7000)
    assert r is not None and r.source == a and r.route == Route(7001, b)
    assert r.source_addr == ("198.51.100.1", 4000) and r.to_addr == ("203.0.113.9", 5000)
    assert r.source_in4 == in4(a) and r.to_in4 == in4(b)
    assert t.route_in4(7000, in4(a)) == t.route(7000, a) == Route(7001, b)
    assert t.route_in4(7001, in4(b)) == Route(7000, a)
    assert t.route_in4(7001, in4(a)) is None and t.route_in4(7002, in4(a)) is None
    assert t.port_route(7002) is None
    six = Endpoint.parse("[2001:db8::1]:4000")
    t.set_pairs([RelayPair(RelayLeg(7000, six), RelayLeg(7001, b))])
    assert t.route(7000, six) == Route(7001, b)
    assert t.route_in4(7000, b"") is None  # an IPv6 leg has no raw IPv4 form


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535)), min_size=4, max_size=4),
    st.integers(0, 2**32 - 1),
    st.integers(0, 65535),
)
def test_route_in4_is_route_on_raw_bytes(legs: list[tuple[int, int]], ip: int, port: int) -> None:
    import ipaddress

    eps = [Endpoint(ipaddress.IPv4Address(i), p) for i, p in legs]
    t = RouteTable()
    t.set_pairs([RelayPair(RelayLeg(1, eps[0]), RelayLeg(2, eps[1])),
                 RelayPair(RelayLeg(3, eps[2]), RelayLeg(4, eps[3]))])  # fmt: skip
    probe = Endpoint(ipaddress.IPv4Address(ip), port)
    for relay_port in range(6):
        for source in (*eps, probe):
            assert t.route_in4(relay_port, in4(source)) == t.route(relay_port, source)
