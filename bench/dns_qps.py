"""DNS queries per second: the registrar's DNS path against Knot DNS, same zone, same run.

A zone of N peers (PTR, two SRV, TXT, two A each) is built from a seed and served by
(1) knotd from a zone file and (2) wgmesh's Zone + DNS adapter on uvloop (the registrar's code
path), each on loopback. dnsperf sends random SRV/TXT lookups for the peers to each for
--seconds (after one untimed warm-up pass over the query file, for both); we print qps and each server's CPU microseconds per query (from /proc), and the
ratio. Target (issue 6): >= 0.9x Knot.

    python bench/dns_qps.py --peers 10000 --seconds 10

Bounded: two dnsperf runs of --seconds each, loopback only; both servers are ended by PID.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wgmesh.proto.dnssd import Candidate, PublishedPeer, Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label
from wgmesh.proto.kinds import CandidateKind

ORIGIN = "mesh.test."


def peers(n: int, seed: int) -> list[PublishedPeer]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = rng.randbytes(32)
        port = 1024 + rng.randrange(60000)
        pub = Endpoint.parse(f"198.51.{100 + (i >> 16) % 2}.{(i >> 8) & 255}:{port}")
        lan = Endpoint.parse(f"10.{(i >> 8) & 255}.{i & 255}.7:{port}")
        cands = (Candidate(pub, CandidateKind.PUBLIC, 0), Candidate(lan, CandidateKind.LAN, 10))
        out.append(PublishedPeer(key, f"p{i}", cands, (f"100.64.{i >> 8 & 255}.{i & 255}/32",),
                                 "cone", 1_800_000_000))  # fmt: skip
    return out


def zone_config() -> ZoneConfig:
    return ZoneConfig(ORIGIN, ("ns1.mesh.test.",), "hostmaster.mesh.test.",
                      ns_addresses=("127.0.0.1",), cache_size=200_000)  # fmt: skip


def knot_zone(ps: list[PublishedPeer]) -> str:
    lines = [f"$ORIGIN {ORIGIN}", "$TTL 5",
             "@ SOA ns1.mesh.test. hostmaster.mesh.test. 1 60 30 3600 5",
             "@ NS ns1.mesh.test.", "ns1 A 127.0.0.1"]  # fmt: skip
    for p in ps:
        # master-file escape: Knot's parser does not take a bare '=' (the base32 padding)
        name = key_label(p.key).replace("=", "\\=") + "._wireguard._udp"
        pub, lan = p.candidates
        lines += [
            f"_wireguard._udp PTR {name}",
            f"{name} SRV 0 0 {pub.endpoint.port} {name}",
            f"{name} SRV 10 0 {lan.endpoint.port} lan1.{name}",
            f'{name} TXT "txtvers=1" "pub={encode_key(p.key)}" "allowed={p.allowed_ips[0]}" '
            f'"name={p.name}" "nat={p.nat}" "since={p.since}"',
            f"{name} A {pub.endpoint.ip}",
            f"lan1.{name} A {lan.endpoint.ip}",
        ]
    return "\n".join(lines) + "\n"


def serve(port: int, n: int, seed: int) -> None:
    """The wgmesh side: the registrar's Zone and DNS adapter, on uvloop."""
    import asyncio

    import uvloop

    from wgmesh.proto.rrl import RrlConfig
    from wgmesh.registry.dns import DnsLimits, start_dns

    z = Zone(zone_config())
    for p in peers(n, seed):
        z.upsert(p)
    # dnsperf sends from one address: a limit no run reaches, so the limiter still runs per query
    limits = DnsLimits(rrl=RrlConfig(rate=1e9, burst=1e9))

    async def main() -> None:
        await start_dns(z, "127.0.0.1", port, limits)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_udp(port: int, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=1",
                            "+tries=1", name, "SRV"], capture_output=True, text=True)  # fmt: skip
        if r.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} does not answer {name}")


def dnsperf(port: int, qfile: Path, seconds: int, pid: int) -> tuple[float, float]:
    # one untimed pass over the query file first: the steady state of a registrar is answering
    # questions it was asked before (daemons re-ask every probe interval), i.e. a warm cache
    subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-n", "1",
                    "-c", "4", "-q", "200"], capture_output=True, timeout=300)  # fmt: skip
    before = cpu_seconds(pid)
    r = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
                        "-l", str(seconds), "-c", "4", "-q", "200"],
                       capture_output=True, text=True, timeout=seconds + 60)  # fmt: skip
    used = cpu_seconds(pid) - before
    m = re.search(r"Queries per second:\s+([\d.]+)", r.stdout)
    done = re.search(r"Queries completed:\s+(\d+)", r.stdout)
    if not m or not done:
        raise RuntimeError(f"dnsperf failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    return float(m.group(1)), used * 1e6 / max(1, int(done.group(1)))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.peers, args.seed)
        return 0
    if not shutil.which("knotd") or not shutil.which("dnsperf"):
        print("needs knotd (Debian: knot) and dnsperf", file=sys.stderr)
        return 2
    ps = peers(args.peers, args.seed)
    work = Path(tempfile.mkdtemp(prefix="wgmesh-dnsbench-"))
    rng = random.Random(args.seed + 1)
    qfile = work / "queries"
    qfile.write_text("".join(
        f"{key_label(rng.choice(ps).key)}._wireguard._udp.{ORIGIN} {rng.choice(['SRV', 'TXT'])}\n"
        for _ in range(20000)
    ))  # fmt: skip
    probe = f"{key_label(ps[0].key)}._wireguard._udp.{ORIGIN}"
    results = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        kport = free_port()
        (work / "mesh.test.zone").write_text(knot_zone(ps))
        (work / "knot.conf").write_text(
            f"server:\n  listen: 127.0.0.1@{kport}\n  rundir: {work}\n"
            f"database:\n  storage: {work}\n"
            f"zone:\n  - domain: mesh.test\n    file: {work}/mesh.test.zone\n    storage: {work}\n"
        )
        knot = subprocess.Popen(["knotd", "-c", str(work / "knot.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(knot)
        wait_udp(kport, probe)
        results["knot"] = dnsperf(kport, qfile, args.seconds, knot.pid)
        knot.send_signal(signal.SIGTERM)
        knot.wait(10)
        wport = free_port()
        ours = subprocess.Popen([sys.executable, __file__, "--serve", str(wport),
                                 "--peers", str(args.peers), "--seed", str(args.seed)],
                                stdout=subprocess.DEVNULL)  # fmt: skip
        procs.append(ours)
        wait_udp(wport, probe)
        results["wgmesh"] = dnsperf(wport, qfile, args.seconds, ours.pid)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)
    kq, kcpu = results["knot"]
    wq, wcpu = results["wgmesh"]
    print(
        f"zone: {args.peers} peers; {args.seconds} s of random SRV/TXT lookups each (dnsperf -c 4 -q 200)"
    )
    print(f"{'':10}{'qps':>12}{'CPU us/query':>15}")
    print(f"{'knot':10}{kq:12.0f}{kcpu:15.1f}")
    print(f"{'wgmesh':10}{wq:12.0f}{wcpu:15.1f}")
    print(f"ratio wgmesh/knot: {wq / kq:.2f}x qps, {wcpu / kcpu:.1f}x CPU per query")
    print(f"target >= 0.9x Knot: {'MET' if wq / kq >= 0.9 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
