"""Who is in the mesh, vouched for over the sealed channel (sans-IO; docs/protocol.md, "Mesh
membership").

In mesh mode a daemon adds WireGuard peers, and routes their allowed IPs, only from the
*roster*: the admitted keys that have allowed IPs in the registrar's admission file, sent in
sealed ``Roster`` pages in answer to sealed ``RosterQuery`` messages. DNS never decides who is a
peer or what it routes (a forged or poisoned answer could otherwise add an attacker's key with
another peer's tunnel address); its records only suggest endpoints, which WireGuard's handshake
then authenticates.

- :class:`RosterBook` (the registrar): the list in a fixed order (by key), its ``version`` (a
  digest of the whole list, so it is the same across registrar restarts and changes with any
  entry), and :meth:`RosterBook.page` to cut it into pages that fit a sealed payload.
- :class:`RosterSync` (the daemon): asks for page 0, follows the pages while the version stays
  the same, and yields the complete member map; a page of another version restarts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wgmesh.proto import sealed

MAX_MEMBERS = 65_536
"""Most members a daemon accepts (a larger roster is refused, not truncated)."""


@dataclass(frozen=True, slots=True)
class RosterBook:
    """The registrar's roster."""

    members: tuple[sealed.Member, ...]
    """Every member, sorted by key."""
    version: int
    """u32 digest of the whole list."""

    @classmethod
    def of(cls, entries: Iterable[tuple[bytes, tuple[str, ...]]]) -> RosterBook:
        """From (key, allowed IPs) pairs; keys without allowed IPs, or with more networks than
        a Roster entry carries, are left out (the caller logs those)."""
        members = tuple(
            sealed.Member(key, tuple(ips))
            for key, ips in sorted(entries)
            if ips and len(ips) <= sealed.MAX_MEMBER_NETWORKS
        )
        digest = hashlib.blake2b(digest_size=4)
        for m in members:
            digest.update(sealed.pack_member(m))
        return cls(members, int.from_bytes(digest.digest(), "big"))

    def page(self, offset: int) -> tuple[sealed.Member, ...]:
        """The members from ``offset`` on that fit in one Roster payload."""
        room = sealed.MAX_PAYLOAD - sealed.ROSTER_HEAD
        out: list[sealed.Member] = []
        for m in self.members[offset : offset + 255]:
            size = len(sealed.pack_member(m))
            if size > room:
                break
            room -= size
            out.append(m)
        return tuple(out)


class RosterSync:
    """The daemon's copy of the roster, assembled page by page."""

    def __init__(self) -> None:
        self.members: dict[bytes, tuple[str, ...]] | None = None
        """The last complete roster (None: none yet)."""
        self.version: int | None = None
        """Its version."""
        self._pending: dict[bytes, tuple[str, ...]] = {}
        self._pending_version: int | None = None
        self.wanted: int | None = None
        """The offset asked for and not answered yet (None: nothing in flight)."""
        self.refused = 0
        """Pages refused (out of order, another version mid-way, too large)."""

    def start(self) -> int:
        """The offset to ask for first (0)."""
        self._pending, self._pending_version, self.wanted = {}, None, 0
        return 0

    def receive(self, roster: sealed.Roster) -> int | Mapping[bytes, tuple[str, ...]] | None:
        """One page. Returns the next offset to ask for, the complete member map when this
        page ends it (also when it equals the one held), or None (page dropped: not the one
        asked for, or a roster too large)."""
        if self.wanted is None or roster.offset != self.wanted or roster.total > MAX_MEMBERS:
            self.refused += 1
            return None
        if roster.offset == 0:
            self._pending, self._pending_version = {}, roster.version
            if roster.version == self.version and self.members is not None:
                self.wanted = None
                return self.members  # unchanged: no need to read the rest
        elif roster.version != self._pending_version:
            self.refused += 1
            self.wanted = None  # the roster changed under us: the next query starts over
            return None
        for m in roster.members:
            self._pending[m.key] = m.allowed_ips
        end = roster.offset + len(roster.members)
        if end < roster.total:
            if not roster.members:
                self.refused += 1
                self.wanted = None
                return None
            self.wanted = end
            return end
        self.members, self.version, self.wanted = self._pending, roster.version, None
        self._pending = {}
        return self.members
