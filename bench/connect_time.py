"""Time to a direct connection, port-restricted NATs on both sides.

For each trial a fresh lab: registrar, two peers, a's daemon running; then b's daemon starts and
we time (from b's daemon start) the first WireGuard handshake seen on b's interface and the
first successful ping across the tunnel. The anchor, measured in the same run on the same lab:
punching by hand (both endpoints set by `wg set` at once), time to the first handshake.

    python bench/connect_time.py --trials 24

Bytecode: an installed wgmesh has its modules compiled (pip and Debian packages write .pyc files
at install time), but a checkout run with PYTHONDONTWRITEBYTECODE=1 (as on the project's
machines) compiles every module at every start, about 60 ms of a daemon's start. So the
benchmark first writes the .pyc files (``compileall``, into the ignored __pycache__ folders)
unless --no-bytecode is given.

Bounded: at most --trials labs (1..100), each given at most 30 s. Lab namespaces only.
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import sys
import time

import wgmesh
from wgmesh.lab.mesh import Mesh
from wgmesh.lab.topology import Lab, RouterKind


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def trial_wgmesh(probe_interval: str) -> tuple[float | None, float | None]:
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        a_host = lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED))
        b_host = lab.add_peer("b", lab.add_nat("nb", RouterKind.PORT_RESTRICTED))
        mesh = Mesh(lab, reg)
        a, b = mesh.add_peer("a", a_host), mesh.add_peer("b", b_host)
        mesh.link(a, b)
        mesh.start_registrar()
        mesh.start_daemon(a, "--probe-interval", probe_interval)
        time.sleep(2.0)  # a is registered and watching
        t0 = time.monotonic()
        mesh.start_daemon(b, "--probe-interval", probe_interval)
        hs = ping = None
        while hs is None and time.monotonic() - t0 < 30:
            if b.wg.latest_handshake(a.wg.public_key) > 0:
                hs = time.monotonic() - t0
            time.sleep(0.01)
        while hs is not None and time.monotonic() - t0 < 30:
            if b.host.ping(a.tunnel_ip, count=1, timeout=0.5):
                ping = time.monotonic() - t0
                break
        return hs, ping


def trial_by_hand() -> float | None:
    with Lab() as lab:
        na = lab.add_nat("na", RouterKind.PORT_RESTRICTED)
        nb = lab.add_nat("nb", RouterKind.PORT_RESTRICTED)
        a_host, b_host = lab.add_peer("a", na), lab.add_peer("b", nb)
        wa = a_host.start_wireguard(address="100.64.0.1/24")
        wb = b_host.start_wireguard(address="100.64.0.2/24")
        t0 = time.monotonic()
        wa.add_peer(
            wb.public_key, "100.64.0.2/32", endpoint=f"{nb.wan_ip}:{wb.listen_port}", keepalive=25
        )
        wb.add_peer(
            wa.public_key, "100.64.0.1/32", endpoint=f"{na.wan_ip}:{wa.listen_port}", keepalive=25
        )
        while time.monotonic() - t0 < 30:
            if wb.latest_handshake(wa.public_key) > 0:
                return time.monotonic() - t0
            time.sleep(0.005)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--probe-interval", default="20")
    ap.add_argument("--no-bytecode", action="store_true", help="do not compile .pyc files first")
    args = ap.parse_args()
    if not 1 <= args.trials <= 100:
        ap.error("--trials: 1..100")
    if not args.no_bytecode:
        compileall.compile_dir(wgmesh.__path__[0], quiet=1)
    hs_list: list[float] = []
    ping_list: list[float] = []
    hand: list[float] = []
    failures = 0
    for i in range(args.trials):
        hs, ping = trial_wgmesh(args.probe_interval)
        h = trial_by_hand()
        print(
            f"trial {i + 1}: wgmesh handshake {hs}, ping {ping}; by hand handshake {h}", flush=True
        )
        if hs is None or ping is None:
            failures += 1
        else:
            hs_list.append(hs)
            ping_list.append(ping)
        if h is not None:
            hand.append(h)
    if not hs_list or not hand:
        print("no successful trials", file=sys.stderr)
        return 1
    print()
    print(f"trials: {args.trials}, wgmesh failures: {failures}")
    print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}")
    print(
        f"{'wgmesh: start -> first handshake':34}{statistics.median(hs_list) * 1000:10.0f}{pct(hs_list, 0.95) * 1000:10.0f}"
    )
    print(
        f"{'wgmesh: start -> first ping':34}{statistics.median(ping_list) * 1000:10.0f}{pct(ping_list, 0.95) * 1000:10.0f}"
    )
    print(
        f"{'anchor: by hand -> handshake':34}{statistics.median(hand) * 1000:10.0f}{pct(hand, 0.95) * 1000:10.0f}"
    )
    print(f"{'wgmesh: slowest handshake':34}{max(hs_list) * 1000:10.0f}")
    slow = [f"{x * 1000:.0f}" for x in hs_list if x > 1.0]
    print(f"outliers (> 1 s): {len(slow)} {' '.join(slow)}")
    print(
        f"target: handshake p50 <= 300 ms, p95 <= 1000 ms: "
        f"{'MET' if statistics.median(hs_list) <= 0.3 and pct(hs_list, 0.95) <= 1.0 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
