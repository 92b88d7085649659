"""The lab behaves like real NATs: real nftables routers in namespaces, real wireguard-go
configured by hand with ``wg`` (no wgmesh code on the data path), and it cleans up after itself.

What each NAT kind must do is in docs/lab.md; these tests are its proof.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wgmesh.lab.nat import REBIND_RANGES
from wgmesh.lab.netns import RUN_DIR, lab_namespaces, process_start_time, run
from wgmesh.lab.topology import Host, Lab, RouterKind, cleanup_stale, stale_namespaces
from wgmesh.lab.wireguard import WgIface
from wgmesh.wg.control import UAPI_DIR

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

PY = sys.executable

# Replies to every datagram with the sender's ip:port, and logs that line.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, (ip, port) = s.recvfrom(2048)
    print(f"from {ip}:{port}", flush=True)
    s.sendto(f"{ip}:{port}".encode(), (ip, port))
"""

# Sends one datagram from a fixed port and prints the reply, or "timeout".
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[4]))
s.sendto(b"hello", (sys.argv[2], int(sys.argv[3])))
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("timeout")
"""


@contextmanager
def lab_for_test(prefix: str = "wgm") -> Iterator[Lab]:
    """A lab whose process logs and NAT state are printed if the test fails."""
    with Lab(prefix) as lab:
        try:
            yield lab
        except BaseException:
            print(lab.logs())
            for nat in lab.nats:
                print(f"--- conntrack {nat.name}\n{nat.conntrack_entries()}")
            raise


def echo_server(host: Host, port: int) -> Path:
    """Start UDP_ECHO on ``host``; returns its log once it listens."""
    log = host.lab.workdir / f"echo-{host.name}-{port}.log"
    host.spawn(PY, "-c", UDP_ECHO, str(port), log_path=log)
    deadline = time.monotonic() + 10
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "echo server did not start"
        time.sleep(0.02)
    return log


def udp_send(host: Host, sport: int, dst: object, dport: int, timeout: float = 1.0) -> str:
    """Send one datagram from ``host``:``sport``; the reply text, or "timeout"."""
    out = host.run(PY, "-c", UDP_SEND, str(sport), str(dst), str(dport), str(timeout),
                   timeout=timeout + 10)  # fmt: skip
    return out.stdout.strip()


def wait_ping(host: Host, address: str, timeout: float) -> float | None:
    """Seconds until ``address`` answers a ping from ``host``, None if not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if host.ping(address, timeout=0.5):
            return time.monotonic() - start
    return None


def hand_link(a: WgIface, b: WgIface, keepalive: int = 25) -> None:
    """Each side gets the other's key, tunnel address and a guessed endpoint: the other's public
    address with its listen port (right only if the other's NAT preserves ports)."""
    for me, other in ((a, b), (b, a)):
        endpoint = f"{other.host.public_ip}:{other.listen_port}"
        me.add_peer(other.public_key, f"{other.tunnel_address}/32", endpoint, keepalive)


def test_port_restricted_lets_replies_in_and_nothing_else() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg")
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        peer = lab.add_peer("peer", home)
        open_nat = lab.add_nat("open", RouterKind.OPEN)
        other = lab.add_peer("other", open_nat)
        assert peer.ping(reg.address)
        # Give the internet a route to both LANs, so only the firewall can stop the ping.
        for nat in (home, open_nat):
            lab_inet_route(lab, str(nat.lan_subnet), str(nat.wan_ip))
        assert reg.ping(other.address), "OPEN NAT (no firewall) should forward"
        assert not reg.ping(peer.address), "the firewall let an unsolicited ping in"

        echo_server(reg, 7000)
        peer_log = echo_server(peer, 40000)
        # unsolicited: nothing reaches the LAN host through the public address
        assert udp_send(reg, 7001, home.wan_ip, 40000) == "timeout"
        assert "from" not in peer_log.read_text()
        # solicited: the reply comes back, and the public port is the LAN port (port-preserving)
        assert udp_send(peer, 40001, reg.address, 7000) == f"{home.wan_ip}:40001"


def lab_inet_route(lab: Lab, subnet: str, via: str) -> None:
    """A route in the lab's internet router (a lab namespace, never the root namespace)."""
    run(["ip", "-n", lab.inet, "route", "add", subnet, "via", via])


def test_port_forward_lets_its_port_in() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg")
        nat = lab.add_nat("fwd", RouterKind.PORT_FORWARD, forward_port=51820)
        server = lab.add_peer("srv", nat)
        echo_server(server, 51820)
        echo_server(server, 40000)
        assert udp_send(reg, 7000, nat.wan_ip, 51820) == f"{reg.address}:7000"
        assert udp_send(reg, 7000, nat.wan_ip, 40000) == "timeout"


def test_hand_punch_between_two_port_restricted_nats() -> None:
    with lab_for_test() as lab:
        a = lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED))
        b = lab.add_peer("b", lab.add_nat("nb", RouterKind.PORT_RESTRICTED))
        wa = a.start_wireguard(listen_port=51820, address="100.64.0.1/24")
        wb = b.start_wireguard(listen_port=51821, address="100.64.0.2/24")
        hand_link(wa, wb)
        took = wait_ping(a, wb.tunnel_address, 10.0)
        assert took is not None and took < 6.0, f"no ping across the tunnel ({took})"
        assert wa.latest_handshake(wb.public_key) > 0
        # each side sees the other at its NAT's address with the unchanged listen port
        assert wa.endpoint_of(wb.public_key) == f"{b.public_ip}:51821"
        assert wb.endpoint_of(wa.public_key) == f"{a.public_ip}:51820"


def test_port_restricted_cannot_punch_a_symmetric_nat() -> None:
    with lab_for_test() as lab:
        a = lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED))
        sym = lab.add_nat("nb", RouterKind.SYMMETRIC)
        b = lab.add_peer("b", sym)
        wa = a.start_wireguard(listen_port=51820, address="100.64.0.1/24")
        wb = b.start_wireguard(listen_port=51821, address="100.64.0.2/24")
        hand_link(wa, wb)
        # b's packets leave the symmetric NAT from a random port, not 51821: a's NAT only lets in
        # replies from nb:51821 (where a sends), so nothing ever gets through either way.
        time.sleep(6.0)
        assert wa.latest_handshake(wb.public_key) == 0
        assert wb.latest_handshake(wa.public_key) == 0
        assert not a.ping(wb.tunnel_address, timeout=0.5)
        # control: the same symmetric peer reaches a public peer, which learns the random port
        c = lab.add_peer("c", None)
        wc = c.start_wireguard(listen_port=51822, address="100.64.0.3/24")
        wc.add_peer(wb.public_key, "100.64.0.2/32")
        wb.add_peer(wc.public_key, "100.64.0.3/32", f"{c.address}:51822", 25)
        assert wait_ping(b, wc.tunnel_address, 10.0) is not None
        seen = wc.endpoint_of(wb.public_key)
        assert seen is not None and seen.startswith(f"{sym.wan_ip}:")
        assert seen != f"{sym.wan_ip}:51821", "fully-random kept the port (1 in ~64k chance)"


def test_same_nat_no_hairpin_but_lan_works() -> None:
    with lab_for_test() as lab:
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        a, b = lab.add_peer("a", home), lab.add_peer("b", home)
        echo_server(b, 40000)
        assert a.ping(b.address)
        assert udp_send(a, 40001, b.address, 40000) == f"{a.address}:40001"
        assert udp_send(a, 40002, home.wan_ip, 40000) == "timeout"


def test_rebind_changes_the_public_port() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg")
        nat = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        peer = lab.add_peer("peer", nat)
        echo_server(reg, 7000)
        assert udp_send(peer, 40000, reg.address, 7000) == f"{nat.wan_ip}:40000"
        seen = []
        for expected in REBIND_RANGES:
            assert nat.rebind() == expected
            ip, port = udp_send(peer, 40000, reg.address, 7000).split(":")
            low, high = map(int, expected.split("-"))
            assert ip == str(nat.wan_ip) and low <= int(port) <= high
            seen.append(port)
        assert len(set(seen)) == 2


@pytest.mark.parametrize("fail", [False, True], ids=["clean-exit", "exception"])
def test_close_leaves_nothing(fail: bool) -> None:
    prefix = f"wgt{uuid.uuid4().hex[:4]}"
    holder: list[Lab] = []
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext(), Lab(prefix) as lab:
        holder.append(lab)
        peer = lab.add_peer("peer", lab.add_nat("home", RouterKind.SYMMETRIC))
        wg = peer.start_wireguard()
        echo_server(peer, 40000)
        if fail:
            raise RuntimeError("boom")
    (lab,) = holder
    assert lab_namespaces(prefix) == []
    assert all(process_start_time(s.proc.pid) is None for s in lab.procs)
    assert not wg.uapi_socket.exists()
    assert not lab.workdir.exists()


# A lab in another process, so the test can kill it: prints the run and the wireguard-go PID.
LAB_CHILD = """
import json, sys, time
from wgmesh.lab.topology import Lab, RouterKind
lab = Lab(sys.argv[1])
peer = lab.add_peer("peer", lab.add_nat("home", RouterKind.PORT_RESTRICTED))
wg = peer.start_wireguard()
print(json.dumps({"run": lab.run_id, "wg": lab.procs[0].proc.pid, "sock": str(wg.uapi_socket)}),
      flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_owner(sig: signal.Signals) -> None:
    """SIGTERM: the lab tears itself down. SIGKILL: wireguard-go dies with its owner
    (PR_SET_PDEATHSIG) and cleanup_stale removes the namespaces; it ignores live runs."""
    prefix = f"wgt{uuid.uuid4().hex[:4]}"
    live = Lab(prefix)  # a live run with the same prefix must survive cleanup_stale
    child = subprocess.Popen([PY, "-c", LAB_CHILD, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        assert any(info["run"] in ns for ns in lab_namespaces(prefix))
        os.kill(child.pid, sig)
        child.wait(10)
        deadline = time.monotonic() + 5
        while process_start_time(info["wg"]) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_start_time(info["wg"]) is None, "wireguard-go outlived its lab"
        mine = [ns for ns in lab_namespaces(prefix) if info["run"] in ns]
        if sig == signal.SIGTERM:
            assert mine == []
        else:
            assert sorted(stale_namespaces(prefix)) == sorted(mine) and len(mine) == 3
            assert sorted(cleanup_stale(prefix)) == sorted(mine)
            assert [ns for ns in lab_namespaces(prefix) if info["run"] in ns] == []
        assert not Path(info["sock"]).exists()
        assert lab_namespaces(prefix) == [f"{live.prefix}-inet"]
        assert not any(UAPI_DIR.glob(f"wg{info['run']}*"))
        assert not (RUN_DIR / f"{prefix}-{info['run']}.json").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        live.close()
        cleanup_stale(prefix)
    assert lab_namespaces(prefix) == []
