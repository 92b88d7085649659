"""Userspace relay forwarding rate on loopback: datagrams/s and the relay's CPU per datagram.

The relay (wgmesh.registry.relayudp.RelaySockets: two relay ports on 127.0.0.1 forming one
pair) runs in a child process pinned to one CPU, on uvloop when installed (as the registrar
runs it; --loop asyncio for the default loop), once batched (recvmmsg/sendmmsg) and once on
the plain asyncio fallback. The load generator runs here, pinned to the other CPU: peer a
(127.0.0.2) sends with sendmmsg to its relay port, peer b (127.0.0.3) reads with recvmmsg what
the relay forwards from b's relay port, with at most --window datagrams in flight (a
self-clocked load, as a tunnel's TCP is; a window not drained for 50 ms counts as lost). A
"direct" run (a to b, no relay) shows the generator's own ceiling. For 100- and 1,400-byte
datagrams we print datagrams/s, payload Mbit/s, the relay's CPU microseconds per datagram and
CPU share (from /proc/PID/stat), and what was lost.

    python bench/relay_udp.py --seconds 3

Bounded: --rounds (1..5) x 2 sizes x 3 runs, each at most --seconds and --count datagrams; loopback only; each
relay child is ended by its PID (stdin closed, then SIGKILL after 5 s), also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair, RouteTable
from wgmesh.registry import udpbatch
from wgmesh.registry.udpbatch import MSG_DONTWAIT, Iovec, Mmsghdr

BATCH = 64
SIZES = (100, 1400)


# -- the relay child ---------------------------------------------------------------------


async def serve(a: Endpoint, b: Endpoint) -> None:
    from wgmesh.registry.relayudp import RelaySockets

    table = RouteTable()
    relay = RelaySockets("127.0.0.1", table, lambda d, s, p: None, forward=True)
    pa, pb = await relay.open(0), await relay.open(0)
    table.set_pairs([RelayPair(RelayLeg(pa, a), RelayLeg(pb, b))])
    print(f"ready {pa} {pb} {int(relay.batched)}", flush=True)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def closed() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), closed)
    await done  # stdin readable: closed by the parent
    s = relay.stats
    print(json.dumps({"received": s.received, "forwarded": s.forwarded,
                      "batches": s.batches, "send_failed": s.send_failed,
                      "dropped_unbound": s.dropped_unbound}), flush=True)  # fmt: skip
    relay.close_all()


def child_main(args: argparse.Namespace) -> None:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.serve == "plain":
        udpbatch.available = lambda: False  # the fallback, as where libc has no recvmmsg
    a, b = Endpoint.parse(args.a), Endpoint.parse(args.b)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(a, b))
    else:
        asyncio.run(serve(a, b))


# -- the load generator ------------------------------------------------------------------


class Batches:
    """sendmmsg/recvmmsg buffers for one socket (the generator's own, via udpbatch's ctypes)."""

    def __init__(self, size: int) -> None:
        lib = udpbatch.libc()
        assert lib is not None, "recvmmsg/sendmmsg are needed for the load generator"
        self.lib = lib
        self.slot = 2048
        self.buf = ctypes.create_string_buffer(BATCH * self.slot)
        self.names = ctypes.create_string_buffer(BATCH * 16)
        self.iov = (Iovec * BATCH)()
        self.msg = (Mmsghdr * BATCH)()
        at = ctypes.addressof(self.buf)
        payload = b"\x04\x00\x00\x00" + os.urandom(size - 4)  # WireGuard-shaped, not STUN
        for i in range(BATCH):
            ctypes.memmove(at + i * self.slot, payload, size)
            self.iov[i].iov_base = at + i * self.slot
            self.iov[i].iov_len = size
            h = self.msg[i].msg_hdr
            h.msg_iov = ctypes.pointer(self.iov[i])
            h.msg_iovlen = 1
        self.payload = payload

    def aim(self, dest: tuple[str, int]) -> None:
        name = socket.AF_INET.to_bytes(2, sys.byteorder) + dest[1].to_bytes(2, "big")
        name += socket.inet_aton(dest[0]) + bytes(8)
        ctypes.memmove(self.names, name, 16)
        for i in range(BATCH):
            h = self.msg[i].msg_hdr
            h.msg_name = ctypes.addressof(self.names)
            h.msg_namelen = 16

    def receiving(self) -> None:
        for i in range(BATCH):
            self.iov[i].iov_len = self.slot
            h = self.msg[i].msg_hdr
            h.msg_name = ctypes.addressof(self.names) + i * 16
            h.msg_namelen = 16

    def send(self, fd: int, k: int) -> int:
        n: int = self.lib.sendmmsg(fd, ctypes.byref(self.msg), k, MSG_DONTWAIT)
        return max(n, 0)

    def recv(self, fd: int) -> int:
        n: int = self.lib.recvmmsg(fd, ctypes.byref(self.msg), BATCH, MSG_DONTWAIT, None)
        return max(n, 0)


@dataclass
class Run:
    delivered: int
    lost: int
    seconds: float
    cpu: float | None = None  # relay process CPU seconds (user + system)
    user: float = 0.0  # of which user
    core: float | None = None  # busy seconds of the relay's CPU (the process and its softirq)
    check: str = ""
    own_cpu: float = 0.0  # the generator's CPU seconds
    batch: float = 0.0  # the relay's datagrams per recvmmsg


def udp(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    s.bind((ip, 0))
    return s


def load(a: socket.socket, b: socket.socket, dest: tuple[str, int], size: int,
         args: argparse.Namespace, expect_from: tuple[str, int]) -> Run:  # fmt: skip
    tx, rx = Batches(size), Batches(size)
    tx.aim(dest)
    rx.receiving()
    poll = select.poll()
    poll.register(b.fileno(), select.POLLIN)
    afd, bfd = a.fileno(), b.fileno()
    # one round first, checked: the bytes and where they came from
    tx.send(afd, 1)
    if not poll.poll(1000):
        return Run(0, 1, 0.0, check="nothing arrived")
    n = rx.recv(bfd)
    got = ctypes.string_at(ctypes.addressof(rx.buf), rx.msg[0].msg_len)
    addr = udpbatch.sockaddr_tuple(ctypes.string_at(rx.names, 16))
    check = "ok" if n == 1 and got == tx.payload and addr == expect_from else f"BAD {addr}"
    inflight = delivered = lost = sent = 0
    own = time.process_time()
    start = time.perf_counter()
    deadline = start + args.seconds
    while delivered + lost < args.count and time.perf_counter() < deadline:
        room = min(args.window - inflight, BATCH, args.count - sent)
        if room > 0:
            m = tx.send(afd, room)
            sent += m
            inflight += m
        r = rx.recv(bfd)
        if r:
            delivered += r
            inflight -= r
        elif room <= 0 and not poll.poll(50):
            lost += inflight
            inflight = 0
            if sent >= args.count:
                break
    seconds = time.perf_counter() - start
    return Run(delivered, lost, seconds, check=check, own_cpu=time.process_time() - own)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def core_busy(cpu: int) -> float:
    """Seconds CPU ``cpu`` was not idle (user, system, irq, softirq: where the kernel also
    delivers the datagrams the relay sends on loopback)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def relayed(mode: str, size: int, args: argparse.Namespace, cpus: tuple[int, int] | None) -> Run:
    a, b = udp("127.0.0.2"), udp("127.0.0.3")
    cmd = [sys.executable, __file__, "--serve", mode, "--loop", args.loop,
           "--a", "{}:{}".format(*a.getsockname()), "--b", "{}:{}".format(*b.getsockname())]  # fmt: skip
    if cpus is not None:
        cmd += ["--cpu", str(cpus[1])]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        ready = child.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"relay child did not start: {ready}")
        pa, pb, batched = int(ready[1]), int(ready[2]), ready[3] == "1"
        assert batched == (mode == "batched"), "the relay's path is not the one asked for"
        (u0, s0), c0 = cpu_seconds(child.pid), core_busy(cpus[1]) if cpus else 0.0
        run = load(a, b, ("127.0.0.1", pa), size, args, ("127.0.0.1", pb))
        (u1, s1), c1 = cpu_seconds(child.pid), core_busy(cpus[1]) if cpus else 0.0
        run.cpu, run.user = u1 + s1 - u0 - s0, u1 - u0
        run.core = c1 - c0 if cpus else None
        child.stdin.close()
        stats = json.loads(child.stdout.readline() or "{}")
        child.wait(5)
        if stats.get("batches"):
            run.batch = stats["received"] / stats["batches"]
        if stats.get("dropped_unbound") or stats.get("send_failed"):
            run.check += f" relay stats {stats}"
        return run
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        a.close()
        b.close()


def direct(size: int, args: argparse.Namespace) -> Run:
    a, b = udp("127.0.0.2"), udp("127.0.0.3")
    try:
        return load(a, b, b.getsockname(), size, args, a.getsockname())
    finally:
        a.close()
        b.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--count", type=int, default=3_000_000)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None)
    p.add_argument("--serve", choices=("batched", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--a", help=argparse.SUPPRESS)
    p.add_argument("--b", help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loop is None:
        try:
            import uvloop  # noqa: F401

            args.loop = "uvloop"
        except ImportError:
            args.loop = "asyncio"
    if args.serve:
        child_main(args)
        return
    if not 0 < args.seconds <= 60 or not 0 < args.count <= 50_000_000:
        p.error("--seconds must be in (0, 60] and --count in (0, 50e6]")
    if not 1 <= args.rounds <= 5:
        p.error("--rounds must be 1..5")
    if not 0 < args.window <= 4096:
        p.error("--window must be in 1..4096")
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[1]) if len(allowed) >= 2 else None
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    print(f"relay on {args.loop}; generator on CPU {cpus and cpus[0]}, relay on CPU "
          f"{cpus and cpus[1]}; window {args.window}, at most {args.seconds} s / "
          f"{args.count} datagrams per run")  # fmt: skip
    print("us/dg: CPU microseconds per forwarded datagram: of the relay process (user, and "
          "user+system), and of the relay's whole core (with the softirq that delivers what it "
          "sends); core max = 1e6 / core us/dg")  # fmt: skip
    print(f"{'bytes':>5} {'path':<8} {'datagrams/s':>12} {'Mbit/s':>7} {'user':>6} "
          f"{'proc':>6} {'core':>6} {'core max/s':>10} {'busy':>5} {'batch':>5} {'gen':>5} "
          f"{'lost':>6}  check")  # fmt: skip
    for _ in range(args.rounds):
        for size in SIZES:
            for mode in ("direct", "batched", "plain"):
                run = direct(size, args) if mode == "direct" else relayed(mode, size, args, cpus)
                print(row(size, mode, run), flush=True)


def row(size: int, mode: str, run: Run) -> str:
    rate = run.delivered / run.seconds if run.seconds else 0.0
    blank = "     -"

    def per(x: float) -> str:
        return f"{x / run.delivered * 1e6:6.2f}" if run.delivered else blank

    user = per(run.user) if run.cpu is not None else blank
    proc = per(run.cpu) if run.cpu is not None else blank
    core = per(run.core) if run.core is not None else blank
    most = f"{run.delivered / run.core:10,.0f}" if run.core else "         -"
    busy = f"{run.core / run.seconds:5.0%}" if run.core is not None and run.seconds else "    -"
    gen = f"{run.own_cpu / run.seconds:5.0%}" if run.seconds else "    -"
    return (f"{size:5d} {mode:<8} {rate:12,.0f} {rate * size * 8 / 1e6:7.0f} {user} {proc} "
            f"{core} {most} {busy} {run.batch:5.1f} {gen} {run.lost:6d}  {run.check}")  # fmt: skip


if __name__ == "__main__":
    main()
