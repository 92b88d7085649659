"""The refresh journal: its records (wgmesh.proto.refreshlog, property-tested as a parser of
what a crash or a damaged disk leaves) and the store that appends them, reads them over its
table at a restart and folds them into it (wgmesh.registry.store)."""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.payloads import MAX_SOFTWARE
from wgmesh.proto.peerentry import Admission, AdmittedPeer, Change, PeerEntry, Refresh
from wgmesh.proto.refreshlog import HEAD, RefreshRecord, pack_record, read_records
from wgmesh.proto.registry import Registry
from wgmesh.registry.store import FOLD_RECORDS, Store

from .test_registry import NOW, PORT, SRC, SRC2, SRC6, Peer, make

records = st.builds(
    RefreshRecord,
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=2).map(tuple),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=MAX_SOFTWARE),
)


def packed(rs: list[RefreshRecord]) -> bytes:
    return b"".join(pack_record(*r) for r in rs)


@given(st.lists(records, max_size=8))
def test_records_read_back_as_written(rs: list[RefreshRecord]) -> None:
    data = packed(rs)
    assert read_records(data) == (rs, len(data), False)


@given(st.lists(records, min_size=1, max_size=6), st.data())
def test_a_torn_tail_loses_the_torn_record_only(
    rs: list[RefreshRecord], data: st.DataObject
) -> None:
    """A crash cuts the file anywhere: every whole record before the cut is read, and the cut
    one is not data-complete (not taken for damage: the next chunk of the file may hold it)."""
    whole = packed(rs)
    cut = data.draw(st.integers(0, len(whole) - 1))
    got, used, bad = read_records(whole[:cut])
    assert got == rs[: len(got)] and not bad
    assert used == len(packed(got)) and cut - used < len(pack_record(*rs[len(got)]))


@given(st.lists(records, min_size=1, max_size=6), st.data())
def test_a_damaged_record_ends_the_reading(rs: list[RefreshRecord], data: st.DataObject) -> None:
    """One flipped bit anywhere in a record: the records before it are read, that one and
    the ones after are not (the CRC, or the length it carries, gives it away)."""
    whole = bytearray(packed(rs))
    at = data.draw(st.integers(0, len(whole) - 1))
    whole[at] ^= 1 << data.draw(st.integers(0, 7))
    got, used, bad = read_records(bytes(whole))
    before = [r for i, r in enumerate(rs) if len(packed(rs[: i + 1])) <= at]
    assert got == before and used == len(packed(before))
    assert bad or len(whole) - used < HEAD.size + 90  # (a length made longer: a torn tail)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_any_bytes_read_without_raising(data: bytes) -> None:
    got, used, _ = read_records(data)
    assert packed(got) == data[:used] and used <= len(data)


@pytest.mark.parametrize(
    ("key", "counter", "times", "software"),
    [
        (bytes(31), 1, (NOW,), "x"),
        (bytes(32), -1, (NOW,), "x"),
        (bytes(32), 2**64, (NOW,), "x"),
        (bytes(32), 1, (), "x"),
        (bytes(32), 1, (NOW, NOW, NOW), "x"),
        (bytes(32), 1, (float("inf"),), "x"),
        (bytes(32), 1, (NOW,), "x" * (MAX_SOFTWARE + 1)),
        (bytes(32), 1, (NOW,), "é"),
    ],
)
def test_what_the_journal_cannot_hold_is_refused(
    key: bytes, counter: int, times: tuple[float, ...], software: str
) -> None:
    with pytest.raises(ValueError):
        pack_record(key, counter, times, software)


def test_a_crafted_record_with_a_bad_count_is_damage() -> None:
    import zlib

    body = struct.pack("<32sQB", bytes(32), 5, 3) + struct.pack("<d", NOW) * 2
    assert read_records(HEAD.pack(zlib.crc32(body), len(body)) + body) == ([], 0, True)


# -- the store ---------------------------------------------------------------------------


REG_PRIVATE = PrivateKey.generate()
REG_KEY = bytes(REG_PRIVATE.public_key)


def journals(state: Path) -> list[Path]:
    return sorted(state.glob("refresh-*.log"))


def stored_counter(state: Path, key: bytes) -> int:
    db = sqlite3.connect(state / "registrar.sqlite3")
    try:
        return int(
            db.execute("SELECT register_counter FROM peers WHERE key=?", (key,)).fetchone()[0]
        )
    finally:
        db.close()


def crash(store: Store) -> None:
    """What ``kill -9`` leaves: everything applied is written, nothing else is done."""
    store._active.close()
    store._db.close()


def reopened(store: Store, state: Path) -> tuple[Store, dict[bytes, PeerEntry]]:
    """``store`` crashed, the state directory opened again, and the peers it reads back."""
    crash(store)
    again = Store(state)
    return again, {s.entry.key: s.entry for s in again.load()[0]}


def test_a_refresh_goes_to_the_journal_and_a_restart_reads_it(tmp_path: Path) -> None:
    r = make(REG_PRIVATE)
    alice = Peer()
    r.receive(alice.register(REG_KEY), SRC, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    first = alice.counter
    r.receive(alice.register(REG_KEY, NOW + 20), SRC, PORT, NOW + 20)
    events = r.events()
    assert [type(e) for e in events] == [Refresh]
    store.apply(events, r.zone.serial, r.wrapped_key)
    assert stored_counter(tmp_path, alice.key) == first  # the row was not updated
    assert store.journaled == 1
    again, got = reopened(store, tmp_path)
    assert got == dict(r.peers.items())
    assert again.torn == 0
    again.close()


def test_a_replay_after_a_restart_is_refused_by_the_journals_floor(tmp_path: Path) -> None:
    """The attack the store's floors are for: a refresh Register, captured and replayed from
    the attacker's address after the registrar restarted, would move the peer's published
    endpoint there. The refresh is only in the journal (its row has the first counter), and
    the replay is refused."""
    r = make(REG_PRIVATE)
    alice = Peer()
    r.receive(alice.register(REG_KEY), SRC, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    captured = alice.register(REG_KEY, NOW + 20)
    r.receive(captured, SRC, PORT, NOW + 20)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    assert stored_counter(tmp_path, alice.key) < alice.counter
    crash(store)
    again = Store(tmp_path)
    r2 = make(REG_PRIVATE)
    r2.restore(again.load()[0], NOW + 21)
    attacker = Endpoint.parse("203.0.113.66:40123")
    assert r2.receive(captured, attacker, PORT, NOW + 21) == []
    assert r2.counters["replay"] == 1
    assert r2.peers[alice.key].endpoint == SRC
    again.close()


def test_a_torn_journal_keeps_what_is_whole_and_is_never_appended_to(tmp_path: Path) -> None:
    r = make(REG_PRIVATE)
    peers = [Peer() for _ in range(3)]
    for i, p in enumerate(peers):
        r.receive(p.register(REG_KEY), Endpoint.parse(f"198.51.100.{i + 1}:40000"), PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    for i, p in enumerate(peers):
        r.receive(
            p.register(REG_KEY, NOW + 20),
            Endpoint.parse(f"198.51.100.{i + 1}:40000"),
            PORT,
            NOW + 20,
        )
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    crash(store)
    [path] = journals(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # the last record torn by the crash
    again = Store(tmp_path)
    got = {s.entry.key: s.entry for s in again.load()[0]}
    assert again.torn == 1
    assert [got[p.key] == r.peers[p.key] for p in peers] == [True, True, False]
    assert got[peers[2].key].register_counter == stored_counter(tmp_path, peers[2].key)
    assert len(journals(tmp_path)) == 2 and path.read_bytes() == whole[:-5]
    again.close()


def test_a_fold_writes_the_rows_and_deletes_the_journals_before_it(tmp_path: Path) -> None:
    r = make(REG_PRIVATE)
    peers = [Peer() for _ in range(7)]
    sources = [Endpoint.parse(f"198.51.100.{i + 1}:40000") for i in range(7)]
    for p, src in zip(peers, sources, strict=True):
        r.receive(p.register(REG_KEY), src, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    for p, src in zip(peers, sources, strict=True):
        r.receive(p.register(REG_KEY, NOW + 20), src, PORT, NOW + 20)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    assert not store.fold_wanted(len(r.rows))  # 7 records: far below the threshold
    steps = 1
    while store.fold_step(r.rows, 3):
        steps += 1
    assert steps == 3  # 3 + 3 + 1 rows
    assert [stored_counter(tmp_path, p.key) for p in peers] == [p.counter for p in peers]
    assert len(journals(tmp_path)) == 1 and journals(tmp_path)[0].stat().st_size == 0
    assert not store.fold_wanted(len(r.rows))
    again, got = reopened(store, tmp_path)
    assert got == dict(r.peers.items())
    assert again.fold_wanted(len(r.rows))  # the empty journal of the last run waits for a fold
    again.close()


def test_a_fold_starts_when_the_journal_outgrows_its_threshold(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.journaled = FOLD_RECORDS - 1
    assert not store.fold_wanted(10)
    store.journaled = FOLD_RECORDS
    assert store.fold_wanted(10)
    assert not store.fold_wanted(FOLD_RECORDS)  # twice the peers: 2 * FOLD_RECORDS
    store.close()


@pytest.mark.parametrize("seed", range(6))
def test_whatever_the_order_of_refreshes_folds_and_crashes_a_restart_is_exact(
    tmp_path: Path, seed: int
) -> None:
    """Random Registers (refreshes, moves between addresses, a second family coming and
    going), expiry, batches applied, fold steps of random sizes and crashes (kill -9: what
    was applied stays, nothing else happens), some with a torn write after the last whole
    record: after each crash the store reads back exactly the peers the registry held
    when it was last applied, and the registry restored from it goes on from there."""
    rng = random.Random(seed)
    peers = [Peer() for _ in range(10)]
    r: Registry = make(REG_PRIVATE, expiry=120.0)
    store = Store(tmp_path)
    now = NOW
    crashes = folds_done = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.55:
            p = rng.choice(peers)
            src = rng.choice((SRC, SRC2, SRC6, SRC)) if rng.random() < 0.2 else SRC
            src = Endpoint(src.ip, 40000 + peers.index(p))
            r.receive(p.register(REG_KEY, now), src, PORT, now)
        elif op < 0.65:
            now += rng.choice((1.0, 5.0, 30.0))
            r.expire(now)
        elif op < 0.8:
            store.apply(r.events(), r.zone.serial, r.wrapped_key)
        elif op < 0.95:
            store.apply(r.events(), r.zone.serial, r.wrapped_key)  # (a fold's precondition)
            if not store.fold_step(r.rows, rng.randint(1, 4)):
                folds_done += 1
        else:
            store.apply(r.events(), r.zone.serial, r.wrapped_key)
            if rng.random() < 0.5:
                store._active.write(pack_record(bytes(32), 1, (now,), "x")[:-3])
                store._active.flush()
            crash(store)
            crashes += 1
            store = Store(tmp_path)
            entries = list(store.load()[0])
            got = {s.entry.key: s.entry for s in entries}
            left = {k for k, e in got.items() if k not in r.peers}  # (stale when restored)
            assert all(got[k].last_seen + 120.0 <= now for k in left)
            assert {k: e for k, e in got.items() if k not in left} == dict(r.peers.items())
            r = make(REG_PRIVATE, expiry=120.0)
            assert r.restore(entries, now) == 0
    assert crashes >= 5 and folds_done >= 3
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    got = {s.entry.key: s.entry for s in store.load()[0]}
    assert {k: e for k, e in got.items() if k in r.peers} == dict(r.peers.items())
    store.close()


def test_a_mapping_dropped_when_restored_reaches_the_store(tmp_path: Path) -> None:
    """A peer stored with two mappings, one of them stale by the time the registrar restarts:
    the restore drops it, and the store's row must lose it too, or the peer's next refresh
    (one mapping, one time) does not fit the stored row (two of each) and the peer is lost at
    the restart after (a row whose times and mappings disagree does not read)."""
    r = make(REG_PRIVATE, expiry=120.0)
    alice = Peer()
    r.receive(alice.register(REG_KEY), SRC6, PORT, NOW)
    r.receive(alice.register(REG_KEY, NOW + 100), SRC, PORT, NOW + 100)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    assert len(r.peers[alice.key].mappings) == 2
    r2 = make(REG_PRIVATE, expiry=120.0)
    r2.restore(store.load()[0], NOW + 150)  # the IPv6 mapping is 150 s old: dropped
    assert r2.peers[alice.key].mappings == (SRC,)
    r2.receive(alice.register(REG_KEY, NOW + 160), SRC, PORT, NOW + 160)
    store.apply(r2.events(), r2.zone.serial, r2.wrapped_key)
    again, got = reopened(store, tmp_path)
    assert got == dict(r2.peers.items())
    assert again.unreadable == 0
    again.close()


def test_after_a_failed_write_the_journal_goes_on_in_a_new_file(tmp_path: Path) -> None:
    """A full disk: part of a batch reached the journal and the write failed. The failure is
    raised, and the next batch goes to a new journal, so its records are read at the restart
    (appended after the torn part they would never be)."""
    r = make(REG_PRIVATE)
    alice = Peer()
    r.receive(alice.register(REG_KEY), SRC, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    [path] = journals(tmp_path)
    r.receive(alice.register(REG_KEY, NOW + 20), SRC, PORT, NOW + 20)
    store._active.close()
    path.write_bytes(pack_record(alice.key, alice.counter, (NOW + 20,), "test")[:-4])
    store._active = open("/dev/full", "wb")  # noqa: SIM115 (closed by the store)
    with pytest.raises(OSError):
        store.apply(r.events(), r.zone.serial, r.wrapped_key)
    r.receive(alice.register(REG_KEY, NOW + 40), SRC, PORT, NOW + 40)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    assert len(journals(tmp_path)) == 2
    again, got = reopened(store, tmp_path)
    assert got == dict(r.peers.items())
    assert again.torn == 1
    again.close()


def test_a_counter_sqlite_cannot_hold_keeps_no_change_off_the_disk(tmp_path: Path) -> None:
    """A peer (anyone, under open registration) registers with counter 2**64 - 1: bound as it
    is, SQLite's signed INTEGER raises OverflowError and the whole batch, every other peer's
    changes with it, would not be written, at every flush. It is stored as 2**63 - 1 (only
    that peer's own floor is lower after a restart), the journal keeps it exactly, and a
    fold writes it too."""
    r = make(REG_PRIVATE)
    alice, mallory = Peer(), Peer()
    r.receive(alice.register(REG_KEY), SRC, PORT, NOW)
    r.receive(mallory.register(REG_KEY, counter=2**64 - 2), SRC2, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    r.receive(mallory.register(REG_KEY, NOW + 20, counter=2**64 - 1), SRC2, PORT, NOW + 20)
    r.receive(alice.register(REG_KEY, NOW + 20), SRC, PORT, NOW + 20)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    assert r.peers[mallory.key].register_counter == 2**64 - 1
    assert stored_counter(tmp_path, mallory.key) == 2**63 - 1
    assert {s.entry.key: s.entry for s in store.load()[0]} == dict(r.peers.items())
    while store.fold_step(r.rows, 1):
        pass
    assert stored_counter(tmp_path, alice.key) == r.peers[alice.key].register_counter
    assert stored_counter(tmp_path, mallory.key) == 2**63 - 1
    again, got = reopened(store, tmp_path)
    assert got[alice.key] == r.peers[alice.key]
    assert got[mallory.key].register_counter == 2**63 - 1
    again.close()


def test_a_peer_revoked_while_the_registrar_was_down_is_deleted_at_the_start(
    tmp_path: Path,
) -> None:
    """A key left out of the admission file across a restart is withdrawn as a reload would
    withdraw it, so its row does not outlive the journals that held its newest floor (a fold
    deletes them: the row would come back with an older floor when the key is admitted
    again)."""
    r = make(REG_PRIVATE)
    alice, bob = Peer(), Peer()
    r.receive(alice.register(REG_KEY), SRC, PORT, NOW)
    r.receive(bob.register(REG_KEY), SRC2, PORT, NOW)
    store = Store(tmp_path)
    store.apply(r.events(), r.zone.serial, r.wrapped_key)
    only_alice = Admission(open=False, peers={alice.key: AdmittedPeer(alice.key)})
    r2 = make(REG_PRIVATE, only_alice)
    r2.restore(store.load()[0], NOW + 1)
    events = r2.events()
    assert [(e.change, e.peer.key) for e in events] == [(Change.WITHDRAWN, bob.key)]
    store.apply(events, r2.zone.serial, r2.wrapped_key)
    assert [s.entry.key for s in store.load()[0]] == [alice.key]
    store.close()
