"""Zone transfers to a Knot secondary: propagation time, IXFR size, and a 100,000-peer AXFR
against Knot transferring the same zone from a Knot primary, same run (issue 15).

1. Propagation: an in-process registrar (the real one: STUN registrations, SQLite, the DNS
   adapter) with a Knot secondary on loopback, TSIG on. --changes times, one after the other,
   a peer registers (half of them new peers, half moving to a new port): the time from sending
   the Register to the secondary answering the new SRV (asked every 2 ms). p50/p95/max; target
   p95 <= 2 s. Back-to-back changes (the default) are the worst case of the 1 s serial
   interval; with --gap above 1 s each change gets its serial at once.
2. IXFR bytes: what the secondary was sent per IXFR during (1), and the exact size of an IXFR
   of one changed peer (new, moved, withdrawn), TSIG included.
3. AXFR of --peers peers (default 100,000): the same zone served by wgmesh's Zone + DNS adapter
   (in process) and, from the zone file the first secondary wrote, by a Knot primary; a fresh
   Knot secondary transfers each, TSIG on both. The secondary's own transfer time (its log), the
   wall time until it answers at the new serial, and its memory (VmHWM, VmRSS) after.

    python bench/dns_transfer.py --changes 100 --peers 100000

Bounded: every wait has a deadline; loopback only; every knotd is ended by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
from nacl.public import PrivateKey

from wgmesh.proto import sealed, stun, xfr
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.journal import Change, Delta
from wgmesh.proto.keys import key_label
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.tsigkey import TsigKey
from wgmesh.registry.dns import start_dns
from wgmesh.registry.server import Registrar, RegistrarSettings
from wgmesh.registry.xfr import XfrService, XfrSettings

ORIGIN = "mesh.test."
KEY = TsigKey("xfr.mesh.test.", "hmac-sha256", os.urandom(32))
SECRET = base64.b64encode(KEY.secret).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def knot_conf(work: Path, port: int, primary: int | None, zonefile: Path | None) -> Path:
    """A knotd: secondary of 127.0.0.1@primary, or primary serving ``zonefile``."""
    (work / "db").mkdir(parents=True, exist_ok=True)
    text = (
        f'server:\n    rundir: "{work}"\n    listen: 127.0.0.1@{port}\n'
        f"log:\n  - target: stderr\n    any: info\n"
        f'database:\n    storage: "{work}/db"\n'
        f"key:\n  - id: xfr.mesh.test\n    algorithm: hmac-sha256\n    secret: {SECRET}\n"
    )
    if primary is not None:
        text += (
            f"remote:\n  - id: primary\n    address: 127.0.0.1@{primary}\n    key: xfr.mesh.test\n"
            f"acl:\n  - id: notify\n    address: 127.0.0.1\n    key: xfr.mesh.test\n"
            f"    action: notify\n"
            f'template:\n  - id: default\n    storage: "{work}/zones"\n    zonefile-sync: 0\n'
            f"zone:\n  - domain: mesh.test\n    master: primary\n    acl: notify\n"
        )
    else:
        assert zonefile is not None
        text += (
            f"acl:\n  - id: transfer\n    address: 127.0.0.1\n    key: xfr.mesh.test\n"
            f"    action: transfer\n"
            f'zone:\n  - domain: mesh.test\n    file: "{zonefile}"\n    acl: transfer\n'
            f'    storage: "{work}"\n'
        )
    conf = work / "knot.conf"
    conf.write_text(text)
    return conf


def start_knot(conf: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = conf.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(["knotd", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def memory(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    values = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", text, re.M))
    return int(values["VmHWM"]), int(values["VmRSS"])


async def soa_serial(port: int) -> int | None:
    try:
        r = await dns.asyncquery.udp(dns.message.make_query(ORIGIN, "SOA"), "127.0.0.1",
                                     port=port, timeout=0.5)  # fmt: skip
    except (dns.exception.Timeout, OSError):
        return None
    return int(r.answer[0][0].serial) if r.rcode() == 0 and r.answer else None


async def wait_serial(port: int, serial: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await soa_serial(port) == serial:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the secondary on {port} did not reach serial {serial} in {timeout} s")


class Peer:
    """A peer registering over a plain UDP socket (as tests/procs.py's Client)."""

    def __init__(self, registrar_key: bytes) -> None:
        self.private = PrivateKey.generate()
        self.key = bytes(self.private.public_key)
        self.sealer = sealed.Sealer(bytes(self.private))
        self.registrar_key = registrar_key
        self.counter = time.time_ns() // 1000
        self.sock = self._socket()

    @staticmethod
    def _socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        return s

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def move(self) -> None:
        """A new source port: the next registration changes the peer's endpoint."""
        self.sock.close()
        self.sock = self._socket()

    def register(self, dest: Endpoint) -> None:
        self.counter += 1
        registered = self.counter
        now = int(time.time() * 1000)
        for payload in (sealed.Register(now, registered, "bench", (), "t", False),
                        sealed.padded_watch(sealed.Watch(now, registered + 1, registered))):  # fmt: skip
            self.sock.sendto(self._sealed(payload), dest.sockaddr())
        self.counter += 1
        reply, _ = self.sock.recvfrom(2048)
        stun.decode(reply)

    def _sealed(self, payload: sealed.Payload) -> bytes:
        return sealed.build_sealed_request(
            self.sealer, self.key, self.registrar_key, payload, os.urandom(12), os.urandom(24)
        )


async def propagation(work: Path, changes: int, gap: float) -> dict[str, object]:
    secondary_port = free_port()
    settings = RegistrarSettings(
        zone=ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "hostmaster.mesh.test.",
                        ns_addresses=("127.0.0.1",)),
        private_key=bytes(PrivateKey.generate()), listen="127.0.0.1", stun_port=0,
        stun_alt_port=0, dns_port=0, state_dir=work / "state", open_registration=True,
        log_counters=0, xfr=XfrSettings((Endpoint.parse(f"127.0.0.1:{secondary_port}"),), KEY),
    )  # fmt: skip
    registrar = await Registrar.start(settings)
    assert registrar.xfr is not None
    stats = registrar.xfr.stats
    dest = Endpoint.parse(f"127.0.0.1:{registrar.stun_ports[0]}")
    registrar_key = bytes(PrivateKey(settings.private_key).public_key)
    proc, log = start_knot(knot_conf(work / "knot1", secondary_port, registrar.dns_port, None))
    try:
        await wait_serial(secondary_port, registrar.zone.serial, 30)
        peers: list[Peer] = []
        times: list[float] = []
        before = (stats.ixfr, stats.bytes)
        rng = random.Random(5)
        for i in range(changes):
            if peers and i % 2:
                peer = rng.choice(peers)
                peer.move()
            else:
                peer = Peer(registrar_key)
                peers.append(peer)
            qname = f"{key_label(peer.key)}._wireguard._udp.{ORIGIN}"
            sent = time.monotonic()
            await asyncio.to_thread(peer.register, dest)
            q = dns.message.make_query(qname, "SRV")
            for _ in range(2500):  # 5 s at most
                try:
                    r = await dns.asyncquery.udp(q, "127.0.0.1", port=secondary_port,
                                                 timeout=0.5)  # fmt: skip
                except dns.exception.Timeout:
                    continue
                if r.rcode() == dns.rcode.NOERROR and r.answer and r.answer[0][0].port == peer.port:
                    break
                await asyncio.sleep(0.002)
            else:
                raise RuntimeError(f"change {i} not at the secondary within 5 s: {log.read_text()}")
            times.append(time.monotonic() - sent)
            await asyncio.sleep(gap)
        ixfrs = stats.ixfr - before[0]
        ixfr_bytes = stats.bytes - before[1]
        for p in peers:
            p.sock.close()
    finally:
        stop(proc)
        await registrar.close()
    times.sort()
    return {
        "changes": changes, "p50": statistics.median(times),
        "p95": times[max(0, round(0.95 * len(times)) - 1)], "max": times[-1],
        "ixfrs": ixfrs, "bytes_per_ixfr": ixfr_bytes / max(1, ixfrs),
    }  # fmt: skip


def peers_of(n: int, seed: int) -> list[PublishedPeer]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        port = 1024 + rng.randrange(60000)
        pub = Endpoint.parse(f"198.51.{100 + (i >> 16) % 2}.{(i >> 8) & 255}:{port}")
        lan = Endpoint.parse(f"10.{(i >> 8) & 255}.{i & 255}.7:{port}")
        cands = (Candidate(pub, CandidateKind.PUBLIC, 0), Candidate(lan, CandidateKind.LAN, 10))
        out.append(PublishedPeer(rng.randbytes(32), f"p{i}", cands,
                                 (f"100.64.{i >> 8 & 255}.{i & 255}/32",), NatKind.CONE,
                                 1_800_000_000))  # fmt: skip
    return out


def ixfr_sizes() -> dict[str, int]:
    """Bytes (TSIG included) of an IXFR of one changed peer."""
    ps = peers_of(3, 1)
    z = Zone(ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "hostmaster.mesh.test."))
    for p in ps[:2]:
        z.upsert(p)
    z.publish(0.0)
    records = dict(z.published_peers())
    moved = PublishedPeer(ps[0].key, ps[0].name, (Candidate(Endpoint.parse("192.0.2.1:4000"),
                          CandidateKind.PUBLIC, 0), ps[0].candidates[1]), ps[0].allowed_ips,
                          ps[0].nat, ps[0].since)  # fmt: skip
    z.upsert(ps[2])
    new = z._peers[ps[2].key]
    z.upsert(moved)
    cases = {
        "new peer": Change(ps[2].key, None, new),
        "moved peer": Change(ps[0].key, records[ps[0].key], z._peers[ps[0].key]),
        "withdrawn peer": Change(ps[1].key, records[ps[1].key], None),
    }
    key = KEY.dns_key()
    out = {}
    for what, change in cases.items():
        plan = xfr.Plan(xfr.Kind.IXFR, 3, 2, deltas=(Delta(2, 3, (change,)),))
        size = sum(len(w) for w in xfr.messages(z, xfr.rrsets(z, plan), 1, (z.origin, xfr.IXFR)))
        out[what] = size + xfr.tsig_size(key)
    return out


async def axfr(work: Path, n: int) -> dict[str, dict[str, float]]:
    z = Zone(ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "hostmaster.mesh.test.",
                        ns_addresses=("127.0.0.1",), serial_interval=0))  # fmt: skip
    for p in peers_of(n, 7):
        z.upsert(p)
    z.publish(0.0)
    results: dict[str, dict[str, float]] = {}
    port2 = free_port()
    service = XfrService(z, XfrSettings((Endpoint.parse(f"127.0.0.1:{port2}"),), KEY))
    server = await start_dns(z, "127.0.0.1", 0, xfr=service)
    zonefile = work / "knot2" / "zones" / "mesh.test.zone"
    try:
        results["wgmesh primary"] = await _transfer(
            work / "knot2", port2, server.tcp_port, z.serial
        )
    finally:
        server.close()
        await server.wait_closed()
    for _ in range(600):  # the secondary wrote its zone file (zonefile-sync: 0)
        if zonefile.exists() and zonefile.stat().st_size > n * 100:
            break
        await asyncio.sleep(0.1)
    primary_port = free_port()
    conf = knot_conf(work / "knotp", primary_port, None, zonefile)
    primary, _ = start_knot(conf)
    try:
        deadline = time.monotonic() + 120
        while await soa_serial(primary_port) != z.serial:
            if time.monotonic() > deadline:
                raise RuntimeError("the Knot primary did not load the zone")
            await asyncio.sleep(0.1)
        results["knot primary"] = await _transfer(work / "knot3", free_port(), primary_port,
                                                  z.serial)  # fmt: skip
    finally:
        stop(primary)
    return results


async def _transfer(work: Path, port: int, primary: int, serial: int) -> dict[str, float]:
    proc, log = start_knot(knot_conf(work, port, primary, None))
    try:
        wall = await wait_serial(port, serial, 600)
        hwm, rss = memory(proc.pid)
        m = None
        for _ in range(100):
            m = re.search(r"AXFR, incoming.*finished, ([\d.]+) seconds, (\d+) messages, (\d+) bytes",
                          log.read_text())  # fmt: skip
            if m:
                break
            await asyncio.sleep(0.05)
        if m is None:
            raise RuntimeError(f"no AXFR in {log}: {log.read_text()[-2000:]}")
        return {"seconds": float(m.group(1)), "messages": int(m.group(2)),
                "bytes": int(m.group(3)), "wall": wall, "hwm_mib": hwm / 1024,
                "rss_mib": rss / 1024}  # fmt: skip
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds between two changes (0: back to back, the worst case of the "
        "serial interval; above 1 each change gets a serial at once)",
    )
    args = ap.parse_args()
    if not shutil.which("knotd"):
        print("needs knotd (Debian: knot)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="wgmesh-xfrbench-"))
    try:
        prop = asyncio.run(propagation(work, args.changes, args.gap))
        sizes = ixfr_sizes()
        full = asyncio.run(axfr(work, args.peers))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    spacing = f"{args.gap:g} s apart" if args.gap else "back to back"
    print(f"propagation, registration -> Knot secondary answers ({prop['changes']} changes, "
          f"{spacing}, half new peers, half moves):")  # fmt: skip
    print(f"  p50 {prop['p50']:.3f} s  p95 {prop['p95']:.3f} s  max {prop['max']:.3f} s  "
          f"target p95 <= 2 s: {'MET' if float(prop['p95']) <= 2 else 'MISSED'}")  # fmt: skip
    print(f"  {prop['ixfrs']} IXFRs, {prop['bytes_per_ixfr']:.0f} bytes each on average")
    print("IXFR of one changed peer (TSIG included): " +
          ", ".join(f"{k} {v} bytes" for k, v in sizes.items()))  # fmt: skip
    print(f"AXFR of {args.peers} peers to a fresh Knot secondary (TSIG):")
    print(f"  {'from':16}{'Knot s':>8}{'wall s':>8}{'messages':>10}{'MB':>8}"
          f"{'VmHWM MiB':>11}{'VmRSS MiB':>11}")  # fmt: skip
    for name, r in full.items():
        print(f"  {name:16}{r['seconds']:8.2f}{r['wall']:8.2f}{r['messages']:10.0f}"
              f"{r['bytes'] / 1e6:8.1f}{r['hwm_mib']:11.1f}{r['rss_mib']:11.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
