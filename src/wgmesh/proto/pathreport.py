"""Path reports: each daemon tells the registrar its path to each peer (sealed PathReport,
kind 11: docs/protocol.md), and the registrar keeps the latest per pair for the status page
and ``wgmesh mesh``. Sans-IO, both sides:

- :class:`PathReporter` (daemon): from the ``wgmesh peers`` rows (:class:`PeerView`), the
  entries to send, at most every ``check_interval`` looked at, sent when a path or its reason
  changed and otherwise every ``refresh_interval``, in reports of at most
  :data:`sealed.MAX_PATHS` entries;
- :class:`PathBook` (registrar): the latest entry per (reporter, peer), a counter floor per
  reporter (replays are refused before they cost anything), at most ``max_pairs`` pairs in
  all (the reporters heard from longest ago are forgotten first), entries older than ``ttl``
  not shown.

Reasons travel as codes (:class:`sealed.PathReason`): the registrar shows its own words for
them, never text a peer sent. :func:`reason_code` maps ``wgmesh peers``' reasons to codes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from wgmesh.proto import sealed
from wgmesh.proto.keys import decode_key
from wgmesh.proto.peerview import PeerView

PATHS = {"direct": sealed.PathKind.DIRECT, "relay": sealed.PathKind.RELAY,
         "none": sealed.PathKind.NONE}  # fmt: skip
REASON_PREFIXES: tuple[tuple[str, sealed.PathReason], ...] = (
    ("peer is not registered", sealed.PathReason.NOT_REGISTERED),
    ("no handshake on the static endpoint; peer is not registered",
     sealed.PathReason.NOT_REGISTERED),
    ("both peers are behind symmetric NATs", sealed.PathReason.BOTH_SYMMETRIC),
    ("peer is behind a symmetric NAT", sealed.PathReason.PEER_SYMMETRIC),
    ("we are behind a symmetric NAT", sealed.PathReason.OURS_SYMMETRIC),
    ("every direct candidate failed", sealed.PathReason.DIRECT_FAILED),
    ("trying ", sealed.PathReason.TRYING),
    ("last handshake is stale", sealed.PathReason.STALE),
    ("no handshake yet", sealed.PathReason.NO_HANDSHAKE),
)  # fmt: skip
"""How the reasons of :mod:`wgmesh.proto.peerview` begin, and their codes."""


def reason_code(reason: str) -> sealed.PathReason:
    """The code of a ``wgmesh peers`` reason ("" is NONE, an unknown one OTHER)."""
    if not reason:
        return sealed.PathReason.NONE
    if " share NAT " in reason:  # wgmesh.proto.clash names the two hosts first
        return sealed.PathReason.SHARED_NAT
    for prefix, code in REASON_PREFIXES:
        if reason.startswith(prefix):
            return code
    return sealed.PathReason.OTHER


def entry_of(view: PeerView, now: float) -> sealed.PeerPath:
    """One PathReport entry from a ``wgmesh peers`` row."""
    age = sealed.NEVER
    if view.latest_handshake > 0:
        age = min(sealed.NEVER - 1, max(0, int(now - view.latest_handshake)))
    return sealed.PeerPath(decode_key(view.public_key), PATHS.get(view.path, sealed.PathKind.NONE),
                           reason_code(view.reason), age)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PairPath:
    """What one peer reported of its path to another."""

    reporter: bytes
    """The reporting peer's key."""
    peer: bytes
    """The key of the peer the path goes to."""
    path: str
    """direct | relay | none (wgmesh peers' words)."""
    reason: str
    """Why it is not direct (empty when it is)."""
    handshake_age: float | None
    """Seconds since the latest handshake when reported (None: never)."""
    reported: float
    """When the registrar received the report (Unix seconds)."""


@dataclass(frozen=True, slots=True)
class ReportConfig:
    """When a daemon reports its paths."""

    check_interval: float = 5.0
    """Seconds between looks at the paths (a change is reported within this)."""
    refresh_interval: float = 60.0
    """Seconds after which unchanged paths are reported again (the registrar forgets entries
    older than its ``ttl``)."""


class PathReporter:
    """The daemon's side; see the module docstring."""

    def __init__(self, config: ReportConfig) -> None:
        self.config = config
        self._next_check = 0.0
        self._sent_at = 0.0
        self._sent: tuple[tuple[bytes, int, int], ...] | None = None

    def due(self, now: float) -> bool:
        """Time to look at the paths again."""
        return now >= self._next_check

    def update(self, views: Iterable[PeerView], now: float) -> list[tuple[sealed.PeerPath, ...]]:
        """The reports to send now (each a tuple of at most MAX_PATHS entries; none when
        nothing changed and no refresh is due)."""
        self._next_check = now + self.config.check_interval
        entries = sorted((entry_of(v, now) for v in views), key=lambda e: e.peer)
        shape = tuple((e.peer, int(e.path), int(e.reason)) for e in entries)
        if not entries or (
            shape == self._sent and now < self._sent_at + self.config.refresh_interval
        ):
            return []
        self._sent, self._sent_at = shape, now
        step = sealed.MAX_PATHS
        return [tuple(entries[i : i + step]) for i in range(0, len(entries), step)]


@dataclass(slots=True)
class _Reporter:
    floor: int
    entries: dict[bytes, tuple[sealed.PeerPath, float]]


class PathBook:
    """The registrar's side; see the module docstring."""

    def __init__(self, max_pairs: int = 65_536, ttl: float = 300.0) -> None:
        self.max_pairs = max_pairs
        self.ttl = ttl
        self._by: OrderedDict[bytes, _Reporter] = OrderedDict()
        """Per reporter, least recently reporting first."""
        self._pairs = 0

    def __len__(self) -> int:
        """Pairs held."""
        return self._pairs

    def replayed(self, reporter: bytes, counter: int) -> bool:
        """``counter`` is not above the last report accepted from ``reporter``."""
        known = self._by.get(reporter)
        return known is not None and counter <= known.floor

    def record(
        self, reporter: bytes, report: sealed.PathReport, now: float,
        known: Iterable[sealed.PeerPath] | None = None,
    ) -> None:  # fmt: skip
        """Keep ``report``'s entries (``known``: only those, e.g. the ones naming registered
        peers), each as the latest for its pair."""
        entry = self._by.pop(reporter, None) or _Reporter(0, {})
        entry.floor = report.counter
        before = len(entry.entries)
        for p in report.paths if known is None else known:
            if p.peer != reporter:
                entry.entries[p.peer] = (p, now)
        self._by[reporter] = entry  # the back: reported last
        self._pairs += len(entry.entries) - before
        while self._pairs > self.max_pairs and len(self._by) > 1:
            _, oldest = self._by.popitem(last=False)
            self._pairs -= len(oldest.entries)
        if self._pairs > self.max_pairs:  # one reporter alone over the cap: its oldest go
            extra = sorted(entry.entries.items(), key=lambda kv: kv[1][1])
            for peer, _ in extra[: self._pairs - self.max_pairs]:
                del entry.entries[peer]
            self._pairs = len(entry.entries)

    def forget(self, reporter: bytes) -> None:
        """Drop what ``reporter`` reported (and its counter floor)."""
        gone = self._by.pop(reporter, None)
        if gone is not None:
            self._pairs -= len(gone.entries)

    def pairs(self, now: float) -> list[PairPath]:
        """The latest entry of each pair, none older than ``ttl``."""
        limit = now - self.ttl
        out = []
        for reporter, r in self._by.items():
            for peer, (p, at) in r.entries.items():
                if at < limit:
                    continue
                age = None if p.handshake_age == sealed.NEVER else float(p.handshake_age)
                words = sealed.PATH_REASONS[p.reason]
                out.append(PairPath(reporter, peer, p.path.name.lower(), words, age, at))
        return out
