"""End to end: ordinary NAT faults heal by themselves (real NATs, wireguard-go, the CLI only).

A router that loses its NAT state (a reboot, a timeout: ``conntrack -F``) keeps the peer's
public port but drops the far peer's packets until one goes out from behind it. The daemon on
the far side notices its path stalled, shakes hands again and asks the registrar to pass a
Repunch to the peer, whose handshake re-opens its NAT: pings flow again within 3 s, on either
side.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.test_e2e import FAST, connect, mesh_of
from wgmesh.lab.mesh import Mesh, MeshPeer
from wgmesh.lab.topology import Lab, RouterKind

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def outage_after(mesh: Mesh, a: MeshPeer, b: MeshPeer, fault: object, limit: float) -> float:
    """Ping b from a every 0.2 s, run ``fault``, and return the seconds from the fault to the
    first answered ping after it (``limit`` + 1 when none came within ``limit``)."""
    assert callable(fault)
    stop = threading.Event()
    answered: list[float] = []

    def pinger() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            if a.host.ping(b.tunnel_ip, count=1, timeout=0.5):
                answered.append(sent)
            time.sleep(max(0.0, 0.2 - (time.monotonic() - sent)))

    thread = threading.Thread(target=pinger, daemon=True)
    thread.start()
    try:
        time.sleep(3.0)  # traffic flows: the daemons see a busy path
        assert answered, "no pings before the fault"
        at = time.monotonic()
        fault()
        deadline = at + limit + 1.0
        while time.monotonic() < deadline:
            after = [t for t in answered if t > at + 0.05]
            if after:
                return after[0] - at
            time.sleep(0.05)
        return limit + 1.0
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.parametrize("side", ["a", "b"])
def test_a_nat_that_loses_its_state_heals_within_3_s(side: str) -> None:
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED) as (mesh, a, b):
        connect(mesh, a, b)
        # the hard direction: pings toward the side whose NAT forgets, from the other side
        far, near = (a, b) if side == "a" else (b, a)
        nat = far.host.nat
        assert nat is not None
        outage = outage_after(mesh, near, far, nat.flush_conntrack, 3.0)
        print(f"outage after NAT-{side} lost its state: {outage:.2f} s")
        assert outage <= 3.0, f"pings came back {outage:.1f} s after NAT-{side} lost its state"
        logs = mesh.logs()
        assert "re-punching" in logs, logs


def test_two_hosts_behind_one_nat_on_one_port_heal_and_are_named() -> None:
    """lab-a and lab-c behind one home NAT, both on WireGuard port 51820, lab-b behind another:
    after the home NAT loses its state, every pair carries pings again within 20 s (direct or
    through the relay), and lab-b's ``wgmesh peers`` names the clash."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("lab-a", lab.add_peer("a", home))
        c = mesh.add_peer("lab-c", lab.add_peer("c", home))
        b = mesh.add_peer(
            "lab-b", lab.add_peer("b", lab.add_nat("away", RouterKind.PORT_RESTRICTED))
        )
        pairs = ((a, b), (a, c), (b, c))
        for x, y in pairs:
            mesh.link(x, y)
        mesh.start_registrar("--relay-ports", "40000-40099")
        try:
            for p in (a, b, c):
                mesh.start_daemon(p, *FAST)
            for x, y in pairs:
                assert mesh.wait_ping(x, y, 40.0), f"{x.name} cannot reach {y.name}"
            home.flush_conntrack()
            deadline = time.monotonic() + 20.0
            for x, y in pairs:
                left = max(0.5, deadline - time.monotonic())
                assert mesh.wait_ping(x, y, left), f"{x.name} -> {y.name} not back in 20 s"
                assert mesh.wait_ping(y, x, max(0.5, deadline - time.monotonic()))
            rows = [mesh.peer_row(b, a), mesh.peer_row(b, c)]
            assert any("share NAT" in r["reason"] for r in rows), rows
        except BaseException:
            print(mesh.logs())
            raise


def test_a_working_endpoint_is_not_changed_by_candidate_trials() -> None:
    """Once a direct path carries pings, 30 s of pings with the periodic probe rounds and
    zone re-reads (every 5 s here) change no endpoint on either side: the LAN candidates of a
    peer behind another NAT, unreachable from here, are never tried while the path works."""
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED) as (mesh, a, b):
        connect(mesh, a, b)
        time.sleep(2.0)  # let the connection's own changes finish

        def changes(p: MeshPeer) -> int:
            assert p.log is not None
            return p.log.read_text().count(": endpoint ")

        before = changes(a), changes(b)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            assert a.host.ping(b.tunnel_ip, count=1, timeout=1.0)
            time.sleep(0.5)
        assert (changes(a), changes(b)) == before, mesh.logs()
