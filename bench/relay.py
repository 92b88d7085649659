"""The relay (issue 12): tunnel throughput, forwarding rate and time to the first relayed handshake.

One run, in the lab (network namespaces, real NATs, real wireguard-go, the real ``wgmesh
registrar`` and ``wgmesh daemon`` processes), prints three measurements, each against an anchor
measured in the same run on the same machine:

1. **TCP throughput through the WireGuard tunnel**: iperf3 (Debian's), one stream b -> a for
   ``--iperf-seconds`` (the first second omitted), three labs built side by side and their runs
   interleaved ``--rounds`` times. *direct* (the anchor): both peers behind port-restricted
   NATs, punched. *kernel relay* / *userspace relay*: port-restricted x symmetric (no direct
   path), the registrar with ``--relay-mode kernel`` / ``userspace``. *direct, routed*: the
   direct lab again with policy routes in the inet router sending NAT-to-NAT traffic through
   the registrar's host as a plain router: the relayed path's hops (two more veth crossings
   and one more forwarding namespace) without the relay, which tells the cost of the hops from
   the cost of the relay. Every run checks its path before and after (``wg show`` endpoints on
   both peers: the registrar's address and a relay port, or the other peer's public address)
   and that the registrar's eth0 received about as many bytes as iperf3 moved (relayed,
   routed) or none (direct); a run that fails the check is printed and left out of the medians
   (counted in the summary), and an iperf3 client that cannot connect is run once more after
   the tunnel pings again (both printed, with the daemons' last log lines). Printed per run: the
   CPU shares of both wireguard-go processes and of the registrar process, and how busy the
   whole machine was (all of it: the lab's peers, NATs and relay share its CPUs, with whatever
   else runs there).
2. **Forwarding rate of the relay** in datagrams/s for 1,400- and 100-byte UDP payloads against
   plain kernel IP forwarding on the same path. A lab of three public hosts: the relay host
   (203.0.113.10), a sender and a receiver. The relay is the registrar's own adapters holding
   one pair whose legs are the sender's and the receiver's sockets: the kernel path
   (``registry.relaynft.KernelRelay``, relay-only) and the userspace path
   (``registry.relayudp.RelaySockets``, batched, on uvloop, in its own process). A pair bound by
   two daemons would need the load to leave from WireGuard's own ports; the adapters run the
   same forwarding code with sockets of our choice (the control plane is part 3's). The anchor:
   the relay host as a plain router (a policy route in the inet router sends the sender's
   datagrams for the receiver to it; ip_forward=1, no table), so a datagram crosses the same
   veths and namespaces either way (sender -> inet -> relay host -> inet -> receiver). The load
   is a small C program (compiled here with gcc into a temporary directory): one process, its
   send socket in the sender's namespace and its receive socket in the receiver's (setns),
   self-clocked with ``--window`` datagrams in flight (sendmmsg/recvmmsg), so nothing is lost
   to overload and the rate is the bottleneck's. It runs on one CPU; with RPS on the inet
   router's veth from the sender, all forwarding (the kernel's, and the userspace relay
   process, pinned there) runs on the other, so each path gets one CPU. Printed: datagrams/s,
   how busy the forwarding CPU was and its microseconds per datagram, the userspace relay's own
   CPU per datagram; median of ``--rounds``.
3. **Time from the second daemon's start to the first relayed handshake**: port-restricted (a,
   its daemon started 2 s earlier) x symmetric (b), ``--trials`` fresh labs, kernel relay
   (``--handshake-mode``). The clock starts when b's daemon is spawned and stops when a's
   interface shows a handshake with b at the relay (``wg show dump`` every 50 ms). Anchor,
   trial by trial: the same clock for a direct pair (two port-restricted NATs) stopping at a's
   first handshake with b at b's public address. Each relayed trial also reports what delays a
   handshake: a daemon that sent a direct initiation less than 5 s before switching to the
   relay (wireguard-go sends no initiation within RekeyTimeout, 5 s, of its previous one,
   whatever the endpoint), and WireGuard datagrams the relay sockets dropped (the registrar's
   ``relay_dropped`` with reason ``kernel_mode`` or ``unbound``: they arrived before the pair
   was in the forwarding table, nftables' or the sockets' own).

Targets (issue 12): kernel relay >= 0.9x the direct tunnel's throughput, userspace relay >= 0.5x,
first relayed handshake p50 <= 1 s and p95 <= 2 s. Printed as MET/MISSED lines, with the load
average at the start and at the end (the machine may be shared).

    python bench/relay.py                  # about 7 minutes on 2 CPUs
    python bench/relay.py --trials 20 --rounds 3 --skip forwarding

Needs (Debian): ``apt-get install -y iperf3 gcc`` besides the lab's own tools (it says so and
stops when one is missing). While relayed, the daemons try direct again at every multiple of
300 s on the wall clock (PunchConfig ``relay_retry``); a run or trial that would overlap one
waits until 25 s after it (printed), so what is measured is the relay, not that retry. The .pyc
files are compiled first, as an install does (``--no-bytecode`` to skip; bench/connect_time.py).

Bounded: part 1 builds 3 labs and runs 4 x ``--rounds`` (1..10) iperf3 clients, each killed
after ``--iperf-seconds`` (1..60) + 30 s; part 2 runs 2 sizes x 3 paths x ``--rounds`` loads of
``--fwd-seconds`` (at most 30 s, killed 15 s later); part 3 builds 2 x ``--trials`` (1..50)
labs, each watched for at most 20 s. Traffic stays in lab namespaces (TEST-NET addresses);
nothing in the root namespace is created or changed; every process is the lab's and is ended by
PID (iperf3 servers and the userspace relay as soon as they are done, the rest at teardown).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import wgmesh
from wgmesh.lab.mesh import PYTHON, Mesh, MeshPeer
from wgmesh.lab.netns import in_netns, run
from wgmesh.lab.topology import Host, Lab, RouterKind
from wgmesh.proto.punch import PunchConfig
from wgmesh.registry.relaynft import parse_counters

RELAY_LOW, RELAY_HIGH = 40000, 40099
RELAY_FLAGS = ("--relay-ports", f"{RELAY_LOW}-{RELAY_HIGH}")
RETRY_SLOT = PunchConfig().relay_retry
"""The daemons try direct again at multiples of this on the wall clock (rule 8)."""
RETRY_SPAN = 25.0
"""How long such a try keeps a relayed pair off the relay: up to 2 s late, two candidates of 6 s
each (as the lab's daemon logs show), the way back, a handshake, and a margin."""
SIZES = (1400, 100)
THROUGHPUT = {"kernel": 0.9, "userspace": 0.5}
HANDSHAKE_P50, HANDSHAKE_P95 = 1.0, 2.0
IPERF_PORT = "5201"
GEN_PORT = 51820
METRICS = "127.0.0.1:9108"
"""The registrar's metrics listener, inside its own namespace."""

# -- the load generator (C) ---------------------------------------------------------------

GENERATOR_C = r"""
/* relay_gen: UDP load for bench/relay.py (wgmesh's own; lab namespaces only).

   relay_gen SEND_IP SEND_PORT TO_IP TO_PORT RECV_NETNS RECV_IP RECV_PORT FROM_IP FROM_PORT
             SIZE SECONDS WINDOW

   Sends WireGuard-shaped datagrams (type 4, never STUN) of SIZE bytes from SEND_IP:SEND_PORT
   (a socket in the namespace it is started in) to TO, and receives them on RECV_IP:RECV_PORT,
   a socket it opens in the namespace RECV_NETNS (a /run/netns path, entered with setns after
   the first socket exists), counting those of SIZE bytes from FROM (good) and any other (bad).
   Self-clocked: at most WINDOW datagrams in flight, sent and received with sendmmsg/recvmmsg
   in batches of up to 64; when nothing arrives for 50 ms with the window full, what is in
   flight counts as lost and the window restarts. Stops after SECONDS (what is still in flight
   then is not counted as lost); prints sent=,
   received=, bad=, lost=, seconds=, rate= (good datagrams per second). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define SLOT 2048

static char sdata[SLOT], rdata[BATCH][SLOT];
static struct iovec siov[BATCH], riov[BATCH];
static struct mmsghdr smsg[BATCH], rmsg[BATCH];
static struct sockaddr_in names[BATCH];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int sockaddr(const char *ip, const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)atoi(port));
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

static int udp(struct sockaddr_in *local) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0), buf = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    if (fd < 0 || bind(fd, (struct sockaddr *)local, sizeof *local)) return -1;
    return fd;
}

int main(int argc, char **argv) {
    struct sockaddr_in src, to, dst, from;
    if (argc != 13 || sockaddr(argv[1], argv[2], &src) || sockaddr(argv[3], argv[4], &to)
        || sockaddr(argv[6], argv[7], &dst) || sockaddr(argv[8], argv[9], &from)) {
        fprintf(stderr, "usage: see the comment at the top of relay_gen.c\n");
        return 2;
    }
    int size = atoi(argv[10]), window = atoi(argv[12]);
    double seconds = atof(argv[11]);
    if (size < 8 || size > 1472 || !(seconds > 0 && seconds <= 60) || window < 1
        || window > 4096) {
        fprintf(stderr, "SIZE 8..1472, SECONDS (0, 60], WINDOW 1..4096\n");
        return 2;
    }
    int sfd = udp(&src);
    if (sfd < 0 || connect(sfd, (struct sockaddr *)&to, sizeof to)) {
        perror("sender");
        return 1;
    }
    int ns = open(argv[5], O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET)) {
        perror(argv[5]);
        return 1;
    }
    int rfd = udp(&dst);
    if (rfd < 0) {
        perror("receiver");
        return 1;
    }
    memset(sdata, 0x5a, SLOT);
    memcpy(sdata, "\x04\0\0\0", 4);
    for (int i = 0; i < BATCH; i++) {
        siov[i].iov_base = sdata;
        siov[i].iov_len = (size_t)size;
        smsg[i].msg_hdr.msg_iov = &siov[i];
        smsg[i].msg_hdr.msg_iovlen = 1;
        riov[i].iov_base = rdata[i];
        riov[i].iov_len = SLOT;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
        rmsg[i].msg_hdr.msg_name = &names[i];
    }
    struct pollfd p = {.fd = rfd, .events = POLLIN};
    long long sent = 0, good = 0, bad = 0, lost = 0, inflight = 0;
    double start = now(), end = start + seconds, t = start;
    while ((t = now()) < end) {
        int room = window - inflight > BATCH ? BATCH : (int)(window - inflight);
        if (room > 0) {
            int n = sendmmsg(sfd, smsg, room, MSG_DONTWAIT);
            if (n > 0) {
                sent += n;
                inflight += n;
            } else if (errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED) {
                perror("sendmmsg");
                return 1;
            }
        }
        for (int i = 0; i < BATCH; i++) rmsg[i].msg_hdr.msg_namelen = sizeof names[i];
        int r = recvmmsg(rfd, rmsg, BATCH, MSG_DONTWAIT, NULL);
        if (r > 0) {
            for (int i = 0; i < r; i++) {
                if (rmsg[i].msg_len == (unsigned)size && names[i].sin_port == from.sin_port
                    && names[i].sin_addr.s_addr == from.sin_addr.s_addr) good++;
                else bad++;
            }
            inflight = inflight > r ? inflight - r : 0;
        } else if (room <= 0 && poll(&p, 1, 50) == 0) {
            lost += inflight;
            inflight = 0;
        }
    }
    printf("sent=%lld\nreceived=%lld\nbad=%lld\nlost=%lld\nseconds=%.6f\nrate=%.1f\n", sent,
           good, bad, lost, t - start, good / (t - start));
    return 0;
}
"""

# -- the relay's adapters, run inside the relay host's namespace ----------------------------

KERNEL_RELAY = """
import sys
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair
from wgmesh.registry.relaynft import Forwarding, KernelRelay
verb, ip, low, high = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
relay = KernelRelay(ip, range(low, high + 1), forwarding=Forwarding.RELAY_ONLY)
if verb == "stop":
    relay.stop()
    sys.exit(0)
why = relay.available()
if why:
    sys.exit(why)
legs = [RelayLeg(int(p), Endpoint.parse(e)) for p, e in zip(sys.argv[5::2], sys.argv[6::2])]
relay.start([RelayPair(legs[0], legs[1])])
"""

USERSPACE_RELAY = """
import asyncio, signal, sys
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair, RouteTable
from wgmesh.registry.relayudp import RelaySockets

async def main():
    table = RouteTable()
    relay = RelaySockets(sys.argv[1], table, lambda data, source, port: None, forward=True)
    legs = [RelayLeg(await relay.open(int(p)), Endpoint.parse(e))
            for p, e in zip(sys.argv[2::2], sys.argv[3::2])]
    table.set_pairs([RelayPair(legs[0], legs[1])])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready batched" if relay.batched else "ready plain", flush=True)
    await stop.wait()
    s = relay.stats
    print(f"stats received={s.received} forwarded={s.forwarded} unbound={s.dropped_unbound} "
          f"send_failed={s.send_failed} batches={s.batches}", flush=True)
    relay.close_all()

try:
    import uvloop
except ImportError:
    asyncio.run(main())
else:
    uvloop.run(main())
"""

# -- small helpers ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy(cpu: int) -> float:
    """Seconds CPU ``cpu`` was not idle (all tasks and interrupts, other work included)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def key_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def wait_until(cond: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if cond():
                return True
        time.sleep(step)
    return False


def clear_of_retry(need: float, after: float = RETRY_SPAN) -> None:
    """Wait if the next ``need`` seconds would include a direct retry of relayed pairs (a
    multiple of RETRY_SLOT on the wall clock), or if one was less than ``after`` seconds ago
    (pairs relayed before it may still be trying direct)."""
    now = time.time()
    slot = (now // RETRY_SLOT + 1) * RETRY_SLOT
    last = slot - RETRY_SLOT
    if slot - now < need or now - last < after:
        until = slot + RETRY_SPAN if slot - now < need else last + after
        print(f"  (waiting {until - now:.0f} s: relayed daemons try direct at "
              f"{time.strftime('%H:%M:%S', time.localtime(until - RETRY_SPAN))})", flush=True)  # fmt: skip
        time.sleep(max(0.0, until - now))


def pin(cpu: int | None) -> tuple[str, ...]:
    return () if cpu is None else ("taskset", "-c", str(cpu))


# -- a registrar and two peers ------------------------------------------------------------


@dataclass
class Pair:
    """A lab with a registrar and peers a (port-restricted NAT) and b; ``mode`` is the relay
    mode, None for a direct pair."""

    name: str
    lab: Lab
    mesh: Mesh
    a: MeshPeer
    b: MeshPeer
    mode: str | None
    wireguard_pids: list[int] = field(default_factory=list)

    def dump(self, peer: MeshPeer, other: MeshPeer) -> tuple[str, int]:
        """(endpoint, latest handshake) of ``other`` on ``peer``'s interface."""
        out = peer.host.run("wg", "show", peer.wg.name, "dump", check=False).stdout
        for line in out.splitlines()[1:]:
            f = line.split("\t")
            if len(f) >= 5 and f[0] == other.wg.public_key:
                return f[2], int(f[4])
        return "", 0

    def relayed(self, endpoint: str) -> bool:
        host, _, port = endpoint.rpartition(":")
        return host == self.mesh.registrar_ip and RELAY_LOW <= int(port or 0) <= RELAY_HIGH

    def expected(self, peer: MeshPeer, other: MeshPeer) -> bool:
        """``peer`` reaches ``other`` the way this pair should: through the relay or at
        ``other``'s public address."""
        endpoint, _ = self.dump(peer, other)
        if self.mode is not None:
            return self.relayed(endpoint)
        return endpoint.rpartition(":")[0] == str(other.host.public_ip)

    def path_ok(self) -> bool:
        return self.expected(self.a, self.b) and self.expected(self.b, self.a)

    def endpoints(self) -> str:
        return f"a->b {self.dump(self.a, self.b)[0]}, b->a {self.dump(self.b, self.a)[0]}"


@contextlib.contextmanager
def pair_lab(name: str, mode: str | None) -> Iterator[Pair]:
    """A fresh lab: a relayed pair (port-restricted x symmetric, relay ``mode``) or, with
    ``mode`` None, a direct one (port-restricted x port-restricted)."""
    with Lab(name_prefix="wgmrb") as lab:
        reg = lab.add_public_host("reg")
        a_host = lab.add_peer("a", lab.add_nat("na", RouterKind.PORT_RESTRICTED))
        kind_b = RouterKind.PORT_RESTRICTED if mode is None else RouterKind.SYMMETRIC
        b_host = lab.add_peer("b", lab.add_nat("nb", kind_b))
        mesh = Mesh(lab, reg)
        a, b = mesh.add_peer("a", a_host), mesh.add_peer("b", b_host)
        mesh.link(a, b)
        relay = () if mode is None else (*RELAY_FLAGS, "--relay-mode", mode)
        mesh.start_registrar(*relay, "--metrics", METRICS)
        pids = [s.proc.pid for s in lab.procs if s.argv[0] == "wireguard-go"]
        yield Pair(name, lab, mesh, a, b, mode, pids)


def connect(pair: Pair) -> None:
    """Both daemons up, pings both ways, and the expected path on both sides."""
    pair.mesh.start_daemon(pair.a)
    time.sleep(0.5)
    pair.mesh.start_daemon(pair.b)
    if not (pair.mesh.wait_ping(pair.a, pair.b, 30.0) and pair.mesh.wait_ping(pair.b, pair.a, 5.0)):
        print(pair.mesh.logs(), file=sys.stderr)
        raise RuntimeError(f"{pair.name}: no ping across the tunnel")
    if not wait_until(pair.path_ok, 15.0, 0.25):
        raise RuntimeError(f"{pair.name}: not on the expected path: {pair.endpoints()}")


# -- 1. throughput ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throughput:
    mbit: float
    retransmits: int
    wireguard_cpu: float
    """Both wireguard-go processes' CPU seconds / wall seconds."""
    registrar_cpu: float
    machine_busy: float
    """Busy share of all CPUs (everything, other work on the machine included)."""
    steal: float
    """Share of all CPUs' time the hypervisor gave to someone else."""
    via_registrar: float
    """Bytes the registrar's eth0 received during the run / bytes iperf3 delivered."""
    path_ok: bool
    note: str


def eth0_rx_bytes(host: Host) -> int:
    out = host.run("ip", "-j", "-s", "link", "show", "dev", "eth0").stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) ticks of all CPUs (/proc/stat)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(v) - v[3] - v[4] - v[7], v[7], sum(v)


def iperf(pair: Pair, seconds: float, through_registrar: bool) -> Throughput:
    """One iperf3 run b -> a; ``through_registrar``: the registrar's eth0 must carry it."""
    a, b, reg = pair.a, pair.b, pair.mesh.reg_host
    log = pair.lab.workdir / f"iperf-server-{pair.lab.next_index()}.log"
    server = a.host.spawn(
        "iperf3", "-s", "-1", "--forceflush", "-B", a.tunnel_ip, "-p", IPERF_PORT, log_path=log
    )
    try:
        if not wait_until(lambda: b"listening" in log.read_bytes(), 10):
            raise IperfFailed(f"{pair.name}: iperf3 server did not start: {log.read_text()}")
        before_ok = pair.path_ok()
        assert pair.mesh.registrar is not None
        pids = [*pair.wireguard_pids, pair.mesh.registrar.pid]
        cpu0, rx0, t0 = [cpu_seconds(p) for p in pids], eth0_rx_bytes(reg), time.monotonic()
        ticks0 = machine_ticks()
        r = b.host.run(
            "iperf3", "-c", a.tunnel_ip, "-B", b.tunnel_ip, "-p", IPERF_PORT,
            "-t", f"{seconds:g}", "-O", "1", "--json", "--connect-timeout", "10000",
            check=False, timeout=seconds + 30,
        )  # fmt: skip
        wall = time.monotonic() - t0
        busy, steal, total = (x1 - x0 for x1, x0 in zip(machine_ticks(), ticks0, strict=True))
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        rx = eth0_rx_bytes(reg) - rx0
        after_ok = pair.path_ok()
    finally:
        if server.poll() is None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
    try:
        result = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise IperfFailed(f"{pair.name}: iperf3 said {r.stdout[-500:]} {r.stderr}") from None
    if "error" in result:
        raise IperfFailed(f"{pair.name}: iperf3: {result['error']}")
    end = result["end"]
    received = end["sum_received"]
    delivered = float(received["bytes"])
    share = rx / delivered if delivered else 0.0
    ok = before_ok and after_ok and (share > 0.9 if through_registrar else share < 0.01)
    note = "" if ok else f"path check failed: {pair.endpoints()}, registrar saw {share:.2f}x"
    return Throughput(
        mbit=float(received["bits_per_second"]) / 1e6,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        wireguard_cpu=sum(cpu[:-1]) / wall,
        registrar_cpu=cpu[-1] / wall,
        machine_busy=busy / total if total else 0.0,
        steal=steal / total if total else 0.0,
        via_registrar=share,
        path_ok=ok,
        note=note,
    )


ROUTED = "direct, routed"
"""The direct pair with the inet router sending NAT-to-NAT traffic through the registrar's
host, a plain router there: the relayed path's hops without the relay."""


def route_through_registrar(pair: Pair, on: bool) -> None:
    """Policy routes in the inet router (lab namespace): what comes from either NAT for the
    other goes to the registrar's host first, which forwards it back (ip_forward=1)."""
    lab, reg = pair.lab, pair.mesh.reg_host
    nats = [n for n in lab.nats if n.name in ("na", "nb")]
    if on:
        reg.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        to_reg = inet_link_to(lab, reg.address)
        for pref, (nat, other) in enumerate(((nats[0], nats[1]), (nats[1], nats[0])), 100):
            link = inet_link_to(lab, nat.wan_ip)
            run(["ip", "-n", lab.inet, "route", "replace", f"{other.wan_ip}/32", "via",
                 str(reg.address), "dev", to_reg, "onlink", "table", "100"])  # fmt: skip
            run(["ip", "-n", lab.inet, "rule", "add", "iif", link, "lookup", "100", "pref",
                 str(pref)])  # fmt: skip
    else:
        for pref in (100, 101):
            run(["ip", "-n", lab.inet, "rule", "del", "pref", str(pref)], check=False)


class IperfFailed(RuntimeError):
    """iperf3 did not run (no connection, no server)."""


def iperf_twice(pair: Pair, seconds: float, through: bool, failures: list[str]) -> Throughput:
    """:func:`iperf`, once more after a failure (logged, with the daemons' and the registrar's
    last lines, and counted in ``failures``) once the tunnel pings again."""
    try:
        return iperf(pair, seconds, through)
    except IperfFailed as exc:
        failures.append(f"{time.strftime('%H:%M:%S')} {exc}")
        print(f"  {exc} at {time.strftime('%H:%M:%S')}; endpoints {pair.endpoints()}; "
              "last log lines:", flush=True)  # fmt: skip
        for log in (pair.a.log, pair.b.log, pair.mesh.registrar_log):
            if log is not None and log.exists():
                tail = log.read_text(errors="replace").splitlines()[-6:]
                print("\n".join(f"    {log.name}: {line}" for line in tail), flush=True)
        pair.mesh.wait_ping(pair.b, pair.a, 30.0)
        try:
            return iperf(pair, seconds, through)
        except IperfFailed as again:
            return Throughput(0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, False, f"failed twice: {again}")


def throughput(args: argparse.Namespace) -> tuple[dict[str, list[Throughput]], list[str]]:
    results: dict[str, list[Throughput]] = {"direct": [], ROUTED: [], "kernel": [], "userspace": []}
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        pairs = {
            mode: stack.enter_context(pair_lab(mode, None if mode == "direct" else mode))
            for mode in ("direct", "kernel", "userspace")
        }
        for pair in pairs.values():
            connect(pair)
            print(f"  {pair.name}: connected, {pair.endpoints()}", flush=True)
        kernel, userspace = pairs["kernel"].mesh.reg_host, pairs["userspace"].mesh.reg_host
        has_table = kernel.run("nft", "list", "table", "ip", "wgmesh_relay", check=False)
        no_table = userspace.run("nft", "list", "table", "ip", "wgmesh_relay", check=False)
        if has_table.returncode != 0 or no_table.returncode == 0:
            raise RuntimeError("the kernel lab has no relay table, or the userspace one has one")
        for i in range(args.rounds):
            for name, runs in results.items():
                pair = pairs["direct" if name == ROUTED else name]
                clear_of_retry(args.iperf_seconds + 5)
                if name == ROUTED:
                    route_through_registrar(pair, True)
                try:
                    t = iperf_twice(pair, args.iperf_seconds, name != "direct", failures)
                finally:
                    if name == ROUTED:
                        route_through_registrar(pair, False)
                runs.append(t)
                print(
                    f"  round {i + 1} {name:14} {t.mbit:6.1f} Mbit/s  retr {t.retransmits:5d}"
                    f"  wireguard-go {t.wireguard_cpu:4.0%}  registrar {t.registrar_cpu:4.0%}"
                    f"  machine busy {t.machine_busy:4.0%} steal {t.steal:3.0%}"
                    f"  via registrar {t.via_registrar:4.2f}x  path {'ok' if t.path_ok else 'BAD'}"
                    f" {t.note}",
                    flush=True,
                )
    return results, failures


# -- 2. forwarding rate -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forwarded:
    rate: float
    """Datagrams/s delivered from the expected source."""
    lost: float
    """Share of sent datagrams that did not arrive."""
    bad: int
    """Datagrams from another source or of another size (0 unless something is wrong)."""
    busy: float | None
    """Busy share of the forwarding CPU (everything on it, other work included)."""
    gen_busy: float | None
    """Busy share of the generator's CPU."""
    cpu_us: float | None
    """Busy microseconds of the forwarding CPU per delivered datagram."""
    relay_us: float | None
    """Userspace relay process CPU microseconds per delivered datagram."""


def inet_link_to(lab: Lab, address: object) -> str:
    """The inet router's veth toward ``address`` (from its /32 route)."""
    out = run(["ip", "-n", lab.inet, "route", "show", f"{address}/32"]).stdout.split()
    return out[out.index("dev") + 1]


def forwarding(args: argparse.Namespace, gen: Path) -> dict[tuple[int, str], list[Forwarded]]:
    allowed = sorted(os.sched_getaffinity(0))
    gen_cpu, fwd_cpu = (allowed[0], allowed[-1]) if len(allowed) > 1 else (None, None)
    results: dict[tuple[int, str], list[Forwarded]] = {}
    with Lab(name_prefix="wgmrb") as lab:
        relay = lab.add_public_host("r0")  # 203.0.113.10
        sender, receiver = lab.add_peer("s", None), lab.add_peer("r", None)
        relay_ip = str(relay.address)
        s_ep, r_ep = f"{sender.address}:{GEN_PORT}", f"{receiver.address}:{GEN_PORT}"
        # the plain router: what the sender sends to the receiver goes to the relay host first
        to_sender, to_relay = inet_link_to(lab, sender.address), inet_link_to(lab, relay_ip)
        run(["ip", "-n", lab.inet, "rule", "add", "iif", to_sender, "lookup", "100", "pref", "100"])
        run(["ip", "-n", lab.inet, "route", "add", f"{receiver.address}/32", "via", relay_ip,
             "dev", to_relay, "onlink", "table", "100"])  # fmt: skip
        relay.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        if fwd_cpu is not None:  # RPS: the sender's datagrams are handled on the other CPU
            rps = f"/sys/class/net/{to_sender}/queues/rx-0/rps_cpus"
            run(in_netns(lab.inet, "sh", "-c", f"echo {1 << fwd_cpu:x} > {rps}"))
        legs = (str(RELAY_LOW), s_ep, str(RELAY_LOW + 1), r_ep)
        ulog = lab.workdir / "userspace-relay.log"
        user = relay.spawn(*pin(fwd_cpu), PYTHON, "-c", USERSPACE_RELAY, relay_ip, *legs,
                           log_path=ulog)  # fmt: skip
        if not wait_until(lambda: b"ready" in ulog.read_bytes(), 20):
            raise RuntimeError(f"the userspace relay did not start: {ulog.read_text()}")
        print(f"  userspace relay: {ulog.read_text().strip()} (PID {user.pid}, CPU {fwd_cpu});"
              f" generator on CPU {gen_cpu}", flush=True)  # fmt: skip

        def load(size: int, path: str) -> Forwarded:
            if path == "plain":
                to, source = r_ep, s_ep
            else:
                to, source = f"{relay_ip}:{RELAY_LOW}", f"{relay_ip}:{RELAY_LOW + 1}"
            busy0 = cpu_busy(fwd_cpu) if fwd_cpu is not None else 0.0
            gen0 = cpu_busy(gen_cpu) if gen_cpu is not None else 0.0
            user0, t0 = cpu_seconds(user.pid), time.monotonic()
            out = sender.run(
                *pin(gen_cpu), str(gen), str(sender.address), str(GEN_PORT), *to.split(":"),
                f"/run/netns/{receiver.netns}", str(receiver.address), str(GEN_PORT),
                *source.split(":"), str(size), f"{args.fwd_seconds:g}", str(args.window),
                timeout=args.fwd_seconds + 15,
            )  # fmt: skip
            wall = time.monotonic() - t0
            busy = cpu_busy(fwd_cpu) - busy0 if fwd_cpu is not None else None
            gen_busy = cpu_busy(gen_cpu) - gen0 if gen_cpu is not None else None
            used = cpu_seconds(user.pid) - user0
            got = key_values(out.stdout)
            delivered = int(got["received"])
            time.sleep(0.5)  # what is still queued (the window) drains before the next load
            return Forwarded(
                rate=float(got["rate"]),
                lost=int(got["lost"]) / max(1, int(got["sent"])),
                bad=int(got["bad"]),
                busy=None if busy is None else busy / wall,
                gen_busy=None if gen_busy is None else gen_busy / wall,
                cpu_us=busy / delivered * 1e6 if busy is not None and delivered else None,
                relay_us=used / delivered * 1e6 if path == "userspace" and delivered else None,
            )

        kernel_relay = (PYTHON, "-c", KERNEL_RELAY)
        span = (relay_ip, str(RELAY_LOW), str(RELAY_HIGH))
        for i in range(args.rounds):
            for size in SIZES:
                for path in ("plain", "kernel", "userspace"):
                    extra = ""
                    if path == "kernel":
                        relay.run(*kernel_relay, "start", *span, *legs)
                    try:
                        f = load(size, path)
                        if path == "kernel":
                            listing = relay.run("nft", "-j", "list", "set", "ip", "wgmesh_relay",
                                                "legs").stdout  # fmt: skip
                            leg = parse_counters(listing).get(
                                f"{RELAY_LOW} . {s_ep.replace(':', ' . ')}"
                            )
                            extra = f"  kernel leg counter {leg.packets if leg else 0:,} datagrams"
                    finally:
                        if path == "kernel":
                            relay.run(*kernel_relay, "stop", *span)
                    results.setdefault((size, path), []).append(f)
                    if f.relay_us is not None:
                        extra = f"  relay process {f.relay_us:.2f} us/datagram"
                    busy = ""
                    if f.busy is not None and f.cpu_us is not None and f.gen_busy is not None:
                        busy = (f"  forwarding CPU busy {f.busy:4.0%}, {f.cpu_us:5.2f} us/datagram;"
                                f" generator CPU {f.gen_busy:4.0%}")  # fmt: skip
                    print(f"  round {i + 1} {size:5d} B {path:9} {f.rate:11,.0f} /s  "
                          f"(lost {f.lost:6.2%}, bad {f.bad}){busy}{extra}", flush=True)  # fmt: skip
        user.terminate()
        user.wait(10)
        print(f"  userspace relay: {ulog.read_text().strip().splitlines()[-1]}", flush=True)
    return results


# -- 3. first relayed handshake -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trial:
    """One lab's time to its first handshake, and what came before it."""

    handshake: float | None
    """Seconds from b's daemon start to a's first handshake on the expected path (None: not
    within 20 s)."""
    on_relay: float | None = None
    """Seconds to a's endpoint for b first being the relay."""
    direct_first: tuple[str, ...] = ()
    """The peers whose daemon had an initiation sent to a direct candidate less than 5 s
    (WireGuard's RekeyTimeout) before it switched to the relay."""
    early: int = 0
    """WireGuard datagrams the relay sockets dropped (not forwarded: the pair was not in the
    forwarding table yet)."""


DAEMON_LINE = re.compile(r"^(\S+ \S+) .* peer \S+: .*\bendpoint (\S+), handshake now\b")


def direct_first(log: Path | None, relay_ip: str) -> bool:
    """Whether the daemon's last "handshake now" before its first relayed one went to a direct
    candidate less than 5 s earlier: wireguard-go sends no new initiation within RekeyTimeout
    (5 s) of its last one, whatever the endpoint, so the relayed one then waits for the retry."""
    last_direct = None
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    for line in text.splitlines():
        m = DAEMON_LINE.match(line)
        if m is None:
            continue
        stamp = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if not m[2].startswith(relay_ip + ":"):
            last_direct = stamp
        else:
            return last_direct is not None and stamp - last_direct < 5.0
    return False


def scrape(host: Host, name: str) -> float:
    """One sample of the registrar's metrics (0 when absent)."""
    code = (
        "import urllib.request; print(urllib.request.urlopen("
        f"'http://{METRICS}/metrics', timeout=5).read().decode())"
    )
    for line in host.run(PYTHON, "-c", code, check=False).stdout.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


def handshake_trial(mode: str | None) -> Trial:
    """A fresh lab: a's daemon, 2 s later b's; the time to a's first handshake with b on the
    expected path (the relay with ``mode``, else b's public address)."""
    with pair_lab("relayed" if mode else "direct", mode) as pair:
        pair.mesh.start_daemon(pair.a)
        time.sleep(2.0)  # a is registered and watching
        clear_of_retry(10.0, after=0.0)  # a fresh pair: only a slot during the trial matters
        t0 = time.monotonic()
        pair.mesh.start_daemon(pair.b)
        on_relay = None
        while (t := time.monotonic() - t0) < 20:
            endpoint, handshake = pair.dump(pair.a, pair.b)
            relayed = pair.relayed(endpoint)
            if relayed and on_relay is None:
                on_relay = t
            direct = endpoint.rpartition(":")[0] == str(pair.b.host.public_ip)
            if handshake > 0 and (relayed if mode else direct):
                break
            time.sleep(0.05)
        else:
            print(pair.mesh.logs()[-6000:], file=sys.stderr)
            return Trial(None, on_relay)
        if mode is None:
            return Trial(t)
        if t > 2.0:  # what each daemon did, for the slow ones
            print(f"  slow trial ({t:.1f} s); the daemons' endpoint changes:", file=sys.stderr)
            for line in pair.mesh.logs().splitlines():
                if "endpoint" in line or "relay" in line:
                    print("   ", line[:220], file=sys.stderr)
        ip = pair.mesh.registrar_ip
        first = tuple(p.name for p in (pair.a, pair.b) if direct_first(p.log, ip))
        dropped = "wgmesh_registrar_relay_dropped_total"
        early = sum(  # kernel mode counts them as kernel_mode, userspace as unbound
            scrape(pair.mesh.reg_host, f'{dropped}{{reason="{why}"}}')
            for why in ("kernel_mode", "unbound")
        )
        return Trial(t, on_relay, first, int(early))


# -- main -----------------------------------------------------------------------------------


def ratio(x: float, anchor: float) -> str:
    return f"{x / anchor:.2f}x" if anchor else "-"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=10, help="handshake trials (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="throughput/forwarding rounds (5)")
    ap.add_argument("--iperf-seconds", type=float, default=8.0, help="per iperf3 run (8)")
    ap.add_argument("--fwd-seconds", type=float, default=3.0, help="per forwarding load (3)")
    ap.add_argument("--window", type=int, default=1024, help="datagrams in flight (1024)")
    ap.add_argument("--handshake-mode", choices=("kernel", "userspace"), default="kernel")
    ap.add_argument("--skip", action="append", default=[],
                    choices=("throughput", "forwarding", "handshake"))  # fmt: skip
    ap.add_argument("--no-bytecode", action="store_true", help="do not compile .pyc files first")
    args = ap.parse_args()
    if not 1 <= args.trials <= 50 or not 1 <= args.rounds <= 10:
        ap.error("--trials: 1..50, --rounds: 1..10")
    if not 1 <= args.iperf_seconds <= 60 or not 0.5 <= args.fwd_seconds <= 30:
        ap.error("--iperf-seconds: 1..60, --fwd-seconds: 0.5..30")
    if not 1 <= args.window <= 4096:
        ap.error("--window: 1..4096")
    missing = [
        t for t in ("iperf3", "gcc", "taskset", "nft", "wireguard-go") if not shutil.which(t)
    ]
    if missing:
        print(f"needs {', '.join(missing)}: apt-get install -y iperf3 gcc "
              "(and scripts/setup.sh for the lab's tools)", file=sys.stderr)  # fmt: skip
        return 2
    if not args.no_bytecode:
        compileall.compile_dir(wgmesh.__path__[0], quiet=1)
    started = time.monotonic()
    print(f"bench/relay.py {' '.join(sys.argv[1:])}".strip())
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}; at start: {load_note()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="wgmesh-relaybench-"))
    lines: list[str] = []
    try:
        if "throughput" not in args.skip:
            print(f"\n[1/3] TCP throughput through the tunnel: iperf3 -t {args.iperf_seconds:g} "
                  f"-O 1, b -> a, {args.rounds} rounds", flush=True)  # fmt: skip
            tp, tp_failures = throughput(args)
            # a run that left its path (see the round lines) measured something else: left out
            good = {k: [t for t in v if t.path_ok] for k, v in tp.items()}
            med = {k: statistics.median(t.mbit for t in v) if v else 0.0 for k, v in good.items()}
            lines.append(f"{'TCP through the tunnel':28}{'Mbit/s p50':>12}{'min':>9}{'max':>9}"
                         f"{'x direct':>10}{'x routed':>10}{'wg-go CPU':>11}{'registrar':>11}"
                         f"{'busy':>6}{'runs':>6}")  # fmt: skip
            labels = {"direct": "direct", ROUTED: "direct, via reg as router",
                      "kernel": "kernel relay", "userspace": "userspace relay"}  # fmt: skip
            for k, v in good.items():
                if not v:
                    lines.append(f"  {labels[k]:26}   no run stayed on its path")
                    continue
                mb = [t.mbit for t in v]
                lines.append(
                    f"  {labels[k]:26}{med[k]:12.1f}{min(mb):9.1f}{max(mb):9.1f}"
                    f"{ratio(med[k], med['direct']):>10}{ratio(med[k], med[ROUTED]):>10}"
                    f"{statistics.median(t.wireguard_cpu for t in v):11.0%}"
                    f"{statistics.median(t.registrar_cpu for t in v):11.0%}"
                    f"{statistics.median(t.machine_busy for t in v):6.0%}{len(v):6d}"
                )
            left = {k: len(tp[k]) - len(v) for k, v in good.items() if len(tp[k]) != len(v)}
            lines.append(f"  runs left out (path check failed): {sum(left.values())}"
                         f"{' (' + ', '.join(f'{k} {n}' for k, n in left.items()) + ')' if left else ''};"
                         f" iperf3 runs repeated after a failure: {len(tp_failures)}"
                         + "".join(f"\n    {f}" for f in tp_failures))  # fmt: skip
            for k, want in THROUGHPUT.items():
                got = med[k] / med["direct"] if med["direct"] else 0.0
                verdict = "MET" if got >= want else "MISSED"
                rounds = [t.mbit / d.mbit for t, d in zip(tp[k], tp["direct"], strict=True)
                          if t.path_ok and d.path_ok]  # fmt: skip
                spread = f"; round by round {min(rounds):.2f}-{max(rounds):.2f}x" if rounds else ""
                lines.append(
                    f"target: {k} relay >= {want}x direct throughput: {verdict} ({got:.3f}x{spread})"
                )
        if "forwarding" not in args.skip:
            gen = work / "relay_gen"
            src = work / "relay_gen.c"
            src.write_text(GENERATOR_C)
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(gen), str(src)], check=True)
            print(f"\n[2/3] forwarding rate: {args.fwd_seconds:g} s loads, {args.rounds} rounds",
                  flush=True)  # fmt: skip
            fw = forwarding(args, gen)
            lines.append(f"{'UDP forwarding':28}{'dg/s p50':>12}{'min':>9}{'max':>9}"
                         f"{'x plain':>10}{'Mbit/s':>8}{'CPU us/dg':>11}{'relay us/dg':>12}")  # fmt: skip
            for size in SIZES:
                plain = statistics.median(f.rate for f in fw[(size, "plain")])
                for path in ("plain", "kernel", "userspace"):
                    runs = fw[(size, path)]
                    rates = [f.rate for f in runs]
                    m = statistics.median(rates)
                    cpu = [f.cpu_us for f in runs if f.cpu_us is not None]
                    own = [f.relay_us for f in runs if f.relay_us is not None]
                    label = f"{size} B {'plain forwarding' if path == 'plain' else path + ' relay'}"
                    lines.append(
                        f"  {label:26}{m:12,.0f}{min(rates):9,.0f}{max(rates):9,.0f}"
                        f"{ratio(m, plain):>10}{m * size * 8 / 1e6:8.0f}"
                        f"{statistics.median(cpu) if cpu else float('nan'):11.2f}"
                        f"{statistics.median(own) if own else float('nan'):12.2f}"
                    )
        if "handshake" not in args.skip:
            print(f"\n[3/3] first handshake, {args.trials} trials (relayed: {args.handshake_mode})",
                  flush=True)  # fmt: skip
            relayed: list[float] = []
            direct: list[float] = []
            failed = 0
            causes = {"direct initiation first": 0, "datagram before the table": 0}
            for i in range(args.trials):
                r = handshake_trial(args.handshake_mode)
                d = handshake_trial(None).handshake
                show = "FAILED" if r.handshake is None else f"{r.handshake * 1000:.0f} ms"
                ep_text = "-" if r.on_relay is None else f"{r.on_relay * 1000:.0f} ms"
                d_text = "FAILED" if d is None else f"{d * 1000:.0f} ms"
                why = []
                if r.direct_first:
                    why.append(f"direct initiation < 5 s before: {', '.join(r.direct_first)}")
                if r.early:
                    why.append(f"{r.early} WireGuard datagram(s) at the relay before its table")
                print(f"  trial {i + 1}: relayed {show} (a on the relay at {ep_text}"
                      f"{'; ' if why else ''}{'; '.join(why)}); direct {d_text}", flush=True)  # fmt: skip
                if r.handshake is None:
                    failed += 1
                else:
                    relayed.append(r.handshake)
                    if r.handshake > HANDSHAKE_P95:
                        causes["direct initiation first"] += bool(r.direct_first)
                        causes["datagram before the table"] += bool(r.early)
                if d is not None:
                    direct.append(d)
            lines.append(f"{'first handshake':28}{'p50 ms':>12}{'p95 ms':>9}{'max ms':>9}"
                         f"{'x direct':>10}")  # fmt: skip
            for label, xs in (("relayed (PR x symmetric)", relayed), ("direct (PR x PR)", direct)):
                if xs:
                    lines.append(
                        f"  {label:26}{statistics.median(xs) * 1000:12.0f}{pct(xs, 0.95) * 1000:9.0f}"
                        f"{max(xs) * 1000:9.0f}"
                        f"{ratio(statistics.median(xs), statistics.median(direct) if direct else 0):>10}"
                    )
            slow = [f"{x * 1000:.0f}" for x in relayed if x > HANDSHAKE_P95]
            lines.append(f"  relayed failures: {failed} of {args.trials}; slower than 2 s: "
                         f"{len(slow)} ({' '.join(slow) or '-'} ms)")  # fmt: skip
            if slow:
                lines.append(
                    "  seen in the slow ones: " + ", ".join(f"{k} {v}" for k, v in causes.items())
                )
            p50 = statistics.median(relayed) if relayed else float("inf")
            p95 = pct(relayed, 0.95) if relayed and not failed else float("inf")
            for what, got, want in (("p50", p50, HANDSHAKE_P50), ("p95", p95, HANDSHAKE_P95)):
                verdict = "MET" if got <= want else "MISSED"
                lines.append(f"target: first relayed handshake {what} <= {want:g} s: {verdict} "
                             f"({got * 1000:.0f} ms)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nSUMMARY")
    print("\n".join(lines))
    print(f"at end: {load_note()}; wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
