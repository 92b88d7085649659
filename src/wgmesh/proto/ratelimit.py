"""Per-source token buckets with a capped table (python-zeroconf style: hostile input cannot
grow it without bound). The default, 20 tokens/s with a burst of 5, is wireguard-go's
handshake rate limiter.

Each bucket is one float, its *theoretical arrival time* (GCRA, the generic cell rate
algorithm): the moment the bucket will be full again if nothing more arrives, counted in
intervals (``1 / rate``). A message finds ``burst - (tat - now)`` tokens (``burst`` once ``tat``
is past) and is allowed when that is at least one, which then moves ``tat`` one interval on:
the same decisions as a bucket that stores its tokens and the time it last counted them (up to
rounding), in less memory (a float where a tuple of two floats was: 24 bytes against 104, for
up to 65,536 sources per table). The table keeps the key object of a source's first message,
so a key the registry also holds is stored once. A clock that goes back leaves a bucket at
worst empty: it fills again at the usual rate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Token bucket parameters; ValueError for a rate not above 0, a burst under 1 or no room."""

    rate: float = 20.0
    """Tokens added per second."""
    burst: float = 5.0
    """Bucket size: how many messages a source may send at once."""
    max_sources: int = 65536
    """Most sources tracked; the least recently seen is evicted (and so starts full again)."""

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1 and self.max_sources >= 1):
            raise ValueError(f"a rate limit needs rate > 0, burst >= 1, max_sources >= 1: {self}")


class RateLimiter:
    """``allow(source, now)`` says whether one more message from ``source`` may be handled.

    Times are kept in intervals (``1 / rate``) since the first message the limiter saw, so each
    message adds exactly one and ``burst`` compares exactly: wall-clock seconds (about 1.8e9)
    have steps of 2.4e-7 s, coarser than one interval at high rates."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self._rate = config.rate
        self._tolerance = config.burst - 1.0
        """How many intervals ahead of ``now`` a bucket's time may be for one more message."""
        self._base: float | None = None
        """The first ``now``: times are counted from it."""
        self._buckets: OrderedDict[object, float] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: object, now: float) -> bool:
        base = self._base
        if base is None:
            base = self._base = now
        t = (now - base) * self._rate
        buckets = self._buckets
        tat = buckets.get(source)
        if tat is None:
            tat = t
            if len(buckets) >= self.config.max_sources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(source)
            if tat < t:
                tat = t  # full
            elif tat > t + self.config.burst:
                tat = t + self.config.burst  # the clock went back: empty, not in debt
        allowed = tat - t <= self._tolerance
        if allowed:
            tat += 1.0
        else:
            self.dropped += 1
        buckets[source] = tat
        return allowed
