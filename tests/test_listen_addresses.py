"""The registrar's listen addresses: ``--listen`` (repeatable; both wildcards by default), every
reply from the address its request came to, pushes by the way their destination came in.

The unit tests parse options, check the ``IPV6_V6ONLY`` rule, the ancillary data that sets a
reply's source, the reply-route table and the registrar's choice of socket (on loopback). The
``netns`` tests build their own two namespaces (``ip netns add wgmtest-<random>-s`` / ``-c``,
a veth between them; never linked to the root namespace): the server side holds two IPv4
addresses and two IPv6 ones, the real ``wgmesh registrar`` runs there on its default listen
addresses (then on ``--listen ::``), and a probe in the client namespace asks each address over
DNS (UDP and TCP), STUN (both ports, a CHANGE-REQUEST answered from the other port) and a sealed
registration, and reports which address and port each answer came from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from wgmesh.cli import registrar as cli
from wgmesh.cli.options import resolve
from wgmesh.errors import ConfigError
from wgmesh.proto import stun
from wgmesh.proto.dnssd import ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.registry import udpbatch
from wgmesh.registry.server import (
    Registrar,
    RegistrarSettings,
    ReplyRoutes,
    describe_listen,
)
from wgmesh.registry.udpbatch import BatchedUdp, pktinfo_control, v6only_for

ZONE = ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "hostmaster.mesh.test.")

# -- options ----------------------------------------------------------------------------------


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "registrar.key"
    path.write_text(encode_key(bytes(PrivateKey.generate())) + "\n")
    path.chmod(0o600)
    return path


def parse(tmp_path: Path, *argv: str, config: dict[str, Any] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "registrar")
    base = ["--zone", "mesh.test", "--private-key-file", str(key_file(tmp_path)), "--open",
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    if config is not None:
        path = tmp_path / "r.toml"
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        base += ["--config", str(path)]
    args = parser.parse_args([*base, *argv])
    return cli.settings_from(resolve(args, cli.DEFAULTS, cli.CHECKS))


def test_the_default_is_both_wildcards(tmp_path: Path) -> None:
    assert parse(tmp_path).listen == ("0.0.0.0", "::")


def test_listen_repeats_one_address_each(tmp_path: Path) -> None:
    s = parse(tmp_path, "--listen", "203.0.113.10", "--listen", "2001:db8::10")
    assert s.listen == ("203.0.113.10", "2001:db8::10")
    assert parse(tmp_path, "--listen", "::").listen == ("::",)


def test_a_config_file_gives_one_address_or_a_list(tmp_path: Path) -> None:
    assert parse(tmp_path, config={"listen": "192.0.2.1"}).listen == ("192.0.2.1",)
    both = parse(tmp_path, config={"listen": ["192.0.2.1", "2001:db8::1"]})
    assert both.listen == ("192.0.2.1", "2001:db8::1")
    flag = parse(tmp_path, "--listen", "198.51.100.1", config={"listen": ["192.0.2.1"]})
    assert flag.listen == ("198.51.100.1",)  # the flag overrides the file


@pytest.mark.parametrize(
    ("argv", "config", "message"),
    [(["--listen", "localhost"], None, "--listen: 'localhost' is not an IP address"),
     (["--listen", "192.0.2.1", "--listen", "192.0.2.1"], None,
      "--listen: 192.0.2.1 is listed twice"),
     (["--listen", "::", "--listen", "0::0"], None, "--listen: 0::0 (the same as ::) is listed"),
     ([], {"listen": []}, "listen: got an empty list"),
     ([], {"listen": ["192.0.2.1", "1.2.3"]}, "listen[1]: '1.2.3' is not an IP address"),
     ([], {"listen": 5}, "listen: got the integer 5")],
)  # fmt: skip
def test_bad_listen_values_are_named(
    tmp_path: Path, argv: list[str], config: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, *argv, config=config)
    assert message in str(caught.value)
    assert "; expected " in str(caught.value) and "IP address" in str(caught.value)


def test_help_explains_listen() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "registrar")
    text = " ".join(parser.format_help().split())
    assert "repeat for several" in text and "0.0.0.0 and ::" in text
    assert "leaves from the address its request came to" in text


def test_relaying_takes_the_first_concrete_ipv4_listen_address(tmp_path: Path) -> None:
    s = parse(tmp_path, "--listen", "2001:db8::10", "--listen", "0.0.0.0", "--listen",
              "203.0.113.10", "--relay-mode", "userspace")  # fmt: skip
    assert s.relay_address == "203.0.113.10"
    with pytest.raises(ConfigError, match="concrete IPv4 --listen"):
        parse(tmp_path, "--relay-mode", "userspace")  # the default: wildcards only


def test_settings_take_one_address_as_a_string_and_refuse_duplicates() -> None:
    base = {"zone": ZONE, "private_key": bytes(32)}
    assert RegistrarSettings(**base, listen="127.0.0.1").listen == ("127.0.0.1",)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        RegistrarSettings(**base, listen=("::", "::0"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RegistrarSettings(**base, listen=("nowhere",))  # type: ignore[arg-type]


# -- the socket rules -------------------------------------------------------------------------


def test_v6only_is_off_only_without_an_ipv4_address() -> None:
    assert v6only_for(["0.0.0.0", "::"]) is True
    assert v6only_for(["::", "203.0.113.10"]) is True
    assert v6only_for(["::"]) is False
    assert v6only_for(["2001:db8::10", "::"]) is False
    assert describe_listen(("0.0.0.0", "::")) == "0.0.0.0, [::] (IPv6 only)"
    assert describe_listen(("::",)) == "[::] (IPv6 and IPv4)"


def test_the_ancillary_data_names_the_source() -> None:
    v4 = socket.inet_pton(socket.AF_INET, "203.0.113.11")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::11")
    # in_pktinfo {ifindex 0, spec_dst = the source, addr (ignored on send)}
    assert pktinfo_control(False, v4) == (socket.IPPROTO_IP, 8, bytes(4) + v4 + bytes(4))
    # in6_pktinfo {addr, ifindex 0}; an IPv4 source on an IPv6 socket is given mapped
    assert pktinfo_control(True, v6) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, v6 + bytes(4))
    mapped = bytes(10) + b"\xff\xff" + v4
    assert pktinfo_control(True, v4) == (
        socket.IPPROTO_IPV6,
        socket.IPV6_PKTINFO,
        mapped + bytes(4),
    )


async def test_a_concrete_socket_reads_no_destination() -> None:
    sock = await udpbatch.bind_udp("127.0.0.1", 0)
    b = BatchedUdp(sock, lambda d, n: None)
    try:
        assert not b.pktinfo and b.current_local() == socket.inet_aton("127.0.0.1")
    finally:
        b.close()


def test_reply_routes_forget_the_oldest_when_full() -> None:
    routes = ReplyRoutes(2)
    a, b, c = (Endpoint.parse(f"192.0.2.{i}:4000") for i in (1, 2, 3))
    ep1, ep2 = object(), object()
    routes.note(a, ep1, b"A")  # type: ignore[arg-type]
    routes.note(b, ep2, b"B")  # type: ignore[arg-type]
    routes.note(a, ep2, b"A2")  # type: ignore[arg-type]  # a is the newest now, and moved
    routes.note(c, ep1, b"C")  # type: ignore[arg-type]
    assert routes.route(b) is None and routes.evicted == 1 and len(routes) == 2
    assert routes.route(a) == (ep2, b"A2") and routes.route(c) == (ep1, b"C")
    with pytest.raises(ValueError):
        ReplyRoutes(0)


def test_reply_routes_share_one_route_per_socket_and_local_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One route object per (socket, local address), however many peers and datagrams: the
    local address of each datagram is a new bytes object. Past the cap on shared routes an
    entry keeps its own, and every route still reads back what was noted."""
    monkeypatch.setattr(ReplyRoutes, "MAX_SHARED", 2)
    routes = ReplyRoutes(100)
    ep1, ep2 = object(), object()
    peers = [Endpoint.parse(f"192.0.2.{i}:{4000 + i}") for i in range(1, 40)]
    for i, peer in enumerate(peers):
        local = bytes(bytearray(b"L%d" % (i % 3)))  # a fresh object each time
        routes.note(peer, ep1 if i % 2 else ep2, local)  # type: ignore[arg-type]
    got = [routes.route(p) for p in peers]
    assert got == [(ep1 if i % 2 else ep2, b"L%d" % (i % 3)) for i in range(len(peers))]
    assert len({id(r) for r in got}) > 2  # six pairs, two of them shared
    first = got[0]
    assert sum(r is first for r in got) == sum(1 for r in got if r == first)
    v6 = Endpoint.parse("[2001:db8::7]:4000")
    routes.note(v6, ep1, b"6")  # type: ignore[arg-type]
    assert (
        routes.route(v6) == (ep1, b"6") and routes.route(Endpoint.parse("192.0.2.1:4000")) is None
    )


class Recorder(BatchedUdp):
    """A batched socket that only records what it is asked to send."""

    def __init__(self) -> None:  # no socket at all
        self.sent: list[tuple[bytes, tuple[str, int], bytes]] = []

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: Any, local: bytes = b"") -> None:
        self.sent.append((data, addr, local))


def loopback_settings(tmp_path: Path, listen: tuple[str, ...]) -> RegistrarSettings:
    return RegistrarSettings(
        zone=ZONE, private_key=bytes(PrivateKey.generate()),
        listen=listen, stun_port=0, stun_alt_port=0, dns_port=0, state_dir=tmp_path / "state",
        open_registration=True,
    )  # fmt: skip


async def test_pushes_leave_by_the_way_their_destination_came_in(tmp_path: Path) -> None:
    r = await Registrar.start(loopback_settings(tmp_path, ("127.0.0.1", "::1")))
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        assert len(r._transports) == 2 and len(r._dns._udps) == 2  # type: ignore[union-attr]
        port = r.stun_ports[0]
        assert {t.get_extra_info("sockname")[1] for t in r._transports} == {port}
        known = Endpoint.parse("192.0.2.7:4000")
        recorder = Recorder()
        r.routes.note(known, recorder, b"\xc0\x00\x02\x01")
        r.send([(b"push", known)])
        assert recorder.sent == [(b"push", ("192.0.2.7", 4000), b"\xc0\x00\x02\x01")]
        # no route known: the primary socket of the destination's family
        for s, host in ((v4, "127.0.0.1"), (v6, "::1")):
            s.bind((host, 0))
            s.settimeout(2)
            r.send([(b"to " + host.encode(), Endpoint.from_sockaddr(s.getsockname()))])
            data, source = await asyncio.to_thread(s.recvfrom, 100)
            assert data == b"to " + host.encode() and source[:2] == (host, port)
        # and the answer to a request goes back by its own socket, from its own address
        request = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12), ()))
        v6.sendto(request, ("::1", port))
        reply, source = await asyncio.to_thread(v6.recvfrom, 200)
        assert source[:2] == ("::1", port) and stun.decode(reply).msg_type == stun.BINDING_SUCCESS
        assert r.unroutable == 0
    finally:
        v4.close()
        v6.close()
        await r.close()


async def test_a_family_not_listened_on_is_unroutable(tmp_path: Path) -> None:
    r = await Registrar.start(loopback_settings(tmp_path, ("127.0.0.1",)))
    try:
        r.send([(b"push", Endpoint.parse("[2001:db8::7]:4000"))])
        assert r.unroutable == 1
        names = [f.name for f in r.metrics()]
        assert "wgmesh_registrar_unroutable" in " ".join(names)
    finally:
        await r.close()


# -- in namespaces: the real registrar on a host with two addresses per family ---------------

V4 = ("203.0.113.10", "203.0.113.11")
V6 = ("2001:db8::10", "2001:db8::11")
CLIENT4, CLIENT6 = "203.0.113.50", "2001:db8::50"

PROBE = r"""
import json, os, socket, sys, time
import dns.message, dns.query, dns.rcode
from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key

registrar_key = decode_key(sys.argv[1])
targets = sys.argv[2:]
out = {}

def udp(family):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2)
    return s

def source(addr):
    return [addr[0], addr[1]]

for host in targets:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    r = out[host] = {}
    q = dns.message.make_query("mesh.test.", "SOA")
    s = udp(family)  # not connected: an answer from another address is seen, and reported
    try:
        s.sendto(q.to_wire(), (host, 53))
        data, addr = s.recvfrom(4096)
        r["dns_udp"] = [source(addr), dns.rcode.to_text(dns.message.from_wire(data).rcode())]
    except OSError as exc:
        r["dns_udp"] = str(exc)
    try:
        a = dns.query.tcp(q, host, port=53, timeout=3)
        r["dns_tcp"] = dns.rcode.to_text(a.rcode())
    except Exception as exc:
        r["dns_tcp"] = repr(exc)
    for port in (3478, 3479):
        try:
            tid = os.urandom(12)
            s.sendto(stun.encode(stun.StunMessage(stun.BINDING_REQUEST, tid, ())), (host, port))
            data, addr = s.recvfrom(4096)
            m = stun.decode(data)
            mapped = stun.unpack_xor_address(m.get(stun.ATTR_XOR_MAPPED_ADDRESS), tid)
            r[f"stun_{port}"] = [source(addr), str(mapped.ip)]
        except OSError as exc:
            r[f"stun_{port}"] = str(exc)
    try:  # RFC 5780 change port: answered by the other port, from the same address
        attrs = ((stun.ATTR_CHANGE_REQUEST, stun.pack_change_request(stun.CHANGE_PORT)),)
        s.sendto(stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12), attrs)),
                 (host, 3478))
        data, addr = s.recvfrom(4096)
        r["change_port"] = source(addr)
    except OSError as exc:
        r["change_port"] = str(exc)
    try:  # a sealed registration and Watch: the Status goes out outside the batch
        private = os.urandom(32)
        sealer = sealed.Sealer(private)
        from nacl.public import PrivateKey
        key = bytes(PrivateKey(private).public_key)
        counter = time.time_ns() // 1000
        def box(payload):
            return sealed.build_sealed_request(sealer, key, registrar_key, payload,
                                               os.urandom(12), os.urandom(24))
        now = int(time.time() * 1000)
        s.sendto(box(sealed.Register(now, counter, "probe", (), "t", False)), (host, 3478))
        s.sendto(box(sealed.padded_watch(sealed.Watch(now, counter + 1, counter))), (host, 3478))
        data, addr = s.recvfrom(4096)
        _, status = sealed.open_sealed(sealer, stun.decode(data), registrar_key)
        r["register"] = [source(addr), type(status).__name__]
    except Exception as exc:
        r["register"] = repr(exc)
    s.close()
print(json.dumps(out))
"""


NOTIFY_PROBE = r"""
import json, os, select, socket, sys, time
import dns.message, dns.opcode, dns.query
from wgmesh.proto import sealed, stun
from wgmesh.proto.keys import decode_key
from nacl.public import PrivateKey

registrar_key, host, port = decode_key(sys.argv[1]), sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
listen = socket.socket(family, socket.SOCK_DGRAM)
listen.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
listen.setblocking(False)
records = list(dns.query.xfr(host, "mesh.test.", port=53, lifetime=5))  # from us, to `host`
while select.select([listen], [], [], 0.2)[0]:  # NOTIFYs sent before the transfer: not counted
    listen.recvfrom(4096)
private = os.urandom(32)
sealer, key = sealed.Sealer(private), bytes(PrivateKey(private).public_key)
s = socket.socket(family, socket.SOCK_DGRAM)
counter = time.time_ns() // 1000
box = sealed.build_sealed_request(sealer, key, registrar_key,
    sealed.Register(int(time.time() * 1000), counter, "probe", (), "t", False),
    os.urandom(12), os.urandom(24))
s.sendto(box, (host, 3478))  # a new peer: a new serial, NOTIFYed
got = None
deadline = time.monotonic() + 10
while got is None and time.monotonic() < deadline:
    if select.select([listen], [], [], 0.5)[0]:
        data, addr = listen.recvfrom(4096)
        m = dns.message.from_wire(data)
        if m.opcode() == dns.opcode.NOTIFY:
            got = [addr[0], len(records) > 0]
            listen.sendto(dns.message.make_response(m).to_wire(), addr)
print(json.dumps(got))
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


@contextmanager
def two_namespaces() -> Iterator[tuple[str, str]]:
    """A server namespace (V4 and V6 on one veth) and a client one, deleted in the end."""
    run = secrets.token_hex(4)
    server, client = f"wgmtest-{run}-s", f"wgmtest-{run}-c"
    made: list[str] = []
    try:
        for ns in (server, client):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", server, "link", "add", "vs", "type", "veth", "peer", "name", "vc",
           "netns", client)  # fmt: skip
        for a in V4:
            ip("-n", server, "addr", "add", f"{a}/24", "dev", "vs")
        for a in V6:
            ip("-n", server, "addr", "add", f"{a}/64", "dev", "vs", "nodad")
        ip("-n", client, "addr", "add", f"{CLIENT4}/24", "dev", "vc")
        ip("-n", client, "addr", "add", f"{CLIENT6}/64", "dev", "vc", "nodad")
        ip("-n", server, "link", "set", "vs", "up")
        ip("-n", client, "link", "set", "vc", "up")
        yield server, client
    finally:
        for ns in made:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True, timeout=10).stdout.split():  # fmt: skip
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)  # only what we started runs there
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@contextmanager
def registrar_in(
    ns: str, tmp: Path, *listen: str, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, Path]]:
    """The real ``wgmesh registrar`` in ``ns`` (``--listen`` for each of ``listen``, none: the
    default; then ``extra``); yields its public key and log, ends it by its PID."""
    private = PrivateKey.generate()
    key = tmp / "registrar.key"
    key.write_text(encode_key(bytes(private)) + "\n")
    key.chmod(0o600)
    log = tmp / "registrar.log"
    argv = [sys.executable, "-m", "wgmesh", "registrar", "--zone", "mesh.test", "--open",
            "--private-key-file", str(key), "--state-dir", str(tmp / "state"),
            "--log-counters", "0"]  # fmt: skip
    for a in listen:
        argv += ["--listen", a]
    argv += extra
    with log.open("ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while b" for zone " not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registrar did not start: {log.read_text()}")
            time.sleep(0.1)
        yield encode_key(bytes(private.public_key)), log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def probe(ns: str, key: str, targets: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, key, *targets],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    result: dict[str, dict[str, Any]] = json.loads(r.stdout)
    return result


def expect_answers_from_each(got: dict[str, dict[str, Any]], log: Path) -> None:
    for host, r in got.items():
        client = CLIENT6 if ":" in host else CLIENT4
        want = {
            "dns_udp": [[host, 53], "NOERROR"],
            "dns_tcp": "NOERROR",
            "stun_3478": [[host, 3478], client],
            "stun_3479": [[host, 3479], client],
            "change_port": [host, 3479],
            "register": [[host, 3478], "Status"],
        }
        assert r == want, f"{host}: {r}\n{log.read_text()}"


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_the_default_listen_answers_from_every_address(tmp_path: Path) -> None:
    """Four addresses, the registrar on its default (0.0.0.0 and ::): each answers itself."""
    with two_namespaces() as (server, client), registrar_in(server, tmp_path) as (key, log):
        assert "listening on 0.0.0.0, [::] (IPv6 only)" in log.read_text()
        expect_answers_from_each(probe(client, key, V4 + V6), log)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_listen_on_the_ipv6_wildcard_alone_serves_ipv4_too(tmp_path: Path) -> None:
    """``--listen ::``: dual-stack, TCP included, each answer from the address it was sent to."""
    with two_namespaces() as (server, client), registrar_in(server, tmp_path, "::") as (key, log):
        assert "listening on [::] (IPv6 and IPv4)" in log.read_text()
        expect_answers_from_each(probe(client, key, V4 + V6), log)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_notify_leaves_from_the_address_the_secondary_transferred_from(tmp_path: Path) -> None:
    """A secondary at the client transfers the zone from the second address: its NOTIFYs come
    from that address (a secondary takes NOTIFY only from its primary's address)."""
    secondary = ("--secondary", f"{CLIENT4}:5300", "--secondary", f"[{CLIENT6}]:5300")
    with (
        two_namespaces() as (server, client),
        registrar_in(server, tmp_path, extra=secondary) as (key, log),
    ):
        for host in (V4[1], V6[1]):
            r = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c",
                                NOTIFY_PROBE, key, host, "5300"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout) == [host, True], f"{r.stdout}\n{log.read_text()}"
