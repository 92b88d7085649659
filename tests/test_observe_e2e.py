"""End to end: what an operator sees matches what the lab's NATs and tunnels really do.

``wgmesh netcheck`` run behind each kind of lab router gives the verdict that router's nftables
rules call for; and in a three-peer lab with one symmetric NAT the registrar's matrix of pairs
(``wgmesh mesh --json`` on its host, and the status page in headless Chromium) shows, for every
pair, the path that pair's daemon really uses (its ``wgmesh peers``, and the interface's
endpoint: the relay's address or the peer's public one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_e2e import FAST
from tests.test_status_page import _cells, artefacts, browse, chromium
from wgmesh.lab.mesh import PYTHON, Mesh, MeshPeer
from wgmesh.lab.topology import Host, Lab, RouterKind

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

__all__ = ["chromium"]  # the fixture, re-exported for pytest


def netcheck(host: Host, registrar: str, *extra: str) -> dict[str, Any]:
    out = host.run(
        PYTHON, "-m", "wgmesh", "netcheck", "--registrar", registrar, "--json", *extra,
        timeout=30,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(out.stdout)
    return report


# (router, what the report must say): nat, mapping, filtering, and words of the verdict
EXPECTED = {
    RouterKind.PORT_RESTRICTED: (
        "cone",
        "endpoint-independent",
        "address-and-port-dependent",
        "port-restricted cone NAT",
    ),
    RouterKind.SYMMETRIC: (
        "symmetric",
        "address-and-port-dependent",
        "address-and-port-dependent",
        "symmetric NAT",
    ),
    # tested from the forwarded port (--port 51821): the forward keeps its number and takes
    # UDP from anyone; the filtering test's own (ephemeral) socket is filtered as usual
    RouterKind.PORT_FORWARD: (
        "cone",
        "endpoint-independent",
        "address-and-port-dependent",
        "takes UDP from ports it never sent to",
    ),
    RouterKind.NONE: ("none", "endpoint-independent", None, "no NAT"),
}


def test_netcheck_names_each_lab_router_kind() -> None:
    """One lab, one host behind each router kind (and one without NAT): each report's classes
    and verdict are those of its router; a port forward is tested from the forwarded port."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        mesh = Mesh(lab, reg)
        mesh.start_registrar()
        hosts: dict[RouterKind, Host] = {}
        for i, kind in enumerate(EXPECTED):
            if kind is RouterKind.NONE:
                hosts[kind] = lab.add_peer(f"h{i}", None)
                continue
            forward = 51821 if kind is RouterKind.PORT_FORWARD else None
            hosts[kind] = lab.add_peer(f"h{i}", lab.add_nat(f"n{i}", kind, forward_port=forward))
        for kind, host in hosts.items():
            extra = ("--port", "51821") if kind is RouterKind.PORT_FORWARD else ()
            report = netcheck(host, mesh.registrar_ip, *extra)
            nat, mapping, filtering, words = EXPECTED[kind]
            seen = (report["nat"], report["mapping"], report["filtering"], report["verdict"])
            assert report["reachable"], (kind, report)
            assert report["nat"] == nat, (kind, seen)
            assert report["mapping"] == mapping, (kind, seen)
            if filtering is not None:
                assert report["filtering"] == filtering, (kind, seen)
            else:  # DNAT or no firewall: the change-port answer gets through
                assert report["tests"]["filtering-change-port"]["outcome"] == "answered", (
                    kind,
                    report["tests"],
                )
            assert words in report["verdict"], (kind, seen)
            mapped = report["mapped"]
            assert mapped is not None and mapped.startswith(f"{host.public_ip}:"), (kind, mapped)
            if kind is RouterKind.PORT_FORWARD:
                assert mapped == f"{host.public_ip}:51821", report
                assert report["open_port"] is True, report["tests"]
            else:
                assert report["open_port"] is None, report["tests"]
        # a port that is not forwarded, tested the same way: it filters by port
        closed = netcheck(hosts[RouterKind.PORT_RESTRICTED], mesh.registrar_ip, "--port", "51821")
        assert closed["open_port"] is False, closed["tests"]
        assert "port-restricted cone NAT" in closed["verdict"], closed["verdict"]


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = cond()
        if last is True:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s; last: {last}")


def used_path(mesh: Mesh, a: MeshPeer, b: MeshPeer) -> str:
    """The path a's interface really uses toward b: relay when its endpoint is on the
    registrar's address, direct when on b's public address."""
    out = a.host.run("wg", "show", a.wg.name, "endpoints").stdout
    for line in out.splitlines():
        key, _, endpoint = line.partition("\t")
        if key == b.wg.public_key:
            if endpoint.startswith(f"{mesh.registrar_ip}:"):
                return "relay"
            if endpoint.startswith(f"{b.host.public_ip}:"):
                return "direct"
            return f"other:{endpoint}"
    return "absent"


def test_the_registrar_matrix_shows_the_paths_the_daemons_use(
    tmp_path: Path, chromium: str
) -> None:
    """a and b behind port-restricted NATs, c behind a symmetric one: a-b direct, a-c and b-c
    through the relay. Every cell of ``wgmesh mesh --json`` and of the status page's grid is
    the path the reporting daemon really uses (its interface's endpoint), as ``wgmesh peers``
    says too."""
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("a", lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED)))
        b = mesh.add_peer("b", lab.add_peer("b", lab.add_nat("nb", RouterKind.PORT_RESTRICTED)))
        c = mesh.add_peer("c", lab.add_peer("c", lab.add_nat("nc", RouterKind.SYMMETRIC)))
        peers = (a, b, c)
        for x, y in ((a, b), (a, c), (b, c)):
            mesh.link(x, y)
        mesh.start_registrar("--relay-ports", "40000-40099", "--metrics", "127.0.0.1:9108")
        try:
            for p in peers:
                mesh.start_daemon(p, *FAST)
            for x in peers:
                for y in peers:
                    if x is not y:
                        assert mesh.wait_ping(x, y, 40.0), f"{x.name} cannot reach {y.name}"
            want = {
                (x.name, y.name): "direct" if {x.name, y.name} == {"a", "b"} else "relay"
                for x in peers
                for y in peers
                if x is not y
            }

            def really_used() -> object:
                used = {(x.name, y.name): used_path(mesh, x, y) for (x, y) in pairs(peers)}
                return True if used == want else used

            wait_for(really_used, 30, "the interfaces on the expected paths")
            for x, y in pairs(peers):
                assert mesh.peer_row(x, y)["path"] == want[(x.name, y.name)], (x.name, y.name)
            names = {p.wg.public_key: p.name for p in peers}
            sock = mesh.workdir / "state" / "registrar.sock"

            def matrix() -> dict[tuple[str, str], str]:
                out = reg.run(
                    PYTHON, "-m", "wgmesh", "mesh", "--status-socket", str(sock), "--json",
                    timeout=20,
                )  # fmt: skip
                doc = json.loads(out.stdout)
                return {
                    (names.get(r["from"], "?"), names.get(r["to"], "?")): r["path"]
                    for r in doc["paths"]
                }

            wait_for(lambda: True if matrix() == want else matrix(), 40, "the registrar matrix")
            for (x, y), path in want.items():  # and still what the interfaces use
                assert used_path(mesh, peer(peers, x), peer(peers, y)) == path, (x, y)
            url = "http://127.0.0.1:9108/status"
            dom = browse(chromium, tmp_path, url, "--dump-dom", netns=reg.netns)
            shot = artefacts(tmp_path) / "observe-matrix.png"
            browse(chromium, tmp_path, url, f"--screenshot={shot}", netns=reg.netns)
            assert "live: updated" in dom, dom[-2000:]
            grid = dom.split('<table id="matrix">', 1)[1].split("</table>", 1)[0]
            rows = [r.split("</th>", 1)[1] for r in grid.split("<tbody>", 1)[1].split("<tr>")[1:]]
            cells = [[c.split('"')[0] for c in row.split('class="')[1:]] for row in rows]
            assert cells == [  # a, b, c: what each reports of the others
                ["self", "path path-direct", "path path-relay"],
                ["path path-direct", "self", "path path-relay"],
                ["path path-relay", "path path-relay", "self"],
            ], grid
            assert sorted(_cells(dom, "name")) == ["a", "b", "c"]
            assert shot.exists() and shot.stat().st_size > 5000
        except BaseException:
            print(mesh.logs())
            raise


def pairs(peers: tuple[MeshPeer, ...]) -> list[tuple[MeshPeer, MeshPeer]]:
    return [(x, y) for x in peers for y in peers if x is not y]


def peer(peers: tuple[MeshPeer, ...], name: str) -> MeshPeer:
    return next(p for p in peers if p.name == name)
