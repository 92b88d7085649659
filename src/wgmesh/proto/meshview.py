"""The registrar's view of the whole mesh, as data: the registered peers and, when daemons
report them, the path between each pair. One snapshot feeds the status page (``/status.json``
on the metrics listener, :mod:`wgmesh.registry.statuspage`) and ``wgmesh mesh``.

Sans-IO: :func:`snapshot` takes the peers, the pair paths and ``now`` and returns plain JSON
values. Hostile input can be large (a million peers), so a snapshot holds at most ``limit``
peers (the most recently seen) and only the pairs between them, and says how many there are
in all. Names are returned as the peers reported them: whoever renders them must escape them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wgmesh.proto.keys import encode_key, short_key
from wgmesh.proto.pathreport import PairPath
from wgmesh.proto.registry import PeerEntry, candidates_of

SCHEMA_VERSION = 1
DEFAULT_LIMIT = 500
"""Peers a snapshot shows at most."""


def peer_row(entry: PeerEntry, now: float) -> dict[str, Any]:
    """One peer as the snapshot shows it."""
    return {
        "key": encode_key(entry.key),
        "short": short_key(entry.key),
        "name": entry.name,
        "nat": entry.nat.value,
        "last_seen": entry.last_seen,
        "age": max(0.0, round(now - entry.last_seen, 1)),
        "candidates": [f"{c.kind.value}:{c.endpoint}" for c in candidates_of(entry)],
        "allowed_ips": list(entry.allowed_ips),
        "software": entry.software,
    }


def pair_row(p: PairPath, now: float) -> dict[str, Any]:
    """One reported path as the snapshot shows it."""
    return {
        "from": encode_key(p.reporter),
        "to": encode_key(p.peer),
        "path": p.path,
        "reason": p.reason,
        "handshake_age": None if p.handshake_age is None else round(p.handshake_age, 1),
        "reported_age": max(0.0, round(now - p.reported, 1)),
    }


def snapshot(
    peers: Mapping[bytes, PeerEntry],
    paths: Iterable[PairPath],
    now: float,
    *,
    zone: str = "",
    serial: int = 0,
    limit: int = DEFAULT_LIMIT,
    seen: Callable[[bytes], float] | None = None,
) -> dict[str, Any]:
    """The mesh as JSON values: at most ``limit`` peers (the most recently seen, sorted by
    name then key) and the reported paths between them. ``seen``: a key's last-seen time
    without unpacking its entry (``Registry.last_seen``), for big tables."""
    if limit < len(peers):
        keys = heapq.nlargest(limit, peers, key=seen or (lambda key: peers[key].last_seen))
    else:
        keys = list(peers)
    entries = sorted((peers[k] for k in keys), key=lambda e: (e.name.casefold(), e.key))
    shown = {e.key for e in entries}
    pairs = [pair_row(p, now) for p in paths if p.reporter in shown and p.peer in shown]
    pairs.sort(key=lambda row: (row["from"], row["to"]))
    return {
        "schema": SCHEMA_VERSION,
        "zone": zone,
        "serial": serial,
        "now": now,
        "total": len(peers),
        "shown": len(entries),
        "peers": [peer_row(e, now) for e in entries],
        "paths": pairs,
    }
