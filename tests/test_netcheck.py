"""``wgmesh netcheck``'s core, pure: the verdict from made-up observations, the probe pumped
through a modelled NAT to a real (sans-IO) Registry on a float clock, and the registrar's
CHANGE-REQUEST answers (RFC 5780) with their size bound."""

from __future__ import annotations

import ipaddress
import itertools
import os
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgmesh.proto import changerequest, sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.netcheck import (
    FilteringBehaviour,
    MappingBehaviour,
    Netcheck,
    NetcheckConfig,
    Observations,
    Outcome,
    Probe,
    Result,
    Sock,
    Target,
    classify,
)
from wgmesh.proto.registry import Admission, Registry, RegistryConfig

REGISTRAR = Endpoint.parse("198.51.100.1:3478")
ALT = 3479
SECOND = ipaddress.IPv4Address("198.51.100.2")
PUBLIC = ipaddress.IPv4Address("203.0.113.5")
INSIDE = {Sock.MAPPING: Endpoint.parse("10.0.0.2:5000"),
          Sock.FILTERING: Endpoint.parse("10.0.0.2:5001")}  # fmt: skip
TARGET = Target(REGISTRAR, ALT)


# -- made-up observations --------------------------------------------------------------------


def ok(mapped: str, origin: Endpoint = REGISTRAR) -> Result:
    return Result(Outcome.ANSWERED, Endpoint.parse(mapped), origin, 0.02)


SILENT = Result(Outcome.SILENT)
REFUSED_420 = Result(Outcome.REFUSED, detail="error 420 no alternate address")


def observed(**results: Result) -> Observations:
    base = {
        Probe.BINDING: ok("203.0.113.5:6000"),
        Probe.ALT_PORT: ok("203.0.113.5:6000"),
        Probe.ALT_ADDRESS: Result(Outcome.NOT_RUN, detail="no second registrar address"),
        Probe.FILTER_BASE: ok("203.0.113.5:6001"),
        Probe.CHANGE_PORT: SILENT,
        Probe.CHANGE_ADDRESS: REFUSED_420,
        Probe.HAIRPIN: SILENT,
        Probe.OTHER_FAMILY: Result(Outcome.NOT_RUN, detail="none given"),
    }
    base.update({Probe[name]: r for name, r in results.items()})
    return Observations(base, INSIDE[Sock.MAPPING], {4: ipaddress.IPv4Address("10.0.0.2")})


def test_a_port_restricted_cone_nat() -> None:
    report = classify(observed(), TARGET)
    assert report.reachable and report.nat is NatKind.CONE
    assert report.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert report.filtering is FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT
    assert report.hairpinning is False
    assert report.rtt == 0.02
    assert report.verdict == (
        "a port-restricted cone NAT (endpoint-independent mapping): direct to peers without "
        "NAT or behind cone NATs; a relay is needed with symmetric NATs"
    )
    assert dict(report.not_run) == {
        Probe.ALT_ADDRESS: "no second registrar address",
        Probe.CHANGE_ADDRESS: "error 420 no alternate address",
        Probe.OTHER_FAMILY: "none given",
    }
    assert any("address-dependent mapping looks endpoint-independent" in n for n in report.notes)
    assert report.families[0].family == 4 and report.families[0].reached is True
    assert report.families[1].family == 6 and report.families[1].reached is None
    assert report.families[1].source is None


def test_a_symmetric_nat() -> None:
    report = classify(observed(ALT_PORT=ok("203.0.113.5:6002")), TARGET)
    assert report.nat is NatKind.SYMMETRIC
    assert report.mapping is MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT
    assert report.verdict.startswith("a symmetric NAT (address-and-port-dependent mapping")
    assert "a relay is needed with cone (port-restricted) and symmetric NATs" in report.verdict


def test_a_nat_that_does_not_filter_by_port() -> None:
    report = classify(observed(CHANGE_PORT=ok("203.0.113.5:6001", REGISTRAR)), TARGET)
    assert report.filtering is FilteringBehaviour.NOT_PORT_DEPENDENT
    assert report.nat is NatKind.CONE
    assert "does not filter by port" in report.verdict and "usually to symmetric" in report.verdict
    # with a server that can change its address too, the two are told apart
    full = observed(CHANGE_PORT=ok("203.0.113.5:6001"), CHANGE_ADDRESS=ok("203.0.113.5:6001"))
    assert classify(full, TARGET).filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT
    restricted = observed(CHANGE_PORT=ok("203.0.113.5:6001"), CHANGE_ADDRESS=SILENT)
    assert classify(restricted, TARGET).filtering is FilteringBehaviour.ADDRESS_DEPENDENT


def test_an_address_dependent_mapping_needs_a_second_address() -> None:
    obs = observed(ALT_ADDRESS=ok("203.0.113.5:6009", Endpoint(SECOND, 3478)))
    report = classify(obs, Target(REGISTRAR, ALT, SECOND))
    assert report.mapping is MappingBehaviour.ADDRESS_DEPENDENT
    assert report.nat is NatKind.SYMMETRIC
    assert not any("looks endpoint-independent" in n for n in report.notes)


def test_no_nat_and_no_firewall() -> None:
    obs = observed(
        BINDING=ok("10.0.0.2:5000"), ALT_PORT=ok("10.0.0.2:5000"),
        CHANGE_PORT=ok("10.0.0.2:5001"), HAIRPIN=Result(Outcome.ANSWERED),
    )  # fmt: skip
    report = classify(obs, TARGET)
    assert report.nat is NatKind.NONE and report.hairpinning is True
    assert report.verdict.startswith("no NAT: direct to every peer")
    assert any("no NAT on the way" in n for n in report.notes)


def test_no_nat_behind_a_stateful_firewall() -> None:
    obs = observed(BINDING=ok("10.0.0.2:5000"), ALT_PORT=ok("10.0.0.2:5000"))
    report = classify(obs, TARGET)
    assert report.nat is NatKind.NONE
    assert report.verdict.startswith("no NAT, but a firewall filters like a port-restricted NAT")


def test_a_registrar_that_does_not_answer() -> None:
    obs = observed(BINDING=SILENT, ALT_PORT=SILENT, FILTER_BASE=SILENT)
    report = classify(obs, TARGET)
    assert not report.reachable and report.nat is NatKind.UNKNOWN
    assert report.mapped is None and report.hairpinning is None and report.rtt is None
    assert report.verdict == (
        "the registrar did not answer at 198.51.100.1:3478: UDP to it is blocked or it is "
        "down (wgmesh needs UDP to port 3478 and 3479); nothing can be said about the NAT"
    )
    assert report.families[0].reached is False


def test_an_alternate_port_that_does_not_answer_leaves_the_mapping_unknown() -> None:
    report = classify(observed(ALT_PORT=SILENT), TARGET)
    assert report.mapping is MappingBehaviour.UNKNOWN and report.nat is NatKind.UNKNOWN
    assert "could not be classified" in report.verdict


def test_a_server_without_change_request_is_not_taken_for_an_open_nat() -> None:
    ignored = Result(Outcome.IGNORED, detail="answered from the same port")
    report = classify(observed(CHANGE_PORT=ignored), TARGET)
    assert report.filtering is FilteringBehaviour.UNKNOWN
    assert (Probe.CHANGE_PORT, "answered from the same port") in report.not_run
    assert report.verdict.startswith("a cone NAT (endpoint-independent mapping)")


# -- the probe, pumped through a modelled NAT to a sans-IO Registry --------------------------


@dataclass
class Nat:
    """A NAT in front of the two probe sockets: ``mapping`` eim | adm | apdm | none (no NAT,
    maybe a firewall), ``filtering`` eif | adf | apdf, ``hairpin``."""

    mapping: str
    filtering: str
    hairpin: bool = True
    ports: itertools.count[int] = field(default_factory=lambda: itertools.count(40000))
    out: dict[tuple[object, ...], Endpoint] = field(default_factory=dict)
    owner: dict[Endpoint, Sock] = field(default_factory=dict)
    allowed: set[tuple[Endpoint, object]] = field(default_factory=set)

    def outbound(self, sock: Sock, dest: Endpoint) -> Endpoint:
        if self.mapping == "none":
            public = INSIDE[sock]
        else:
            key: tuple[object, ...] = {
                "eim": (sock,), "adm": (sock, dest.ip), "apdm": (sock, dest),
            }[self.mapping]  # fmt: skip
            if key not in self.out:
                self.out[key] = Endpoint(PUBLIC, next(self.ports))
            public = self.out[key]
        self.owner[public] = sock
        self.allowed.add((public, dest))
        self.allowed.add((public, dest.ip))
        return public

    def inbound(self, source: Endpoint, public: Endpoint) -> Sock | None:
        sock = self.owner.get(public)
        if sock is None:
            return None
        if self.filtering == "adf" and (public, source.ip) not in self.allowed:
            return None
        if self.filtering == "apdf" and (public, source) not in self.allowed:
            return None
        return sock


def registry(has_alt: bool = True) -> tuple[Registry, bool]:
    zone = Zone(ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h.mesh.test."))
    reg = Registry(RegistryConfig(), sealed.Sealer(bytes(PrivateKey.generate())),
                   Admission(open=True), zone, os.urandom, REGISTRAR.port)  # fmt: skip
    return reg, has_alt


def pump(
    nat: Nat, target: Target = TARGET, has_alt: bool = True, config: NetcheckConfig | None = None
) -> Observations:
    reg, _ = registry(has_alt)
    ports = (REGISTRAR.port, ALT) if has_alt else (REGISTRAR.port,)
    now = 0.0
    check = Netcheck(config or NetcheckConfig(), target, os.urandom, now)

    def to_registrar(data: bytes, src: Endpoint, dest: Endpoint) -> list[tuple[bytes, Endpoint]]:
        if dest.ip not in (REGISTRAR.ip, target.alt_address) or dest.port not in ports:
            return []  # nothing listens there
        changed = reg.answer_change_request(data, src, has_other_port=has_alt)
        if changed is not None:
            if not changed.data:
                return []
            port = ports[1 - ports.index(dest.port)] if changed.other_port else dest.port
            return [(changed.data, Endpoint(dest.ip, port))]
        return [(out, Endpoint(dest.ip, dest.port)) for out, to in
                reg.receive(data, src, dest.port, now) if to == src]  # fmt: skip

    for _ in range(200):
        for t in check.datagrams_to_send(now):
            public = nat.outbound(t.sock, t.destination)
            if t.destination.ip == PUBLIC:  # toward our own mapping: hairpinning
                back = nat.owner.get(t.destination) if nat.hairpin else None
                if back is not None:
                    check.receive(back, t.data, public, now)
                continue
            if t.destination == INSIDE[Sock.MAPPING] and nat.mapping == "none":
                check.receive(Sock.MAPPING, t.data, public, now)
                continue
            for data, origin in to_registrar(t.data, public, t.destination):
                sock = nat.inbound(origin, public)
                if sock is not None:
                    check.receive(sock, data, origin, now + 0.01)
        if check.done:
            break
        when = check.next_timer()
        assert when is not None
        now = when
        check.handle_timer(now)
    assert check.done and now <= NetcheckConfig().timeout
    return Observations(check.results(), INSIDE[Sock.MAPPING], {4: INSIDE[Sock.MAPPING].ip})


@pytest.mark.parametrize(
    ("mapping", "filtering", "nat", "behaviour"),
    [
        ("eim", "apdf", NatKind.CONE, FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT),
        ("eim", "adf", NatKind.CONE, FilteringBehaviour.NOT_PORT_DEPENDENT),
        ("eim", "eif", NatKind.CONE, FilteringBehaviour.NOT_PORT_DEPENDENT),
        ("apdm", "apdf", NatKind.SYMMETRIC, FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT),
        ("none", "eif", NatKind.NONE, FilteringBehaviour.NOT_PORT_DEPENDENT),
        ("none", "apdf", NatKind.NONE, FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT),
    ],
)
def test_the_probe_through_each_nat_kind(
    mapping: str, filtering: str, nat: NatKind, behaviour: FilteringBehaviour
) -> None:
    report = classify(pump(Nat(mapping, filtering)), TARGET)
    assert report.reachable and report.nat is nat and report.filtering is behaviour
    assert report.hairpinning is True
    assert dict(report.not_run)[Probe.CHANGE_ADDRESS] == "error 420 no alternate address"
    if nat is not NatKind.NONE:
        assert report.mapped is not None and report.mapped.ip == PUBLIC


def test_an_address_dependent_mapping_is_found_with_a_second_registrar_address() -> None:
    one = classify(pump(Nat("adm", "apdf")), TARGET)
    assert one.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT  # one address: looks like it
    assert one.nat is NatKind.CONE
    target = Target(REGISTRAR, ALT, SECOND)
    two = classify(pump(Nat("adm", "apdf"), target), target)
    assert two.mapping is MappingBehaviour.ADDRESS_DEPENDENT and two.nat is NatKind.SYMMETRIC
    eim = classify(pump(Nat("eim", "apdf"), target), target)
    assert eim.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert not any("looks endpoint-independent" in n for n in eim.notes)


def test_no_hairpinning() -> None:
    report = classify(pump(Nat("eim", "apdf", hairpin=False)), TARGET)
    assert report.hairpinning is False


def test_a_registrar_without_an_alternate_port() -> None:
    obs = pump(Nat("eim", "apdf"), Target(REGISTRAR, None), has_alt=False)
    report = classify(obs, Target(REGISTRAR, None))
    assert report.mapping is MappingBehaviour.UNKNOWN
    assert report.filtering is FilteringBehaviour.UNKNOWN
    assert dict(report.not_run)[Probe.ALT_PORT] == "the registrar has no alternate port"
    assert dict(report.not_run)[Probe.CHANGE_PORT] == "error 420 no alternate port"


def test_requests_are_retransmitted_then_silent_at_the_deadline() -> None:
    check = Netcheck(NetcheckConfig(), TARGET, os.urandom, 0.0)
    first = check.datagrams_to_send(0.0)
    assert {t.destination for t in first} == {REGISTRAR, Endpoint(REGISTRAR.ip, ALT)}
    assert len(first) == 5  # binding, alt port, filtering base, change port, change address
    assert check.next_timer() == pytest.approx(0.3)
    assert check.datagrams_to_send(0.1) == []
    assert len(check.datagrams_to_send(0.3)) == 5
    assert len(check.datagrams_to_send(0.8)) == 5
    assert check.datagrams_to_send(1.0) == [] and check.next_timer() == pytest.approx(1.5)
    check.handle_timer(1.5)
    assert check.done and check.next_timer() is None
    results = check.results()
    assert results[Probe.BINDING].outcome is Outcome.SILENT
    assert results[Probe.HAIRPIN].outcome is Outcome.NOT_RUN


def test_strays_and_garbage_are_ignored() -> None:
    check = Netcheck(NetcheckConfig(), TARGET, os.urandom, 0.0)
    sent = check.datagrams_to_send(0.0)
    request = stun.decode(sent[0].data)
    answer = stun.binding_success(request, Endpoint.parse("203.0.113.5:1"))
    check.receive(Sock.MAPPING, answer, Endpoint.parse("192.0.2.9:3478"), 0.01)  # wrong source
    check.receive(Sock.FILTERING, answer, REGISTRAR, 0.01)  # wrong socket
    check.receive(Sock.MAPPING, b"\x00" * 7, REGISTRAR, 0.01)
    check.receive(Sock.MAPPING, answer[:-1], REGISTRAR, 0.01)
    assert check.results()[Probe.BINDING].outcome is Outcome.SILENT  # still pending
    check.receive(Sock.MAPPING, answer, REGISTRAR, 0.01)
    assert check.results()[Probe.BINDING].mapped == Endpoint.parse("203.0.113.5:1")


@given(st.binary(max_size=200))
def test_the_probe_takes_any_datagram(data: bytes) -> None:
    check = Netcheck(NetcheckConfig(), TARGET, os.urandom, 0.0)
    check.datagrams_to_send(0.0)
    for sock in Sock:
        check.receive(sock, data, REGISTRAR, 0.01)
    check.handle_timer(2.0)
    assert check.done


# -- the registrar's side: CHANGE-REQUEST -----------------------------------------------------


def change_request(flags: int, fingerprint: bool = True, tid: bytes = b"t" * 12) -> bytes:
    attrs = ((stun.ATTR_CHANGE_REQUEST, stun.pack_change_request(flags)),)
    return stun.encode(stun.StunMessage(stun.BINDING_REQUEST, tid, attrs), fingerprint=fingerprint)


SRC = Endpoint.parse("203.0.113.5:40000")


def test_change_port_is_answered_from_the_other_port() -> None:
    data = change_request(stun.CHANGE_PORT)
    out = changerequest.answer(data, SRC, has_other_port=True)
    assert out is not None and out.other_port
    msg = stun.decode(out.data)
    assert msg.msg_type == stun.BINDING_SUCCESS and msg.transaction_id == b"t" * 12
    types = [t for t, _ in msg.attributes]
    assert types == [stun.ATTR_XOR_MAPPED_ADDRESS, stun.ATTR_MAPPED_ADDRESS]
    assert stun.unpack_xor_address(msg.attributes[0][1], msg.transaction_id) == SRC
    assert len(out.data) == 52 and len(data) == 36


def test_change_ip_and_a_missing_port_get_420_from_the_same_port() -> None:
    for flags, has_alt, reason in (
        (stun.CHANGE_IP, True, "no alternate address"),
        (stun.CHANGE_IP | stun.CHANGE_PORT, True, "no alternate address"),
        (stun.CHANGE_PORT, False, "no alternate port"),
    ):
        out = changerequest.answer(change_request(flags), SRC, has_other_port=has_alt)
        assert out is not None and not out.other_port
        msg = stun.decode(out.data)
        assert msg.msg_type == stun.BINDING_ERROR
        error = msg.get(stun.ATTR_ERROR_CODE)
        assert error is not None and stun.unpack_error(error) == (420, reason)


def test_what_change_request_leaves_to_the_ordinary_path() -> None:
    plain = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12))
    assert changerequest.answer(plain, SRC, has_other_port=True) is None
    assert changerequest.answer(change_request(0), SRC, has_other_port=True) is None
    assert changerequest.answer(b"junk" * 10, SRC, has_other_port=True) is None
    broken = bytearray(change_request(stun.CHANGE_PORT))
    broken[-1] ^= 1  # bad FINGERPRINT
    assert changerequest.answer(bytes(broken), SRC, has_other_port=True) is None
    sealed_like = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12, (
        (stun.ATTR_CHANGE_REQUEST, stun.pack_change_request(stun.CHANGE_PORT)),
        (stun.ATTR_WG_PUBLIC_KEY, bytes(32)),
    )))  # fmt: skip
    assert changerequest.answer(sealed_like, SRC, has_other_port=True) is None


@given(
    st.sampled_from([stun.CHANGE_PORT, stun.CHANGE_IP, stun.CHANGE_IP | stun.CHANGE_PORT]),
    st.booleans(),
    st.booleans(),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(1, 65535),
    st.binary(min_size=12, max_size=12),
)
def test_an_answer_is_never_more_than_twice_its_request(
    flags: int, fingerprint: bool, has_alt: bool, ip: object, port: int, tid: bytes
) -> None:
    data = change_request(flags, fingerprint, tid)
    out = changerequest.answer(data, Endpoint.of(ip, port), has_other_port=has_alt)  # type: ignore[arg-type]
    assert out is not None and out.data  # every such request gets its answer
    assert len(out.data) <= 2 * len(data)
    stun.decode(out.data)


def test_the_registry_counts_change_requests() -> None:
    reg, _ = registry()
    out = reg.answer_change_request(change_request(stun.CHANGE_PORT), SRC, has_other_port=True)
    assert out is not None and out.other_port
    assert reg.answer_change_request(b"\x00" * 20, SRC, has_other_port=True) is None
    assert reg.counters["change_request"] == 1 and reg.counters["datagrams"] == 1


def test_change_request_codec() -> None:
    assert stun.pack_change_request(stun.CHANGE_PORT) == b"\x00\x00\x00\x02"
    assert stun.unpack_change_request(b"\x00\x00\x00\x06") == stun.CHANGE_IP | stun.CHANGE_PORT
    assert stun.unpack_change_request(b"\xff\xff\xff\xff") == stun.CHANGE_IP | stun.CHANGE_PORT
    with pytest.raises(stun.DecodeError, match=r"^bad CHANGE-REQUEST length$"):
        stun.unpack_change_request(b"\x00")
    with pytest.raises(stun.LocalProtocolError):
        stun.pack_change_request(0x10)
    assert stun.attribute_name(stun.ATTR_CHANGE_REQUEST) == "CHANGE-REQUEST"


def test_no_nat_with_filtering_untested() -> None:
    obs = observed(BINDING=ok("10.0.0.2:5000"), ALT_PORT=SILENT, CHANGE_PORT=REFUSED_420)
    report = classify(obs, TARGET)
    assert report.nat is NatKind.NONE and report.mapping is MappingBehaviour.UNKNOWN
    assert report.filtering is FilteringBehaviour.UNKNOWN
    assert report.verdict.startswith("no NAT (filtering not tested")


def test_a_second_address_that_does_not_answer_is_noted() -> None:
    report = classify(observed(ALT_ADDRESS=SILENT), Target(REGISTRAR, ALT, SECOND))
    assert report.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert "mapping: the second registrar address did not answer" in report.notes


@pytest.mark.parametrize(
    ("filtering", "open_port"), [("apdf", False), ("adf", True), ("eif", True)]
)
def test_a_chosen_port_is_tested_for_unsolicited_udp(filtering: str, open_port: bool) -> None:
    """With ``--port`` (test_port) the mapping socket asks for an answer from the alternate
    port before it ever sends there: only a port that takes unsolicited UDP (a port forward,
    endpoint-independent filtering) gets it, and the verdict says what that means."""
    obs = pump(Nat("eim", filtering), config=NetcheckConfig(test_port=True))
    report = classify(obs, TARGET)
    assert report.open_port is open_port, obs.results[Probe.OPEN_PORT]
    assert report.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT  # still measured
    assert ("takes UDP from ports it never sent to" in report.verdict) is open_port, report.verdict
    plain = classify(pump(Nat("eim", filtering)), TARGET)
    assert plain.open_port is None and Probe.OPEN_PORT not in dict(plain.not_run)


def test_an_open_port_answer_after_the_alternate_port_was_probed_does_not_count() -> None:
    reg, _ = registry()
    check = Netcheck(NetcheckConfig(test_port=True), TARGET, os.urandom, 0.0)
    first = check.datagrams_to_send(0.0)
    opened = [t for t in first if t.sock is Sock.MAPPING and t.destination == REGISTRAR]
    assert len(opened) == 2 and not any(t.destination.port == ALT for t in first)
    check.handle_timer(0.35)
    later = check.datagrams_to_send(0.35)  # the alternate-port mapping test goes out now
    assert any(t.destination.port == ALT for t in later)
    src = Endpoint(PUBLIC, 40000)
    answers = [reg.answer_change_request(t.data, src, has_other_port=True) for t in opened]
    changed = [a for a in answers if a is not None and a.other_port]
    assert len(changed) == 1
    check.receive(Sock.MAPPING, changed[0].data, Endpoint(REGISTRAR.ip, ALT), 0.4)
    result = check.results()[Probe.OPEN_PORT]
    assert result.outcome is Outcome.SILENT  # silent once the alternate port was probed
