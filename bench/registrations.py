"""Authenticated registrations per second on one core, through the registrar's sans-IO core
(STUN decode, admission, box open with the peer's stored shared key, freshness, replay, table
update).

Anchor, measured in the same run: opening the same NaCl boxes alone with a cached Box (the
floor any implementation of this protocol pays). Target (issue 6): >= 40,000/s sustained, with
the p99 handling latency, "enough for a million peers refreshing every 25 s": so also at peer
counts above what any bounded per-remote cache would hold (``--peers 200000``). The line
"X25519 in refreshes" counts key agreements during the timed rounds (0: every refresh opened
with a stored key; shown when the Sealer counts them).

    python bench/registrations.py --peers 20000 --rounds 5
    python bench/registrations.py --peers 200000 --rounds 3     # ~2 minutes
    python bench/registrations.py --peers 1000000 --rounds 2    # the target size, ~15 minutes
    python bench/registrations.py --dual      # every peer registers over IPv4 and IPv6
    python bench/registrations.py --peers 1000000 --rounds 2 --store   # and what SQLite costs

``--store``: the registrar's database too (wgmesh.registry.store, in a temporary directory
under /var/tmp, on disk as a registrar's state directory is): the first contacts written
untimed, then each timed round's refresh events applied as the registrar flushes them (one
batch per --flush-batch events, as many as a 0.2 s flush holds at N/20 refreshes a second),
timed apart from the registry's work: the refresh journal's appends, then one whole fold of
the journal into the table (in the registrar's chunks, the longest step printed: the loop
stalls that long), charged to the refreshes at the rate folds happen (one per
``max(FOLD_RECORDS, 2 N)`` refreshes). Anchor, the same batches in the same run: each refresh
as an UPDATE of its row's times and software (what a refresh cost the store before the
journal), on a copy of the database made after the first contacts, opened as the store opens
its own, so that neither pays the other's WAL checkpoints.

Bounded: peers * rounds messages, one round built in advance at a time (untimed); no network.

Garbage collection: the bench itself holds a Sealer per peer and a round of prebuilt datagrams
(about 7 tracked objects per peer), which the registrar process never holds. Each timed round
runs with them frozen (``gc.freeze()`` after the build), so the collector's full passes do not
scan them; the registry's own allocations are collected as usual, and the line "GC full
passes" counts the collector's full passes during the timed rounds.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from nacl.public import Box, PrivateKey

from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.peerentry import Event, Refresh
from wgmesh.proto.peerrow import refreshed_fields
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import Admission, Registry, RegistryConfig
from wgmesh.registry.server import FOLD_CHUNK
from wgmesh.registry.store import FOLD_RECORDS, Store

UPDATE = (
    "UPDATE peers SET last_seen=?, refreshed=?, register_counter=?, software=?"
    " WHERE key=? AND wrapped_key IS NOT NULL"
)
"""The anchor's statement: the store's refresh UPDATE before the journal, on its own copy."""

UNLIMITED = RateLimitConfig(rate=1e9, burst=1e9)
"""The benchmarks measure the work, not the limits (every message is from one source, at one
instant)."""

Batch = list[tuple[bytes, Endpoint]]


def build(
    sealers: list[sealed.Sealer], reg_key: bytes, counter: int, now: float, dual: bool = False
) -> Batch:
    """One registration per peer, as its daemon sends every probe interval, the peers in a
    random order (a new one each round: arrivals are not sorted by key or by age) (``dual``:
    one over IPv4, then one over IPv6, each peer with a mapping per family)."""
    batch = []
    order = list(range(len(sealers)))
    random.Random(counter).shuffle(order)
    for i in order:
        s = sealers[i]
        sources = [Endpoint.of(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40000)]
        if dual:
            sources.append(Endpoint.of(f"2001:db8::{i >> 16:x}:{i & 0xFFFF:x}", 40000))
        for j, src in enumerate(sources):
            payload = sealed.Register(int(now * 1000), 2 * counter + j, f"p{i}", (), "bench", False)
            data = sealed.build_sealed_request(
                s, s.public_key, reg_key, payload, os.urandom(12), os.urandom(24)
            )
            batch.append((data, src))
    return batch


def bench_registry(reg_priv: PrivateKey) -> Registry:
    """An open registry with no limits and no expiry (the benchmarks measure the work)."""
    return Registry(
        RegistryConfig(
            rate_limit=UNLIMITED, agreement_limit=UNLIMITED, key_rate_limit=UNLIMITED, expiry=1e9
        ),
        sealed.Sealer(bytes(reg_priv)),
        Admission(open=True),
        Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test.")),
        os.urandom,
        3478,
    )


def freeze_bench_objects() -> int:
    """Collect, then freeze what is tracked now (the bench's keys and datagrams, see above)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5, help="first contact + refresh rounds (>= 2)")
    ap.add_argument("--dual", action="store_true", help="each peer registers over IPv4 and IPv6")
    ap.add_argument("--store", action="store_true", help="time the database's writes too")
    ap.add_argument("--flush-batch", type=int, default=0,
                    help="events per transaction with --store (default: peers / 100, at least"
                         " 1000); also how often the registry's events are drained")  # fmt: skip
    args = ap.parse_args()
    if args.rounds < 2 or args.peers < 1:
        ap.error("--rounds must be at least 2 and --peers at least 1")
    state = Path(tempfile.mkdtemp(prefix="wgmesh-bench-", dir="/var/tmp")) if args.store else None
    try:
        return run(args, state)
    finally:
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)


def run(args: argparse.Namespace, state: Path | None) -> int:
    store = None if state is None else Store(state)
    anchor_db = None
    flush_batch = args.flush_batch or max(1000, args.peers // 100)
    store_time = update_time = 0.0
    stored = 0
    reg_priv = PrivateKey.generate()
    reg_key = bytes(reg_priv.public_key)
    now = time.time()
    peers = [PrivateKey.generate() for _ in range(args.peers)]
    sealers = [sealed.Sealer(bytes(p)) for p in peers]
    registry = bench_registry(reg_priv)
    print(
        f"{args.peers} peers, {args.rounds} rounds (built one at a time, untimed) ...", flush=True
    )
    # round 0 fills the table (first contact pays X25519 once per peer)
    batch = build(sealers, reg_key, 1000, now, args.dual)
    frozen = freeze_bench_objects()
    t = time.perf_counter()
    for k, (data, src) in enumerate(batch):
        registry.receive(data, src, 3478, now)
        if k % flush_batch == 0:
            written = registry.events()
            if store is not None:  # the first contacts written, untimed
                b = time.perf_counter()
                store.apply(written, 1, registry.wrapped_key)
                t += time.perf_counter() - b
    first = time.perf_counter() - t
    gc.unfreeze()
    written = registry.events()
    if store is not None and state is not None:
        store.apply(written, 1, registry.wrapped_key)
        anchor_db = anchor_copy(state)
    agreements = getattr(registry.sealer, "agreements", None)
    lat: list[float] = []
    total = 0.0
    full_passes = 0
    for r in range(1, args.rounds):
        batch = build(sealers, reg_key, 1000 + r, now, args.dual)
        frozen = freeze_bench_objects()
        full = gc.get_stats()[2]["collections"]
        t0 = time.perf_counter()
        for k, (data, src) in enumerate(batch):
            a = time.perf_counter()
            registry.receive(data, src, 3478, now)
            lat.append(time.perf_counter() - a)
            if k % flush_batch == 0:  # as the adapter drains them every loop iteration
                written = registry.events()
                if store is not None and anchor_db is not None:  # and writes them, timed apart
                    b = time.perf_counter()
                    store.apply(written, 1, registry.wrapped_key)
                    spent = time.perf_counter() - b
                    store_time, stored = store_time + spent, stored + len(written)
                    updated = update_rows(anchor_db, written)
                    update_time += updated
                    t0 += spent + updated
        total += time.perf_counter() - t0
        full_passes += gc.get_stats()[2]["collections"] - full
        gc.unfreeze()
        written = registry.events()
        if store is not None and anchor_db is not None:
            b = time.perf_counter()
            store.apply(written, 1, registry.wrapped_key)
            store_time, stored = store_time + time.perf_counter() - b, stored + len(written)
            update_time += update_rows(anchor_db, written)
    n = len(lat)
    per_round = args.peers * (2 if args.dual else 1)
    assert registry.counters["registered"] == per_round * args.rounds, registry.counters
    if agreements is not None:
        agreements = getattr(registry.sealer, "agreements", 0) - agreements
    # anchor: the box opens alone, cached shared keys, the last round's messages
    boxes = {bytes(p.public_key): Box(reg_priv, p.public_key) for p in peers}
    opened = []
    for data, _ in batch:
        msg = stun.decode(data)
        blob, key = msg.get(stun.ATTR_WG_SEALED), msg.get(stun.ATTR_WG_PUBLIC_KEY)
        assert blob is not None and key is not None
        opened.append((boxes[key], blob))
    freeze_bench_objects()  # as the timed rounds
    t = time.perf_counter()
    for box, blob in opened:
        box.decrypt(blob[24:], blob[:24])
    anchor = len(opened) / (time.perf_counter() - t)
    gc.unfreeze()
    rate = n / total
    lat.sort()
    print()
    print(f"first contact (X25519 each): {len(batch) / first:10.0f} /s"
          + ("  (IPv4, then the IPv6 mapping added)" if args.dual else ""))  # fmt: skip
    print(
        f"refreshes (stored key):      {rate:10.0f} /s  p50 {statistics.median(lat) * 1e6:.1f} us  "
        f"p99 {lat[int(0.99 * (n - 1))] * 1e6:.1f} us"
    )
    if agreements is not None:
        print(f"X25519 in refreshes:         {agreements:10d} of {n}")
    print(f"GC full passes, timed:       {full_passes:10d}  ({frozen} bench objects frozen)")
    print(f"anchor: box open alone:      {anchor:10.0f} /s")
    print(f"ratio (ours / anchor):       {rate / anchor:10.2f}")
    if store is not None and stored and state is not None:
        journal_bytes = sum(p.stat().st_size for p in state.glob("refresh-*.log"))
        b = time.perf_counter()
        latest = len(store._journaled())  # what a start reads before it restores the table
        journal_read = time.perf_counter() - b
        steps: list[float] = []
        more = True
        while more:
            b = time.perf_counter()
            more = store.fold_step(registry.rows, FOLD_CHUNK)
            steps.append(time.perf_counter() - b)
        rows = len(registry.rows)
        folded = sum(steps) / max(FOLD_RECORDS, 2 * rows)
        per = store_time / stored + folded
        update = update_time / stored
        print(f"store: journal append:       {store_time / stored * 1e6:10.2f} us a refresh  "
              f"({stored} in batches of {flush_batch}; {journal_bytes / stored:.0f} bytes each)")  # fmt: skip
        print(f"store: journal read:         {journal_read:10.2f} s  ({stored} records, "
              f"{latest} keys: what a start adds to reading the table)")  # fmt: skip
        print(f"store: fold of {rows} rows: {sum(steps):10.2f} s  ({sum(steps) / rows * 1e6:.2f} us "
              f"a row, {len(steps)} steps of {FOLD_CHUNK}, longest {max(steps) * 1e3:.1f} ms)")  # fmt: skip
        print(f"store: a refresh, in all:    {per * 1e6:10.2f} us  (the fold charged as one per "
              f"{max(FOLD_RECORDS, 2 * rows)} refreshes; {per * rate:.2f}x the registry's own)")  # fmt: skip
        print(f"anchor: UPDATE a refresh:    {update * 1e6:10.2f} us  (its row, per statement, "
              f"same batches, on its own copy)")  # fmt: skip
        print(f"ratio (UPDATE / ours):       {update / per:10.1f}")
        refreshes = args.peers * (2 if args.dual else 1) / 20
        print(f"store at N/20 s:             {per * refreshes * 100:10.1f} % of one core  "
              f"(UPDATE: {update * refreshes * 100:.0f} %)")  # fmt: skip
        store.close()
    if anchor_db is not None:
        anchor_db.close()
    for target, issue in ((40000, "issue 6"), (60000, "issue 14, at --peers 1000000")):
        print(f"target >= {target}/s ({issue}): {'MET' if rate >= target else 'MISSED'}")
    return 0


def anchor_copy(state: Path) -> sqlite3.Connection:
    """The anchor's own copy of the database as the first contacts left it (SQLite's backup),
    opened as the store opens its own, so that neither pays the other's WAL checkpoints."""
    src = sqlite3.connect(state / "registrar.sqlite3")
    db = sqlite3.connect(state / "anchor.sqlite3", isolation_level=None)
    src.backup(db)
    src.close()
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def update_rows(db: sqlite3.Connection, events: list[Event]) -> float:
    """The anchor: ``events``' refreshes as UPDATEs of their rows in one transaction, as the
    store wrote each refresh before the journal. Seconds."""
    b = time.perf_counter()
    db.execute("BEGIN")
    for ev in events:
        if isinstance(ev, Refresh) and not ev.moved:
            refreshed, counter, software = refreshed_fields(ev.row)
            db.execute(UPDATE, (max(refreshed), " ".join(map(repr, refreshed)), counter, software,
                                ev.key))  # fmt: skip
    db.execute("COMMIT")
    return time.perf_counter() - b


if __name__ == "__main__":
    raise SystemExit(main())
