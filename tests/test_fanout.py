"""The push fan-out index (wgmesh.proto.fanout), against a brute-force model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wgmesh.proto.fanout import Fanout
from wgmesh.proto.sealed import key_id

KEYS = [bytes([i]) * 32 for i in range(6)]


def test_first_change_at_once_then_gathered_per_window() -> None:
    f = Fanout(push_delay=0.25)
    f.watch(KEYS[0], None)
    assert f.changed(KEYS[1], 10.0) is True
    assert f.take(10.0) == {KEYS[0]: [KEYS[1]]}
    assert f.changed(KEYS[2], 10.1) is False and f.push_at == 10.25
    assert f.changed(KEYS[3], 10.2) is False and not f.due(10.2) and f.due(10.25)
    assert f.take(10.25) == {KEYS[0]: [KEYS[2], KEYS[3]]}
    assert f.push_at is None


def test_nobody_interested_queues_nothing() -> None:
    f = Fanout(push_delay=0.25)
    assert f.changed(KEYS[1], 1.0) is False and f.push_at is None
    f.watch(KEYS[1], None)  # only the peer itself
    f.watch(KEYS[2], (key_id(KEYS[3]),))
    assert f.changed(KEYS[1], 1.0) is False and f.push_at is None
    f.drop(KEYS[1])
    f.drop(KEYS[2])
    f.drop(KEYS[4])  # not a watcher: nothing happens
    assert len(f) == 0 and f.interest(KEYS[2]) is None


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


@given(ops)
def test_matches_a_brute_force_model(steps: list[tuple[str, bytes, object]]) -> None:
    """Whatever the order of watches, drops and changes, each watcher is told exactly the
    changed keys it asked for (not its own), in change order."""
    f = Fanout(push_delay=0.0)
    model: dict[bytes, frozenset[bytes] | None] = {}
    pending: list[bytes] = []
    now = 0.0
    for op, key, arg in steps:
        now += 1.0
        if op == "watch":
            assert arg is None or isinstance(arg, tuple)
            f.watch(key, arg)
            model[key] = None if arg is None else frozenset(arg)
        elif op == "drop":
            f.drop(key)
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
    assert len(f) == len(model)
