"""Both WireGuard backends (UAPI socket and the wg command) against real wireguard-go: read,
write, ``handshake_now`` with no traffic at all, counters, batches, removal, errors.

Each test gets two fresh namespaces A and B (``wgmt-<hex>a``/``b``) joined by a veth pair created
inside them (10.99.0.1 <-> 10.99.0.2), with one wireguard-go in each (tunnel 10.77.0.1 and
10.77.0.2). Nothing is created in or linked to the root namespace; the backends run in the root
namespace only because the UAPI sockets in /var/run/wireguard are shared by all namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from wgmesh.errors import InterfaceNotFound, WireGuardError
from wgmesh.proto.device import DEFAULT_KEEPALIVE, PeerState, PeerUpdate
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, public_key
from wgmesh.wg.backends import open_control
from wgmesh.wg.control import WireGuardControl
from wgmesh.wg.uapi import Uapi
from wgmesh.wg.wgtool import WgCli

pytestmark = pytest.mark.netns

UAPI_DIR = Path("/var/run/wireguard")
KEEPALIVE_PACKET = 32
"""Bytes a keepalive adds to tx_bytes (a transport message with an empty payload)."""


@dataclass
class Side:
    """One namespace with its wireguard-go interface."""

    ns: str
    iface: str
    key: bytes
    port: int
    underlay: str
    tunnel: str

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=10, check=check)  # fmt: skip

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.of(self.underlay, self.port)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=True)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    tag = secrets.token_hex(3)
    namespaces: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    sides: list[Side] = []
    try:
        for n, name in enumerate("ab", start=1):
            ns = f"wgmt-{tag}{name}"
            _ip("netns", "add", ns)
            namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            private = bytes(PrivateKey.generate())
            fd = os.open(tmp_path / f"wgt{tag}{name}.key", os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(encode_key(private) + "\n")  # only wg reads it; the test keeps the public
            sides.append(Side(ns, f"wgt{tag}{name}", public_key(private), 51819 + n,
                              f"10.99.0.{n}", f"10.77.0.{n}"))  # fmt: skip
        a, b = sides
        _ip("-n", a.ns, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", b.ns)
        for side, link in ((a, "vA"), (b, "vB")):
            _ip("-n", side.ns, "addr", "add", f"{side.underlay}/24", "dev", link)
            _ip("-n", side.ns, "link", "set", link, "up")
            procs.append(subprocess.Popen(  # `ip netns exec` execs: the PID is wireguard-go's
                ["ip", "netns", "exec", side.ns, "wireguard-go", "-f", side.iface],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "LOG_LEVEL": "error"}, start_new_session=True,
            ))  # fmt: skip
            deadline = time.monotonic() + 10
            while not (UAPI_DIR / f"{side.iface}.sock").exists():
                assert procs[-1].poll() is None, f"wireguard-go {side.iface} exited"
                assert time.monotonic() < deadline, f"wireguard-go {side.iface}: no UAPI socket"
                time.sleep(0.02)
            side.run("wg", "set", side.iface, "private-key", str(tmp_path / f"{side.iface}.key"),
                     "listen-port", str(side.port))  # fmt: skip
            _ip("-n", side.ns, "addr", "add", f"{side.tunnel}/24", "dev", side.iface)
            _ip("-n", side.ns, "link", "set", side.iface, "up")
        yield a, b
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for side in sides:
            with contextlib.suppress(FileNotFoundError):
                (UAPI_DIR / f"{side.iface}.sock").unlink()
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


Backend = Callable[[str], WireGuardControl]
BACKENDS = pytest.mark.parametrize("backend", [Uapi, WgCli], ids=["uapi", "wg"])


def the_peer(ctl: WireGuardControl) -> PeerState:
    (peer,) = ctl.read().peers
    return peer


def wait_for(check: Callable[[], bool], seconds: float) -> float:
    """Poll until ``check()``; the seconds it took, or fail."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def settled_tx(ctl: WireGuardControl) -> int:
    """tx_bytes once nothing has been sent for 0.3 s."""
    last = -1
    while (tx := the_peer(ctl).tx_bytes) != last:
        last = tx
        time.sleep(0.3)
    return tx


@BACKENDS
def test_read_write_kick_traffic_remove(pair: tuple[Side, Side], backend: Backend) -> None:
    a, b = pair
    ctl = backend(a.iface)
    state = ctl.read()
    assert (state.name, state.public_key, state.listen_port, state.peers) == (
        a.iface, a.key, a.port, ())  # fmt: skip
    b.run("wg", "set", b.iface, "peer", encode_key(a.key), "allowed-ips", f"{a.tunnel}/32")

    ctl.apply([PeerUpdate(b.key, endpoint=b.endpoint, allowed_ips=(f"{b.tunnel}/32",))])
    assert the_peer(ctl) == PeerState(b.key, b.endpoint, (f"{b.tunnel}/32",), 0.0, 0, 0, 0)
    time.sleep(1.0)  # control: with no traffic and no keepalive, WireGuard sends nothing at all
    assert the_peer(ctl).tx_bytes == 0

    ctl.apply([PeerUpdate(b.key, handshake_now=True)])
    took = wait_for(lambda: the_peer(ctl).latest_handshake > 0, 3.0)
    print(f"handshake_now -> handshake in {took * 1000:.0f} ms")
    peer = the_peer(ctl)
    assert peer.persistent_keepalive == DEFAULT_KEEPALIVE and peer.rx_bytes > 0
    assert abs(peer.latest_handshake - time.time()) < 5
    seen_by_b = the_peer(backend(b.iface))
    assert seen_by_b.latest_handshake > 0 and seen_by_b.endpoint == a.endpoint  # B roamed to A

    before = the_peer(ctl)
    assert a.run("ping", "-n", "-q", "-c", "1", "-W", "1", b.tunnel, check=False).returncode == 0
    after = the_peer(ctl)
    assert after.rx_bytes > before.rx_bytes and after.tx_bytes > before.tx_bytes

    ctl.apply([PeerUpdate(b.key, persistent_keepalive=0)])
    assert the_peer(ctl).persistent_keepalive == 0
    ctl.apply([PeerUpdate(b.key, remove=True)])
    assert ctl.read().peers == ()
    assert len(backend(b.iface).read().peers) == 1  # the other side untouched


@BACKENDS
def test_kick_when_keepalive_is_already_on(pair: tuple[Side, Side], backend: Backend) -> None:
    """The 0 -> N toggle must fire even when the peer's keepalive already is N: measured as one
    keepalive packet over an established session (setting N again alone sends nothing)."""
    a, b = pair
    ctl = backend(a.iface)
    b.run("wg", "set", b.iface, "peer", encode_key(a.key), "allowed-ips", f"{a.tunnel}/32")
    ctl.apply([PeerUpdate(b.key, endpoint=b.endpoint, allowed_ips=(f"{b.tunnel}/32",),
                          persistent_keepalive=20)])  # fmt: skip
    wait_for(lambda: the_peer(ctl).latest_handshake > 0, 3.0)
    tx = settled_tx(ctl)
    ctl.apply([PeerUpdate(b.key, persistent_keepalive=20)])
    time.sleep(0.5)
    assert the_peer(ctl).tx_bytes == tx, "re-setting the same keepalive sent something"
    ctl.apply([PeerUpdate(b.key, handshake_now=True)])
    wait_for(lambda: the_peer(ctl).tx_bytes >= tx + KEEPALIVE_PACKET, 1.0)
    assert the_peer(ctl).persistent_keepalive == 20  # kept
    tx = settled_tx(ctl)
    ctl.apply([PeerUpdate(b.key, handshake_now=True, persistent_keepalive=30)])
    wait_for(lambda: the_peer(ctl).tx_bytes >= tx + KEEPALIVE_PACKET, 1.0)
    assert the_peer(ctl).persistent_keepalive == 30


@BACKENDS
def test_a_batch_in_one_apply(pair: tuple[Side, Side], backend: Backend) -> None:
    a, b = pair
    ctl = backend(a.iface)
    others = [public_key(bytes(PrivateKey.generate())) for _ in range(3)]
    far = Endpoint.of("10.99.0.200", 51820)  # nobody there: kicks to it only send initiations
    ctl.apply([PeerUpdate(k, endpoint=far, allowed_ips=(f"10.78.{i}.0/24", f"fd00::{i}/128"))
               for i, k in enumerate(others)])  # fmt: skip
    ctl.apply([PeerUpdate(others[0], remove=True),
               PeerUpdate(others[1], handshake_now=True, allowed_ips=()),
               PeerUpdate(others[2], persistent_keepalive=7, endpoint=b.endpoint)])  # fmt: skip
    peers = {p.public_key: p for p in ctl.read().peers}
    assert set(peers) == set(others[1:])
    assert peers[others[1]].allowed_ips == () and peers[others[1]].persistent_keepalive == 25
    assert (peers[others[2]].endpoint, peers[others[2]].persistent_keepalive) == (b.endpoint, 7)
    assert peers[others[2]].allowed_ips == ("10.78.2.0/24", "fd00::2/128")
    wait_for(lambda: {p.public_key: p for p in ctl.read().peers}[others[1]].tx_bytes > 0, 1.0)


@BACKENDS
def test_a_bad_value_is_a_wireguard_error(pair: tuple[Side, Side], backend: Backend) -> None:
    a, b = pair
    with pytest.raises(WireGuardError) as info:
        backend(a.iface).apply([PeerUpdate(b.key, allowed_ips=("not-a-cidr",))])
    assert not isinstance(info.value, InterfaceNotFound)


@BACKENDS
def test_a_missing_interface_is_named(backend: Backend) -> None:
    name = f"wgt{secrets.token_hex(3)}x"
    with pytest.raises(InterfaceNotFound, match=f"no WireGuard interface '{name}'"):
        backend(name).read()
    with pytest.raises(InterfaceNotFound, match=name):
        backend(name).apply([PeerUpdate(bytes(32), remove=True)])


def test_auto_picks_the_uapi_socket(pair: tuple[Side, Side]) -> None:
    a, _ = pair
    assert isinstance(open_control(a.iface), Uapi)
    assert isinstance(open_control(a.iface, "wg"), WgCli)
    assert open_control(a.iface, "wg").read() == open_control(a.iface).read()


@BACKENDS
def test_a_renewed_peer_initiates_at_once_after_a_futile_initiation(
    pair: tuple[Side, Side], backend: Backend, tmp_path: Path
) -> None:
    """WireGuard sends at most one initiation per peer every 5 s: after one toward a dead
    endpoint, a kick toward the right one sends nothing (the control), but renewing the peer
    lets it through at once. The renewed peer keeps its preshared key (B requires it: a lost
    key fails the handshake), allowed IPs and keepalive."""
    a, b = pair
    ctl = backend(a.iface)
    psk = tmp_path / "psk"
    fd = os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(os.urandom(32)) + "\n")
    b.run("wg", "set", b.iface, "peer", encode_key(a.key), "allowed-ips", f"{a.tunnel}/32",
          "preshared-key", str(psk))  # fmt: skip
    a.run("wg", "set", a.iface, "peer", encode_key(b.key), "allowed-ips", f"{b.tunnel}/32",
          "preshared-key", str(psk), "endpoint", "10.99.0.200:51820",
          "persistent-keepalive", "7")  # fmt: skip
    ctl.apply([PeerUpdate(b.key, handshake_now=True)])  # toward nobody
    wait_for(lambda: the_peer(ctl).tx_bytes > 0, 1.0)
    ctl.apply([PeerUpdate(b.key, endpoint=b.endpoint, handshake_now=True)])
    time.sleep(1.0)
    assert the_peer(ctl).latest_handshake == 0, "a kick within 5 s of an initiation went out"
    ctl.apply([PeerUpdate(b.key, endpoint=b.endpoint, handshake_now=True, renew=True)])
    took = wait_for(lambda: the_peer(ctl).latest_handshake > 0, 2.0)  # the 5 s retry: later
    print(f"renewed -> handshake in {took * 1000:.0f} ms")
    peer = the_peer(ctl)
    assert (peer.endpoint, peer.allowed_ips, peer.persistent_keepalive) == (
        b.endpoint, (f"{b.tunnel}/32",), 7)  # fmt: skip
    keys = a.run("wg", "show", a.iface, "preshared-keys").stdout
    assert psk.read_text().strip() in keys
    assert a.run("ping", "-n", "-q", "-c", "1", "-W", "1", b.tunnel, check=False).returncode == 0
