"""Per-source token buckets with a capped table (python-zeroconf style: hostile input cannot
grow it without bound). The default, 20 tokens/s with a burst of 5, is wireguard-go's
handshake rate limiter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Token bucket parameters."""

    rate: float = 20.0
    """Tokens added per second."""
    burst: float = 5.0
    """Bucket size: how many messages a source may send at once."""
    max_sources: int = 65536
    """Most sources tracked; the least recently seen is evicted (and so starts full again)."""


class RateLimiter:
    """``allow(source, now)`` says whether one more message from ``source`` may be handled."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: object, now: float) -> bool:
        cfg = self.config
        state = self._buckets.pop(source, None)
        if state is None:
            tokens = cfg.burst
        else:
            tokens, last = state
            tokens = min(cfg.burst, tokens + max(0.0, now - last) * cfg.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.dropped += 1
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > cfg.max_sources:
            self._buckets.popitem(last=False)
        return allowed
