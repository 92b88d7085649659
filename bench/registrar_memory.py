"""Registrar memory per peer: RSS growth divided by peers, records and answer caches included.

For each size N (100,000 and 1,000,000 by default), in a fresh process: N peers each send what a
daemon sends every probe round, a sealed Register from its WireGuard port and a sealed Watch
from its control socket, and, as the daemon does, a second Watch echoing the cookie of the
Status the first one got (return routability: only then is the source a watcher), through
`Registry.receive` (the registrar's code path: peer table with each peer's 32-byte shared key in
its row, watchers with theirs, published zone, rate limiter; default limits, but watchers capped
at N as `wgmesh registrar` caps them at --max-peers; `--max-watchers` sets another cap); then
every peer's SRV record is asked once (EDNS 1232, as daemons ask) so the wire-answer cache fills
to its cap. RSS is read after each stage. (Until 2026-12-03 the bench sent no echo, so from the
cookie change of 2026-12-01 on it measured no watchers at all: the "watchers" column said 0.)
`--rounds 2` repeats the probe round (the steady state: every record rewritten once);
`--dual` makes every peer register over IPv6 too (one mapping per family in each row).
Anchor, same run, own process: a plain dict of N slotted dataclasses with the same fields
(the issue's 0.6 KiB/peer reference). Target (issue 6): <= 1 KiB/peer, caches included;
issue 14: <= 0.9 KiB/peer at 100,000 and <= 0.5 at 1,000,000.

    python bench/registrar_memory.py                 # 100k and 1M, ~6 minutes
    python bench/registrar_memory.py --peers 100000  # one size
    python bench/registrar_memory.py --peers 100000 --dual
    python bench/registrar_memory.py --max-watchers 100000  # RegistryConfig's own default cap

Bounded: N * rounds * 3 datagrams and N queries per size, in process; no network.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey

from wgmesh.proto import sealed, stun
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import key_label
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import Admission, Registry, RegistryConfig

UNLIMITED = RateLimitConfig(rate=1e9, burst=1e9)
"""The benchmarks measure the work, not the limits (every message is from one source, at one
instant)."""

TARGET_KIB = 1.0
TARGETS_14 = {100_000: 0.9, 1_000_000: 0.5}
"""Issue 14's targets: KiB/peer with answers cached, per size."""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass(slots=True)
class Plain:
    key: bytes
    name: str
    endpoint: tuple[str, int]
    lan: tuple[str, int]
    since: float
    last_seen: float
    counter: int


def anchor(n: int) -> dict[str, float]:
    gc.collect()
    base = rss_kib()
    table = {}
    for i in range(n):
        key = os.urandom(32)
        table[key] = Plain(key, f"p{i}", (f"198.51.100.{i & 255}", 40000 + i % 20000),
                           (f"10.0.{(i >> 8) & 255}.{i & 255}", 51820), time.time(), time.time(), i)  # fmt: skip
    gc.collect()
    return {"anchor": (rss_kib() - base) / n}


def srv_query(key: bytes, qid: int) -> bytes:
    """``<label>._wireguard._udp.mesh.test. SRV`` with EDNS 1232, as the daemon's resolver asks."""
    name = f"{key_label(key)}._wireguard._udp.mesh.test".encode()
    qname = b"".join(bytes((len(label),)) + label for label in name.split(b".")) + b"\0"
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    return header + qname + b"\x00\x21\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


def ours(n: int, rounds: int, dual: bool = False, watchers: int | None = None) -> dict[str, float]:
    started = time.perf_counter()
    reg_priv = PrivateKey.generate()
    reg_key = bytes(reg_priv.public_key)
    now = time.time()
    gc.collect()
    base = rss_kib()
    zone = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test."))
    registry = Registry(
        RegistryConfig(
            rate_limit=UNLIMITED,
            agreement_limit=UNLIMITED,
            key_rate_limit=UNLIMITED,
            max_peers=n,
            max_watchers=n if watchers is None else watchers,
            expiry=1e9,
        ),
        sealed.Sealer(bytes(reg_priv)),
        Admission(open=True),
        zone,
        os.urandom,
        3478,
    )
    counter = int(now * 1_000_000)  # daemons count in microseconds of wall time
    for _ in range(rounds):
        # all Registers, then all Watches: each new peer is pushed to every watcher, so
        # interleaving them would cost N^2 / 2 sealed pushes (a fan-out this bench does not time)
        for kind in ("register", "register6", "watch"):
            if kind == "register6" and not dual:
                continue
            watch = kind == "watch"
            counter += 3  # a Watch may be followed by its echo (counter + 2)
            for i in range(n):
                # the peer's key from its index: the same peer again in every round
                peer = sealed.Sealer(i.to_bytes(4, "big") * 8)
                public = Endpoint.of(f"198.51.{100 + (i >> 16) % 2}.{(i >> 8) & 255}", 1024 + i % 60000)  # fmt: skip
                payload: sealed.Payload
                if watch:
                    payload = sealed.padded_watch(
                        sealed.Watch(int(now * 1000), counter + 1, counter)
                    )
                    public = Endpoint(public.ip, public.port + 1)  # its control socket
                else:
                    if kind == "register6":  # the same peer's IPv6 mapping
                        public = Endpoint.of(f"2001:db8:{i >> 16:x}::{i & 0xFFFF:x}", public.port)
                    lan = Endpoint.of(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 51820)
                    payload = sealed.Register(int(now * 1000), counter, f"p{i}", (lan,),
                                              "wgmesh/0.1.0", False)  # fmt: skip
                data = sealed.build_sealed_request(peer, peer.public_key, reg_key, payload,
                                                   os.urandom(12), os.urandom(24))  # fmt: skip
                out = registry.receive(data, public, 3478, now)
                if watch and out:  # as a daemon does: echo the Status's cookie at once
                    status = sealed.open_sealed(peer, stun.decode(out[0][0]), reg_key)[1]
                    if isinstance(status, sealed.Status) and not status.proven:
                        payload = sealed.padded_watch(sealed.Watch(
                            int(now * 1000), counter + 2, counter, status.cookie))  # fmt: skip
                        data = sealed.build_sealed_request(
                            peer, peer.public_key, reg_key, payload, os.urandom(12),
                            os.urandom(24))  # fmt: skip
                        registry.receive(data, public, 3478, now)
                if i % 1000 == 0:
                    registry.events()
            registry.events()
    per_round = n * (2 if dual else 1)
    assert len(registry.peers) == n and registry.counters["registered"] == per_round * rounds
    gc.collect()
    records = rss_kib() - base
    built = time.perf_counter() - started
    for qid, key in enumerate(registry.peers):
        zone.answer(srv_query(key, qid & 0xFFFF), tcp=False)
    gc.collect()
    total = rss_kib() - base
    return {
        "records": records / n,
        "total": total / n,
        "answers": len(zone._cache),
        "cache_mib": zone._cache.bytes / 2**20,
        "watchers": len(registry.watchers),
        "build_s": built,
        "all_s": time.perf_counter() - started,
    }


def child(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", type=int, action="append", help="a size (repeatable)")
    ap.add_argument("--rounds", type=int, default=1, help="probe rounds per peer (default 1)")
    ap.add_argument("--dual", action="store_true", help="every peer registers over IPv6 too")
    ap.add_argument(
        "--max-watchers",
        type=int,
        metavar="W",
        help="watcher cap (default: the peer count, as `wgmesh registrar` sets it)",
    )
    ap.add_argument("--child", choices=("ours", "anchor"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = args.peers or [100_000, 1_000_000]
    if args.child:
        n = sizes[0]
        result = (anchor(n) if args.child == "anchor"
                  else ours(n, args.rounds, args.dual, args.max_watchers))  # fmt: skip
        print(json.dumps(result))
        return 0
    print(f"{'peers':>10}{'records':>9}{'+answers':>10}{'anchor':>8}  KiB/peer; "
          f"{'answers cached':>15}{'watchers':>10}{'build s':>9}{'total s':>9}")  # fmt: skip
    met = True
    met_14: list[str] = []
    for n in sizes:
        plain = child(["--child", "anchor", "--peers", str(n)])["anchor"]
        extra = ["--dual"] if args.dual else []
        if args.max_watchers is not None:
            extra += ["--max-watchers", str(args.max_watchers)]
        r = child(["--child", "ours", "--peers", str(n), "--rounds", str(args.rounds), *extra])
        met = met and r["total"] <= TARGET_KIB
        if n in TARGETS_14:
            ok = r["total"] <= TARGETS_14[n]
            met_14.append(f"{n:,}: {r['total']:.3f} <= {TARGETS_14[n]} {'MET' if ok else 'MISSED'}")
        answers = f"{r['answers']:.0f} ({r['cache_mib']:.1f} MiB)"
        print(f"{n:>10,}{r['records']:9.3f}{r['total']:10.3f}{plain:8.2f}            "
              f"{answers:>15}{r['watchers']:10.0f}{r['build_s']:9.0f}{r['all_s']:9.0f}")  # fmt: skip
    print(f"target <= {TARGET_KIB:.0f} KiB/peer with answers cached: {'MET' if met else 'MISSED'}")
    for line in met_14:
        print(f"issue 14 target, KiB/peer with answers cached at {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
