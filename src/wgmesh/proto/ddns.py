"""RFC 2136 mode, sans-IO: keep an external primary's copy of the peers' records current with
dynamic UPDATEs, never touching what this registrar did not write.

The registrar's zone (wgmesh.proto.dnssd) stays the source of truth; an operator who already
runs an authoritative primary (Knot, BIND, PowerDNS) gets the same records in their own zone,
served and transferred by their own servers. What is ours: the names derived from a peer key
under ``_wireguard._udp.ZONE`` (``<label>``, ``_alt.<label>``, ``<kind><i>.<label>``, the label
being the base32 of a WireGuard key, :func:`wgmesh.proto.keys.key_label`) and, at
``_wireguard._udp.ZONE``, the PTRs pointing at such names. Nothing else in the zone is read
for a decision or ever changed (the apex, other hosts, other services, PTRs to other names).

One UPDATE per changed peer (so one conflict blocks one peer), each with prerequisites (RFC 2136
section 2.4) that make it apply only to what we expect there:

- a peer we wrote: every RRset we wrote at its names must still be there, value for value
  ("RRset exists (value dependent)"), then those RRsets are deleted and the new ones added;
- a peer new to the primary: each of its names must be unused ("Name is not in use");
- the browse PTR is added or deleted as one RR (other PTRs in the RRset are not touched).

A failed prerequisite means someone else changed those names: the peer is left alone, logged
and counted, until the next resynchronisation (:meth:`Updater.resync`, from a zone transfer of
the primary's zone), which adopts a peer's names only when they hold a TXT record with this
peer's key (``pub=``: what wgmesh writes) or exactly what we would write, and leaves any other
content alone. Changes are taken from the zone's journal of serial deltas
(wgmesh.proto.journal), so a serial costs only its changes; when the journal no longer reaches
back to the serial the primary reflects, the updater asks for a resynchronisation.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update

from wgmesh.proto.dnssd import Zone
from wgmesh.proto.keys import label_key

CONFLICTS = frozenset(
    {dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.NXRRSET}
)
"""Rcodes of a failed prerequisite (RFC 2136 section 3.2.1)."""

MAX_CONFLICTS = 100_000
"""Most peers remembered as conflicting (each one is also logged once)."""


@dataclass(frozen=True, slots=True)
class Update:
    """One UPDATE to send, and what it is about (for :meth:`Updater.answered`)."""

    key: bytes
    message: dns.update.UpdateMessage
    rrsets: tuple[dns.rrset.RRset, ...]
    """The peer's RRsets once it applies (empty: withdrawn)."""
    ptr: bool | None
    """The peer's browse PTR once it applies (None: unchanged)."""


class Updater:
    """What the primary holds of ours, and the UPDATEs that bring it to the zone's serial."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.synced: int | None = None
        """The zone serial the primary reflects once the pending UPDATEs apply (None: not
        known: :meth:`resync` first)."""
        self._written: dict[bytes, tuple[dns.rrset.RRset, ...]] = {}
        self._ptrs: set[bytes] = set()
        self._dirty: dict[bytes, bytes | None] = {}  # key -> its packed record (None: gone)
        self._dirty_ptr: dict[bytes, bool] = {}
        self._in_flight: set[bytes] = set()
        self.conflicts: dict[bytes, str] = {}
        """Peers left alone because their names hold what we did not write, with why."""
        self.counters = {"updates": 0, "applied": 0, "conflicts": 0, "failed": 0, "resyncs": 0}

    # -- inputs -------------------------------------------------------------------------------

    def resync(self, primary: Iterable[dns.rrset.RRset]) -> None:
        """The primary's zone as a transfer gave it: adopt what is ours, note what is not, and
        queue what differs from the zone's current serial."""
        self.counters["resyncs"] += 1
        found: dict[bytes, list[dns.rrset.RRset]] = {}
        ptrs: set[bytes] = set()
        service = self.zone.service
        for rrset in primary:
            if rrset.name == service and rrset.rdtype == dns.rdatatype.PTR:
                for rd in rrset:
                    key = self._key_of(rd.target)
                    if key is not None and rd.target == self.zone.peer_name(key):
                        ptrs.add(key)
                continue
            key = self._key_of(rrset.name)
            if key is not None:
                found.setdefault(key, []).append(rrset)
        published = dict(self.zone.published_peers())
        self._written, self._ptrs, self.conflicts = {}, ptrs, {}
        for key, rrsets in found.items():
            want = published.get(key)
            if want is not None and _same(rrsets, self.zone.peer_rrsets(key, want)):
                self._written[key] = tuple(rrsets)
            elif _carries_key(rrsets, key):
                self._written[key] = tuple(rrsets)  # ours from before: replaced below
            else:
                self._conflict(key, "its names hold records without its key (not written by us)")
        listed = set(self.zone.published_listing)
        self._dirty = {k: r for k, r in published.items() if k not in self.conflicts}
        for key in found:
            if key not in published and key in self._written:
                self._dirty[key] = None  # withdrawn while we were away
        self._dirty_ptr = {k: k in listed for k in (listed | ptrs) if (k in listed) != (k in ptrs)}
        self._in_flight.clear()
        self.synced = self.zone.serial

    def changed(self) -> bool:
        """The zone may have a new serial: queue its changes. False when the journal no longer
        reaches back to :attr:`synced` (call :meth:`resync` with a fresh transfer)."""
        if self.synced is None:
            return False
        deltas = self.zone.journal.since(self.synced)
        if deltas is None:
            self.synced = None
            return False
        for delta in deltas:
            for change in delta.changes:
                if change.key not in self.conflicts:
                    self._dirty[change.key] = change.new
            for key in delta.listed:
                self._dirty_ptr[key] = True
            for key in delta.unlisted:
                self._dirty_ptr[key] = False
        self.synced = self.zone.serial
        return True

    # -- outputs ------------------------------------------------------------------------------

    def take(self, limit: int = 256) -> list[Update]:
        """Up to ``limit`` UPDATEs for the queued changes (each peer at most once in flight)."""
        out: list[Update] = []
        keys = [k for k in {**self._dirty, **dict.fromkeys(self._dirty_ptr)} if
                k not in self._in_flight]  # fmt: skip
        for key in keys:
            if len(out) >= limit:
                break
            record = self._dirty.pop(key, self._record_of(key))
            ptr = self._dirty_ptr.pop(key, None)
            update = self._update(key, record, ptr)
            if update is not None:
                self._in_flight.add(key)
                out.append(update)
        self.counters["updates"] += len(out)
        return out

    def answered(self, update: Update, rcode: int | None) -> str | None:
        """The primary's answer to ``update`` (None: no answer, or the connection failed). A
        line for the log when it was refused, else None."""
        key = update.key
        self._in_flight.discard(key)
        if rcode == dns.rcode.NOERROR:
            self.counters["applied"] += 1
            if update.rrsets:
                self._written[key] = update.rrsets
            else:
                self._written.pop(key, None)
            if update.ptr is True:
                self._ptrs.add(key)
            elif update.ptr is False:
                self._ptrs.discard(key)
            return None
        if rcode in CONFLICTS:
            text = dns.rcode.to_text(dns.rcode.Rcode(rcode))
            why = f"prerequisite failed ({text}): someone else changed its names"
            self._conflict(key, why)
            return why
        self.counters["failed"] += 1
        if key not in self._dirty:  # retry later with whatever is newest then
            self._dirty[key] = self._record_of(key) if update.rrsets else None
        if update.ptr is not None:
            self._dirty_ptr.setdefault(key, update.ptr)
        return (
            "no answer"
            if rcode is None
            else f"refused: {dns.rcode.to_text(dns.rcode.Rcode(rcode))}"
        )

    @property
    def pending(self) -> int:
        """Peers with a change not yet sent or not yet answered."""
        return len(self._dirty.keys() | self._dirty_ptr.keys() | self._in_flight)

    # -- internals ----------------------------------------------------------------------------

    def _update(self, key: bytes, record: bytes | None, ptr: bool | None) -> Update | None:
        zone = self.zone
        old = self._written.get(key, ())
        new = tuple(zone.peer_rrsets(key, record)) if record is not None else ()
        if ptr is not None and ptr == (key in self._ptrs):
            ptr = None
        if _same(list(old), list(new)) and ptr is None:
            return None
        m = dns.update.UpdateMessage(zone.origin)
        if old:
            for rrset in old:  # a prerequisite's TTL must be 0 (RFC 2136 section 2.4.2)
                m.present(rrset.name, _ttl0(rrset))
        else:
            for name in dict.fromkeys(r.name for r in new):
                m.absent(name)
        for rrset in old:
            m.delete(rrset.name, rrset.rdtype)
        for rrset in new:
            m.add(rrset.name, rrset)
        if ptr is not None:
            rd = next(iter(zone.browse_ptr((key,))))
            if ptr:
                m.add(zone.service, zone.config.ttl, rd)
            else:
                m.delete(zone.service, rd)
        return Update(key, m, new, ptr)

    def _record_of(self, key: bytes) -> bytes | None:
        return self.zone.record_of(key)

    def _key_of(self, name: dns.name.Name) -> bytes | None:
        """The peer key a name of ours is derived from, else None."""
        if not name.is_subdomain(self.zone.service) or name == self.zone.service:
            return None
        label = name.relativize(self.zone.service).labels[-1].lower()
        return label_key(label)

    def _conflict(self, key: bytes, why: str) -> None:
        self.counters["conflicts"] += 1
        self._dirty.pop(key, None)
        self._dirty_ptr.pop(key, None)
        if len(self.conflicts) < MAX_CONFLICTS:
            self.conflicts[key] = why


def _ttl0(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
    out = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
    for rd in rrset:
        out.add(rd, 0)
    return out


def _same(a: list[dns.rrset.RRset], b: list[dns.rrset.RRset]) -> bool:
    """The same RRsets (TTLs aside: a primary may rewrite them), in any order."""

    def canon(rrsets: list[dns.rrset.RRset]) -> set[tuple[dns.name.Name, int, frozenset[str]]]:
        return {(r.name, r.rdtype, frozenset(rd.to_text() for rd in r)) for r in rrsets}

    return canon(a) == canon(b)


def _carries_key(rrsets: list[dns.rrset.RRset], key: bytes) -> bool:
    """A TXT among them holds ``pub=<this key>``: what wgmesh writes at a peer's name."""
    pub = b"pub=" + base64.b64encode(key)
    return any(r.rdtype == dns.rdatatype.TXT and any(pub in rd.strings for rd in r) for r in rrsets)
