"""RFC 2136 mode against a real external primary: Knot (knotd, from Debian's package, started
by the test on loopback) holds the zone with records of its own; the registrar's updater keeps
the peers' records in it with TSIG-signed UPDATEs, and never touches what it did not write."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.update
import pytest

from tests.procs import free_port
from tests.test_dnssd import K1, K2, K3, peer
from wgmesh.proto.ddns import Updater
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import key_label
from wgmesh.proto.tsigkey import parse_key_file
from wgmesh.registry.ddns import UpdateService, UpdateSettings

SECRET = "d9NM5is+ktHzOPgemJzYquzcHtJML+IH1tvzNUGY8q8="
KEY_NAME = "ddns.mesh.test"
KEY = parse_key_file(f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};')
ORIGIN = "mesh.test."
K9 = bytes(range(9, 41))  # a key whose name someone else holds at the primary

KNOT_CONF = """\
server:
    rundir: "{dir}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{dir}/db"
key:
  - id: {key}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: registrar
    address: 127.0.0.1
    key: {key}
    action: [update, transfer]
template:
  - id: default
    storage: "{dir}/zones"
    zonefile-sync: 0
zone:
  - domain: mesh.test
    acl: registrar
"""

ZONE_FILE = f"""\
$ORIGIN mesh.test.
$TTL 300
@ SOA ns1.mesh.test. hostmaster.mesh.test. 100 3600 600 86400 60
@ NS ns1.mesh.test.
ns1 A 192.0.2.53
www A 192.0.2.80
_wireguard._udp PTR printer._wireguard._udp.mesh.test.
printer._wireguard._udp TXT "not wgmesh's"
{key_label(K9).replace("=", chr(92) + "=")}._wireguard._udp TXT "someone else's"
"""


@dataclass
class Knot:
    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, fresh: bool = True) -> None:
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        (self.dir / "zones").mkdir(parents=True, exist_ok=True)
        if fresh:
            (self.dir / "zones" / "mesh.test.zone").write_text(ZONE_FILE)
        conf = self.dir / "knot.conf"
        conf.write_text(KNOT_CONF.format(dir=self.dir, port=self.port, key=KEY_NAME,
                                         secret=SECRET))  # fmt: skip
        with (self.dir / "knot.log").open("ab") as out:
            self.proc = subprocess.Popen(["knotd", "-c", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    async def ask(self, qname: str, rdtype: str) -> dns.message.Message | None:
        q = dns.message.make_query(qname, rdtype)
        try:
            return await dns.asyncquery.udp(q, "127.0.0.1", port=self.port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            return None

    async def rdatas(self, qname: str, rdtype: str) -> set[str] | None:
        """The answer's rdata as text (None: no answer yet; empty: NXDOMAIN/NODATA)."""
        r = await self.ask(qname, rdtype)
        if r is None or r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        return {rd.to_text() for rrset in r.answer for rd in rrset}

    def log(self) -> str:
        path = self.dir / "knot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def name_of(key: bytes) -> str:
    return f"{key_label(key)}._wireguard._udp.{ORIGIN}"


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    start = time.monotonic()
    for _ in range(int(timeout / 0.05) + 1):
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def new_zone() -> Zone:
    return Zone(ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "hostmaster.mesh.test.",
                           ns_addresses=("192.0.2.53",), serial_interval=0.0))  # fmt: skip


@pytest.fixture
async def knot(tmp_path: Path) -> AsyncIterator[Knot]:
    if shutil.which("knotd") is None:
        pytest.skip("needs knotd (apt-get install knot; scripts/setup.sh installs it)")
    k = Knot(tmp_path / "knot", free_port())
    k.start()
    try:
        await until(lambda: _answers(k), 10, "knotd answers")
        yield k
    except BaseException:
        print(k.log())
        raise
    finally:
        k.stop()


async def _answers(k: Knot) -> bool:
    return bool(await k.rdatas(ORIGIN, "SOA"))


async def publish(zone: Zone, service: UpdateService) -> None:
    zone.publish(time.time() + 10.0)
    service.changed()


async def test_records_follow_the_peers_and_others_are_untouched(knot: Knot) -> None:
    zone = new_zone()
    zone.upsert(peer(K1))
    zone.upsert(peer(K9))
    zone.publish(time.time())
    service = UpdateService(zone, UpdateSettings(Endpoint.parse(f"127.0.0.1:{knot.port}"), KEY))
    service.start()
    srv = name_of(K1)
    try:
        await until(lambda: _has(knot, srv, "SRV", "0 0 51820 " + srv), 5, "K1's SRV")
        assert await knot.rdatas(srv, "A") == {"198.51.100.7"}
        ptrs = await knot.rdatas(f"_wireguard._udp.{ORIGIN}", "PTR")
        assert ptrs == {srv, f"printer._wireguard._udp.{ORIGIN}"}, ptrs
        # K9's name holds someone else's TXT: not added to, not replaced
        assert await knot.rdatas(name_of(K9), "TXT") == {'"someone else\'s"'}
        assert await knot.rdatas(name_of(K9), "SRV") == set()
        assert K9 in service.updater.conflicts
        # a change, then a withdrawal
        zone.upsert(peer(K1, port=51999))
        await publish(zone, service)
        await until(lambda: _has(knot, srv, "SRV", "0 0 51999 " + srv), 5, "K1's new port")
        zone.remove(K1)
        await publish(zone, service)
        await until(lambda: _gone(knot, srv), 5, "K1 withdrawn")
        ptrs = await knot.rdatas(f"_wireguard._udp.{ORIGIN}", "PTR")
        assert ptrs == {f"printer._wireguard._udp.{ORIGIN}"}, ptrs
        assert await knot.rdatas(f"www.{ORIGIN}", "A") == {"192.0.2.80"}
        assert await knot.rdatas(f"printer._wireguard._udp.{ORIGIN}", "TXT") == {'"not wgmesh\'s"'}
        assert service.updater.counters["applied"] >= 3
    finally:
        await service.close()


async def test_a_registrar_restart_resynchronises_from_the_primary(knot: Knot) -> None:
    """Before the restart K1 and K3 are written; the restarted registrar holds K1 (moved) and
    K2: K3 is deleted (its TXT carries its key: ours), K1 replaced, K2 added."""
    primary = Endpoint.parse(f"127.0.0.1:{knot.port}")
    zone = new_zone()
    for key in (K1, K3):
        zone.upsert(peer(key))
    zone.publish(time.time())
    first = UpdateService(zone, UpdateSettings(primary, KEY))
    first.start()
    try:
        await until(lambda: _has(knot, name_of(K3), "SRV", f"0 0 51820 {name_of(K3)}"), 5, "K3")
        await until(lambda: _has(knot, name_of(K1), "SRV", f"0 0 51820 {name_of(K1)}"), 5, "K1")
    finally:
        await first.close()
    zone = new_zone()
    zone.upsert(peer(K1, port=40000))
    zone.upsert(peer(K2))
    zone.publish(time.time())
    second = UpdateService(zone, UpdateSettings(primary, KEY))
    second.start()
    try:
        await until(lambda: _gone(knot, name_of(K3)), 5, "K3 deleted")
        await until(lambda: _has(knot, name_of(K1), "SRV", f"0 0 40000 {name_of(K1)}"), 5, "K1")
        await until(lambda: _has(knot, name_of(K2), "SRV", f"0 0 51820 {name_of(K2)}"), 5, "K2")
        ptrs = await knot.rdatas(f"_wireguard._udp.{ORIGIN}", "PTR")
        assert ptrs == {name_of(K1), name_of(K2), f"printer._wireguard._udp.{ORIGIN}"}, ptrs
        assert await knot.rdatas(name_of(K9), "TXT") == {'"someone else\'s"'}
    finally:
        await second.close()


async def test_an_unsigned_or_wrongly_signed_update_is_refused_and_counted(knot: Knot) -> None:
    wrong = parse_key_file(f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{"A" * 43}="; }};')
    zone = new_zone()
    zone.upsert(peer(K1))
    zone.publish(time.time())
    for key in (None, wrong):
        service = UpdateService(zone, UpdateSettings(Endpoint.parse(f"127.0.0.1:{knot.port}"),
                                                     key))  # fmt: skip
        service.start()
        try:
            await asyncio.sleep(1.5)
            assert await knot.rdatas(name_of(K1), "SRV") == set()
            assert service.updater.counters["applied"] == 0
        finally:
            await service.close()


def test_updates_carry_prerequisites_for_exactly_our_names() -> None:
    zone = new_zone()
    zone.upsert(peer(K1))
    zone.publish(time.time())
    u = Updater(zone)
    u.resync([])  # an empty primary
    (first,) = u.take()
    prereq = first.message.prerequisite
    assert {r.name.to_text() for r in prereq} == {name_of(K1), f"_alt.{name_of(K1)}",
                                                  f"lan0.{name_of(K1)}"} or prereq  # fmt: skip
    assert all(r.rdtype == dns.rdatatype.ANY and r.rdclass == dns.rdataclass.NONE for r in prereq)
    u.answered(first, dns.rcode.NOERROR)
    zone.upsert(peer(K1, port=51999))
    zone.publish(time.time() + 5)
    assert u.changed()
    (second,) = u.take()
    values = {(r.name.to_text(), r.rdtype) for r in second.message.prerequisite}
    assert (name_of(K1), dns.rdatatype.SRV) in values and (name_of(K1), dns.rdatatype.TXT) in values
    assert all(r.rdclass == dns.rdataclass.IN for r in second.message.prerequisite)
    assert not u.take()  # in flight: not twice


async def _has(knot: Knot, name: str, rdtype: str, value: str) -> bool:
    got = await knot.rdatas(name, rdtype)
    return got is not None and value in got


async def _gone(knot: Knot, name: str) -> bool:
    r = await knot.ask(name, "SRV")
    return r is not None and r.rcode() == dns.rcode.NXDOMAIN


_ = dns.update


async def test_the_registrar_command_keeps_the_primary_current(knot: Knot, tmp_path: Path) -> None:
    """``wgmesh registrar --update-primary ADDRESS:PORT --tsig-key FILE``, as an operator runs
    it: a registration appears in Knot's copy of the zone, a withdrawal (the key revoked,
    SIGHUP) leaves it, and Knot's own records stay."""
    from nacl.public import PrivateKey

    from tests.procs import Client, RegistrarProcess
    from wgmesh.proto.keys import encode_key

    key_file = tmp_path / "ddns.key"
    key_file.write_text(
        f'key "{KEY_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'
    )
    keys = tmp_path / "authorized_keys"
    private = PrivateKey.generate()
    peer_key = bytes(private.public_key)
    keys.write_text(f"{encode_key(peer_key)} alice 100.64.0.1/32\n")
    args = ["--authorized-keys", str(keys), "--update-primary", f"127.0.0.1:{knot.port}",
            "--tsig-key", str(key_file)]  # fmt: skip
    r = RegistrarProcess(tmp_path, args)
    await asyncio.to_thread(r.start)
    client = Client(r.key, private)
    try:
        await asyncio.to_thread(client.register, r.endpoint, "alice")
        srv = name_of(peer_key)
        await until(lambda: _has(knot, srv, "SRV", f"0 0 {client.port} {srv}"), 5, "SRV at Knot")
        assert await knot.rdatas(srv, "A") == {"127.0.0.1"}
        keys.write_text("")
        assert r.proc is not None
        r.proc.send_signal(signal.SIGHUP)
        await until(lambda: _gone(knot, srv), 5, "withdrawn at Knot")
        assert await knot.rdatas(f"www.{ORIGIN}", "A") == {"192.0.2.80"}
    finally:
        client.close()
        await asyncio.to_thread(r.stop)
        print(r.log.read_text())


def test_the_example_primary_config_is_valid() -> None:
    """examples/knot-primary-ddns.conf passes knotc's own check."""
    path = Path(__file__).resolve().parent.parent / "examples" / "knot-primary-ddns.conf"
    if shutil.which("knotc") is None:
        pytest.skip("needs knotc (apt-get install knot; scripts/setup.sh installs it)")
    out = subprocess.run(["knotc", "-c", str(path), "conf-check"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
