"""The registrar's fast path for a proven watcher's Watch (wgmesh.proto.watchpath) answers and
decides exactly what the full path does: its reader against the full decoder on random and
mutated Watches, the packed Status, box and STUN answer against the general encoders, and two
registries fed the same traffic, one of them with the fast path turned off, compared byte for
byte after every datagram."""

from __future__ import annotations

import os
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_box_easy_afternm

from wgmesh.errors import DecodeError
from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.payloads import KEY_ID_LEN, MAX_INTEREST
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import COOKIE_EPOCH, Admission, Registry, RegistryConfig
from wgmesh.proto.watchpath import watch_fields

from .test_refresh import NOW, PORT, REG, REG_KEY, SEALERS, admission_of, mutate, register

TID = bytes(range(12))
interests = st.one_of(
    st.none(),
    st.lists(st.binary(min_size=KEY_ID_LEN, max_size=KEY_ID_LEN), max_size=MAX_INTEREST).map(tuple),
)
watches = st.builds(
    sealed.Watch,
    timestamp_ms=st.integers(0, 2**64 - 1),
    counter=st.integers(0, 2**64 - 1),
    register_counter=st.integers(0, 2**64 - 1),
    cookie=st.binary(min_size=16, max_size=16),
    interest=interests,
    padding=st.integers(0, 40),
)


def agrees(plaintext: bytes, tid: bytes) -> bool:
    """watch_fields accepts ``plaintext`` only where decode_payload reads a Watch, and then
    reads what it reads; True when it accepted."""
    fields = watch_fields(plaintext, tid)
    if fields is None:
        return False
    full = sealed.decode_payload(plaintext, tid)  # raises if the fast reader accepted junk
    assert isinstance(full, sealed.Watch)
    assert tuple(fields) == (full.timestamp_ms, full.counter, full.cookie, full.interest)
    return True


@given(watch=watches, seed=st.integers(0, 2**32))
def test_the_watch_reader_agrees_with_the_full_decoder(watch: sealed.Watch, seed: int) -> None:
    """On Watches of every shape a daemon can send (with and without interest and padding)
    and on mutations of each: what the fast reader accepts, the decoder reads alike."""
    rnd = random.Random(seed)
    try:
        plaintext = sealed.encode_payload(watch, TID)
    except Exception:  # too large with this interest and padding: nothing to read
        return
    assert agrees(plaintext, TID)  # every Watch the encoder writes is read fast
    assert watch_fields(plaintext, bytes(12)) is None  # bound to another transaction
    for _ in range(12):
        agrees(mutate(plaintext, rnd), TID)


@given(plaintext=st.binary(max_size=200))
def test_random_plaintexts_the_watch_reader_accepts_decode(plaintext: bytes) -> None:
    agrees(plaintext, plaintext[2:14] if len(plaintext) >= 14 else TID)


@given(plaintext=st.binary(max_size=600), nonce=st.binary(min_size=24, max_size=24))
def test_seal_box_seals_as_pynacls_binding(plaintext: bytes, nonce: bytes) -> None:
    """seal_box calls libsodium directly: the same box as crypto_box_easy_afternm."""
    shared = SEALERS[0].shared_key(REG_KEY)
    assert shared is not None
    assert sealed.seal_box(shared, plaintext, nonce) == nonce + crypto_box_easy_afternm(
        plaintext, nonce, shared
    )


POOL = [
    Endpoint.parse("198.51.100.20:40000"), Endpoint.parse("203.0.113.5:1"),
    Endpoint.parse("[2001:db8:1::20]:40000"), Endpoint.parse("[2001:db8::1]:65535"),
]  # fmt: skip
endpoints = st.sampled_from(POOL)


@given(
    observed=st.sampled_from([(), (0,), (2,), (0, 2), (1, 3)]),
    nat=st.sampled_from(list(NatKind)),
    counters=st.tuples(*(st.integers(0, 2**64 - 1) for _ in range(4))),
    serial=st.integers(0, 2**32 - 1),
    cookie=st.binary(min_size=16, max_size=16),
)
def test_the_packed_status_is_what_encode_payload_gives(
    observed: tuple[int, ...],
    nat: NatKind,
    counters: tuple[int, int, int, int],
    serial: int,
    cookie: bytes,
) -> None:
    eps = tuple(POOL[i] for i in observed)
    ts, counter, watch_counter, register_counter = counters
    status = sealed.Status(ts, counter, watch_counter, register_counter, eps, nat, serial,
                           True, cookie)  # fmt: skip
    wire = bytes((len(eps),)) + b"".join(
        bytes((ep.ip.version,)) + ep.ip.packed + ep.port.to_bytes(2, "big") for ep in eps
    )
    packed = sealed.status_plaintext(TID, ts, counter, watch_counter, register_counter, wire,
                                     sealed.nat_code(nat), serial, cookie)  # fmt: skip
    assert packed == sealed.encode_payload(status, TID)


@given(
    observed=endpoints,
    extra=st.lists(st.tuples(st.integers(0, 0xFFFF).filter(lambda t: t != stun.ATTR_FINGERPRINT),
                             st.binary(max_size=70)), max_size=4),
    software=st.sampled_from(["", "wgmesh/0.1.0", "x" * 127, "ünï"]),
    tid=st.binary(min_size=12, max_size=12),
)  # fmt: skip
def test_success_for_is_what_encode_gives(
    observed: Endpoint, extra: list[tuple[int, bytes]], software: str, tid: bytes
) -> None:
    attrs = ((stun.ATTR_XOR_MAPPED_ADDRESS, stun.pack_xor_address(observed, tid)), *extra,
             (stun.ATTR_SOFTWARE, stun.pack_software(software)))  # fmt: skip
    expected = stun.encode(stun.StunMessage(stun.BINDING_SUCCESS, tid, attrs))
    assert stun.success_for(tid, observed, extra, software) == expected
    msg = stun.decode(expected)
    assert msg.get(stun.ATTR_XOR_MAPPED_ADDRESS) is not None


def registry(fast: bool, admission: Admission, seed: int) -> Registry:
    """A registry whose randomness (nonces, cookie secret) is ``seed``'s: two of them answer
    alike byte for byte."""
    cfg = RegistryConfig(key_rate_limit=RateLimitConfig(rate=5.0, burst=3.0), push_delay=0.0,
                         expiry=50.0)  # fmt: skip
    zone = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test."))
    rng = random.Random(seed)
    r = Registry(cfg, sealed.Sealer(bytes(REG)), admission, zone, rng.randbytes, PORT)
    if not fast:
        r._steady_watch = lambda *args: None  # type: ignore[method-assign]
    return r


WG = [Endpoint.parse("198.51.100.20:40000"), Endpoint.parse("[2001:db8:1::20]:40000")]
"""Where the peers' Registers come from (peer i: port 40000 + i), IPv4 and IPv6."""
CONTROL = [Endpoint.parse("198.51.100.20:41000"), Endpoint.parse("198.51.100.20:41001"),
           Endpoint.parse("[2001:db8:1::20]:41000")]  # fmt: skip
"""Where their Watches come from (peer i: the port + 10 * i)."""

step = st.tuples(
    st.integers(0, 2),  # peer
    st.sampled_from([0.5, 1.0, 2.0] * 8 + [0.0, 5.0, 20.0, 70.0, COOKIE_EPOCH]),  # later, s
    st.sampled_from(["watch"] * 4 + ["register"] * 3 + ["register6", "expire"]),
    st.sampled_from([1] * 9 + [2, 0, -1]),  # counter step (<= 0: a replay)
    st.sampled_from([0] * 10 + [1, 2]),  # the control address (0: the usual one)
    st.sampled_from(["echo"] * 9 + ["zeros", "wrong", "old"]),  # the cookie sent
    st.sampled_from([None, None, None, (b"\x00" * 8,), ()]),  # interest
    st.sampled_from([True] * 9 + [False]),  # False: mutated
    st.sampled_from([0] * 9 + [5, -130, 130]),  # clock skew of the timestamp, s
)


def same_state(a: Registry, b: Registry) -> bool:
    """Everything a Watch can touch is the same in both (events drained)."""
    assert a.counters == b.counters
    assert list(a._rows.items()) == list(b._rows.items())
    assert [(k, a.watchers[k]) for k in a.watchers] == [(k, b.watchers[k]) for k in b.watchers]
    assert a._fanout._interest == b._fanout._interest
    assert a._fanout._everything == b._fanout._everything
    assert a._fanout._by_id == b._fanout._by_id
    assert list(a._key_limiter._buckets.items()) == list(b._key_limiter._buckets.items())
    assert a._key_limiter.dropped == b._key_limiter.dropped
    assert a._deadlines._buckets == b._deadlines._buckets
    assert a._deadlines._soon == b._deadlines._soon
    assert a.next_timer() == b.next_timer()
    assert a.zone.serial == b.zone.serial
    assert a.events() == b.events()
    return True


def test_a_watch_over_the_keys_limit_is_refused_and_counted_once() -> None:
    """The fast path's refusal is the answer: the full path neither runs after it nor
    counts the refusal again (the key's bucket is charged once)."""
    regs = []
    for fast in (True, False):
        r = registry(fast, Admission(open=True), 7)
        r._key_limiter = type(r._key_limiter)(RateLimitConfig(rate=0.001, burst=3.0))
        regs.append(r)
    s, source = SEALERS[0], CONTROL[0]
    cookie = bytes(16)
    for k in range(8):
        payload = sealed.padded_watch(sealed.Watch(int(NOW * 1000), 20 + k, 0, cookie, None))
        data = sealed.build_sealed_request(s, s.public_key, REG_KEY, payload, os.urandom(12),
                                           os.urandom(24))  # fmt: skip
        if k == 0:
            first = register(0, NOW, 10, "p0", (), "test")
            for r in regs:
                r.receive(first, WG[0], PORT, NOW)
        outs = [r.receive(data, source, PORT, NOW) for r in regs]
        assert outs[0] == outs[1]
        if outs[0]:
            _, status = sealed.open_sealed(s, stun.decode(outs[0][0][0]), REG_KEY)
            assert isinstance(status, sealed.Status)
            cookie = status.cookie
        assert same_state(*regs)
    assert regs[0].counters["key_limited"] == 8 - 2  # the Register and one Watch got through
    assert regs[0]._key_limiter.dropped == 8 - 2


def shift(ep: Endpoint, by: int) -> Endpoint:
    return Endpoint.of(ep.ip, ep.port + by)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=10, max_size=60), named=st.booleans(),
       seed=st.integers(0, 2**32))  # fmt: skip
def test_two_registries_one_without_the_watch_fast_path_answer_alike(
    steps: list[tuple[int, float, str, int, int, str, Any, bool, int]], named: bool, seed: int
) -> None:
    """Registers (IPv4 and IPv6 mappings), Watches from the proven address and others, with
    the right cookie, zeros, a wrong one or the previous epoch's, replays, stale clocks,
    mutated datagrams, the key limit, expiry: both registries send the same bytes, and end
    with the same counters, rows, watchers, fan-out interest, limiter buckets, deadlines, zone
    and events after every datagram."""
    rnd = random.Random(seed)
    admission = admission_of(named)
    a, b = registry(True, admission, seed), registry(False, admission, seed)
    fast = a._steady_watch
    taken = 0

    def counted(*args: Any) -> Any:
        nonlocal taken
        out = fast(*args)
        taken += bool(out)
        return out

    a._steady_watch = counted  # type: ignore[method-assign]
    now = NOW
    counters = [10, 10, 10]
    cookies: list[dict[Endpoint, list[bytes]]] = [{}, {}, {}]  # per control address, latest last
    for peer in range(3):  # each has a row and proves its control address to begin with
        data = register(peer, now, counters[peer], f"p{peer}", (), "test")
        assert a.receive(data, shift(WG[0], peer), PORT, now) == []
        b.receive(data, shift(WG[0], peer), PORT, now)
    proving = [
        (p, 0.0, "watch", 1, 0, c, None, True, 0) for c in ("zeros", "echo") for p in range(3)
    ]
    for peer, later, what, dc, where, sent, interest, keep, skew in proving + steps:
        now += later
        counters[peer] += dc
        s = SEALERS[peer]
        if what == "expire":
            assert a.expire(now) == b.expire(now)
            continue
        if what.startswith("register"):
            source = shift(WG[what == "register6"], peer)
            data = register(peer, now + skew, counters[peer], f"p{peer}", (), "test")
        else:
            source = shift(CONTROL[where], 10 * peer)
            known = cookies[peer].get(source, [])
            cookie = {"echo": known[-1:], "old": known[-2:-1], "wrong": [os.urandom(16)]}.get(
                sent, []
            )
            payload = sealed.padded_watch(sealed.Watch(
                int((now + skew) * 1000), counters[peer], 0, (cookie or [bytes(16)])[0], interest
            ))  # fmt: skip
            data = sealed.build_sealed_request(s, s.public_key, REG_KEY, payload,
                                               os.urandom(12), os.urandom(24))  # fmt: skip
        if not keep:
            data = mutate(data, rnd)
        out = a.receive(data, source, PORT, now)
        assert out == b.receive(data, source, PORT, now)
        for answer, to in out:
            if to != source:
                continue
            try:
                _, status = sealed.open_sealed(s, stun.decode(answer), REG_KEY)
            except DecodeError:
                continue
            if isinstance(status, sealed.Status):
                seen = cookies[peer].setdefault(source, [])
                if not seen or seen[-1] != status.cookie:
                    seen.append(status.cookie)
        assert same_state(a, b)
    TAKEN.append(taken)


TAKEN: list[int] = []


def test_the_differential_test_takes_the_watch_fast_path() -> None:
    """Not vacuous: over the examples above, the fast path answered many Watches."""
    test_two_registries_one_without_the_watch_fast_path_answer_alike()
    assert sum(TAKEN) > 200, TAKEN
