"""What kind of NAT is this host behind: the probe and the verdict of ``wgmesh netcheck``.

Sans-IO. :class:`Netcheck` is the probe, aioquic-shaped: ``datagrams_to_send(now)`` names the
socket each request leaves by (:class:`Sock`), ``receive(sock, data, source, now)`` takes what
came back, ``next_timer()`` / ``handle_timer(now)`` drive retransmissions and the deadline, and
``results()`` gives one :class:`Result` per :class:`Probe`. :func:`classify` turns those results
(an :class:`Observations`, easy to make up in tests) into a :class:`Report` with a verdict in
words.

The tests follow RFC 5780 section 4 as far as a registrar with one address and two ports allows:

- mapping (4.3): Binding Requests from one socket to the primary port and to the alternate port
  (and to a second registrar address, when one is given). The same mapping toward both ports is
  endpoint-independent (a cone NAT), another one address-and-port-dependent (symmetric). With
  one address an address-dependent mapping cannot be told from an endpoint-independent one:
  the report says so.
- filtering (4.4): from a second socket, which has sent only to the primary port, a plain
  request (the path works), one with CHANGE-REQUEST "change port" (answered from the other port:
  the NAT does not filter by port) and one with "change IP and port" (a registrar has one
  address and answers 420: that test could not run, and the report says which).
- hairpinning (4.5): once the first mapping is known, a Binding Request to it from the same
  socket; it comes back to that socket if the NAT hairpins.
- an open port (``NetcheckConfig.test_port``, with ``--port``: the port the operator cares
  about, e.g. one forwarded to this host): before the mapping socket sends anything to the
  alternate port, it asks the primary port to answer from the alternate one (CHANGE-REQUEST
  "change port"). An answer that arrives while the mapping socket has talked to the primary
  port only came from a port the socket never sent to: the port does not filter by port (a
  port forward, or a NAT without port-dependent filtering), so peers behind any NAT, symmetric
  ones included, reach it once it has sent toward their address. The request is silent after
  ``open_port_wait``, when the alternate-port mapping test starts; an answer after that is
  inconclusive (it may have come through that test's hole).
- the registrar's round trip, and the other address family when a registrar address of it is
  given (``Observations.sources`` says which families have a route at all).

STUN messages are built and read with :mod:`wgmesh.proto.stun`; transaction ids come from the
``random`` callable passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from wgmesh.errors import DecodeError
from wgmesh.proto import stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Sock(StrEnum):
    """The sockets the probe sends from (the adapter binds one ephemeral port each)."""

    MAPPING = "mapping"
    """Mapping tests and hairpinning."""
    FILTERING = "filtering"
    """Filtering tests: it sends only to the primary port."""
    OTHER_FAMILY = "other-family"
    """The registrar's address of the other family, when given."""


class Probe(StrEnum):
    """One probe."""

    BINDING = "binding"
    """Mapping socket -> primary port: the mapping and the round trip (RFC 5780 test I)."""
    ALT_PORT = "mapping-alt-port"
    """Mapping socket -> the alternate port of the same address."""
    ALT_ADDRESS = "mapping-alt-address"
    """Mapping socket -> the primary port of a second registrar address."""
    FILTER_BASE = "filtering-base"
    """Filtering socket -> primary port, a plain request: the path works."""
    CHANGE_PORT = "filtering-change-port"
    """Filtering socket -> primary port, CHANGE-REQUEST change port (RFC 5780 test III)."""
    CHANGE_ADDRESS = "filtering-change-address"
    """Filtering socket -> primary port, CHANGE-REQUEST change IP and port (test II)."""
    HAIRPIN = "hairpinning"
    """Mapping socket -> our own mapping."""
    OTHER_FAMILY = "other-family"
    """A Binding Request to the registrar's address of the other family."""
    OPEN_PORT = "open-port"
    """Mapping socket (on ``--port``) -> primary port, CHANGE-REQUEST change port, before it
    sends to the alternate port: is the chosen port open to unsolicited UDP."""


class Outcome(StrEnum):
    """How a probe ended."""

    ANSWERED = "answered"
    SILENT = "no answer"
    REFUSED = "refused"
    """An error response (420: the registrar cannot answer from another address or port)."""
    IGNORED = "ignored"
    """Answered, but not as asked (a server without CHANGE-REQUEST answers from the same port)."""
    NOT_RUN = "not run"


@dataclass(frozen=True, slots=True)
class Result:
    """What one probe saw."""

    outcome: Outcome
    """How it ended."""
    mapped: Endpoint | None = None
    """The mapping the answer reported (XOR-MAPPED-ADDRESS)."""
    origin: Endpoint | None = None
    """Where the answer came from."""
    rtt: float | None = None
    """Seconds from the last send of the request to its answer."""
    detail: str = ""
    """Why it was refused, ignored or not run."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the probes go."""

    registrar: Endpoint
    """The registrar's primary STUN port."""
    alt_port: int | None = None
    """Its alternate STUN port (None: it has none)."""
    alt_address: IPAddress | None = None
    """A second address of the registrar (the primary port there), if it has one."""
    other_family: Endpoint | None = None
    """The registrar's primary port at an address of the other family, if given."""


@dataclass(frozen=True, slots=True)
class NetcheckConfig:
    """Timings of the probe."""

    timeout: float = 1.5
    """Seconds from the start until a request not answered counts as silent."""
    retransmit: tuple[float, ...] = (0.0, 0.3, 0.8)
    """When each request is sent, in seconds after it starts, until it is answered."""
    hairpin_wait: float = 0.5
    """Least seconds the hairpin request is waited for (it starts after the first answer)."""
    test_port: bool = False
    """Test whether the mapping socket's port (chosen with ``--port``) is open to unsolicited
    UDP (:data:`Probe.OPEN_PORT`)."""
    open_port_wait: float = 0.3
    """With ``test_port``: seconds the alternate-port mapping test waits for that answer (the
    registrar answers at once; a path slower than this makes the test inconclusive)."""


@dataclass(frozen=True, slots=True)
class Transmit:
    """A datagram to send."""

    sock: Sock
    """The socket it leaves by."""
    data: bytes
    """The STUN message."""
    destination: Endpoint
    """Where to."""


@dataclass(slots=True)
class _Request:
    test: Probe
    sock: Sock
    destination: Endpoint
    transaction_id: bytes
    data: bytes
    start: float
    deadline: float
    sent: int = 0
    last_sent: float = 0.0
    result: Result | None = None
    offsets: tuple[float, ...] | None = None
    """Its own send schedule (None: ``NetcheckConfig.retransmit``)."""


class Netcheck:
    """The probe; see the module docstring."""

    def __init__(
        self,
        config: NetcheckConfig,
        target: Target,
        random: Callable[[int], bytes],
        now: float,
    ) -> None:
        self.config = config
        self.target = target
        self._random = random
        self._deadline = now + config.timeout
        self._requests: dict[Probe, _Request] = {}
        self._not_run: dict[Probe, str] = {}
        reg = target.registrar
        self._add(Probe.BINDING, Sock.MAPPING, reg, now)
        later = 0.0
        if config.test_port and target.alt_port:
            self._add(Probe.OPEN_PORT, Sock.MAPPING, reg, now, stun.CHANGE_PORT)
            later = config.open_port_wait
        elif config.test_port:
            self._not_run[Probe.OPEN_PORT] = "the registrar has no alternate port"
        else:
            self._not_run[Probe.OPEN_PORT] = "no --port given (an ephemeral port says nothing)"
        if target.alt_port:
            alt = Endpoint(reg.ip, target.alt_port)
            self._add(Probe.ALT_PORT, Sock.MAPPING, alt, now + later)
        else:
            self._not_run[Probe.ALT_PORT] = "the registrar has no alternate port"
        if target.alt_address is not None:
            self._add(Probe.ALT_ADDRESS, Sock.MAPPING, Endpoint(target.alt_address, reg.port), now)
        else:
            self._not_run[Probe.ALT_ADDRESS] = "no second registrar address (one address only)"
        self._add(Probe.FILTER_BASE, Sock.FILTERING, reg, now)
        self._add(Probe.CHANGE_PORT, Sock.FILTERING, reg, now, stun.CHANGE_PORT)
        self._add(Probe.CHANGE_ADDRESS, Sock.FILTERING, reg, now, stun.CHANGE_IP | stun.CHANGE_PORT)
        if target.other_family is not None:
            self._add(Probe.OTHER_FAMILY, Sock.OTHER_FAMILY, target.other_family, now)
        else:
            self._not_run[Probe.OTHER_FAMILY] = "no registrar address of the other family given"

    def _add(self, test: Probe, sock: Sock, dest: Endpoint, now: float, change: int = 0) -> None:
        tid = self._random(stun.TRANSACTION_ID_LEN)
        attrs = ((stun.ATTR_CHANGE_REQUEST, stun.pack_change_request(change)),) if change else ()
        data = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, tid, attrs))
        deadline = self._deadline
        if test is Probe.HAIRPIN:
            deadline = max(deadline, now + self.config.hairpin_wait)
        elif test is Probe.ALT_PORT:
            deadline = max(deadline, now + self.config.timeout / 2)
        offsets = None
        if test is Probe.OPEN_PORT:  # silent once the alternate port is probed: a later
            wait = self.config.open_port_wait  # answer could come through that probe's hole
            deadline, offsets = now + wait, (0.0, wait / 2)
        self._requests[test] = _Request(test, sock, dest, tid, data, now, deadline,
                                        offsets=offsets)  # fmt: skip

    # -- driving ---------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """The requests due now (first sends and retransmissions)."""
        out = []
        for r in self._requests.values():
            offsets = r.offsets or self.config.retransmit
            if r.result is None and r.sent < len(offsets) and r.start + offsets[r.sent] <= now:
                r.sent += 1
                r.last_sent = now
                out.append(Transmit(r.sock, r.data, r.destination))
        return out

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` (then :meth:`datagrams_to_send`) has something to do."""
        times = []
        for r in self._requests.values():
            offsets = r.offsets or self.config.retransmit
            if r.result is not None:
                continue
            times.append(r.deadline)
            if r.sent < len(offsets):
                times.append(r.start + offsets[r.sent])
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Requests past their deadline are silent."""
        for r in self._requests.values():
            if r.result is None and now >= r.deadline:
                r.result = Result(Outcome.SILENT)

    @property
    def done(self) -> bool:
        """Every probe has its result."""
        return all(r.result is not None for r in self._requests.values())

    def receive(self, sock: Sock, data: bytes, source: Endpoint, now: float) -> None:
        """A datagram that arrived at ``sock`` from ``source``; anything that is not an answer
        to one of our requests (or our hairpinned request) is ignored."""
        if not stun.is_stun(data):
            return
        try:
            msg = stun.decode(data)
        except DecodeError:
            return
        for r in self._requests.values():
            if r.sock is sock and r.transaction_id == msg.transaction_id and r.result is None:
                break
        else:
            return
        if msg.msg_type == stun.BINDING_REQUEST:
            if r.test is Probe.HAIRPIN:  # our own request came back to us
                r.result = Result(Outcome.ANSWERED, origin=source, rtt=now - r.last_sent)
            return
        result = _answer(r, msg, source, now, self.target)
        if result is None:
            return
        alt = self._requests.get(Probe.ALT_PORT)
        if r.test is Probe.OPEN_PORT and alt is not None and alt.sent:
            why = "answered only after the alternate port was probed: inconclusive"
            result = Result(Outcome.IGNORED, result.mapped, source, result.rtt, why)
        r.result = result
        if r.test is Probe.BINDING and result.mapped is not None:
            self._add(Probe.HAIRPIN, Sock.MAPPING, result.mapped, now)

    def results(self) -> dict[Probe, Result]:
        """One result per test (a pending one, before the end, counts as silent)."""
        out = {t: Result(Outcome.NOT_RUN, detail=why) for t, why in self._not_run.items()}
        for test, r in self._requests.items():
            out[test] = r.result or Result(Outcome.SILENT)
        if Probe.HAIRPIN not in out:
            out[Probe.HAIRPIN] = Result(Outcome.NOT_RUN, detail="no mapping to send to")
        return out


def _mapped(msg: stun.StunMessage) -> Endpoint | None:
    try:
        xor = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
        if xor is not None:
            return stun.unpack_xor_address(xor, msg.transaction_id)
        plain = msg.get(stun.ATTR_MAPPED_ADDRESS)
        return None if plain is None else stun.unpack_address(plain)
    except DecodeError:
        return None


def _answer(
    r: _Request, msg: stun.StunMessage, source: Endpoint, now: float, target: Target
) -> Result | None:
    """The result a response gives request ``r``; None: not an answer to take (a stray)."""
    rtt = now - r.last_sent
    reg = target.registrar
    if msg.msg_type == stun.BINDING_ERROR:
        if source != r.destination:
            return None
        value = msg.get(stun.ATTR_ERROR_CODE)
        try:
            code, reason = (0, "") if value is None else stun.unpack_error(value)
        except DecodeError:
            code, reason = 0, ""
        return Result(Outcome.REFUSED, origin=source, rtt=rtt, detail=f"error {code} {reason}")
    if msg.msg_type != stun.BINDING_SUCCESS:
        return None
    mapped = _mapped(msg)
    if mapped is None:
        return None
    if r.test in (Probe.CHANGE_PORT, Probe.OPEN_PORT):
        if source.ip != reg.ip:
            return None
        if source.port == reg.port:
            why = "answered from the same port: the server does not do CHANGE-REQUEST"
            return Result(Outcome.IGNORED, mapped, source, rtt, why)
    elif r.test is Probe.CHANGE_ADDRESS:
        if source.ip == reg.ip:
            why = "answered from the same address: the server has no second address"
            return Result(Outcome.IGNORED, mapped, source, rtt, why)
    elif source != r.destination:
        return None
    return Result(Outcome.ANSWERED, mapped, source, rtt)


# -- what it means ----------------------------------------------------------------------------


class MappingBehaviour(StrEnum):
    """RFC 4787 / RFC 5780 mapping behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


class FilteringBehaviour(StrEnum):
    """RFC 4787 / RFC 5780 filtering behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    NOT_PORT_DEPENDENT = "endpoint-independent or address-dependent"
    """The change-port answer came through, the change-address test could not run."""
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Observations:
    """Everything :func:`classify` reads."""

    results: Mapping[Probe, Result]
    """One result per test (:meth:`Netcheck.results`)."""
    local: Endpoint | None = None
    """The mapping socket's own address toward the registrar (no NAT: the mapping is this)."""
    sources: Mapping[int, IPAddress | None] = field(default_factory=dict)
    """Per address family (4, 6): the local address the kernel would send from toward the
    Internet, None when that family has no route."""


@dataclass(frozen=True, slots=True)
class FamilyReport:
    """One address family."""

    family: int
    """4 or 6."""
    source: IPAddress | None
    """The local address with a route toward the Internet (None: no route)."""
    reached: bool | None
    """The registrar answered over this family (None: no registrar address of it to try)."""
    mapped: Endpoint | None
    """Our mapping over this family, when it answered."""


@dataclass(frozen=True, slots=True)
class Report:
    """What the observations mean."""

    reachable: bool
    """The registrar answered at all."""
    mapped: Endpoint | None
    """Our mapping as the registrar's primary port saw it."""
    nat: NatKind
    """The class the registrar would publish: none, cone, symmetric, unknown."""
    mapping: MappingBehaviour
    """RFC 4787 mapping behaviour."""
    filtering: FilteringBehaviour
    """RFC 4787 filtering behaviour."""
    hairpinning: bool | None
    """Our own mapping reached us from inside (None: not tested)."""
    rtt: float | None
    """The registrar's round trip in seconds."""
    families: tuple[FamilyReport, ...]
    """IPv4 first."""
    not_run: tuple[tuple[Probe, str], ...]
    """The tests that could not run or were refused, and why."""
    notes: tuple[str, ...]
    """Caveats, for people."""
    verdict: str
    """What it means, in words."""
    open_port: bool | None = None
    """The ``--port`` chosen takes UDP from ports it never sent to (None: not tested, or
    inconclusive)."""


def classify(obs: Observations, target: Target) -> Report:
    """The report of ``obs`` (probes toward ``target``)."""
    res = obs.results
    first = res.get(Probe.BINDING, Result(Outcome.NOT_RUN))
    reachable = first.outcome is Outcome.ANSWERED and first.mapped is not None
    notes: list[str] = []
    mapping = _mapping(res, notes) if reachable else MappingBehaviour.UNKNOWN
    no_nat = reachable and obs.local is not None and first.mapped == obs.local
    if no_nat:
        nat = NatKind.NONE
    elif mapping is MappingBehaviour.ENDPOINT_INDEPENDENT:
        nat = NatKind.CONE
    elif mapping is MappingBehaviour.UNKNOWN:
        nat = NatKind.UNKNOWN
    else:
        nat = NatKind.SYMMETRIC
    filtering = _filtering(res) if reachable else FilteringBehaviour.UNKNOWN
    hairpin = res.get(Probe.HAIRPIN, Result(Outcome.NOT_RUN)).outcome
    hairpinning = (
        None if hairpin in (Outcome.NOT_RUN, Outcome.REFUSED) else (hairpin is Outcome.ANSWERED)
    )
    if no_nat and hairpinning:
        notes.append("hairpinning: no NAT on the way, so our own address simply reached us")
    not_run = tuple(
        (test, res[test].detail or res[test].outcome.value)
        for test in Probe
        if test in res and res[test].outcome in (Outcome.NOT_RUN, Outcome.REFUSED, Outcome.IGNORED)
        and not (test is Probe.OPEN_PORT and res[test].outcome is Outcome.NOT_RUN)
    )  # fmt: skip
    tried = res.get(Probe.OPEN_PORT, Result(Outcome.NOT_RUN)).outcome
    open_port = {Outcome.ANSWERED: True, Outcome.SILENT: False}.get(tried) if reachable else None
    return Report(
        reachable=reachable,
        mapped=first.mapped if reachable else None,
        nat=nat,
        mapping=mapping,
        filtering=filtering,
        hairpinning=hairpinning if reachable else None,
        rtt=first.rtt if reachable else None,
        families=_families(obs, target),
        not_run=not_run,
        notes=tuple(notes),
        verdict=verdict(reachable, nat, mapping, filtering, target, open_port, first.mapped),
        open_port=open_port,
    )


def _mapping(res: Mapping[Probe, Result], notes: list[str]) -> MappingBehaviour:
    first = res[Probe.BINDING].mapped

    def seen(test: Probe) -> Endpoint | None:
        r = res.get(test)
        return r.mapped if r is not None and r.outcome is Outcome.ANSWERED else None

    port, address = seen(Probe.ALT_PORT), seen(Probe.ALT_ADDRESS)
    if port is not None and port != first:
        return MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT
    if address is not None and address != first:
        return MappingBehaviour.ADDRESS_DEPENDENT
    if port is None and address is None:
        return MappingBehaviour.UNKNOWN
    tried = res.get(Probe.ALT_ADDRESS)
    if tried is not None and tried.outcome is Outcome.SILENT:
        notes.append("mapping: the second registrar address did not answer")
    elif address is None:
        notes.append(
            "mapping: with one registrar address an address-dependent mapping looks "
            "endpoint-independent (both are published as cone)"
        )
    return MappingBehaviour.ENDPOINT_INDEPENDENT


def _filtering(res: Mapping[Probe, Result]) -> FilteringBehaviour:
    def outcome(test: Probe) -> Outcome:
        r = res.get(test)
        return Outcome.NOT_RUN if r is None else r.outcome

    base, port, address = (outcome(t) for t in (Probe.FILTER_BASE, Probe.CHANGE_PORT,
                                                 Probe.CHANGE_ADDRESS))  # fmt: skip
    if address is Outcome.ANSWERED:
        return FilteringBehaviour.ENDPOINT_INDEPENDENT
    if port is Outcome.ANSWERED:
        if address is Outcome.SILENT:
            return FilteringBehaviour.ADDRESS_DEPENDENT
        return FilteringBehaviour.NOT_PORT_DEPENDENT
    if port is Outcome.SILENT and base is Outcome.ANSWERED:
        return FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT
    return FilteringBehaviour.UNKNOWN


def _families(obs: Observations, target: Target) -> tuple[FamilyReport, ...]:
    out = []
    for family in (4, 6):
        reached: bool | None = None
        mapped = None
        for test, dest in ((Probe.BINDING, target.registrar),
                           (Probe.OTHER_FAMILY, target.other_family)):  # fmt: skip
            r = obs.results.get(test)
            if dest is None or dest.ip.version != family or r is None:
                continue
            if r.outcome is Outcome.NOT_RUN:
                continue
            reached = r.outcome is Outcome.ANSWERED
            mapped = r.mapped
        out.append(FamilyReport(family, obs.sources.get(family), reached, mapped))
    return tuple(out)


def verdict(
    reachable: bool,
    nat: NatKind,
    mapping: MappingBehaviour,
    filtering: FilteringBehaviour,
    target: Target,
    open_port: bool | None = None,
    mapped: Endpoint | None = None,
) -> str:
    """What the classes mean for wgmesh's paths, in one sentence or two."""
    if reachable and open_port and nat is not NatKind.SYMMETRIC:
        where = f" at {mapped}" if mapped is not None else ""
        return (
            f"this port{where} takes UDP from ports it never sent to (a port forward, or a NAT "
            "that does not filter by port): peers behind any NAT, symmetric ones included, "
            "reach it directly; use it as WireGuard's port"
        )
    if not reachable:
        ports = str(target.registrar.port)
        if target.alt_port:
            ports += f" and {target.alt_port}"
        return (
            f"the registrar did not answer at {target.registrar}: UDP to it is blocked or it "
            f"is down (wgmesh needs UDP to port {ports}); nothing can be said about the NAT"
        )
    by_port = filtering is FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT
    unknown_filter = filtering is FilteringBehaviour.UNKNOWN
    if nat is NatKind.NONE:
        if by_port:
            return (
                "no NAT, but a firewall filters like a port-restricted NAT: direct to peers "
                "without NAT or behind cone NATs; a relay is needed with symmetric NATs"
            )
        if unknown_filter:
            return (
                "no NAT (filtering not tested: a firewall may still drop what we did not ask "
                "for): direct to peers without NAT or behind cone NATs, and to symmetric NATs "
                "unless a firewall filters by port"
            )
        return "no NAT: direct to every peer (they reach this host at its own address)"
    if nat is NatKind.CONE:
        if by_port or unknown_filter:
            kind = "a port-restricted cone NAT" if by_port else "a cone NAT"
            return (
                f"{kind} (endpoint-independent mapping): direct to peers without NAT or "
                "behind cone NATs; a relay is needed with symmetric NATs"
            )
        return (
            f"a cone NAT that does not filter by port ({filtering.value} filtering): direct "
            "to peers without NAT or behind cone NATs, and usually to symmetric NATs too"
        )
    if nat is NatKind.SYMMETRIC:
        return (
            f"a symmetric NAT ({mapping.value} mapping: a new public port per destination): "
            "direct only to peers without NAT or behind NATs that do not filter by port; a "
            "relay is needed with cone (port-restricted) and symmetric NATs"
        )
    return (
        "the mapping could not be classified (the alternate port did not answer): wgmesh "
        "cannot tell cone from symmetric here; direct paths are tried, the relay is the fallback"
    )
