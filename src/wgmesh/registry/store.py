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
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from wgmesh.errors import ConfigError, DecodeError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.peerentry import Event, Refresh, Stored
from wgmesh.proto.peerrow import refreshed_fields
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
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--state-dir {state_dir}: {exc}") from None

    def load(self) -> tuple[Iterator[Stored], int]:
        """All stored peers with their wrapped shared keys (oldest refresh first, read as they
        are consumed: a million of them never exist as PeerEntry objects at once) and the last
        zone serial."""
        serial = self._db.execute("SELECT value FROM meta WHERE name='serial'").fetchone()
        return self._entries(), int(serial[0]) if serial else 1

    def _entries(self) -> Iterator[Stored]:
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
            wrapped = row[12]
            yield Stored(entry, bytes(wrapped) if isinstance(wrapped, bytes) else None)

    def apply(
        self,
        events: Iterable[Event],
        serial: int,
        wrapped_key: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """Persist a batch of peer changes and the zone serial in one transaction
        (``wrapped_key``: each peer's shared key as it is stored, wgmesh.proto.keywrap). A
        refresh updates only what it changed; the whole row is written when there is none yet."""
        db = self._db
        db.execute("BEGIN")
        try:
            for ev in events:
                if isinstance(ev, Refresh) and not ev.moved:
                    refreshed, counter, software = refreshed_fields(ev.row)
                    done = db.execute(_REFRESH, (max(refreshed), " ".join(map(repr, refreshed)),
                                                 counter, software, ev.key))  # fmt: skip
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
                        p.register_counter, p.watch_counter, p.software,
                        " ".join(map(str, p.secondary)) or None, " ".join(map(repr, p.refreshed)),
                        None if wrapped_key is None else wrapped_key(p.key),
                    ),
                )  # fmt: skip
            db.execute("INSERT OR REPLACE INTO meta VALUES ('serial', ?)", (serial,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
                     a.bind_counter_a, a.bind_counter_b)
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
        self._db.close()


def _endpoints(text: str | None) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.parse(a) for a in (text or "").split())


def _times(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split())


def _per_family(endpoints: tuple[Endpoint, ...], *, empty: bool = False) -> bool:
    """At most one endpoint per address family, IPv4 first (and at least one unless
    ``empty``)."""
    families = [ep.ip.version for ep in endpoints]
    return families in ([4], [6], [4, 6]) or (empty and not families)
