"""Domain values shared by the registrar, the daemon and the lab, each defined once.

- :class:`NatKind`: a peer's NAT as the registrar classifies it (published in TXT ``nat=``,
  carried in Status, shown by ``wgmesh peers``);
- :class:`CandidateKind`: what kind of address a published candidate is (the SRV target's
  first label, ``<kind><i>``, names it: docs/protocol.md).
"""

from __future__ import annotations

from enum import StrEnum


class NatKind(StrEnum):
    """A peer's NAT as the registrar classified it."""

    UNKNOWN = "unknown"
    """Not classified yet (no probe to the alternate port answered)."""
    NONE = "none"
    """No NAT: the observed mapping is one of the peer's own addresses."""
    CONE = "cone"
    """Endpoint-independent mapping: the same public port toward every destination."""
    SYMMETRIC = "symmetric"
    """Endpoint-dependent mapping: a new public port per destination."""


class CandidateKind(StrEnum):
    """What a published candidate address is."""

    PUBLIC = "public"
    """The mapping the registrar observed for the peer's WireGuard port."""
    LAN = "lan"
    """An address the peer reported for itself on a private network."""
    IPV6 = "ipv6"
    """A global IPv6 address the peer reported for itself."""

    def target_label(self, index: int) -> str:
        """The first label of this candidate's SRV target (``lan1``, ``ipv62``); the public
        candidate (index 0) has none: its target is the peer's own name."""
        return f"{self.value}{index}" if index else ""

    @classmethod
    def of_target_label(cls, label: str) -> CandidateKind | None:
        """Inverse of :meth:`target_label` for index >= 1; None for anything else."""
        for kind in (cls.IPV6, cls.LAN, cls.PUBLIC):  # ipv6 before any prefix of it
            digits = label[len(kind.value) :]
            if label.startswith(kind.value) and digits.isascii() and digits.isdigit():
                return kind if digits[0] != "0" else None
        return None


_FILTERING = frozenset({NatKind.CONE, NatKind.UNKNOWN})
"""NATs that drop unsolicited packets but keep one mapping per port (an unclassified NAT is
assumed to be one)."""


def relay_predicted(ours: NatKind, theirs: NatKind) -> bool:
    """The two NAT classes leave no direct path: symmetric on both sides, or symmetric on one
    and filtering on the other (a full-cone NAT, which does not filter, classifies as cone
    too, so direct is still tried in the background)."""
    if NatKind.SYMMETRIC not in (ours, theirs):
        return False
    return ours == theirs or (ours in _FILTERING or theirs in _FILTERING)
