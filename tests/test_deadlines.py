"""The expiry wheel (wgmesh.proto.deadlines) against a plain model: a dict of last-seen times
scanned in full. Whatever the order of additions, refreshes, removals and expiry calls, the
wheel finds exactly the keys the full scan finds, and its timer is never late."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.proto.deadlines import Deadlines

EXPIRY = 50.0


class Table:
    """What the registry does with a wheel: rows by last-seen time, expired as it expires."""

    def __init__(self, width: float, expiry: float = EXPIRY) -> None:
        self.expiry = expiry
        self.rows: dict[bytes, float] = {}
        self.wheel = Deadlines(width)
        self.looked_at = 0

    def seen(self, key: bytes, now: float) -> None:
        if key not in self.rows:
            self.wheel.place(key, now + self.expiry)
        self.rows[key] = now

    def remove(self, key: bytes) -> None:
        if self.rows.pop(key, None) is not None:
            self.wheel.forget(key)

    def expire(self, now: float) -> set[bytes]:
        gone = set()
        due = self.wheel.due(now)
        self.looked_at += len(due)
        for key in due:
            seen = self.rows.get(key)
            if seen is None:
                continue
            if seen + self.expiry > now:  # stale at its deadline, as the registry has it
                self.wheel.again(key, seen + self.expiry, now)
            else:
                del self.rows[key]
                gone.add(key)
        return gone

    def next_time(self) -> float | None:
        return self.wheel.next_time(
            lambda k: None if k not in self.rows else self.rows[k] + self.expiry
        )


ops = st.lists(
    st.tuples(
        st.sampled_from(("seen", "seen", "seen", "remove", "expire", "timer", "peek")),
        st.integers(0, 15),  # the key
        st.floats(0, 30, allow_nan=False),  # how far the clock moves first
    ),
    max_size=120,
)


# expiries whose bucket width (expiry / 64) is no binary fraction: a bucket's start then rounds
# to either side of a deadline at it (a registrar takes any --expiry)
EXPIRIES = (EXPIRY, 788.9, 881.4, 957.2)


@settings(max_examples=400, deadline=None)
@given(ops, st.sampled_from(EXPIRIES), st.sampled_from((0.25, 1 / 64, 7.0, 100.0)), st.booleans())
def test_the_wheel_expires_exactly_what_a_full_scan_does(
    steps: list[tuple[str, int, float]], expiry: float, width: float, aligned: bool
) -> None:
    """``aligned``: the clock starts at a bucket boundary and moves by whole buckets and
    expiries, so deadlines fall on bucket starts (where float rounding bites)."""
    width = expiry * width if width < 1 else width
    table = Table(width, expiry)
    now = 1_800_000_000.0 if not aligned else math.floor(310_570_712.0 / width) * width
    for op, i, step in steps:
        now += step if not aligned else (int(step) % 3) * width + (int(step) // 10) * expiry
        key = bytes([i]) * 32
        if op == "seen":
            table.seen(key, now)
        elif op == "remove":
            table.remove(key)
        elif op == "expire":
            model = {k for k, seen in table.rows.items() if seen + expiry <= now}
            assert table.expire(now) == model
            assert all(seen + expiry > now for seen in table.rows.values())
        else:  # the server's timer: armed at next_time, never late, and firing moves on
            when = table.next_time()
            earliest = min((s + expiry for s in table.rows.values()), default=None)
            if earliest is None:
                assert when is None  # nothing left: no timer (a removed key's slot neither)
                continue
            assert when is not None and when <= earliest
            if op == "peek":  # only asked (the server asks after every input)
                continue
            now = max(now, when)  # fired at exactly its time: afterwards it is later
            table.expire(now)
            after = table.next_time()
            assert after is None or after > now
        # each key sits in the wheel once, whatever it went through
        assert len(table.wheel) <= len(table.rows) + len(table.wheel._gone)
        assert len(table.wheel._gone) <= 16


def test_many_keys_expiring_one_by_one_empty_their_bucket_once() -> None:
    table = Table(10.0)
    now = 1_800_000_000.0
    keys = [i.to_bytes(32, "big") for i in range(2000)]
    for n, key in enumerate(keys):
        table.seen(key, now + n / 1000)  # 2,000 deadlines within 2 s: one bucket
    asked = []
    when = table.next_time()
    while when is not None:
        asked.append(when)
        assert table.expire(math.nextafter(when, math.inf))
        when = table.next_time()
    # one timer per deadline, and each key was looked at once, not once per earlier expiry
    assert len(asked) == 2000 and asked == sorted(asked) and not table.rows
    assert table.looked_at <= 2 * 2000
    assert len(table.wheel) == 0


def test_a_refresh_does_not_touch_the_wheel_and_the_timer_follows_it() -> None:
    table = Table(1.0)
    now = 1_800_000_000.0
    table.seen(b"a" * 32, now)
    table.seen(b"b" * 32, now + 5)
    table.seen(b"a" * 32, now + 10)  # refreshed in place: its slot says now + 50 still
    assert len(table.wheel) == 2
    assert table.next_time() == now + 55  # a was asked about and moved on
    assert table.expire(now + 55.5) == {b"b" * 32}
    assert table.next_time() == now + 60


def test_a_key_that_left_and_came_back_is_in_the_wheel_once() -> None:
    table = Table(1.0)
    now = 1_800_000_000.0
    for n in range(100):
        table.seen(b"a" * 32, now + n)
        table.remove(b"a" * 32)
    table.seen(b"a" * 32, now + 100)
    assert len(table.wheel) == 1
    assert table.expire(now + 149) == set() and table.expire(now + 151) == {b"a" * 32}


@pytest.mark.parametrize("width", [0.0, -1.0, math.inf, math.nan])
def test_a_width_that_cannot_work_is_refused(width: float) -> None:
    with pytest.raises(ValueError, match="bucket width"):
        Deadlines(width)
