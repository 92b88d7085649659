"""Two hosts behind one NAT with the same WireGuard port (wgmesh.proto.clash), alone and as
the Planner reads it from the records."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wgmesh.proto.clash import ClashIndex, Seen, explain
from wgmesh.proto.device import DeviceState
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import CandidateKind
from wgmesh.proto.punch import Hint, PeerRecord, Planner, PunchConfig

A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))
NAT = "198.51.100.2"


def record(key: bytes, name: str, public: str, lan: str) -> PeerRecord:
    return PeerRecord(
        key,
        (
            Hint(Endpoint.parse(public), CandidateKind.PUBLIC, 0),
            Hint(Endpoint.parse(lan), CandidateKind.LAN, 10),
        ),
        name=name,
    )


def test_a_clash_seen_from_outside_is_named_and_wants_the_relay() -> None:
    p = Planner(PunchConfig(), own_key=B)
    p.set_our_mapping((Endpoint.parse("203.0.113.50:51820"),), p.our_nat)
    p.set_record(record(A, "lab-a", f"{NAT}:51820", "10.0.1.2:51820"))
    p.set_record(record(C, "lab-c", f"{NAT}:40123", "10.0.1.3:51820"))
    p.plan(DeviceState("wg0", bytes(32), 51820, ()), 1000.0)
    text = p.clash_reason(C)
    assert "lab-c and lab-a share NAT 198.51.100.2 and WireGuard port 51820" in text
    assert "another ListenPort" in text
    assert p.clash_reason(B) == ""


def test_a_clash_with_us_is_no_reason() -> None:
    p = Planner(PunchConfig(), own_key=A)  # we are lab-a, behind the same NAT as lab-c
    p.set_our_mapping((Endpoint.parse(f"{NAT}:51820"),), p.our_nat)
    p.set_record(record(C, "lab-c", f"{NAT}:40123", "10.0.1.3:51820"))
    p.plan(DeviceState("wg0", bytes(32), 51820, ()), 1000.0)
    assert p.clash_reason(C) == ""


def test_another_port_is_no_clash() -> None:
    p = Planner(PunchConfig(), own_key=B)
    p.set_record(record(A, "lab-a", f"{NAT}:51820", "10.0.1.2:51820"))
    p.set_record(record(C, "lab-c", f"{NAT}:51821", "10.0.1.3:51821"))
    assert p.clash_reason(C) == "" and p.clash_reason(A) == ""


hosts = st.dictionaries(
    st.sampled_from([bytes([i]) * 32 for i in range(6)]),
    st.builds(
        Seen,
        st.just(""),
        st.lists(
            st.builds(
                Endpoint.parse, st.sampled_from(["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3"])
            ),
            max_size=2,
        ).map(tuple),
        st.frozensets(st.sampled_from([51820, 51821]), max_size=2),
    ),
    max_size=6,
)


@given(hosts)
def test_the_index_finds_what_a_brute_force_finds(h: dict[bytes, Seen]) -> None:
    index = ClashIndex(h)
    for key, me in h.items():
        want = {
            other
            for other, seen in h.items()
            if other != key
            and {e.ip for e in me.public} & {e.ip for e in seen.public}
            and me.local_ports & seen.local_ports
        }
        assert {o for o, _, _ in index.clashes_with(key)} == want
        assert bool(explain(key, index)) == bool(want)
