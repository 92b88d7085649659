"""Daemon footprint: RSS and idle CPU of one `wgmesh daemon` with 10 peers, over 60 s.

Lab: a registrar and 11 peers, each behind its own port-restricted NAT, every pair linked; all
daemons run and connect; then, once all are connected, we sample one daemon's RSS and CPU time
over --seconds of idleness. Anchor, in the same run: the wireguard-go process of the same host
(what every host runs anyway). Target (issue 6): RSS <= 40 MB, idle CPU <= 0.2 %.

    python bench/daemon_footprint.py --seconds 60

Bounded: one lab, --seconds of sampling; lab namespaces only.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from wgmesh.lab.mesh import Mesh
from wgmesh.lab.topology import Lab, RouterKind


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--peers", type=int, default=10)
    args = ap.parse_args()
    with Lab() as lab:
        reg = lab.add_public_host("reg")
        mesh = Mesh(lab, reg)
        nodes = [mesh.add_peer(f"p{i}", lab.add_peer(f"p{i}", lab.add_nat(f"n{i}", RouterKind.PORT_RESTRICTED)))
                 for i in range(args.peers + 1)]  # fmt: skip
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                mesh.link(a, b)
        mesh.start_registrar()
        for n in nodes:
            mesh.start_daemon(n)
        first = nodes[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(first.wg.latest_handshake(n.wg.public_key) > 0 for n in nodes[1:]):
                break
            time.sleep(0.5)
        connected = sum(first.wg.latest_handshake(n.wg.public_key) > 0 for n in nodes[1:])
        assert first.daemon is not None
        daemon_pid = first.daemon.pid
        wg_pid = int(
            first.host.run("pgrep", "-n", "-f", f"wireguard-go -f {first.wg.name}").stdout.split()[
                0
            ]
        )
        time.sleep(5)  # let the start-up settle
        d0, w0, t0 = cpu_seconds(daemon_pid), cpu_seconds(wg_pid), time.monotonic()
        time.sleep(args.seconds)
        d1, w1, t1 = cpu_seconds(daemon_pid), cpu_seconds(wg_pid), time.monotonic()
        drss, wrss = rss_mb(daemon_pid), rss_mb(wg_pid)
    span = t1 - t0
    dcpu, wcpu = 100 * (d1 - d0) / span, 100 * (w1 - w0) / span
    print(f"peers connected to p0: {connected}/{args.peers}; idle sampling {span:.0f} s")
    print(f"{'':22}{'RSS MB':>10}{'CPU %':>10}")
    print(f"{'wgmesh daemon':22}{drss:10.1f}{dcpu:10.2f}")
    print(f"{'anchor: wireguard-go':22}{wrss:10.1f}{wcpu:10.2f}")
    print(
        f"target RSS <= 40 MB: {'MET' if drss <= 40 else 'MISSED'}; "
        f"idle CPU <= 0.2 %: {'MET' if dcpu <= 0.2 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
