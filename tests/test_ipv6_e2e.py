"""End to end over IPv6: the lab's IPv6 internet (2001:db8::/32) behind home routers that route
IPv6 without NAT66 but drop unsolicited inbound (a stateful firewall, as CPEs do), a dual-stack
registrar, real wireguard-go, pings through the tunnel.

- Two dual-stack peers behind IPv4 *symmetric* NATs, which over IPv4 would need the relay,
  connect directly over IPv6: both punch their firewalls at once.
- Two IPv6-only peers connect (the registrar reached over IPv6 only).
- A dual-stack peer and an IPv4-only peer connect over IPv4.
- ``dig AAAA`` at the registrar returns a peer's observed IPv6 address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.test_e2e import FAST
from wgmesh.lab.mesh import Mesh, MeshPeer
from wgmesh.lab.topology import IPv6Mode, Lab, RouterKind
from wgmesh.proto.keys import decode_key, key_label

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


@contextmanager
def dual_mesh(
    kinds: tuple[RouterKind, RouterKind], ipv6: tuple[IPv6Mode, IPv6Mode]
) -> Iterator[tuple[Mesh, MeshPeer, MeshPeer]]:
    """A dual-stack registrar and two linked peers, each behind its own router of ``kinds``
    (with IPv6 routing and firewall), with ``ipv6`` as Lab.add_peer's ipv6= for each."""
    with Lab() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        mesh = Mesh(lab, reg)
        peers = []
        for name, kind, v6 in zip(("a", "b"), kinds, ipv6, strict=True):
            nat = lab.add_nat(f"n{name}", kind, ipv6=True)
            peers.append(mesh.add_peer(name, lab.add_peer(name, nat, ipv6=v6)))
        a, b = peers
        mesh.link(a, b)
        mesh.start_registrar("--relay-ports", "40000-40099")
        try:
            yield mesh, a, b
        except BaseException:
            print(mesh.logs())
            raise


def connect(mesh: Mesh, a: MeshPeer, b: MeshPeer, timeout: float = 30.0) -> None:
    mesh.start_daemon(a, *FAST)
    mesh.start_daemon(b, *FAST)
    assert mesh.wait_ping(a, b, timeout), "no ping across the tunnel"
    assert mesh.wait_ping(b, a, 5.0)


def endpoint(mesh: Mesh, a: MeshPeer, b: MeshPeer) -> str:
    out = a.host.run("wg", "show", a.wg.name, "endpoints").stdout
    for line in out.splitlines():
        key, _, ep = line.partition("\t")
        if key == b.wg.public_key:
            return ep
    raise AssertionError(f"{b.name} not on {a.name}'s interface: {out}")


def wait_endpoint(mesh: Mesh, a: MeshPeer, b: MeshPeer, want: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    ep = endpoint(mesh, a, b)
    while time.monotonic() < deadline and not ep.startswith(want):
        time.sleep(0.2)
        ep = endpoint(mesh, a, b)
    return ep


def test_dual_stack_peers_behind_symmetric_nats_go_direct_over_ipv6() -> None:
    with dual_mesh((RouterKind.SYMMETRIC, RouterKind.SYMMETRIC), (True, True)) as (mesh, a, b):
        connect(mesh, a, b)
        for x, y in ((a, b), (b, a)):
            want = f"[{y.host.address6}]:"
            ep = wait_endpoint(mesh, x, y, want, 10.0)
            assert ep.startswith(want), (x.name, ep)  # direct, over IPv6: not the relay
            row = mesh.peer_row(x, y)
            assert row["path"] == "direct" and row["family"] == 6, row
        for _ in range(5):
            assert a.host.ping(b.tunnel_ip, count=1, timeout=1.0)


def test_ipv6_only_peers_connect_through_their_firewalls() -> None:
    with dual_mesh((RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED), ("only", "only")) as (
        mesh,
        a,
        b,
    ):
        assert a.host.run("ip", "-4", "addr", "show", "dev", "eth0").stdout.strip() == ""
        assert "default" not in a.host.run("ip", "-4", "route", "show").stdout
        connect(mesh, a, b)
        for x, y in ((a, b), (b, a)):
            assert endpoint(mesh, x, y).startswith(f"[{y.host.address6}]:"), x.name
        row = mesh.peer_row(a, b)
        assert row["path"] == "direct" and row["family"] == 6, row


def test_a_dual_stack_and_an_ipv4_only_peer_use_ipv4() -> None:
    with dual_mesh((RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED), (True, False)) as (
        mesh,
        a,
        b,
    ):
        connect(mesh, a, b)
        for x, y in ((a, b), (b, a)):
            ep = endpoint(mesh, x, y)
            assert ep.startswith(f"{y.host.public_ip}:"), (x.name, ep)
        assert mesh.peer_row(a, b)["family"] == 4


def test_a_registrar_reached_only_over_ipv6_and_its_aaaa_records() -> None:
    """Dual-stack peers given only the registrar's IPv6 address register over IPv6 only: the
    zone's AAAA for each is its observed IPv6 address (dig, as an operator would ask)."""
    with dual_mesh((RouterKind.SYMMETRIC, RouterKind.PORT_RESTRICTED), (True, True)) as (
        mesh,
        a,
        b,
    ):
        mesh.start_daemon(a, *FAST, registrar_families=(6,))
        mesh.start_daemon(b, *FAST, registrar_families=(6,))
        assert mesh.wait_ping(a, b, 30.0) and mesh.wait_ping(b, a, 5.0)
        for p in (a, b):
            name = f"{key_label(decode_key(p.wg.public_key))}._wireguard._udp.mesh.test"
            answer = ""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                answer = a.host.run(
                    "dig", "+short", "+time=1", "+tries=1", f"@{mesh.registrar_ip6}", name, "AAAA"
                ).stdout.strip()
                if answer:
                    break
                time.sleep(0.3)
            assert answer == str(p.host.address6), (p.name, answer)
            v4 = a.host.run("dig", "+short", "+time=1", "+tries=1", f"@{mesh.registrar_ip6}",
                            name, "A").stdout.strip()  # fmt: skip
            assert v4 == "", (p.name, v4)  # never registered over IPv4
