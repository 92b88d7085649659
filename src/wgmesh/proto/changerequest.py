"""The registrar's answer to an RFC 5780 CHANGE-REQUEST (section 6.1), as far as one address
and two ports allow: the NAT filtering test that ``wgmesh netcheck`` runs.

A plain Binding Request (no wgmesh attributes) carrying CHANGE-REQUEST is answered so:

- change port (flag B) alone: a Binding Success from the *other* STUN port (the alternate port
  for a request to the primary one, and the other way round), toward the request's source;
- change IP (flag A), with or without B: error 420, from the port it came to: the registrar
  has one address (RFC 5780 section 6.1: a server without the alternate address and port
  asked for "MUST generate an error response of type 420"); likewise change port when the
  registrar runs without an alternate port;
- no flag: not handled here (the ordinary Binding Success answers it).

Reflection and amplification: whatever the flags, one datagram answers one request, only ever
toward the request's source address, and never larger than twice the request
(:data:`MAX_FACTOR`): the answer carries XOR-MAPPED-ADDRESS, then MAPPED-ADDRESS (section
6.1 asks for both) where that still fits, and FINGERPRINT; no SOFTWARE. A request carrying
CHANGE-REQUEST is at least 28 bytes; the answer is 40 or 52 bytes for IPv4 and 52 or 76 for
IPv6, the 420 is 56 bytes, so every such request gets its answer. No state is kept. An answer
from the other port does reach an address that never sent to that port (that is the test), but
it is the same one datagram a plain Binding Request draws, so a spoofed source gains nothing
over a plain request.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgmesh.errors import DecodeError
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint

MAX_FACTOR = 2
"""An answer is at most this many times the size of its request."""
_NEEDLE = stun.ATTR_CHANGE_REQUEST.to_bytes(2, "big") + (4).to_bytes(2, "big")
NO_ADDRESS = "no alternate address"
NO_PORT = "no alternate port"


@dataclass(frozen=True, slots=True)
class ChangedAnswer:
    """What to send for a CHANGE-REQUEST: ``data`` toward the request's source (nothing when
    empty: dropped), from the other STUN port when ``other_port``."""

    data: bytes
    """The answer's bytes; empty: drop the request."""
    other_port: bool
    """Send from the other STUN port (else from the port the request came to)."""


def answer(data: bytes, source: Endpoint, *, has_other_port: bool) -> ChangedAnswer | None:
    """The answer to ``data`` from ``source`` when it is a plain Binding Request carrying
    CHANGE-REQUEST with a flag set; None for anything else (the caller's ordinary path takes
    it). ``has_other_port``: the registrar listens on a second STUN port."""
    if data.find(_NEEDLE, stun.HEADER_LEN) < 0 or not stun.is_stun(data):  # cheap, no copy
        return None
    try:
        msg = stun.decode(data)
        value = msg.get(stun.ATTR_CHANGE_REQUEST)
        flags = 0 if value is None else stun.unpack_change_request(value)
    except DecodeError:
        return None  # the ordinary path counts it
    if (
        not flags
        or msg.msg_type != stun.BINDING_REQUEST
        or msg.get(stun.ATTR_WG_PUBLIC_KEY) is not None
        or msg.get(stun.ATTR_WG_SEALED) is not None
    ):
        return None
    if flags & stun.CHANGE_IP or not has_other_port:
        reason = NO_ADDRESS if flags & stun.CHANGE_IP else NO_PORT
        error = (stun.ATTR_ERROR_CODE, stun.pack_error(420, reason))
        out = stun.encode(stun.StunMessage(stun.BINDING_ERROR, msg.transaction_id, (error,)))
        other = False
    else:
        xor = (stun.ATTR_XOR_MAPPED_ADDRESS, stun.pack_xor_address(source, msg.transaction_id))
        mapped = (stun.ATTR_MAPPED_ADDRESS, stun.pack_address(source))
        out = stun.encode(stun.StunMessage(stun.BINDING_SUCCESS, msg.transaction_id, (xor, mapped)))
        if len(out) > MAX_FACTOR * len(data):
            out = stun.encode(stun.StunMessage(stun.BINDING_SUCCESS, msg.transaction_id, (xor,)))
        other = True
    if len(out) > MAX_FACTOR * len(data):
        return ChangedAnswer(b"", other)
    return ChangedAnswer(out, other)
