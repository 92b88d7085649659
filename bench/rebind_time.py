"""Time to reconnect after a NAT rebinding, port-restricted NATs on both sides, default settings.

For each trial a fresh lab: registrar, peers a and b behind their own NATs, both daemons running
with their default configuration (probe interval 20 s). Once the tunnel works, one peer pings the
other every 100 ms through it (``--pinger b``, the default: the far side pings, so a's daemon
sees only silence; ``--pinger a``: the rebound side pings and sees its pings go unanswered). Then
a's NAT rebinds (``Nat.rebind()``: new public port range, conntrack flushed) and the clock runs
from the moment ``rebind()`` returns to the first echo reply to a request sent after it.

Anchor, measured in the same run: the same rebinding with hand-configured wireguard-go and no
daemon. After the rebind a's WireGuard sends one keepalive (which opens the new mapping), the new
public port is read from a's NAT, and the clock runs from setting it by hand as b's endpoint for
a (``wg set``) to the first echo reply, with the same 100 ms pings running.

    python bench/rebind_time.py --trials 10

Bounded: at most --trials labs of each kind, each given at most 30 s to connect and 15 s to
recover. Lab namespaces only (TEST-NET addresses, nothing in the root namespace).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from wgmesh.lab.mesh import Mesh
from wgmesh.lab.topology import Host, Lab, RouterKind
from wgmesh.lab.wireguard import WgIface

TARGET = 2.0
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* time=([\d.]+) ms")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def first_reply_after(log: Path, t: float) -> float | None:
    """Arrival time of the first echo reply whose request left after ``t`` (ping -D output)."""
    for line in log.read_text(errors="replace").splitlines():
        m = REPLY.match(line)
        if m and float(m[1]) - float(m[2]) / 1000 > t:
            return float(m[1])
    return None


def wait_reply(log: Path, t: float, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = first_reply_after(log, t)
        if got is not None:
            return got
        time.sleep(0.05)
    return None


def log_time(log: Path | None, words: str, after: float) -> float | None:
    """Time of the first line of a daemon log containing ``words`` logged after ``after``."""
    if log is None or not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if words in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp > after:
                return stamp
    return None


def start_pinger(lab: Lab, host: Host, target: str, name: str) -> Path:
    log = lab.workdir / f"ping-{name}.log"
    host.spawn("ping", "-D", "-n", "-O", "-i", "0.1", "-W", "1", target, log_path=log)
    return log


def trial_wgmesh(pinger: str) -> tuple[float | None, dict[str, float | None]]:
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        na = lab.add_nat("na", RouterKind.PORT_RESTRICTED)
        a_host = lab.add_peer("a", na)
        b_host = lab.add_peer("b", lab.add_nat("nb", RouterKind.PORT_RESTRICTED))
        mesh = Mesh(lab, reg)
        a, b = mesh.add_peer("a", a_host), mesh.add_peer("b", b_host)
        mesh.link(a, b)
        mesh.start_registrar()
        mesh.start_daemon(a)
        time.sleep(0.5)
        mesh.start_daemon(b)
        if not (mesh.wait_ping(b, a, 30.0) and mesh.wait_ping(a, b, 5.0)):
            print(mesh.logs(), file=sys.stderr)
            return None, {}
        src, dst = (b, a) if pinger == "b" else (a, b)
        log = start_pinger(lab, src.host, dst.tunnel_ip, src.name)
        time.sleep(2.0)  # steady traffic, seen by both daemons' counters
        na.rebind()
        t = time.time()
        got = wait_reply(log, t, 15.0)
        steps = {
            "a: stall seen": log_time(a.log, "path stalled", t),
            "a: new mapping": log_time(a.log, "public mapping changed", t),
            "b: new endpoint": log_time(b.log, "endpoint", t),
        }
        steps = {k: None if v is None else v - t for k, v in steps.items()}
        if got is None:
            print(mesh.logs(), file=sys.stderr)
        return (None if got is None else got - t), steps


def new_port(nat_run: str, lan_ip: str, port: int) -> int | None:
    """The public port of the flow from lan_ip:port in ``conntrack -L`` output."""
    for line in nat_run.splitlines():
        if f"src={lan_ip} " in line and f"sport={port} " in line and "udp" in line:
            ports = re.findall(r"dport=(\d+)", line)
            if len(ports) == 2:
                return int(ports[1])
    return None


def trial_by_hand() -> float | None:
    with Lab() as lab:
        na = lab.add_nat("na", RouterKind.PORT_RESTRICTED)
        nb = lab.add_nat("nb", RouterKind.PORT_RESTRICTED)
        a_host, b_host = lab.add_peer("a", na), lab.add_peer("b", nb)
        wa = a_host.start_wireguard(address="100.64.0.1/24")
        wb = b_host.start_wireguard(address="100.64.0.2/24")
        wa.add_peer(
            wb.public_key, "100.64.0.2/32", endpoint=f"{nb.wan_ip}:{wb.listen_port}", keepalive=25
        )
        wb.add_peer(
            wa.public_key, "100.64.0.1/32", endpoint=f"{na.wan_ip}:{wa.listen_port}", keepalive=25
        )
        deadline = time.monotonic() + 30
        while not b_host.ping("100.64.0.1", 1, 0.5) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = start_pinger(lab, b_host, "100.64.0.1", "b")
        time.sleep(2.0)
        na.rebind()
        kick(wa, wb.public_key)  # a's side sends from the new port: the mapping exists
        port = None
        deadline = time.monotonic() + 5
        while port is None and time.monotonic() < deadline:
            port = new_port(na.conntrack_entries(), str(a_host.address), wa.listen_port)
            if port is None or port == wa.listen_port:
                port = None
                time.sleep(0.02)
        if port is None:
            return None
        t = time.time()
        wb.host.run("wg", "set", wb.name, "peer", wa.public_key, "endpoint", f"{na.wan_ip}:{port}")
        got = wait_reply(log, t, 15.0)
        return None if got is None else got - t


def kick(w: WgIface, peer: str) -> None:
    """One keepalive from w to peer (persistent keepalive 0 -> 25 in one call sends one)."""
    w.host.run("wg", "set", w.name, "peer", peer, "persistent-keepalive", "0",
               "peer", peer, "persistent-keepalive", "25")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--pinger", choices=("a", "b"), default="b",
                    help="who pings: b (default, the far side) or a (the rebound side)")  # fmt: skip
    args = ap.parse_args()
    if not 1 <= args.trials <= 100:
        ap.error("--trials: 1..100")
    got: list[float] = []
    hand: list[float] = []
    failures = 0
    for i in range(args.trials):
        r, steps = trial_wgmesh(args.pinger)
        h = trial_by_hand()
        detail = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items() if v is not None)
        r_text = "FAILED" if r is None else f"{r * 1000:.0f} ms"
        h_text = "FAILED" if h is None else f"{h * 1000:.0f} ms"
        print(f"trial {i + 1}: wgmesh {r_text} ({detail}); by hand {h_text}", flush=True)
        if r is None:
            failures += 1
        else:
            got.append(r)
        if h is not None:
            hand.append(h)
    if not got or not hand:
        print("no successful trials", file=sys.stderr)
        return 1
    print()
    print(f"trials: {args.trials}, pinger: {args.pinger}, wgmesh failures: {failures}")
    print(f"{'':44}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for label, xs in (
        ("wgmesh: rebind -> first reply", got),
        ("anchor: endpoint set by hand -> first reply", hand),
    ):
        print(
            f"{label:44}{statistics.median(xs) * 1000:10.0f}"
            f"{pct(xs, 0.95) * 1000:10.0f}{max(xs) * 1000:10.0f}"
        )
    met = failures == 0 and pct(got, 0.95) <= TARGET
    print(f"target: reconnected within {TARGET:.0f} s (p95): {'MET' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
