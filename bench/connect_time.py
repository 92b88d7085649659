"""Time to a direct connection, port-restricted NATs on both sides.

For each trial a fresh lab: registrar, two peers, a's daemon running; then b's daemon starts and
we time (from b's daemon start) the first WireGuard handshake seen on b's interface and the
first successful ping across the tunnel. The anchor, measured in the same run on the same lab:
punching by hand (both endpoints set by `wg set` at once), time to the first handshake.

    python bench/connect_time.py --trials 24

With --ipv6 (issue 16), the IPv6 case: both peers dual-stack behind SYMMETRIC IPv4 NATs whose
routers route IPv6 without NAT66 behind a stateful firewall, and a dual-stack registrar (no
relay): over IPv4 the pair has no direct path, so a connection is a direct IPv6 one, through
both firewalls punched at once. The family of the endpoint b uses at its first handshake is
reported per trial. The anchor, in the same topology: both IPv6 endpoints set by hand at once.

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
from wgmesh.lab.mesh import Mesh, MeshPeer
from wgmesh.lab.topology import Lab, RouterKind


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def kind(ipv6: bool) -> RouterKind:
    """The NATs of a trial: symmetric in the IPv6 case (IPv4 alone would need the relay)."""
    return RouterKind.SYMMETRIC if ipv6 else RouterKind.PORT_RESTRICTED


def trial_wgmesh(probe_interval: str, ipv6: bool = False) -> tuple[float | None, float | None, int]:
    """Seconds to b's first handshake and first ping, and the family of b's endpoint at that
    handshake (0: none)."""
    with Lab() as lab:
        reg = lab.add_public_host("reg", ipv6=ipv6)
        a_host = lab.add_peer("a", lab.add_nat("na", kind(ipv6), ipv6=ipv6), ipv6=ipv6)
        b_host = lab.add_peer("b", lab.add_nat("nb", kind(ipv6), ipv6=ipv6), ipv6=ipv6)
        mesh = Mesh(lab, reg)
        a, b = mesh.add_peer("a", a_host), mesh.add_peer("b", b_host)
        mesh.link(a, b)
        mesh.start_registrar()
        mesh.start_daemon(a, "--probe-interval", probe_interval)
        time.sleep(2.0)  # a is registered and watching
        t0 = time.monotonic()
        mesh.start_daemon(b, "--probe-interval", probe_interval)
        hs = ping = None
        family = 0
        while hs is None and time.monotonic() - t0 < 30:
            if b.wg.latest_handshake(a.wg.public_key) > 0:
                hs = time.monotonic() - t0
            time.sleep(0.01)
        if hs is not None:
            family = endpoint_family(b, a)
        while hs is not None and time.monotonic() - t0 < 30:
            if b.host.ping(a.tunnel_ip, count=1, timeout=0.5):
                ping = time.monotonic() - t0
                break
        return hs, ping, family


def endpoint_family(p: MeshPeer, other: MeshPeer) -> int:
    """The family of the endpoint ``p``'s interface uses for ``other`` (0: none)."""
    out = p.host.run("wg", "show", p.wg.name, "endpoints").stdout
    for line in out.splitlines():
        key, _, ep = line.partition("\t")
        if key == other.wg.public_key and ep not in ("", "(none)"):
            return 6 if ep.startswith("[") else 4
    return 0


def trial_by_hand(ipv6: bool = False) -> float | None:
    with Lab() as lab:
        na = lab.add_nat("na", kind(ipv6), ipv6=ipv6)
        nb = lab.add_nat("nb", kind(ipv6), ipv6=ipv6)
        a_host, b_host = lab.add_peer("a", na, ipv6=ipv6), lab.add_peer("b", nb, ipv6=ipv6)
        wa = a_host.start_wireguard(address="100.64.0.1/24")
        wb = b_host.start_wireguard(address="100.64.0.2/24")
        # IPv4: each NAT's WAN address (port-restricted NATs keep the port); IPv6: the hosts'
        # own global addresses, through their routers' stateful firewalls
        a_at = f"[{a_host.address6}]" if ipv6 else f"{na.wan_ip}"
        b_at = f"[{b_host.address6}]" if ipv6 else f"{nb.wan_ip}"
        t0 = time.monotonic()
        wa.add_peer(
            wb.public_key, "100.64.0.2/32", endpoint=f"{b_at}:{wb.listen_port}", keepalive=25
        )
        wb.add_peer(
            wa.public_key, "100.64.0.1/32", endpoint=f"{a_at}:{wa.listen_port}", keepalive=25
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
    ap.add_argument(
        "--ipv6",
        action="store_true",
        help="dual-stack peers behind symmetric IPv4 NATs, direct over IPv6 (see above)",
    )
    args = ap.parse_args()
    if not 1 <= args.trials <= 100:
        ap.error("--trials: 1..100")
    if not args.no_bytecode:
        compileall.compile_dir(wgmesh.__path__[0], quiet=1)
    hs_list: list[float] = []
    ping_list: list[float] = []
    hand: list[float] = []
    failures = 0
    families: list[int] = []
    for i in range(args.trials):
        hs, ping, family = trial_wgmesh(args.probe_interval, args.ipv6)
        h = trial_by_hand(args.ipv6)
        over = f" (IPv{family})" if family else ""
        print(
            f"trial {i + 1}: wgmesh handshake {hs}{over}, ping {ping}; by hand handshake {h}",
            flush=True,
        )
        families.append(family)
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
    if args.ipv6:
        case = "dual-stack peers, symmetric IPv4 NATs, IPv6 routers with stateful firewalls"
        print(f"case: {case}; first handshakes over IPv6: {families.count(6)} of {len(families)}")
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
