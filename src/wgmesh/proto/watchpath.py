"""The registrar's fast path for a proven watcher's Watch that changes nothing (sans-IO).

After the Register (wgmesh.proto.refresh), the Watch is the datagram a registrar receives most:
each daemon sends one every probe interval from its control socket, and nearly always from the
control address it proved last time, echoing the cookie of the last Status, with both its
mappings fresh. All that changes then is the row's Watch counter and the time of its last Watch
(wgmesh.proto.peerrow.renewed_watch), and the answer is a Status built from the row's bytes
(wgmesh.proto.sealed.status_plaintext) without unpacking it into a ``PeerEntry``.

:func:`watch_fields` reads a Watch's plaintext where ``sealed.decode_payload`` would accept it
and return a ``Watch`` with the same values, and only there (None otherwise: the full decoder
then judges it). :meth:`wgmesh.proto.registry.Registry._steady_watch` does the full path's
checks in its order and hands anything else to it (``Registry._watch``), so this path never
decides anything the full path would decide otherwise; ``tests/test_watchpath.py`` checks that
on random and mutated Watches, and on two registries fed the same traffic, one of them with the
fast path turned off.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from wgmesh.proto.payloads import (
    COOKIE_LEN,
    EVERY_PEER,
    HEADER_LEN,
    KEY_ID_LEN,
    MAX_INTEREST,
    MAX_PAYLOAD,
    VERSION,
    Kind,
)

_HEAD = struct.Struct("!BB12sQQ8x16s")
"""The payload header (version, kind, transaction id, timestamp, counter), then the Watch's
Register counter (unused by the registrar) and its cookie."""
_INTEREST_AT = HEADER_LEN + 8 + COOKIE_LEN
assert _HEAD.size == _INTEREST_AT


class WatchFields(NamedTuple):
    """What the registry reads from a Watch (:func:`watch_fields`): a NamedTuple, built for
    every Watch."""

    timestamp_ms: int
    counter: int
    cookie: bytes
    interest: tuple[bytes, ...] | None
    """The key ids the watcher wants news of; None: every peer."""


def watch_fields(plaintext: bytes, transaction_id: bytes) -> WatchFields | None:
    """The fields of a Watch bound to ``transaction_id`` that ``sealed.decode_payload`` accepts
    as it is; None for anything else (another kind, a field it would refuse)."""
    size = len(plaintext)
    if not _INTEREST_AT <= size <= MAX_PAYLOAD:
        return None
    version, kind, tid, ts, counter, cookie = _HEAD.unpack_from(plaintext)
    if version != VERSION or kind != Kind.WATCH or tid != transaction_id:
        return None
    if size == _INTEREST_AT:
        return WatchFields(ts, counter, cookie, None)
    count = plaintext[_INTEREST_AT]
    pos = _INTEREST_AT + 1
    interest: tuple[bytes, ...] | None = None
    if count == EVERY_PEER:
        if pos == size:  # the marker is written only before padding
            return None
    elif count > MAX_INTEREST:
        return None
    else:
        end = pos + count * KEY_ID_LEN
        if end > size:
            return None
        interest = tuple(plaintext[at : at + KEY_ID_LEN] for at in range(pos, end, KEY_ID_LEN))
        pos = end
    if plaintext.count(0, pos) != size - pos:  # the padding: zeros only
        return None
    return WatchFields(ts, counter, cookie, interest)
