"""End to end: a LAN behind a mesh member, reached through the tunnel with ``--routes``.

The admission file gives lab-b the subnet of its home LAN (10.2.0.0/24) besides its tunnel
address; lab-a's daemon (mesh mode, ``--routes``) adds it to lab-b's allowed IPs and routes it
on the WireGuard interface, so a host on lab-b's LAN that runs nothing of ours answers lab-a's
pings (lab-b forwards, the LAN host routes the tunnel network back through lab-b, as a LAN's
router would). When lab-b is withdrawn (removed from the file, SIGHUP) the peer and the route
go; a route someone else added on the same interface stays.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.test_e2e import FAST
from wgmesh.lab.mesh import Mesh, MeshPeer
from wgmesh.lab.topology import Lab, RouterKind
from wgmesh.proto.routes import ROUTE_PROTO

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def routes(p: MeshPeer) -> str:
    return p.host.run("ip", "-4", "route", "show", "dev", p.wg.name).stdout


def wait(cond: object, timeout: float) -> bool:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_a_lan_behind_a_member_is_routed_and_unrouted() -> None:
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        mesh = Mesh(lab, reg, authorized=True)
        a = mesh.add_peer("lab-a", lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED)))
        nb = lab.add_nat("nb", RouterKind.PORT_RESTRICTED)
        b = mesh.add_peer("lab-b", lab.add_peer("b", nb))
        printer = lab.add_peer("printer", nb)  # on lab-b's LAN, no WireGuard, no wgmesh
        mesh.start_registrar()
        keys = mesh.workdir / "authorized_keys"

        def admit(*lines: str) -> None:
            seen = mesh.registrar_log.read_text().count("reloaded admission list")
            keys.write_text("".join(f"{line}\n" for line in lines))
            assert mesh.registrar is not None
            mesh.registrar.send_signal(signal.SIGHUP)
            assert wait(lambda: mesh.registrar_log.read_text().count("reloaded admission list")
                        > seen, 10), "no reload"  # fmt: skip

        try:
            admit(f"{a.wg.public_key} lab-a {a.tunnel_ip}/32",
                  f"{b.wg.public_key} lab-b {b.tunnel_ip}/32,10.2.0.0/24")  # fmt: skip
            # someone else's route on lab-a's interface: never touched
            a.host.run("ip", "route", "add", "192.0.2.128/25", "dev", a.wg.name)
            b.host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            printer.run("ip", "route", "add", "100.64.0.0/24", "via", str(b.host.address))
            for p in (a, b):
                mesh.start_daemon(p, *FAST, "--mode", "mesh", "--routes")
            assert mesh.wait_ping(a, b, 40.0), "no tunnel"
            assert wait(lambda: f"10.2.0.0/24 proto {ROUTE_PROTO}" in routes(a), 10), routes(a)
            assert mesh.peer_row(a, b)["allowed_ips"] == [f"{b.tunnel_ip}/32", "10.2.0.0/24"]
            assert wait(lambda: a.host.ping(str(printer.address), count=1, timeout=1.0), 10), (
                "the printer behind lab-b does not answer through the tunnel"
            )
            assert "10.1.0.0/24" not in routes(b)  # lab-a's LAN is not lab-a's to route
            admit(f"{a.wg.public_key} lab-a {a.tunnel_ip}/32")  # lab-b withdrawn
            assert wait(lambda: "10.2.0.0/24" not in routes(a), 20), routes(a)
            assert "192.0.2.128/25" in routes(a), routes(a)
            assert not a.host.ping(str(printer.address), count=1, timeout=1.0)
        except BaseException:
            print(mesh.logs())
            raise
