"""Sealed payloads: byte layouts, round trips, exact errors, the box, whole messages, fuzzing."""

from __future__ import annotations

import ipaddress
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.errors import DecodeError, LocalProtocolError
from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.sealed import Push, Register, Status, Watch

TID = b"\x42" * 12
EP4 = Endpoint.parse("10.1.0.5:51820")
EP6 = Endpoint.parse("[2001:db8::5]:51820")
U64 = 2**64 - 1
MAPPED = Endpoint(ipaddress.IPv6Address("::ffff:10.1.0.6"), 51820)
KEYS = tuple(bytes([i]) * 32 for i in range(sealed.MAX_CHANGED))

PAYLOADS: list[sealed.Payload] = [
    Register(1_800_000_000_000, 7, "alice", (EP4, EP6), "wgmesh/0.1.0", False),
    Register(1, U64, "", (), "", True),
    Register(0, 0, "\u00e9" * 31 + "x", (EP6,) * 8, "s" * 32, False),  # 63-byte name
    Watch(5, 6, 7),
    Watch(U64, U64, U64),
    Status(5, 6, 7, 8, (EP4,), NatKind.SYMMETRIC, 2**32 - 1),
    Status(5, 6, 7, 0, (), NatKind.UNKNOWN, 1),
    Status(5, 6, 7, 8, (EP6,), NatKind.CONE, 0),
    Status(5, 6, 7, 8, (EP4, EP6), NatKind.NONE, 3),
    Push(5, 6, 9, (b"\x01" * 32, b"\x02" * 32)),
    Push(5, 6, 9, ()),
    Push(5, 6, 9, KEYS),
]


def head(kind: int, ts: int = 1, counter: int = 2) -> bytes:
    return bytes((1, kind)) + TID + struct.pack("!QQ", ts, counter)


# -- layout and round trips --------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_round_trip(payload: sealed.Payload) -> None:
    data = sealed.encode_payload(payload, TID)
    assert len(data) <= sealed.MAX_PAYLOAD
    assert sealed.decode_payload(data, TID) == payload


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (
            Register(1, 2, "a", (EP4, EP6), "s", True),
            b"\x01" + b"\x01a" + b"\x01s" + b"\x02"
            + b"\x04" + bytes([10, 1, 0, 5]) + struct.pack("!H", 51820)
            + b"\x06" + EP6.ip.packed + struct.pack("!H", 51820),
        ),
        (Watch(1, 2, 3), struct.pack("!Q", 3) + bytes(16)),
        (Watch(1, 2, 3, b"\x5a" * 16), struct.pack("!Q", 3) + b"\x5a" * 16),
        (Watch(1, 2, 3, interest=()), struct.pack("!Q", 3) + bytes(16) + b"\x00"),
        (
            Watch(1, 2, 3, interest=(b"A" * 8, b"B" * 8)),
            struct.pack("!Q", 3) + bytes(16) + b"\x02" + b"A" * 8 + b"B" * 8,
        ),
        (  # 0 or 1 mapping: the bytes of the has_observed flag of before, then flags and cookie
            Status(1, 2, 3, 4, (EP4,), NatKind.CONE, 5),
            struct.pack("!QQ", 3, 4) + b"\x01\x04" + bytes([10, 1, 0, 5])
            + struct.pack("!H", 51820) + b"\x02" + struct.pack("!I", 5) + b"\x00" + bytes(16),
        ),
        (
            Status(1, 2, 3, 4, (), NatKind.NONE, 5),
            struct.pack("!QQ", 3, 4) + b"\x00" + b"\x01" + struct.pack("!I", 5) + b"\x00"
            + bytes(16),
        ),
        (
            Status(1, 2, 3, 4, (), NatKind.NONE, 5, True, b"\xc3" * 16),
            struct.pack("!QQ", 3, 4) + b"\x00" + b"\x01" + struct.pack("!I", 5) + b"\x01"
            + b"\xc3" * 16,
        ),
        (
            Status(1, 2, 3, 4, (EP4, EP6), NatKind.CONE, 5),
            struct.pack("!QQ", 3, 4) + b"\x02"
            + b"\x04" + bytes([10, 1, 0, 5]) + struct.pack("!H", 51820)
            + b"\x06" + EP6.ip.packed + struct.pack("!H", 51820)
            + b"\x02" + struct.pack("!I", 5) + b"\x00" + bytes(16),
        ),
        (Push(1, 2, 7, (b"\xab" * 32,)), struct.pack("!IB", 7, 1) + b"\xab" * 32),
    ],
)  # fmt: skip
def test_layout_is_byte_exact(payload: sealed.Payload, body: bytes) -> None:
    kind = {Register: 1, Watch: 2, Status: 3, Push: 4}[type(payload)]
    assert sealed.encode_payload(payload, TID) == head(kind) + body


def test_sizes() -> None:
    assert sealed.HEADER_LEN == 30
    biggest_register = Register(0, 0, "n" * 63, (EP6,) * 8, "s" * 32, True)
    assert len(sealed.encode_payload(biggest_register, TID)) == 30 + 1 + 64 + 33 + 1 + 8 * 19
    biggest_push = Push(0, 0, 0, KEYS)
    assert sealed.MAX_CHANGED == 14
    assert len(sealed.encode_payload(biggest_push, TID)) == 30 + 5 + 14 * 32 <= 512
    biggest_status = Status(0, 0, 0, 0, (EP4, EP6), NatKind.CONE, 0)
    assert len(sealed.encode_payload(biggest_status, TID)) == 30 + 16 + 1 + 7 + 19 + 1 + 4 + 17
    assert sealed.NONCE_LEN + 16 + sealed.MAX_PAYLOAD <= stun.MAX_SEALED


def test_ipv4_mapped_address_travels_as_ipv4() -> None:
    mapped = Endpoint(ipaddress.IPv6Address("::ffff:10.1.0.5"), 51820)
    data = sealed.encode_payload(Register(1, 2, "a", (mapped,), "s"), TID)
    assert sealed.decode_payload(data, TID) == Register(1, 2, "a", (EP4,), "s")


# -- exact errors ------------------------------------------------------------------------------

REG = head(1)
OBS4 = b"\x04" + bytes([10, 1, 0, 5]) + struct.pack("!H", 51820)
OBS6 = b"\x06" + EP6.ip.packed + struct.pack("!H", 51820)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x01\x01" + TID, "sealed payload truncated"),
        (REG, "sealed payload truncated"),
        (REG + b"\x00\x05abc", "sealed payload truncated"),
        (REG + b"\x00\x00\x00\x01\x04\x01\x02\x03\x04\x00", "sealed payload truncated"),
        (head(2) + bytes(7), "sealed payload truncated"),
        (head(4) + struct.pack("!IB", 1, 2) + bytes(63), "sealed payload truncated"),
        (head(2) + bytes(500), "sealed payload too large"),
        (b"\x02\x02" + TID + bytes(24), "unknown sealed payload version 2"),
        (b"\x01\x0c" + TID + bytes(16), "unknown sealed payload kind 12"),
        (head(11) + b"\x00", "a PathReport names 1 to 12 peers"),
        (head(11) + b"\x0d" + bytes(38 * 12), "a PathReport names 1 to 12 peers"),
        (head(11) + b"\x01" + bytes(32) + b"\x01\x00" + bytes(3), "sealed payload truncated"),
        (head(11) + b"\x01" + bytes(32) + b"\x00\x00" + bytes(4), "unknown path in a PathReport"),
        (head(11) + b"\x01" + bytes(32) + b"\x04\x00" + bytes(4), "unknown path in a PathReport"),
        (head(11) + b"\x01" + bytes(32) + b"\x01\x0a" + bytes(4), "unknown path reason"),
        (
            head(11) + b"\x01" + bytes(32) + b"\x01\x00" + bytes(5),
            "trailing bytes after sealed payload",
        ),
        (head(10) + b"\x00", "a Repunch names 1 to 14 keys"),
        (head(10) + b"\x0f" + bytes(32 * 15), "a Repunch names 1 to 14 keys"),
        (head(10) + b"\x02" + bytes(40), "sealed payload truncated"),
        (b"\x01\x00" + TID + bytes(16), "unknown sealed payload kind 0"),
        (b"\x01\x02" + bytes(12) + bytes(24), "sealed payload bound to another transaction"),
        (head(2) + bytes(25) + b"\x01", "a Watch's padding is not zeros"),
        (head(2) + bytes(24) + b"\xff\x00\x80", "a Watch's padding is not zeros"),
        (head(2) + bytes(24) + b"\xff", "an every-peer marker without padding"),
        (head(2) + bytes(24) + b"\xfe", "more than 57 key ids of interest"),
        (head(2) + bytes(24) + b"\x3a" + bytes(8 * 58), "sealed payload too large"),
        (head(2) + bytes(24) + b"\x3a" + bytes(8 * 40), "more than 57 key ids of interest"),
        (head(2) + bytes(24) + b"\x02" + bytes(9), "sealed payload truncated"),
        (head(2) + bytes(23), "sealed payload truncated"),
        (
            head(3) + bytes(16) + b"\x00\x00" + bytes(4) + b"\x02" + bytes(16),
            "unknown Status flags",
        ),
        (REG + b"\x00\x00\x00\x00\x00", "trailing bytes after sealed payload"),
        (REG + b"\x02\x00\x00\x00", "unknown Register flags"),
        (REG + b"\x00\x02\xff\xfe\x00\x00", "name is not UTF-8"),
        (REG + b"\x00\x01\x07\x00\x00", "name is not printable"),
        (REG + b"\x00\x40" + b"a" * 64 + b"\x00\x00", "name longer than 63 bytes"),
        (REG + b"\x00\x00\x02\xc3\xa9\x00", "software is not ASCII"),
        (REG + b"\x00\x00\x01\x0a\x00", "software is not printable"),
        (REG + b"\x00\x00\x21" + b"s" * 33 + b"\x00", "software longer than 32 bytes"),
        (REG + b"\x00\x00\x00\x09", "more than 8 addresses"),
        (REG + b"\x00\x00\x00\x01\x05" + bytes(6), "bad address family"),
        (
            REG + b"\x00\x00\x00\x01\x06" + bytes(10) + b"\xff\xff" + bytes(6),
            "IPv4-mapped address sent as IPv6",
        ),
        (head(3) + bytes(16) + b"\x03", "more than 2 observed mappings"),
        (head(3) + bytes(16) + b"\xff" + OBS4 * 2, "more than 2 observed mappings"),
        (head(3) + bytes(16) + b"\x02" + OBS4, "sealed payload truncated"),
        (
            head(3) + bytes(16) + b"\x02" + OBS4 + OBS4 + b"\x00" + bytes(4),
            "two observed mappings of one family",
        ),
        (
            head(3) + bytes(16) + b"\x02" + OBS6 + OBS6 + b"\x00" + bytes(4),
            "two observed mappings of one family",
        ),
        (
            head(3) + bytes(16) + b"\x02" + OBS6 + OBS4 + b"\x00" + bytes(4),
            "observed IPv6 mapping before IPv4",
        ),
        (head(3) + bytes(16) + b"\x01\x05" + bytes(6) + b"\x00" + bytes(4), "bad address family"),
        (head(3) + bytes(16) + b"\x00\x04" + bytes(4), "unknown NAT class"),
        (head(4) + struct.pack("!IB", 1, 15), "more than 14 changed keys"),
    ],
)
def test_exact_payload_errors(data: bytes, error: str) -> None:
    with pytest.raises(DecodeError) as exc:
        sealed.decode_payload(data, TID)
    assert str(exc.value) == error


@pytest.mark.parametrize(
    ("payload", "tid"),
    [
        (Watch(1, 2, 3), bytes(11)),
        (Watch(-1, 2, 3), TID),
        (Watch(1, 2**64, 3), TID),
        (Watch(1, 2, 3, interest=(b"x" * 7,)), TID),
        (Watch(1, 2, 3, interest=(b"x" * 8,) * 58), TID),
        (Status(1, 2, 3, 4, (), NatKind.NONE, 2**32), TID),
        (Status(1, 2, 3, 4, (EP4, EP4), NatKind.NONE, 1), TID),
        (Status(1, 2, 3, 4, (EP6, EP4), NatKind.NONE, 1), TID),
        (Status(1, 2, 3, 4, (EP4, EP6, EP4), NatKind.NONE, 1), TID),
        (Status(1, 2, 3, 4, (EP4, MAPPED), NatKind.NONE, 1), TID),  # travels as two IPv4
        (Register(1, 2, "n" * 64, (), "s"), TID),
        (Register(1, 2, "tab\there", (), "s"), TID),
        (Register(1, 2, "n", (), "caf\u00e9"), TID),
        (Register(1, 2, "n", (EP4,) * 9, "s"), TID),
        (Push(1, 2, 3, (*KEYS, b"\x00" * 32)), TID),
        (Push(1, 2, 3, (b"\x00" * 31,)), TID),
    ],
)
def test_encode_refuses_what_decode_would(payload: sealed.Payload, tid: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        sealed.encode_payload(payload, tid)


# -- the box -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {name: PrivateKey.generate() for name in ("alice", "registrar", "mallory")}


def pub(k: PrivateKey) -> bytes:
    return bytes(k.public_key)


def test_box_opens_only_for_the_right_pair(keys: dict[str, PrivateKey]) -> None:
    s_alice = sealed.Sealer(bytes(keys["alice"]))
    s_reg = sealed.Sealer(bytes(keys["registrar"]))
    box = s_alice.seal(pub(keys["registrar"]), b"hello", bytes(24))
    assert box[:24] == bytes(24) and len(box) == 24 + 16 + 5
    assert s_reg.open(pub(keys["alice"]), box) == b"hello"
    empty = s_reg.seal(pub(keys["alice"]), b"", bytes(24))
    assert s_alice.open(pub(keys["registrar"]), empty) == b""
    bad = [
        (pub(keys["mallory"]), box),  # wrong sender
        (pub(keys["alice"]), box[:-1] + bytes([box[-1] ^ 1])),  # tampered ciphertext
        (pub(keys["alice"]), bytes([box[0] ^ 1]) + box[1:]),  # tampered nonce
        (pub(keys["alice"]), box[:39]),  # shorter than nonce + MAC
        (pub(keys["alice"]), box + bytes(600)),  # longer than MAX_SEALED
        (pub(keys["alice"])[:31], box),  # malformed key
        (bytes(32), box),  # a low-order point: no shared key at all
    ]
    for key, data in bad:
        with pytest.raises(DecodeError) as exc:
            s_reg.open(key, data)
        assert str(exc.value) == "sealed box does not open"


def test_seal_refuses_bad_arguments(keys: dict[str, PrivateKey]) -> None:
    s = sealed.Sealer(bytes(keys["alice"]))
    for key, nonce in ((bytes(32), bytes(24)), (bytes(31), bytes(24)), (bytes(32), bytes(12))):
        with pytest.raises(LocalProtocolError):
            s.seal(key, b"x", nonce)
    with pytest.raises(LocalProtocolError):
        sealed.Sealer(bytes(31))


def test_sealer_cache_is_a_capped_lru(keys: dict[str, PrivateKey]) -> None:
    s = sealed.Sealer(bytes(keys["alice"]), cache_size=4)
    remotes = [sealed.Sealer(bytes(PrivateKey.generate())) for _ in range(6)]
    for r in remotes[:4]:
        s.seal(r.public_key, b"x", bytes(24))
    s.seal(remotes[0].public_key, b"x", bytes(24))  # now the most recently used
    s.seal(remotes[4].public_key, b"x", bytes(24))  # evicts remotes[1]
    assert s.cached_keys == 4
    assert set(s._keys) == {r.public_key for r in (remotes[0], remotes[2], remotes[3], remotes[4])}
    # a box that opens is cached; forgeries under new keys are not
    box = remotes[5].seal(s.public_key, b"hi", bytes(24))
    for _ in range(10):
        with pytest.raises(DecodeError):
            s.open(bytes(PrivateKey.generate().public_key), box)
    assert remotes[5].public_key not in s._keys and s.cached_keys == 4
    assert s.open(remotes[5].public_key, box) == b"hi"
    assert remotes[5].public_key in s._keys and s.cached_keys == 4


def test_a_precomputed_shared_key_seals_and_opens_the_same_boxes(
    keys: dict[str, PrivateKey],
) -> None:
    """open_box/seal_box with Sealer.shared_key are the same wire format as Sealer.seal/open."""
    s_alice, s_reg = sealed.Sealer(bytes(keys["alice"])), sealed.Sealer(bytes(keys["registrar"]))
    shared = s_reg.shared_key(pub(keys["alice"]))
    assert shared is not None and shared == s_alice.shared_key(pub(keys["registrar"]))
    assert s_reg.agreements == 1 and s_reg.cached_keys == 0  # computed, not cached
    nonce = os.urandom(24)
    box = s_alice.seal(pub(keys["registrar"]), b"hello", nonce)
    assert sealed.seal_box(shared, b"hello", nonce) == box
    assert sealed.open_box(shared, box) == b"hello"
    assert s_alice.open(pub(keys["registrar"]), sealed.seal_box(shared, b"back", nonce)) == b"back"
    mallory = s_reg.shared_key(pub(keys["mallory"]))
    assert mallory is not None
    bad = [
        (mallory, box),  # the key of another pair
        (shared, box[:-1] + bytes([box[-1] ^ 1])),  # tampered ciphertext
        (shared, bytes([box[0] ^ 1]) + box[1:]),  # tampered nonce
        (shared, box[:39]),  # shorter than nonce + MAC
        (shared, box + bytes(600)),  # longer than MAX_SEALED
    ]
    for key, data in bad:
        with pytest.raises(DecodeError) as exc:
            sealed.open_box(key, data)
        assert str(exc.value) == "sealed box does not open"
    with pytest.raises(LocalProtocolError):
        sealed.seal_box(shared[:31], b"x", nonce)
    with pytest.raises(LocalProtocolError):
        sealed.seal_box(shared, b"x", nonce[:12])


def test_shared_key_refuses_malformed_and_low_order_keys(keys: dict[str, PrivateKey]) -> None:
    s = sealed.Sealer(bytes(keys["alice"]))
    assert s.shared_key(bytes(31)) is None
    assert s.shared_key(bytes(32)) is None  # a low-order point: X25519 gives all zeros
    assert s.shared_key((1).to_bytes(32, "little")) is None
    assert s.cached_keys == 0


def test_sealer_pays_x25519_once_per_cached_remote(keys: dict[str, PrivateKey]) -> None:
    s_alice, s_reg = sealed.Sealer(bytes(keys["alice"])), sealed.Sealer(bytes(keys["registrar"]))
    for _ in range(5):
        box = s_alice.seal(pub(keys["registrar"]), b"x", os.urandom(24))
        assert s_reg.open(pub(keys["alice"]), box) == b"x"
        with pytest.raises(DecodeError):  # a tampered box under a cached key: refused, no X25519
            s_reg.open(pub(keys["alice"]), box[:-1] + bytes([box[-1] ^ 1]))
    assert s_alice.agreements == 1 and s_reg.agreements == 1


# -- whole messages ----------------------------------------------------------------------------


def test_full_message_round_trip(keys: dict[str, PrivateKey]) -> None:
    s_alice, s_reg = sealed.Sealer(bytes(keys["alice"])), sealed.Sealer(bytes(keys["registrar"]))
    data = sealed.build_sealed_request(
        s_alice, s_alice.public_key, s_reg.public_key, PAYLOADS[0], TID, os.urandom(24)
    )
    msg = stun.decode(data)
    assert msg.msg_type == stun.BINDING_REQUEST and msg.transaction_id == TID
    assert [t for t, _ in msg.attributes] == [stun.ATTR_WG_PUBLIC_KEY, stun.ATTR_WG_SEALED]
    assert data[-8:-4] == bytes.fromhex("80280004")  # FINGERPRINT
    assert sealed.open_sealed(s_reg, msg, None) == (s_alice.public_key, PAYLOADS[0])
    assert sealed.open_sealed(s_reg, msg, s_alice.public_key)[1] == PAYLOADS[0]


def test_registrar_to_peer_message_names_no_key(keys: dict[str, PrivateKey]) -> None:
    s_alice, s_reg = sealed.Sealer(bytes(keys["alice"])), sealed.Sealer(bytes(keys["registrar"]))
    push = Push(1, 2, 3, (s_alice.public_key,))
    data = sealed.build_sealed_request(
        s_reg, None, s_alice.public_key, push, TID, bytes(24), msg_type=stun.BINDING_INDICATION
    )
    msg = stun.decode(data)
    assert msg.msg_type == stun.BINDING_INDICATION and msg.get(stun.ATTR_WG_PUBLIC_KEY) is None
    assert sealed.open_sealed(s_alice, msg, s_reg.public_key) == (s_reg.public_key, push)
    with pytest.raises(DecodeError, match=r"^no sender key$"):
        sealed.open_sealed(s_alice, msg, None)


def test_open_sealed_errors(keys: dict[str, PrivateKey]) -> None:
    s_alice, s_reg = sealed.Sealer(bytes(keys["alice"])), sealed.Sealer(bytes(keys["registrar"]))
    good = stun.decode(
        sealed.build_sealed_request(
            s_alice, s_alice.public_key, s_reg.public_key, Watch(1, 2, 3), TID, bytes(24)
        )
    )
    box = good.get(stun.ATTR_WG_SEALED)
    assert box is not None

    def with_attrs(*attrs: tuple[int, bytes], tid: bytes = TID) -> stun.StunMessage:
        return stun.StunMessage(stun.BINDING_REQUEST, tid, attrs)

    cases = [
        (with_attrs((stun.ATTR_WG_PUBLIC_KEY, s_alice.public_key)), None, "no sealed payload"),
        (with_attrs((stun.ATTR_WG_SEALED, box)), None, "no sender key"),
        (good, pub(keys["mallory"]), "sealed by an unexpected key"),
        (
            with_attrs((stun.ATTR_WG_PUBLIC_KEY, bytes(31)), (stun.ATTR_WG_SEALED, box)),
            None,
            "bad WG-PUBLIC-KEY length",
        ),
        (
            with_attrs((stun.ATTR_WG_PUBLIC_KEY, pub(keys["mallory"])), (stun.ATTR_WG_SEALED, box)),
            None,
            "sealed box does not open",
        ),
        # the same box moved into another message: it opens, but is bound to TID
        (with_attrs(*good.attributes, tid=b"\x43" * 12), None, "sealed payload bound to another "
         "transaction"),
    ]  # fmt: skip
    for msg, expected, error in cases:
        with pytest.raises(DecodeError) as exc:
            sealed.open_sealed(s_reg, msg, expected)
        assert str(exc.value) == error


def test_ten_thousand_forgeries_never_open(keys: dict[str, PrivateKey]) -> None:
    s_alice, s_reg = sealed.Sealer(bytes(keys["alice"])), sealed.Sealer(bytes(keys["registrar"]))
    s_mallory = sealed.Sealer(bytes(keys["mallory"]))
    rng = random.Random(7)
    genuine = Register(1, 2, "alice", (EP4,), "wgmesh/0.1.0")
    good = stun.decode(
        sealed.build_sealed_request(
            s_alice, s_alice.public_key, s_reg.public_key, genuine, TID, os.urandom(24)
        )
    )
    assert sealed.open_sealed(s_reg, good, None)[1] == genuine
    box = good.get(stun.ATTR_WG_SEALED)
    assert box is not None
    opened = 0
    for i in range(10_000):
        kind = i % 4
        sender, value = s_alice.public_key, box
        if kind == 0:  # a random claimed sender
            sender = rng.randbytes(32)
        elif kind == 1:  # one bit of nonce or ciphertext flipped
            b = bytearray(box)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            value = bytes(b)
        elif kind == 2:  # random bytes of a plausible length
            value = rng.randbytes(rng.randrange(stun.MIN_SEALED, stun.MAX_SEALED + 1))
        else:  # sealed by Mallory's real key while claiming Alice's
            value = s_mallory.seal(
                s_reg.public_key, sealed.encode_payload(genuine, TID), os.urandom(24)
            )
        msg = stun.StunMessage(
            stun.BINDING_REQUEST,
            TID,
            ((stun.ATTR_WG_PUBLIC_KEY, sender), (stun.ATTR_WG_SEALED, value)),
        )
        try:
            sealed.open_sealed(s_reg, msg, None)
            opened += 1
        except DecodeError as exc:
            assert str(exc) == "sealed box does not open"
    assert opened == 0


# -- properties --------------------------------------------------------------------------------

u64 = st.integers(0, U64)
endpoints4 = st.builds(Endpoint, st.ip_addresses(v=4), st.integers(0, 65535))
endpoints6 = st.builds(
    Endpoint,
    st.ip_addresses(v=6).filter(lambda ip: getattr(ip, "ipv4_mapped", None) is None),
    st.integers(0, 65535),
)
endpoints = st.one_of(endpoints4, endpoints6)
observed = st.one_of(  # at most one mapping per family, IPv4 first
    st.just(()), endpoints.map(lambda ep: (ep,)), st.tuples(endpoints4, endpoints6)
)
names = st.text(st.characters(codec="utf-8"), max_size=63).filter(
    lambda s: s.isprintable() and len(s.encode()) <= 63
)
keys32 = st.binary(min_size=32, max_size=32)


def watches(max_ids: int, padding: st.SearchStrategy[int]) -> st.SearchStrategy[Watch]:
    ids = st.lists(st.binary(min_size=8, max_size=8), max_size=max_ids).map(tuple)
    return st.builds(Watch, u64, u64, u64, st.binary(min_size=16, max_size=16),
                     st.none() | ids, padding)  # fmt: skip


payloads: st.SearchStrategy[sealed.Payload] = st.one_of(
    st.builds(
        Register,
        u64,
        u64,
        names,
        st.lists(endpoints, max_size=8).map(tuple),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=32),
        st.booleans(),
    ),
    watches(max_ids=57, padding=st.just(0)),
    watches(max_ids=50, padding=st.integers(1, 64)),  # padded: every Watch a daemon sends
    st.builds(
        Status,
        u64,
        u64,
        u64,
        u64,
        observed,
        st.sampled_from(NatKind),
        st.integers(0, 2**32 - 1),
        st.booleans(),
        st.binary(min_size=16, max_size=16),
    ),
    st.builds(
        Push,
        u64,
        u64,
        st.integers(0, 2**32 - 1),
        st.lists(st.binary(min_size=32, max_size=32), max_size=14).map(tuple),
    ),
    st.builds(sealed.RosterQuery, u64, u64, st.integers(0, 2**32 - 1)),
    st.builds(
        sealed.Roster,
        u64,
        u64,
        u64,
        *[st.integers(0, 2**32 - 1)] * 3,
        st.lists(
            st.builds(
                sealed.Member,
                st.binary(min_size=32, max_size=32),
                st.lists(
                    st.one_of(
                        st.builds(
                            lambda a, n: f"{a}/{n}", st.ip_addresses(v=4), st.integers(0, 32)
                        ),
                        st.builds(
                            lambda a, n: f"{a}/{n}",
                            st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None),
                            st.integers(0, 128),
                        ),
                    ),
                    max_size=3,
                ).map(tuple),
            ),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(sealed.RelayRequest, u64, u64, keys32, st.sampled_from(sealed.RelayOp)),
    st.builds(sealed.RelayBind, u64, u64, keys32),
    st.builds(sealed.Repunch, u64, u64, st.lists(keys32, min_size=1, max_size=14).map(tuple)),
    st.builds(
        sealed.PathReport,
        u64,
        u64,
        st.lists(
            st.builds(
                sealed.PeerPath,
                keys32,
                st.sampled_from(sealed.PathKind),
                st.sampled_from(sealed.PathReason),
                st.integers(0, 2**32 - 1),
            ),
            min_size=1,
            max_size=sealed.MAX_PATHS,
        ).map(tuple),
    ),
    st.builds(
        sealed.RelayGrant,
        u64,
        u64,
        keys32,
        st.sampled_from([sealed.RelayState.ALLOCATED, sealed.RelayState.READY]),
        endpoints,
        st.booleans(),
    ),
    st.builds(
        sealed.RelayGrant,
        u64,
        u64,
        keys32,
        st.just(sealed.RelayState.RELEASED),
        st.none(),
        st.booleans(),
    ),
    st.builds(
        sealed.RelayGrant,
        u64,
        u64,
        keys32,
        st.just(sealed.RelayState.REFUSED),
        st.none(),
        st.booleans(),
        st.sampled_from([r for r in sealed.RelayRefusal if r is not sealed.RelayRefusal.NONE]),
    ),
)


def test_relay_payload_errors() -> None:
    """Grants say where to send exactly when allocated or ready, and why exactly when
    refused; unknown codes are DecodeErrors."""
    key = bytes(range(32))
    bad = [
        sealed.RelayGrant(1, 2, key, sealed.RelayState.READY, None),
        sealed.RelayGrant(1, 2, key, sealed.RelayState.RELEASED, EP4),
        sealed.RelayGrant(1, 2, key, sealed.RelayState.REFUSED, None),
        sealed.RelayGrant(1, 2, key, sealed.RelayState.READY, EP4, reason=sealed.RelayRefusal.OFF),
        sealed.RelayBind(1, 2, key[:31]),
    ]
    for p in bad:
        with pytest.raises(LocalProtocolError):
            sealed.encode_payload(p, TID)
    ok = sealed.encode_payload(sealed.RelayGrant(1, 2, key, sealed.RelayState.READY, EP4), TID)
    for pos, value, error in [
        (30 + 32, 9, "unknown relay state or reason"),
        (30 + 33, 9, "unknown relay state or reason"),
        (30 + 33, 1, "a refusal reason exactly when refused"),
        (30 + 34, 2, "unknown RelayGrant flags"),
        (30 + 35, 5, "bad address family"),
    ]:
        data = bytearray(ok)
        data[pos] = value
        with pytest.raises(DecodeError) as exc:
            sealed.decode_payload(bytes(data), TID)
        assert str(exc.value) == error
    req = bytearray(sealed.encode_payload(sealed.RelayRequest(1, 2, key), TID))
    req[-1] = 3
    with pytest.raises(DecodeError, match="unknown relay operation"):
        sealed.decode_payload(bytes(req), TID)
    released = sealed.encode_payload(
        sealed.RelayGrant(1, 2, key, sealed.RelayState.RELEASED, None), TID
    )
    with pytest.raises(DecodeError, match="a relay address in a refusal or release"):
        sealed.decode_payload(released[:-1] + b"\x04", TID)


@settings(max_examples=500, deadline=None)
@given(payloads, st.binary(min_size=12, max_size=12))
def test_round_trip_property(p: sealed.Payload, tid: bytes) -> None:
    assert sealed.decode_payload(sealed.encode_payload(p, tid), tid) == p


@given(
    st.none() | st.lists(st.binary(min_size=8, max_size=8), max_size=57).map(tuple),
    st.binary(min_size=12, max_size=12),
)
def test_a_padded_watch_is_watch_min_bytes_or_its_own_size(
    interest: tuple[bytes, ...] | None, tid: bytes
) -> None:
    watch = Watch(1, 2, 3, bytes(16), interest)
    padded = sealed.padded_watch(watch)
    plain = sealed.encode_payload(padded, tid)
    assert len(plain) == max(sealed.WATCH_MIN, len(sealed.encode_payload(watch, tid)))
    assert sealed.decode_payload(plain, tid) == padded and padded.interest == interest


@settings(max_examples=500, deadline=None)
@given(st.lists(endpoints, max_size=4).map(tuple), st.binary(min_size=12, max_size=12))
def test_observed_mappings_are_one_per_family_ipv4_first(
    mappings: tuple[Endpoint, ...], tid: bytes
) -> None:
    """Any list of mappings: what is one per family, IPv4 first, round-trips; anything else is
    refused by the encoder, and its bytes (written by hand) by the decoder, each with its
    message."""
    status = Status(1, 2, 3, 4, mappings, NatKind.CONE, 5)
    families = [ep.family for ep in mappings]
    if families in ([], [4], [6], [4, 6]):
        assert sealed.decode_payload(sealed.encode_payload(status, tid), tid) == status
        return
    with pytest.raises(LocalProtocolError):
        sealed.encode_payload(status, tid)
    body = struct.pack("!QQB", 3, 4, len(mappings))
    body += b"".join(bytes((ep.family,)) + ep.ip.packed + struct.pack("!H", ep.port)
                     for ep in mappings) + b"\x02" + struct.pack("!I", 5)  # fmt: skip
    data = bytes((1, 3)) + tid + struct.pack("!QQ", 1, 2) + body
    if len(mappings) > 2:
        error = "more than 2 observed mappings"
    elif families[0] == families[1]:
        error = "two observed mappings of one family"
    else:
        error = "observed IPv6 mapping before IPv4"
    with pytest.raises(DecodeError) as exc:
        sealed.decode_payload(data, tid)
    assert str(exc.value) == error


def decode_canonically(data: bytes) -> None:
    """Only DecodeError may come out, and whatever decodes re-encodes to the same bytes."""
    try:
        p = sealed.decode_payload(data, TID)
    except DecodeError:
        return
    assert sealed.encode_payload(p, TID) == data


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_random_payload_bytes_only_decode_error(data: bytes) -> None:
    decode_canonically(data)


@settings(max_examples=1000, deadline=None)
@given(st.integers(1, 5), st.binary(max_size=300))
def test_random_bodies_behind_a_good_header_only_decode_error(kind: int, body: bytes) -> None:
    decode_canonically(head(kind) + body)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(PAYLOADS),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(0, 600),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_payloads_only_decode_error(
    p: sealed.Payload, steps: list[tuple[str, int, int]]
) -> None:
    data = bytearray(sealed.encode_payload(p, TID))
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
    decode_canonically(bytes(data))


REG_SEALER = sealed.Sealer(bytes(PrivateKey.generate()))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=700))
def test_random_boxes_never_open(key: bytes, box: bytes) -> None:
    with pytest.raises(DecodeError):
        REG_SEALER.open(key, box)


def test_a_roster_page_is_refused_when_malformed() -> None:
    tid = bytes(12)
    good = sealed.Roster(1, 2, 3, 4, 1, 0, (sealed.Member(bytes(32), ("100.64.0.1/32",)),))
    data = sealed.encode_payload(good, tid)
    bad_family = data[:-6] + bytes((5, 32)) + data[-4:]
    bad_prefix = data[:-6] + bytes((4, 33)) + data[-4:]
    for wire, message in ((bad_family, "bad network in a Roster"),
                          (bad_prefix, "bad network in a Roster"),
                          (data[:-1], "sealed payload truncated")):  # fmt: skip
        with pytest.raises(DecodeError) as exc:
            sealed.decode_payload(wire, tid)
        assert str(exc.value) == message
    with pytest.raises(LocalProtocolError):
        sealed.encode_payload(
            sealed.Roster(1, 2, 3, 4, 1, 0, (sealed.Member(bytes(32), ("10.0.0.1/8 ",)),)), tid
        )


def test_path_report_layout_and_limits() -> None:
    """Kind 11: a count, then 38 bytes a peer (key, path, reason, handshake age); 12 fit."""
    entry = sealed.PeerPath(
        b"\x07" * 32, sealed.PathKind.RELAY, sealed.PathReason.BOTH_SYMMETRIC, 75
    )
    data = sealed.encode_payload(sealed.PathReport(1, 2, (entry,)), TID)
    assert data == head(11) + b"\x01" + b"\x07" * 32 + b"\x02\x03" + struct.pack("!I", 75)
    assert sealed.MAX_PATHS == 12 and sealed.Kind.PATH_REPORT == 11
    biggest = sealed.PathReport(U64, U64, (entry,) * 12)
    assert len(sealed.encode_payload(biggest, TID)) == 30 + 1 + 12 * 38 <= sealed.MAX_PAYLOAD
    never = sealed.PeerPath(b"\x01" * 32, sealed.PathKind.NONE, sealed.PathReason.NO_HANDSHAKE)
    assert never.handshake_age == sealed.NEVER == 2**32 - 1
    assert sealed.decode_payload(sealed.encode_payload(sealed.PathReport(1, 2, (never,)), TID),
                                 TID) == sealed.PathReport(1, 2, (never,))  # fmt: skip
    for bad in ((), (entry,) * 13, (sealed.PeerPath(b"\x01" * 31, sealed.PathKind.DIRECT),)):
        with pytest.raises(LocalProtocolError):
            sealed.encode_payload(sealed.PathReport(1, 2, bad), TID)
    with pytest.raises(LocalProtocolError):
        sealed.encode_payload(sealed.PathReport(1, 2, (sealed.PeerPath(b"\x01" * 32,
                              sealed.PathKind.DIRECT, handshake_age=2**32),)), TID)  # fmt: skip
    assert set(sealed.PATH_REASONS) == set(sealed.PathReason)
