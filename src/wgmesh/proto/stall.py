"""Rule 7 of :mod:`wgmesh.proto.punch`: noticing, from the interface's transfer counters, that
a path which carried traffic has stalled, so that the daemon probes the registrar at once.

Sans-IO: fed :class:`~wgmesh.proto.device.DeviceState` samples and ``now``; the Planner owns
one :class:`StallWatch` and exposes it as ``watch_traffic`` / ``traffic_active``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wgmesh.proto.device import DeviceState

if TYPE_CHECKING:
    from wgmesh.proto.punchconfig import PunchConfig


@dataclass(slots=True)
class Traffic:
    """What the watch remembers of one peer's counters."""

    rx: int
    """Received bytes at the last sample."""
    tx: int
    """Sent bytes at the last sample."""
    rx_at: float
    """When rx last grew (or when first seen)."""
    handshake: float = 0.0
    """latest_handshake at the last sample."""
    rx_streak: int = 0
    """Consecutive samples in which rx grew."""
    tx_only: int = 0
    """Samples in which tx grew but rx did not, since rx last grew."""
    busy: bool = False
    """The peer has been sending data to us (since the last stall)."""
    stalled: bool = False
    """A stall was reported; not again until rx grows."""


HANDSHAKE_RX = 148 + 32
"""The most a handshake adds to rx: the peer's initiation and its first keepalive."""


class StallWatch:
    """Stall detection over counter samples, with a token bucket on the probes it asks for."""

    def __init__(self, config: PunchConfig) -> None:
        self.config = config
        self.traffic: dict[bytes, Traffic] = {}
        """Per peer key, what the last sample showed."""
        self.active = False
        """The last sample saw data move or a stall building up."""
        self.tokens = float(config.stall_probes)
        """Probes that may be asked for now (at most ``stall_probes``)."""
        self.tokens_at: float | None = None
        """When the last sample was taken (and the bucket last refilled)."""

    def sample(self, device: DeviceState, now: float) -> frozenset[bytes]:
        """One sample of every peer's counters; the peers whose paths stalled now, when a
        registrar probe and a re-punch should go out (see
        :meth:`wgmesh.proto.punch.Planner.watch_traffic`); empty otherwise."""
        cfg = self.config
        if self.tokens_at is not None and now - self.tokens_at < cfg.stall_after / 4:
            return frozenset()  # too close to the last sample to say anything about rates
        if self.tokens_at is not None:
            earned = (now - self.tokens_at) / cfg.stall_refill
            self.tokens = min(float(cfg.stall_probes), self.tokens + earned)
        self.tokens_at = now
        stalled: dict[bytes, Traffic] = {}
        seen = set()
        self.active = False
        for dev in device.peers:
            seen.add(dev.public_key)
            t = self.traffic.get(dev.public_key)
            if t is None or dev.rx_bytes < t.rx or dev.tx_bytes < t.tx:  # new, or counters reset
                self.traffic[dev.public_key] = Traffic(
                    dev.rx_bytes, dev.tx_bytes, now, dev.latest_handshake
                )
                continue
            moved = dev.rx_bytes - t.rx + dev.tx_bytes - t.tx
            shook, t.handshake = dev.latest_handshake != t.handshake, dev.latest_handshake
            if dev.rx_bytes > t.rx and shook:  # handshake bytes are not data: a connection
                t.rx_at, t.tx_only, t.stalled = now, 0, False  # that stays quiet after it
                t.rx_streak = 0  # has not stalled; but what a handshake cannot carry is data
                t.busy = t.busy or dev.rx_bytes - t.rx >= HANDSHAKE_RX + cfg.busy_bytes
            elif dev.rx_bytes > t.rx:
                t.rx_at, t.tx_only, t.stalled = now, 0, False
                t.rx_streak += 1
                t.busy = t.busy or t.rx_streak >= 2 or dev.rx_bytes - t.rx >= cfg.busy_bytes
            else:
                t.rx_streak = 0
                if dev.tx_bytes > t.tx:
                    t.tx_only += 1
            t.rx, t.tx = dev.rx_bytes, dev.tx_bytes
            if moved >= cfg.busy_bytes or (t.busy and not t.stalled):
                self.active = True  # data flows, or a stall may be building up
            if (
                not t.stalled
                and dev.latest_handshake > 0
                and (t.busy or t.tx_only >= 2)
                and now - t.rx_at >= cfg.stall_after
            ):
                stalled[dev.public_key] = t
        for key in self.traffic.keys() - seen:
            del self.traffic[key]
        if not stalled or self.tokens < 1.0:
            return frozenset()  # without a token the stall stays pending until one is earned
        self.tokens -= 1.0
        for t in stalled.values():
            t.stalled, t.busy = True, False
        return frozenset(stalled)
