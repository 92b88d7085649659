"""Real secondaries from Debian's packages, started by the test on loopback high ports: Knot
(knotd), NSD and BIND 9 (named) each transfer the registrar's zone with TSIG, serve a new
peer's SRV within 2 s of its registration (driven by NOTIFY: the SOA says refresh 60 s), drop a
withdrawn peer as fast, and catch up by IXFR after being stopped while peers changed. A
transfer without the right key is refused (asked with Knot's kdig). The registrar runs in
process; the secondaries are ended by their PID."""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from nacl.public import PrivateKey

from tests.procs import Client, free_port
from wgmesh.proto.dnssd import ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label
from wgmesh.proto.tsigkey import parse_key_file
from wgmesh.registry.server import Registrar, RegistrarSettings
from wgmesh.registry.xfr import XfrSettings

SECRET = "d9NM5is+ktHzOPgemJzYquzcHtJML+IH1tvzNUGY8q8="
KEY_NAME = "xfr.mesh.test"
KEY = parse_key_file(f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};')
ORIGIN = "mesh.test."
BINARIES = {"knot": "knotd", "nsd": "nsd", "bind": "named"}

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
remote:
  - id: primary
    address: 127.0.0.1@{primary}
    key: {key}
acl:
  - id: notify_from_primary
    address: 127.0.0.1
    key: {key}
    action: notify
template:
  - id: default
    storage: "{dir}/zones"
    zonefile-sync: 0
zone:
  - domain: mesh.test
    master: primary
    acl: notify_from_primary
"""
NSD_CONF = """\
server:
    ip-address: 127.0.0.1@{port}
    do-ip6: no
    zonesdir: "{dir}"
    database: ""
    zonelistfile: "{dir}/zone.list"
    xfrdfile: "{dir}/xfrd.state"
    xfrdir: "{dir}"
    pidfile: "{dir}/nsd.pid"
    username: ""
    chroot: ""
    logfile: "{dir}/nsd.log"
    verbosity: 2
    server-count: 1
    zonefiles-write: 1
remote-control:
    control-enable: no
key:
    name: "{key}"
    algorithm: hmac-sha256
    secret: "{secret}"
zone:
    name: "mesh.test"
    zonefile: "mesh.test.zone"
    allow-notify: 127.0.0.1 {key}
    request-xfr: 127.0.0.1@{primary} {key}
"""
BIND_CONF = """\
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
key "{key}" {{
    algorithm hmac-sha256;
    secret "{secret}";
}};
zone "mesh.test" {{
    type secondary;
    file "mesh.test.zone";
    masterfile-format text;
    primaries {{ 127.0.0.1 port {primary} key "{key}"; }};
    allow-notify {{ 127.0.0.1; }};
    request-ixfr yes;
    notify no;
}};
"""
CONFS = {"knot": KNOT_CONF, "nsd": NSD_CONF, "bind": BIND_CONF}
# in the foreground; named -g also logs to stderr, -4 leaves IPv6 alone, -n 1: one worker thread
ARGV = {"knot": ["knotd", "-c"], "nsd": ["nsd", "-d", "-c"],
        "bind": ["named", "-g", "-4", "-n", "1", "-c"]}  # fmt: skip


@dataclass
class Secondary:
    """A knotd or nsd in its own directory, on 127.0.0.1:port."""

    kind: str
    dir: Path
    port: int
    primary: int = 0
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        assert self.proc is None
        (self.dir / "db").mkdir(parents=True, exist_ok=True)  # Knot's journal and timers
        conf = self.dir / f"{self.kind}.conf"
        conf.write_text(CONFS[self.kind].format(dir=self.dir, port=self.port,
                                                primary=self.primary, key=KEY_NAME,
                                                secret=SECRET))  # fmt: skip
        log = self.dir / f"{self.kind}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen([*ARGV[self.kind], str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def stop(self) -> None:
        """SIGTERM to its PID (SIGKILL after 10 s), and wait for it."""
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

    async def on_disk(self, serial: int) -> bool:
        """The secondary's zone file holds ``serial`` (NSD writes it every second: stopped
        before, it would restart from an older zone than its transfer state says it has, and
        fall back to AXFR; Knot writes at once). BIND writes the zone file after an AXFR but
        commits each IXFR to its journal (the file's .jnl) before serving it, and dumps the
        file only later; it restarts from the file rolled forward by the journal, so either
        may hold ``serial``."""
        path = self.dir / ("zones/mesh.test.zone" if self.kind == "knot" else "mesh.test.zone")
        try:
            text = path.read_text()
        except OSError:
            return False
        fields = text.partition("SOA")[2].replace("(", " ").split()  # MNAME RNAME SERIAL ...
        if len(fields) > 2 and fields[2] == str(serial):
            return True
        return self.kind == "bind" and await journal_end(Path(f"{path}.jnl")) == serial

    def log(self) -> str:
        own = [p.read_text(errors="replace") for p in self.logs if p.exists()]
        nsd = self.dir / "nsd.log"
        return "\n".join(own + ([nsd.read_text(errors="replace")] if nsd.exists() else []))


async def journal_end(path: Path) -> int | None:
    """The last serial committed to a BIND journal (``named-journalprint -x``: "End serial = N"
    from its header), None without one (named-journalprint then says nothing of the kind)."""
    proc = await asyncio.create_subprocess_exec(
        "named-journalprint", "-x", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    for line in out.decode(errors="replace").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "End serial" and value.strip().isdigit():
            return int(value)
    return None


async def ask(port: int, qname: str, rdtype: str) -> dns.message.Message | None:
    """The secondary's answer (None: it does not answer yet)."""
    q = dns.message.make_query(qname, rdtype)
    try:
        return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError):
        return None


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Seconds until ``check()`` held (asked every 20 ms, at most ``timeout`` seconds)."""
    start = time.monotonic()
    for _ in range(int(timeout / 0.02) + 1):
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def name_of(key: bytes) -> str:
    return f"{key_label(key)}._wireguard._udp.{ORIGIN}"


@dataclass
class Mesh:
    registrar: Registrar
    secondary: Secondary
    keys: Path
    admitted: dict[bytes, str]
    clients: dict[str, Client] = field(default_factory=dict)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(f"127.0.0.1:{self.registrar.stun_ports[0]}")

    async def register(self, name: str) -> Client:
        private = PrivateKey.generate()
        client = Client(bytes(PrivateKey(self.registrar.settings.private_key).public_key),
                        private)  # fmt: skip
        self.admitted[client.key] = name
        self.write_keys()
        self.registrar.reload()
        await asyncio.to_thread(client.register, self.endpoint, name=name)
        self.clients[name] = client
        return client

    def withdraw(self, name: str) -> bytes:
        client = self.clients.pop(name)
        del self.admitted[client.key]
        self.write_keys()
        self.registrar.reload()  # revoked: withdrawn at once
        client.close()
        return client.key

    def write_keys(self) -> None:
        self.keys.write_text("".join(f"{encode_key(k)} {n}\n" for k, n in self.admitted.items()))

    async def serial_served(self) -> int | None:
        r = await ask(self.secondary.port, ORIGIN, "SOA")
        if r is None or r.rcode() != dns.rcode.NOERROR or not r.answer:
            return None
        return int(r.answer[0][0].serial)

    async def in_sync(self) -> bool:
        return await self.serial_served() == self.registrar.zone.serial

    async def served(self, key: bytes) -> bool:
        r = await ask(self.secondary.port, name_of(key), "SRV")
        return r is not None and r.rcode() == dns.rcode.NOERROR and bool(r.answer)

    async def gone(self, key: bytes) -> bool:
        r = await ask(self.secondary.port, name_of(key), "SRV")
        return r is not None and r.rcode() == dns.rcode.NXDOMAIN


@pytest.fixture(params=["knot", "nsd", "bind"])
async def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mesh]:
    kind = request.param
    if shutil.which(BINARIES[kind]) is None:
        pytest.skip(f"needs {BINARIES[kind]} (apt-get install knot nsd bind9)")
    secondary = Secondary(kind, tmp_path / kind, free_port())
    keys = tmp_path / "authorized_keys"
    keys.write_text("")
    settings = RegistrarSettings(
        zone=ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "hostmaster.mesh.test.",
                        ns_addresses=("127.0.0.1",)),
        private_key=bytes(PrivateKey.generate()), listen="127.0.0.1", stun_port=0,
        stun_alt_port=0, dns_port=0, state_dir=tmp_path / "state", authorized_keys=keys,
        log_counters=0,
        xfr=XfrSettings((Endpoint.parse(f"127.0.0.1:{secondary.port}"),), KEY),
    )  # fmt: skip
    registrar = await Registrar.start(settings)
    secondary.primary = registrar.dns_port
    m = Mesh(registrar, secondary, keys, {})
    try:
        yield m
    finally:
        secondary.stop()
        for client in m.clients.values():
            client.close()
        await registrar.close()


async def test_a_secondary_follows_the_registrar(mesh: Mesh) -> None:
    m, s = mesh, mesh.secondary
    stats = m.registrar.xfr.stats if m.registrar.xfr is not None else None
    assert stats is not None
    alice = await m.register("alice")
    s.start()
    try:
        await until(m.in_sync, 15, "the first transfer")
    except AssertionError:
        raise AssertionError(s.log()) from None
    assert stats.axfr + stats.ixfr_full >= 1 and stats.tsig_failed == 0
    assert await m.served(alice.key)

    # a new peer: served within 2 s of its registration (the SOA refresh is 60 s: NOTIFY)
    for name in ("bob", "carol"):
        registered = time.monotonic()
        client = await m.register(name)
        key = client.key
        took = await until(lambda: m.served(key), 2.0, f"{name} at the secondary")  # noqa: B023
        assert time.monotonic() - registered <= 2.0, (name, took, s.log())
    r = await ask(s.port, name_of(client.key), "SRV")  # as wgsd-client reads it
    assert r is not None and r.answer[0].rdtype == dns.rdatatype.SRV
    assert r.additional and r.additional[0].rdtype == dns.rdatatype.A

    # a withdrawn peer: gone as fast
    withdrawn = time.monotonic()
    bob = m.withdraw("bob")
    await until(lambda: m.gone(bob), 2.0, "bob withdrawn at the secondary")
    assert time.monotonic() - withdrawn <= 2.0
    await until(m.in_sync, 2.0, "the secondary at the registrar's serial")

    # stopped while peers change: it catches up by IXFR once it is back
    before = (stats.axfr, stats.ixfr, stats.ixfr_full)
    await until(lambda: s.on_disk(m.registrar.zone.serial), 5, "the zone on the secondary's disk")
    s.stop()
    dave = await m.register("dave")
    carol = m.withdraw("carol")
    serial = m.registrar.zone.serial
    for _ in range(100):  # both published (the serial interval) and on disk
        if m.registrar._stored_serial == m.registrar.zone.serial != serial:
            break
        await asyncio.sleep(0.05)
    s.start()
    try:
        await until(m.in_sync, 15, "catching up")
    except AssertionError:
        raise AssertionError(s.log()) from None
    assert await m.served(dave.key) and await m.gone(carol) and await m.served(alice.key)
    kinds = (stats.axfr, stats.ixfr, stats.ixfr_full)
    assert kinds[1] > before[1] and kinds[::2] == before[::2], (before, stats, s.log())
    assert stats.tsig_failed == 0 and stats.refused_address == stats.refused_unsigned == 0
    notifies = m.registrar.xfr.notifier.stats if m.registrar.xfr is not None else None
    assert notifies is not None and notifies.acknowledged >= 4  # the secondary answers them


@pytest.mark.skipif(shutil.which("kdig") is None, reason="needs kdig (knot-dnsutils)")
async def test_a_transfer_without_the_right_key_is_refused(mesh: Mesh) -> None:
    port = mesh.registrar.dns_port

    async def kdig(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "kdig", "@127.0.0.1", "-p", str(port), "+time=2", "+retry=0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        return out.decode()

    right = await kdig("-y", f"hmac-sha256:{KEY_NAME}:{SECRET}", ORIGIN, "AXFR")
    assert "SOA" in right and "ns1.mesh.test." in right, right
    unsigned = await kdig(ORIGIN, "AXFR")
    assert "REFUSED" in unsigned and "\tSOA\t" not in unsigned, unsigned
    wrong = await kdig("-y", f"hmac-sha256:{KEY_NAME}:{'A' * 43}=", ORIGIN, "AXFR")
    assert "NOTAUTH" in wrong or "BADSIG" in wrong or "failed" in wrong, wrong
    assert "\tSOA\t" not in wrong
    stats = mesh.registrar.xfr.stats if mesh.registrar.xfr is not None else None
    assert stats is not None and stats.axfr == 1 and stats.refused_unsigned == 1
    assert stats.tsig_failed == 1


def test_the_example_secondary_configs_are_valid_and_share_the_key() -> None:
    """examples/knot-secondary.conf, nsd-secondary.conf and bind-secondary.conf pass their
    servers' own checks and hold the secret of examples/xfr.key (what --tsig-key reads)."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    key = parse_key_file((examples / "xfr.key").read_text())
    secret = base64.b64encode(key.secret).decode()
    for conf, check in (("knot-secondary.conf", ["knotc", "-c"]),
                        ("nsd-secondary.conf", ["nsd-checkconf"]),
                        ("bind-secondary.conf", ["named-checkconf"])):  # fmt: skip
        path = examples / conf
        assert secret in path.read_text() and key.name.rstrip(".") in path.read_text()
        if shutil.which(check[0]) is not None:
            argv = [*check, str(path)] + (["conf-check"] if check[0] == "knotc" else [])
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stdout + out.stderr
