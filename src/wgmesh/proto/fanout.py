"""Who is told what, and when: the registrar's push fan-out (sans-IO).

A watcher is a peer whose control address proved it receives (see the cookies in
wgmesh.proto.registry). Each names, in its Watch, the peers whose changes it wants pushed: the
key ids of its configured peers (endpoints mode), or every peer (mesh mode, or more peers than
one Watch can name). :class:`Fanout` keeps an index from key id to the watchers that asked for
it, so a change costs in proportion to the watchers that care, not to all of them.

The watchers that want every peer are the watchers (the collection the registry hands in,
wgmesh.proto.watchers) that have no list. While there are at most ``listed`` of them (4,096 by
default) they are also named in a table here, so a flush finds them without walking every
watcher; past that, a flush walks the watchers (30 to 65 ms at a million rows, past the CPU's
caches, where building the Pushes to the 4,096 or more it finds takes about 110 ms), and the
table is built again from a walk that finds at most half of ``listed``. So a registrar whose
peers are nearly all mesh-mode watchers spends nothing per watcher on this table (43 bytes
each: the memory targets of bench/registrar_memory.py), and a few mesh-mode watchers among a
million rows cost a flush nothing extra.

Changes are coalesced: the first change after a quiet ``push_delay`` goes out at once; later
ones gather until the window ends and go out together (:meth:`Fanout.due`, :meth:`Fanout.take`).
A peer changing 20 times a second so costs each watcher at most ``1 / push_delay`` Pushes a
second.
"""

from __future__ import annotations

from collections.abc import Collection

from wgmesh.proto.sealed import key_id

LISTED = 4096
"""How many watchers that want everything :class:`Fanout` names in a table of its own (see the
module docstring)."""


class Fanout:
    """Watchers' interests and the changes waiting to be pushed to them. ``watchers``: every
    watcher, a live collection the caller keeps (a key is in it whenever the caller has called
    :meth:`watch` for it and not :meth:`drop` since)."""

    def __init__(
        self, push_delay: float, watchers: Collection[bytes], listed: int = LISTED
    ) -> None:
        self.push_delay = push_delay
        self._watchers = watchers
        self._listed = listed
        self._everything: dict[bytes, None] | None = {}
        """The watchers that want everything, while there are at most ``listed`` of them;
        None past that (a flush walks the watchers)."""
        self._interest: dict[bytes, frozenset[bytes]] = {}
        """Per watcher with a list: the key ids it asked for."""
        self._by_id: dict[bytes, dict[bytes, None]] = {}
        """Per key id: the watchers that asked for it."""
        self._changed: dict[bytes, None] = {}  # keys to push, in change order
        self.push_at: float | None = None
        """When the gathered changes are due (None: none gathered)."""
        self._quiet_until = 0.0

    def watch(self, watcher: bytes, interest: tuple[bytes, ...] | None) -> None:
        """``watcher`` wants the changes of the peers ``interest`` names (None: all)."""
        # Every Watch says this again, and usually the same: then nothing is touched (a dict
        # entry deleted and re-inserted on each Watch grows the table to three times its size
        # between compactions: bench/registrar_memory.py --rounds 2).
        if interest is None:  # wants everything: in the watchers, with no list
            if watcher in self._interest:
                self.drop(watcher)
            everything = self._everything
            if everything is not None and watcher not in everything:
                if len(everything) < self._listed:
                    everything[watcher] = None
                else:
                    self._everything = None  # too many to name: flushes walk the watchers
            return
        ids = frozenset(interest)
        if self._interest.get(watcher) == ids:
            return
        self.drop(watcher)
        self._interest[watcher] = ids
        for i in ids:
            self._by_id.setdefault(i, {})[watcher] = None

    def drop(self, watcher: bytes) -> None:
        """``watcher`` is no longer told anything (or now wants something else: :meth:`watch`).
        The caller calls this for every watcher that leaves its collection."""
        if self._everything is not None:
            self._everything.pop(watcher, None)
        for i in self._interest.pop(watcher, ()):
            watchers = self._by_id[i]
            del watchers[watcher]
            if not watchers:
                del self._by_id[i]

    def interest(self, watcher: bytes) -> frozenset[bytes] | None:
        """The key ids ``watcher`` asked for; None: every peer (or not a watcher)."""
        return self._interest.get(watcher)

    def changed(self, key: bytes, now: float) -> bool:
        """Note that ``key``'s records changed; True when its changes are due now (call
        :meth:`take`), False when gathered for :attr:`push_at` or nobody wants them."""
        if not self._wanted(key):
            return False
        self._changed[key] = None
        if self.push_at is None:
            if now >= self._quiet_until:
                return True
            self.push_at = self._quiet_until
        return False

    def due(self, now: float) -> bool:
        """The gathered changes are due."""
        return self.push_at is not None and now >= self.push_at

    def take(self, now: float) -> dict[bytes, list[bytes]]:
        """Per watcher, the changed keys to push to it (never its own), in change order; the
        quiet window starts again."""
        changed, self._changed, self.push_at = list(self._changed), {}, None
        self._quiet_until = now + self.push_delay
        out: dict[bytes, list[bytes]] = {}
        for watcher in self._wanting_everything():
            theirs = [k for k in changed if k != watcher]
            if theirs:
                out[watcher] = theirs
        for k in changed:
            for watcher in self._by_id.get(key_id(k), ()):
                if watcher != k:
                    out.setdefault(watcher, []).append(k)
        return out

    def _wanting_everything(self) -> Collection[bytes]:
        """The watchers with no list: named here, or found by a walk of all watchers (which
        names them here again when they are few enough)."""
        if self._everything is not None:
            return self._everything
        listed = self._interest
        if len(self._watchers) == len(listed):
            found: list[bytes] = []
        else:
            found = [w for w in self._watchers if w not in listed]
        if len(found) <= self._listed // 2:
            self._everything = dict.fromkeys(found)
        return found

    def _wanted(self, key: bytes) -> bool:
        """Someone but ``key`` itself wants ``key``'s changes."""
        everything = len(self._watchers) - len(self._interest)
        if everything - (key not in self._interest and key in self._watchers) > 0:
            return True
        return any(w != key for w in self._by_id.get(key_id(key), ()))
