"""When to look at each key of a big table again: deadlines in buckets, refreshes free.

A table kept in refresh order (a key deleted and re-inserted, or ``move_to_end``, each time it is
refreshed) finds its stale keys at the front, but the order costs memory: an ``OrderedDict``
entry is about 108 bytes against a plain dict's 42 (140 once refreshes have churned it), and a
dict re-inserted into grows to three times its size at each compaction. Here the table stays a
plain dict, updated in place, and each key sits in one bucket of this wheel, by a time at or
before its deadline; a refresh does not touch it. When a bucket comes due, the table is asked
about each of its keys (:meth:`Deadlines.due`): a key that is stale goes, a key refreshed since
goes back in at its new deadline (:meth:`Deadlines.again`). So a key is placed about once per
expiry period, not once per refresh, and costs one list slot (8 bytes).

Times are the caller's (``now`` passed in); ``width`` is the bucket size in seconds. Exact:
:meth:`Deadlines.due` returns every key placed at or before ``now`` (with the rest of the bucket
``now`` falls in), so the caller withdraws exactly what is stale at ``now``; a key of that bucket
not stale yet waits in a small heap by its exact deadline (:meth:`Deadlines.again`), so a bucket
is emptied once however many of its keys expire one by one; and :meth:`Deadlines.next_time` is
the earliest time placed, never later than the earliest deadline.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable


class Deadlines:
    """Keys in buckets of ``width`` seconds by a time at or before their deadline."""

    def __init__(self, width: float) -> None:
        if not width > 0 or math.isinf(width):
            raise ValueError(f"bucket width must be a positive number of seconds, not {width}")
        self.width = width
        self._buckets: dict[int, list[bytes]] = {}
        self._first: dict[int, float] = {}
        """Per bucket, the earliest time placed in it."""
        self._checked: set[int] = set()
        """Buckets whose keys :meth:`next_time` has asked the table about since they were
        filled: their earliest time was a real deadline then."""
        self._gone: set[bytes] = set()
        """Keys that left the table while still in a bucket (:meth:`forget`)."""
        self._front: int | None = None
        self._soon: list[tuple[float, bytes]] = []
        """Keys put back with a deadline in a bucket already emptied, as a heap."""

    def __len__(self) -> int:
        """Keys placed (a forgotten key counts until its bucket is emptied)."""
        return sum(map(len, self._buckets.values())) + len(self._soon)

    def place(self, key: bytes, at: float) -> None:
        """Look at ``key`` again at ``at`` (a key new to the table: at its deadline)."""
        if key in self._gone:  # it left and came back: its old place is earlier, and serves
            self._gone.discard(key)
            return
        i = math.floor(at / self.width)
        keys = self._buckets.get(i)
        if keys is None:
            self._buckets[i] = [key]
            self._first[i] = at
            if self._front is None or i < self._front:
                self._front = i
        else:
            keys.append(key)
            self._first[i] = min(self._first[i], at)

    def again(self, key: bytes, deadline: float, now: float) -> None:
        """Put a key :meth:`due` returned back in, to be looked at again at ``deadline``."""
        if math.floor(deadline / self.width) <= math.floor(now / self.width):
            heapq.heappush(self._soon, (deadline, key))  # its bucket is gone already
        else:
            self.place(key, deadline)

    def forget(self, key: bytes) -> None:
        """``key`` left the table by another way than :meth:`due` (it is in a bucket)."""
        self._gone.add(key)
        self._checked.clear()  # (rare: a revocation) its bucket may hold nothing else

    def due(self, now: float) -> list[bytes]:
        """Take out and return the keys placed at or before ``now``, with the rest of the
        bucket ``now`` falls in, earliest bucket first. The caller puts back (:meth:`again`)
        those that are still in its table. The deadlines given to :meth:`place`, :meth:`again`
        and by ``deadline_of`` must be the very sum the caller's expiry test uses, a key being
        stale at ``now`` exactly when its deadline is ``<= now``: then what it puts back lies
        after ``now``, and a timer armed at :meth:`next_time` never fires twice at one ``now``
        (with a test such as ``seen >= now - expiry`` it can, forever, at a deadline that
        rounds onto ``now``)."""
        last = math.floor(now / self.width)
        out: list[bytes] = []
        soon = self._soon
        while soon and soon[0][0] <= now:
            key = heapq.heappop(soon)[1]
            if key in self._gone:
                self._gone.discard(key)
            else:
                out.append(key)
        while self._front is not None and self._front <= last:
            out += self._take(self._front)
        return out

    def next_time(self, deadline_of: Callable[[bytes], float | None]) -> float | None:
        """The earliest time placed, or None when no key is. The front bucket's keys are first
        asked for their deadlines (``deadline_of``: None when the key is no longer in the
        table) and moved to where they now belong, once per filling of that bucket: so this is
        the earliest deadline unless a key of that bucket was refreshed since."""
        while self._soon and self._soon[0][1] in self._gone:
            self._gone.discard(heapq.heappop(self._soon)[1])
        soon = self._soon[0][0] if self._soon else math.inf
        while self._front is not None:
            i = self._front
            if i in self._checked:
                return min(self._first[i], soon)
            start = i * self.width
            for key in self._take(i):
                deadline = deadline_of(key)
                if deadline is not None:
                    self.place(key, max(deadline, start))
            if i in self._buckets:
                self._checked.add(i)
        return None if math.isinf(soon) else soon

    def _take(self, i: int) -> list[bytes]:
        keys = self._buckets.pop(i)
        del self._first[i]
        self._checked.discard(i)
        self._front = min(self._buckets) if self._buckets else None
        if self._gone:
            gone = self._gone
            kept = [key for key in keys if key not in gone]
            gone.difference_update(keys)
            return kept
        return keys
