"""The lab's IPv6 internet behaves like the real one: routed 2001:db8::/32, home routers with no
NAT66 but a stateful firewall (RFC 6092), IPv6-only and IPv4-only hosts, hop limits counted like
TTLs, and real wireguard-go connecting two hosts behind two home routers over IPv6.

What the lab models is in docs/lab.md ("IPv6"); these tests are its proof. The first tests need no
namespaces (rulesets, the Mesh's command lines); the rest are marked ``netns``.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wgmesh.lab.mesh import Mesh, MeshPeer
from wgmesh.lab.nat import RouterKind, ruleset
from wgmesh.lab.netns import LabError, run
from wgmesh.lab.topology import Host, Lab
from wgmesh.lab.wireguard import WgIface

PY = sys.executable

# Replies to every datagram with "<sender ip> <sender port>" and logs "from <ip> <port> <data>".
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    print(f"from {addr[0]} {addr[1]} {data.decode(errors='replace')}", flush=True)
    s.sendto(f"{addr[0]} {addr[1]}".encode(), addr[:2])
"""

# Sends one datagram from a fixed port; prints the reply, or "timeout" (or "no reply wanted").
UDP_SEND = """
import socket, sys
sport, dst, dport, wait, data = sys.argv[1:6]
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(sport)))
s.settimeout(float(wait) or None)
s.sendto(data.encode(), (dst, int(dport)))
if float(wait) == 0:
    print("no reply wanted")
    raise SystemExit
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("timeout")
"""

# Opens a hole: one datagram from [::]:sport to dst:dport, then logs whatever arrives on sport
# ("from <ip> <port> <data>") for at most `seconds`.
HOLE = """
import socket, sys, time
sport, dst, dport, seconds = sys.argv[1:5]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sport)))
s.sendto(b"open", (dst, int(dport)))
print("sent", flush=True)
deadline = time.monotonic() + float(seconds)
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        break
    print(f"from {addr[0]} {addr[1]} {data.decode(errors='replace')}", flush=True)
"""

# Exit code 0 if an IPv4 UDP socket can send to argv[1]; prints the errno name otherwise.
SEND4 = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", (sys.argv[1], 9))
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
    raise SystemExit(1)
"""


@contextmanager
def lab_for_test() -> Iterator[Lab]:
    """A lab whose process logs and routers' state are printed if the test fails."""
    with Lab("wgm") as lab:
        try:
            yield lab
        except BaseException:
            print(lab.logs())
            for nat in lab.nats:
                print(f"--- conntrack {nat.name}\n{nat.conntrack_entries()}")
            raise


def wait_log(log: Path, text: str, timeout: float = 10.0) -> str:
    """The log's content once it contains ``text``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, f"{text!r} not in {log.name}: {content!r}"
        time.sleep(0.02)


def echo_server(host: Host, port: int) -> Path:
    """Start UDP_ECHO (IPv4 and IPv6) on ``host``; returns its log once it listens."""
    log = host.lab.workdir / f"echo-{host.name}-{port}.log"
    host.spawn(PY, "-c", UDP_ECHO, str(port), log_path=log)
    wait_log(log, "ready")
    return log


def udp_send(
    host: Host, sport: int, dst: object, dport: int, wait: float = 1.0, data: str = "hello"
) -> str:
    """One datagram from ``host``:``sport``; the reply text, or "timeout" (``wait`` 0: none)."""
    out = host.run(PY, "-c", UDP_SEND, str(sport), str(dst), str(dport), str(wait), data,
                   timeout=wait + 10)  # fmt: skip
    return out.stdout.strip()


# -- no namespaces needed ------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in RouterKind if k != RouterKind.NONE])
def test_ipv4_rules_unchanged_and_ipv6_table_added(kind: RouterKind) -> None:
    forward = ("10.1.0.10", 51820) if kind == RouterKind.PORT_FORWARD else None
    v4 = ruleset(kind, forward=forward)
    both = ruleset(kind, forward=forward, ipv6=True, forward6="2001:db8:1::10")
    assert both.startswith(v4) and "table ip6 wgmlab" not in v4
    v6 = both[len(v4) :]
    assert v6.startswith("table ip6 wgmlab {") and "masquerade" not in v6  # no NAT66
    if kind == RouterKind.OPEN:
        assert "drop" not in v6
        return
    assert "ct state established,related accept" in v6
    assert 'iifname "br0" oifname "eth0" accept' in v6
    assert "packet-too-big" in v6 and "nd-neighbor-solicit" in v6
    assert "echo-request" not in v6  # unsolicited pings fall through to the drop
    assert v6.count('iifname "eth0" drop') == 2  # forward and input
    pinhole = "ip6 daddr 2001:db8:1::10 udp dport 51820 accept" in v6
    assert pinhole == (kind == RouterKind.PORT_FORWARD)


def test_port_forward_over_ipv6_needs_its_target() -> None:
    with pytest.raises(ValueError, match="IPv6 address"):
        ruleset(RouterKind.PORT_FORWARD, forward=("10.1.0.10", 51820), ipv6=True)


class FakeSpawn:
    """Records the argv a Mesh spawns; a registrar "starts" at once."""

    def __init__(self) -> None:
        self.argv: list[tuple[str, ...]] = []

    def __call__(self, *argv: str, log_path: Path | None = None, **_: Any) -> SimpleNamespace:
        self.argv.append(argv)
        if log_path is not None:
            log_path.write_text("serving for zone mesh.test\n")
        return SimpleNamespace(poll=lambda: None)


def fake_host(name: str, v4: str | None, v6: str | None) -> Host:
    host = Host(
        None,  # type: ignore[arg-type]  # never used: spawn is replaced
        name,
        f"none-{name}",
        ipaddress.IPv4Address(v4) if v4 else None,
        None,
        ipaddress.IPv6Address(v6) if v6 else None,
    )
    host.spawn = FakeSpawn()  # type: ignore[method-assign]
    return host


def options(argv: tuple[str, ...], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


@pytest.mark.parametrize(
    ("reg", "peer", "families", "listen", "registrars", "dns"),
    [
        # no IPv6 anywhere: exactly today's arguments
        (("203.0.113.10", None), ("10.1.0.10", None), (4, 6),
         ["203.0.113.10"], ["203.0.113.10"], "203.0.113.10"),
        (("203.0.113.10", "2001:db8::10"), ("10.1.0.10", "2001:db8:1::10"), (4, 6),
         ["203.0.113.10", "2001:db8::10"], ["203.0.113.10", "2001:db8::10"], "203.0.113.10"),
        (("203.0.113.10", "2001:db8::10"), ("10.1.0.10", "2001:db8:1::10"), (6,),
         ["203.0.113.10", "2001:db8::10"], ["2001:db8::10"], "2001:db8::10"),
        # an IPv6-only peer asks DNS over IPv6
        (("203.0.113.10", "2001:db8::10"), (None, "2001:db8:1::10"), (4, 6),
         ["203.0.113.10", "2001:db8::10"], ["203.0.113.10", "2001:db8::10"], "2001:db8::10"),
        # a registrar reachable over IPv6 only
        ((None, "2001:db8::10"), ("10.1.0.10", "2001:db8:1::10"), (4, 6),
         ["2001:db8::10"], ["2001:db8::10"], "2001:db8::10"),
    ],
)  # fmt: skip
def test_mesh_passes_one_option_per_address(
    tmp_path: Path,
    reg: tuple[str | None, str | None],
    peer: tuple[str | None, str | None],
    families: tuple[int, ...],
    listen: list[str],
    registrars: list[str],
    dns: str,
) -> None:
    reg_host, peer_host = fake_host("reg", *reg), fake_host("a", *peer)
    mesh = Mesh(SimpleNamespace(workdir=tmp_path), reg_host)  # type: ignore[arg-type]
    mesh.start_registrar()
    wg = SimpleNamespace(name="wg0", public_key="k")
    p = MeshPeer("a", peer_host, wg, "100.64.0.1", log=tmp_path / "a.log")  # type: ignore[arg-type]
    mesh.start_daemon(p, "--extra", registrar_families=families)
    (reg_argv,) = reg_host.spawn.argv  # type: ignore[attr-defined]
    (daemon_argv,) = peer_host.spawn.argv  # type: ignore[attr-defined]
    assert options(reg_argv, "--listen") == listen
    assert options(daemon_argv, "--registrar") == registrars
    assert options(daemon_argv, "--dns") == [dns]
    assert daemon_argv[-1] == "--extra"
    assert mesh.registrar_ip == listen[0]
    assert mesh.registrar_ip6 == reg[1]


def test_mesh_refuses_families_it_cannot_serve(tmp_path: Path) -> None:
    mesh = Mesh(SimpleNamespace(workdir=tmp_path), fake_host("reg", "203.0.113.10", None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no address of families"):
        mesh.registrar_addresses((6,))
    with pytest.raises(ValueError, match="use 4 or 6"):
        mesh.registrar_addresses((5,))


# -- in namespaces ---------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_addresses_and_refusals() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED, ipv6=True)
        v4nat = lab.add_nat("v4nat", RouterKind.PORT_RESTRICTED)
        a = lab.add_peer("a", home)  # dual-stack by default behind an IPv6 router
        b = lab.add_peer("b", v4nat)  # IPv4 only behind an IPv4 router, as before
        c = lab.add_peer("c", None, ipv6="only")
        assert (reg.address, reg.address6) == (
            ipaddress.IPv4Address("203.0.113.10"),
            ipaddress.IPv6Address("2001:db8::10"),
        )
        assert home.wan_ip6 == ipaddress.IPv6Address("2001:db8:ffff::1")
        assert str(home.lan_subnet6) == "2001:db8:1::/64"
        assert str(a.address) == "10.1.0.10" and str(a.address6) == "2001:db8:1::10"
        assert a.public_ip == home.wan_ip and a.public_ip6 == a.address6
        assert b.address6 is None and v4nat.wan_ip6 is None
        assert c.address4 is None and str(c.address6) == "2001:db8::50"
        with pytest.raises(LabError, match="IPv6-only"):
            c.address  # noqa: B018
        with pytest.raises(ValueError, match="has no IPv6"):
            lab.add_peer("x", v4nat, ipv6=True)
        with pytest.raises(ValueError, match="RFC 3849"):
            lab.add_public_host("x", ipv6=True, address6="2001:db9::1")
        with pytest.raises(ValueError, match="already used"):
            lab.add_public_host("x", ipv6=True, address6="2001:db8::10")
        with pytest.raises(ValueError, match="no IPv4 address"):
            lab.add_public_host("x", "203.0.113.99", ipv6="only")
        with pytest.raises(ValueError, match="needs ipv6"):
            lab.add_peer("x", home, ipv6=False, address6="2001:db8:1::99")
        with pytest.raises(ValueError, match="ipv6 must be"):
            lab.add_public_host("x", ipv6="yes")  # type: ignore[arg-type]
        assert not any(ns.endswith("-x") for ns in lab.namespaces)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_dual_stack_host_reaches_public_ipv6_host_without_nat66() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        home = lab.add_nat("home", RouterKind.SYMMETRIC, ipv6=True)
        peer = lab.add_peer("peer", home)
        assert peer.ping(reg.address6) and peer.ping(reg.address)
        echo_server(reg, 7000)
        # IPv6: the server sees the host's own address and port (routed, not translated)
        assert udp_send(peer, 40001, reg.address6, 7000) == f"{peer.address6} 40001"
        # IPv4 through the same router is still NATed (fully-random: not the LAN port)
        assert udp_send(peer, 40002, reg.address, 7000).split()[0] == f"::ffff:{home.wan_ip}"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_unsolicited_inbound_ipv6_is_dropped() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED, ipv6=True)
        peer = lab.add_peer("peer", home)
        open_nat = lab.add_nat("open", RouterKind.OPEN, ipv6=True)
        other = lab.add_peer("other", open_nat)
        # control: the LANs are routed, so without a firewall inbound gets through
        other_log = echo_server(other, 40000)
        assert reg.ping(other.address6), "OPEN (no firewall) should route inbound IPv6"
        assert udp_send(reg, 7001, other.address6, 40000) == f"{reg.address6} 7001"
        assert f"from {reg.address6} 7001" in other_log.read_text()
        # the home router's firewall drops the same ping and datagram
        peer_log = echo_server(peer, 40000)
        assert not reg.ping(peer.address6), "the firewall let an unsolicited ping in"
        assert udp_send(reg, 7001, peer.address6, 40000) == "timeout"
        assert "from" not in peer_log.read_text()
        assert not reg.ping(home.wan_ip6), "the router answered an unsolicited ping"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_ipv6_hole_admits_that_remote_port_only_until_flushed() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        stranger = lab.add_public_host("stranger", ipv6=True)
        home = lab.add_nat("home", RouterKind.SYMMETRIC, ipv6=True)
        peer = lab.add_peer("peer", home)
        log = lab.workdir / "hole.log"
        peer.spawn(PY, "-c", HOLE, "40000", str(reg.address6), "7000", "30", log_path=log)
        wait_log(log, "sent")
        target = peer.address6
        assert udp_send(reg, 7001, target, 40000, wait=0, data="other-port") == "no reply wanted"
        udp_send(stranger, 7000, target, 40000, wait=0, data="other-host")
        udp_send(reg, 7000, target, 40000, wait=0, data="hole")
        wait_log(log, f"from {reg.address6} 7000 hole")
        assert str(target) in home.conntrack_entries()
        time.sleep(0.3)  # anything the firewall let through before "hole" has arrived by now
        seen = log.read_text()
        assert "other-port" not in seen and "other-host" not in seen, seen

        home.flush_conntrack()
        assert str(target) not in home.conntrack_entries()
        udp_send(reg, 7000, target, 40000, wait=0, data="after-flush")
        udp_send(reg, 7000, target, 40000, wait=0, data="hole-again")
        time.sleep(1.0)
        assert "after-flush" not in log.read_text(), "flush_conntrack left the IPv6 hole open"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_ipv6_only_and_ipv4_only_hosts() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED, ipv6=True)
        only6 = lab.add_peer("six", home, ipv6="only")
        public6 = lab.add_public_host("pub6", ipv6="only")
        only4 = lab.add_peer("four", home, ipv6=False)
        for host in (only6, public6):
            assert host.run("ip", "-4", "route", "show", "table", "main").stdout.strip() == ""
            assert host.run("ip", "-4", "-o", "addr", "show", "scope", "global").stdout == ""
            r = host.run(PY, "-c", SEND4, str(reg.address), check=False)
            assert r.returncode == 1 and r.stdout.strip() == "ENETUNREACH", r
            assert host.ping(reg.address6)
        assert only6.ping(public6.address6)
        assert not public6.ping(only6.address6)  # inbound to the home LAN: firewalled
        # IPv4-only behind a dual-stack router: no global IPv6 address, no IPv6 route out
        assert only4.address6 is None and only4.ping(reg.address)
        assert only4.run("ip", "-6", "-o", "addr", "show", "scope", "global").stdout == ""
        assert not only4.ping(reg.address6)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_hop_limit_2_leaves_its_router_and_dies_at_inet() -> None:
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        na = lab.add_nat("na", RouterKind.PORT_RESTRICTED, ipv6=True)
        nb = lab.add_nat("nb", RouterKind.PORT_RESTRICTED, ipv6=True)
        a, b = lab.add_peer("a", na), lab.add_peer("b", nb)

        def expired_at(dst: object, hops: int) -> str | None:
            out = a.ping_run(dst, hop_limit=hops).stdout
            m = re.search(r"From (\S+) icmp_seq=\d+ Time (?:exceeded|to live exceeded)", out)
            return m.group(1) if m else None

        assert expired_at(reg.address6, 2) == "2001:db8::1"  # inet, one hop past a's router
        assert a.ping(reg.address6, hop_limit=3)
        assert expired_at(b.address6, 2) == "2001:db8::1"  # never reaches nb
        assert expired_at(b.address6, 3) == str(nb.wan_ip6)  # reaches nb, dies there
        # the same on IPv4, for comparison
        assert expired_at(reg.address, 2) == "203.0.113.1"
        assert a.ping(reg.address, hop_limit=3)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_packet_too_big_crosses_the_firewall() -> None:
    """Path MTU discovery: the link between the inet router and reg is 1280 bytes; the router's
    ICMPv6 packet-too-big must reach a through a's firewall, or a never learns the path MTU."""
    with lab_for_test() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        na = lab.add_nat("na", RouterKind.PORT_RESTRICTED, ipv6=True)
        a = lab.add_peer("a", na)
        route = run(["ip", "-n", lab.inet, "-6", "route", "get", str(reg.address6)]).stdout
        link = route.split(" dev ", 1)[1].split()[0]
        run(["ip", "-n", lab.inet, "link", "set", link, "mtu", "1280"])
        reg.run("ip", "link", "set", "eth0", "mtu", "1280")  # a veth drops what exceeds its MTU
        assert "mtu" not in a.run("ip", "-6", "route", "get", str(reg.address6)).stdout
        # -M want: fragment at the source once the path MTU is known (ping -6 defaults to "do")
        out = a.run("ping", "-6", "-n", "-M", "want", "-c", "3", "-i", "0.2", "-W", "1",
                    "-s", "1400", str(reg.address6), check=False, timeout=15).stdout  # fmt: skip
        assert "Packet too big: mtu=1280" in out, out
        assert "mtu 1280" in a.run("ip", "-6", "route", "get", str(reg.address6)).stdout, out
        assert "1408 bytes from" in out, out  # the later pings fragment and get answers


def hand_link6(a: WgIface, b: WgIface, keepalive: int = 25) -> None:
    """Both sides at once get the other's key, tunnel address and IPv6 endpoint (its own global
    address: no NAT66) with its listen port."""
    for me, other in ((a, b), (b, a)):
        endpoint = f"[{other.host.address6}]:{other.listen_port}"
        me.add_peer(other.public_key, f"{other.tunnel_address}/32", endpoint, keepalive)


@pytest.mark.netns
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", [True, "only"], ids=["dual-stack", "ipv6-only"])
def test_wireguard_over_ipv6_through_two_home_firewalls(mode: bool | str) -> None:
    """Behind two symmetric IPv4 NATs (no direct IPv4 path without a relay), both sides set the
    other's IPv6 endpoint at once: the first initiation opens its own firewall and is dropped by
    the far one, the far side's then matches that flow; the tunnel works."""
    with lab_for_test() as lab:
        na = lab.add_nat("na", RouterKind.SYMMETRIC, ipv6=True)
        nb = lab.add_nat("nb", RouterKind.SYMMETRIC, ipv6=True)
        a = lab.add_peer("a", na, ipv6=mode)  # type: ignore[arg-type]
        b = lab.add_peer("b", nb, ipv6=mode)  # type: ignore[arg-type]
        wa = a.start_wireguard(listen_port=51820, address="100.64.0.1/24")
        wb = b.start_wireguard(listen_port=51821, address="100.64.0.2/24")
        hand_link6(wa, wb)
        start = time.monotonic()
        while not a.ping(wb.tunnel_address, timeout=0.5):
            assert time.monotonic() - start < 10, f"no ping across the tunnel\n{wa.show()}"
        assert b.ping(wa.tunnel_address)
        assert wa.latest_handshake(wb.public_key) > 0
        assert wa.endpoint_of(wb.public_key) == f"[{b.address6}]:51821"
        assert wb.endpoint_of(wa.public_key) == f"[{a.address6}]:51820"
