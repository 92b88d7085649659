"""The registrar's per-peer state packed into one ``bytes`` (a row), and its watchers' likewise.

A :class:`~wgmesh.proto.registry.PeerEntry` built of ``Endpoint``/``ipaddress`` objects, floats
and ints costs ~700 bytes; the same fields packed cost ~110, so the registrar holds a million
peers in well under a kilobyte each (bench/registrar_memory.py). The registry unpacks a row into
a ``PeerEntry`` only where it needs one (events, Status, admission changes); a refresh, the
common case, compares and rewrites the packed form directly.

Row layout (:data:`ROW`, little-endian, then three variable parts)::

    last_seen f64 | since f64 | register_counter u64 | watch_counter u64 | nat u8 |
    len(seen) u16 | len(secondary) u8 | shared 32 bytes |
    seen | secondary | software (UTF-8, the rest)

``seen`` (:func:`pack_seen`) is what a refresh must match for nothing published to change: the
endpoint, the reported addresses and the published name. ``secondary`` is empty when the
alternate port has seen nothing since the endpoint last changed, :data:`SAME` when it saw the
endpoint itself (a cone NAT, the common case: no copy), else that mapping (:func:`pack_endpoint`).

``shared`` is the peer's NaCl shared key with the registrar (``crypto_box_beforenm``: X25519 of
our private key and its public key), stored only once a box from the peer opened with it, so a
refresh opens its box without the ~80 us X25519 step; :data:`NO_KEY` until then (a row restored
after a restart: the key is never persisted). A watcher keeps its shared key the same way, for
its Status answers and pushes.
"""

from __future__ import annotations

import ipaddress
import struct

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind

ROW = struct.Struct("<ddQQBHB32s")
"""The fixed head of a row: last_seen, since, counters, NAT class, lengths of seen/secondary,
shared key."""
SHARED_AT = ROW.size - 32
"""Offset of the shared key in a row."""
WATCHER = struct.Struct("<dQ32s")
"""A watcher: last Watch time, Watch counter and shared key, then the control address
(pack_endpoint)."""
WATCHER_SHARED_AT = WATCHER.size - 32
"""Offset of the shared key in a watcher."""
NO_KEY = bytes(32)
"""The shared-key field of a row with no key yet. A real shared key is all zeros with chance
2**-256, and then it is only ever recomputed, never used from the row: still correct."""
SAME = b"\x00"
"""``secondary`` when the alternate port saw the endpoint itself."""
NATS = tuple(NatKind)
"""NAT classes by their code in a row."""
NAT_CODES = {nat: i for i, nat in enumerate(NATS)}
"""Row code of each NAT class."""
_PORT = struct.Struct("!H")


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


def pack_seen(endpoint: Endpoint, addresses: tuple[Endpoint, ...], name: str) -> bytes:
    """``len(addresses) u8 | endpoint | addresses | name``, the packed endpoints as above."""
    parts = [bytes((len(addresses),)), pack_endpoint(endpoint)]
    parts += map(pack_endpoint, addresses)
    parts.append(name.encode())
    return b"".join(parts)


def unpack_seen(seen: bytes) -> tuple[Endpoint, tuple[Endpoint, ...], str]:
    """Inverse of :func:`pack_seen`."""
    endpoint, pos = unpack_endpoint(seen, 1)
    addresses = []
    for _ in range(seen[0]):
        ep, pos = unpack_endpoint(seen, pos)
        addresses.append(ep)
    return endpoint, tuple(addresses), seen[pos:].decode()


def pack_row(
    last_seen: float,
    since: float,
    register_counter: int,
    watch_counter: int,
    nat: NatKind,
    seen: bytes,
    secondary: bytes,
    software: str,
    shared: bytes,
) -> bytes:
    """A whole row (see the module docstring)."""
    head = ROW.pack(last_seen, since, register_counter, watch_counter, NAT_CODES[nat],
                    len(seen), len(secondary), shared)  # fmt: skip
    return b"".join((head, seen, secondary, software.encode()))


def row_parts(row: bytes) -> tuple[bytes, bytes, str]:
    """``(seen, secondary, software)`` of a row."""
    *_, seen_len, secondary_len, _ = ROW.unpack_from(row)
    end = ROW.size + seen_len
    return row[ROW.size : end], row[end : end + secondary_len], row[end + secondary_len :].decode()


def shared_key(record: bytes, at: int) -> bytes | None:
    """The shared key stored at offset ``at`` of a row (:data:`SHARED_AT`) or a watcher
    (:data:`WATCHER_SHARED_AT`), None if there is none yet."""
    shared = record[at : at + 32]
    return None if shared == NO_KEY else shared
