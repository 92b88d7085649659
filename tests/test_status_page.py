"""The registrar's status page: rendered and escaped (pure), its headers and routes, and the
real `wgmesh registrar` on loopback opened in headless Chromium (Debian's ``chromium``, which
the test installs when it is missing and it can): the DOM a person would see, a peer named
``<script>`` shown as text, and a screenshot kept as a test artefact (in
``$WGMESH_TEST_ARTIFACTS`` when set, else the test's tmp_path).

Chromium is kept on loopback: every proxied request goes to a closed loopback port and every
host name fails to resolve, so nothing but the registrar on 127.0.0.1 is ever reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Client, free_port, registrar
from wgmesh.metricshttp import respond
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.kinds import NatKind
from wgmesh.proto.meshview import snapshot
from wgmesh.proto.pathreport import PairPath
from wgmesh.proto.registry import PeerEntry
from wgmesh.registry.statuspage import CSP, render_page, routes

EVIL = "<script>alert(1)</script>"
NOW = 1_800_000_000.0


def entry(key: bytes, name: str, seen: float = NOW - 3) -> PeerEntry:
    return PeerEntry(
        key=key, name=name, mappings=(Endpoint.parse("198.51.100.7:51820"),),
        addresses=(Endpoint.parse("10.0.0.7:51820"),), nat=NatKind.CONE, since=seen,
        refreshed=(seen,), register_counter=1, allowed_ips=("100.64.0.7/32",),
    )  # fmt: skip


def test_the_page_escapes_everything_a_peer_reports() -> None:
    peers = {b"a" * 32: entry(b"a" * 32, EVIL), b"b" * 32: entry(b"b" * 32, 'bob" onload="x')}
    paths = [PairPath(b"a" * 32, b"b" * 32, "relay", "<b>why</b>", 4.0, NOW - 1)]
    page = render_page(snapshot(peers, paths, NOW, zone="mesh.test.", serial=7))
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'bob" onload' not in page and "bob&quot; onload=&quot;x" in page
    assert "<b>why</b>" not in page and "&lt;b&gt;why&lt;/b&gt;" in page
    assert page.count("<script") == 1  # ours, by src: no inline script
    assert 'class="path path-relay"' in page
    assert "198.51.100.7:51820" in page and "lan:10.0.0.7:51820" in page
    assert "zone mesh.test. · serial 7 · 2 peers" in page


def test_a_snapshot_is_capped_and_holds_only_the_pairs_it_shows() -> None:
    keys = [bytes([i]) * 32 for i in range(5)]
    peers = {k: entry(k, f"p{i}", NOW - 10 + i) for i, k in enumerate(keys)}
    peers = {k: peers[k] for k in (keys[4], keys[0], keys[3], keys[1], keys[2])}  # any order
    paths = [PairPath(keys[0], keys[4], "direct", "", 1.0, NOW),
             PairPath(keys[3], keys[4], "none", "no handshake", None, NOW)]  # fmt: skip
    snap = snapshot(peers, paths, NOW, limit=2)
    assert snap["total"] == 5 and snap["shown"] == 2
    assert [p["name"] for p in snap["peers"]] == ["p3", "p4"]  # the most recently seen
    assert [(p["path"], p["handshake_age"]) for p in snap["paths"]] == [("none", None)]
    assert "(3 not shown)" in render_page(snap)


def test_routes_and_headers() -> None:
    table = routes(lambda: snapshot({}, (), NOW, zone="mesh.test.", serial=1))
    for path, media in (("/", "text/html"), ("/status", "text/html"),
                        ("/status.json", "application/json"), ("/status.js", "text/javascript"),
                        ("/status.css", "text/css")):  # fmt: skip
        response, _ = respond(table, f"GET {path} HTTP/1.1\r\n\r\n".encode())
        assert response.status == 200 and response.content_type.startswith(media)
        headers = dict(response.headers)
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP
    body = json.loads(table["/status.json"]().body)
    assert body == {"schema": 1, "zone": "mesh.test.", "serial": 1, "now": NOW, "total": 0,
                    "shown": 0, "peers": [], "paths": []}  # fmt: skip
    assert b"textContent" in table["/status.js"]().body
    assert b"innerHTML" not in table["/status.js"]().body


# -- in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary; installed with apt-get when missing (as root), else skipped."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            env=env, capture_output=True, timeout=900, check=False,
        )  # fmt: skip
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    return found


def browse(chromium: str, tmp: Path, url: str, *extra: str, netns: str | None = None) -> str:
    """Run headless Chromium on ``url`` (loopback only: see the module docstring), inside the
    lab namespace ``netns`` if given."""
    inside = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(
        [
            *inside, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp / 'chromium'}", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-extensions", "--no-pings", "--disable-domain-reliability",
            "--disable-client-side-phishing-detection", "--metrics-recording-only",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=5000", "--window-size=1100,700", *extra, url,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return out.stdout


def artefacts(tmp: Path) -> Path:
    where = Path(os.environ.get("WGMESH_TEST_ARTIFACTS") or tmp)
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_the_status_page_in_headless_chromium(tmp_path: Path, chromium: str) -> None:
    metrics = free_port()
    with registrar(tmp_path, ["--open", "--metrics", f"127.0.0.1:{metrics}"]) as r:
        peers = [Client(r.key) for _ in range(3)]
        lan = (Endpoint.parse("10.1.0.5:51820"),)
        for client, name in zip(peers, ("alice", "bob", EVIL), strict=True):
            client.register(r.endpoint, name=name, addresses=lan)
        url = f"http://127.0.0.1:{metrics}/status"
        with urllib.request.urlopen(url, timeout=5) as resp:
            served = resp.read().decode()
            assert resp.headers["Content-Security-Policy"] == CSP
        dom = browse(chromium, tmp_path, url, "--dump-dom")
        shot = artefacts(tmp_path) / "status-page.png"
        browse(chromium, tmp_path, url, f"--screenshot={shot}")
        ports = [c.port for c in peers]
        for c in peers:
            c.close()
    assert "live: updated" in dom, dom  # the script ran and redrew the page from the JSON
    names = _cells(dom, "name")
    assert sorted(names) == sorted(["alice", "bob", "&lt;script&gt;alert(1)&lt;/script&gt;"])
    assert EVIL not in dom and EVIL not in served
    assert dom.count("<script") == 1  # only ours
    assert f"127.0.0.1:{ports[0]}" in dom and "lan:10.1.0.5:51820" in dom
    assert "zone mesh.test. · serial" in dom and "· 3 peers" in dom
    assert "No path reports yet" in dom
    assert shot.stat().st_size > 5000


def _cells(dom: str, cls: str) -> list[str]:
    marker = f'<td class="{cls}">'
    out: list[Any] = []
    for part in dom.split(marker)[1:]:
        out.append(part.split("</td>", 1)[0])
    return out


def test_the_pair_matrix_in_headless_chromium(tmp_path: Path, chromium: str) -> None:
    from tests.test_mesh_process import three_peers

    metrics = free_port()
    with registrar(tmp_path, ["--open", "--metrics", f"127.0.0.1:{metrics}"]) as r:
        clients = three_peers(r)
        url = f"http://127.0.0.1:{metrics}/status"
        for _ in range(50):  # the reports are datagrams: wait until all five are kept
            with urllib.request.urlopen(url + ".json", timeout=5) as resp:
                if len(json.loads(resp.read())["paths"]) == 5:
                    break
        dom = browse(chromium, tmp_path, url, "--dump-dom")
        shot = artefacts(tmp_path) / "status-matrix.png"
        browse(chromium, tmp_path, url, f"--screenshot={shot}")
        for c in clients:
            c.close()
    assert "live: updated" in dom
    matrix = dom.split('<table id="matrix">', 1)[1].split("</table>", 1)[0]
    rows = [row.split("</th>", 1)[1] for row in matrix.split("<tbody>", 1)[1].split("<tr>")[1:]]
    cells = [[c.split('"')[0] for c in row.split('class="')[1:]] for row in rows]
    assert cells == [  # alice, bob, carol: what each reports of the others
        ["self", "path path-direct", "path path-relay"],
        ["path path-direct", "self", "path path-none"],
        ["path path-relay", "path path-unknown", "self"],
    ]
    assert "both peers are behind symmetric NATs (handshake never)" in matrix
    assert shot.stat().st_size > 5000
