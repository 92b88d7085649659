"""The registrar's watchers: where each one's control address, Watch counter and key are kept.

A watcher is a peer whose control socket proved it receives (the cookie echo of
wgmesh.proto.registry); pushes, rosters and repunches go to it. Nearly every watcher is also a
registered peer (a daemon registers and watches in the same probe round), so its watcher data
lives in that peer's row, as the row's watch part (wgmesh.proto.peerrow): the last Watch time
and the control address, beside the row's Watch counter and shared key. That costs 15 bytes
(27 for an IPv6 control address), where a record in a table of its own cost about 280: the
record, the table's entry, a second copy of the 32-byte key (the table was keyed by the
Watch's key object, not the row's), and the fan-out's entry (bench/registrar_memory.py).

A watcher whose peer has no row (its Registers have not arrived yet, or it stopped
registering and its row expired) keeps a record of its own here, with its key object; when a
row is written for it, the registry takes the watcher in (:meth:`Watchers.adopt`), and when the
row goes, the watcher stays (:meth:`Watchers.orphan`). So a key is in one place at a time.

:class:`Watchers` is a read-only mapping from key to :class:`~wgmesh.proto.peerrow.Watcher`
(unpacked when read) over both places; the registry changes it only through the methods below,
and writes the rows itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.peerrow import (
    Watcher,
    is_watching,
    pack_watch,
    pack_watcher,
    unpack_watcher,
    watcher_of_row,
    with_watch,
)


class Watchers(Mapping[bytes, Watcher]):
    """Every watcher, in its peer's row (``rows``, the registry's table) or on its own."""

    def __init__(self, rows: dict[bytes, bytes]) -> None:
        self._rows = rows
        self._alone: dict[bytes, tuple[bytes, bytes]] = {}
        """Per key with no row: the key object (the one the row will take) and the record
        (peerrow.pack_watcher)."""
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, key: bytes) -> Watcher:
        watcher = self.find(key)
        if watcher is None:
            raise KeyError(key)
        return watcher

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        row = self._rows.get(key)
        return is_watching(row) if row is not None else key in self._alone

    def __iter__(self) -> Iterator[bytes]:
        """Watchers in rows (in the rows' order), then those without one."""
        for key, row in self._rows.items():
            if is_watching(row):
                yield key
        yield from self._alone

    def find(self, key: bytes) -> Watcher | None:
        """``key``'s watcher, None when it is not one."""
        row = self._rows.get(key)
        if row is not None:
            return watcher_of_row(row)
        alone = self._alone.get(key)
        return None if alone is None else unpack_watcher(alone[1])

    def alone(self, key: bytes) -> bool:
        """``key`` is a watcher with no row."""
        return key in self._alone

    def note(self, key: bytes, now: float, counter: int, shared: bytes, address: Endpoint) -> bool:
        """An accepted, proven Watch from ``address`` (the registry has written ``key``'s row,
        if it has one, with ``counter`` and ``shared`` already); True when ``key`` is a new
        watcher."""
        row = self._rows.get(key)
        if row is not None:
            new = not is_watching(row)
            self._rows[key] = with_watch(row, pack_watch(now, address))
        else:
            new = key not in self._alone
            self._alone[key] = (key, pack_watcher(now, counter, shared, address))
        self._count += new
        return new

    def drop(self, key: bytes) -> bool:
        """``key`` is no longer a watcher; False when it was none."""
        row = self._rows.get(key)
        if row is not None:
            if not is_watching(row):
                return False
            self._rows[key] = with_watch(row, b"")
        elif self._alone.pop(key, None) is None:
            return False
        self._count -= 1
        return True

    def adopt(self, key: bytes) -> tuple[bytes, bytes, int] | None:
        """A row is about to be written for ``key``, which has none: its watcher, if any,
        leaves this table for the row. Returns the key object to keep the row under, the
        watch part (peerrow.pack_watch) and the Watch counter; None when ``key`` is no
        watcher."""
        alone = self._alone.pop(key, None)
        if alone is None:
            return None
        obj, record = alone
        watcher = unpack_watcher(record)
        return obj, pack_watch(watcher.last_watch, watcher.address), watcher.watch_counter

    def orphan(self, key: bytes, row: bytes) -> None:
        """``key``'s row (``row``) was deleted: the watcher it held, if any, stays here."""
        watcher = watcher_of_row(row)
        if watcher is not None:
            self._alone[key] = (key, pack_watcher(*watcher))
