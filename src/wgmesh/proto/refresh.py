"""The registrar's fast path: a known peer's Register that changes nothing published (sans-IO).

Nearly every datagram a registrar receives is one: each daemon registers every probe interval
from its WireGuard port, and unless its mapping, its addresses or its name changed, all the
registry does is move the replay floor and the refresh time. :class:`wgmesh.proto.registry.Registry`
reads every sealed request it can with :func:`sealed_request` (the full ``stun.decode``
otherwise), opens its box once, and then, for a Register of a key it holds, tries
:func:`registration` and the row compare before the full path (``sealed.decode_payload``,
``Registry._register``), which takes over whenever any step here does not apply, so this path
never decides anything the full path would decide otherwise; ``tests/test_refresh.py`` checks
that on random and mutated datagrams.

What it saves: the STUN message is read at the fixed offsets of the layout our daemons send
(WG-PUBLIC-KEY, WG-SEALED, FINGERPRINT; anything else takes the full decoder), and the payload
is not decoded into a ``Register``: the part a refresh must match, the row's ``seen``
(wgmesh.proto.peerrow.pack_seen: the mapping, the reported addresses, the published name), is
built from the payload's bytes, since a wire address (family 4 or 6, address, port) differs from
a packed endpoint (length 4 or 16, address, port) only in its first byte. A match means the
addresses are those a full decode accepted before; the name and the software, which a match
does not cover (the admission file's name is published instead of the peer's; the software is
not published), are checked as the decoder checks them.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from wgmesh.proto import stun
from wgmesh.proto.payloads import HEADER_LEN, MAX_ADDRESSES, MAX_NAME, MAX_SOFTWARE, VERSION, Kind

_HEAD = struct.Struct("!HH4s12sHH")
"""STUN type, length, magic cookie, transaction id, then the first attribute's type and length."""
_ATTR = struct.Struct("!HH")
_FINGERPRINT_HEAD = _ATTR.pack(stun.ATTR_FINGERPRINT, 4)
_KEY_AT = stun.HEADER_LEN + 4
_SEALED_AT = _KEY_AT + stun.WG_KEY_LEN
_PAYLOAD_HEAD = struct.Struct("!BB12sQQ")
_PACKED_FAMILY = {4: 4, 6: 16}
"""A wire address's family byte -> a packed endpoint's length byte."""
_WIRE_LEN = {4: 7, 6: 19}
"""A wire address's family byte -> its length (family, address, port)."""
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
"""What ``str.isprintable()`` accepts of ASCII: text that is only these bytes passes both the
decoder's checks, and ``bytes.translate`` deleting them tells in one C call."""


def sealed_request(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(transaction id, public key, sealed box)`` of a Binding Request laid out as our daemons
    send it: WG-PUBLIC-KEY, WG-SEALED and a FINGERPRINT that matches, nothing else; None for
    anything else (the full decoder then judges it)."""
    size = len(data)
    if size < _SEALED_AT + 4 + stun.MIN_SEALED + 8:
        return None
    msg_type, length, cookie, tid, key_type, key_len = _HEAD.unpack_from(data)
    if (
        msg_type != stun.BINDING_REQUEST
        or cookie != stun.COOKIE_BYTES
        or length + stun.HEADER_LEN != size
        or key_type != stun.ATTR_WG_PUBLIC_KEY
        or key_len != stun.WG_KEY_LEN
    ):
        return None
    box_type, box_len = _ATTR.unpack_from(data, _SEALED_AT)
    end = _SEALED_AT + 4 + box_len
    at = end + (-box_len % 4)
    if box_type != stun.ATTR_WG_SEALED or at + 8 != size:
        return None
    if data[at : at + 4] != _FINGERPRINT_HEAD:
        return None
    if int.from_bytes(data[at + 4 :], "big") != (zlib.crc32(data[:at]) ^ stun.FINGERPRINT_XOR):
        return None
    return tid, data[_KEY_AT:_SEALED_AT], data[_SEALED_AT + 4 : end]


class Registration(NamedTuple):
    """What the fast path reads from a Register's plaintext (:func:`registration`). A
    NamedTuple: it is built for nearly every datagram."""

    timestamp_ms: int
    counter: int
    name: bytes
    """The name the peer reports (UTF-8, checked)."""
    addresses: int
    """How many addresses it reports."""
    seen_tail: bytes
    """Those addresses as ``pack_seen`` packs them."""
    software: bytes
    """The software string (ASCII, checked)."""


def registration(plaintext: bytes, transaction_id: bytes) -> Registration | None:
    """A primary Register bound to ``transaction_id`` whose every field the full decoder would
    accept; None for anything else (another kind, a secondary probe, a field the decoder would
    refuse, trailing bytes)."""
    size = len(plaintext)
    if size < HEADER_LEN + 4:
        return None
    version, kind, tid, ts, counter = _PAYLOAD_HEAD.unpack_from(plaintext)
    if version != VERSION or kind != Kind.REGISTER or tid != transaction_id:
        return None
    if plaintext[HEADER_LEN]:  # flags: a secondary probe, or flags we do not know
        return None
    pos = HEADER_LEN + 2
    name_end = pos + plaintext[pos - 1]
    if name_end - pos > MAX_NAME or name_end + 2 > size:
        return None
    name = plaintext[pos:name_end]
    sw_end = name_end + 1 + plaintext[name_end]
    if sw_end - name_end - 1 > MAX_SOFTWARE or sw_end + 1 > size:
        return None
    software = plaintext[name_end + 1 : sw_end]
    if software.translate(None, _PRINTABLE_ASCII):  # the decoder's ASCII and isprintable()
        return None
    if name.translate(None, _PRINTABLE_ASCII):  # not plain printable ASCII: decode it
        try:
            if not name.decode("utf-8").isprintable():
                return None
        except UnicodeDecodeError:
            return None
    count = plaintext[sw_end]
    if count > MAX_ADDRESSES:
        return None
    pos = sw_end + 1
    parts = []
    for _ in range(count):
        if pos >= size:
            return None
        family = plaintext[pos]
        n = _WIRE_LEN.get(family)
        if n is None or pos + n > size:
            return None
        parts.append(bytes((_PACKED_FAMILY[family],)))
        parts.append(plaintext[pos + 1 : pos + n])
        pos += n
    if pos != size:
        return None
    return Registration(ts, counter, name, count, b"".join(parts), software)
