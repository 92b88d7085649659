"""Abuse of the registrar, in one run (issue 11): what a forged source can make it send, what a
legitimate peer still gets during floods, and what a push fan-out costs.

1. **DNS amplification** [real UDP on loopback; the DNS adapters (``start_dns``, the registrar's
   code path) in a child process]: the worst queries the zones can be asked (browses of zones
   of 1, 6 and 50 peers; SRV, ANY and TXT of a peer with 8 candidates; without EDNS and at EDNS
   4096; no cookie: an unproven source), each a flood from one source, against the server with
   its limits off (no rate limit, no size cap, no cookies) and with the default ``DnsLimits``;
   then the worst of them again at a rate just over the rate limit.
   Victim model: loopback holds all of 127.0.0.0/8. The victim is a UDP socket bound to an
   address that never sends; the flood carries that address as its source, written through a
   raw socket that writes its own IPv4 header (root). Without root the victim socket sends the
   flood itself (the output says so). Bytes in are the DNS messages sent, bytes out those that
   reached the victim; "wire" adds 28 bytes of IPv4 and UDP header to each. "After the burst"
   counts only queries sent once the default bucket (400) has run dry at that rate, plus 0.1 s.
2. **STUN amplification** [the real ``wgmesh registrar`` process, and the sans-IO ``Registry``
   with its rate limits off and on]: plain and RFC 3489 Binding Requests, Watches under an
   attacker's own key (``--open``) and junk Registers, all with the victim's source; then peers
   change, and Pushes are counted at a proven watcher (they flow) and at the victim.
3. **Service during floods**. DNS [real UDP]: a legitimate resolver asking as
   ``wgmesh.daemon.resolver`` does (EDNS 1232, a DNS cookie echoed, TC answered over TCP; 1 s
   timeout) 20 SRV lookups/s, from its own /24, while (a) one source floods at 5,000/s, (a')
   the same flood carries an address of the resolver's own /24 (lock-out), (b) 256 sources in
   256 /24s flood at 20,000/s in all (each under the rate limit).
   STUN [sans-IO ``Registry`` on a float clock: the real process would add only scheduling
   noise]: a legitimate daemon (``RegistrarClient`` probing every 0.25 s, 80x its default rate)
   while (c) junk carrying its source address arrives at 1,000/s (its own messages tampered so
   their boxes do not open, first contacts under random keys, garbage), (c') the same with its
   own captured messages replayed among them (what an on-path observer can send), (d) forged
   first contacts under random keys from many sources arrive at 5,000/s (2.5x the X25519
   budget). The flood is spread evenly in time and the daemons act at a random point of each
   millisecond. A new peer (no stored shared key: also any peer after a registrar restart)
   joining during each is reported too (no target).
4. **Push fan-out** [sans-IO]: 1,000 and 10,000 proven watchers that want every peer's changes
   (mesh mode: the most a change can cost), one peer changing its mapping: CPU, Pushes and bytes
   per change; then 20 changes/s for 10 s with the default ``push_delay`` (coalescing).

Targets (issue 11): amplification toward an unproven address <= 1x for pushes and <= 2x for DNS
once the limit engages; >= 99% of the legitimate peer's registrations and queries served during
the floods.

    python bench/abuse.py            # about 90 s
    python bench/abuse.py --quick    # about 25 s: shorter floods, 3 DNS queries, fewer changes

Bounded: every flood has a count and a time limit; loopback only; the child processes (DNS
server, registrar) are ended by their PID, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
from nacl.public import PrivateKey

from wgmesh.daemon.rawsend import udp_datagram
from wgmesh.proto import sealed, stun
from wgmesh.proto.client import ClientConfig, RegistrarClient, Via
from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import clamp_private_key, encode_key, key_label, public_key
from wgmesh.proto.kinds import CandidateKind, NatKind
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import Admission, Outgoing, Registry, RegistryConfig
from wgmesh.proto.rrl import RrlConfig
from wgmesh.registry.dns import DnsLimits, DnsServer, start_dns
from wgmesh.registry.udpbatch import BatchedUdp

ORIGIN = "mesh.example.com."
SERVICE = f"_wireguard._udp.{ORIGIN}"
ZONES = (1, 6, 50)
"""Peers in the three zones served: a browse without EDNS draws the most from one peer; 6 is the
most whose browse fits one unproven (512-byte) answer, and the most at EDNS 1232 too; 50 is a
browse that fits no UDP answer."""
LARGE = ZONES[-1]
VICTIM_PORT = 5300
HEADERS = 28  # IPv4 + UDP
IPV4 = struct.Struct("!BBHHHBBH4s4s")
UNLIMITED = RateLimitConfig(rate=1e9, burst=1e9)
RRL = RrlConfig()
PORT, ALT = 3478, 3479
REGISTRAR = Endpoint.of("203.0.113.1", PORT)
"""The registrar as the sans-IO daemons address it."""


class Targets:
    """The target lines, printed as they are checked and again at the end."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def check(self, what: str, shown: str, met: bool) -> None:
        line = f"target {what}: {shown}: {'MET' if met else 'MISSED'}"
        print(line)
        self.lines.append((line, met))


def ratio(out: float, inn: float) -> str:
    return f"{out / inn:.2f}x" if inn else "-"


def stop(procs: list[subprocess.Popen[Any]]) -> None:
    """End each child by its PID: SIGTERM, then SIGKILL after 5 s."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)


# -- DNS: the zones and the server child -------------------------------------------------------


def build_zone(n: int) -> tuple[Zone, list[bytes]]:
    """``n`` peers from a fixed seed, with 2 candidates each (public, LAN); in the large zone
    the first has 8 (public, 6 LAN, IPv6)."""
    rng = random.Random(11)
    zone = Zone(ZoneConfig(ORIGIN, (f"ns1.{ORIGIN}",), f"hostmaster.{ORIGIN}"))
    keys = []
    for i in range(n):
        key = rng.randbytes(32)
        cands = [Candidate(Endpoint.of(f"198.51.100.{i + 1}", 51820), CandidateKind.PUBLIC, 0)]
        cands += [Candidate(Endpoint.of(f"10.{i}.{j}.7", 51820), CandidateKind.LAN, 10)
                  for j in range(6 if i == 0 and n == LARGE else 1)]  # fmt: skip
        if i == 0 and n == LARGE:
            cands.append(Candidate(Endpoint.of("2001:db8::7", 51820), CandidateKind.IPV6, 5))
        zone.upsert(PublishedPeer(key, f"peer{i}", tuple(cands), (f"100.64.0.{i + 1}/32",),
                                  NatKind.CONE, 1_700_000_000))  # fmt: skip
        keys.append(key)
    return zone, keys


def server_stats(s: DnsServer) -> dict[str, Any]:
    out = dataclasses.asdict(s.stats)
    udp = s._udp
    if isinstance(udp, BatchedUdp):
        out["received"], out["sent"] = udp.stats.received, udp.stats.sent
    return out


def serve_dns(limits: str) -> int:
    """The child (``--serve-dns off|default``): serve each zone of ``ZONES`` on a port of its
    own, print the ports as JSON, print the servers' counters for each line read on stdin, and
    stop at EOF."""

    async def run() -> None:
        off = DnsLimits(rrl=RrlConfig(rate=0, amplification=0, cookies=False))
        servers = [await start_dns(build_zone(n)[0], "127.0.0.1", 0,
                                   off if limits == "off" else DnsLimits())
                   for n in ZONES]  # fmt: skip
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, "")

        threading.Thread(target=read, daemon=True).start()
        print(json.dumps([s.udp_port for s in servers]), flush=True)
        while await lines.get():
            print(json.dumps([server_stats(s) for s in servers]), flush=True)
        for s in servers:
            s.close()
            await s.wait_closed()

    asyncio.run(run())
    return 0


class DnsChild:
    """The DNS server child process; ``ports`` maps each zone's peer count to its port."""

    def __init__(self, limits: str, procs: list[subprocess.Popen[Any]]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-dns", limits],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(self.proc)
        self.ports = dict(zip(ZONES, json.loads(self._line(20)), strict=True))

    def _line(self, timeout: float) -> str:
        out = self.proc.stdout
        assert out is not None
        if not select.select([out], [], [], timeout)[0]:
            raise RuntimeError("the DNS server child did not answer")
        line = out.readline()
        if not line:
            raise RuntimeError(f"the DNS server child exited ({self.proc.poll()})")
        return line

    def stats(self, port: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        stats = json.loads(self._line(10))
        return dict(stats[list(self.ports.values()).index(port)])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# -- forged sources and victims ----------------------------------------------------------------


class Victim:
    """A UDP socket at a forged source address that never sends: counts what reaches it."""

    def __init__(self, ip: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((ip, port))
        self.sock.setblocking(False)
        self.bytes = self.count = self.tc = 0
        self.sizes: dict[int, int] = {}
        """DNS answer size by message ID (the flood numbers its queries)."""
        self.types: Counter[int] = Counter()
        """Datagrams by their first two bytes (a STUN message type)."""
        self.type_bytes: Counter[int] = Counter()

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            self.bytes += len(data)
            self.count += 1
            if len(data) >= 4:
                head = int.from_bytes(data[:2], "big")
                self.types[head] += 1
                self.type_bytes[head] += len(data)
                self.sizes[head] = len(data)
                self.tc += bool(data[2] & 0x02)


class Net:
    """Sends UDP datagrams with any 127/8 source: a raw socket writing its own IPv4 header
    (IPPROTO_RAW, root), else the victim socket itself (``spoofed`` False)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        try:
            self.raw: socket.socket | None = socket.socket(
                socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW
            )
        except PermissionError:
            self.raw = None
        self.spoofed = self.raw is not None
        self.loop = loop
        self.victims: dict[str, Victim] = {}
        self.send_failed = 0

    def victim(self, ip: str, port: int = VICTIM_PORT) -> Victim:
        v = self.victims.get(ip)
        if v is None:
            v = self.victims[ip] = Victim(ip, port)
            if self.loop is not None:
                self.loop.add_reader(v.sock.fileno(), v.drain)
        return v

    def prepare(self, src: Endpoint, dst: Endpoint, payload: bytes) -> tuple[str, bytes]:
        if self.raw is None:
            return str(src.ip), payload
        udp = udp_datagram(src, dst, payload)
        ip = IPV4.pack(0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                       src.ip.packed, dst.ip.packed)  # fmt: skip
        return str(src.ip), ip + udp

    def send(self, item: tuple[str, bytes], dst: Endpoint) -> None:
        try:
            if self.raw is not None:
                self.raw.sendto(item[1], (str(dst.ip), 0))
            else:
                self.victims[item[0]].sock.sendto(item[1], dst.sockaddr())
        except OSError:
            self.send_failed += 1

    def paced(self, items: list[tuple[str, bytes]], dst: Endpoint, rate: float) -> float:
        """Send ``items`` at ``rate``/s, due ones every 0.5 ms (run in a thread, so the flood
        is smooth while the event loop reads); bounded by twice their time plus 1 s. Returns
        the seconds it took."""
        start, sent, n = time.perf_counter(), 0, len(items)
        limit = 2 * n / rate + 1
        while sent < n and (elapsed := time.perf_counter() - start) < limit:
            due = min(n, int(elapsed * rate) + 1)
            for i in range(sent, due):
                self.send(items[i], dst)
            sent = due
            time.sleep(0.0005)
        return time.perf_counter() - start

    def close(self) -> None:
        for v in self.victims.values():
            if self.loop is not None:
                self.loop.remove_reader(v.sock.fileno())
            v.sock.close()
        if self.raw is not None:
            self.raw.close()


# -- DNS: amplification -------------------------------------------------------------------------


def query(name: str, rdtype: str, payload: int | None, cookie: bool = False) -> bytes:
    opts: list[dns.edns.Option] = [dns.edns.CookieOption(os.urandom(8), b"")] if cookie else []
    if payload is None:
        return dns.message.make_query(name, rdtype, use_edns=False).to_wire()
    return dns.message.make_query(name, rdtype, use_edns=0, payload=payload,
                                  options=opts).to_wire()  # fmt: skip


def worst_queries() -> list[tuple[str, int, bytes]]:
    """(what, the zone asked (its peer count), wire)."""
    eight = f"{key_label(build_zone(1)[1][0])}.{SERVICE}"  # in the 50-peer zone
    return [
        ("browse PTR, EDNS 4096, 6 peers", 6, query(SERVICE, "PTR", 4096)),
        ("browse PTR, no EDNS, 1 peer", 1, query(SERVICE, "PTR", None)),
        ("browse PTR, no EDNS, 6 peers", 6, query(SERVICE, "PTR", None)),
        ("browse PTR, EDNS 4096, 50 peers", 50, query(SERVICE, "PTR", 4096)),
        ("SRV, 8 candidates, EDNS 4096", LARGE, query(eight, "SRV", 4096)),
        ("ANY, 8 candidates, EDNS 4096", LARGE, query(eight, "ANY", 4096)),
        ("SRV, 8 cand., EDNS 4096, client cookie", LARGE, query(eight, "SRV", 4096, True)),
        ("TXT, 8 candidates, no EDNS", LARGE, query(eight, "TXT", None)),
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class Amp:
    """One amplification flood."""

    sent: int
    query: int
    answers: int
    tc: int
    out: int
    largest: int
    steady_in: int
    steady_out: int
    lost: int
    """Datagrams the server sent that did not reach the victim (its socket buffer)."""
    failed: int
    """Queries the raw socket did not take (ENOBUFS): counted in ``sent`` all the same."""


async def amp_flood(
    net: Net, child: DnsChild, port: int, wire: bytes, src: str, rate: float, seconds: float
) -> Amp:
    victim = net.victim(src)
    n = min(65536, int(rate * seconds))
    dst = Endpoint.of("127.0.0.1", port)
    source = Endpoint.of(src, VICTIM_PORT)
    items = [net.prepare(source, dst, struct.pack("!H", i) + wire[2:]) for i in range(n)]
    before, failed = child.stats(port), net.send_failed
    await asyncio.to_thread(net.paced, items, dst, rate)
    await asyncio.sleep(0.15)
    victim.drain()
    after = child.stats(port)
    sent_by_server = after.get("sent", 0) - before.get("sent", 0)
    engaged = RRL.burst / (rate - RRL.rate) + 0.1 if rate > RRL.rate else seconds
    first = int(rate * engaged)
    steady_out = sum(size for i, size in victim.sizes.items() if i >= first)
    return Amp(n, len(wire), victim.count, victim.tc, victim.bytes, max(victim.sizes.values(), default=0),
               max(0, n - first) * len(wire), steady_out, max(0, sent_by_server - victim.count),
               net.send_failed - failed)  # fmt: skip


def amp_row(what: str, a: Amp, steady: bool) -> str:
    wire_in = a.sent * (a.query + HEADERS)
    wire_out = a.out + a.answers * HEADERS
    row = (f"  {what:38}{a.query:5}{a.largest:6}{a.sent:7}{a.answers:7}{a.tc:6}"
           f"{ratio(a.out, a.sent * a.query):>9}{ratio(wire_out, wire_in):>8}"
           f"{ratio(a.largest, a.query):>9}")  # fmt: skip
    if steady:
        row += f"{ratio(a.steady_out, a.steady_in):>9}"
    return row + (f"  (lost {a.lost})" if a.lost else "") + (
        f"  (not sent {a.failed})" if a.failed else "")  # fmt: skip


async def dns_amplification(args: argparse.Namespace, procs: list[subprocess.Popen[Any]],
                            targets: Targets) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    net = Net(loop)
    queries = worst_queries()
    if args.quick:  # the largest answers with limits off, and with them
        queries = [queries[0], queries[1], queries[4]]
    print("\n== DNS amplification [real UDP on loopback; DNS adapters in a child process]")
    print("  victim: a socket at the flood's source address that never sends; the flood is "
          + ("forged through a raw socket" if net.spoofed else
             "sent by the victim socket itself (not root: no raw socket)"))  # fmt: skip
    print(f"  each flood: {args.amp_rate:,} queries/s for {args.amp_seconds:g} s from one fresh "
          "source (its own /24)")  # fmt: skip
    head = (f"  {'query (no cookie unless said)':38}{'q B':>5}{'ans B':>6}{'sent':>7}"
            f"{'answ':>7}{'TC':>6}{'out/in':>9}{'wire':>8}{'largest':>9}")  # fmt: skip
    worst_steady = 0.0
    near: Amp | None = None
    try:
        for k, limits in enumerate(("off", "default")):
            child = DnsChild(limits, procs)
            try:
                print(f"limits {limits}"
                      + (": rate 0, no size cap, no cookies" if limits == "off" else
                         f": DnsLimits() (rate {RRL.rate:g}/s, burst {RRL.burst:g}, slip "
                         f"{RRL.slip}; unproven answers <= {RRL.amplification:g}x the query, "
                         f"floor {RRL.amplification_floor})"))  # fmt: skip
                print(head + (f"{'after burst':>12}" if limits == "default" else ""))
                worst = (0.0, "", b"", 0)
                for i, (what, peers, wire) in enumerate(queries):
                    port = child.ports[peers]
                    a = await amp_flood(net, child, port, wire, f"127.10.{10 * k + i}.1",
                                        args.amp_rate, args.amp_seconds)  # fmt: skip
                    print(amp_row(what, a, limits == "default"))
                    if limits == "default":
                        worst_steady = max(worst_steady, a.steady_out / max(1, a.steady_in))
                        if a.largest / a.query > worst[0]:
                            worst = (a.largest / a.query, what, wire, port)
                if limits == "default":
                    near = await amp_flood(net, child, worst[3], worst[2], "127.10.99.1",
                                           args.near_rate, args.near_seconds)  # fmt: skip
                    print(
                        f"  the worst per answer again at {args.near_rate:,}/s for "
                        f"{args.near_seconds:g} s (just over the {RRL.rate:g}/s limit):"
                    )
                    print(amp_row(worst[1], near, True))
            finally:
                child.close()
    finally:
        net.close()
    assert near is not None
    print("  (out/in: DNS bytes; wire: with IPv4+UDP headers; largest: largest answer / query;"
          " after burst: only queries once the bucket ran dry)")  # fmt: skip
    targets.check(f"DNS <= 2x once the limit engages, flood of {args.amp_rate:,}/s",
                  f"worst {worst_steady:.2f}x after the burst", worst_steady <= 2.0)  # fmt: skip
    near_ratio = near.steady_out / max(1, near.steady_in)
    targets.check(f"DNS <= 2x once the limit engages, flood of {args.near_rate:,}/s",
                  f"{near_ratio:.2f}x after the burst (each answer up to "
                  f"{near.largest / near.query:.1f}x)", near_ratio <= 2.0)  # fmt: skip


# -- DNS: service during floods -----------------------------------------------------------------


class Resolver:
    """A legitimate resolver at ``source``, asking as wgmesh.daemon.resolver does: EDNS 1232
    with a DNS cookie (echoing the server's), RD off, a TC answer asked again over TCP."""

    def __init__(self, source: str, port: int, timeout: float = 1.0) -> None:
        self.source, self.port, self.timeout = source, port, timeout
        self.client, self.server = os.urandom(8), b""

    async def ask(self, name: str) -> str:
        """ "udp", "tcp" (after a TC answer) or "failed" (no answer in time, or no records)."""
        cookie = dns.edns.CookieOption(self.client, self.server)
        q = dns.message.make_query(name, "SRV", use_edns=0, payload=1232, options=[cookie])
        q.flags &= ~dns.flags.RD
        via = "udp"
        try:
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=self.port, source=self.source,
                                         timeout=self.timeout, ignore_unexpected=True)  # fmt: skip
            if r.flags & dns.flags.TC:
                via = "tcp"
                r = await dns.asyncquery.tcp(q, "127.0.0.1", port=self.port, source=self.source,
                                             timeout=self.timeout)  # fmt: skip
        except (dns.exception.DNSException, OSError):
            return "failed"
        for option in r.options:
            if isinstance(option, dns.edns.CookieOption) and option.client == self.client:
                self.server = option.server
        return via if r.answer else "failed"


async def dns_service(args: argparse.Namespace, procs: list[subprocess.Popen[Any]],
                      targets: Targets) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    net = Net(loop)
    child = DnsChild("default", procs)
    legit_ip = "127.30.0.1"
    name = f"{key_label(build_zone(2)[1][1])}.{SERVICE}"  # a peer with 2 candidates
    flood_wire = query(SERVICE, "PTR", None)  # about the worst per answer
    dst = Endpoint.of("127.0.0.1", child.ports[6])
    secs = args.service_seconds
    print("\n== DNS service during floods [real UDP on loopback; default DnsLimits]; floods "
          + ("forged through a raw socket" if net.spoofed else "sent by the victim sockets"))  # fmt: skip
    print(
        f"  legitimate resolver at {legit_ip}: 20 SRV lookups/s for {secs:g} s, EDNS 1232 "
        "with a cookie, TC -> TCP, 1 s timeout; the floods: unproven browses without EDNS"
    )
    print(f"  {'flood':44}{'q/s':>7}{'asked':>7}{'udp':>6}{'tcp':>6}{'fail':>6}{'served':>9}"
          f"{'flood out/in':>14}{'srv rcvd':>10}")  # fmt: skip
    scenarios = [("none (anchor)", [], 0),
                 ("(a) one source, another /24", ["127.40.0.1"], args.flood_rate),
                 ("(a') forged from the resolver's own /24", ["127.30.0.77"], args.flood_rate),
                 ("(b) 256 sources in 256 /24s", [f"127.50.{i}.1" for i in range(256)],
                  args.many_rate)]  # fmt: skip
    try:
        for label, sources, rate in scenarios:
            items = []
            n = int(rate * secs)
            for i in range(n):
                src = Endpoint.of(sources[i % len(sources)], VICTIM_PORT)
                net.victim(str(src.ip))
                items.append(net.prepare(src, dst, struct.pack("!H", i & 0xFFFF) + flood_wire[2:]))
            before = {ip: net.victims[ip].bytes for ip in sources}
            server = child.stats(dst.port).get("received", 0)
            resolver = Resolver(legit_ip, child.ports[6])
            flood = (
                asyncio.ensure_future(asyncio.to_thread(net.paced, items, dst, rate))
                if items
                else None
            )
            tasks = []
            start = loop.time()
            for k in range(int(20 * secs)):
                tasks.append(asyncio.ensure_future(resolver.ask(name)))
                await asyncio.sleep(max(0.0, start + (k + 1) / 20 - loop.time()))
            got = Counter(await asyncio.gather(*tasks))
            took = secs if flood is None else await flood
            await asyncio.sleep(0.2)
            out = sum(net.victims[ip].bytes - before[ip] for ip in sources)
            asked = len(tasks)
            server = child.stats(dst.port).get("received", 0) - server
            served = (got["udp"] + got["tcp"]) / asked
            print(f"  {label:44}{n / took:7,.0f}{asked:7}{got['udp']:6}{got['tcp']:6}{got['failed']:6}"
                  f"{served:9.1%}{ratio(out, n * len(flood_wire)):>14}{server / (n + asked):>10.2%}")  # fmt: skip
            if sources:
                targets.check(f">= 99% of legitimate DNS queries served, {label}",
                              f"{served:.1%}", served >= 0.99)  # fmt: skip
        rrl = child.stats(child.ports[6])["rrl"]
        print(f"  (srv rcvd: the UDP datagrams, flood and resolver's, that the server's socket took "
              f"in; below 100% the kernel dropped them there)\n  server, all floods: RRL answered "
              f"{rrl['answered']:,}, slipped {rrl['slipped']:,}, dropped {rrl['dropped']:,}; "
              f"valid cookies {rrl['cookie_good']:,}")  # fmt: skip
    finally:
        child.close()
        net.close()


# -- STUN/control: amplification ----------------------------------------------------------------


def register_msg(s: sealed.Sealer, reg_key: bytes, counter: int, now: float) -> bytes:
    payload = sealed.Register(int(now * 1000), counter, "p", (), "bench", False)
    return sealed.build_sealed_request(s, s.public_key, reg_key, payload, os.urandom(12),
                                       os.urandom(24))  # fmt: skip


def watch_msg(s: sealed.Sealer, reg_key: bytes, counter: int, now: float,
              cookie: bytes = bytes(16)) -> bytes:  # fmt: skip
    payload = sealed.padded_watch(sealed.Watch(int(now * 1000), counter, 0, cookie))
    return sealed.build_sealed_request(s, s.public_key, reg_key, payload, os.urandom(12),
                                       os.urandom(24))  # fmt: skip


def forged(size: int = 150) -> bytes:
    """A first contact under a random key: a random box that never opens (X25519 to find out)."""
    attrs = ((stun.ATTR_WG_PUBLIC_KEY, os.urandom(32)), (stun.ATTR_WG_SEALED, os.urandom(size)))
    return stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12), attrs))


def stun_shots(reg_key: bytes, now: float, n: int = 200) -> list[tuple[str, list[bytes], float]]:
    """(what, datagrams with the victim's source, seconds between them): Watches are paced
    under the per-source limit on first contacts (20/s), so each gets its answer."""
    mallory = sealed.Sealer(bytes(PrivateKey.generate()))
    watch = watch_msg(mallory, reg_key, 10_000, now)
    return [
        ("plain Binding Request (RFC 8489)",
         [stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12)), fingerprint=False)
          for _ in range(n)], 0.0),
        ("Binding Request, RFC 3489 (no cookie)",
         [struct.pack("!HH", stun.BINDING_REQUEST, 0) + os.urandom(16) for _ in range(n)], 0.0),
        ("Watch under the attacker's own key",
         [watch_msg(mallory, reg_key, 1000 + i, now) for i in range(20)], 0.06),
        ("one Watch replayed", [watch] * 20, 0.06),
        ("junk Register (random key and box)", [forged() for _ in range(n)], 0.0),
    ]  # fmt: skip


def shot_row(what: str, sent: int, inn: int, answers: int, out: int) -> str:
    return f"  {what:40}{sent:6}{inn:9,}{answers:7}{out:9,}{ratio(out, inn):>9}"


SHOT_HEAD = f"  {'datagram with the victim source':40}{'sent':>6}{'in B':>9}{'answ':>7}{'out B':>9}{'out/in':>9}"


def stun_sansio(limits: bool) -> tuple[list[str], int, int, int]:
    """The shots against the sans-IO Registry; then 20 peers appear. Rows, bytes the attacker
    sent with the victim's source, Pushes to the victim, Pushes to a proven watcher."""
    cfg = RegistryConfig() if limits else RegistryConfig(
        rate_limit=UNLIMITED, key_rate_limit=UNLIMITED, agreement_limit=UNLIMITED)  # fmt: skip
    registry, reg_key = make_registry(cfg)
    now = time.time()
    victim = Endpoint.of("192.0.2.200", VICTIM_PORT)
    rows, total_in = [], 0
    for what, datagrams, pace in stun_shots(reg_key, now):
        out = answers = 0
        for data in datagrams:
            now += pace or 0.0001
            replies = [d for d, a in registry.receive(data, victim, PORT, now) if a == victim]
            answers += len(replies)
            out += sum(map(len, replies))
        total_in += sum(map(len, datagrams))
        rows.append(shot_row(what, len(datagrams), sum(map(len, datagrams)), answers, out))
    watcher = LitePeer()
    watcher.prove(registry, reg_key, Endpoint.of("198.51.100.9", 40000), now)
    pushed: list[Outgoing] = []
    for i in range(20):
        now += 0.05
        p = LitePeer()
        pushed += registry.receive(register_msg(p.sealer, reg_key, 1, now),
                                   Endpoint.of(f"198.51.100.{20 + i}", 51820), PORT, now)  # fmt: skip
    pushed += registry.expire(now + 1)
    to_victim = sum(len(d) for d, a in pushed if a == victim)
    return rows, total_in, to_victim, sum(1 for _, a in pushed if a == watcher.source)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_ask(sock: socket.socket, data: bytes, dst: tuple[str, int], timeout: float = 2.0) -> bytes:
    sock.settimeout(timeout)
    sock.sendto(data, dst)
    return sock.recv(2048)


def stun_real(work: Path, procs: list[subprocess.Popen[Any]], targets: Targets) -> None:
    private = clamp_private_key(os.urandom(32))
    reg_key = public_key(private)
    key_file = work / "registrar.key"
    key_file.write_text(encode_key(private) + "\n")
    key_file.chmod(0o600)
    port = free_port()
    log = work / "registrar.log"
    with open(log, "ab") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "wgmesh", "registrar", "--zone", "mesh.test",
             "--private-key-file", str(key_file), "--listen", "127.0.0.1", "--stun-port",
             str(port), "--stun-alt-port", "0", "--dns-port", str(free_port()),
             "--state-dir", str(work / "state"), "--open"],
            stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
    dst = ("127.0.0.1", port)
    ping = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12)))
    deadline = time.monotonic() + 15
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while True:
            try:
                udp_ask(s, ping, dst, 0.2)
                break
            except OSError:
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    raise RuntimeError(f"registrar did not start: {log.read_text()}") from None
    net = Net()
    victim = net.victim("127.0.0.200", VICTIM_PORT + 1)
    source, registrar = Endpoint.of("127.0.0.200", VICTIM_PORT + 1), Endpoint.of(*dst)
    print("\n== STUN/control amplification [the real `wgmesh registrar --open` on loopback]")
    print(
        f"  victim {source}, a socket that never sends; the datagrams are "
        + ("forged through a raw socket" if net.spoofed else "sent by it (not root)")
    )
    print(SHOT_HEAD)
    total_in = 0
    try:
        for what, datagrams, pace in stun_shots(reg_key, time.time()):
            count, got = victim.count, victim.bytes
            for i, data in enumerate(datagrams):
                net.send(net.prepare(source, registrar, data), registrar)
                if pace or i % 50 == 49:
                    time.sleep(pace or 0.01)
            time.sleep(0.2)
            victim.drain()
            inn = sum(map(len, datagrams))
            total_in += inn
            print(shot_row(what, len(datagrams), inn, victim.count - count, victim.bytes - got))
        # a proven watcher (the cookie echoed, as a daemon does), then ten peers appear
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as w:
            w.bind(("127.0.2.1", 0))
            me = sealed.Sealer(bytes(PrivateKey.generate()))
            cookie = bytes(16)
            for c in (1, 2):
                reply = udp_ask(w, watch_msg(me, reg_key, c, time.time(), cookie), dst)
                status = sealed.open_sealed(me, stun.decode(reply), reg_key)[1]
                assert isinstance(status, sealed.Status)
                cookie, proven = status.cookie, status.proven
            assert proven, "the watcher was not proven"
            for i in range(10):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
                    p.bind((f"127.0.3.{i + 1}", 0))
                    p.sendto(register_msg(sealed.Sealer(bytes(PrivateKey.generate())), reg_key, 1,
                                          time.time()), dst)  # fmt: skip
                time.sleep(0.05)
            time.sleep(0.6)
            victim.drain()
            w.setblocking(False)
            pushes = 0
            while select.select([w], [], [], 0)[0]:
                pushes += w.recv(2048)[:2] == b"\x00\x11"
        to_victim = victim.types[stun.BINDING_INDICATION]
        print(f"  ten peers appeared: Pushes to the proven watcher {pushes}, to the victim "
              f"{to_victim}")  # fmt: skip
        targets.check("<= 1x push amplification toward an unproven address (real registrar)",
                      f"{to_victim} Pushes to the victim "
                      f"({ratio(victim.type_bytes[stun.BINDING_INDICATION], total_in)})",
                      to_victim == 0 and pushes > 0)  # fmt: skip
    finally:
        net.close()
    for limits in (False, True):
        rows, inn, to_victim, pushes = stun_sansio(limits)
        print(f"\n  [sans-IO Registry, float clock] rate limits {'default' if limits else 'off'}")
        print(SHOT_HEAD)
        print("\n".join(rows))
        print(f"  twenty peers appeared: Pushes to a proven watcher {pushes}, bytes of Pushes to "
              f"the victim {to_victim}")  # fmt: skip
        targets.check(f"<= 1x push amplification toward an unproven address (sans-IO, limits "
                      f"{'default' if limits else 'off'})", ratio(to_victim, inn),
                      to_victim <= inn and pushes > 0)  # fmt: skip


# -- STUN/control: service during floods [sans-IO] ----------------------------------------------


def make_registry(config: RegistryConfig) -> tuple[Registry, bytes]:
    private = clamp_private_key(os.urandom(32))
    zone = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test."))
    registry = Registry(config, sealed.Sealer(private), Admission(open=True), zone, os.urandom,
                        PORT)  # fmt: skip
    return registry, public_key(private)


class LitePeer:
    """A key and its Sealer, for watchers and changing peers."""

    def __init__(self) -> None:
        self.sealer = sealed.Sealer(bytes(PrivateKey.generate()))
        self.source = Endpoint.of("0.0.0.0", 0)

    def prove(self, registry: Registry, reg_key: bytes, source: Endpoint, now: float) -> None:
        """Watch, read the Status's cookie, Watch again echoing it: a push target."""
        self.source, cookie = source, bytes(16)
        for counter in (1, 2):
            out = registry.receive(watch_msg(self.sealer, reg_key, counter, now, cookie), source,
                                   PORT, now)  # fmt: skip
            status = sealed.open_sealed(self.sealer, stun.decode(out[0][0]), reg_key)[1]
            assert isinstance(status, sealed.Status)
            cookie, proven = status.cookie, status.proven
        assert proven


class Daemon:
    """A legitimate daemon's registrar protocol (RegistrarClient), pumped against a Registry
    with no delay; counts what it sent and what was served."""

    def __init__(self, registry: Registry, reg_key: bytes, wg: Endpoint, control: Endpoint,
                 now: float, probe: float) -> None:  # fmt: skip
        self.registry, self.wg, self.control = registry, wg, control
        self.client = RegistrarClient(ClientConfig(probe_interval=probe),
                                      bytes(PrivateKey.generate()), REGISTRAR, reg_key, now,
                                      os.urandom, alt_port=ALT, name="legit")  # fmt: skip
        self.counts: Counter[str] = Counter()
        self.joined: float | None = None
        self.captured: list[tuple[bytes, Endpoint]] = []

    def step(self, now: float) -> None:
        c, registry = self.client, self.registry
        if c.next_timer() <= now:
            c.handle_timer(now)
        for _ in range(10):  # a Status may ask for more at once (the cookie echo, a probe)
            sends = c.datagrams_to_send()
            if not sends:
                break
            for t in sends:
                src = self.wg if t.via is Via.WIREGUARD else self.control
                registered = registry.counters["registered"]
                out = registry.receive(t.data, src, t.destination.port, now)
                if len(self.captured) < 4:
                    self.captured.append((t.data, src))
                if t.via is Via.CONTROL:
                    self.counts["watch"] += 1
                    self.counts["watch_ok"] += any(a == self.control for _, a in out)
                elif t.destination.port == PORT:
                    self.counts["register"] += 1
                    if registry.counters["registered"] > registered:
                        self.counts["register_ok"] += 1
                        self.joined = now if self.joined is None else self.joined
                deliver(out, [self], now)
        c.events()


def deliver(out: list[Outgoing], daemons: list[Daemon], now: float) -> None:
    for data, addr in out:
        for d in daemons:
            if addr == d.control:
                d.client.receive(data, now)


def tampered(data: bytes) -> bytes:
    msg = stun.decode(data)
    attrs = tuple((t, v[:-1] + bytes([v[-1] ^ 1]) if t == stun.ATTR_WG_SEALED else v)
                  for t, v in msg.attributes)  # fmt: skip
    return stun.encode(stun.StunMessage(msg.msg_type, msg.transaction_id, attrs))


@dataclasses.dataclass(frozen=True, slots=True)
class ControlFlood:
    legit: Counter[str]
    joiner: Counter[str]
    joined: float | None
    cpu: float
    """Registry CPU seconds per simulated second spent on the flood."""
    agreements: float
    """X25519 steps per simulated second."""
    counters: dict[str, int]


def control_flood(kind: str, seconds: float) -> ControlFlood:
    """The legitimate daemon registers for 2 s, then ``seconds`` of flood ``kind`` ("", "c",
    "c'" or "d") on a float clock: the flood evenly spread, the daemons' turn at a random point
    of each millisecond; a new peer starts 1 s into the flood."""
    registry, reg_key = make_registry(RegistryConfig())
    t0 = time.time()
    victim_ip = "198.51.100.20"
    legit = Daemon(registry, reg_key, Endpoint.of(victim_ip, 51820), Endpoint.of(victim_ip, 40000),
                   t0, 0.25)  # fmt: skip
    daemons = [legit]

    def tick(now: float) -> None:
        timer = registry.next_timer()
        if timer is not None and timer <= now:
            deliver(registry.expire(now), daemons, now)
        for d in daemons:
            d.step(now)

    for ms in range(2000):
        tick(t0 + ms / 1000)
    legit.counts.clear()
    junk: list[tuple[bytes, Endpoint]] = []
    per_ms = {"": 0, "c": 1, "c'": 1, "d": 5}[kind]
    if kind.startswith("c"):  # with the daemon's address: boxes under its key tampered, junk
        for i in range(400):
            data, src = legit.captured[i % len(legit.captured)]
            junk += [(tampered(data), src), (forged(), Endpoint.of(victim_ip, 1024 + i)),
                     (os.urandom(60) if i % 2 else b"\0" * 1500, legit.wg)]  # fmt: skip
            if kind == "c'":  # and its own messages, replayed (an on-path observer)
                junk.append((data, src))
    elif kind == "d":  # forged first contacts from many sources
        junk = [(forged(), Endpoint.of(f"10.{i >> 8 & 255}.{i & 255}.{1 + i % 250}", 40000 + i))
                for i in range(4096)]  # fmt: skip
    wg = Endpoint.of(victim_ip, 51821) if kind.startswith("c") else Endpoint.of("192.0.2.77", 51820)
    x25519 = registry.sealer.agreements
    start, busy, joiner = t0 + 2.0, 0.0, None
    rng = random.Random(7)
    for ms in range(int(seconds * 1000)):
        base = start + ms / 1000
        if ms == 1000:
            joiner = Daemon(registry, reg_key, wg, Endpoint.of(str(wg.ip), 40001), base, 0.25)
            daemons.append(joiner)
        at, stepped = rng.random(), False  # the daemons' turn within this millisecond
        for j in range(per_ms):
            offset = (j + 0.5) / per_ms  # the flood evenly spread over the millisecond
            if not stepped and at < offset:
                tick(base + at / 1000)
                stepped = True
            data, src = junk[(ms * per_ms + j) % len(junk)]
            a = time.perf_counter()
            registry.receive(data, src, PORT, base + offset / 1000)
            busy += time.perf_counter() - a
        if not stepped:
            tick(base + at / 1000)
    assert joiner is not None
    joined = None if joiner.joined is None else joiner.joined - (start + 1.0)
    return ControlFlood(legit.counts, joiner.counts, joined, busy / seconds,
                        (registry.sealer.agreements - x25519) / seconds,
                        dict(registry.counters))  # fmt: skip


def control_service(args: argparse.Namespace, targets: Targets) -> None:
    secs = args.control_seconds
    print("\n== STUN/control service during floods [sans-IO Registry, float clock, defaults]")
    print(
        f"  a legitimate daemon (RegistrarClient, a probe round every 0.25 s) for {secs:g} s "
        "of each flood; a new peer starts during it"
    )
    print(f"  {'flood':46}{'Registers':>12}{'Watches':>12}{'flood CPU':>10}{'X25519/s':>9}"
          f"{'new peer':>11}")  # fmt: skip
    for kind, label in (("", "none (anchor)"),
                        ("c", "(c) junk with the daemon's address, 1,000/s"),
                        ("c'", "(c') the same and its messages replayed"),
                        ("d", "(d) forged first contacts, many sources, 5,000/s")):  # fmt: skip
        r = control_flood(kind, secs)
        lg = r.legit
        reg = lg["register_ok"] / max(1, lg["register"])
        wat = lg["watch_ok"] / max(1, lg["watch"])
        joined = "never" if r.joined is None else f"{r.joined:.2f} s"
        print(f"  {label:46}{lg['register_ok']:>5}/{lg['register']:<4}{reg:4.0%}"
              f"{lg['watch_ok']:>5}/{lg['watch']:<4}{wat:4.0%}{r.cpu:9.1%} {r.agreements:8.0f}"
              f"{joined:>11}")  # fmt: skip
        if kind:
            c = r.counters
            j = r.joiner
            print(f"      registry: rate_limited {c['rate_limited']:,}, agreement_limited "
                  f"{c['agreement_limited']:,}, key_limited {c['key_limited']:,}, bad_box {c['bad_box']:,}, replay {c['replay']:,}"
                  f"; the new peer's Registers served {j['register_ok']}/{j['register']}, "
                  f"Watches {j['watch_ok']}/{j['watch']}")  # fmt: skip
            targets.check(f">= 99% of the legitimate daemon's Registers and Watches served, "
                          f"{label}", f"{reg:.1%} and {wat:.1%}", min(reg, wat) >= 0.99)  # fmt: skip
    print("  (flood CPU: registry time on the flood per simulated second, one core; the new "
          "peer: seconds to its first accepted Register; no target)")  # fmt: skip


# -- push fan-out [sans-IO] ---------------------------------------------------------------------


def fanout(n: int, changes: int, burst: float) -> None:
    registry, reg_key = make_registry(RegistryConfig(rate_limit=UNLIMITED, key_rate_limit=UNLIMITED,
                                                     agreement_limit=UNLIMITED))  # fmt: skip
    now = time.time()
    t = time.perf_counter()
    for i in range(n):
        LitePeer().prove(registry, reg_key, Endpoint.of(f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}",
                                                        40000), now)  # fmt: skip
    setup = time.perf_counter() - t
    assert len(registry.watchers) == n
    mover, counter = LitePeer(), 0

    def change(at: float) -> tuple[list[Outgoing], float, int]:
        nonlocal counter
        counter += 1
        data = register_msg(mover.sealer, reg_key, counter, at)
        a = time.perf_counter()
        out = registry.receive(data, Endpoint.of("192.0.2.1", 1000 + counter), PORT, at)
        return out, time.perf_counter() - a, len(data)

    cost, pushes, out_bytes = 0.0, 0, 0
    for _ in range(changes):  # each after a quiet push_delay: pushed at once
        now += registry.config.push_delay + 0.05
        out, dt, size = change(now)
        cost += dt
        pushes += len(out)
        out_bytes += sum(len(d) for d, _ in out)
    print(f"  {n:6,} watchers (set up in {setup:.1f} s): a change costs "
          f"{cost / changes * 1e6:,.0f} us CPU and {pushes / changes:,.0f} Pushes of "
          f"{out_bytes / max(1, pushes):.0f} B, {out_bytes / changes / 1e6:.2f} MB per {size}-byte "
          f"Register ({out_bytes / changes / size:,.0f}x, toward proven watchers)")  # fmt: skip
    total, busy, k = 0, 0.0, 0
    begin = now + 1.0
    for k in range(int(20 * burst)):
        at = begin + k / 20
        timer = registry.next_timer()
        if timer is not None and timer <= at:  # the gathered changes (push_delay > 1/20 s)
            a = time.perf_counter()
            total += len(registry.expire(timer))
            busy += time.perf_counter() - a
        out, dt, _ = change(at)
        total, busy = total + len(out), busy + dt
    a = time.perf_counter()
    total += len(registry.expire(begin + burst + 1.0))
    busy += time.perf_counter() - a
    print(f"  {'':16}{20 * burst:.0f} changes in {burst:g} s (20/s), push_delay "
          f"{registry.config.push_delay:g} s: {total:,} Pushes ({total / n:.1f} per watcher, "
          f"{total / (k + 1):,.0f} per change; {(k + 1) * n:,} without coalescing), registry CPU "
          f"{busy:.2f} s ({busy / burst:.0%} of a core)")  # fmt: skip


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="about 25 s: shorter floods")
    ap.add_argument("--serve-dns", choices=("off", "default"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_dns:
        return serve_dns(args.serve_dns)
    q = args.quick
    args.amp_rate, args.amp_seconds = 2000, 0.4 if q else 1.5
    args.near_rate, args.near_seconds = (800, 1.2) if q else (400, 4.5)
    args.flood_rate, args.many_rate = 5000, 20000
    args.service_seconds = 1.0 if q else 5.0
    args.control_seconds = 6.0 if q else 30.0
    t0 = time.monotonic()
    targets = Targets()
    procs: list[subprocess.Popen[Any]] = []
    work = Path(tempfile.mkdtemp(prefix="wgmesh-abuse-"))
    took: list[str] = []

    def timed(name: str, t: float) -> None:
        took.append(f"{name} {time.monotonic() - t:.0f} s")

    try:
        t = time.monotonic()
        asyncio.run(dns_amplification(args, procs, targets))
        timed("DNS amplification", t)
        t = time.monotonic()
        asyncio.run(dns_service(args, procs, targets))
        timed("DNS service", t)
        t = time.monotonic()
        stun_real(work, procs, targets)
        stop(procs)
        timed("STUN amplification", t)
        t = time.monotonic()
        control_service(args, targets)
        timed("STUN service", t)
        t = time.monotonic()
        print("\n== Push fan-out [sans-IO Registry; watchers that want every peer (mesh mode)]")
        for n, changes, burst in ((1000, 20, 10.0), (10000, 2, 1.0) if q else (10000, 10, 10.0)):
            fanout(n, changes, burst)
        timed("fan-out", t)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    met = sum(m for _, m in targets.lines)
    print(f"\n== Summary: {met} of {len(targets.lines)} targets met; {time.monotonic() - t0:.0f} s "
          f"({', '.join(took)})")  # fmt: skip
    for line, _ in targets.lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
