"""Watches answered per second on one core, through the registrar's sans-IO core (STUN read,
box open with the stored shared key, freshness, replay, cookie, row update, Status sealed and
encoded): each of N registered peers is a proven watcher and sends the Watch its daemon sends
every probe interval, from the control address it proved, echoing the last cookie.

Two measurements in the same run, round after round alternating so that the machine's drift
falls on both: the registry as it runs (the fast path for such Watches, wgmesh.proto.watchpath)
and the same registry with that path turned off, every Watch through the full path
(``Registry._watch``: the row unpacked into a PeerEntry, the Status built as a dataclass and
encoded). Anchor: the crypto floor of a Watch, opening its box and sealing a Status alone with
the shared key at hand. Both paths answer every Watch (checked: the counter of Statuses), and
the fast rounds take the fast path for every one of them (checked).

    python bench/watches.py                     # 20,000 watchers, 6 rounds: ~15 seconds
    python bench/watches.py --peers 200000      # past every cache, ~2 minutes

Bounded: peers Registers and peers * (rounds + 2) Watches, one round built in advance at a
time (untimed); no network. The bench's own objects are frozen during the timed rounds (gc.freeze, as in
bench/registrations.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
from typing import Any

from nacl.public import PrivateKey
from registrations import bench_registry, build, freeze_bench_objects  # bench/, the script's path

from wgmesh.proto import sealed, stun
from wgmesh.proto.endpoint import Endpoint


def watches(
    shared: list[bytes], keys: list[bytes], cookies: list[bytes], counter: int, now: float
) -> list[tuple[bytes, Endpoint, int]]:
    """One padded Watch per peer (interest: every peer), as its daemon sends it, from its
    control address, in a random order (a new one each round)."""
    order = list(range(len(keys)))
    random.Random(counter).shuffle(order)
    out = []
    for i in order:
        payload = sealed.padded_watch(
            sealed.Watch(int(now * 1000), counter, counter - 1, cookies[i], None)
        )
        data = sealed.build_sealed_with(shared[i], keys[i], payload, os.urandom(12),
                                        os.urandom(24))  # fmt: skip
        out.append((data, control(i), i))
    return out


def control(i: int) -> Endpoint:
    return Endpoint.of(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40001)


def learn(shared: bytes, out: list[tuple[bytes, Endpoint]]) -> bytes:
    """The cookie of the Status in ``out``."""
    (data, _), *_ = out
    box = stun.decode(data).get(stun.ATTR_WG_SEALED)
    assert box is not None
    msg = stun.decode(data)
    status = sealed.decode_payload(sealed.open_box(shared, box), msg.transaction_id)
    assert isinstance(status, sealed.Status)
    return status.cookie


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds, half of each path (>= 2)")
    args = ap.parse_args()
    if args.rounds < 2 or args.peers < 1:
        ap.error("--rounds must be at least 2 and --peers at least 1")
    reg_priv = PrivateKey.generate()
    reg_key = bytes(reg_priv.public_key)
    now = time.time()
    sealers = [sealed.Sealer(bytes(PrivateKey.generate())) for _ in range(args.peers)]
    keys = [s.public_key for s in sealers]
    shared = [s.shared_key(reg_key) or b"" for s in sealers]
    registry = bench_registry(reg_priv)
    steady = registry._steady_watch
    taken = 0

    def fast(*args: Any) -> Any:
        nonlocal taken
        out = steady(*args)
        taken += out is not None
        return out

    print(f"{args.peers} watchers, {args.rounds} timed rounds (built one at a time, untimed) ...",
          flush=True)  # fmt: skip
    for data, src in build(sealers, reg_key, 1000, now):  # registered (first contact)
        registry.receive(data, src, 3478, now)
    registry.events()
    cookies = [bytes(16)] * args.peers
    for counter in (3000, 3001):  # unproven (the cookie learnt), then proven
        for data, src, i in watches(shared, keys, cookies, counter, now):
            cookies[i] = learn(shared[i], registry.receive(data, src, 3478, now))
    lat: dict[bool, list[float]] = {True: [], False: []}
    total = dict.fromkeys((True, False), 0.0)
    for r in range(args.rounds):
        on = r % 2 == 0
        batch = watches(shared, keys, cookies, 3002 + r, now)
        registry._steady_watch = fast if on else lambda *a: None  # type: ignore[method-assign]
        answered, before = registry.counters["watched"], taken
        freeze_bench_objects()
        t0 = time.perf_counter()
        for data, src, _ in batch:
            a = time.perf_counter()
            registry.receive(data, src, 3478, now)
            lat[on].append(time.perf_counter() - a)
        total[on] += time.perf_counter() - t0
        gc.unfreeze()
        assert registry.counters["watched"] - answered == args.peers, registry.counters
        assert registry.counters["unproven"] == args.peers, registry.counters  # round 0 only
        assert taken - before == (args.peers if on else 0), (on, taken - before)
    registry._steady_watch = steady  # type: ignore[method-assign]
    # anchor: a Watch's box opened and a Status's sealed, alone, the last round's Watches
    boxes = [(shared[i], stun.decode(data).get(stun.ATTR_WG_SEALED) or b"") for data, _, i in batch]
    status = bytes(80)
    freeze_bench_objects()
    t = time.perf_counter()
    for key, box in boxes:
        sealed.open_or_none(key, box)
        sealed.seal_box(key, status, os.urandom(24))
    anchor = len(boxes) / (time.perf_counter() - t)
    gc.unfreeze()
    print()
    rates = {}
    for on, name in ((True, "fast path (as it runs)"), (False, "full path (fast path off)")):
        xs = sorted(lat[on])
        rates[on] = len(xs) / total[on]
        print(f"{name:27s} {rates[on]:9.0f} /s  p50 {statistics.median(xs) * 1e6:.1f} us  "
              f"p99 {xs[int(0.99 * (len(xs) - 1))] * 1e6:.1f} us")  # fmt: skip
    print(f"anchor: box open + seal alone {anchor:7.0f} /s")
    print(f"ratio fast / full path:     {rates[True] / rates[False]:9.2f}")
    print(f"ratio fast path / anchor:   {rates[True] / anchor:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
