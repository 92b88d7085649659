"""The refresh journal's records, sans-IO: what a refresh changes in a stored peer (its Register
counter, when each mapping was last registered, the software), appended to a file instead of
updating the peer's SQLite row (wgmesh.registry.store).

A record is ``<IH`` (CRC-32 of the body, body length), then the body: the 32-byte key, the
counter (``<Q``), the number of mappings (1 or 2), that many times (``<d`` each) and the
software (ASCII, at most :data:`~wgmesh.proto.payloads.MAX_SOFTWARE` bytes). A crash can leave
the last record torn; :func:`read_records` stops at the first record that does not check and
says how far it read, so a torn tail loses that record only, and nothing after a damaged
record is taken for a record.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import NamedTuple

from wgmesh.proto.payloads import MAX_SOFTWARE

HEAD = struct.Struct("<IH")
"""CRC-32 of the body, length of the body."""
_FIXED = struct.Struct("<32sQB")
_TIME = struct.Struct("<d")
MAX_BODY = _FIXED.size + 2 * _TIME.size + MAX_SOFTWARE
MAX_COUNTER = 2**64 - 1


class RefreshRecord(NamedTuple):
    """One refresh as the journal keeps it."""

    key: bytes
    counter: int
    refreshed: tuple[float, ...]
    """When each mapping (IPv4 first) was last registered, one or two times."""
    software: str


def pack_record(key: bytes, counter: int, refreshed: tuple[float, ...], software: str) -> bytes:
    """One journal record (raises ValueError for what :func:`read_records` would not read
    back: a key not of 32 bytes, a counter out of range, not one or two finite times, software
    too long or not ASCII)."""
    if len(key) != 32 or not 0 <= counter <= MAX_COUNTER or len(refreshed) not in (1, 2):
        raise ValueError("not a refresh the journal can hold")
    if not all(math.isfinite(t) for t in refreshed):
        raise ValueError("a refresh time that is not a time")
    sw = software.encode("ascii")
    if len(sw) > MAX_SOFTWARE:
        raise ValueError("software too long for the journal")
    body = b"".join((_FIXED.pack(key, counter, len(refreshed)), *map(_TIME.pack, refreshed), sw))
    return HEAD.pack(zlib.crc32(body), len(body)) + body


def read_records(data: bytes | memoryview) -> tuple[list[RefreshRecord], int, bool]:
    """The records at the start of ``data``: the records, how many bytes they took, and
    whether reading stopped at a record that does not check (damaged, or torn by a crash)
    rather than at the end of the data or at a record the data holds only part of (which may
    be the start of the next chunk of the file)."""
    out: list[RefreshRecord] = []
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos + HEAD.size <= end:
        crc, size = HEAD.unpack_from(view, pos)
        if size > MAX_BODY or size < _FIXED.size + _TIME.size:
            return out, pos, True
        start = pos + HEAD.size
        if start + size > end:
            return out, pos, False
        body = view[start : start + size]
        record = _record(body) if zlib.crc32(body) == crc else None
        if record is None:
            return out, pos, True
        out.append(record)
        pos = start + size
    return out, pos, False


def _record(body: memoryview) -> RefreshRecord | None:
    key, counter, n = _FIXED.unpack_from(body)
    at = _FIXED.size + n * _TIME.size
    if n not in (1, 2) or at > len(body):
        return None
    times = tuple(_TIME.unpack_from(body, _FIXED.size + i * _TIME.size)[0] for i in range(n))
    software = bytes(body[at:])
    if not all(math.isfinite(t) for t in times) or not software.isascii():
        return None
    return RefreshRecord(key, counter, times, software.decode("ascii"))
