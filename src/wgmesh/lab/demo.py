"""The demo: a registrar and two peers behind port-restricted NATs connect for real.

``python -m wgmesh.lab.demo`` (as root; scripts/demo.sh installs what it needs first). Builds the
lab, starts ``wgmesh registrar`` and two ``wgmesh daemon``s, shows ``wgmesh peers`` and a ping
across the tunnel, then tears everything down. Exits non-zero if the peers did not connect.
"""

from __future__ import annotations

import sys
import time

from wgmesh.lab.mesh import PYTHON, Mesh
from wgmesh.lab.preflight import lab_missing
from wgmesh.lab.topology import Lab, RouterKind


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    missing = lab_missing()
    if missing:
        print(f"demo: cannot build the lab here: {missing}", file=sys.stderr)
        return 2
    with Lab() as lab:
        say("building the lab: an internet, a public registrar, two home routers (NAT + firewall)")
        reg = lab.add_public_host("reg")
        nat_a = lab.add_nat("na", RouterKind.PORT_RESTRICTED)
        nat_b = lab.add_nat("nb", RouterKind.PORT_RESTRICTED)
        host_a = lab.add_peer("alice", nat_a)
        host_b = lab.add_peer("bob", nat_b)
        print(
            f"registrar {reg.address}; alice {host_a.address} behind {nat_a.wan_ip}; "
            f"bob {host_b.address} behind {nat_b.wan_ip}"
        )
        mesh = Mesh(lab, reg, authorized=True)
        alice = mesh.add_peer("alice", host_a)
        bob = mesh.add_peer("bob", host_b)
        mesh.link(alice, bob)
        say("each peer knows only the other's key and tunnel address, no endpoint:")
        print(host_a.run("wg", "show", alice.wg.name).stdout)
        say("starting wgmesh registrar (authorized keys: alice, bob)")
        mesh.start_registrar()
        say("starting wgmesh daemon on alice, then on bob")
        mesh.start_daemon(alice)
        time.sleep(1.0)
        t0 = time.monotonic()
        mesh.start_daemon(bob)
        ok = mesh.wait_ping(bob, alice, 30.0)
        took = time.monotonic() - t0
        if not ok:
            print(mesh.logs())
            print("demo: FAILED, the peers did not connect", file=sys.stderr)
            return 1
        say(f"connected {took:.1f} s after bob's daemon started; DNS-SD records on the registrar:")
        print(
            reg.run(
                "dig",
                "@" + str(reg.address),
                "+noall",
                "+answer",
                "+additional",
                "_wireguard._udp.mesh.test",
                "PTR",
            ).stdout
        )
        say("wgmesh peers on alice")
        print(
            host_a.run(
                PYTHON,
                "-m",
                "wgmesh",
                "peers",
                "-i",
                alice.wg.name,
                "--status-socket",
                alice.status_socket,
            ).stdout
        )
        say("ping bob's tunnel address from alice")
        print(host_a.run("ping", "-c", "3", "-i", "0.2", bob.tunnel_ip).stdout)
        say("tearing the lab down")
    print("demo: done, the peers connected directly through both NATs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
