"""The batched UDP socket (recvmmsg/sendmmsg through ctypes) and its fallback."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import socket
import struct

import dns.asyncquery
import dns.message
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgmesh.proto import stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.registry import udpbatch
from wgmesh.registry.dns import start_dns
from wgmesh.registry.server import _source
from wgmesh.registry.udpbatch import BATCH, BatchedUdp, sockaddr_tuple


def bound(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind((host, 0))
    return s


def client(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.bind((host, 0))
    c.settimeout(2)
    return c


def collect(c: socket.socket, n: int) -> list[tuple[bytes, tuple[str, int]]]:
    return [c.recvfrom(70000)[:2] for _ in range(n)]  # type: ignore[misc]


async def test_many_datagrams_are_answered_to_their_senders() -> None:
    seen: list[bytes] = []

    def handler(data: bytes, name: bytes) -> bytes | None:
        seen.append(name)
        return None if data.startswith(b"drop") else b"re:" + data

    server = BatchedUdp(bound(), handler, size=512)
    server.start(asyncio.get_running_loop())
    a, b = client(), client()
    try:
        addr = server.get_extra_info("sockname")
        count = 3 * BATCH + 5  # more than one batch per readable event
        for i in range(count):
            (a if i % 2 else b).sendto(b"q%d" % i, addr)
        a.sendto(b"drop me", addr)
        await asyncio.sleep(0.2)
        got_a = {d for d, _ in await asyncio.to_thread(collect, a, count // 2)}
        got_b = {d for d, _ in await asyncio.to_thread(collect, b, count - count // 2)}
        assert got_a == {b"re:q%d" % i for i in range(1, count, 2)}
        assert got_b == {b"re:q%d" % i for i in range(0, count, 2)}
        assert server.stats.received == count + 1 and server.stats.sent == count
        assert {sockaddr_tuple(n) for n in seen} == {a.getsockname(), b.getsockname()}
        a.settimeout(0.2)
        with pytest.raises(TimeoutError):
            a.recvfrom(100)  # "drop me" got no answer
    finally:
        server.close()
        a.close()
        b.close()


def test_available_on_linux() -> None:
    assert udpbatch.available()  # CI and the lab are Linux: the batched path is the one in use


async def test_ipv6() -> None:
    server = BatchedUdp(bound(socket.AF_INET6, "::1"), lambda d, _n: d[::-1])
    server.start(asyncio.get_running_loop())
    c = client(socket.AF_INET6, "::1")
    try:
        c.sendto(b"abc", server.get_extra_info("sockname"))  # type: ignore[arg-type]
        data, _ = await asyncio.to_thread(c.recvfrom, 100)
        assert data == b"cba"
    finally:
        server.close()
        c.close()


async def test_oversized_datagrams_are_dropped_and_counted_and_big_replies_still_go() -> None:
    dropped: list[int] = []
    server = BatchedUdp(
        bound(), lambda d, _n: d * 100, size=64, on_truncated=lambda: dropped.append(1)
    )
    server.start(asyncio.get_running_loop())
    c = client()
    try:
        addr = server.get_extra_info("sockname")
        c.sendto(b"x" * 65, addr)  # one byte over the slot: dropped unread
        c.sendto(b"y" * 64, addr)  # fits; its 6400-byte reply is larger than a send slot
        data, _ = await asyncio.to_thread(c.recvfrom, 70000)
        assert data == b"y" * 6400
        assert server.stats.truncated == 1 and dropped == [1]
    finally:
        server.close()
        c.close()


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wgmesh.udp" and r.levelno == logging.ERROR]


async def test_one_failing_datagram_costs_no_other_reply_of_its_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(data: bytes, _name: bytes) -> bytes | None:
        if data == b"boom":
            raise RuntimeError("handler bug")
        return b"re:" + data

    errors: list[int] = []
    server = BatchedUdp(bound(), handler, on_error=lambda: errors.append(1))
    c = client()
    try:
        addr = server.get_extra_info("sockname")
        sent = [b"q%d" % i for i in range(10)]
        for d in [*sent[:5], b"boom", *sent[5:]]:
            c.sendto(d, addr)  # all queued before the reader is registered: one batch
        server.start(asyncio.get_running_loop())
        got = {d for d, _ in await asyncio.to_thread(collect, c, len(sent))}
        assert got == {b"re:" + d for d in sent}
        assert server.stats.batches == 1 and server.stats.received == 11
        assert server.stats.sent == 10 and server.stats.errors == 1 and errors == [1]
        (record,) = failures(caplog)
        assert record.exc_info is not None and "handler bug" in str(record.exc_info[1])
        assert str(c.getsockname()[1]) in record.getMessage()  # names the sender
        c.sendto(b"fine", addr)  # and the socket lives on
        assert (await asyncio.to_thread(c.recvfrom, 100))[0] == b"re:fine"
    finally:
        server.close()
        c.close()


async def test_a_flood_of_failures_is_counted_but_not_logged_line_by_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(data: bytes, _name: bytes) -> bytes | None:
        if data.startswith(b"boom"):
            raise ValueError(data.decode())
        return b"ok"

    server = BatchedUdp(bound(), handler, error_log_interval=0.3)
    server.start(asyncio.get_running_loop())
    c = client()
    try:
        addr = server.get_extra_info("sockname")
        flood = 3 * BATCH
        for i in range(flood):
            c.sendto(b"boom%d" % i, addr)
        c.sendto(b"fine", addr)
        assert (await asyncio.to_thread(c.recvfrom, 100))[0] == b"ok"
        assert server.stats.errors == flood and len(failures(caplog)) == 1
        await asyncio.sleep(0.35)  # the next one after the interval is logged, with the count
        c.sendto(b"boom again", addr)
        c.sendto(b"fine", addr)
        assert (await asyncio.to_thread(c.recvfrom, 100))[0] == b"ok"
        _, second = failures(caplog)
        assert f"({flood - 1} more since the last one logged)" in second.getMessage()
        assert server.stats.errors == flood + 1
    finally:
        server.close()
        c.close()


async def test_the_asyncio_fallback_drops_only_the_failing_datagram(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(udpbatch, "available", lambda: False)

    def handler(data: bytes, _addr: tuple[str, int] | None) -> bytes | None:
        if data.startswith(b"boom"):
            raise RuntimeError("handler bug")
        return b"re:" + data

    errors: list[int] = []
    transport = await udpbatch.open_udp(
        "127.0.0.1", 0, handler, max_datagram=512, on_error=lambda: errors.append(1)
    )
    c = client()
    try:
        assert not isinstance(transport, BatchedUdp)
        addr = transport.get_extra_info("sockname")
        sent = [b"q%d" % i for i in range(6)]
        for d in [*sent[:3], b"boom", b"boom 2", *sent[3:]]:
            c.sendto(d, addr)
        got = {d for d, _ in await asyncio.to_thread(collect, c, len(sent))}
        assert got == {b"re:" + d for d in sent}
        assert errors == [1, 1]
        (record,) = failures(caplog)
        assert record.exc_info is not None and "handler bug" in str(record.exc_info[1])
    finally:
        transport.close()
        c.close()


@given(st.binary(max_size=200))
def test_sockaddr_tuple_never_raises(name: bytes) -> None:
    r = sockaddr_tuple(name)
    assert r is None or (isinstance(r[0], str) and 0 <= r[1] < 65536)


def test_sockaddr_tuple_reads_what_the_kernel_writes() -> None:
    fam4 = struct.pack("=H", socket.AF_INET)
    assert sockaddr_tuple(fam4 + b"\x1f\x90" + bytes([192, 0, 2, 7]) + bytes(8)) == (
        "192.0.2.7",
        8080,
    )
    fam6 = struct.pack("=H", socket.AF_INET6)
    addr6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert sockaddr_tuple(fam6 + b"\x00\x35" + bytes(4) + addr6 + bytes(4)) == ("2001:db8::1", 53)
    assert sockaddr_tuple(struct.pack("=H", socket.AF_UNIX) + bytes(20)) is None


@pytest.mark.parametrize("batched", [True, False])
async def test_dns_serves_with_and_without_batching(
    batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udpbatch, "available", lambda: batched)
    zone = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "hostmaster.mesh.test."))
    server = await start_dns(zone, "127.0.0.1", 0)
    try:
        assert isinstance(server._udp, BatchedUdp) == batched
        q = dns.message.make_query("mesh.test.", "SOA")
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=server.udp_port, timeout=2)
        assert r.answer and r.id == q.id
        c = client()
        c.sendto(b"\x00" * 5000, ("127.0.0.1", server.udp_port))  # over max_udp_query
        c.close()
        await asyncio.sleep(0.1)
        assert server.stats.udp_dropped == 1
    finally:
        server.close()
        await server.wait_closed()


def plain_request(fingerprint: bool) -> bytes:
    tid = os.urandom(stun.TRANSACTION_ID_LEN)
    return stun.encode(stun.StunMessage(stun.BINDING_REQUEST, tid), fingerprint=fingerprint)


@pytest.mark.parametrize("dual_stack", [False, True])
async def test_the_in_place_fast_path_and_the_handler_share_batches(dual_stack: bool) -> None:
    """Plain Binding Requests answered in place, amid datagrams the handler answers (with
    replies of other lengths, too big for a slot, or none): every sender gets exactly its
    answers, over batches whose drops move the send slots off their presets and back. Dual
    stack: IPv4 senders arrive as IPv4-mapped on a wildcard [::] socket (the replies' source
    set from IPV6_PKTINFO), and an IPv6 sender's requests go to the handler."""
    responder = stun.PlainBindingResponder()

    def handler(data: bytes, name: bytes) -> bytes | None:
        if data.startswith(b"drop"):
            return None
        if data.startswith(b"big"):
            return data * 100  # over the slot: sent on its own
        if stun.is_stun(data):  # the IPv6 sender's plain requests: the general path
            return b"general"
        return b"re:" + data

    answered: list[int] = []
    if dual_stack:
        sock = await udpbatch.bind_udp("::", 0, v6only=False)
    else:
        sock = bound()
    server = BatchedUdp(sock, handler, size=512, fast=responder, on_fast=answered.append)
    assert server.pktinfo == dual_stack
    server.start(asyncio.get_running_loop())
    port = server.get_extra_info("sockname")[1]  # type: ignore[index]
    clients = [client(), client()] + ([client(socket.AF_INET6, "::1")] if dual_stack else [])
    rng = random.Random(7)
    expected: list[list[bytes]] = [[] for _ in clients]
    plain = 0
    try:
        for i in range(4 * BATCH + 9):
            which = rng.randrange(len(clients))
            c = clients[which]
            ipv6 = c.family == socket.AF_INET6
            kind = rng.choice(["plain", "plain", "plain", "fp", "drop", "big", "echo"])
            if kind in ("plain", "fp"):
                data = plain_request(kind == "fp")
                if ipv6:
                    expected[which].append(b"general")
                else:
                    host, cport = c.getsockname()[:2]
                    answer = responder.answer(data, host, cport)
                    assert answer is not None
                    expected[which].append(answer)
                    plain += 1
            else:
                data = f"{kind}{i}".encode()
                if kind != "drop":
                    expected[which].append(handler(data, b"") or b"")
            c.sendto(data, ("::1" if ipv6 else "127.0.0.1", port))
            if i % BATCH == BATCH - 1:
                await asyncio.sleep(0.05)  # let the batch be read: the socket buffer is small
        await asyncio.sleep(0.3)
        for c, want in zip(clients, expected, strict=True):
            got = [d for d, _ in await asyncio.to_thread(collect, c, len(want))]
            assert sorted(got) == sorted(want)
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recvfrom(1000)  # nothing more, nothing to anyone else
        assert sum(answered) == plain and server.stats.batches >= 4
    finally:
        server.close()
        for c in clients:
            c.close()


def test_a_fast_path_whose_answers_exceed_the_slot_is_refused() -> None:
    sock = bound()
    try:
        with pytest.raises(ValueError, match="exceed 40"):
            BatchedUdp(sock, lambda d, n: None, size=40, fast=stun.PlainBindingResponder())
    finally:
        sock.close()


async def test_a_batch_that_raises_leaves_the_send_slots_as_preset() -> None:
    """A callback that raises mid-batch (a bug) costs that batch's replies, not later ones: the
    send slots it moved are reset, so the next batch's answers go to their own senders."""
    responder = stun.PlainBindingResponder()
    raised: list[int] = []

    def on_fast(n: int) -> None:
        if not raised:
            raised.append(n)
            raise RuntimeError("a bug")

    server = BatchedUdp(bound(), lambda d, _n: None, size=512, fast=responder, on_fast=on_fast)
    server.start(asyncio.get_running_loop())
    a, b = client(), client()
    addr = server.get_extra_info("sockname")
    try:
        b.sendto(b"drop", addr)  # dropped by the handler: b's request below moves to slot 0
        b.sendto(plain_request(False), addr)
        await asyncio.sleep(0.2)
        assert raised  # that batch raised before its send
        data = plain_request(False)
        a.sendto(data, addr)
        got, source = await asyncio.to_thread(a.recvfrom, 1000)
        assert got == responder.answer(data, *a.getsockname()) and source == addr
        b.settimeout(0.3)
        with pytest.raises(TimeoutError):
            b.recvfrom(1000)  # nothing stale went to b
    finally:
        server.close()
        a.close()
        b.close()


async def test_a_fast_path_that_raises_costs_only_its_datagram() -> None:
    class Broken(stun.PlainBindingResponder):
        def answer_in_place(self, *args: object) -> int:  # type: ignore[override]
            raise RuntimeError("a bug")

    failed: list[int] = []
    server = BatchedUdp(bound(), lambda d, _n: b"re:" + d, size=512, fast=Broken(),
                        on_error=lambda: failed.append(1))  # fmt: skip
    server.start(asyncio.get_running_loop())
    c = client()
    try:
        for _ in range(3):
            c.sendto(b"x", server.get_extra_info("sockname"))
        await asyncio.sleep(0.2)
        assert failed == [1, 1, 1] and server.stats.errors == 3  # counted, the socket lives on
        c.settimeout(0.3)
        with pytest.raises(TimeoutError):
            c.recvfrom(100)
    finally:
        server.close()
        c.close()


@given(ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), port=st.integers(0, 65535),
       mapped=st.booleans())  # fmt: skip
def test_the_registrars_source_reader_agrees_with_from_sockaddr(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, mapped: bool
) -> None:
    """The STUN socket builds its sources from the packed IPv4 address (server._source): the
    same Endpoint as Endpoint.from_sockaddr, for IPv4, IPv6 and IPv4-mapped sources as
    sockaddr_tuple writes them."""
    if mapped and ip.version == 4:
        raw = _sockaddr6(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed), port)
    elif ip.version == 4:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + ip.packed + bytes(8)
    else:
        raw = _sockaddr6(ip, port)
    addr = sockaddr_tuple(raw)
    assert addr is not None
    assert _source(addr) == Endpoint.from_sockaddr(addr)
    assert _source(addr).ip == (ip if ip.version == 4 else (ip.ipv4_mapped or ip))


def _sockaddr6(ip: ipaddress.IPv6Address, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + ip.packed
            + bytes(4))  # fmt: skip
