"""The push fan-out index (wgmesh.proto.fanout), against a brute-force model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgmesh.proto.fanout import Fanout
from wgmesh.proto.sealed import key_id

KEYS = [bytes([i]) * 32 for i in range(6)]


class Watched:
    """A Fanout with the watcher table the registry would keep beside it (the fan-out lists
    only the watchers with an interest list; the others want everything)."""

    def __init__(self, push_delay: float, listed: int = 4096) -> None:
        self.watchers: dict[bytes, None] = {}
        self.f = Fanout(push_delay, self.watchers, listed)

    def watch(self, key: bytes, interest: tuple[bytes, ...] | None) -> None:
        self.watchers[key] = None
        self.f.watch(key, interest)

    def drop(self, key: bytes) -> None:
        self.watchers.pop(key, None)
        self.f.drop(key)


def test_first_change_at_once_then_gathered_per_window() -> None:
    w = Watched(push_delay=0.25)
    f = w.f
    w.watch(KEYS[0], None)
    assert f.changed(KEYS[1], 10.0) is True
    assert f.take(10.0) == {KEYS[0]: [KEYS[1]]}
    assert f.changed(KEYS[2], 10.1) is False and f.push_at == 10.25
    assert f.changed(KEYS[3], 10.2) is False and not f.due(10.2) and f.due(10.25)
    assert f.take(10.25) == {KEYS[0]: [KEYS[2], KEYS[3]]}
    assert f.push_at is None


def test_nobody_interested_queues_nothing() -> None:
    w = Watched(push_delay=0.25)
    f = w.f
    assert f.changed(KEYS[1], 1.0) is False and f.push_at is None
    w.watch(KEYS[1], None)  # only the peer itself
    w.watch(KEYS[2], (key_id(KEYS[3]),))
    assert f.changed(KEYS[1], 1.0) is False and f.push_at is None
    w.drop(KEYS[1])
    w.drop(KEYS[2])
    w.drop(KEYS[4])  # not a watcher: nothing happens
    assert f.interest(KEYS[2]) is None and f.changed(KEYS[3], 1.0) is False


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("watch"),
            st.sampled_from(KEYS),
            st.none() | st.lists(st.sampled_from(KEYS)).map(lambda ks: tuple(map(key_id, ks))),
        ),
        st.tuples(st.just("drop"), st.sampled_from(KEYS), st.none()),
        st.tuples(st.just("change"), st.sampled_from(KEYS), st.none()),
    ),
    max_size=40,
)


@pytest.mark.parametrize("listed", [0, 2, 4096])
@given(steps=ops)
def test_matches_a_brute_force_model(listed: int, steps: list[tuple[str, bytes, object]]) -> None:
    """Whatever the order of watches, drops and changes, each watcher is told exactly the
    changed keys it asked for (not its own), in change order; with the watchers that want
    everything named in the fan-out's table, found by a walk (more than ``listed``), or both
    in turn."""
    table = Watched(push_delay=0.0, listed=listed)
    f = table.f
    model: dict[bytes, frozenset[bytes] | None] = {}
    pending: list[bytes] = []
    now = 0.0
    for op, key, arg in steps:
        now += 1.0
        if op == "watch":
            assert arg is None or isinstance(arg, tuple)
            table.watch(key, arg)
            model[key] = None if arg is None else frozenset(arg)
        elif op == "drop":
            table.drop(key)
            model.pop(key, None)
        else:
            wanted = any(w != key and (i is None or key_id(key) in i) for w, i in model.items())
            assert f.changed(key, now) is wanted
            if wanted:
                pending.append(key)
                got = f.take(now)
                expect = {}
                for w, i in model.items():
                    theirs = [k for k in pending if k != w and (i is None or key_id(k) in i)]
                    if theirs:
                        expect[w] = theirs
                assert got == expect
                pending = []
    assert table.watchers.keys() == model.keys()
    assert all(f.interest(k) == i for k, i in model.items())


class NoWalk(dict[bytes, None]):
    """A watcher table that fails the test when it is walked."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the fan-out walked every watcher")


def test_a_flush_walks_the_watchers_only_when_too_many_want_everything() -> None:
    """Watchers with lists, and a few that want everything, are found without a walk of all
    watchers (at a million rows a walk costs 30 to 65 ms per flush); past ``listed`` they are
    walked, and named again once a walk finds few enough."""
    watchers = NoWalk()
    f = Fanout(0.0, watchers, listed=2)
    for k in KEYS[:3]:
        watchers[k] = None
        f.watch(k, (key_id(KEYS[5]),))
    f.watch(KEYS[0], (key_id(KEYS[5]),))  # the same again: nothing moves
    assert f.changed(KEYS[5], 1.0)
    assert f.take(1.0) == {k: [KEYS[5]] for k in KEYS[:3]}
    watchers[KEYS[3]] = None
    f.watch(KEYS[3], None)
    f.watch(KEYS[3], None)
    assert f.changed(KEYS[5], 2.0)
    assert f.take(2.0) == {k: [KEYS[5]] for k in KEYS[:4]}
    for k in KEYS[:3]:  # three want everything now: more than two, so a flush walks
        f.watch(k, None)
    assert f.changed(KEYS[5], 3.0)
    with pytest.raises(AssertionError, match="walked"):
        f.take(3.0)
    walked = dict(watchers)
    g = Fanout(0.0, walked, listed=2)
    for k in KEYS[:4]:
        g.watch(k, None)
    assert g.changed(KEYS[5], 4.0)
    assert g.take(4.0) == {k: [KEYS[5]] for k in KEYS[:4]}
    for k in KEYS[:3]:
        del walked[k]
        g.drop(k)
    assert g.changed(KEYS[5], 5.0)
    assert g.take(5.0) == {KEYS[3]: [KEYS[5]]}  # a walk found one: named again
    g._watchers = NoWalk(walked)
    assert g.changed(KEYS[5], 6.0)
    assert g.take(6.0) == {KEYS[3]: [KEYS[5]]}  # and not walked again
