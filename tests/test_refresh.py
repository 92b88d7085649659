"""The registrar's fast path for refreshes (wgmesh.proto.refresh) decides exactly what the full
path decides: checked on random registrations, on mutated datagrams, and on two registries fed
the same traffic, one of them with the fast path turned off."""

from __future__ import annotations

import os
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.errors import DecodeError
from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.peerentry import AdmittedPeer, Refresh
from wgmesh.proto.peerrow import pack_endpoint
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.refresh import _PRINTABLE_ASCII, registration, sealed_request
from wgmesh.proto.registry import Admission, Registry, RegistryConfig

NOW = 1_800_000_000.0
PORT = 3478
REG = PrivateKey.generate()
REG_KEY = bytes(REG.public_key)
PEERS = [PrivateKey.generate() for _ in range(3)]
SEALERS = [sealed.Sealer(bytes(p)) for p in PEERS]

addresses = st.lists(
    st.sampled_from([
        Endpoint.parse("10.0.0.7:51820"), Endpoint.parse("192.168.1.2:51820"),
        Endpoint.parse("[2001:db8::7]:51820"), Endpoint.parse("[fd00::1]:1"),
    ]),
    max_size=3, unique=True,
).map(tuple)  # fmt: skip
names = st.sampled_from(["alice", "", "bob-laptop", "ünïcode", "a" * 63])
softwares = st.sampled_from(["wgmesh/0.1.0", "", "test"])
sources = st.sampled_from([
    Endpoint.parse("198.51.100.20:40000"), Endpoint.parse("198.51.100.20:40001"),
    Endpoint.parse("203.0.113.5:51820"), Endpoint.parse("[2001:db8:1::20]:40000"),
])  # fmt: skip


def register(i: int, now: float, counter: int, name: str, addrs: tuple[Endpoint, ...],
             software: str, secondary: bool = False) -> bytes:  # fmt: skip
    payload = sealed.Register(int(now * 1000), counter, name, addrs, software, secondary)
    s = SEALERS[i]
    return sealed.build_sealed_request(s, s.public_key, REG_KEY, payload, os.urandom(12),
                                       os.urandom(24))  # fmt: skip


def mutate(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    match rnd.randrange(4):
        case 0:
            out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)
        case 1:
            del out[rnd.randrange(len(out)) :]
        case 2:
            out += os.urandom(rnd.choice((1, 4, 8)))
        case _:
            at = rnd.randrange(len(out))
            out[at : at + 2] = os.urandom(2)
    return bytes(out)


@given(name=names, addrs=addresses, software=softwares, seed=st.integers(0, 2**32))
def test_the_fast_readers_agree_with_the_full_decoders(
    name: str, addrs: tuple[Endpoint, ...], software: str, seed: int
) -> None:
    """On a daemon's Register and on mutations of it: whenever the fast readers accept a
    datagram or a plaintext, the full decoders accept it too and read the same values."""
    rnd = random.Random(seed)
    good = register(0, NOW, 5, name, addrs, software)
    shared = SEALERS[0].shared_key(REG_KEY)
    assert shared is not None
    for data in [good] + [mutate(good, rnd) for _ in range(8)]:
        fast = sealed_request(data)
        if data == good:
            assert fast is not None
        if fast is None:
            continue
        msg = stun.decode(data)  # raises if the fast reader accepted what the decoder refuses
        tid, key, box = fast
        assert (tid, key, box) == (msg.transaction_id, msg.get(stun.ATTR_WG_PUBLIC_KEY),
                                   msg.get(stun.ATTR_WG_SEALED))  # fmt: skip
    msg = stun.decode(good)
    box = msg.get(stun.ATTR_WG_SEALED)
    assert box is not None
    plaintext = sealed.open_box(shared, box)
    assert sealed.open_or_none(shared, box) == plaintext
    for text in [plaintext] + [mutate(plaintext, rnd) for _ in range(8)]:
        reg = registration(text, msg.transaction_id)
        if text == plaintext:
            assert reg is not None
        if reg is None:
            continue
        full = sealed.decode_payload(text, msg.transaction_id)
        assert isinstance(full, sealed.Register) and not full.secondary
        assert (reg.timestamp_ms, reg.counter) == (full.timestamp_ms, full.counter)
        assert (reg.name.decode(), reg.software.decode()) == (full.name, full.software)
        assert reg.addresses == len(full.addresses)
        assert reg.seen_tail == b"".join(map(pack_endpoint, full.addresses))


@given(plaintext=st.binary(max_size=600), nonce=st.binary(min_size=24, max_size=24),
       seed=st.integers(0, 2**32))  # fmt: skip
@settings(max_examples=200)
def test_the_fast_box_opener_agrees_with_open_box(
    plaintext: bytes, nonce: bytes, seed: int
) -> None:
    """open_or_none calls libsodium directly; on sealed, mutated and wrongly keyed boxes it
    opens exactly what open_box opens, and None where open_box raises."""
    rnd = random.Random(seed)
    shared = SEALERS[0].shared_key(REG_KEY)
    assert shared is not None
    good = sealed.seal_box(shared, plaintext, nonce)
    other = SEALERS[1].shared_key(REG_KEY)
    assert other is not None
    cases = [(shared, good), (other, good), (shared[:31], good), (shared, good[:39])]
    cases += [(shared, mutate(good, rnd)) for _ in range(4)]
    for key, box in cases:
        try:
            expected: bytes | None = sealed.open_box(key, box)
        except (DecodeError, ValueError, TypeError):
            expected = None
        assert sealed.open_or_none(key, box) == expected
    if len(good) <= stun.MAX_SEALED:
        assert sealed.open_or_none(shared, good) == plaintext


@given(plaintext=st.binary(max_size=120), tid=st.binary(min_size=12, max_size=12))
def test_random_plaintexts_the_fast_reader_accepts_decode(plaintext: bytes, tid: bytes) -> None:
    reg = registration(plaintext, tid)
    if reg is not None:
        assert isinstance(sealed.decode_payload(plaintext, tid), sealed.Register)


@given(data=st.binary(max_size=200))
def test_random_datagrams_the_fast_reader_accepts_decode(data: bytes) -> None:
    if sealed_request(data) is not None:
        try:
            stun.decode(data)
        except DecodeError as exc:  # pragma: no cover - the assertion's message
            raise AssertionError(f"fast reader accepted {data!r}: {exc}") from None


def admission_of(named: bool) -> Admission:
    """An open mesh, or (``named``) an admission file naming the three peers."""
    if not named:
        return Admission(open=True)
    keys = [s.public_key for s in SEALERS]
    return Admission(
        False,
        {k: AdmittedPeer(k, f"host{i}", (f"100.64.0.{i + 1}/32",)) for i, k in enumerate(keys)},
    )


def registry(fast: bool, admission: Admission) -> Registry:
    cfg = RegistryConfig(key_rate_limit=RateLimitConfig(rate=5.0, burst=3.0), push_delay=0.0)
    zone = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test."))
    r = Registry(cfg, sealed.Sealer(bytes(REG)), admission, zone, os.urandom, PORT)
    if not fast:
        r._refresh = lambda *args: False  # type: ignore[method-assign]
    return r


profile = st.tuples(names, addresses, softwares, sources)
"""What a peer registers with: mostly the same every round (a refresh), sometimes not."""
step = st.tuples(
    st.integers(0, 2),  # peer
    st.floats(0.0, 30.0),  # seconds later
    st.sampled_from([1, 1, 1, 2, 0, -1]),  # counter step (<= 0: a replay)
    st.sampled_from([0, 0, 0, 0, 1, 2]),  # the profile (0: the usual one)
    st.sampled_from([False] * 5 + [True]),  # a secondary probe
    st.sampled_from([PORT] * 5 + [PORT + 1]),
    st.sampled_from([True] * 5 + [False]),  # False: mutated
    st.sampled_from([0, 0, 0, 5, -130, 130]),  # clock skew of the timestamp, s
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step, min_size=10, max_size=60), named=st.booleans(),
       profiles=st.lists(profile, min_size=3, max_size=3), seed=st.integers(0, 2**32))  # fmt: skip
def test_two_registries_one_without_the_fast_path_end_alike(
    steps: list[tuple[int, float, int, int, bool, int, bool, int]],
    named: bool,
    profiles: list[tuple[str, tuple[Endpoint, ...], str, Endpoint]],
    seed: int,
) -> None:
    """The same datagrams into a registry with the fast path and one without: the same
    answers, counters, rows, zone and events, whatever the mix (refreshes, moves, replays,
    stale clocks, secondary probes, the key limit, mutated datagrams, admission names)."""
    rnd = random.Random(seed)
    admission = admission_of(named)
    a, b = registry(True, admission), registry(False, admission)
    fast = a._refresh
    taken = 0

    def counted(*args: Any) -> bool:
        nonlocal taken
        done = fast(*args)
        taken += done
        return done

    a._refresh = counted  # type: ignore[method-assign]
    now = NOW
    counters = [10, 10, 10]
    for peer, later, dc, which, secondary, port, keep, skew in steps:
        name, addrs, software, source = profiles[which]
        now += later
        counters[peer] += dc
        data = register(peer, now + skew, counters[peer], name, addrs, software, secondary)
        if not keep:
            data = mutate(data, rnd)
        assert a.receive(data, source, port, now) == b.receive(data, source, port, now)
        if rnd.random() < 0.2:
            assert a.expire(now) == b.expire(now)
        assert a.counters == b.counters
        assert list(a._rows.items()) == list(b._rows.items())
        assert a.zone.serial == b.zone.serial
        ea, eb = a.events(), b.events()
        assert [(e.change, e.peer) for e in ea] == [(e.change, e.peer) for e in eb]
        for e in ea:
            if isinstance(e, Refresh):
                shared = a.stored_key(e.key)
                assert shared is None or shared not in e.row  # no shared key leaves in events
    TAKEN.append(taken)


TAKEN: list[int] = []


def test_the_differential_test_takes_the_fast_path() -> None:
    """Not vacuous: over the examples above, the fast path handled many refreshes."""
    test_two_registries_one_without_the_fast_path_end_alike()
    assert sum(TAKEN) > 200, TAKEN


def test_the_printable_ascii_table_is_what_isprintable_accepts_of_ascii() -> None:
    """registration() checks names and software with bytes.translate against this table."""
    for b in range(256):
        one = bytes((b,))
        printable = one.isascii() and chr(b).isprintable()
        assert (not one.translate(None, _PRINTABLE_ASCII)) == printable
