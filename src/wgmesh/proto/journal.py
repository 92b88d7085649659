"""The zone's history for incremental transfers (RFC 1995), sans-IO: the peer changes between
consecutive SOA serials, as packed records, capped in deltas and in bytes.

The zone does not raise its serial on every change (RFC 1996 section 4.7 suggests that a
primary "may" hold NOTIFYs back; we hold the serial itself): :class:`Pending` gathers what
changed since the last serial (a peer's record as of that serial, the first time it changes),
and :meth:`~wgmesh.proto.dnssd.Zone.publish` turns it into one :class:`Delta` at most every
``serial_interval`` seconds. A peer that changed and changed back is in no delta. The
:class:`Journal` keeps the newest deltas; an IXFR from a serial it still holds is answered with
the deltas since (:mod:`wgmesh.proto.xfr` renders them as RRs), anything older with the whole
zone. The journal lives in memory only: after a restart every secondary gets one AXFR.

Serial arithmetic is RFC 1982's (:func:`serial_newer`), and a serial is never 0 (wgmesh's
serials skip it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

DELTA_OVERHEAD = 200
"""Bytes a delta costs besides its records (objects, tuple slots), counted against the cap."""
CHANGE_OVERHEAD = 120
"""Bytes one change costs besides its key and records."""


def next_serial(serial: int) -> int:
    """The serial after ``serial`` (RFC 1982 addition of 1; 0 is skipped)."""
    return (serial + 1) % 2**32 or 1


def serial_newer(a: int, b: int) -> bool:
    """``a`` is newer than ``b`` in RFC 1982 serial arithmetic (section 3.2)."""
    return a != b and (a - b) % 2**32 < 2**31


@dataclass(frozen=True, slots=True)
class Change:
    """One peer's records before and after a delta."""

    key: bytes
    """The peer's key (32 bytes)."""
    old: bytes | None
    """Its packed record at the delta's first serial (None: not in the zone)."""
    new: bytes | None
    """Its packed record at the delta's last serial (None: withdrawn)."""


@dataclass(frozen=True, slots=True)
class Delta:
    """The changes from one serial to the next."""

    start: int
    """The serial before."""
    end: int
    """The serial after (``next_serial(start)``)."""
    changes: tuple[Change, ...]
    """What changed, one entry per peer."""
    listed: tuple[bytes, ...] = ()
    """Keys that joined the browse listing (the PTRs a transfer holds: the zone's first
    peers, as many as one browse answer lists), in listing order."""
    unlisted: tuple[bytes, ...] = ()
    """Keys that left it."""

    @property
    def size(self) -> int:
        """Bytes this delta is counted for in :attr:`Journal.max_bytes`."""
        held = sum(
            CHANGE_OVERHEAD + len(c.key) + len(c.old or b"") + len(c.new or b"")
            for c in self.changes
        )
        return DELTA_OVERHEAD + held + 40 * (len(self.listed) + len(self.unlisted))


class Pending:
    """What changed since the last serial: each touched peer's record as of that serial."""

    def __init__(self) -> None:
        self.base: dict[bytes, bytes | None] = {}
        """Key -> its packed record at the last serial (None: it was not in the zone)."""

    def __bool__(self) -> bool:
        return bool(self.base)

    def touch(self, key: bytes, old: bytes | None) -> None:
        """``key`` is about to change from ``old`` (kept only if it is the first change)."""
        self.base.setdefault(key, old)

    def take(self, current: Mapping[bytes, bytes]) -> tuple[Change, ...]:
        """The net changes from the last serial to ``current`` (every peer's packed record);
        forgets them."""
        changes = tuple(
            Change(key, old, new)
            for key, old in self.base.items()
            if old != (new := current.get(key))
        )
        self.base = {}
        return changes

    def clear(self) -> None:
        """Forget what changed (the serial was set to one whose history is unknown)."""
        self.base = {}

    def at_serial(self, current: Mapping[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        """Every peer's packed record as of the last serial: ``current`` with the pending
        changes undone (what an AXFR at that serial must hold)."""
        base = self.base
        if not base:
            return list(current.items())
        out = [(k, r) for k, r in current.items() if k not in base]
        out += [(k, old) for k, old in base.items() if old is not None]
        return out


class Journal:
    """The newest deltas, oldest first, at most ``max_deltas`` of them and ``max_bytes`` in
    all (the oldest go first; a delta larger than ``max_bytes`` empties the journal)."""

    def __init__(self, serial: int, max_deltas: int = 1000, max_bytes: int = 8 * 2**20) -> None:
        self.serial = serial
        """The zone's current serial: the last delta ends there."""
        self.max_deltas = max_deltas
        self.max_bytes = max_bytes
        self.bytes = 0
        """Bytes the deltas held count for."""
        self._deltas: deque[Delta] = deque()

    def __len__(self) -> int:
        return len(self._deltas)

    @property
    def oldest(self) -> int:
        """The oldest serial an IXFR can start from (the current one when empty)."""
        return self._deltas[0].start if self._deltas else self.serial

    def reset(self, serial: int) -> None:
        """The zone is at ``serial`` now, by a way that is not a delta (a restart)."""
        self._deltas.clear()
        self.bytes = 0
        self.serial = serial

    def add(self, delta: Delta) -> None:
        """Append the delta from the current serial to ``delta.end``."""
        if delta.start != self.serial:
            self.reset(delta.start)
        self.serial = delta.end
        size = delta.size
        if size > self.max_bytes or self.max_deltas <= 0:
            self.reset(delta.end)
            return
        self._deltas.append(delta)
        self.bytes += size
        while len(self._deltas) > self.max_deltas or self.bytes > self.max_bytes:
            self.bytes -= self._deltas.popleft().size

    def since(self, serial: int) -> tuple[Delta, ...] | None:
        """The deltas from ``serial`` to the current one (empty when it is the current one),
        or None when the journal no longer (or never) held ``serial``."""
        if serial == self.serial:
            return ()
        for i, delta in enumerate(self._deltas):
            if delta.start == serial:
                return tuple(self._deltas)[i:]
        return None
