"""SQLite (WAL) persistence of registered peers, so a restarted registrar (also after
``kill -9``) serves the live records at once and keeps its replay floors.

Changes are written in one transaction per batch; the adapter flushes a batch every
``flush_interval`` seconds (0.2 s by default), so at most that much is lost by a crash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from wgmesh.errors import ConfigError, DecodeError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.registry import Change, PeerEntry, PeerEvent

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
    secondary TEXT
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Store:
    """The registrar's state directory: ``<state_dir>/registrar.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = state_dir / "registrar.sqlite3"
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--state-dir {state_dir}: {exc}") from None

    def load(self) -> tuple[Iterator[PeerEntry], int]:
        """All stored peers (oldest refresh first, read as they are consumed: a million of them
        never exist as PeerEntry objects at once) and the last zone serial."""
        serial = self._db.execute("SELECT value FROM meta WHERE name='serial'").fetchone()
        return self._entries(), int(serial[0]) if serial else 1

    def _entries(self) -> Iterator[PeerEntry]:
        rows = self._db.execute(
            "SELECT key, name, endpoint, addresses, nat, since, last_seen, register_counter,"
            " watch_counter, software, secondary FROM peers ORDER BY last_seen"
        )
        for row in rows:
            try:
                entry = PeerEntry(
                    key=bytes(row[0]),
                    name=row[1],
                    endpoint=Endpoint.parse(row[2]),
                    addresses=tuple(Endpoint.parse(a) for a in row[3].split()),
                    nat=NatKind(row[4]),
                    since=row[5],
                    last_seen=row[6],
                    register_counter=row[7],
                    watch_counter=row[8],
                    software=row[9],
                    secondary=Endpoint.parse(row[10]) if row[10] else None,
                )
            except (DecodeError, ValueError):
                continue  # a row we cannot read is skipped, not fatal
            yield entry

    def apply(self, events: Iterable[PeerEvent], serial: int) -> None:
        """Persist a batch of peer changes and the zone serial in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            for ev in events:
                p = ev.peer
                if ev.change == Change.WITHDRAWN:
                    db.execute("DELETE FROM peers WHERE key=?", (p.key,))
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO peers VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        p.key, p.name, str(p.endpoint), " ".join(map(str, p.addresses)),
                        str(p.nat), p.since, p.last_seen, p.register_counter, p.watch_counter,
                        p.software, str(p.secondary) if p.secondary else None,
                    ),
                )  # fmt: skip
            db.execute("INSERT OR REPLACE INTO meta VALUES ('serial', ?)", (serial,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
