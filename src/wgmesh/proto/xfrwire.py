"""A peer's records in a zone transfer message, written straight from its packed record
(sans-IO): the fast path of :func:`wgmesh.proto.xfr.messages` for whole-zone transfers.

dnspython builds and renders a peer's six or so RRsets in ~500 us; this writes the same RRs
(:meth:`~wgmesh.proto.dnssd.Zone.peer_rrsets`: the SRV, the TXT, the alternates' SRVs, the
addresses) in ~10, compressed the way RFC 1035 section 4.1.4 allows: the service name
``_wireguard._udp.ZONE`` is written once per message (its ZONE a pointer to the question), each
peer's own name once (the owner of its first RR), every other owner name a pointer to one of
those, and SRV targets in full (RFC 2782: never compressed). Pointers reach only the first
16 KiB of a message (14 bits), so the messages this writes into are at most
:data:`MAX_MESSAGE` bytes. Tests compare the result with dnspython's records RR by RR.
"""

from __future__ import annotations

import base64
import struct

from wgmesh.proto.dnswire import ALT_LABEL, Target, unpack_record
from wgmesh.proto.keys import key_label

MAX_MESSAGE = 16383
"""Largest message the pointers written here can address (offsets below 2**14)."""
A, TXT, AAAA, PTR, SRV = 1, 16, 28, 12, 33
_RR = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_SRV = struct.Struct("!HHH")
_SERVICE_HERE = b"\x0a_wireguard\x04_udp\xc0\x0c"  # its zone: the question of every message


def _pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def _priority(t: Target) -> int:
    return t.priority


class PeerWire:
    """Writes peers' records into one message after another; :meth:`start` for each message."""

    def __init__(self, service: bytes, ttl: int) -> None:
        self._service = service  # uncompressed wire form of _wireguard._udp.ZONE
        self._ttl = ttl
        self._service_at = -1
        self._pending_service = -1

    def start(self) -> None:
        """A new message: nothing written in it yet can be pointed at."""
        self._service_at = -1

    def encode(self, key: bytes, record: bytes, at: int) -> tuple[bytes, int]:
        """The RRs of one peer written at offset ``at`` of the current message, and how many;
        call :meth:`commit` once they are in the message (they may not fit)."""
        ttl = self._ttl
        label = bytes((56,)) + key_label(key).encode()
        targets, tail = unpack_record(record)
        if self._service_at < 0:  # the service name, written here for the first time
            owner = label + _SERVICE_HERE
            self._pending_service = at + len(label)
        else:
            owner = label + _pointer(self._service_at)
            self._pending_service = self._service_at
        me = _pointer(at)  # every later owner points at the peer's name, written first here
        out: list[bytes] = []
        rdata = self._txt(key, tail)
        if not targets:  # no endpoint: the TXT alone
            return owner + _RR.pack(TXT, 1, ttl, len(rdata)) + rdata, 1
        name = label + self._service  # SRV targets: in full
        first = targets[0]
        srv = _SRV.pack(first.priority, 0, first.port) + name
        out.append(owner + _RR.pack(SRV, 1, ttl, len(srv)) + srv)
        out.append(me + _RR.pack(TXT, 1, ttl, len(rdata)) + rdata)
        if len(targets) > 1:
            owner = bytes((len(ALT_LABEL),)) + ALT_LABEL + me
            alt_at = at + sum(map(len, out))
            for t in sorted(targets[1:], key=_priority):
                rdata = _SRV.pack(t.priority, 0, t.port) + bytes((len(t.label),)) + t.label + name
                out.append(owner + _RR.pack(SRV, 1, ttl, len(rdata)) + rdata)
                owner = _pointer(alt_at)
        for t in targets:
            owner = bytes((len(t.label),)) + t.label + me if t.label else me
            out.append(owner + _RR.pack(A if len(t.ip) == 4 else AAAA, 1, ttl, len(t.ip)) + t.ip)
        return b"".join(out), len(out)

    def commit(self) -> None:
        """The last :meth:`encode` went into the message: its names may be pointed at."""
        self._service_at = self._pending_service

    def _txt(self, key: bytes, tail: bytes) -> bytes:
        return b"\x09txtvers=1\x30pub=" + base64.b64encode(key) + tail
