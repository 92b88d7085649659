"""STUN codec: RFC 5769 test vectors byte for byte, exact errors, and fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh import __version__
from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint

COOKIE = bytes.fromhex("2112a442")
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# RFC 5769 section 2.1: sample request (PRIORITY, ICE-CONTROLLED, USERNAME padded with spaces,
# MESSAGE-INTEGRITY kept as opaque attributes).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
# section 2.2: sample IPv4 response (SOFTWARE padded with a space)
RFC5769_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
# section 2.3: sample IPv6 response
RFC5769_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
# section 2.4: request with long-term credentials, no FINGERPRINT, zero padding (USERNAME as
# corrected by the erratum: U+30DE is e3 83 9e)
RFC5769_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
VECTORS = [RFC5769_REQUEST, RFC5769_V4, RFC5769_V6, RFC5769_LONG_TERM]


def normalised(vector: bytes) -> bytes:
    """The vector as we would send it: zero padding, FINGERPRINT recomputed independently."""
    out = bytearray(vector)
    pos = 20
    while pos < len(out):
        attr_type, attr_len = struct.unpack_from("!HH", out, pos)
        end = pos + 4 + attr_len
        out[end : end + (-attr_len % 4)] = bytes(-attr_len % 4)
        pos = end + (-attr_len % 4)
        if attr_type == stun.ATTR_FINGERPRINT:
            crc = zlib.crc32(bytes(out[:-8])) ^ 0x5354554E
            out[-4:] = crc.to_bytes(4, "big")
    return bytes(out)


# -- the RFC 5769 vectors -----------------------------------------------------------------------


def test_rfc5769_sample_request() -> None:
    msg = stun.decode(RFC5769_REQUEST)
    assert msg == stun.StunMessage(
        stun.BINDING_REQUEST,
        TID,
        (
            (stun.ATTR_SOFTWARE, b"STUN test client"),
            (0x0024, bytes.fromhex("6e0001ff")),
            (0x8029, bytes.fromhex("932ff9b151263b36")),
            (0x0006, b"evtj:h6vY"),
            (0x0008, bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")),
        ),
    )
    # PRIORITY, USERNAME, MESSAGE-INTEGRITY are comprehension-required and unknown to us
    assert stun.unknown_required(msg) == (0x0024, 0x0006, 0x0008)
    assert stun.unpack_software(msg.get(stun.ATTR_SOFTWARE) or b"") == "STUN test client"


@pytest.mark.parametrize(
    ("data", "mapped"),
    [
        (RFC5769_V4, "192.0.2.1:32853"),
        (RFC5769_V6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
    ],
)
def test_rfc5769_responses(data: bytes, mapped: str) -> None:
    msg = stun.decode(data)
    assert msg.msg_type == stun.BINDING_SUCCESS and msg.transaction_id == TID
    assert [t for t, _ in msg.attributes] == [0x8022, 0x0020, 0x0008]
    assert msg.get(stun.ATTR_SOFTWARE) == b"test vector"
    xma = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert xma is not None
    assert stun.unpack_xor_address(xma, TID) == Endpoint.parse(mapped)
    assert stun.pack_xor_address(Endpoint.parse(mapped), TID) == xma
    assert stun.unknown_required(msg) == (0x0008,)


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc5769_round_trip_is_byte_exact(vector: bytes) -> None:
    msg = stun.decode(vector)
    has_fingerprint = vector[-8:-4] == bytes.fromhex("80280004")
    out = stun.encode(msg, fingerprint=has_fingerprint)
    assert out == normalised(vector)
    assert stun.decode(out) == msg


def test_rfc5769_long_term_request_is_exact_as_is() -> None:
    # zero padding and no FINGERPRINT: nothing to normalise
    msg = stun.decode(RFC5769_LONG_TERM)
    username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9".encode()
    assert msg.get(0x0006) == username
    assert msg.get(0x0014) == b"example.org"
    assert stun.encode(msg, fingerprint=False) == RFC5769_LONG_TERM
    # the opaque MESSAGE-INTEGRITY still checks out over our re-encoding (this also checks
    # the vector as typed here: it has no FINGERPRINT)
    key = hashlib.md5(username + b":example.org:TheMatrIX").digest()
    mac = hmac.new(key, stun.encode(msg, fingerprint=False)[:-24], hashlib.sha1).digest()
    assert hmac.compare_digest(mac, msg.get(0x0008) or b"")


def test_rfc5769_request_integrity_survives_decoding() -> None:
    msg = stun.decode(RFC5769_REQUEST)
    upto_mi = RFC5769_REQUEST[:-32]  # the vector's own space padding, length without FINGERPRINT
    signed = upto_mi[:2] + (len(upto_mi) - 20 + 24).to_bytes(2, "big") + upto_mi[4:]
    mac = hmac.new(b"VOkJxbRl1RmTxUk/WvJxBt", signed, hashlib.sha1).digest()
    assert hmac.compare_digest(mac, msg.get(0x0008) or b"")


# -- what we send ------------------------------------------------------------------------------


def test_binding_success_bytes() -> None:
    req = stun.StunMessage(stun.BINDING_REQUEST, TID)
    out = stun.binding_success(req, Endpoint.parse("192.0.2.1:32853"))
    software = f"wgmesh/{__version__}".encode()
    pad = bytes(-len(software) % 4)
    body = (
        bytes.fromhex("002000080001a147e112a643")
        + struct.pack("!HH", 0x8022, len(software)) + software + pad
    )  # fmt: skip
    head = struct.pack("!HH", 0x0101, len(body) + 8) + COOKIE + TID
    crc = zlib.crc32(head + body) ^ 0x5354554E
    assert out == head + body + bytes.fromhex("80280004") + crc.to_bytes(4, "big")
    assert software == stun.SOFTWARE.encode()


def test_binding_success_extra_attributes_and_ipv6() -> None:
    req = stun.StunMessage(stun.BINDING_REQUEST, b"\x01" * 12)
    ep = Endpoint.parse("[2001:db8::7]:40000")
    extra = ((stun.ATTR_WG_SEALED, b"\xaa" * 41),)
    resp = stun.decode(stun.binding_success(req, ep, extra, software="x"))
    assert resp.transaction_id == req.transaction_id and resp.msg_type == stun.BINDING_SUCCESS
    assert [t for t, _ in resp.attributes] == [0x0020, 0xC0A2, 0x8022]
    xma = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert xma is not None and stun.unpack_xor_address(xma, resp.transaction_id) == ep
    assert resp.get(stun.ATTR_SOFTWARE) == b"x"


def test_mapped_address_and_error_code() -> None:
    ep = Endpoint.parse("198.51.100.7:40000")
    assert stun.pack_address(ep) == bytes.fromhex("00019c40c6336407")
    assert stun.unpack_address(stun.pack_address(ep)) == ep
    mapped = ipaddress.IPv6Address("::ffff:192.0.2.1").packed  # comes back as IPv4
    assert stun.unpack_address(b"\x00\x02\x00\x01" + mapped) == Endpoint.parse("192.0.2.1:1")
    value = stun.pack_error(420, "Unknown Attribute")
    assert value == b"\x00\x00\x04\x14Unknown Attribute"
    assert stun.unpack_error(value) == (420, "Unknown Attribute")


def test_attribute_table() -> None:
    assert stun.attribute_name(stun.ATTR_XOR_MAPPED_ADDRESS) == "XOR-MAPPED-ADDRESS"
    assert stun.attribute_name(stun.ATTR_WG_SEALED) == "WG-SEALED"
    assert stun.attribute_name(0x0008) == "0x0008"
    key = bytes(range(32))
    codec = stun.CODECS[stun.ATTR_WG_PUBLIC_KEY]
    assert codec.unpack(codec.pack(key)) == key


def test_is_stun_sniff() -> None:
    assert all(stun.is_stun(v) for v in VECTORS)
    for wg_type in (1, 2, 3, 4):  # WireGuard initiation, response, cookie, data
        assert not stun.is_stun(bytes([wg_type, 0, 0, 0]) + bytes(144))
    assert not stun.is_stun(b"\x00\x01\x00\x00" + bytes(16))  # RFC 3489: no cookie
    assert not stun.is_stun(RFC5769_V4[:19])


def test_classic_rfc3489_request_gets_mapped_address() -> None:
    req = b"\x00\x01\x00\x00" + bytes(range(16))
    out = stun.classic_binding_success(req, Endpoint.parse("192.0.2.9:1234"))
    assert out == bytes.fromhex("0101000c") + bytes(range(16)) + bytes.fromhex(
        "00010008000104d2c0000209"
    )
    assert stun.classic_binding_success(req, Endpoint.parse("[2001:db8::1]:1")) is None
    assert stun.classic_binding_success(b"\x01\x01" + req[2:], Endpoint.parse("1.2.3.4:5")) is None
    assert stun.classic_binding_success(req[:-1], Endpoint.parse("1.2.3.4:5")) is None


# -- exact errors ------------------------------------------------------------------------------


def header(length: int, msg_type: int = 1) -> bytes:
    return struct.pack("!HH", msg_type, length) + COOKIE + TID


def attrs(*pairs: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in pairs)


def message(*pairs: tuple[int, bytes]) -> bytes:
    body = attrs(*pairs)
    return header(len(body)) + body


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00" * 19, "STUN message too short"),
        (header(1264) + bytes(1264), "STUN message too large"),
        (b"\xc0\x01\x00\x00" + COOKIE + TID, "not STUN: first two bits are not zero"),
        (b"\x00\x01\x00\x00" + bytes(16), "not STUN: bad magic cookie"),
        (header(2) + b"\x00\x00", "STUN length not a multiple of 4"),
        (header(4), "STUN length mismatch"),
        (header(0) + bytes(4), "STUN length mismatch"),
        (header(4) + bytes.fromhex("00200010"), "truncated STUN attribute"),
        (message(*[(0x8000, b"")] * 33), "too many STUN attributes"),
        (message((0x8028, b"\x00" * 4), (0x8022, b"x")), "FINGERPRINT not last"),
        (message((0x8028, b"\x00" * 8)), "bad FINGERPRINT length"),
        (RFC5769_V4[:-1] + bytes([RFC5769_V4[-1] ^ 1]), "bad FINGERPRINT"),
        (RFC5769_V4[:24] + b"\x00" + RFC5769_V4[25:], "bad FINGERPRINT"),
    ],
)
def test_exact_decode_errors(data: bytes, error: str) -> None:
    with pytest.raises(DecodeError) as exc:
        stun.decode(data)
    assert str(exc.value) == error


def test_attribute_count_limit_counts_fingerprint() -> None:
    ok = stun.StunMessage(1, TID, ((0x8000, b""),) * 31)
    assert stun.decode(stun.encode(ok)) == ok
    assert stun.decode(message(*[(0x8000, b"")] * 32)).attributes == ((0x8000, b""),) * 32
    with pytest.raises(LocalProtocolError):
        stun.encode(stun.StunMessage(1, TID, ((0x8000, b""),) * 32))


def test_largest_message_decodes() -> None:
    msg = stun.StunMessage(1, TID, ((0x8000, bytes(1280 - 20 - 4 - 8)),))
    data = stun.encode(msg)
    assert len(data) == stun.MAX_DATAGRAM and stun.decode(data) == msg


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: stun.unpack_address(b"\x00\x01\x00"), "address attribute too short"),
        (lambda: stun.unpack_address(b"\x00\x03\x00\x01" + bytes(4)), "bad address family"),
        (lambda: stun.unpack_address(b"\x00\x01\x00\x01" + bytes(16)), "bad address length"),
        (lambda: stun.unpack_address(b"\x00\x02\x00\x01" + bytes(4)), "bad address length"),
        (lambda: stun.unpack_xor_address(bytes(24), TID), "bad address length"),
        (lambda: stun.unpack_error(b"\x00\x00\x04"), "ERROR-CODE too short"),
        (lambda: stun.unpack_error(b"\x00\x00\x07\x00"), "bad ERROR-CODE"),
        (lambda: stun.unpack_error(b"\x00\x00\x04\x64"), "bad ERROR-CODE"),
        (lambda: stun.unpack_error(b"\x00\x00\x04\x00\xff"), "ERROR-CODE reason is not UTF-8"),
        (lambda: stun.unpack_software(b"\xc3"), "SOFTWARE is not UTF-8"),
        (lambda: stun.unpack_software(b"x" * 764), "SOFTWARE too long"),
        (lambda: stun.unpack_public_key(bytes(31)), "bad WG-PUBLIC-KEY length"),
        (lambda: stun.unpack_sealed(bytes(39)), "bad WG-SEALED length"),
        (lambda: stun.unpack_sealed(bytes(601)), "bad WG-SEALED length"),
    ],
)
def test_exact_attribute_errors(call: object, error: str) -> None:
    assert callable(call)
    with pytest.raises(DecodeError) as exc:
        call()
    assert str(exc.value) == error


@pytest.mark.parametrize(
    "msg",
    [
        stun.StunMessage(1, bytes(11)),
        stun.StunMessage(0x4001, TID),
        stun.StunMessage(1, TID, ((stun.ATTR_FINGERPRINT, bytes(4)),)),
        stun.StunMessage(1, TID, ((0x8000, bytes(0x10000)),)),
        stun.StunMessage(1, TID, ((0x8000, bytes(1250)),)),
    ],
)
def test_encode_refuses_what_decode_would(msg: stun.StunMessage) -> None:
    with pytest.raises(LocalProtocolError):
        stun.encode(msg)


def test_pack_limits() -> None:
    with pytest.raises(LocalProtocolError):
        stun.pack_error(700, "x")
    with pytest.raises(LocalProtocolError):
        stun.pack_software("x" * 128)
    with pytest.raises(LocalProtocolError):
        stun.pack_public_key(bytes(33))
    with pytest.raises(LocalProtocolError):
        stun.pack_sealed(bytes(601))
    with pytest.raises(LocalProtocolError):
        stun.pack_xor_address(Endpoint.parse("1.2.3.4:5"), bytes(16))


# -- properties --------------------------------------------------------------------------------

endpoints = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(
        lambda ip: ip.ipv4_mapped is None
    ),
).flatmap(lambda ip: st.builds(Endpoint, st.just(ip), st.integers(0, 65535)))
attributes = st.lists(
    st.tuples(
        st.integers(0, 0xFFFF).filter(lambda t: t != stun.ATTR_FINGERPRINT),
        st.binary(max_size=40),
    ),
    max_size=20,
)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 0x3FFF), st.binary(min_size=12, max_size=12), attributes, st.booleans())
def test_encode_decode_round_trip(
    msg_type: int, tid: bytes, attrs_: list[tuple[int, bytes]], fp: bool
) -> None:
    msg = stun.StunMessage(msg_type, tid, tuple(attrs_))
    data = stun.encode(msg, fingerprint=fp)
    assert stun.is_stun(data) and stun.decode(data) == msg
    assert stun.encode(stun.decode(data), fingerprint=fp) == data


@settings(max_examples=500, deadline=None)
@given(endpoints, st.binary(min_size=12, max_size=12))
def test_xor_address_round_trip(ep: Endpoint, tid: bytes) -> None:
    value = stun.pack_xor_address(ep, tid)
    assert len(value) == (8 if ep.ip.version == 4 else 20)
    assert stun.unpack_xor_address(value, tid) == ep
    assert stun.unpack_address(stun.pack_address(ep)) == ep


def decode_everything(data: bytes) -> None:
    """decode() and every typed unpacker: only DecodeError may come out."""
    try:
        msg = stun.decode(data)
        stun.unknown_required(msg)
        for attr_type, value in msg.attributes:
            codec = stun.CODECS.get(attr_type)
            if attr_type == stun.ATTR_XOR_MAPPED_ADDRESS:
                stun.unpack_xor_address(value, msg.transaction_id)
            elif codec is not None:
                codec.unpack(value)
    except DecodeError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=1400))
def test_random_bytes_only_decode_error(data: bytes) -> None:
    decode_everything(data)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 0xFFFF), st.binary(max_size=300).map(lambda b: b + bytes(-len(b) % 4)))
def test_random_bodies_behind_a_good_header_only_decode_error(msg_type: int, body: bytes) -> None:
    decode_everything(struct.pack("!HH", msg_type, len(body)) + COOKIE + TID + body)


edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate"]),
        st.integers(0, 2000),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(base: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(base)
    for op, pos, val in steps:
        pos %= max(1, len(data))
        if op == "flip" and data:
            data[pos] ^= 1 << (val % 8)
        elif op == "insert":
            data.insert(pos, val)
        elif op == "delete" and data:
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


OURS = stun.binding_success(
    stun.StunMessage(1, TID),
    Endpoint.parse("[2001:db8::1]:5"),
    ((stun.ATTR_WG_PUBLIC_KEY, bytes(32)), (stun.ATTR_WG_SEALED, bytes(100))),
)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([*VECTORS, OURS]), edits)
def test_mutated_messages_only_decode_error(base: bytes, steps: list[tuple[str, int, int]]) -> None:
    decode_everything(mutate(base, steps))


def value_bits(data: bytes) -> list[int]:
    """Bit positions of the transaction id and every attribute value (not the TLV headers: a
    flipped length can swallow the FINGERPRINT, a flipped type can rename it)."""
    bits = list(range(8 * 8, 20 * 8))
    pos = 20
    while pos < len(data):
        attr_len = int.from_bytes(data[pos + 2 : pos + 4], "big")
        bits += range((pos + 4) * 8, (pos + 4 + attr_len) * 8)
        pos += 4 + attr_len + (-attr_len % 4)
    return bits


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([RFC5769_REQUEST, RFC5769_V4, RFC5769_V6, OURS]), st.integers(0, 10**6))
def test_fingerprint_catches_single_bit_flips(base: bytes, n: int) -> None:
    bits = value_bits(base)
    bit = bits[n % len(bits)]
    data = bytearray(base)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecodeError, match="bad FINGERPRINT"):
        stun.decode(bytes(data))


def test_decode_takes_any_buffer_and_returns_bytes() -> None:
    for buf in (bytearray(RFC5769_V4), memoryview(RFC5769_V4)):
        msg = stun.decode(buf)  # type: ignore[arg-type]
        assert msg == stun.decode(RFC5769_V4)
        assert all(type(v) is bytes for _, v in msg.attributes)
        assert type(msg.transaction_id) is bytes
