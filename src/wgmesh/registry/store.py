"""SQLite (WAL) persistence of registered peers, so a restarted registrar (also after
``kill -9``) serves the live records at once and keeps its replay floors.

Changes are written in one transaction per batch; the adapter flushes a batch every
``flush_interval`` seconds (0.2 s by default), so at most that much is lost by a crash.

A peer's observed mappings (one per address family) are in ``endpoint``, space-separated like
``addresses``, with their last registrations in ``refreshed``. A database from before per-family
mappings has one endpoint and no ``refreshed`` column: the column is added when it is opened,
and a row without it reads as one mapping last registered at ``last_seen``. (A registrar from
before that change cannot write to a database once it has the column.)

Each peer's shared key is in ``wrapped_key``, wrapped under the registrar's private key
(wgmesh.proto.keywrap), so a restart does not cost an X25519 per peer; NULL when the peer had no
key yet, or in a database from before the column (added when it is opened, like
``refreshed``).

**The refresh journal.** A refresh (the commonest change by far: the peer registered again and
only its Register counter, its mappings' times and its software changed) is not an UPDATE of
its row: a million random rows each dirtying a page of the WAL cost more than a core at 50,000
refreshes a second. It is appended to ``refresh-<generation>.log`` beside the database
(wgmesh.proto.refreshlog: tens of bytes, one write per batch, after the batch's transaction).
:meth:`Store.fold_step` writes the rows' refreshes into the table in rowid order (sequential
pages), a chunk at a time, once the journal holds more records than :meth:`Store.fold_wanted`
allows; when a fold has been over every row, the journals from before it started are deleted.
:meth:`Store.load` reads the journals over the table: a record whose counter is above its
row's replaces the row's counter, times and software. So a refresh is as durable as before
(after the batch's flush; ``kill -9`` loses at most the unflushed batch, and, like SQLite's
``synchronous=NORMAL``, a power cut may lose what the OS had not written). A record the
journal cannot hold (software from a database of an older version that is not ASCII or too
long) is an UPDATE as before; a torn or damaged record ends the reading of its file, and is
counted in :attr:`Store.torn`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from wgmesh.errors import ConfigError, DecodeError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.peerentry import Event, Refresh, Stored
from wgmesh.proto.peerrow import refreshed_fields
from wgmesh.proto.refreshlog import RefreshRecord, pack_record, read_records
from wgmesh.proto.registry import Change, PeerEntry
from wgmesh.proto.relay import Allocation

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    key BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    addresses TEXT NOT NULL,
    nat TEXT NOT NULL,
    since REAL NOT NULL,
    last_seen REAL NOT NULL,
    register_counter INTEGER NOT NULL,
    watch_counter INTEGER NOT NULL,
    software TEXT NOT NULL,
    secondary TEXT,
    refreshed TEXT,
    wrapped_key BLOB
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS relay (
    a BLOB NOT NULL,
    b BLOB NOT NULL,
    port_a INTEGER NOT NULL,
    port_b INTEGER NOT NULL,
    created REAL NOT NULL,
    active REAL NOT NULL,
    bound_a TEXT,
    bound_b TEXT,
    bind_counter_a INTEGER NOT NULL,
    bind_counter_b INTEGER NOT NULL,
    PRIMARY KEY (a, b)
);
"""
_SELECT = (
    "SELECT key, name, endpoint, addresses, nat, since, last_seen, register_counter,"
    " watch_counter, software, secondary, refreshed, wrapped_key FROM peers ORDER BY last_seen"
)
_INSERT = (
    "INSERT OR REPLACE INTO peers (key, name, endpoint, addresses, nat, since, last_seen,"
    " register_counter, watch_counter, software, secondary, refreshed, wrapped_key)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_REFRESH = (
    "UPDATE peers SET last_seen=?, refreshed=?, register_counter=?, software=?"
    " WHERE key=? AND wrapped_key IS NOT NULL"
)
"""A refresh: the times, the counter and the software. The wrapped shared key only changes
with a new key, which writes the whole row; a row stored without one (a database from before
stored keys) matches nothing here and is written whole, key included, once."""
_FOLD = "UPDATE peers SET last_seen=?, refreshed=?, register_counter=?, software=? WHERE rowid=?"
"""A fold's write of a row's refresh: whatever the row's wrapped key (a row that gains one is
written whole by then, see :data:`_REFRESH`), so no journaled floor is skipped."""
_JOURNAL_PREFIX, _JOURNAL_SUFFIX = "refresh-", ".log"
FOLD_RECORDS = 100_000
"""A fold starts once the journal holds this many records, or twice as many as there are
peers if that is more (:meth:`Store.fold_wanted`)."""
_READ_CHUNK = 1 << 20
_INT64_MAX = 2**63 - 1


def _int64(n: int) -> int:
    """A u64 counter as SQLite's signed INTEGER holds it: a counter a peer sent above
    ``2**63 - 1`` is stored as that (binding it as it is raises OverflowError, and the whole
    batch would not be written: one peer could keep every peer's changes off the disk). Only
    a peer's own floor is lower for it after a restart; daemons' counters are microseconds
    since 1970, about 2**51."""
    return n if n <= _INT64_MAX else _INT64_MAX


class Store:
    """The registrar's state directory: ``<state_dir>/registrar.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        self.unreadable = 0
        """Stored peer rows that did not read and were skipped by :meth:`load` so far."""
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = state_dir / "registrar.sqlite3"
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(peers)")}
            if "refreshed" not in have:  # a database from before per-family mappings
                self._db.execute("ALTER TABLE peers ADD COLUMN refreshed TEXT")
            if "wrapped_key" not in have:  # from before stored shared keys
                self._db.execute("ALTER TABLE peers ADD COLUMN wrapped_key BLOB")
            self._dir = state_dir
            self._journals = sorted(
                (g, p) for p in state_dir.glob(f"{_JOURNAL_PREFIX}*{_JOURNAL_SUFFIX}")
                if (g := _generation(p.name)) is not None
            )  # fmt: skip
            """The journals before the active one (each a generation and its path), oldest
            first: what a fold started from now on will make redundant."""
            self._generation = self._journals[-1][0] + 1 if self._journals else 1
            self._active = self._open_journal()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--state-dir {state_dir}: {exc}") from None
        self.torn = 0
        """Journal files whose reading stopped at a record that did not check (torn by a crash
        or damaged): the rest of such a file is left out."""
        self.journaled = 0
        """Records in the active journal (the one written since the last fold began)."""
        self._fold: list[tuple[int, Path]] | None = None
        """While a fold is under way, the journals it makes redundant when it is done."""
        self._cursor = 0
        """The last rowid the fold under way has been over."""

    def _journal_path(self, generation: int) -> Path:
        return self._dir / f"{_JOURNAL_PREFIX}{generation:010d}{_JOURNAL_SUFFIX}"

    def _open_journal(self) -> BinaryIO:
        """A new journal for this generation (never one written before: its tail may be torn,
        and records after a torn one would never be read)."""
        return open(self._journal_path(self._generation), "xb")

    def load(self) -> tuple[Iterator[Stored], int]:
        """All stored peers with their wrapped shared keys (in the order of their last refresh
        as the table has it, read as they are consumed: a million of them never exist as
        PeerEntry objects at once; the journals are read first, whole) and the last zone
        serial."""
        serial = self._db.execute("SELECT value FROM meta WHERE name='serial'").fetchone()
        return self._entries(self._journaled()), int(serial[0]) if serial else 1

    def _journaled(self) -> dict[bytes, RefreshRecord]:
        """Each key's newest journal record (highest counter), from every journal."""
        self._active.flush()
        latest: dict[bytes, RefreshRecord] = {}
        for _, path in [*self._journals, (self._generation, self._journal_path(self._generation))]:
            with open(path, "rb") as f:
                tail = b""
                while chunk := f.read(_READ_CHUNK):
                    data = tail + chunk
                    records, used, bad = read_records(data)
                    for r in records:
                        old = latest.get(r.key)
                        if old is None or r.counter > old.counter:
                            latest[r.key] = r
                    tail = data[used:]
                    if bad:
                        break
                if tail:  # a record that does not check, or the torn start of one
                    self.torn += 1
        return latest

    def _entries(self, journaled: dict[bytes, RefreshRecord]) -> Iterator[Stored]:
        rows = self._db.execute(_SELECT)
        for row in rows:
            try:
                mappings = _endpoints(row[2])
                refreshed = (row[6],) * len(mappings) if row[11] is None else _times(row[11])
                secondary = _endpoints(row[10])
                if not _per_family(mappings) or len(refreshed) != len(mappings):
                    raise ValueError("not one mapping per family")
                if not _per_family(secondary, empty=True):
                    raise ValueError("not one secondary probe per family")
                entry = PeerEntry(
                    key=bytes(row[0]),
                    name=row[1],
                    mappings=mappings,
                    addresses=_endpoints(row[3]),
                    nat=NatKind(row[4]),
                    since=row[5],
                    refreshed=refreshed,
                    register_counter=row[7],
                    watch_counter=row[8],
                    software=row[9],
                    secondary=secondary,
                )
            except (DecodeError, ValueError, TypeError, AttributeError):
                self.unreadable += 1  # a row we cannot read is skipped, not fatal
                continue
            newer = journaled.pop(entry.key, None)
            if (
                newer is not None and newer.counter > entry.register_counter
                and len(newer.refreshed) == len(entry.mappings)  # (else a move wrote the row)
            ):  # fmt: skip
                entry = dataclasses.replace(
                    entry, register_counter=newer.counter, refreshed=newer.refreshed,
                    software=newer.software,
                )  # fmt: skip
            wrapped = row[12]
            yield Stored(entry, bytes(wrapped) if isinstance(wrapped, bytes) else None)

    def apply(
        self,
        events: Iterable[Event],
        serial: int,
        wrapped_key: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """Persist a batch of peer changes and the zone serial in one transaction
        (``wrapped_key``: each peer's shared key as it is stored, wgmesh.proto.keywrap), then
        the batch's refreshes in the journal (see the module docstring). A refresh the journal
        cannot hold updates only what it changed; the whole row is written when there is none
        yet."""
        db = self._db
        journal: list[bytes] = []
        db.execute("BEGIN")
        try:
            for ev in events:
                if isinstance(ev, Refresh) and not ev.moved:
                    refreshed, counter, software = refreshed_fields(ev.row)
                    try:
                        journal.append(pack_record(ev.key, counter, refreshed, software))
                        continue
                    except ValueError:
                        pass  # (software from an older database: the row is updated)
                    done = db.execute(_REFRESH, (max(refreshed), " ".join(map(repr, refreshed)),
                                                 _int64(counter), software, ev.key))  # fmt: skip
                    if done.rowcount:
                        continue
                p = ev.peer
                if ev.change == Change.WITHDRAWN:
                    db.execute("DELETE FROM peers WHERE key=?", (p.key,))
                    continue
                db.execute(
                    _INSERT,
                    (
                        p.key, p.name, " ".join(map(str, p.mappings)),
                        " ".join(map(str, p.addresses)), str(p.nat), p.since, p.last_seen,
                        _int64(p.register_counter), _int64(p.watch_counter), p.software,
                        " ".join(map(str, p.secondary)) or None, " ".join(map(repr, p.refreshed)),
                        None if wrapped_key is None else wrapped_key(p.key),
                    ),
                )  # fmt: skip
            db.execute("INSERT OR REPLACE INTO meta VALUES ('serial', ?)", (serial,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if journal:
            self._append(b"".join(journal), len(journal))

    def _append(self, data: bytes, records: int) -> None:
        """Append to the active journal; after a write that failed (a full disk), whatever
        part of it reached the file would end its reading there, so the next write goes to a
        new journal."""
        if self._active.closed:
            self._next_journal()
        try:
            self._active.write(data)
            self._active.flush()
        except OSError:
            with contextlib.suppress(OSError):  # (its flush fails again; the file is closed)
                self._active.close()
            raise
        self.journaled += records

    def _next_journal(self) -> None:
        """Close the active journal (it waits for the next fold) and open the next one."""
        self._active.close()
        self._journals.append((self._generation, self._journal_path(self._generation)))
        self._generation += 1
        self._active, self.journaled = self._open_journal(), 0

    def fold_wanted(self, peers: int) -> bool:
        """A fold is under way, or should start: journals from before this one wait to be
        folded (after a restart), or the journal holds more than ``max(FOLD_RECORDS, 2 *
        peers)`` records."""
        return (
            self._fold is not None or bool(self._journals)
            or self.journaled >= max(FOLD_RECORDS, 2 * peers)
        )  # fmt: skip

    def fold_step(self, rows: Mapping[bytes, bytes], limit: int) -> bool:
        """Write the refreshes of the next ``limit`` stored rows (rowid order) from ``rows``
        (the registry's packed rows, wgmesh.proto.peerrow), starting a fold if none is under
        way: the active journal is closed and a new one opened. Each row whose counter in
        ``rows`` is above the stored one gets its counter, times and software. Every event the
        registry emitted must have been applied first (so each stored row has the mappings its
        packed row has). When the fold has been over every row, the journals from before it
        are deleted; returns whether it is still under way."""
        db = self._db
        if self._fold is None:
            self._next_journal()
            self._fold, self._cursor = list(self._journals), 0
        chunk = db.execute(
            "SELECT rowid, key, register_counter FROM peers WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (self._cursor, limit),
        ).fetchall()
        updates = []
        for rowid, key, stored in chunk:
            row = rows.get(bytes(key))
            if row is None:
                continue
            refreshed, counter, software = refreshed_fields(row)
            if _int64(counter) > stored:
                updates.append((max(refreshed), " ".join(map(repr, refreshed)), _int64(counter),
                                software, rowid))  # fmt: skip
        if updates:
            db.execute("BEGIN")
            try:
                db.executemany(_FOLD, updates)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if len(chunk) == limit:
            self._cursor = chunk[-1][0]
            return True
        db.execute(
            "PRAGMA wal_checkpoint(FULL)"
        )  # the fold on disk (synced) before its journals go
        for done in self._fold:
            done[1].unlink(missing_ok=True)
            self._journals.remove(done)
        self._fold = None
        return False

    def save_relay(self, allocations: Iterable[Allocation]) -> None:
        """Replace the stored relay allocations with ``allocations`` (one transaction)."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM relay")
            db.executemany(
                "INSERT INTO relay VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (a.a, a.b, a.port_a, a.port_b, a.created, a.active,
                     None if a.bound_a is None else str(a.bound_a),
                     None if a.bound_b is None else str(a.bound_b),
                     _int64(a.bind_counter_a), _int64(a.bind_counter_b))
                    for a in allocations
                ],
            )  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def load_relay(self) -> list[Allocation]:
        """The stored relay allocations; rows that do not read are skipped."""
        out = []
        for row in self._db.execute("SELECT * FROM relay"):
            try:
                bound = [None if t is None else Endpoint.parse(t) for t in (row[6], row[7])]
                alloc = Allocation(bytes(row[0]), bytes(row[1]), int(row[2]), int(row[3]),
                                   float(row[4]), float(row[5]), bound[0], bound[1],
                                   int(row[8]), int(row[9]))  # fmt: skip
                out.append(alloc)
            except (DecodeError, ValueError, TypeError):
                continue
        return out

    def close(self) -> None:
        self._active.close()
        self._db.close()


def _generation(name: str) -> int | None:
    digits = name[len(_JOURNAL_PREFIX) : -len(_JOURNAL_SUFFIX)]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _endpoints(text: str | None) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.parse(a) for a in (text or "").split())


def _times(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split())


def _per_family(endpoints: tuple[Endpoint, ...], *, empty: bool = False) -> bool:
    """At most one endpoint per address family, IPv4 first (and at least one unless
    ``empty``)."""
    families = [ep.ip.version for ep in endpoints]
    return families in ([4], [6], [4, 6]) or (empty and not families)
