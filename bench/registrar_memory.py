"""Registrar memory per peer: RSS growth divided by peers, records and answer caches included.

N peers register through `Registry.receive` (the registrar's code path: tables, published zone,
shared-key cache), then every peer's SRV answer is asked once so the wire-answer cache holds N
answers. Anchor, in the same run (a second process): a plain dict of N slotted dataclasses with
the same fields (the issue's 0.6 KiB/peer reference). Target (issue 6): <= 1 KiB/peer.

    python bench/registrar_memory.py --peers 100000

Bounded: N registrations and N queries in process; no network.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
from nacl.public import PrivateKey

from wgmesh.proto import sealed
from wgmesh.proto.dnssd import Zone, ZoneConfig
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import key_label
from wgmesh.proto.ratelimit import RateLimitConfig
from wgmesh.proto.registry import Admission, Registry, RegistryConfig


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


def anchor(n: int) -> float:
    gc.collect()
    base = rss_kib()
    table = {}
    for i in range(n):
        key = os.urandom(32)
        table[key] = Plain(key, f"p{i}", (f"198.51.100.{i & 255}", 40000 + i % 20000),
                           (f"10.0.{(i >> 8) & 255}.{i & 255}", 51820), time.time(), time.time(), i)  # fmt: skip
    gc.collect()
    return (rss_kib() - base) / n


def ours(n: int) -> tuple[float, float]:
    reg_priv = PrivateKey.generate()
    reg_key = bytes(reg_priv.public_key)
    now = time.time()
    gc.collect()
    base = rss_kib()
    zone = Zone(ZoneConfig("mesh.test.", ("ns1.mesh.test.",), "h.mesh.test.", cache_size=n + 10))
    registry = Registry(
        RegistryConfig(rate_limit=RateLimitConfig(rate=1e9, burst=1e9), max_peers=n + 1, expiry=1e9),
        sealed.Sealer(bytes(reg_priv)), Admission(open=True), zone, os.urandom, 3478,
    )  # fmt: skip
    keys = []
    for i in range(n):
        peer = sealed.Sealer(bytes(PrivateKey.generate()))
        lan = Endpoint.of(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 51820)
        payload = sealed.Register(int(now * 1000), 1, f"p{i}", (lan,), "wgmesh/0.1.0", False)
        data = sealed.build_sealed_request(peer, peer.public_key, reg_key, payload,
                                           os.urandom(12), os.urandom(24))  # fmt: skip
        src = Endpoint.of(f"198.51.{100 + (i >> 16) % 2}.{(i >> 8) & 255}", 1024 + i % 60000)
        registry.receive(data, src, 3478, now)
        keys.append(peer.public_key)
        if i % 1000 == 0:
            registry.events()
    registry.events()
    gc.collect()
    records = (rss_kib() - base) / n
    for key in keys:
        q = dns.message.make_query(f"{key_label(key)}._wireguard._udp.mesh.test.", "SRV")
        zone.answer(q.to_wire(), tcp=False)
    assert zone.stats.cache_hits == 0 and len(zone._cache) == n
    del keys
    gc.collect()
    return records, (rss_kib() - base) / n


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", type=int, default=100000)
    ap.add_argument("--anchor", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.anchor:
        print(f"{anchor(args.anchor):.3f}")
        return 0
    plain = float(subprocess.run([sys.executable, __file__, "--anchor", str(args.peers)],
                                 capture_output=True, text=True, check=True).stdout)  # fmt: skip
    records, total = ours(args.peers)
    print(f"peers: {args.peers}")
    print(f"{'wgmesh: records + zone (no answers cached)':46}{records / 1:8.2f} KiB/peer")
    print(f"{'wgmesh: plus one cached SRV answer per peer':46}{total:8.2f} KiB/peer")
    print(f"{'anchor: dict of slotted dataclasses':46}{plain:8.2f} KiB/peer")
    print(
        f"ratio to anchor: {total / plain:.1f}x; target <= 1 KiB/peer: "
        f"{'MET' if total <= 1.0 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
