"""The registrar's per-peer state packed into one ``bytes`` (a row), and its watchers' likewise.

A :class:`~wgmesh.proto.registry.PeerEntry` built of ``Endpoint``/``ipaddress`` objects, floats
and ints costs ~700 bytes; the same fields packed cost ~110, so the registrar holds a million
peers in well under a kilobyte each (bench/registrar_memory.py). The registry unpacks a row into
a ``PeerEntry`` only where it needs one (events, Status, admission changes); a refresh, the
common case, is checked and rewritten in packed form (:func:`refresh`). The layout is known only
here: the registry reads rows through :func:`unpack_row`, :func:`refresh`,
:func:`register_counter` and :func:`last_seen`, and watchers through :func:`watcher_of_row`,
:func:`watch_part` and :func:`unpack_watcher`.

Row layout (:data:`ROW`, little-endian, then four variable parts)::

    last_seen f64 | since f64 | register_counter u64 | watch_counter u64 | nat u8 |
    len(seen) u16 | len(secondary) u8 | len(other) u8 | len(watch) u8 | shared 32 bytes |
    seen | secondary | other | watch | software (the rest: its code, see below)

A peer has one or two observed mappings (at most one per address family, IPv4 first). The
first, ``mappings[0]`` (the published public one), is in ``seen``; ``last_seen`` is when it was
last registered. ``seen`` (:func:`pack_seen`) is what a refresh of that mapping must match for
nothing published to change: the mapping, the reported addresses and the published name.
``secondary`` is what the alternate port saw for the first mapping's family: empty when nothing
since that mapping last changed, :data:`SAME` when it saw the mapping itself (a cone NAT, the
common case: no copy), else that mapping (:func:`pack_endpoint`).

``other`` is empty for a peer with one mapping (so an IPv4-only peer costs one byte more than a
single-mapping layout would), else the second mapping (the IPv6 one, beside an IPv4 one)::

    last registered f64 | mapping (pack_endpoint) | secondary of its family (as above, the rest)

``watch`` is empty unless the peer is also a watcher (its daemon's control socket proved it
receives, wgmesh.proto.registry), else :func:`pack_watch`: when its last Watch was accepted and
the control address pushes go to (``last_watch f64 | address``). A watcher's Watch counter is
the row's ``watch_counter`` and its shared key the row's: the same peer key, the same X25519.
Kept in the row, a watcher costs 15 or 27 bytes, where a record of its own in a second table
cost ~280 (the record, its own copy of the key, the table's entry, the fan-out's); a watcher
with no row (its Registers have not arrived, or stopped) keeps a record of its own
(:func:`pack_watcher`), and moves into the row when one is written.

``software`` is one byte: the code of the peer's software string in a table of this module,
shared by every row of the process (a mesh runs a handful of versions: a million rows hold a
few distinct strings, 12 bytes each inline, and the 11 bytes saved take a row from 144 allocated
bytes to 128). Codes are given first come, first served, up to :data:`SOFTWARE_CODES` strings
of at most 32 bytes (what a Register can carry), and never reused, so a row means the same for
the life of the process; rows never leave it (the store keeps the string). Once the table is
full, a new string is written out after a zero code (``0 | software``): more bytes, nothing
lost.

``shared`` is the peer's NaCl shared key with the registrar (``crypto_box_beforenm``: X25519 of
our private key and its public key), stored only once a box from the peer opened with it, so a
refresh opens its box without the ~80 us X25519 step; :data:`NO_KEY` until then (a row restored
after a restart without a stored key: wgmesh.proto.keywrap). A watcher keeps its shared key the
same way, for its Status answers and pushes.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind

ROW = struct.Struct("<ddQQBHBBB32s")
"""The fixed head of a row: last_seen, since, counters, NAT class, lengths of seen, secondary,
other and watch, shared key."""
SHARED_AT = ROW.size - 32
"""Offset of the shared key in a row."""
WATCHER = struct.Struct("<dQ32s")
"""A watcher with no row: last Watch time, Watch counter and shared key, then the control
address (pack_endpoint)."""
WATCHER_SHARED_AT = WATCHER.size - 32
"""Offset of the shared key in a watcher."""
NO_KEY = bytes(32)
"""The shared-key field of a row with no key yet. A real shared key is all zeros with chance
2**-256, and then it is only ever recomputed, never used from the row: still correct."""
SAME = b"\x00"
"""A ``secondary`` part when the alternate port saw the same family's mapping itself."""
SOFTWARE_CODES = 255
"""How many distinct software strings get a one-byte code (see the module docstring)."""
_SOFTWARE: list[bytes] = [b""]
"""Software strings by code; code 0 is "written out after the code"."""
_SOFTWARE_CODE: dict[bytes, bytes] = {}
"""Each coded software string's code, as the one byte a row holds."""
NATS = tuple(NatKind)
"""NAT classes by their code in a row."""
NAT_CODES = {nat: i for i, nat in enumerate(NATS)}
"""Row code of each NAT class."""
_PORT = struct.Struct("!H")
_TIME = struct.Struct("<d")
_COUNTER_AT = 16
_COUNTER = struct.Struct("<Q")
_WATCH_LEN_AT = SHARED_AT - 1
_PARTS_AT = _WATCH_LEN_AT - 4
_PARTS = struct.Struct("<H")
"""len(seen), at :data:`_PARTS_AT`; len(secondary) and len(other) follow, a byte each."""


class Unpacked(NamedTuple):
    """Everything a row holds but the shared key, as values (:func:`unpack_row`). A NamedTuple,
    not a frozen dataclass: it is built on every Watch, and a tuple is built several times
    faster."""

    mappings: tuple[Endpoint, ...]
    """The observed mappings, at most one per family, IPv4 first."""
    refreshed: tuple[float, ...]
    """When each mapping was last registered."""
    addresses: tuple[Endpoint, ...]
    """The addresses the peer reported."""
    name: str
    """The published name."""
    nat: NatKind
    """The published NAT class."""
    since: float
    """When the first mapping was first observed at its current value."""
    register_counter: int
    """Highest accepted Register counter."""
    watch_counter: int
    """Highest accepted Watch counter."""
    software: str
    """The peer's software."""
    secondary: tuple[Endpoint, ...]
    """What the alternate port saw, at most one per family, IPv4 first."""


def pack_endpoint(ep: Endpoint) -> bytes:
    """``len(ip) | ip | port``: 7 bytes for IPv4, 19 for IPv6."""
    ip = ep.ip.packed
    return bytes((len(ip),)) + ip + _PORT.pack(ep.port)


def unpack_endpoint(data: bytes, pos: int = 0) -> tuple[Endpoint, int]:
    """The endpoint packed at ``pos`` and the offset just past it."""
    n = data[pos]
    raw = data[pos + 1 : pos + 1 + n]
    ip = ipaddress.IPv4Address(raw) if n == 4 else ipaddress.IPv6Address(raw)
    return Endpoint(ip, _PORT.unpack_from(data, pos + 1 + n)[0]), pos + 3 + n


def pack_seen(mapping: Endpoint, addresses: tuple[Endpoint, ...], name: str) -> bytes:
    """``len(addresses) u8 | mapping | addresses | name``, the packed endpoints as above: what a
    refresh of ``mapping`` from a row with the same ``seen`` leaves unchanged."""
    parts = [bytes((len(addresses),)), pack_endpoint(mapping)]
    parts += map(pack_endpoint, addresses)
    parts.append(name.encode())
    return b"".join(parts)


def unpack_seen(seen: bytes) -> tuple[Endpoint, tuple[Endpoint, ...], str]:
    """Inverse of :func:`pack_seen`."""
    mapping, pos = unpack_endpoint(seen, 1)
    addresses = []
    for _ in range(seen[0]):
        ep, pos = unpack_endpoint(seen, pos)
        addresses.append(ep)
    return mapping, tuple(addresses), seen[pos:].decode()


def _pack_software(software: bytes) -> bytes:
    """A row's software part for ``software`` (UTF-8): its code, given now if it has none and
    the table has room, else ``0 | software``."""
    code = _SOFTWARE_CODE.get(software)
    if code is not None:
        return code
    if len(_SOFTWARE) > SOFTWARE_CODES:
        return b"\x00" + software
    code = bytes((len(_SOFTWARE),))
    _SOFTWARE.append(software)
    _SOFTWARE_CODE[software] = code
    return code


def _unpack_software(part: bytes) -> str:
    """Inverse of :func:`_pack_software`."""
    return (_SOFTWARE[part[0]] if part[0] else part[1:]).decode()


def _pack_secondary(secondary: tuple[Endpoint, ...], mapping: Endpoint) -> bytes:
    for ep in secondary:
        if ep.ip.version == mapping.ip.version:
            return SAME if ep == mapping else pack_endpoint(ep)
    return b""


def _unpack_secondary(packed: bytes, mapping: Endpoint) -> tuple[Endpoint, ...]:
    if not packed:
        return ()
    return (mapping,) if packed == SAME else (unpack_endpoint(packed)[0],)


def pack_row(
    mappings: tuple[Endpoint, ...],
    refreshed: tuple[float, ...],
    addresses: tuple[Endpoint, ...],
    name: str,
    nat: NatKind,
    since: float,
    register_counter: int,
    watch_counter: int,
    software: str,
    secondary: tuple[Endpoint, ...],
    shared: bytes,
    watch: bytes = b"",
) -> bytes:
    """A whole row (see the module docstring). ``mappings``: one or two, at most one per family,
    IPv4 first; ``refreshed`` parallel to it; ``secondary``: at most one per family (one of a
    family with no mapping is left out); ``watch``: :func:`pack_watch`, or empty (not a
    watcher). Raises ValueError for anything else, struct.error for a number out of range."""
    families = [ep.ip.version for ep in mappings]
    if families not in ([4], [6], [4, 6]) or len(refreshed) != len(mappings):
        raise ValueError(f"not one mapping per family, IPv4 first: {mappings}")
    seen = pack_seen(mappings[0], addresses, name)
    first = _pack_secondary(secondary, mappings[0])
    other = b""
    if len(mappings) == 2:
        other = b"".join((_TIME.pack(refreshed[1]), pack_endpoint(mappings[1]),
                          _pack_secondary(secondary, mappings[1])))  # fmt: skip
    head = ROW.pack(refreshed[0], since, register_counter, watch_counter, NAT_CODES[nat],
                    len(seen), len(first), len(other), len(watch), shared)  # fmt: skip
    return b"".join((head, seen, first, other, watch, _pack_software(software.encode())))


def register_counter(row: bytes) -> int:
    """The highest accepted Register counter of a row (its replay floor)."""
    counter: int = _COUNTER.unpack_from(row, _COUNTER_AT)[0]
    return counter


def with_watch_counter(row: bytes, counter: int) -> bytes:
    """The row with ``counter`` for its Watch counter (an accepted Watch changes nothing else
    of the row)."""
    at = _COUNTER_AT + 8
    return b"".join((row[:at], _COUNTER.pack(counter), row[at + 8 :]))


Renewed = tuple[bytes, bytes, int, int]
"""What :func:`renewed_watch` gives: the new row, the observed mappings as a Status carries them,
the Register counter and the NAT class's row code (:data:`NATS`). A plain tuple: this is the
hot path of the registrar's Watches."""
_WIRE_FAMILY = {4: b"\x04", 16: b"\x06"}
"""A packed endpoint's length byte -> a wire address's family byte."""
_V4_MAPPED = bytes(10) + b"\xff\xff"


def renewed_watch(
    row: bytes, address: bytes, now: float, counter: int, stale_before: float
) -> Renewed | None:
    """For an accepted Watch from ``address`` (:func:`pack_endpoint`) with ``counter``, when
    the row's watcher is at that address and none of its mappings was last registered before
    ``stale_before``: the row with the Watch counter ``counter`` and the last Watch ``now``
    (what the registry's full path writes then), and what the Status answering it reports
    (:data:`Renewed`; the observed mappings as their count, then each as family 4 or 6,
    address, port: a packed endpoint but for its first byte). None in every other case (the
    full path judges it), and for an IPv4-mapped IPv6 mapping, which a Status carries as IPv4."""
    (first_seen, _, register, _, nat, seen_len, secondary_len, other_len, watch_len,
     _) = ROW.unpack_from(row)  # fmt: skip
    at = ROW.size + seen_len + secondary_len  # the other mapping's part, then the watch part
    watch_at = at + other_len
    if (
        not watch_len
        or first_seen < stale_before
        or row[watch_at + _TIME.size : watch_at + watch_len] != address
    ):
        return None
    n = row[ROW.size + 1]
    first = row[ROW.size + 2 : ROW.size + 4 + n]
    if n == 16 and first.startswith(_V4_MAPPED):
        return None
    observed = [b"\x01" + _WIRE_FAMILY[n], first]
    if other_len:
        if _TIME.unpack_from(row, at)[0] < stale_before:
            return None
        m = row[at + _TIME.size]
        second = row[at + _TIME.size + 1 : at + _TIME.size + 3 + m]
        if m == 16 and second.startswith(_V4_MAPPED):
            return None
        observed = [b"\x02" + _WIRE_FAMILY[n], first, _WIRE_FAMILY[m], second]
    new = b"".join((row[: _COUNTER_AT + 8], _COUNTER.pack(counter),
                    row[_COUNTER_AT + 16 : watch_at], _TIME.pack(now),
                    row[watch_at + _TIME.size :]))  # fmt: skip
    return new, b"".join(observed), register, nat


def row_watch_counter(row: bytes) -> int:
    """The highest accepted Watch counter of a row (the Watch replay floor)."""
    counter: int = _COUNTER.unpack_from(row, _COUNTER_AT + 8)[0]
    return counter


def last_seen(row: bytes) -> float:
    """When any mapping of the row was last registered: the registry keeps its rows in this
    order."""
    first, _, _, _, _, seen_len, secondary_len, other_len, _, _ = ROW.unpack_from(row)
    when: float = first
    if other_len:
        when = max(when, _TIME.unpack_from(row, ROW.size + seen_len + secondary_len)[0])
    return when


def without_key(row: bytes) -> bytes:
    """The row with :data:`NO_KEY` for its shared key (what leaves the registry in events:
    shared keys never do)."""
    return b"".join((row[:SHARED_AT], NO_KEY, row[SHARED_AT + 32 :]))


def refreshed_fields(row: bytes) -> tuple[tuple[float, ...], int, str]:
    """What a refresh changes in a row: when each mapping was last registered, the Register
    counter and the software (the store's update after a refresh, without :func:`unpack_row`)."""
    first, _, counter, _, _, seen_len, secondary_len, other_len, watch_len, _ = ROW.unpack_from(row)
    at = ROW.size + seen_len + secondary_len
    software = _unpack_software(row[at + other_len + watch_len :])
    if not other_len:
        return (first,), counter, software
    return (first, _TIME.unpack_from(row, at)[0]), counter, software


def unpack_row(row: bytes) -> Unpacked:
    """The values a row holds (see :func:`pack_row`)."""
    (first_seen, since, counter, watch_counter, nat, seen_len, secondary_len, other_len,
     watch_len, _) = ROW.unpack_from(row)  # fmt: skip
    pos = ROW.size + seen_len
    first, addresses, name = unpack_seen(row[ROW.size : pos])
    mappings: tuple[Endpoint, ...] = (first,)
    refreshed: tuple[float, ...] = (first_seen,)
    secondary = _unpack_secondary(row[pos : pos + secondary_len], first)
    pos += secondary_len
    if other_len:
        other = row[pos : pos + other_len]
        second, after = unpack_endpoint(other, _TIME.size)
        mappings, refreshed = (first, second), (first_seen, _TIME.unpack_from(other)[0])
        secondary += _unpack_secondary(other[after:], second)
    software = _unpack_software(row[pos + other_len + watch_len :])
    return Unpacked(mappings, refreshed, addresses, name, NATS[nat], since, counter,
                    watch_counter, software, secondary)  # fmt: skip


Refreshed = tuple[
    bytes, float, int, NatKind, tuple[Endpoint, ...], tuple[float, ...], tuple[Endpoint, ...]
]
"""What :func:`refresh` gives: the new row, then what an event about it needs beyond the
registration itself: ``since``, the Watch counter, the NAT class, the mappings, their times and
the alternate port's observations (as :class:`Unpacked` has them). A plain tuple: this is the
hot path of the registrar."""


def refresh(
    row: bytes,
    mapping: Endpoint,
    addresses: tuple[Endpoint, ...],
    name: str,
    now: float,
    counter: int,
    software: str,
    shared: bytes,
    stale_before: float,
) -> Refreshed | None:
    """The row after a registration from ``mapping`` that changes nothing published, or None
    when the registration must be judged in full: ``mapping`` is neither of the row's mappings,
    the reported ``addresses`` or the published ``name`` differ, or the row's other mapping was
    last registered before ``stale_before`` (it is to be dropped). ``counter``: the new
    Register counter; ``shared``: the key its box opened with."""
    seen = pack_seen(mapping, addresses, name)
    return refresh_seen(row, seen, mapping, now, counter, software.encode(), shared, stale_before)


def refresh_seen(
    row: bytes,
    seen: bytes,
    mapping: Endpoint,
    now: float,
    counter: int,
    software: bytes,
    shared: bytes,
    stale_before: float,
) -> Refreshed | None:
    """:func:`refresh` with the registration's ``seen`` packed already (:func:`pack_seen` of
    ``mapping``, the addresses and the name; the registrar's fast path builds it from the
    payload's bytes, wgmesh.proto.refresh) and ``software`` encoded."""
    (first_seen, since, _, watch_counter, nat, seen_len, secondary_len, other_len, watch_len,
     _) = ROW.unpack_from(row)  # fmt: skip
    at = ROW.size + seen_len
    other_at = at + secondary_len
    end = other_at + other_len  # the watch part follows, kept as it is
    if seen_len == len(seen) and row.startswith(seen, ROW.size):  # the first mapping
        if other_len and _TIME.unpack_from(row, other_at)[0] < stale_before:
            return None
        new = b"".join((
            ROW.pack(now, since, counter, watch_counter, nat, seen_len, secondary_len, other_len,
                     watch_len, shared),
            seen, row[at : end + watch_len], _pack_software(software),
        ))  # fmt: skip
        secondary = _unpack_secondary(row[at:other_at], mapping)
        if not other_len:
            return new, since, watch_counter, NATS[nat], (mapping,), (now,), secondary
        other = row[other_at:end]
        second, after = unpack_endpoint(other, _TIME.size)
        secondary += _unpack_secondary(other[after:], second)
        refreshed = (now, _TIME.unpack_from(other)[0])
        return new, since, watch_counter, NATS[nat], (mapping, second), refreshed, secondary
    if not other_len or first_seen < stale_before:
        return None
    # the second mapping: its packed endpoint heads ``other`` after the time, and the rest of
    # ``seen`` (the addresses and the name, after the first mapping) must be the same
    packed = seen[1 : 4 + seen[1]]
    rest = ROW.size + 4 + row[ROW.size + 1]
    if (
        not row.startswith(packed, other_at + _TIME.size)
        or row[ROW.size] != seen[0]
        or at - rest != len(seen) - 1 - len(packed)
        or not row.startswith(seen[1 + len(packed) :], rest)
    ):
        return None
    first = unpack_endpoint(row, ROW.size + 1)[0]
    secondary = _unpack_secondary(row[at:other_at], first)
    secondary += _unpack_secondary(row[other_at + _TIME.size + len(packed) : end], mapping)
    new = b"".join((
        ROW.pack(first_seen, since, counter, watch_counter, nat, seen_len, secondary_len,
                 other_len, watch_len, shared),
        row[ROW.size : other_at], _TIME.pack(now), row[other_at + _TIME.size : end + watch_len],
        _pack_software(software),
    ))  # fmt: skip
    mappings = (first, mapping)
    return new, since, watch_counter, NATS[nat], mappings, (first_seen, now), secondary


class Watcher(NamedTuple):
    """A watcher, unpacked from its row (:func:`watcher_of_row`) or its own record
    (:func:`unpack_watcher`)."""

    last_watch: float
    """When its last Watch was accepted."""
    watch_counter: int
    """Highest accepted Watch counter."""
    shared: bytes
    """The shared key its Watches opened with."""
    address: Endpoint
    """Its control socket's address, where pushes go."""


def pack_watch(last_watch: float, address: Endpoint) -> bytes:
    """A row's watch part: ``last_watch f64 | address`` (:func:`pack_endpoint`)."""
    return _TIME.pack(last_watch) + pack_endpoint(address)


def watch_part(row: bytes) -> bytes:
    """The row's watch part (:func:`pack_watch`), empty when the peer is not a watcher."""
    n = row[_WATCH_LEN_AT]
    if not n:
        return b""
    at = ROW.size + _PARTS.unpack_from(row, _PARTS_AT)[0] + row[_PARTS_AT + 2] + row[_PARTS_AT + 3]
    return row[at : at + n]


def is_watching(row: bytes) -> bool:
    """The row has a watch part."""
    return row[_WATCH_LEN_AT] != 0


def with_watch(row: bytes, watch: bytes) -> bytes:
    """The row with ``watch`` (:func:`pack_watch`, or empty) for its watch part."""
    n = row[_WATCH_LEN_AT]
    at = ROW.size + _PARTS.unpack_from(row, _PARTS_AT)[0] + row[_PARTS_AT + 2] + row[_PARTS_AT + 3]
    return b"".join((row[:_WATCH_LEN_AT], bytes((len(watch),)), row[_WATCH_LEN_AT + 1 : at],
                     watch, row[at + n :]))  # fmt: skip


def watcher_of_row(row: bytes) -> Watcher | None:
    """The watcher a row holds, None when it holds none."""
    part = watch_part(row)
    if not part:
        return None
    when: float = _TIME.unpack_from(part)[0]
    return Watcher(when, row_watch_counter(row), row[SHARED_AT : SHARED_AT + 32],
                   unpack_endpoint(part, _TIME.size)[0])  # fmt: skip


def pack_watcher(last_watch: float, watch_counter: int, shared: bytes, address: Endpoint) -> bytes:
    """The record of a watcher with no row: :data:`WATCHER`, then the control address
    (:func:`pack_endpoint`)."""
    return WATCHER.pack(last_watch, watch_counter, shared) + pack_endpoint(address)


def unpack_watcher(watcher: bytes) -> Watcher:
    """Inverse of :func:`pack_watcher`."""
    last_watch, counter, shared = WATCHER.unpack_from(watcher)
    return Watcher(last_watch, counter, shared, unpack_endpoint(watcher, WATCHER.size)[0])


def shared_key(record: bytes, at: int) -> bytes | None:
    """The shared key stored at offset ``at`` of a row (:data:`SHARED_AT`) or a watcher
    (:data:`WATCHER_SHARED_AT`), None if there is none yet."""
    shared = record[at : at + 32]
    return None if shared == NO_KEY else shared
