"""End to end through the relay: real NATs in network namespaces, real wireguard-go, the real
``wgmesh registrar --relay-ports`` and ``wgmesh daemon`` processes, driven by the CLI only.

Pairs that cannot connect directly (a symmetric NAT against a filtering one, or two symmetric
NATs) must ping each other through the registrar's relay, with the kernel path (nftables in
the registrar's namespace) and with the userspace one; ``wg show`` on both sides must name the
relay's address; a relayed pair must move to direct once the symmetric NAT becomes a
port-restricted one; with the kernel path, the tunnel must survive a ``kill -9`` of the
registrar; and a datagram sent to a relay port from an address that did not bind is dropped.
"""

from __future__ import annotations

import time

import pytest

from tests.test_e2e import FAST, mesh_of
from wgmesh.lab.mesh import PYTHON, Mesh, MeshPeer
from wgmesh.lab.topology import RouterKind

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

RELAY_PORTS = ("--relay-ports", "40000-40099")


def endpoint_of(peer: MeshPeer, other: MeshPeer) -> str:
    """The endpoint ``wg show`` lists for ``other`` on ``peer``'s interface."""
    out = peer.host.run("wg", "show", peer.wg.name, "endpoints").stdout
    for line in out.splitlines():
        key, _, endpoint = line.partition("\t")
        if key == other.wg.public_key:
            return endpoint.strip()
    raise AssertionError(f"{other.name} not on {peer.name}'s interface: {out}")


def on_relay(mesh: Mesh, peer: MeshPeer, other: MeshPeer) -> bool:
    host, _, port = endpoint_of(peer, other).rpartition(":")
    return host == mesh.registrar_ip and 40000 <= int(port or 0) <= 40099


def wait_for(cond: object, timeout: float, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


def relay_connect(mesh: Mesh, a: MeshPeer, b: MeshPeer) -> None:
    mesh.start_daemon(a, *FAST)
    mesh.start_daemon(b, *FAST)
    assert mesh.wait_ping(a, b, 40.0), "no ping through the relay"
    assert mesh.wait_ping(b, a, 5.0)
    wait_for(lambda: on_relay(mesh, a, b) and on_relay(mesh, b, a), 10, "relay endpoints")
    row = mesh.peer_row(a, b)
    assert row["path"] == "relay", row
    assert row["relay"] == endpoint_of(a, b), row
    # the reason names the NAT classes once b's classification reached a's record (a push
    # and a lookup after b's probe round; until then it says the direct candidates failed)
    wait_for(lambda: "symmetric" in mesh.peer_row(a, b)["reason"], 10, "the NAT reason")


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
@pytest.mark.parametrize(
    ("kind_a", "kind_b"),
    [
        (RouterKind.PORT_RESTRICTED, RouterKind.SYMMETRIC),
        (RouterKind.SYMMETRIC, RouterKind.SYMMETRIC),
    ],
    ids=["restricted-x-symmetric", "symmetric-x-symmetric"],
)
def test_pairs_without_a_direct_path_ping_through_the_relay(
    kind_a: RouterKind, kind_b: RouterKind, mode: str
) -> None:
    with mesh_of(kind_a, kind_b, registrar=(*RELAY_PORTS, "--relay-mode", mode)) as (m, a, b):
        relay_connect(m, a, b)
        log = m.registrar_log.read_text()
        assert f"{mode} forwarding" in log, log
        if mode == "kernel":
            rules = m.reg_host.run("nft", "list", "table", "ip", "wgmesh_relay").stdout
            assert "40000-40099" in rules
        else:
            assert "wgmesh_relay" not in m.reg_host.run("nft", "list", "tables").stdout


def test_the_kernel_path_keeps_forwarding_across_kill_9() -> None:
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.SYMMETRIC, registrar=RELAY_PORTS) as (
        m,
        a,
        b,
    ):
        relay_connect(m, a, b)
        m.stop_registrar(kill=True)
        for _ in range(5):  # ~5 s with the registrar process gone
            assert a.host.ping(b.tunnel_ip, count=1, timeout=1.0)
            time.sleep(0.5)
        m.start_registrar(*RELAY_PORTS)  # restored and reconciled
        assert m.registrar_log.read_text().count("1 allocations restored") == 1
        assert m.wait_ping(b, a, 10.0)
        m.stop_registrar()  # a clean stop removes the table, and only ours
        tables = m.reg_host.run("nft", "list", "tables").stdout
        assert "wgmesh_relay" not in tables


def test_a_relayed_pair_moves_to_direct_when_the_nat_allows_it() -> None:
    with mesh_of(RouterKind.PORT_RESTRICTED, RouterKind.SYMMETRIC, registrar=RELAY_PORTS) as (
        m,
        a,
        b,
    ):
        relay_connect(m, a, b)
        nat = b.host.nat
        assert nat is not None
        nat.kind = RouterKind.PORT_RESTRICTED
        nat.apply_rules()
        nat.flush_conntrack()
        start = time.monotonic()
        wait_for(
            lambda: not on_relay(m, a, b) and not on_relay(m, b, a),
            30,
            "direct after the NAT became port-restricted",
        )
        took = time.monotonic() - start
        assert m.wait_ping(a, b, 5.0) and m.wait_ping(b, a, 5.0)
        row = m.peer_row(a, b)
        assert row["path"] == "direct", (row, took)
        assert endpoint_of(a, b).startswith(str(b.host.public_ip)), row


def test_a_datagram_from_an_unbound_address_is_not_forwarded() -> None:
    with mesh_of(
        RouterKind.PORT_RESTRICTED,
        RouterKind.SYMMETRIC,
        registrar=(*RELAY_PORTS, "--relay-mode", "userspace", "--metrics", "127.0.0.1:9108"),
    ) as (m, a, b):
        relay_connect(m, a, b)
        port = int(endpoint_of(a, b).rpartition(":")[2])
        before = scrape(m)
        mallory = m.lab.add_public_host("mallory")
        code = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"[s.sendto(b'\\x04' + bytes(31), ('{m.registrar_ip}', {port})) for _ in range(20)]"
        )
        mallory.run(PYTHON, "-c", code)
        time.sleep(0.5)
        after = scrape(m)
        unbound = 'wgmesh_registrar_relay_dropped_total{reason="unbound"}'
        forwarded = "wgmesh_registrar_relay_forwarded_total"
        assert after[unbound] - before[unbound] == 20
        # what was forwarded meanwhile is the tunnel's own keepalives at most, not 20 more
        assert after[forwarded] - before[forwarded] < 20


def scrape(m: Mesh) -> dict[str, float]:
    code = (
        "import urllib.request; "
        "print(urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=5).read().decode())"
    )
    text = m.reg_host.run(PYTHON, "-c", code).stdout
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
