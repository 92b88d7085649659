"""Inputs bench/fuzz.py found that broke a parser's contract, kept as regression tests.

Each was an exception other than the target's allowed ones escaping (or a broken invariant);
the hex is the datagram as the fuzzer built it, or the smallest one that does the same.
"""

from __future__ import annotations

import ipaddress

import dns.message
import dns.name
import pytest

from wgmesh.errors import RemoteProtocolError
from wgmesh.proto.device import DeviceState, PeerState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.punch import Planner, PunchConfig
from wgmesh.proto.records import instance_name, peer_record, read_srv_answer

KEY = bytes(range(32))
NAME = instance_name(KEY, dns.name.from_text("mesh.test."))
LABEL = NAME.labels[0]
QUESTION = (
    bytes((len(LABEL),))
    + LABEL
    + b"\x0a_wireguard\x04_udp\x04mesh\x04test\x00"
    + b"\x00\x21\x00\x01"
)
SRV_IN = b"\xc0\x0c\x00\x21\x00\x01\x00\x00\x00\x05\x00\x08\x00\x00\x00\x00\xca\x6c\xc0\x0c"
"""SRV 0 0 51820 <the instance name itself> (the public candidate), class IN."""


def answer(*records: bytes, additional: int = 0) -> dns.message.Message:
    """A response to ``NAME SRV`` with ``records`` (wire form) in answer, then additional."""
    header = b"\x00\x01\x85\x00\x00\x01" + (len(records) - additional).to_bytes(2, "big")
    header += b"\x00\x00" + additional.to_bytes(2, "big")
    return dns.message.from_wire(header + QUESTION + b"".join(records))


def read(m: dns.message.Message) -> None:
    """What the daemon does with an answer: only RemoteProtocolError may come out, and every
    hint must be a real address."""
    try:
        srv = read_srv_answer(NAME, m)
    except RemoteProtocolError:
        return
    if srv is None:
        return
    for hint in peer_record(KEY, srv).hints:
        assert isinstance(hint.endpoint.ip, ipaddress.IPv4Address | ipaddress.IPv6Address)


@pytest.mark.parametrize("rdclass", [3, 254, 0x3001])
def test_an_srv_record_of_another_class_is_no_crash(rdclass: int) -> None:
    """dnspython parses SRV only in class IN; in any other it is GenericRdata (no ``target``),
    and read_srv_answer raised AttributeError (records.py, building Srv(rr.target, ...)), which
    ends the daemon's resolve loop and so the daemon (service.py re-raises a loop's error)."""
    srv = SRV_IN[:4] + rdclass.to_bytes(2, "big") + SRV_IN[6:]
    read(answer(srv))


def test_an_aaaa_record_of_another_class_is_no_crash() -> None:
    """An AAAA (IN-only in dnspython) of class CH at the target: GenericRdata has no
    ``address`` (records._addresses raised AttributeError)."""
    aaaa = b"\xc0\x0c\x00\x1c\x00\x03\x00\x00\x00\x05\x00\x10" + bytes(15) + b"\x01"
    read(answer(SRV_IN, aaaa, additional=1))


def test_a_chaos_a_record_gives_no_address() -> None:
    """A CHAOS-class A record (RFC 1035 3.4.1: a domain and a 16-bit address) parses, and its
    ``address`` is an int: peer_record built Endpoint(ip=5, ...), and the Planner then raised
    AttributeError ('int' object has no attribute 'version', punch.py _order)."""
    chaos_a = b"\xc0\x0c\x00\x01\x00\x03\x00\x00\x00\x05\x00\x03\x00\x00\x05"
    m = answer(SRV_IN, chaos_a, additional=1)
    read(m)
    srv = read_srv_answer(NAME, m)
    assert srv is not None
    planner = Planner(PunchConfig(), bytes(32))
    planner.set_our_mapping((Endpoint.parse("198.51.100.1:1"),), NatKind.CONE)
    planner.set_record(peer_record(KEY, srv))
    device = DeviceState("wg0", bytes(32), 51820, (PeerState(KEY, None, (), 0.0, 0, 0, 0),))
    planner.plan(device, 1000.0)
