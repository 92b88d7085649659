"""Shared keys wrapped for the registrar's database (wgmesh.proto.keywrap)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wgmesh.proto.keywrap import WRAPPED_LEN, KeyWrap

keys = st.binary(min_size=32, max_size=32)


@given(private=keys, peer=keys, shared=keys)
def test_a_wrapped_key_unwraps_under_the_same_private_key_only(
    private: bytes, peer: bytes, shared: bytes
) -> None:
    wrap = KeyWrap(private)
    wrapped = wrap.wrap(peer, shared)
    assert len(wrapped) == WRAPPED_LEN and shared not in wrapped
    assert wrap.unwrap(peer, wrapped) == shared
    assert KeyWrap(bytes(b ^ 1 for b in private)).unwrap(peer, wrapped) is None
    assert wrap.unwrap(bytes(b ^ 0x80 for b in peer), wrapped) is None  # another peer's row


@given(private=keys, peer=keys, shared=keys, at=st.integers(0, WRAPPED_LEN - 1),
       bit=st.integers(0, 7))  # fmt: skip
def test_a_damaged_wrapped_key_is_refused(
    private: bytes, peer: bytes, shared: bytes, at: int, bit: int
) -> None:
    wrap = KeyWrap(private)
    damaged = bytearray(wrap.wrap(peer, shared))
    damaged[at] ^= 1 << bit
    assert wrap.unwrap(peer, bytes(damaged)) is None


@given(private=keys, peer=st.binary(max_size=64), blob=st.none() | st.binary(max_size=80))
def test_anything_read_from_the_database_unwraps_to_none_or_a_key(
    private: bytes, peer: bytes, blob: bytes | None
) -> None:
    out = KeyWrap(private).unwrap(peer, blob)
    assert out is None or len(out) == 32
