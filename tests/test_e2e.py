"""End to end: real NATs (nftables in network namespaces), real wireguard-go, the real
`wgmesh registrar` and `wgmesh daemon` processes, and pings across the tunnel.

Each peer is configured only with the other's key and allowed IPs (no endpoint); the daemons
must find each other through the registrar and punch through both NATs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wgmesh.lab.mesh import PYTHON, Mesh, MeshPeer
from wgmesh.lab.topology import Lab, RouterKind
from wgmesh.proto.keys import encode_key

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

FAST = ("--probe-interval", "5")


@contextmanager
def mesh_of(
    kind_a: RouterKind | None, kind_b: RouterKind | None, *, registrar: tuple[str, ...] = ()
) -> Iterator[tuple[Mesh, MeshPeer, MeshPeer]]:
    """A registrar (started with the options ``registrar``) and two linked peers behind NATs
    of the given kinds (None: a public host)."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        hosts = []
        for name, kind in (("a", kind_a), ("b", kind_b)):
            if kind is None or kind == RouterKind.NONE:
                hosts.append(lab.add_peer(name, None))
            else:
                nat = lab.add_nat(
                    f"n{name}",
                    kind,
                    forward_port=51820 if kind == RouterKind.PORT_FORWARD else None,
                )
                hosts.append(lab.add_peer(name, nat))
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("a", hosts[0])
        b = mesh.add_peer("b", hosts[1])
        mesh.link(a, b)
        mesh.start_registrar(*registrar)
        try:
            yield mesh, a, b
        except BaseException:
            print(mesh.logs())
            raise


def connect(
    mesh: Mesh, a: MeshPeer, b: MeshPeer, *extra: str, timeout: float = 30.0, fast: bool = True
) -> None:
    options = (*FAST, *extra) if fast else extra
    mesh.start_daemon(a, *options)
    time.sleep(0.5)
    mesh.start_daemon(b, *options)
    assert mesh.wait_ping(a, b, timeout), "no ping across the tunnel"
    assert mesh.wait_ping(b, a, 5.0)


def assert_direct(mesh: Mesh, a: MeshPeer, b: MeshPeer) -> None:
    row = mesh.peer_row(a, b)
    assert row["path"] == "direct", row
    assert row["source"] in ("registrar", "roaming"), row
    # the endpoint in use is b's public address, never the registrar's
    assert row["endpoint"].split(":")[0] == str(b.host.public_ip), row


@pytest.mark.parametrize(
    ("kind_a", "kind_b"),
    [
        (RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED),
        (None, RouterKind.PORT_RESTRICTED),
        (RouterKind.PORT_FORWARD, RouterKind.SYMMETRIC),
        (RouterKind.OPEN, RouterKind.OPEN),
    ],
    ids=["restricted-x-restricted", "public-x-restricted", "forward-x-symmetric", "open-x-open"],
)
def test_direct_connection(kind_a: RouterKind | None, kind_b: RouterKind) -> None:
    with mesh_of(kind_a, kind_b) as (mesh, a, b):
        connect(mesh, a, b)
        assert_direct(mesh, a, b)
        assert_direct(mesh, b, a)


@pytest.mark.parametrize(
    ("kind_a", "kind_b", "words"),
    [
        (RouterKind.PORT_RESTRICTED, RouterKind.SYMMETRIC, "symmetric NAT"),
        (RouterKind.SYMMETRIC, RouterKind.SYMMETRIC, "both peers are behind symmetric NATs"),
    ],
    ids=["restricted-x-symmetric", "symmetric-x-symmetric"],
)
def test_no_direct_path_is_explained(kind_a: RouterKind, kind_b: RouterKind, words: str) -> None:
    with mesh_of(kind_a, kind_b) as (mesh, a, b):
        mesh.start_daemon(a, *FAST)
        mesh.start_daemon(b, *FAST)
        deadline = time.monotonic() + 30
        row: dict[str, object] = {}
        while time.monotonic() < deadline:
            row = mesh.peer_row(a, b)
            if words in str(row["reason"]):
                break
            time.sleep(0.5)
        assert row["path"] == "none", row
        assert words in str(row["reason"]), row
        assert row["nat"] == kind_b.classified, row  # the registrar classified b's router
        assert not a.host.ping(b.tunnel_ip, count=1, timeout=1.0)


def test_nat_rebinding_reconnects_on_its_own() -> None:
    """Default settings (a probe every 20 s): the tunnel must come back within seconds because
    a's daemon sees its path stall and probes the registrar at once (Planner.watch_traffic)."""
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED) as (mesh, a, b):
        connect(mesh, a, b, fast=False)
        before = mesh.peer_row(b, a)["endpoint"]
        nat_a = a.host.nat
        assert nat_a is not None
        pinger = b.host.spawn("ping", "-n", "-q", "-i", "0.2", a.tunnel_ip)  # a user's traffic
        try:
            time.sleep(1.5)
            nat_a.rebind()
            assert mesh.wait_ping(b, a, 6.0), "no ping across the tunnel 6 s after the rebinding"
        finally:
            pinger.terminate()
            pinger.wait(5)
        assert mesh.peer_row(b, a)["endpoint"] != before, "the peer never learned the new mapping"
        assert mesh.wait_ping(a, b, 5.0)


def test_registrar_restart_keeps_tunnels_and_records() -> None:
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED) as (mesh, a, b):
        connect(mesh, a, b)
        mesh.stop_registrar(kill=True)
        assert a.host.ping(b.tunnel_ip, count=3, timeout=1.0), "tunnel dropped with the registrar"
        mesh.start_registrar()
        from wgmesh.proto.keys import decode_key, key_label

        name = f"{key_label(decode_key(b.wg.public_key))}._wireguard._udp.mesh.test"
        out = a.host.run("dig", "@" + mesh.registrar_ip, "+short", name, "SRV", check=False)
        assert out.stdout.split(), "records did not come back after the restart"
        assert mesh.wait_ping(a, b, 5.0)


def test_peer_that_goes_away_is_withdrawn() -> None:
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED) as (mesh, a, b):
        mesh.stop_registrar()
        mesh.start_registrar("--expiry", "6")
        connect(mesh, a, b)
        mesh.stop_daemon(b)
        query = ("dig", "@" + mesh.registrar_ip, "+short", "_wireguard._udp.mesh.test", "PTR")
        assert len(a.host.run(*query).stdout.split()) == 2
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(a.host.run(*query).stdout.split()) == 1:
                break
            time.sleep(0.5)
        assert len(a.host.run(*query).stdout.split()) == 1, "b's records were not withdrawn"


def test_mesh_mode_adds_peers_from_the_zone() -> None:
    """Neither peer knows the other; the registrar's admission list says who is in the mesh."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        mesh = Mesh(lab, reg, authorized=True)
        a = mesh.add_peer("a", lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED)))
        b = mesh.add_peer("b", lab.add_peer("b", lab.add_nat("nb", RouterKind.PORT_RESTRICTED)))
        mesh.start_registrar()
        try:
            connect(mesh, a, b, "--mode", "mesh")
            row = mesh.peer_row(a, b)
            assert row["allowed_ips"] == [f"{b.tunnel_ip}/32"] and row["path"] == "direct"
        except BaseException:
            print(mesh.logs())
            raise


def test_mesh_mode_ignores_forged_dns() -> None:
    """An attacker who answers a's DNS (on path, or a poisoned resolver) lists its own key in
    the browse with a TXT claiming b's tunnel address and a subnet, and forges b's A record.
    a's daemon adds no peer the registrar did not vouch for over the sealed channel, and b's
    allowed IPs stay b's."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        mesh = Mesh(lab, reg, authorized=True)
        # a has a public address: b, whose DNS is honest, can reach it although a's endpoint
        # for b is the forged one (a behind a filtering NAT would only lose the tunnel: DoS)
        a = mesh.add_peer("a", lab.add_peer("a", None))
        b = mesh.add_peer("b", lab.add_peer("b", lab.add_nat("nb", RouterKind.PORT_RESTRICTED)))
        mesh.start_registrar()
        attacker = encode_key(os.urandom(32))
        forger_log = Path(lab.workdir) / "forgedns.log"
        reg.spawn(
            PYTHON, str(Path(__file__).parent / "forgedns.py"),
            "--listen", f"{mesh.registrar_ip}:5353", "--upstream", f"{mesh.registrar_ip}:53",
            "--zone", "mesh.test.", "--attacker-key", attacker,
            "--claim", f"{b.tunnel_ip}/32,10.99.0.0/16", "--forged-a", "192.0.2.99",
            log_path=forger_log,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while "forging" not in forger_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            mesh.start_daemon(b, *FAST, "--mode", "mesh")
            mesh.start_daemon(a, *FAST, "--mode", "mesh", "--dns", f"{mesh.registrar_ip}:5353")
            assert mesh.wait_ping(b, a, 30.0), "b never reached a"  # b's DNS is honest
            time.sleep(3.0)  # a's daemon has re-read the (forged) zone meanwhile
            rows = {r["public_key"]: r for r in mesh.peers_json(a)["peers"]}
            assert set(rows) == {b.wg.public_key}, rows  # the attacker's key was not added
            assert rows[b.wg.public_key]["allowed_ips"] == [f"{b.tunnel_ip}/32"], rows
            assert mesh.wait_ping(a, b, 10.0)
        except BaseException:
            print(mesh.logs())
            print(forger_log.read_text())
            raise


def test_peers_without_a_daemon_reads_interface_and_zone() -> None:
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.PORT_RESTRICTED) as (mesh, a, b):
        connect(mesh, a, b)
        mesh.stop_daemon(a)
        out = a.host.run(
            PYTHON, "-m", "wgmesh", "peers", "-i", a.wg.name, "--json",
            "--status-socket", "/nonexistent.sock", "--zone", "mesh.test",
            "--dns", mesh.registrar_ip,
        )  # fmt: skip
        state = json.loads(out.stdout)
        assert state["daemon"] is False
        (row,) = state["peers"]
        assert row["public_key"] == b.wg.public_key and row["name"] == "b"
        assert row["path"] == "direct" and row["source"] == "registrar"
        table = a.host.run(PYTHON, "-m", "wgmesh", "peers", "-i", a.wg.name,
                           "--status-socket", "/nonexistent.sock").stdout  # fmt: skip
        assert "no daemon" in table and b.wg.public_key[:8] in table


@pytest.mark.parametrize("mdns", [True, False], ids=["mdns", "no-mdns"])
def test_same_nat_peers_connect_over_lan_and_a_third_reaches_both(mdns: bool) -> None:
    """No hairpin on the shared NAT: a and b must use the LAN candidates the registrar
    publishes from their sealed registrations; c, behind another NAT, uses public ones."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("a", lab.add_peer("a", home))
        b = mesh.add_peer("b", lab.add_peer("b", home), listen_port=51821)
        c = mesh.add_peer("c", lab.add_peer("c", lab.add_nat("away", RouterKind.PORT_RESTRICTED)))
        for x, y in ((a, b), (a, c), (b, c)):
            mesh.link(x, y)
        mesh.start_registrar()
        try:
            for p in (a, b, c):
                mesh.start_daemon(p, *FAST, *(() if mdns else ("--no-mdns",)))
            for x, y in ((a, b), (b, a), (a, c), (c, a), (b, c), (c, b)):
                assert mesh.wait_ping(x, y, 30.0), f"{x.name} cannot reach {y.name}"
            ab = mesh.peer_row(a, b)
            assert ab["path"] == "direct" and ab["endpoint"] == f"{b.host.address}:51821", ab
            ac = mesh.peer_row(a, c)
            assert ac["endpoint"].split(":")[0] == str(c.host.public_ip), ac
            if mdns:  # a and b also found each other over mDNS; c, on another LAN, did not
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and "mDNS: peer" not in _log(a):
                    time.sleep(0.2)
                assert f"mDNS: peer {b.wg.public_key[:8]}" in _log(a)
                assert "mDNS: peer" not in _log(c)
            else:
                assert "mDNS" not in _log(a)
        except BaseException:
            print(mesh.logs())
            raise


def _log(p: MeshPeer) -> str:
    assert p.log is not None
    return p.log.read_text()


BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={path}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_type="method_call"/>
<allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
"""
AVAHI_CONF = "[server]\nuse-ipv6=no\nallow-interfaces=eth0\n[publish]\npublish-workstation=no\n"


def test_avahi_browse_sees_the_daemon_on_its_lan(tmp_path: Path) -> None:
    """Debian's avahi (on another host of the LAN, with a private D-Bus) lists our service."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("a", lab.add_peer("a", home))
        observer = lab.add_peer("obs", home)
        mesh.start_registrar()
        mesh.start_daemon(a)
        bus = tmp_path / "bus"
        (tmp_path / "bus.conf").write_text(BUS_CONF.format(path=bus))
        (tmp_path / "avahi.conf").write_text(AVAHI_CONF)
        env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus}"}
        observer.spawn("dbus-daemon", f"--config-file={tmp_path / 'bus.conf'}", "--nofork",
                       "--nopidfile", env=env)  # fmt: skip
        deadline = time.monotonic() + 10
        while not bus.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        observer.spawn("avahi-daemon", "--no-drop-root", "--no-chroot", "--no-rlimits",
                       "-f", str(tmp_path / "avahi.conf"), env=env)  # fmt: skip
        out = ""
        while time.monotonic() < deadline + 10:
            r = observer.run(
                "env", f"DBUS_SYSTEM_BUS_ADDRESS=unix:path={bus}",
                "avahi-browse", "-rtp", "_wireguard._udp", check=False, timeout=20,
            )  # fmt: skip
            out = r.stdout
            if f"pub={a.wg.public_key}" in out:
                break
            time.sleep(0.5)
        assert f'"pub={a.wg.public_key}"' in out, out
        assert f";{a.host.address};51820;" in out, out
        assert a.wg.name not in out  # never announced on the WireGuard interface
