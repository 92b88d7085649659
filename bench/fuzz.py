"""Fuzz every parser hostile input reaches, and the servers behind them (issue 11).

Each target is a pure function of one input (bytes) over a harness built once per worker. An
input is accepted, rejected with the exceptions the target's contract names (DecodeError, or
the RemoteProtocolError family where that is the contract), or dropped (a server returns
nothing and counts it). Anything else, or a broken invariant (a wrong or unparseable answer, a
table over its cap, a datagram toward an address that did not ask), is a failure: printed with
the input as hex and the traceback, exit status 1. The server targets also check, every few
thousand inputs and at the end, that a valid request is still answered ("answers afterwards").

Inputs: random bytes of random lengths; random values behind valid framing (STUN TLVs, a sealed
payload header, a DNS header and question with EDNS options); mutations of seeds built with the
real encoders and keys (bit flips, byte replacement, interesting values 0/1/0x7f/0x80/0xff,
insertion, deletion, truncation, splicing two seeds, length fields set to interesting values or
to the input's length). Sealed payloads are fuzzed as plaintext, so mutations get past the MAC
(sealed_payload, roster, and the envelope mode of registry, relay and client, which seals each
input with a real key), and as whole datagrams whose boxes fail the MAC (sealed_open, registry).

    python bench/fuzz.py                                # every target, 1,000,000 inputs each
    python bench/fuzz.py --count 10000 --workers 2
    python bench/fuzz.py --target stun --target registry --seconds 120
    python bench/fuzz.py --target registry --replay 0500ab...   # one input, fresh harness

Deterministic: the same --seed, --count and --workers give the same inputs (each worker's
stream is derived from the seed, the target and the worker's index; the harnesses' keys from
the seed and the target). A stateful target's failure may need the inputs before it: --replay
runs one input on a fresh harness. Bounded: --count inputs per target, or --seconds, whichever
comes first; no network, no files; the workers are forked processes.

A long file for a bench script: one harness per parser, and the table of targets at the end is
the place a new parser's entry goes.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import dns.tsigkeyring

from wgmesh.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from wgmesh.proto import sealed, stun
from wgmesh.proto.client import ClientConfig, MappingObserved, Phase, RegistrarClient
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import label_key
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.punch import Hint
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.records import browse_keys, instance_name, peer_record, read_srv_answer
from wgmesh.proto.registry import Admission, AdmittedPeer, Registry, RegistryConfig
from wgmesh.proto.relay import RelayConfig
from wgmesh.proto.roster import MAX_MEMBERS, RosterBook, RosterSync
from wgmesh.proto.rrl import COOKIE_OPTION, RrlConfig, UdpGuard
from wgmesh.proto.sealed import Kind, RelayOp, RelayRefusal, RelayState

NOW = 1_800_000_000.0
PORT, ALT = 3478, 3479
REQUEST, INDICATION = stun.BINDING_REQUEST, stun.BINDING_INDICATION
SUCCESS, ERROR = stun.BINDING_SUCCESS, stun.BINDING_ERROR
KEY, SEALED = stun.ATTR_WG_PUBLIC_KEY, stun.ATTR_WG_SEALED
ORIGIN = dns.name.from_text("mesh.test.")
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149a"
    "eaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
INTERESTING8 = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING16 = (0, 1, 2, 4, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x7FFF, 0x8000, 0xFFFF)
LENGTHS = (0, 1, 2, 4, 11, 12, 13, 19, 20, 21, 24, 28, 30, 31, 40, 54, 255, 256, 512, 513, 600)


class Violation(Exception):
    """An invariant broken: a wrong or unparseable answer, a table over its cap."""


def need(ok: bool, what: str) -> None:
    """Raise Violation(what) unless ``ok``."""
    if not ok:
        raise Violation(what)


@dataclass(slots=True)
class Harness:
    """One target's state in one worker."""

    seeds: list[bytes]
    """Valid inputs, built with the real encoders, that mutations start from."""
    run: Callable[[bytes], bool]
    """One input: True accepted, False dropped; raises the target's allowed errors to reject."""
    afterwards: Callable[[], str] | None = None
    """Server targets: '' when a valid request is still answered, else what went wrong."""
    framed: Callable[[random.Random], bytes] | None = None
    """Random values behind valid framing."""
    lengths: Callable[[bytes], list[int]] | None = None
    """Offsets of 16-bit length and count fields in an input."""
    max_len: int = 1400
    """Longest random input."""
    check_every: int = 2000
    """Inputs between two ``afterwards`` checks."""


@dataclass(frozen=True, slots=True)
class Target:
    """One row of :data:`TARGETS`."""

    make: Callable[[random.Random], Harness]
    """Builds a harness from a setup RNG (the same in every worker)."""
    allowed: tuple[type[Exception], ...]
    """What may come out of ``run``: the contract. Anything else is a failure."""
    what: str
    """What is fuzzed, for --help."""


# -- inputs ---------------------------------------------------------------------------------


class Inputs:
    """A deterministic stream of inputs for one harness."""

    def __init__(self, rng: random.Random, h: Harness) -> None:
        self.rng, self.h = rng, h
        self.made: Counter[str] = Counter()

    def next(self) -> bytes:
        rng, h = self.rng, self.h
        r = rng.random()
        if r < 0.15:
            kind, data = "random", self.random_bytes()
        elif r < 0.27 and h.framed is not None:
            kind, data = "framed", h.framed(rng)
        elif r < 0.29:
            kind, data = "seed", rng.choice(h.seeds)
        else:
            kind, data = "mutated", self.mutate(rng.choice(h.seeds))
        self.made[kind] += 1
        return data

    def random_bytes(self) -> bytes:
        rng = self.rng
        r = rng.random()
        n = rng.choice(LENGTHS) if r < 0.1 else rng.randrange(33) if r < 0.5 else 0
        return rng.randbytes(n or rng.randrange(self.h.max_len + 1))

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 6, 10))):
            n = len(buf)
            p = rng.randrange(n + 1)
            op = rng.randrange(12)
            if op == 0 and n:
                buf[p % n] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                buf[p % n] = rng.randrange(256)
            elif op == 2 and n:
                buf[p % n] = rng.choice(INTERESTING8)
            elif op == 3:
                buf[p:p] = rng.randbytes(rng.randint(1, 8))
            elif op == 4:
                del buf[p : p + rng.randint(1, 8)]
            elif op == 5:
                del buf[p:]
            elif op == 6:
                buf += rng.randbytes(rng.randint(1, 32))
            elif op == 7:  # splice: this seed's head, another's tail
                other = rng.choice(self.h.seeds)
                buf = buf[:p] + other[rng.randrange(len(other) + 1) :]
            elif op == 8 and n:  # duplicate a block
                a = rng.randrange(n)
                buf[p:p] = buf[a : a + rng.randint(1, 16)]
            elif op == 9:  # a length field: interesting, or the input's own length
                fields = self.h.lengths(bytes(buf)) if self.h.lengths else []
                at = rng.choice(fields) if fields and rng.random() < 0.8 else p
                v = rng.choice((*INTERESTING16, n, n - 1, n + 1, n - 4, n + 4, n - 12, n - 20))
                buf[at : at + 2] = (v & 0xFFFF).to_bytes(2, "big")
            elif op == 10 and n:  # a count
                buf[p % n] = rng.randrange(21)
            elif op == 11 and n:
                buf[p : p + rng.randint(1, 8)] = bytes([rng.choice((0, 0xFF))]) * rng.randint(1, 8)
        return bytes(buf[: 2 * self.h.max_len])


# -- STUN -----------------------------------------------------------------------------------

ATTR_TYPES = (*stun.CODECS, 0x0006, 0x0008, 0x0024, 0x8029, 0x802A, 0x0000, 0x7FFF, 0xFFFF)


def stun_lengths(data: bytes, start: int = 0) -> list[int]:
    """The header's length field and every attribute's."""
    out, pos = [start + 2], start + 20
    while pos + 4 <= len(data):
        out.append(pos + 2)
        n = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 4 + n + (-n % 4)
    return out


def stun_framed(rng: random.Random) -> bytes:
    attrs = []
    for _ in range(rng.choice((0, 1, 2, 3, 5, 8, 31, 32))):
        t = rng.choice(ATTR_TYPES) if rng.random() < 0.8 else rng.randrange(0x10000)
        n = rng.choice((0, 1, 4, 8, 20, 32, 40, rng.randrange(64), rng.randrange(700)))
        value = bytearray(rng.randbytes(n))
        if n >= 2 and rng.random() < 0.5:
            value[1] = rng.choice((1, 2))  # an address family
        if t != stun.ATTR_FINGERPRINT:
            attrs.append((t, bytes(value)))
    msg = stun.StunMessage(
        rng.choice((REQUEST, INDICATION, SUCCESS, ERROR, rng.randrange(0x4000))),
        rng.randbytes(12),
        tuple(attrs),
    )
    try:
        return stun.encode(msg, fingerprint=rng.random() < 0.5)
    except LocalProtocolError:  # too many or too large: what the decoder refuses anyway
        return stun.encode(stun.StunMessage(msg.msg_type, msg.transaction_id))


def stun_seeds(rng: random.Random) -> list[bytes]:
    """Requests with every attribute, answers, indications, a sealed Register, RFC 5769's
    sample request, RFC 3489 requests."""
    tid = rng.randbytes(12)
    v4, v6 = Endpoint.parse("192.0.2.7:3478"), Endpoint.parse("[2001:db8::7]:51820")
    peer, registrar = sealed.Sealer(rng.randbytes(32)), sealed.Sealer(rng.randbytes(32))
    plain = sealed.encode_payload(sealed.Watch(1, 2, 3), tid)
    box = peer.seal(registrar.public_key, plain, rng.randbytes(24))
    every = (
        (stun.ATTR_MAPPED_ADDRESS, stun.pack_address(v4)),
        (stun.ATTR_MAPPED_ADDRESS, stun.pack_address(v6)),
        (stun.ATTR_XOR_MAPPED_ADDRESS, stun.pack_xor_address(v4, tid)),
        (stun.ATTR_XOR_MAPPED_ADDRESS, stun.pack_xor_address(v6, tid)),
        (stun.ATTR_ERROR_CODE, stun.pack_error(420, "Unknown Attribute")),
        (stun.ATTR_SOFTWARE, stun.pack_software("wgmesh/0.1.0 \u2603")),
        (KEY, peer.public_key),
        (SEALED, box),
        (0x0006, b"user:name"),  # USERNAME: comprehension-required, unknown to the codec
        (0x0024, b"\x6e\x00\x01\xff"),  # PRIORITY
        (0x8029, rng.randbytes(8)),  # ICE-CONTROLLED
        (0x0008, rng.randbytes(20)),  # MESSAGE-INTEGRITY
    )
    register = sealed.Register(int(NOW * 1000), 5, "alice", (v4, v6), "wgmesh/0.1.0")
    request = stun.StunMessage(REQUEST, tid)
    return [
        stun.encode(request, fingerprint=False),
        stun.encode(request),
        stun.encode(stun.StunMessage(REQUEST, tid, every)),
        stun.encode(stun.StunMessage(REQUEST, tid, every), fingerprint=False),
        stun.encode(stun.StunMessage(ERROR, tid, every[4:6])),
        stun.binding_success(request, v4),
        stun.binding_success(request, v6, extra=((SEALED, box),)),
        stun.encode(stun.StunMessage(INDICATION, tid, ((SEALED, box),))),
        sealed.build_sealed_request(
            peer, peer.public_key, registrar.public_key, register, tid, rng.randbytes(24)
        ),
        RFC5769_REQUEST,
        b"\x00\x01\x00\x00" + rng.randbytes(16),  # RFC 3489: no magic cookie
        b"\x00\x01\x00\x08" + rng.randbytes(16) + every[5][1][:8],
    ]


def make_stun(rng: random.Random) -> Harness:
    def run(data: bytes) -> bool:
        msg = stun.decode(data)
        need(stun.is_stun(data), "decode() accepted what is_stun() refuses")
        try:
            again = stun.decode(stun.encode(msg, fingerprint=False))
        except (DecodeError, LocalProtocolError) as exc:
            raise Violation(f"a decoded message does not re-encode: {exc!r}") from None
        need(again == msg, "the re-encoded message decodes differently")
        stun.unknown_required(msg)
        for attr_type, value in msg.attributes:
            stun.attribute_name(attr_type)
            codec = stun.CODECS.get(attr_type)
            if attr_type == stun.ATTR_XOR_MAPPED_ADDRESS:
                stun.unpack_xor_address(value, msg.transaction_id)
            elif codec is not None:
                codec.unpack(value)
        return True

    return Harness(stun_seeds(rng), run, framed=stun_framed, lengths=stun_lengths)


HOSTS = (
    *("192.0.2.1", "198.51.100.77", "203.0.113.255", "0.0.0.0", "255.255.255.255", "10.1.2.3"),
    *("2001:db8::1", "::ffff:192.0.2.9"),
)


def plain_framed(rng: random.Random) -> bytes:
    """A 20-byte header (plain, classic or other), sometimes with a FINGERPRINT."""
    msg_type = rng.choice((REQUEST, REQUEST, INDICATION, SUCCESS))
    head = struct.pack("!HH", msg_type, rng.choice((0, 0, 8, 4, 12)))
    msg = head + (stun.COOKIE_BYTES if rng.random() < 0.8 else rng.randbytes(4))
    msg += rng.randbytes(12)
    if rng.random() < 0.5:
        msg += b"\x80\x28\x00\x04" + struct.pack("!I", zlib.crc32(msg) ^ stun.FINGERPRINT_XOR)
    return msg


def make_stun_fast(rng: random.Random) -> Harness:
    """The batched path's pure parts: PlainBindingResponder.answer (what the batched socket
    calls first) and the RFC 3489 answer; both must be exactly what the general path says."""
    responder = stun.PlainBindingResponder("wgmesh", max_sources=4)  # small: emptied often

    def run(data: bytes) -> bool:
        h = zlib.crc32(data)
        host, port = HOSTS[h % len(HOSTS)], h >> 16
        ep = Endpoint.from_sockaddr((host, port))
        fast = responder.answer(data, host, port)
        classic = stun.classic_binding_success(data, ep)
        need(len(responder._sources) <= responder.max_sources, "the source table over its cap")
        if fast is not None:
            msg = stun.decode(data)
            need(msg.msg_type == REQUEST and not msg.attributes, "a fast answer to a non-plain")
            expected = stun.binding_success(msg, ep, software="wgmesh")
            need(fast == expected, "the fast answer differs from the general path's")
        if classic is not None:
            need(ep.ip.version == 4 and len(classic) == 32, "an RFC 3489 answer to IPv6")
            need(classic[:2] == b"\x01\x01" and classic[4:20] == data[4:20], "bad 3489 answer")
        return fast is not None or classic is not None

    seeds = stun_seeds(rng) + [plain_framed(rng) for _ in range(8)]
    return Harness(seeds, run, framed=plain_framed, lengths=stun_lengths, max_len=64)


# -- sealed payloads ------------------------------------------------------------------------


def sample_payloads(rng: random.Random, ts: int) -> list[sealed.Payload]:
    """Every kind, with every optional part and at its limits."""
    keys = [rng.randbytes(32) for _ in range(sealed.MAX_CHANGED)]
    v4, v6 = Endpoint.parse("192.0.2.10:51820"), Endpoint.parse("[2001:db8::10]:51820")
    lans = tuple(Endpoint.parse(f"10.0.{i}.2:51820") for i in range(4))
    six = tuple(Endpoint.parse(f"[2001:db8:{i}::2]:{i}") for i in range(4))
    nets = ("100.64.0.1/32", "10.0.0.0/8", "2001:db8::/32", "fd00::1/128", "0.0.0.0/0")
    members = tuple(sealed.Member(k, nets[: i % 6]) for i, k in enumerate(keys[:6]))
    wide = sealed.Member(keys[7], tuple(f"fd00:{i + 1:x}::/64" for i in range(16)))
    ids = tuple(sealed.key_id(k) for k in keys)
    relay = Endpoint.parse("203.0.113.10:50001")
    return [
        sealed.Register(ts, 1, "", (), "", False),
        sealed.Register(ts, 2, "\u00e5lice \U0001f422", lans + six, "wgmesh/0.1.0", True),
        sealed.Register(ts, 3, "n" * 63, (v4,), "s" * 32),
        sealed.Watch(ts, 4, 2),
        sealed.padded_watch(sealed.Watch(ts, 4, 2)),
        sealed.padded_watch(sealed.Watch(ts, 5, 2, bytes(16), ())),
        sealed.Watch(ts, 5, 2, rng.randbytes(16), ()),
        sealed.Watch(ts, 5, 2, rng.randbytes(16), ids),
        sealed.Watch(ts, 5, 2, bytes(16), tuple(rng.randbytes(8) for _ in range(57))),
        sealed.Status(ts, 6, 4, 2, (), NatKind.UNKNOWN, 1),
        sealed.Status(ts, 7, 4, 2, (v4,), NatKind.CONE, 7, True, rng.randbytes(16)),
        sealed.Status(ts, 8, 4, 2, (v4, v6), NatKind.SYMMETRIC, 2**32 - 1),
        sealed.Status(ts, 9, 4, 2, (v6,), NatKind.NONE, 0, False, rng.randbytes(16)),
        sealed.Push(ts, 10, 9, ()),
        sealed.Push(ts, 11, 9, tuple(keys)),
        sealed.RosterQuery(ts, 12, 0),
        sealed.RosterQuery(ts, 13, 2**32 - 1),
        sealed.Roster(ts, 14, 13, 0xDEADBEEF, 7, 0, members),
        sealed.Roster(ts, 15, 13, 1, 100, 50, (wide,)),
        sealed.Roster(ts, 16, 13, 1, 0, 0, ()),
        sealed.RelayRequest(ts, 17, keys[0]),
        sealed.RelayRequest(ts, 18, keys[1], RelayOp.RELEASE),
        sealed.RelayGrant(ts, 19, keys[0], RelayState.ALLOCATED, relay),
        sealed.RelayGrant(ts, 20, keys[0], RelayState.READY, relay, True),
        sealed.RelayGrant(ts, 21, keys[0], RelayState.RELEASED, None),
        sealed.RelayGrant(ts, 22, keys[0], RelayState.REFUSED, None, False, RelayRefusal.SELF),
        sealed.RelayGrant(ts, 23, keys[2], RelayState.ALLOCATED, Endpoint.parse("[::2]:5")),
        sealed.RelayBind(ts, 24, keys[0]),
    ]


def payload_framed(rng: random.Random) -> bytes:
    """A sealed payload header (version 1 mostly, any kind) and a random body."""
    version = 1 if rng.random() < 0.9 else rng.randrange(256)
    head = struct.pack(
        "!BB12sQQ", version, rng.randrange(11), rng.randbytes(12), int(NOW * 1000), 2**40
    )
    body = bytearray(rng.randbytes(rng.choice((0, 1, 4, 8, 16, 24, 32, 40, rng.randrange(500)))))
    for _ in range(rng.randrange(4)):
        if body:
            body[rng.randrange(len(body))] = rng.choice((0, 1, 2, 3, 4, 6, 8, 14, 16))
    return head + bytes(body)


def own_tid(data: bytes) -> bytes:
    """The transaction id a payload names (so mutations reach past the binding check)."""
    return (data[2:14] + bytes(12))[:12]


def make_sealed_payload(rng: random.Random) -> Harness:
    def run(data: bytes) -> bool:
        tid = own_tid(data)
        p = sealed.decode_payload(data, tid)
        try:
            again = sealed.encode_payload(p, tid)
        except LocalProtocolError as exc:
            raise Violation(f"a decoded payload does not encode: {exc}") from None
        need(again == data, "decode_payload is not canonical: re-encoding gives other bytes")
        try:
            sealed.decode_payload(data, bytes(b ^ 0x5A for b in tid))
        except DecodeError:
            return True
        raise Violation("a payload decoded under another transaction id")

    seeds = [sealed.encode_payload(p, rng.randbytes(12)) for p in sample_payloads(rng, 1)]
    return Harness(seeds, run, framed=payload_framed, max_len=600)


def make_sealed_open(rng: random.Random) -> Harness:
    """Whole messages: stun.decode, then open_sealed as the registrar and as the daemon."""
    registrar = sealed.Sealer(rng.randbytes(32))
    peers = [sealed.Sealer(rng.randbytes(32)) for _ in range(3)]
    daemon = peers[0]
    to_registrar = (sealed.Register, sealed.Watch, sealed.RosterQuery, sealed.RelayRequest)

    def run(data: bytes) -> bool:
        msg = stun.decode(data)
        try:
            sealed.open_sealed(registrar, msg, None)
        except DecodeError:
            sealed.open_sealed(daemon, msg, registrar.public_key)
        need(registrar.cached_keys <= 16 and daemon.cached_keys <= 16, "Sealer cache over cap")
        return True

    seeds = []
    for i, p in enumerate(sample_payloads(rng, int(NOW * 1000))):
        tid, nonce = rng.randbytes(12), rng.randbytes(24)
        if isinstance(p, to_registrar):
            s = peers[i % 3]
            seeds.append(
                sealed.build_sealed_request(s, s.public_key, registrar.public_key, p, tid, nonce)
            )
            continue
        box = registrar.seal(daemon.public_key, sealed.encode_payload(p, tid), nonce)
        to = Endpoint.parse("198.51.100.20:50000")
        seeds.append(stun.binding_success(stun.StunMessage(REQUEST, tid), to, ((SEALED, box),)))
        seeds.append(stun.encode(stun.StunMessage(INDICATION, tid, ((SEALED, box),))))

    def framed(rng: random.Random) -> bytes:
        key = rng.choice([p.public_key for p in peers] + [rng.randbytes(32)])
        box = rng.randbytes(rng.choice((40, 41, 100, 600, rng.randrange(40, 601))))
        attrs = ((KEY, key), (SEALED, box)) if rng.random() < 0.8 else ((SEALED, box),)
        msg_type = rng.choice((REQUEST, SUCCESS, INDICATION))
        return stun.encode(stun.StunMessage(msg_type, rng.randbytes(12), attrs))

    return Harness(seeds, run, framed=framed, lengths=stun_lengths)


# -- the registrar's core (and its relay) ---------------------------------------------------

RELAY_IP = ipaddress.IPv4Address("203.0.113.10")
RELAY_PORTS = range(50000, 50016)


def fuzz_address(i: int, port: int) -> Endpoint:
    """Addresses of fuzz peers: IPv4 sharing a few /24s, IPv6, IPv4-mapped IPv6."""
    if i % 8 == 6:
        return Endpoint.from_sockaddr((f"2001:db8:{i:x}::{i % 3:x}", port))
    prefix = "::ffff:" if i % 8 == 7 else ""
    return Endpoint.from_sockaddr((f"{prefix}198.18.{i % 4}.{i % 16}", port))


class RegistryHarness:
    """The whole sans-IO Registry on a float clock, fed as its adapters feed it: the plain
    Binding fast path first, then ``receive`` (or ``receive_relay`` at a relay port);
    ``expire`` when ``next_timer`` is due; events drained. It plays its fuzz peers' daemons
    too: it opens the Status answers to them and keeps their cookies.

    Input: flags | source | key index | a datagram (flags bit 0 clear) or a plaintext payload
    (bit 0 set: sealed here with that fuzz peer's real key, so mutations reach past the MAC).
    Flags: bit 1 the alternate port; bit 2 stamps a fresh timestamp and counter (and a Watch
    gets the cookie last given to that key at that source, a RelayBind the other peer of the
    port's allocation); bits 3-4 the STUN type; bit 5 to a relay port (key index picks it;
    sealed by the port's owner when allocated); bit 6 from the key's own control (or, for a
    Register or RelayBind, WireGuard) address. Caps are small, so the fuzz reaches them."""

    def __init__(self, rng: random.Random, relay: bool) -> None:
        self.rng = random.Random(rng.random())
        self.config = RegistryConfig(
            max_peers=48,
            max_watchers=24,
            rate_limit=RateLimitConfig(20, 5, 256),
            key_rate_limit=RateLimitConfig(20, 10, 64),
        )
        zone = Zone(
            ZoneConfig(
                "mesh.test.",
                ("ns1.mesh.test.",),
                "h.mesh.test.",
                cache_size=64,
                negative_cache_size=32,
                cache_bytes=65536,
            )
        )
        self.sealer = sealed.Sealer(rng.randbytes(32))
        self.peers = [sealed.Sealer(rng.randbytes(32)) for _ in range(64)]
        self.shared = [p.shared_key(self.sealer.public_key) or b"" for p in self.peers]
        self.index = {p.public_key: i for i, p in enumerate(self.peers)}
        admitted = {
            p.public_key: AdmittedPeer(p.public_key, f"peer{i}", (f"100.64.0.{i}/32",))
            for i, p in enumerate(self.peers[:8])
        }
        nonce = random.Random(rng.random()).randbytes
        self.reg = Registry(self.config, self.sealer, Admission(True, admitted), zone, nonce, PORT)
        if relay:
            self.relay_config = RelayConfig(RELAY_PORTS[0], RELAY_PORTS[-1], per_peer=2)
            self.reg.enable_relay(self.relay_config, RELAY_IP)
        self.counter_names = set(self.reg.counters)
        self.sources = [fuzz_address(i, 40000 + i) for i in range(64)]
        self.wg = [fuzz_address(i, 51820) for i in range(64)]
        self.control = [fuzz_address(i, 50000 + i) for i in range(64)]
        self.cookies: dict[tuple[int, Endpoint], bytes] = {}
        self.now = NOW
        self.stamp = int(NOW * 1_000_000)
        self.probes = [sealed.Sealer(rng.randbytes(32)) for _ in range(2)]
        self.probe_wg = [Endpoint.parse(f"203.0.113.20{i}:40000") for i in range(2)]
        self.probe_control = [Endpoint.parse(f"203.0.113.20{i}:40001") for i in range(2)]
        self.probe_cookies = [bytes(16)] * 2
        self.rounds = 0
        for _ in range(2):  # registered, then proven watchers
            why = self.afterwards()
            assert not why, why
            for i in range(8):  # the first fuzz peers too
                ts = int(self.now * 1000)
                self.run(
                    bytes((1 | 4 | 64, 0, i)) + self._plain(sealed.Register(ts, 0, "", (), ""))
                )
                self.run(bytes((1 | 4 | 64, 0, i)) + self._plain(sealed.Watch(ts, 0, 0)))
        self.seeds = self._seeds(rng)

    def _plain(self, p: sealed.Payload) -> bytes:
        return sealed.encode_payload(p, self.rng.randbytes(12))

    def _seeds(self, rng: random.Random) -> list[bytes]:
        ts = int(NOW * 1000)
        lan, v6 = Endpoint.parse("10.0.0.2:51820"), Endpoint.parse("[2001:db8:1::2]:51820")
        odd = tuple(Endpoint.parse(t) for t in ("127.0.0.1:1", "[fe80::1]:2", "0.0.0.0:0"))
        many = tuple(Endpoint.parse(f"[2001:db8::{i}]:{i}") for i in range(8))
        keys = [p.public_key for p in self.peers]
        payloads: list[sealed.Payload] = [
            sealed.Register(ts, 10, "a", (lan, v6), "wgmesh/0.1.0"),
            sealed.Register(ts, 11, "", (*odd, lan, lan), "x", secondary=True),
            sealed.Register(ts, 12, "b" * 63, many, "s" * 32),
            sealed.Watch(ts, 13, 10),
            sealed.padded_watch(sealed.Watch(ts, 13, 10)),
            sealed.Watch(ts, 13, 10, bytes(16), tuple(sealed.key_id(k) for k in keys[:9])),
            sealed.RosterQuery(ts, 14, 0),
            sealed.RosterQuery(ts, 15, 3),
            sealed.RelayRequest(ts, 16, keys[1]),
            sealed.RelayRequest(ts, 17, keys[2], RelayOp.RELEASE),
            sealed.RelayBind(ts, 18, keys[1]),
            *sample_payloads(rng, ts)[7:13],  # Status, Push: not for the registrar
        ]
        out = []
        for i, p in enumerate(payloads):
            tid = rng.randbytes(12)
            plain = sealed.encode_payload(p, tid)
            out += [bytes((1 | 4 | 64, i, k)) + plain for k in range(8)]  # kept going
            for flags in (1, 5, 1 | 2 | 4 | 64, 1 | 4 | 16, 1 | 4 | 32 | 64):
                out += [bytes((flags, i, k)) + plain for k in (i % 8, 8 + i)]
            s = self.peers[i]
            datagram = sealed.build_sealed_request(
                s, s.public_key, self.sealer.public_key, p, tid, rng.randbytes(24)
            )
            out += [bytes((0, i, i)) + datagram, bytes((64, i, i)) + datagram]
        out += [bytes((0, i, 0)) + m for i, m in enumerate(stun_seeds(rng))]
        request = stun.encode(stun.StunMessage(REQUEST, rng.randbytes(12)))
        initiation = b"\x01\0\0\0" + rng.randbytes(144)  # a WireGuard handshake initiation
        return [*out, b"\0\0\0" + request, b"\0\x01\0" + b"\1" * 1281, b"\0\x02\0" + initiation]

    def envelope(self, flags: int, index: int, port: int, source: Endpoint, plain: bytes) -> bytes:
        plain = plain[:560]  # a box of at most stun.MAX_SEALED bytes
        alloc = self.reg.relay.relay.at_port(port) if flags & 32 else None
        if alloc is not None:  # sealed by the port's owner
            index = self.index.get(alloc.owner(port), index)
        if flags & 4 and len(plain) >= 30:
            self.stamp += 1
            body = plain[30:]
            if plain[1] == Kind.WATCH and len(body) >= 24:
                cookie = self.cookies.get((index, source), body[8:24])
                body = body[:8] + cookie + body[24:]
            elif plain[1] == Kind.RELAY_BIND and alloc is not None and len(body) >= 32:
                body = alloc.other(alloc.owner(port)) + body[32:]
            elif plain[1] == Kind.RELAY_REQUEST and len(body) >= 32:  # one of the first 8
                body = self.peers[body[0] % 8].public_key + body[32:]
            head = struct.pack("!QQ", int(self.now * 1000), self.stamp)
            plain = plain[:14] + head + body
        box = sealed.seal_box(self.shared[index], plain, bytes(24))
        msg_type = (REQUEST, REQUEST, INDICATION, SUCCESS)[(flags >> 3) & 3]
        attrs = ((KEY, self.peers[index].public_key), (SEALED, box))
        return stun.encode(stun.StunMessage(msg_type, own_tid(plain), attrs))

    def run(self, data: bytes) -> bool:
        flags, si, ki = (data[:3] + b"\0\0\0")[:3]
        body = data[3:]
        self.now += 0.004
        index = ki % len(self.peers)
        port = RELAY_PORTS[ki % len(RELAY_PORTS)] if flags & 32 else ALT if flags & 2 else PORT
        source = self.sources[si % len(self.sources)]
        if flags & 64:
            wg = flags & 32 or body[1:2] == bytes((Kind.REGISTER,))
            source = (self.wg if wg else self.control)[index]
        datagram = self.envelope(flags, index, port, source, body) if flags & 1 else body
        reg, c = self.reg, self.reg.counters
        relay = reg.relay.counters
        before = c["registered"] + c["watched"] + c["binding"] + c["roster"]
        before += relay["requests"] + relay["binds"]
        targets = self._watcher_addresses()
        reply = None
        if not flags & 32:
            reply = reg.answer_plain_binding(datagram, str(source.ip), source.port)
        if reply is not None:
            out = [(reply, source)]
        elif flags & 32:
            out = reg.receive_relay(datagram, source, port, self.now)
        else:
            out = reg.receive(datagram, source, port, self.now)
        timer = reg.next_timer()
        if timer is not None and timer <= self.now:
            out += reg.expire(self.now)
        reg.events()
        targets |= self._watcher_addresses()
        for wire, dest in out:
            mine = flags & 1 and dest == source and wire[8:20] == datagram[8:20]
            self._check_sent(wire, dest, source, targets, index if mine else -1)
        self._caps()
        after = c["registered"] + c["watched"] + c["binding"] + c["roster"]
        return after + relay["requests"] + relay["binds"] > before

    def _check_sent(
        self, wire: bytes, dest: Endpoint, source: Endpoint, targets: set[Endpoint], index: int
    ) -> None:
        need(len(wire) <= stun.MAX_DATAGRAM, "a datagram over MAX_DATAGRAM")
        if not stun.is_stun(wire):  # the RFC 3489 answer
            need(dest == source and wire[:2] == b"\x01\x01", "a non-STUN datagram sent")
            return
        try:
            msg = stun.decode(wire)
        except DecodeError as exc:
            raise Violation(f"the registry sent what stun.decode refuses: {exc}") from None
        ok = dest == source or (msg.msg_type == INDICATION and dest in targets)
        need(ok, f"a datagram to {dest}, neither the source nor a proven watcher")
        box = msg.get(SEALED)
        if index >= 0 and box is not None:  # the answer to this input: keep its cookie
            try:
                plain = sealed.open_box(self.shared[index], box)
                p = sealed.decode_payload(plain, msg.transaction_id)
            except DecodeError as exc:
                raise Violation(f"an answer its peer cannot open: {exc}") from None
            if isinstance(p, sealed.Status):
                self.cookies[index, source] = p.cookie

    def _watcher_addresses(self) -> set[Endpoint]:
        return {w.address for w in self.reg.watchers.values()}

    def _caps(self) -> None:
        reg, cfg = self.reg, self.config
        need(len(reg.peers) <= cfg.max_peers, "peers over max_peers")
        need(len(reg.watchers) <= cfg.max_watchers, "watchers over max_watchers")
        need(len(reg._fanout) <= cfg.max_watchers, "push fan-out over max_watchers")
        need(len(reg._limiter) <= cfg.rate_limit.max_sources, "source limiter over its cap")
        need(len(reg._key_limiter) <= cfg.key_rate_limit.max_sources, "key limiter over cap")
        need(len(reg._agreements) <= 1, "agreement limiter over its cap")
        need(len(reg._plain._sources) <= reg._plain.max_sources, "fast-path table over cap")
        need(set(reg.counters) == self.counter_names, "a counter appeared")
        zc, cache = reg.zone.config, reg.zone._cache
        need(len(reg.zone) <= cfg.max_peers, "the zone holds more peers than max_peers")
        need(len(cache) <= zc.cache_size and cache.bytes <= zc.cache_bytes, "DNS cache over cap")
        need(cache.negative_count <= zc.negative_cache_size, "negative cache over cap")
        relay = reg.relay.relay
        ports = len(relay.config.ports)
        need(2 * len(relay) <= ports and len(relay._by_port) == 2 * len(relay), "relay ports")
        need(len(relay._free) + len(relay._by_port) == ports, "relay ports lost or doubled")
        need(all(n <= relay.config.per_peer for n in relay._per_peer.values()), "per_peer")
        need(len(reg.relay._floors) <= len(self.peers) + 2, "relay floors beyond the keys")

    def _probe_round(self, i: int) -> str | sealed.Status:
        """Probe peer ``i`` registers and watches; its Status, or what went wrong."""
        reg, now, rng, key = self.reg, self.now, self.rng, self.sealer.public_key
        probe = self.probes[i]
        self.stamp += 2
        register = sealed.Register(int(now * 1000), self.stamp - 1, f"probe{i}", (), "wgmesh")
        watch = sealed.padded_watch(
            sealed.Watch(int(now * 1000), self.stamp, self.stamp - 1, self.probe_cookies[i])
        )
        out: list[tuple[bytes, Endpoint]] = []
        for p, source in ((register, self.probe_wg[i]), (watch, self.probe_control[i])):
            tid, nonce = rng.randbytes(12), rng.randbytes(24)
            datagram = sealed.build_sealed_request(probe, probe.public_key, key, p, tid, nonce)
            out = reg.receive(datagram, source, PORT, now)
        reg.events()
        answers = [d for d, a in out if a == self.probe_control[i]]
        if not answers:
            busy = {k: v for k, v in reg.counters.items() if v}
            return f"probe {i}'s Watch got no Status (counters {busy})"
        _, status = sealed.open_sealed(probe, stun.decode(answers[0]), key)
        got = None if not isinstance(status, sealed.Status) else status
        if got is None or (got.watch_counter, got.register_counter, got.observed) != (
            watch.counter,
            register.counter,
            (self.probe_wg[i],),
        ):
            return f"probe {i}'s Status is wrong: {status}"
        if self.rounds > 2 and not got.proven:
            return f"probe {i}'s control address is no longer a push target"
        self.probe_cookies[i] = got.cookie
        return got

    def afterwards(self) -> str:
        """A plain Binding Request (both paths) is answered; two probe peers' Registers and
        Watches get their Status, the zone publishes them; with the relay on, a RelayRequest
        between them gets its grant, a RelayBind is taken, a release is answered."""
        reg, now, rng = self.reg, self.now, self.rng
        self.rounds += 1
        req = stun.encode(stun.StunMessage(REQUEST, rng.randbytes(12)))
        src4, src6 = Endpoint.parse("203.0.113.222:3333"), Endpoint.parse("[2001:db8::2]:3")
        expected = stun.binding_success(stun.decode(req), src4, software=self.config.software)
        if reg.answer_plain_binding(req, "203.0.113.222", 3333) != expected:
            return "a plain Binding Request got no answer on the fast path"
        if [a for _, a in reg.receive(req, src6, PORT, now)] != [src6]:
            return "a plain Binding Request over IPv6 got no answer"
        for i in range(2):
            status = self._probe_round(i)
            if isinstance(status, str):
                return status
        name = instance_name(self.probes[0].public_key, ORIGIN)
        wire = reg.zone.answer(dns.message.make_query(name, "SRV", id=1).to_wire(), tcp=False)
        answer = None if wire is None else read_srv_answer(name, dns.message.from_wire(wire))
        hint = Hint(self.probe_wg[0], CandidateKind.PUBLIC, 0)
        if answer is None or hint not in peer_record(self.probes[0].public_key, answer).hints:
            return "the zone does not publish probe 0's mapping"
        why = self._relay_round() if reg.relay.relay.config.enabled and self.rounds > 1 else ""
        self._caps()
        return why

    def _relay_round(self) -> str:
        reg, now, rng, key = self.reg, self.now, self.rng, self.sealer.public_key
        a, b = self.probes
        grants: list[sealed.RelayGrant] = []
        for op in (RelayOp.ALLOCATE, RelayOp.RELEASE):
            self.stamp += 1
            p = sealed.RelayRequest(int(now * 1000), self.stamp, b.public_key, op)
            tid, nonce = rng.randbytes(12), rng.randbytes(24)
            datagram = sealed.build_sealed_request(a, a.public_key, key, p, tid, nonce)
            out = reg.receive(datagram, self.probe_control[0], PORT, now)
            answers = [d for d, dest in out if dest == self.probe_control[0]]
            if not answers:
                return f"a RelayRequest ({op.name}) got no RelayGrant"
            _, grant = sealed.open_sealed(a, stun.decode(answers[0]), key)
            if not isinstance(grant, sealed.RelayGrant) or grant.peer != b.public_key:
                return f"a RelayRequest got {grant}"
            grants.append(grant)
            if op is RelayOp.ALLOCATE and grant.relay is not None:
                self.stamp += 1
                bind = sealed.RelayBind(int(now * 1000), self.stamp, b.public_key)
                datagram = sealed.build_sealed_request(a, a.public_key, key, bind, tid, nonce)
                binds = reg.relay.counters["binds"]
                reg.receive_relay(datagram, self.probe_wg[0], grant.relay.port, now)
                if reg.relay.counters["binds"] != binds + 1:
                    return "a valid RelayBind was not taken"
        allocated, released = grants
        if allocated.state is RelayState.REFUSED and allocated.reason is not RelayRefusal.EXHAUSTED:
            return f"a RelayRequest between two proven watchers refused: {allocated.reason}"
        if released.state is not RelayState.RELEASED:
            return f"a release answered {released}"
        return ""


def make_registry(rng: random.Random) -> Harness:
    h = RegistryHarness(rng, relay=False)
    lengths = partial(stun_lengths, start=3)
    return Harness(h.seeds, h.run, h.afterwards, lengths=lengths, check_every=1000)


def make_relay(rng: random.Random) -> Harness:
    h = RegistryHarness(rng, relay=True)
    relayed = [s for s in h.seeds if s[0] & 33 == 33 or s[4:5] == bytes((Kind.RELAY_REQUEST,))]
    lengths = partial(stun_lengths, start=3)
    return Harness(relayed + h.seeds, h.run, h.afterwards, lengths=lengths, check_every=1000)


# -- the daemon's control socket ------------------------------------------------------------

REGISTRAR = Endpoint.parse("203.0.113.10:3478")
OUR_MAPPING = Endpoint.parse("198.51.100.20:51820")


class ClientHarness:
    """The daemon's sans-IO RegistrarClient (mesh mode) on a float clock, fed what arrives on
    its control socket; the harness plays the registrar (opens what the client sends, so it
    knows the Watch and RosterQuery in flight; it wants one peer relayed). Input: flags | datagram (bit 0 clear) or
    plaintext sealed here with the registrar's real key (bit 0 set). Flags: bit 1 stamps a
    fresh timestamp, the Watch counter in flight (Status) and the RosterQuery's (Roster);
    bits 2-3 the STUN type; bit 4 adds WG-PUBLIC-KEY (bit 5: another key than the
    registrar's); bit 6 adds XOR-MAPPED-ADDRESS and SOFTWARE, as a real Status carries."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = random.Random(rng.random())
        self.registrar = sealed.Sealer(rng.randbytes(32))
        self.client = RegistrarClient(
            ClientConfig(roster=True),
            rng.randbytes(32),
            REGISTRAR,
            self.registrar.public_key,
            NOW,
            random.Random(rng.random()).randbytes,
            alt_port=ALT,
            name="fuzz",
        )
        self.client.set_addresses((Endpoint.parse("10.0.1.2:51820"),), NOW)
        self.client.set_interest([rng.randbytes(32) for _ in range(3)])
        wanted = rng.randbytes(32)
        self.client.want_relays([wanted], NOW)
        self.shared = self.registrar.shared_key(self.client.own_key) or b""
        self.other_key = rng.randbytes(32)
        self.counter_names = set(self.client.counters)
        self.now = NOW
        self.watch = self.register = self.query = self.counter = 0
        self.pump()
        ts = int(NOW * 1000)
        keys = [rng.randbytes(32) for _ in range(40)]
        book = RosterBook.of((k, (f"100.64.0.{i}/32", "fd00::/64")) for i, k in enumerate(keys))
        two = (OUR_MAPPING, Endpoint.parse("[2001:db8::2]:9"))
        relay = Endpoint.parse("203.0.113.10:50002")
        payloads: list[sealed.Payload] = [
            sealed.Status(ts, 1, self.watch, 2**62, (OUR_MAPPING,), NatKind.CONE, 5),
            sealed.Status(ts, 2, self.watch, 0, (), NatKind.UNKNOWN, 6, True, rng.randbytes(16)),
            sealed.Status(ts, 3, self.watch, 2**62, two, NatKind.SYMMETRIC, 7, True),
            sealed.Push(ts, 4, 8, tuple(keys[:3])),
            sealed.Roster(ts, 5, 0, book.version, len(book.members), 0, book.page(0)),
            sealed.Roster(ts, 6, 0, book.version, len(book.members), 11, book.page(11)),
            sealed.RelayGrant(ts, 7, wanted, RelayState.ALLOCATED, relay),
            sealed.RelayGrant(ts, 8, wanted, RelayState.READY, relay, True),
            sealed.RelayGrant(ts, 9, wanted, RelayState.RELEASED, None),
            sealed.RelayGrant(ts, 9, wanted, RelayState.REFUSED, None, False, RelayRefusal.OFF),
            *sample_payloads(rng, ts),
        ]
        self.seeds = []
        for p in payloads:
            plain = sealed.encode_payload(p, rng.randbytes(12))
            self.seeds += [bytes((flags,)) + plain for flags in (1, 3, 3 | 64, 3 | 16, 3 | 48, 7)]
            self.seeds.append(b"\0" + self.envelope(3 | 64, plain))

    def pump(self) -> list[object]:
        """Fire due timers, open what the client sends, drain its events (as the adapter)."""
        c = self.client
        for _ in range(8):
            if c.next_timer() > self.now:
                break
            c.handle_timer(self.now)
        for t in c.datagrams_to_send():
            try:
                _, p = sealed.open_sealed(self.registrar, stun.decode(t.data), None)
            except DecodeError as exc:
                raise Violation(f"the client sent what its registrar cannot open: {exc}") from None
            if isinstance(p, sealed.Watch):
                self.watch = p.counter
            elif isinstance(p, sealed.Register):
                self.register = p.counter
            elif isinstance(p, sealed.RosterQuery):
                self.query = p.counter
        return list(c.events())

    def envelope(self, flags: int, plain: bytes) -> bytes:
        plain = plain[:560]
        if flags & 2 and len(plain) >= 30:
            body = plain[30:]
            if plain[1] == Kind.STATUS and len(body) >= 8:
                body = struct.pack("!Q", self.watch) + body[8:]
            elif plain[1] == Kind.ROSTER and len(body) >= 8:
                body = struct.pack("!Q", self.query) + body[8:]
            plain = plain[:14] + struct.pack("!Q", int(self.now * 1000)) + plain[22:30] + body
        tid = own_tid(plain)
        attrs: list[tuple[int, bytes]] = [(SEALED, sealed.seal_box(self.shared, plain, bytes(24)))]
        if flags & 16:
            attrs.insert(0, (KEY, self.other_key if flags & 32 else self.registrar.public_key))
        if flags & 64:
            xor = (stun.ATTR_XOR_MAPPED_ADDRESS, stun.pack_xor_address(OUR_MAPPING, tid))
            attrs = [xor, *attrs, (stun.ATTR_SOFTWARE, b"wgmesh")]
        msg_type = (SUCCESS, INDICATION, SUCCESS, REQUEST)[(flags >> 2) & 3]
        return stun.encode(stun.StunMessage(msg_type, tid, tuple(attrs)))

    def run(self, data: bytes) -> bool:
        c = self.client
        self.now += 0.01
        flags = data[0] if data else 0
        datagram = self.envelope(flags, data[1:]) if flags & 1 else data[1:]
        dropped = c.counters["dropped"] + c.counters["late"]
        c.receive(datagram, self.now)
        self.pump()
        need(set(c.counters) == self.counter_names, "a counter appeared")
        need(len(c.roster._pending) <= MAX_MEMBERS + 255, "roster pages over MAX_MEMBERS")
        members = c.roster.members
        need(members is None or len(members) <= MAX_MEMBERS + 255, "a roster over MAX_MEMBERS")
        return c.counters["dropped"] + c.counters["late"] == dropped

    def afterwards(self) -> str:
        """Asked to probe, the client sends a Watch and accepts the valid Status to it."""
        c = self.client
        c.request_probe(self.now)
        for _ in range(200):
            if c.phase in (Phase.AWAIT_STATUS, Phase.AWAIT_CONFIRM, Phase.AWAIT_CLASSIFY):
                break
            self.now = max(self.now, c.next_timer())
            self.pump()
        else:
            return f"no Watch in flight after 200 timer steps (phase {c.phase})"
        self.counter = max(self.counter + 1, int(self.now * 1_000_000))
        status = sealed.Status(
            int(self.now * 1000),
            self.counter,
            self.watch,
            self.register,
            (OUR_MAPPING,),
            NatKind.CONE,
            5,
            True,
            bytes(16),
        )
        statuses = c.counters["status"]
        plain = sealed.encode_payload(status, self.rng.randbytes(12))
        c.receive(self.envelope(1 | 64, plain), self.now)
        events = self.pump()
        if c.counters["status"] != statuses + 1 or c.observed != (OUR_MAPPING,):
            return f"a valid Status was not accepted (counters {c.counters}, phase {c.phase})"
        if not any(isinstance(e, MappingObserved) for e in events):
            return "a valid Status was accepted but not reported"
        return ""


def make_client(rng: random.Random) -> Harness:
    h = ClientHarness(rng)
    lengths = partial(stun_lengths, start=1)
    return Harness(h.seeds, h.run, h.afterwards, lengths=lengths, max_len=700, check_every=5000)


def make_roster(rng: random.Random) -> Harness:
    """Roster pages (the plaintext: the box has opened) into the daemon's RosterSync."""
    sync = RosterSync()

    def run(data: bytes) -> bool:
        p = sealed.decode_payload(data, own_tid(data))
        if isinstance(p, sealed.Roster):
            if sync.wanted is None:
                sync.start()
            sync.receive(p)
        need(len(sync._pending) <= MAX_MEMBERS + 255, "roster pages over MAX_MEMBERS")
        need(sync.members is None or len(sync.members) <= MAX_MEMBERS + 255, "roster too large")
        return True

    keys = [rng.randbytes(32) for _ in range(40)]
    book = RosterBook.of(
        (k, (f"100.64.{i}.0/24", f"fd00:{i + 1:x}::/64")) for i, k in enumerate(keys)
    )
    seeds, offset = [], 0
    while offset < len(book.members):
        page = book.page(offset)
        roster = sealed.Roster(1, offset + 2, 1, book.version, len(book.members), offset, page)
        seeds.append(sealed.encode_payload(roster, rng.randbytes(12)))
        offset += len(page)
    seeds += [sealed.encode_payload(p, rng.randbytes(12)) for p in sample_payloads(rng, 1)[15:18]]
    return Harness(seeds, run, framed=payload_framed, max_len=600)


# -- DNS ------------------------------------------------------------------------------------


def zone_keys(rng: random.Random) -> list[bytes]:
    return [rng.randbytes(32) for _ in range(40)]


def build_zone(keys: list[bytes]) -> Zone:
    """40 peers: one with LAN and IPv6 candidates, one with nine, one IPv6-only, then plain."""
    config = ZoneConfig(
        "mesh.test.",
        ("ns1.mesh.test.", "ns.elsewhere.example."),
        "hostmaster.mesh.test.",
        ns_addresses=("203.0.113.10", "2001:db8::53"),
        cache_size=64,
        cache_bytes=64 * 1024,
        negative_cache_size=32,
    )
    zone = Zone(config)
    pub, lan, six = CandidateKind.PUBLIC, CandidateKind.LAN, CandidateKind.IPV6
    first = Candidate(Endpoint.parse("198.51.100.7:51820"), pub, 0)
    nine = tuple(Candidate(Endpoint.parse(f"10.0.{i}.7:51820"), lan, 10) for i in range(8))
    special = {
        0: (
            first,
            Candidate(Endpoint.parse("10.0.0.7:51820"), lan, 10),
            Candidate(Endpoint.parse("[2001:db8::7]:51821"), six, 5),
        ),
        2: (first, *nine),
        3: (Candidate(Endpoint.parse("[2001:db8::9]:4000"), pub, 0),),
    }
    for i, key in enumerate(keys):
        plain = (Candidate(Endpoint.parse(f"198.51.100.{i}:{1000 + i}"), pub, 0),)
        name = "\u00e5lice" if i == 4 else f"p{i}"
        allowed = ("100.64.0.1/32",) if i % 2 else ()
        zone.upsert(PublishedPeer(key, name, special.get(i, plain), allowed, NatKind.CONE, 1))
    return zone


def query(
    name: str,
    rdtype: str,
    qid: int,
    *,
    edns: int = -1,
    payload: int = 1232,
    dnssec: bool = False,
    options: list[dns.edns.Option] | None = None,
    rdclass: str = "IN",
    flags: int = dns.flags.RD,
) -> bytes:
    q = dns.message.make_query(
        name, rdtype, rdclass, edns, dnssec, None, payload, None, options, id=qid, flags=flags
    )
    return q.to_wire()


def dns_queries(keys: list[bytes], cookie: Callable[[bytes], bytes] | None = None) -> list[bytes]:
    """Every kind of question the zone answers, each without EDNS, with it, and with DO at
    4096; then EDNS options (cookies good and bad, padding, ECS, EDE, NSID), other opcodes,
    classes and versions, TSIG, two questions, a compressed name, no question, a response."""
    inst = [str(instance_name(k, ORIGIN)) for k in keys[:5]]
    service, apex = "_wireguard._udp.mesh.test.", "mesh.test."
    asked = [(inst[0], t) for t in ("SRV", "TXT", "A", "AAAA", "ANY")]
    asked += [("lan1." + inst[0], "A"), ("ipv62." + inst[0], "AAAA"), ("lan1." + inst[0], "AAAA")]
    asked += [(inst[2], "SRV"), (inst[3], "SRV"), (inst[3], "AAAA"), (inst[4], "TXT")]
    asked += [(service, "PTR"), (apex, "SOA"), (apex, "NS"), (apex, "ANY"), (apex, "AXFR")]
    asked += [("ns1." + apex, "A"), ("ns1." + apex, "AAAA"), (inst[1], "MX"), (apex, "IXFR")]
    asked += [("nope." + service, "SRV"), ("_udp." + apex, "A"), ("example.com.", "A")]
    asked += [(inst[0].upper(), "SRV")]
    out = []
    for i, (name, rdtype) in enumerate(asked):
        out.append(query(name, rdtype, i))
        out.append(query(name, rdtype, i, edns=0))
        out.append(query(name, rdtype, i, edns=0, payload=4096, dnssec=True))
    client = b"\x01" * 8
    server = cookie(client) if cookie is not None else b"s" * 16
    options: list[list[dns.edns.Option]] = [
        [dns.edns.CookieOption(client, b"")],
        [dns.edns.CookieOption(client, server)],
        [dns.edns.CookieOption(client, b"x" * 16)],
        [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345")],
        [dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(20))],
        [dns.edns.ECSOption("192.0.2.0", 24)],
        [dns.edns.EDEOption(dns.edns.EDECode.OTHER, "x")],
        [dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")],
    ]
    out += [query(inst[2], "SRV", 90, edns=0, options=o) for o in options]
    out += [query("version.bind.", "TXT", 91, rdclass="CH"), query(inst[0], "SRV", 92, edns=1)]
    out += [query(inst[0], "SRV", 93, flags=0), query(inst[0], "SRV", 94, flags=0x8400)]
    out += [query(apex, "SOA", 95, flags=opcode << 11) for opcode in (1, 2, 4, 5, 15)]
    signed = dns.message.make_query(inst[0], "SRV", id=96)
    signed.use_tsig(dns.tsigkeyring.from_text({"key.": "c2VjcmV0c2VjcmV0c2VjcmV0"}), "key.")
    tsig = bytearray(signed.to_wire())  # signed at time.time(): pin the time and the MAC
    at = tsig.rfind(b"\x0bhmac-sha256\x00") + 13
    mac = int.from_bytes(tsig[at + 8 : at + 10], "big")
    tsig[at : at + 6] = int(NOW).to_bytes(6, "big")
    tsig[at + 10 : at + 10 + mac] = bytes(mac)
    one = query(inst[0], "SRV", 97)
    two = one[:4] + b"\0\x02" + one[6:] + one[12:]
    pointer = one[:12] + b"\x03lan\xc0\x0c\x00\x01\x00\x01"  # a compressed name (into itself)
    return [*out, bytes(tsig), two, pointer, one[:4] + b"\0\0" + one[6:12]]


def dns_lengths(data: bytes, start: int = 1) -> list[int]:
    """The header's counts, then each record's RDLENGTH as far as the records can be walked."""
    out, pos, n = [start + 4, start + 6, start + 8, start + 10], start + 12, len(data)
    if n < start + 12:
        return out
    counts = struct.unpack_from("!HHHH", data, start + 4)
    for i in range(min(sum(counts), 40)):
        while pos < n and data[pos] and data[pos] & 0xC0 != 0xC0:
            pos += 1 + data[pos]
        pos += 2 if pos < n and data[pos] & 0xC0 == 0xC0 else 1
        if i < counts[0]:
            pos += 4
            continue
        if pos + 10 > n:
            break
        out.append(pos + 8)
        pos += 10 + int.from_bytes(data[pos + 8 : pos + 10], "big")
    return out


def dns_framed(rng: random.Random, names: list[bytes]) -> bytes:
    """A header, one question (sometimes none or two) of a name from the zone or random
    labels, and sometimes an OPT record with random options of every code dnspython knows."""
    if rng.random() < 0.7:
        name = rng.choice(names)
    else:
        words = (b"lan1", b"ipv62", b"_wireguard", b"_udp", b"mesh", b"test", b"NS1")
        labels = [rng.choice((*words, rng.randbytes(rng.randrange(64)))) for _ in range(6)]
        name = b"".join(bytes((len(x),)) + x for x in labels[: rng.randrange(7)]) + b"\0"
    qtype = rng.choice((1, 2, 6, 12, 15, 16, 28, 33, 41, 251, 252, 255, rng.randrange(65536)))
    qclass = rng.choice((1, 1, 1, 3, 255, rng.randrange(65536)))
    question = name + struct.pack("!HH", qtype, qclass)
    qd = rng.choice((1, 1, 1, 0, 2))
    opt, ar = b"", 0
    if rng.random() < 0.6:
        codes = [int(c) for c in dns.edns.OptionType] + [rng.randrange(65536)]
        opts = b""
        for _ in range(rng.randrange(4)):
            value = rng.randbytes(rng.choice((0, 2, 4, 8, 16, 24, 40, rng.randrange(64))))
            opts += struct.pack("!HH", rng.choice(codes), len(value)) + value
        size = rng.choice((0, 512, 1232, 4096, 65535))
        version, flags = rng.choice((0, 0, 1)), rng.choice((0, 0x8000))
        opt = b"\0" + struct.pack("!HHBBHH", 41, size, 0, version, flags, len(opts)) + opts
        ar = 1
    flags = rng.choice((0, 0x0100, rng.randrange(65536)))
    header = struct.pack("!HHHHHH", rng.randrange(65536), flags, qd, 0, 0, ar)
    return header + question * max(qd, 1) + opt


def question_names(keys: list[bytes]) -> list[bytes]:
    names = [instance_name(k, ORIGIN) for k in keys[:5]]
    names += [dns.name.from_text(f"{t}.{names[0]}") for t in ("lan1", "ipv62", "LAN1", "x")]
    texts = ("_wireguard._udp.mesh.test.", "mesh.test.", "ns1.mesh.test.", "_udp.mesh.test.")
    names += [dns.name.from_text(t) for t in (*texts, "x.org.")]
    return [n.to_wire() or b"" for n in names]


def check_answer(q: bytes, out: bytes, limit: int) -> None:
    need(out[:2] == q[:2], "the answer's id is not the query's")
    need(len(out) <= limit, f"an answer of {len(out)} bytes, over {limit}")
    try:
        m = dns.message.from_wire(out)
    except dns.exception.DNSException as exc:
        raise Violation(f"the answer does not parse: {exc!r}") from None
    need(bool(m.flags & dns.flags.QR), "an answer without QR")


def make_dns_zone(rng: random.Random) -> Harness:
    """Zone.answer over UDP and TCP. Input: flags (bit 0: TCP) | the query."""
    keys = zone_keys(rng)
    zone = build_zone(keys)
    cfg, names, queries = zone.config, question_names(keys), dns_queries(keys)
    seen = [0]

    def run(data: bytes) -> bool:
        tcp = bool(data[:1] and data[0] & 1)
        q = data[1:]
        out = zone.answer(q, tcp=tcp)
        cache = zone._cache
        need(len(cache) <= cfg.cache_size and cache.bytes <= cfg.cache_bytes, "cache over cap")
        need(cache.negative_count <= cfg.negative_cache_size, "negative cache over cap")
        seen[0] += 1
        if not seen[0] % 256:
            need(cache.indexed == len(cache), "the cache's subject index lost track")
        if out is None:
            return False
        no_edns = q[10:12] == b"\0\0"
        check_answer(q, out, 65535 if tcp else 512 if no_edns else cfg.max_udp)
        return True

    def afterwards() -> str:
        """Nothing asked before poisons the cache: a fresh zone answers alike."""
        fresh = build_zone(keys)
        for q in queries:
            for tcp in (False, True):
                if zone.answer(q, tcp=tcp) != fresh.answer(q, tcp=tcp):
                    return f"answers differ from a fresh zone's for {q.hex()} (tcp {tcp})"
        return ""

    def framed(r: random.Random) -> bytes:
        return bytes((r.randrange(2),)) + dns_framed(r, names)

    seeds = [bytes((t,)) + q for q in queries for t in (0, 1)]
    return Harness(seeds, run, afterwards, framed, dns_lengths, max_len=600, check_every=20000)


def guard_sources() -> list[bytes]:
    """64 packed addresses: IPv4 in a few /24s, IPv6 in a few /56s, IPv4-mapped."""
    out = []
    for i in range(64):
        if i % 4 == 0:
            out.append(bytes.fromhex(f"20010db8{i % 3:04x}{i:02x}00") + bytes(7) + bytes((i,)))
        elif i % 4 == 1:
            out.append(bytes(10) + b"\xff\xff" + bytes((198, 18, i % 2, i)))
        else:
            out.append(bytes((198, 18, i % 3, i)))
    return out


class GuardHarness:
    """The DNS server's policy (UdpGuard: rate limit, size cap, cookies) over the zone, as the
    adapter calls it (datagrams under 12 bytes dropped first). Input: flags (bit 0: TCP;
    bits 1-6: the source) | the query."""

    def __init__(self, rng: random.Random) -> None:
        self.keys = zone_keys(rng)
        self.zone, self.fresh_zone = build_zone(self.keys), build_zone(self.keys)
        self.config = RrlConfig(rate=50.0, burst=20.0, max_sources=32)
        self.guard = UdpGuard(self.config, self.zone.answer, max_udp=1232, secret=rng.randbytes(32))
        self.sources = guard_sources()
        self.now = NOW
        self.names = question_names(self.keys)
        self.seeds = []
        for i, source in enumerate(self.sources[:4]):
            made = dns_queries(self.keys, partial(self._cookie, address=source))
            self.seeds += [bytes((2 * i + t,)) + q for q in made for t in (0, 1)]

    def _cookie(self, client: bytes, address: bytes) -> bytes:
        assert self.guard.cookies is not None
        return self.guard.cookies.make(client, address, NOW)

    def framed(self, rng: random.Random) -> bytes:
        return bytes((rng.randrange(128),)) + dns_framed(rng, self.names)

    def run(self, data: bytes) -> bool:
        flags = data[0] if data else 0
        q = data[1:]
        self.now += 0.001
        if len(q) < 12:
            return False
        source = self.sources[(flags >> 1) % len(self.sources)]
        stats = self.guard.stats
        good = stats.cookie_good
        tcp = bool(flags & 1)
        out = self.guard.tcp(q, source, self.now) if tcp else self.guard.udp(q, source, self.now)
        limiter = self.guard.limiter
        need(limiter is None or len(limiter) <= self.config.max_sources, "RRL table over cap")
        if out is None:
            return False
        if tcp:
            limit = 65535
        elif q[10:12] == b"\0\0":
            limit = 512
        elif stats.cookie_good > good:
            limit = 1232
        else:
            limit = max(512, 2 * len(q)) + COOKIE_OPTION
        check_answer(q, out, limit)
        return True

    def afterwards(self) -> str:
        """From a fresh source: a plain query answered as a fresh zone answers it, and a cookie
        exchange that proves the source."""
        address = bytes((203, 0, 113, 250))
        name = str(instance_name(self.keys[0], ORIGIN))
        plain = query(name, "SRV", 7)
        if self.guard.udp(plain, address, self.now) != self.fresh_zone.answer(plain, tcp=False):
            return "a plain SRV query is not answered as a fresh zone answers it"
        ask: list[dns.edns.Option] = [dns.edns.CookieOption(b"c" * 8, b"")]
        first = self.guard.udp(query(name, "SRV", 8, edns=0, options=ask), address, self.now)
        if first is None:
            return "a query with a client cookie got no answer"
        m = dns.message.from_wire(first)
        cookies = [o for o in m.options if isinstance(o, dns.edns.CookieOption)]
        if not m.answer or not cookies or not cookies[0].server:
            return "a query with a client cookie got no server cookie"
        good = self.guard.stats.cookie_good
        echo: list[dns.edns.Option] = [dns.edns.CookieOption(b"c" * 8, cookies[0].server)]
        again = self.guard.udp(query(name, "SRV", 9, edns=0, options=echo), address, self.now)
        if again is None or not dns.message.from_wire(again).answer:
            return "a query echoing its server cookie got no answer"
        if self.guard.stats.cookie_good != good + 1:
            return "a valid server cookie was not recognised"
        return ""


def make_dns_guard(rng: random.Random) -> Harness:
    h = GuardHarness(rng)
    return Harness(
        h.seeds, h.run, h.afterwards, h.framed, dns_lengths, max_len=600, check_every=20000
    )


def make_records(rng: random.Random) -> Harness:
    """The daemon's reading of DNS answers: dnspython's from_wire (its DNSException is what the
    resolver turns into RemoteProtocolError), then wgmesh.proto.records on the message: the
    answer to the question it names, missing targets and TXT merged from it, the record, the
    browse keys, the cookie option."""
    keys = zone_keys(rng)
    zone, default = build_zone(keys), instance_name(keys[0], ORIGIN)

    def run(data: bytes) -> bool:
        try:
            m = dns.message.from_wire(data)
        except dns.exception.DNSException as exc:
            raise RemoteProtocolError(f"DNS answer: {exc}") from None
        for option in m.options:
            if isinstance(option, dns.edns.CookieOption):
                need(len(option.client) == 8, "a cookie option with a bad client cookie")
        name = m.question[0].name if m.question else default
        found = browse_keys(m)
        need(all(len(k) == 32 for k in found), "a browse key that is not 32 bytes")
        answer = read_srv_answer(name, m)
        if answer is None:
            return True
        for target in answer.missing_targets:
            answer = answer.with_addresses(target, (m,))
        if answer.txt is None:
            answer = answer.with_txt(m)
        key = label_key(name.labels[0].lower()) if name.labels else None
        record = peer_record(key or keys[0], answer)
        for h in record.hints:
            need(isinstance(h.kind, CandidateKind), "a hint of no kind")
            ip = h.endpoint.ip
            need(isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address), f"a hint at {ip!r}")
        return True

    guard = UdpGuard(RrlConfig(rate=0), zone.answer, max_udp=1232, secret=rng.randbytes(32))
    seeds = []
    for q in dns_queries(keys):
        for a in (zone.answer(q, tcp=False), zone.answer(q, tcp=True), guard.udp(q, bytes(4), NOW)):
            seeds += [a] if a else []
    r = dns.message.make_response(dns.message.make_query(default, "SRV", id=5))
    r.answer.append(dns.rrset.from_text(default, 5, "IN", "SRV", f"0 0 1 {default}"))
    r.additional.append(dns.rrset.from_text(default, 5, "IN", "TXT", '"pub=AAAA" "nat=odd"'))
    seeds.append(r.to_wire())
    for rcode, flags in ((dns.rcode.SERVFAIL, 0), (dns.rcode.NOERROR, dns.flags.TC)):
        r.set_rcode(rcode)
        r.flags |= flags
        seeds.append(r.to_wire())
    return Harness(seeds, run, lengths=lambda d: dns_lengths(d, 0), max_len=1232)


# -- the table ------------------------------------------------------------------------------

TARGETS: dict[str, Target] = {
    "stun": Target(make_stun, (DecodeError,), "stun.decode, every attribute unpacker, re-encode"),
    "stun_fast": Target(make_stun_fast, (), "batched path: PlainBindingResponder, RFC 3489"),
    "sealed_payload": Target(make_sealed_payload, (DecodeError,), "decode_payload, canonical"),
    "sealed_open": Target(make_sealed_open, (DecodeError,), "stun.decode + open_sealed, junk"),
    "registry": Target(make_registry, (), "Registry: fast path, receive, expire, caps"),
    "relay": Target(make_relay, (), "relay messages: RelayRequest/RelayBind into the Registry"),
    "client": Target(make_client, (), "control messages: RegistrarClient.receive"),
    "roster": Target(make_roster, (DecodeError,), "Roster pages into the daemon's RosterSync"),
    "dns_zone": Target(make_dns_zone, (), "DNS queries: Zone.answer (dnswire, dnssd)"),
    "dns_guard": Target(make_dns_guard, (RemoteProtocolError,), "UdpGuard: RRL, cap, cookies"),
    "records": Target(make_records, (RemoteProtocolError,), "DNS answers: from_wire + records"),
}
"""Name -> target. A new parser is one more entry: a ``make`` building its Harness (seeds from
the real encoder, ``run``, and ``afterwards`` for a server), and the exceptions its contract
allows. (Issue 11 asked for relay messages once they existed: they are the ``relay`` entry.)"""


# -- running --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One worker's share of one target."""

    target: str
    seed: int
    worker: int
    count: int
    seconds: float | None


@dataclass(slots=True)
class Result:
    """What one worker (or, merged, all of them) saw on one target."""

    ran: int = 0
    accepted: int = 0
    rejected: int = 0
    dropped: int = 0
    failed: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)
    """(input hex, traceback) of the first failures."""
    reasons: Counter[str] = field(default_factory=Counter)
    made: Counter[str] = field(default_factory=Counter)
    by_time: bool = False
    afterwards: str | None = None
    """None: not a server target; '': a valid request was answered at every check."""
    checks: int = 0

    def merge(self, other: Result) -> None:
        for name in ("ran", "accepted", "rejected", "dropped", "failed", "checks"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples += other.examples[: max(0, 3 - len(self.examples))]
        self.reasons += other.reasons
        self.made += other.made
        self.by_time |= other.by_time
        if other.afterwards is not None and not self.afterwards:
            self.afterwards = other.afterwards


def reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {re.sub(r'[0-9]+', 'N', str(exc))[:70]}"


def check(harness: Harness, res: Result) -> None:
    assert harness.afterwards is not None
    res.checks += 1
    try:
        why = harness.afterwards()
    except Exception:
        why = "raised:\n" + traceback.format_exc()
    if why and not res.afterwards:
        res.afterwards = f"after {res.ran} inputs: {why}"


def work(job: Job) -> Result:
    target = TARGETS[job.target]
    harness = target.make(random.Random(f"{job.seed}:{job.target}:setup"))
    inputs = Inputs(random.Random(f"{job.seed}:{job.target}:{job.worker}"), harness)
    res = Result(afterwards=None if harness.afterwards is None else "")
    deadline = None if job.seconds is None else time.monotonic() + job.seconds
    allowed, run, every = target.allowed, harness.run, harness.check_every
    for i in range(job.count):
        if deadline is not None and not i % 64 and time.monotonic() > deadline:
            res.by_time = True
            break
        data = inputs.next()
        try:
            ok = run(data)
        except allowed as exc:
            res.rejected += 1
            why = reason(exc)
            if why in res.reasons or len(res.reasons) < 300:  # the first 300 kinds, counted
                res.reasons[why] += 1
        except Exception:
            res.failed += 1
            if len(res.examples) < 3:
                res.examples.append((data.hex(), traceback.format_exc()))
        else:
            res.accepted += ok
            res.dropped += not ok
        res.ran += 1
        if harness.afterwards is not None and not res.ran % every:
            check(harness, res)
    if harness.afterwards is not None:
        check(harness, res)
    res.made = inputs.made
    return res


def replay(names: list[str], seed: int, data: bytes) -> int:
    for name in names:
        target = TARGETS[name]
        harness = target.make(random.Random(f"{seed}:{name}:setup"))
        try:
            print(f"{name}: {'accepted' if harness.run(data) else 'dropped'}")
        except target.allowed as exc:
            print(f"{name}: rejected: {exc!r}")
        except Exception:
            print(f"{name}: FAILED\n{traceback.format_exc()}")
            return 1
    return 0


def epilog() -> str:
    rows = "\n".join(f"  {n:15} {t.what}" for n, t in TARGETS.items())
    return (
        "targets: the table TARGETS at the end of this file; a new parser is one more entry "
        f"there (relay messages, once they existed, became 'relay'):\n{rows}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=11, help="base seed (default 11)")
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--target", action="append", choices=list(TARGETS), help="repeatable")
    ap.add_argument("--seconds", type=float, help="time cap per target (default: none)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="default: CPUs")
    ap.add_argument("--replay", metavar="HEX", help="run one input on fresh harnesses")
    ap.add_argument("-v", "--verbose", action="store_true", help="input mix, top rejections")
    args = ap.parse_args()
    if args.count < 1 or args.workers < 1 or (args.seconds is not None and args.seconds <= 0):
        ap.error("--count, --workers and --seconds must be positive")
    names = args.target or list(TARGETS)
    if args.replay:
        return replay(names, args.seed, bytes.fromhex(args.replay))
    print(
        f"seed {args.seed}, {args.count} inputs per target, {args.workers} workers, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        flush=True,
    )
    header = (
        f"{'target':15}{'inputs':>10} {'stop':5}{'accepted':>10}{'rejected':>10}"
        f"{'dropped':>10}{'other':>7}{'inputs/s':>10}  answers afterwards"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    pool = None
    if args.workers > 1:
        pool = ProcessPoolExecutor(args.workers, mp_context=get_context("fork"))
    totals: dict[str, Result] = {}
    start = time.perf_counter()
    try:
        for name in names:
            share, extra = divmod(args.count, args.workers)
            shares = [share + (w < extra) for w in range(args.workers)]
            jobs = [Job(name, args.seed, w, n, args.seconds) for w, n in enumerate(shares) if n]
            t0 = time.perf_counter()
            parts = list(pool.map(work, jobs)) if pool else [work(j) for j in jobs]
            wall = time.perf_counter() - t0
            total = Result(afterwards=parts[0].afterwards)
            for part in parts:
                total.merge(part)
            totals[name] = total
            after = "n/a" if total.afterwards is None else "NO" if total.afterwards else "yes"
            stop = "time" if total.by_time else "count"
            print(
                f"{name:15}{total.ran:>10} {stop:5}{total.accepted:>10}{total.rejected:>10}"
                f"{total.dropped:>10}{total.failed:>7}{total.ran / wall:>10.0f}  {after}",
                flush=True,
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(
        f"\nwall time {time.perf_counter() - start:.1f} s. rejected: the target's allowed "
        "errors; dropped: nothing returned (counted by the server); other must be 0."
    )
    for name, total in totals.items():
        allowed = ", ".join(e.__name__ for e in TARGETS[name].allowed) or "nothing"
        print(f"  {name}: allowed {allowed}; {total.checks} checks afterwards")
        if args.verbose:
            print(f"    inputs: {dict(total.made)}")
            for text, n in total.reasons.most_common(8):
                print(f"    {n:>9}  {text}")
    clean = True
    for name, total in totals.items():
        if total.afterwards:
            clean = False
            print(f"\n{name}: does NOT answer a valid request afterwards: {total.afterwards}")
        if total.failed:
            clean = False
            print(f"\n{name}: {total.failed} inputs raised or broke an invariant; the first:")
            for data, tb in total.examples:
                print(f"  input {data}\n{tb}")
    print("\nclean" if clean else "\nNOT CLEAN")
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
