"""The plain Binding fast path (stun.PlainBindingResponder, Registry.answer_plain_binding, and
answer_in_place for batched sockets): byte for byte the general path's answer, and None (0, the
buffer untouched) for anything the general path must judge."""

from __future__ import annotations

import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.registry import Admission, Registry, RegistryConfig

NOW = 1_800_000_000.0
PORT = 3478
SOFTWARE = "wgmesh/0.1.0"


def make_registry(software: str = SOFTWARE) -> Registry:
    zone = Zone(ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h.mesh.test."))
    return Registry(
        RegistryConfig(software=software),
        sealed.Sealer(bytes(PrivateKey.generate())),
        Admission(open=True),
        zone,
        os.urandom,
        PORT,
    )


REGISTRY = make_registry()
"""Shared by the property tests (only its counters change)."""


def request(tid: bytes, fingerprint: bool = False) -> bytes:
    return stun.encode(stun.StunMessage(stun.BINDING_REQUEST, tid), fingerprint=fingerprint)


def slow(registry: Registry, data: bytes, host: str, port: int) -> list[tuple[bytes, Endpoint]]:
    return registry.receive(data, Endpoint.from_sockaddr((host, port)), PORT, NOW)


def in_place(
    r: stun.PlainBindingResponder, data: bytes, host: str, port: int, at: int = 7
) -> bytes | None:
    """answer_in_place on a copy of ``data`` at offset ``at`` of a buffer with room for the
    answer: the answer's bytes, or None (after checking the buffer is untouched)."""
    junk = bytes(range(256)) * 4
    buf = bytearray(junk[:at] + data + junk[: r.answer_size + 3])
    before = bytes(buf)
    address = int.from_bytes(ipaddress.IPv4Address(host).packed, "big")
    n = r.answer_in_place(memoryview(buf), at, len(data), port, address)
    if not n:
        assert bytes(buf) == before
        return None
    assert n == r.answer_size
    assert buf[:at] == before[:at] and buf[at + n :] == before[at + n :]  # nothing else written
    return bytes(buf[at : at + n])


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(0, 65535)
tids = st.binary(min_size=12, max_size=12)
near_requests = st.one_of(
    st.binary(max_size=40),
    st.tuples(tids, st.booleans(), st.integers(0, 27), st.integers(0, 255)).map(
        lambda t: bytearray_set(request(t[0], t[1]), t[2], t[3])
    ),
)
"""Junk, and plain requests with one byte changed (either path must judge them alike)."""
software = st.text(max_size=127).filter(lambda t: len(t.encode()) <= stun.MAX_TEXT)


@settings(max_examples=500, deadline=None)
@given(tids, ipv4, ports, st.booleans(), software)
def test_fast_answer_is_the_general_answer_byte_for_byte(
    tid: bytes, host: str, port: int, fingerprint: bool, text: str
) -> None:
    data = request(tid, fingerprint)
    responder = stun.PlainBindingResponder(text)
    expected = stun.binding_success(stun.decode(data), Endpoint.of(host, port), software=text)
    assert responder.answer(data, host, port) == expected
    assert responder.answer(data, host, port) == expected  # again, from the source table
    assert in_place(responder, data, host, port) == expected  # the batched sockets' path
    assert in_place(responder, data, host, port, at=0) == expected


@settings(max_examples=1000, deadline=None)
@given(near_requests, ipv4, ports)
def test_the_in_place_path_answers_exactly_what_the_string_path_answers(
    data: bytes, host: str, port: int
) -> None:
    r = stun.PlainBindingResponder()
    assert in_place(r, data, host, port) == r.answer(data, host, port)


def test_the_registry_counts_in_place_answers_as_its_own() -> None:
    reg = make_registry()
    assert reg.plain_binding.answer_size == len(
        reg.answer_plain_binding(request(bytes(12)), "192.0.2.1", 1) or b""
    )
    reg.count_plain_bindings(5)
    assert reg.counters["datagrams"] == reg.counters["binding"] == 6


@settings(max_examples=300, deadline=None)
@given(tids, ipv4, ports, st.booleans())
def test_registry_fast_path_matches_receive_and_counts_alike(
    tid: bytes, host: str, port: int, fingerprint: bool
) -> None:
    data = request(tid, fingerprint)
    before = dict(REGISTRY.counters)
    [(expected, dest)] = slow(REGISTRY, data, host, port)
    assert dest == Endpoint.of(host, port)
    middle = dict(REGISTRY.counters)
    assert REGISTRY.answer_plain_binding(data, host, port) == expected
    after = REGISTRY.counters
    for name in ("datagrams", "binding"):
        assert after[name] - middle[name] == middle[name] - before[name] == 1


def test_answer_decodes_to_the_source() -> None:
    tid = os.urandom(12)
    answer = stun.PlainBindingResponder().answer(request(tid), "203.0.113.9", 51820)
    assert answer is not None
    msg = stun.decode(answer)
    assert msg.msg_type == stun.BINDING_SUCCESS and msg.transaction_id == tid
    xma = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert xma is not None
    assert stun.unpack_xor_address(xma, tid) == Endpoint.parse("203.0.113.9:51820")
    assert msg.get(stun.ATTR_SOFTWARE) == stun.SOFTWARE.encode()


def with_fingerprint_flipped(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def test_everything_but_a_plain_request_takes_the_general_path() -> None:
    tid = bytes(range(12))
    r = stun.PlainBindingResponder()
    plain, fp = request(tid), request(tid, fingerprint=True)
    others = [
        stun.encode(stun.StunMessage(stun.BINDING_REQUEST, tid, ((stun.ATTR_SOFTWARE, b"x"),))),
        stun.encode(
            stun.StunMessage(stun.BINDING_REQUEST, tid, ((stun.ATTR_SOFTWARE, b"x"),)),
            fingerprint=False,
        ),
        stun.encode(stun.StunMessage(stun.BINDING_INDICATION, tid), fingerprint=False),
        stun.encode(stun.StunMessage(stun.BINDING_SUCCESS, tid), fingerprint=False),
        with_fingerprint_flipped(fp),  # bad FINGERPRINT: the general path calls it malformed
        plain[:4] + b"\x00" * 4 + plain[8:],  # RFC 3489: no magic cookie
        plain + b"\x00" * 4,  # length field says 0, datagram says 24
        plain[:19],
        fp[:20] + b"\x80\x29\x00\x04" + fp[24:],  # one 4-byte attribute, not FINGERPRINT
        b"",
    ]
    for data in others:
        assert r.answer(data, "192.0.2.1", 1000) is None, data.hex()
    # IPv6 sources (IPv4-mapped included: the general path normalises them) and junk hosts
    for host in ("2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0", "192.0.2.256", "name"):
        assert r.answer(plain, host, 1000) is None, host
    assert r.answer(plain, "192.0.2.1", 1000) is not None


def test_general_path_still_answers_what_the_fast_path_leaves() -> None:
    reg = make_registry()
    tid = os.urandom(12)
    with_software = stun.encode(
        stun.StunMessage(stun.BINDING_REQUEST, tid, ((stun.ATTR_SOFTWARE, b"client"),))
    )
    assert reg.answer_plain_binding(with_software, "192.0.2.1", 1000) is None
    assert reg.answer_plain_binding(request(tid), "2001:db8::1", 1000) is None
    assert reg.counters["datagrams"] == reg.counters["binding"] == 0  # nothing counted twice
    [(answer, _)] = slow(reg, with_software, "192.0.2.1", 1000)
    assert stun.decode(answer).msg_type == stun.BINDING_SUCCESS
    [(answer, dest)] = slow(reg, request(tid), "2001:db8::1", 1000)
    assert dest == Endpoint.parse("[2001:db8::1]:1000")
    assert reg.counters["binding"] == 2


@settings(max_examples=1000, deadline=None)
@given(near_requests, ipv4, ports)
def test_fast_path_answers_only_what_the_general_path_answers_alike(
    data: bytes, host: str, port: int
) -> None:
    fast = REGISTRY.answer_plain_binding(data, host, port)
    if fast is not None:
        assert slow(REGISTRY, data, host, port) == [(fast, Endpoint.of(host, port))]


def bytearray_set(data: bytes, index: int, value: int) -> bytes:
    """``data`` with one byte replaced (when it exists)."""
    if index >= len(data):
        return data
    return data[:index] + bytes([value]) + data[index + 1 :]


def test_source_table_is_capped() -> None:
    r = stun.PlainBindingResponder(max_sources=3)
    tid = os.urandom(12)
    for i in range(10):
        host = f"192.0.2.{i}"
        expected = stun.binding_success(
            stun.decode(request(tid)), Endpoint.of(host, 7), software=stun.SOFTWARE
        )
        assert r.answer(request(tid), host, 7) == expected
        assert in_place(r, request(tid), host, 7) == expected
        assert len(r._sources) <= 3
