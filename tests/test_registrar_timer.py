"""The registrar's timers, in process on loopback: one expiry timer re-armed from
``Registry.next_timer()`` after every input, a flush timer only while changes wait, no polling."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from tests.procs import Client
from wgmesh.proto.dnssd import ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.proto.metrics import counter_values
from wgmesh.proto.registry import Outgoing, PeerEvent, RegistryConfig
from wgmesh.registry.server import Registrar, RegistrarSettings

ZONE = ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "hostmaster.mesh.test.")


@dataclass
class Probe:
    """A running in-process registrar, its expire() and store.apply() calls recorded."""

    registrar: Registrar
    key: bytes
    expired: list[tuple[float, int]] = field(default_factory=list)
    """(wall time of the call, peers left after it)."""
    flushed: list[tuple[float, list[PeerEvent]]] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(f"127.0.0.1:{self.registrar.stun_ports[0]}")

    async def register(self, client: Client) -> float:
        """Register ``client`` (a blocking exchange: off the loop); its last_seen."""
        await asyncio.to_thread(client.register, self.endpoint)
        return self.registrar.registry.peers[client.key].last_seen


async def start(
    tmp: Path, expiry: float, authorized_keys: Path | None = None, flush: float = 0.2
) -> Probe:
    private = PrivateKey.generate()
    settings = RegistrarSettings(
        zone=ZONE,
        private_key=bytes(private),
        listen="127.0.0.1",
        stun_port=0,
        stun_alt_port=0,
        dns_port=0,
        state_dir=tmp / "state",
        authorized_keys=authorized_keys,
        open_registration=authorized_keys is None,
        registry=RegistryConfig(expiry=expiry),
        flush_interval=flush,
    )
    registrar = await Registrar.start(settings)
    probe = Probe(registrar, bytes(private.public_key))
    registry, store = registrar.registry, registrar.store
    expire: Callable[[float], list[Outgoing]] = registry.expire
    apply = store.apply

    def counted_expire(now: float) -> list[Outgoing]:
        out = expire(now)
        probe.expired.append((time.time(), len(registry.peers)))
        return out

    def counted_apply(
        events: list[PeerEvent], serial: int, wrapped: Callable[[bytes], bytes | None] | None = None
    ) -> None:
        probe.flushed.append((time.time(), list(events)))
        apply(events, serial, wrapped)

    registry.expire = counted_expire  # type: ignore[method-assign]
    store.apply = counted_apply  # type: ignore[assignment,method-assign]
    return probe


@pytest.fixture
async def probes() -> AsyncIterator[list[Probe]]:
    started: list[Probe] = []
    yield started
    for p in started:
        await p.registrar.close()


def timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The loop's live timers (asyncio's own list: what can wake it up)."""
    scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return [h for h in scheduled if not h.cancelled()]


async def test_an_idle_registrar_has_no_timer_at_all(tmp_path: Path, probes: list[Probe]) -> None:
    probes.append(p := await start(tmp_path, expiry=0.5))
    await asyncio.sleep(1.0)
    assert p.expired == [] and p.flushed == []
    assert timers(asyncio.get_running_loop()) == []


async def test_a_peer_is_withdrawn_when_it_expires_and_not_polled_before(
    tmp_path: Path, probes: list[Probe]
) -> None:
    probes.append(p := await start(tmp_path, expiry=0.8))
    alice = Client(p.key)
    try:
        seen = await p.register(alice)
        deadline = seen + 0.8
        await asyncio.sleep(0.5)
        # before the deadline: one timer (the expiry), never fired; the change was written once
        assert p.expired == []
        (timer,) = timers(asyncio.get_running_loop())
        assert timer.when() - asyncio.get_running_loop().time() == pytest.approx(
            deadline - time.time(), abs=0.02
        )
        assert [[e.change for e in events] for _, events in p.flushed] == [["added"]]
        # written before the Status acknowledged it (make_durable), not at the flush timer
        assert p.flushed[0][0] - seen < 0.1
        await asyncio.sleep(deadline + 0.4 - time.time())
        assert alice.key not in p.registrar.registry.peers
        withdrawn_at = next(at for at, left in p.expired if left == 0)
        assert deadline <= withdrawn_at < deadline + 0.1
        # the row, then the watcher the same client left a moment later; nothing else
        assert len(p.expired) <= 3
        assert p.registrar.registry.next_timer() is None
        assert timers(asyncio.get_running_loop()) == []
        assert [e.change for e in p.flushed[-1][1]] == ["withdrawn"]
        calls = len(p.expired)
        await asyncio.sleep(0.5)
        assert len(p.expired) == calls
    finally:
        alice.close()


async def test_refreshes_move_the_deadline(tmp_path: Path, probes: list[Probe]) -> None:
    probes.append(p := await start(tmp_path, expiry=0.6))
    alice = Client(p.key)
    try:
        await p.register(alice)
        for _ in range(4):  # refreshed every 0.3 s for 1.2 s: never expires meanwhile
            await asyncio.sleep(0.3)
            seen = await p.register(alice)
        assert alice.key in p.registrar.registry.peers
        # the timer fired at most at the old deadlines (found nothing due) and was re-armed
        assert all(left == 1 for _, left in p.expired)
        await asyncio.sleep(seen + 0.6 + 0.3 - time.time())
        assert alice.key not in p.registrar.registry.peers
    finally:
        alice.close()


async def test_restored_peers_expire_on_time_without_any_datagram(
    tmp_path: Path, probes: list[Probe]
) -> None:
    first = await start(tmp_path, expiry=30)
    alice = Client(first.key)
    try:
        seen = await first.register(alice)
    finally:
        alice.close()
        await first.registrar.close()
    probes.append(p := await start(tmp_path, expiry=1.0))
    assert alice.key in p.registrar.registry.peers  # restored, and the timer armed from it
    await asyncio.sleep(seen + 1.0 + 0.3 - time.time())
    assert alice.key not in p.registrar.registry.peers
    withdrawn_at = next(at for at, left in p.expired if left == 0)
    assert seen + 1.0 <= withdrawn_at < seen + 1.1


async def test_a_reload_that_revokes_the_last_peer_disarms_the_timer(
    tmp_path: Path, probes: list[Probe]
) -> None:
    alice_key = PrivateKey.generate()
    keys = tmp_path / "authorized_keys"
    keys.write_text(f"{encode_key(bytes(alice_key.public_key))} alice\n")
    probes.append(p := await start(tmp_path, expiry=30, authorized_keys=keys))
    alice = Client(p.key, alice_key)
    try:
        await p.register(alice)
        assert len(timers(asyncio.get_running_loop())) == 1  # the expiry (written already)
        keys.write_text("")
        p.registrar.reload()
        assert alice.key not in p.registrar.registry.peers
        for _ in range(100):  # the 0.2 s flush, however loaded the machine (at most 5 s)
            if len([e for _, events in p.flushed for e in events]) >= 2:
                break
            await asyncio.sleep(0.05)
        assert [e.change for _, events in p.flushed for e in events] == ["added", "withdrawn"]
        # the withdrawal came within the zone's serial interval (1 s) of the addition: one
        # timer publishes its serial at the interval's end, and then there is none
        for _ in range(60):
            if not timers(asyncio.get_running_loop()):
                break
            await asyncio.sleep(0.05)
        assert timers(asyncio.get_running_loop()) == [] and [n for _, n in p.expired] == [0]
    finally:
        alice.close()


async def test_the_refresh_journal_is_folded_by_a_timer_that_stops_when_done(
    tmp_path: Path, probes: list[Probe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refreshes go to the journal; once it holds as many as the threshold (made 4 here), the
    fold timer writes them into the table a chunk at a time, deletes the journal from before
    the fold, and is not armed again."""
    monkeypatch.setattr("wgmesh.registry.store.FOLD_RECORDS", 4)
    monkeypatch.setattr("wgmesh.registry.server.FOLD_CHUNK", 1)  # one row a step: 2 steps
    probes.append(p := await start(tmp_path, expiry=60))
    clients = [Client(p.key), Client(p.key)]
    try:
        for _ in range(3):  # one first contact and two refreshes each
            for c in clients:
                await p.register(c)
        state = tmp_path / "state"
        store = p.registrar.store
        steps: list[bool] = []
        fold_step = store.fold_step
        store.fold_step = lambda rows, limit: steps.append(fold_step(rows, limit)) or steps[-1]  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while steps[-1:] != [False] or len(list(state.glob("refresh-*.log"))) != 1:
            assert time.monotonic() < deadline, "the journal was not folded"
            await asyncio.sleep(0.05)
        assert steps == [True, True, False]  # two rows one by one, then the end of the table
        await asyncio.sleep(0.3)
        assert not any(h._callback == p.registrar._fold_step  # type: ignore[attr-defined]
                       for h in timers(asyncio.get_running_loop()))  # fmt: skip
        rows = store._db.execute("SELECT key, register_counter FROM peers").fetchall()
        assert {bytes(k): n for k, n in rows} == {
            c.key: p.registrar.registry.peers[c.key].register_counter for c in clients
        }
    finally:
        for c in clients:
            c.close()


async def test_a_write_that_failed_is_tried_again_and_loses_no_peer(
    tmp_path: Path, probes: list[Probe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses a batch (here: the one with a first contact), twice: it is logged and
    counted, the change is kept and written a moment later, so the peer is in the table and
    its refreshes (journaled only) have a row to land on at the next start; no fold step runs
    while the table lacks an event."""
    monkeypatch.setattr("wgmesh.registry.server.RETRY", 0.3)
    monkeypatch.setattr("wgmesh.registry.store.FOLD_RECORDS", 0)  # folds from the start on
    probes.append(p := await start(tmp_path, expiry=60))
    store = p.registrar.store
    apply = store.apply
    failures = [sqlite3.OperationalError("database or disk is full")] * 2

    def failing(*args: Any, **kwargs: Any) -> None:
        if failures and args[0]:
            raise failures.pop()
        apply(*args, **kwargs)

    store.apply = failing  # type: ignore[method-assign]
    fold_step = store.fold_step
    pending_at_fold: list[bool] = []

    def watched_fold(rows: Any, limit: int) -> bool:
        pending_at_fold.append(bool(p.registrar._pending))
        return fold_step(rows, limit)

    store.fold_step = watched_fold  # type: ignore[method-assign]
    store.fold_wanted = lambda peers: True  # type: ignore[method-assign]  # (folds all along)
    alice = Client(p.key)
    try:
        await p.register(alice)  # answered: the failure is the store's, not the registration's
        assert store._db.execute("SELECT COUNT(*) FROM peers").fetchone()[0] == 0
        await asyncio.sleep(0.8)
        assert not failures and p.registrar.store_errors == 2  # (the second: a fold step's)
        (key,) = store._db.execute("SELECT key FROM peers").fetchone()
        assert bytes(key) == alice.key
        assert counter_values(p.registrar.metrics())["wgmesh_registrar_store_errors"] == 2
        assert pending_at_fold and not any(pending_at_fold)  # never before the table had it all
    finally:
        alice.close()


async def test_a_restarted_idle_registrar_folds_once_and_then_has_no_timer(
    tmp_path: Path, probes: list[Probe]
) -> None:
    """Each start opens a new journal generation, so the next start finds the last one's and
    folds it: one short fold, then nothing wakes the registrar up."""
    first = await start(tmp_path, expiry=0.5)
    await first.registrar.close()
    assert len(list((tmp_path / "state").glob("refresh-*.log"))) == 1
    probes.append(p := await start(tmp_path, expiry=0.5))
    await asyncio.sleep(0.5)
    assert len(list((tmp_path / "state").glob("refresh-*.log"))) == 1  # the old one folded
    assert timers(asyncio.get_running_loop()) == []
    assert p.expired == []
