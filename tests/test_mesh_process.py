"""Path reports through the real `wgmesh registrar` on loopback, read back with `wgmesh mesh`
from its unix socket (and in test_status_page.py, in the browser)."""

from __future__ import annotations

import json
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import WGMESH, Client, RegistrarProcess, registrar
from wgmesh.proto import sealed, stun
from wgmesh.proto.keys import encode_key

K = sealed.PathKind
R = sealed.PathReason


def prove(client: Client, r: RegistrarProcess) -> None:
    """Echo the cookie of a Status, as the daemon does: the client's socket becomes its
    proven control address (what PathReports must come from)."""
    for _ in range(2):
        client.counter += 1
        watch = sealed.padded_watch(sealed.Watch(int(time.time() * 1000), client.counter, 0,
                                                 getattr(client, "cookie", bytes(16))))  # fmt: skip
        client.sock.sendto(client._sealed(watch), r.endpoint.sockaddr())
        reply, _ = client.sock.recvfrom(2048)
        _, status = sealed.open_sealed(client.sealer, stun.decode(reply), r.key)
        assert isinstance(status, sealed.Status)
        if status.proven:
            return
        client.cookie = status.cookie  # type: ignore[attr-defined]
    raise AssertionError("the control address was not proven")


def report(client: Client, r: RegistrarProcess, *paths: sealed.PeerPath) -> None:
    client.counter += 1
    payload = sealed.PathReport(int(time.time() * 1000), client.counter, paths)
    client.sock.sendto(client._sealed(payload), r.endpoint.sockaddr())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a unix socket's path is at most 107 bytes)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="wgm") as d:
        yield Path(d)


def three_peers(r: RegistrarProcess) -> tuple[Client, Client, Client]:
    """alice, bob and carol registered and proven; their reports sent."""
    alice, bob, carol = Client(r.key), Client(r.key), Client(r.key)
    for c, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        c.register(r.endpoint, name=name)
        prove(c, r)
    report(alice, r, sealed.PeerPath(bob.key, K.DIRECT, R.NONE, 3),
           sealed.PeerPath(carol.key, K.RELAY, R.PEER_SYMMETRIC, 10))  # fmt: skip
    report(bob, r, sealed.PeerPath(alice.key, K.DIRECT, R.NONE, 4),
           sealed.PeerPath(carol.key, K.NONE, R.BOTH_SYMMETRIC))  # fmt: skip
    report(carol, r, sealed.PeerPath(alice.key, K.RELAY, R.OURS_SYMMETRIC, 9))
    return alice, bob, carol


def mesh(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WGMESH, "mesh", "--status-socket", str(sock), *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def wait_for_paths(sock: Path, count: int) -> dict[str, Any]:
    for _ in range(50):
        out = mesh(sock, "--json")
        doc: dict[str, Any] = json.loads(out.stdout)
        if len(doc["paths"]) >= count:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"expected {count} paths: {doc}")


def test_wgmesh_mesh_shows_the_reported_matrix(tmp_path: Path, short_dir: Path) -> None:
    sock = short_dir / "registrar.sock"
    with registrar(tmp_path, ["--open", "--status-socket", str(sock)]) as r:
        alice, bob, carol = three_peers(r)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        doc = wait_for_paths(sock, 5)
        key = {encode_key(c.key): n for c, n in ((alice, "alice"), (bob, "bob"), (carol, "c"))}
        got = {(key[p["from"]], key[p["to"]]): (p["path"], p["reason"]) for p in doc["paths"]}
        assert got == {
            ("alice", "bob"): ("direct", ""),
            ("alice", "c"): ("relay", "the peer is behind a symmetric NAT, the reporter a "
                                      "filtering one"),
            ("bob", "alice"): ("direct", ""),
            ("bob", "c"): ("none", "both peers are behind symmetric NATs"),
            ("c", "alice"): ("relay", "the reporter is behind a symmetric NAT, the peer a "
                                      "filtering one"),
        }  # fmt: skip
        assert doc["total"] == 3 and {p["name"] for p in doc["peers"]} == {"alice", "bob", "carol"}
        text = mesh(sock)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        matrix = lines[lines.index(next(ln for ln in lines if ln.startswith("FROM"))) :]
        assert matrix[0].split() == ["FROM", "\\", "TO", "alice", "bob", "carol"]
        assert matrix[1].split() == ["alice", ".", "direct", "relay"]
        assert matrix[2].split() == ["bob", "direct", ".", "none"]
        assert matrix[3].split() == ["carol", "relay", "-", "."]
        assert "  bob -> carol: none, both peers are behind symmetric NATs (handshake never)" in (
            text.stdout
        )
        for c in (alice, bob, carol):
            c.close()
        r.stop()  # a clean stop removes the socket
        assert not sock.exists()


def test_wgmesh_mesh_without_a_registrar(short_dir: Path) -> None:
    out = mesh(short_dir / "none.sock")
    assert out.returncode == 1
    assert out.stderr.startswith("wgmesh mesh: error: cannot read the registrar at ")


def test_the_default_socket_is_left_out_when_its_path_is_too_long(short_dir: Path) -> None:
    from wgmesh.cli.registrar import _status_socket

    given = {"status_socket": None}
    assert _status_socket(given, short_dir) == short_dir / "registrar.sock"
    assert _status_socket(given, short_dir / ("d" * 120)) is None
    assert _status_socket({"status_socket": "/tmp/x.sock"}, short_dir) == Path("/tmp/x.sock")
