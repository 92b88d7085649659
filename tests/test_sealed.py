"""Sealed payloads: round trips, exact errors, box opening, fuzzing."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.errors import DecodeError
from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.sealed import NatKind

TID = b"\x42" * 12
EP4 = Endpoint.parse("10.1.0.5:51820")
EP6 = Endpoint.parse("[2001:db8::5]:51820")

PAYLOADS: list[sealed.Payload] = [
    sealed.Register(1_800_000_000_000, 7, "alice", (EP4, EP6), "wgmesh/0.1.0", False),
    sealed.Register(1, 2**64 - 1, "", (), "", True),
    sealed.Watch(5, 6, 7),
    sealed.Status(5, 6, 7, 8, EP4, NatKind.SYMMETRIC, 2**32 - 1),
    sealed.Status(5, 6, 7, 0, None, NatKind.UNKNOWN, 1),
    sealed.Push(5, 6, 9, (b"\x01" * 32, b"\x02" * 32)),
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_round_trip(payload: sealed.Payload) -> None:
    assert sealed.decode_payload(sealed.encode_payload(payload, TID), TID) == payload


def test_register_layout_is_byte_exact() -> None:
    p = sealed.Register(1, 2, "a", (EP4,), "s", True)
    assert sealed.encode_payload(p, TID) == (
        b"\x01\x01" + TID + (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
        + b"\x01" + b"\x01a" + b"\x01s" + b"\x01"
        + b"\x04" + bytes([10, 1, 0, 5]) + (51820).to_bytes(2, "big")
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x01" + TID, "sealed payload truncated"),
        (b"\x02\x02" + TID + bytes(16) + bytes(8), "unknown sealed payload version 2"),
        (b"\x01\x09" + TID + bytes(16), "unknown sealed payload kind 9"),
        (
            b"\x01\x02" + b"\x00" * 12 + bytes(16) + bytes(8),
            "sealed payload bound to another transaction",
        ),
        (b"\x01\x02" + TID + bytes(16) + bytes(9), "trailing bytes after sealed payload"),
        (b"\x01\x01" + TID + bytes(16) + b"\x00\x02\xff\xfe\x00\x00", "name is not UTF-8"),
        (b"\x01\x01" + TID + bytes(16) + b"\x00\x01\x07\x00\x00", "name has control characters"),
        (b"\x01\x01" + TID + bytes(16) + b"\x00\x00\x00\x09", "more than 8 addresses"),
    ],
)
def test_exact_payload_errors(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as exc:
        sealed.decode_payload(data, TID)
    assert str(exc.value) == message


def test_box_opens_only_for_the_right_pair() -> None:
    alice, registrar, mallory = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    s_alice = sealed.Sealer(bytes(alice))
    s_reg = sealed.Sealer(bytes(registrar))
    box = s_alice.seal(bytes(registrar.public_key), b"hello", os.urandom(24))
    assert s_reg.open(bytes(alice.public_key), box) == b"hello"
    with pytest.raises(DecodeError, match="sealed box does not open"):
        s_reg.open(bytes(mallory.public_key), box)
    with pytest.raises(DecodeError, match="sealed box does not open"):
        s_reg.open(bytes(alice.public_key), box[:-1] + bytes([box[-1] ^ 1]))


def test_sealer_cache_is_capped() -> None:
    s = sealed.Sealer(bytes(PrivateKey.generate()), cache_size=4)
    for _ in range(10):
        s.seal(bytes(PrivateKey.generate().public_key), b"x", os.urandom(24))
    assert len(s._boxes) == 4


def test_full_message_round_trip() -> None:
    alice, registrar = PrivateKey.generate(), PrivateKey.generate()
    s_alice, s_reg = sealed.Sealer(bytes(alice)), sealed.Sealer(bytes(registrar))
    data = sealed.build_sealed_request(
        s_alice, s_alice.public_key, s_reg.public_key, PAYLOADS[0], TID, os.urandom(24)
    )
    sender, payload = sealed.open_sealed(s_reg, stun.decode(data), None)
    assert sender == s_alice.public_key and payload == PAYLOADS[0]


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_random_payload_bytes_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        sealed.decode_payload(data, TID)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PAYLOADS), st.integers(0, 400), st.integers(1, 255), st.integers(0, 80))
def test_mutated_payloads_only_decode_error(
    p: sealed.Payload, pos: int, xor: int, cut: int
) -> None:
    data = bytearray(sealed.encode_payload(p, TID))
    data[pos % len(data)] ^= xor
    for candidate in (bytes(data), bytes(data[: max(0, len(data) - cut)])):
        with contextlib.suppress(DecodeError):
            sealed.decode_payload(candidate, TID)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700), st.binary(min_size=32, max_size=32))
def test_random_boxes_never_open(box: bytes, key: bytes) -> None:
    s = sealed.Sealer(bytes(PrivateKey.generate()))
    with pytest.raises(DecodeError):
        s.open(key, box)
