"""NOTIFY to the zone's secondaries (RFC 1996), sans-IO: the retry schedule and the messages.

On every new serial each secondary is sent a NOTIFY at once (section 3.7: opcode NOTIFY, AA,
the zone's SOA as the question and, as a hint, the new SOA in the answer section), and again
after ``first_retry`` seconds, doubling up to ``max_retry``, until it answers with a NOTIFY
response of the same id from the address it was sent to (section 3.6: "retransmitted ... until
a response is received"), or ``attempts`` were sent: then it is given up (the secondary still
polls the SOA at the zone's refresh interval). A newer serial replaces one still being retried.

The adapter (:mod:`wgmesh.registry.xfr`) asks :meth:`Notifier.due` for what to send at ``now``,
signs it with TSIG when a key is configured, sends it, feeds responses to
:meth:`Notifier.acknowledged`, and re-arms one timer at :meth:`Notifier.next_timer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from wgmesh.errors import ConfigError
from wgmesh.proto.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """The retry schedule."""

    first_retry: float = 1.0
    """Seconds before the first retransmission."""
    backoff: float = 2.0
    """Each later one waits this many times longer ..."""
    max_retry: float = 30.0
    """... up to this many seconds."""
    attempts: int = 6
    """NOTIFYs sent per serial and secondary, the first included (then given up)."""

    def __post_init__(self) -> None:
        if self.first_retry <= 0 or self.backoff < 1 or self.attempts < 1:
            raise ConfigError(f"bad NOTIFY schedule {self}")


@dataclass(frozen=True, slots=True)
class Notify:
    """One NOTIFY to send."""

    secondary: Endpoint
    """Where to."""
    serial: int
    """The serial it announces."""
    qid: int
    """Its message id (the response must echo it)."""
    attempt: int
    """1 for the first transmission."""


@dataclass(slots=True)
class _Pending:
    serial: int
    qid: int
    attempt: int
    due: float


@dataclass(slots=True)
class NotifyStats:
    """What the schedule did."""

    sent: int = 0
    """First NOTIFYs handed out to send (one per serial and secondary)."""
    retried: int = 0
    """Retransmissions handed out to send."""
    acknowledged: int = 0
    """NOTIFY responses that matched one in flight."""
    given_up: int = 0
    """Serials given up on for a secondary after every attempt went unanswered."""
    unexpected: int = 0
    """Responses that matched nothing in flight (late, duplicate or forged)."""
    failures: list[tuple[Endpoint, int]] = field(default_factory=list)
    """(secondary, serial) given up since the adapter last took them (:meth:`Notifier.failed`)."""


class Notifier:
    """The NOTIFYs in flight, one per secondary at most."""

    def __init__(
        self,
        secondaries: Sequence[Endpoint],
        new_id: Callable[[], int],
        config: NotifyConfig | None = None,
    ) -> None:
        self.secondaries = tuple(dict.fromkeys(secondaries))
        self.config = config or NotifyConfig()
        self.stats = NotifyStats()
        self._new_id = new_id
        self._pending: dict[Endpoint, _Pending] = {}

    def notify(self, serial: int, now: float) -> None:
        """A new serial: every secondary is due a NOTIFY at once (replacing any in flight)."""
        for secondary in self.secondaries:
            self._pending[secondary] = _Pending(serial, self._new_id() & 0xFFFF, 0, now)

    def due(self, now: float) -> list[Notify]:
        """What to send at ``now``; each is then waited for until its next retry."""
        out = []
        cfg = self.config
        for secondary, p in list(self._pending.items()):
            if p.due > now:
                continue
            if p.attempt >= cfg.attempts:
                del self._pending[secondary]
                self.stats.given_up += 1
                self.stats.failures.append((secondary, p.serial))
                continue
            p.attempt += 1
            if p.attempt > 1:
                self.stats.retried += 1
                p.qid = self._new_id() & 0xFFFF
            else:
                self.stats.sent += 1
            wait = min(cfg.first_retry * cfg.backoff ** (p.attempt - 1), cfg.max_retry)
            p.due = now + wait
            out.append(Notify(secondary, p.serial, p.qid, p.attempt))
        return out

    def acknowledged(self, source: Endpoint, qid: int) -> bool:
        """A NOTIFY response with id ``qid`` came from ``source``: True if it ends a NOTIFY in
        flight (the secondary knows the serial)."""
        p = self._pending.get(source)
        if p is None or p.qid != qid or p.attempt == 0:
            self.stats.unexpected += 1
            return False
        del self._pending[source]
        self.stats.acknowledged += 1
        return True

    def failed(self) -> list[tuple[Endpoint, int]]:
        """(secondary, serial) given up since the last call."""
        out, self.stats.failures = self.stats.failures, []
        return out

    def next_timer(self) -> float | None:
        """When :meth:`due` next has something to do (a retry, or a give-up)."""
        return min((p.due for p in self._pending.values()), default=None)

    @property
    def in_flight(self) -> int:
        """Secondaries with a NOTIFY not acknowledged yet."""
        return len(self._pending)


def notify_message(origin: dns.name.Name, soa: dns.rrset.RRset, qid: int) -> bytes:
    """The NOTIFY for ``origin`` at the serial of ``soa`` (RFC 1996 section 3.7)."""
    m = dns.message.Message(qid)
    m.set_opcode(dns.opcode.NOTIFY)
    m.flags |= dns.flags.AA
    m.find_rrset(m.question, origin, dns.rdataclass.IN, dns.rdatatype.SOA, create=True)
    m.answer.append(soa)
    return bytes(m.to_wire())


def is_notify_response(message: bytes) -> int | None:
    """The id of a NOTIFY response (QR=1, opcode NOTIFY), else None."""
    if len(message) < 12 or not message[2] & 0x80 or (message[2] >> 3) & 0x0F != 4:
        return None
    return (message[0] << 8) | message[1]
