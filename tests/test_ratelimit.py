"""The per-source rate limiter: a one-float bucket (GCRA) that decides exactly as a token bucket
storing its tokens and last time does, in a capped table that keeps each source's first key."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.proto.ratelimit import RateLimitConfig, RateLimiter


class TokenBucket:
    """The reference: tokens and the time they were counted, refilled by elapsed time."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self.buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def allow(self, source: object, now: float) -> bool:
        cfg = self.config
        state = self.buckets.pop(source, None)
        tokens = (
            cfg.burst if state is None else min(cfg.burst, state[0] + (now - state[1]) * cfg.rate)
        )
        allowed = tokens >= 1.0
        self.buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self.buckets) > cfg.max_sources:
            self.buckets.popitem(last=False)
        return allowed


@settings(max_examples=500, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 8.0, 64.0]),
    burst=st.integers(1, 12).map(float),
    max_sources=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([0.0, 0.0, 0.125, 0.25, 0.5, 1.0, 4.0])),
        max_size=120,
    ),
)
def test_it_decides_as_a_token_bucket_does(
    rate: float, burst: float, max_sources: int, steps: list[tuple[int, float]]
) -> None:
    # dyadic rates and times: both computations are exact, so the decisions must be equal
    cfg = RateLimitConfig(rate=rate, burst=burst, max_sources=max_sources)
    ours, reference = RateLimiter(cfg), TokenBucket(cfg)
    now = 1000.0
    denied = 0
    for source, dt in steps:
        now += dt
        expected = reference.allow(source, now)
        assert ours.allow(source, now) == expected, (source, now)
        denied += not expected
        assert len(ours) == len(reference.buckets) <= max_sources
        assert list(ours._buckets) == list(reference.buckets)  # the same eviction order
    assert ours.dropped == denied


def test_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=20.0, burst=5.0))
    assert [limiter.allow("a", 1000.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("b", 1000.0)  # another source has its own bucket
    assert not limiter.allow("a", 1000.04)  # 0.8 of a token
    assert limiter.allow("a", 1000.06) and not limiter.allow("a", 1000.06)  # 1.2 tokens
    assert [limiter.allow("a", 1010.0) for _ in range(6)] == [True] * 5 + [False]  # full again
    assert limiter.dropped == 5


def test_the_table_is_capped_and_keeps_each_sources_first_key() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=1.0, burst=1.0, max_sources=3))
    first = bytes(range(32))
    assert limiter.allow(first, 1000.0)
    again = bytes(bytearray(first))  # equal, another object: a later message's key
    assert again is not first and not limiter.allow(again, 1000.1)
    (kept, *_) = limiter._buckets
    assert kept is first  # stored once when the registry holds the same object
    for i in range(10):
        limiter.allow(i, 1000.2)
    assert len(limiter) == 3 and first not in limiter._buckets  # least recently seen went


def test_a_clock_that_goes_back_leaves_a_bucket_empty_not_in_debt() -> None:
    """An hour back: the source is not locked out for the hour, only until a token refills."""
    limiter = RateLimiter(RateLimitConfig(rate=2.0, burst=3.0))
    for _ in range(3):
        assert limiter.allow("a", 5000.0)
    assert not limiter.allow("a", 1400.0)
    assert limiter.allow("a", 1400.5)


@pytest.mark.parametrize(
    "config", [{"rate": 0.0}, {"rate": -1.0}, {"burst": 0.5}, {"max_sources": 0}]
)
def test_a_limit_that_cannot_work_is_refused(config: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        RateLimitConfig(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rate", "burst"), [(1e9, 5.0), (1e6, 1000.0), (3e6, 5.0), (20.0, 5.0)])
def test_at_wall_clock_times_a_burst_is_exactly_the_burst(rate: float, burst: float) -> None:
    """At about 1.8e9 s a float moves in steps of 2.4e-7 s, coarser than one interval at these
    rates: the bucket counts in intervals since its first message, so the burst is exact."""
    limiter = RateLimiter(RateLimitConfig(rate=rate, burst=burst))
    now = 1_800_000_123.456
    allowed = sum(limiter.allow("a", now) for _ in range(int(burst) + 50))
    assert allowed == burst
    assert limiter.allow("b", now)  # its own bucket
    assert limiter.allow("a", now + 2 / rate + 1e-6)  # refilled after two intervals (and a bit)
