"""Soak: three peers with pings on every pair for --minutes while faults are injected (issue 13).

The lab of tests/test_faults_e2e.py's clash test: lab-a and lab-c behind one home NAT
(port-restricted), both on WireGuard port 51820, lab-b behind another ("away"); the registrar
on a public host relays (``--relay-ports 40000-40099``); every daemon runs with its defaults
(``--probe-interval`` can change that). Once every pair pings, each peer pings both others
through the tunnel every 0.2 s (``ping -D -O``: six pingers, both directions of every pair),
and every ``--fault-interval`` seconds the next fault of the cycle ``--faults`` is injected:

- ``flush``: a NAT loses its state (``conntrack -F``, ``Nat.flush_conntrack``), home and away
  in turn;
- ``registrar``: the registrar is killed (SIGKILL) and started again on its state directory;
- ``daemon``: a daemon is restarted (SIGTERM, then started), lab-a, lab-b, lab-c in turn;
- ``rebind``: a NAT rebinds (``Nat.rebind``: new public ports, conntrack flushed), home and
  away in turn.

``--faults all`` (the default) is all four, ``none`` none (a plain soak for memory).

Printed at the end:

- per direction and per pair: pings sent in the measured window, answered within 1 s, share;
- per fault: its time and kind, the outage of every direction (from the first ping lost within
  20 s of the fault to the next answered one; gaps less than 1 s apart count as one outage),
  later gaps, and the daemons' and registrar's log lines around it (stalls, re-punches, relay,
  endpoints), keys replaced by peer names;
- endpoint changes, from every interface's UAPI sampled each second: total, those the faults
  allow, the excess. A rebinding of a NAT allows one change of each outside peer's endpoint for
  each peer behind it; so does a state loss of a NAT with two peers on one port (the clash: the
  mapping may move to the other host, or the path to the relay: then the peer behind it changes
  its endpoint for the outside peer too, to the relay or back), and a state loss of a NAT
  rebound earlier in the run (its public ports are pinned to a range since, so a new flow
  gets a new port, as after a rebinding); nothing else allows any. The
  daemons' own "endpoint" log lines are counted beside;
- RSS and CPU of each daemon, the registrar and (anchor) lab-b's wireguard-go, every
  ``--sample-every`` s, as a table, and the RSS slope in MB/h over the second half of the run
  (to skip warm-up) of each process that lived through it;
- MET/MISSED lines for the issue's targets: every pair >= 99 % answered; no outage after a NAT
  fault longer than 3 s (20 s for a pair through a NAT with the clash, until relayed; a
  rebinding is judged like a state loss); zero endpoint changes beyond those allowed; daemon
  RSS growth under 0.5 MB/h (judged only with --minutes >= 60).

    python bench/soak.py --minutes 12
    python bench/soak.py --minutes 3 --fault-interval 30 --faults flush,registrar
    python bench/soak.py --minutes 60 --faults none

Bounded: one lab; about 1 minute to connect (at most 60 s), then --minutes (1..120); every wait
has a timeout. Lab namespaces only (TEST-NET addresses, nothing in the root namespace); the
processes started here are ended by PID, and the Lab tears everything down. WGMESH_LAB_KEEP=1
keeps the lab's directory (every process's log) for a diagnosis.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from wgmesh.errors import WireGuardError
from wgmesh.lab.mesh import Mesh, MeshPeer
from wgmesh.lab.netns import LabError
from wgmesh.lab.topology import Lab, Nat, RouterKind
from wgmesh.proto.keys import decode_key
from wgmesh.wg.uapi import Uapi

RELAY_PORTS = "40000-40099"
PING_INTERVAL = 0.2
LATE = 1.0
"""A reply later than this counts as lost."""
MERGE = 1.0
"""Loss runs less than this apart are one outage."""
OUTAGE_START = 20.0
"""An outage must start this soon after a fault to be that fault's."""
TARGET_SHARE = 0.99
TARGET_OUTAGE = 3.0
TARGET_CLASH = 20.0
TARGET_RSS_SLOPE = 0.5  # MB/h
KINDS = ("flush", "registrar", "daemon", "rebind")
CAUSE_WORDS = ("stalled", "re-punch", "relay", "endpoint", "mapping changed", "answer", "share",
               "handshake", "restored", "daemon for", "stopping")  # fmt: skip
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+) .*time=([\d.]+) ms")
NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) (\S+) (.*)$")


@dataclass
class Fault:
    at: float
    """Wall-clock seconds when the injection began."""
    kind: str
    target: str
    took: float = 0.0
    error: str = ""
    nat: Nat | None = None

    def label(self) -> str:
        what = {
            "flush": "NAT state loss (conntrack -F) on",
            "rebind": "NAT rebinding of",
            "registrar": "kill -9 + restart of",
            "daemon": "SIGTERM + restart of the daemon of",
        }
        return f"{what[self.kind]} {self.target}"  # fmt: skip


@dataclass
class Sample:
    t: float
    role: str
    pid: int
    rss_mb: float
    cpu_s: float


@dataclass
class Probe:
    """The endpoint sampler and the process sampler, one thread (no spawns: only UAPI reads and
    /proc)."""

    peers: list[MeshPeer]
    roles: dict[str, Callable[[], int | None]]
    """role -> the role's current PID (None while it has none)."""
    every: float
    changes: list[tuple[float, str, str, str | None, str | None]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        names = {decode_key(p.wg.public_key): p.name for p in self.peers}
        last: dict[tuple[str, str], str | None] = {}
        next_sample = 0.0
        while not self.stop.is_set():
            now = time.time()
            for p in self.peers:
                try:
                    device = Uapi(p.wg.name, timeout=2.0).read()
                except WireGuardError:
                    continue
                for st in device.peers:
                    pair = (p.name, names.get(st.public_key, "?"))
                    ep = None if st.endpoint is None else str(st.endpoint)
                    if pair in last and last[pair] != ep:
                        self.changes.append((now, *pair, last[pair], ep))
                    last[pair] = ep
            if now >= next_sample:
                next_sample = now + self.every
                for role, pid_of in self.roles.items():
                    pid = pid_of()
                    if pid is not None and (got := proc_sample(pid)) is not None:
                        self.samples.append(Sample(now, role, pid, *got))
            self.stop.wait(max(0.05, 1.0 - (time.time() - now)))


def proc_sample(pid: int) -> tuple[float, float] | None:
    """(RSS MB, user+system CPU seconds) of ``pid``, None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
    return rss / 1024, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runs_python(pid: int) -> bool:
    """True if ``pid`` is the python process itself (``ip netns exec`` execs the command, so the
    Popen's PID is the daemon's), checked once so that the samples are of the right process."""
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    return b"python" in Path(argv0.decode()).name.encode()


# -- pings --------------------------------------------------------------------------------


@dataclass
class PingSeries:
    """One direction's pings: the estimated send time and the outcome of every sequence
    number."""

    name: str
    sent: list[float]
    ok: list[bool]

    @classmethod
    def parse(cls, name: str, text: str) -> PingSeries:
        anchors: dict[int, float] = {}
        good: set[int] = set()
        top = 0
        for line in text.splitlines():
            if m := REPLY.match(line):
                seq, rtt = int(m[2]), float(m[3]) / 1000
                anchors[seq] = float(m[1]) - rtt
                if rtt <= LATE:
                    good.add(seq)
                top = max(top, seq)
            elif m := NO_ANSWER.match(line):
                seq = int(m[2])
                anchors.setdefault(seq, float(m[1]) - PING_INTERVAL)
                top = max(top, seq)
        known = sorted(anchors)
        sent: list[float] = []
        i = 0  # known[i - 1] < seq <= known[i]
        for seq in range(1, top + 1):
            while i < len(known) and known[i] < seq:
                i += 1
            if i < len(known) and known[i] == seq:
                sent.append(anchors[seq])
            elif 0 < i < len(known):
                lo, hi = known[i - 1], known[i]
                sent.append(anchors[lo] + (anchors[hi] - anchors[lo]) * (seq - lo) / (hi - lo))
            elif i == 0 and known:
                sent.append(anchors[known[0]] - (known[0] - seq) * PING_INTERVAL)
            else:
                sent.append(anchors[known[-1]] + (seq - known[-1]) * PING_INTERVAL)
        return cls(name, sent, [seq in good for seq in range(1, top + 1)])

    def window(self, t0: float, t1: float) -> tuple[int, int]:
        """(sent, answered) of the pings sent in [t0, t1)."""
        idx = [i for i, t in enumerate(self.sent) if t0 <= t < t1]
        return len(idx), sum(self.ok[i] for i in idx)

    def outages(self, t0: float, t1: float, end: float) -> list[tuple[float, float, int, bool]]:
        """Loss runs starting in [t0, t1) (a run already going at t0 is not one), merged when
        less than MERGE apart: (start, end, pings lost, recovered); an outage not over by the
        end of the data ends at ``end``."""
        runs: list[tuple[float, float, int, bool]] = []
        i, n = 0, len(self.sent)
        while i < n:
            if self.ok[i] or not t0 <= self.sent[i] < t1:
                i += 1
                continue
            j = i
            while j < n and not self.ok[j]:
                j += 1
            if i > 0 and not self.ok[i - 1]:  # began before the window
                i = j
                continue
            stop = self.sent[j] if j < n else end
            if runs and self.sent[i] - runs[-1][1] < MERGE:
                runs[-1] = (runs[-1][0], stop, runs[-1][2] + j - i, j < n)
            else:
                runs.append((self.sent[i], stop, j - i, j < n))
            i = j
        return runs


# -- logs ---------------------------------------------------------------------------------


def parse_log(source: str, text: str) -> list[tuple[float, str, str]]:
    out = []
    for line in text.splitlines():
        if m := LOG_LINE.match(line):
            t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, source, m[4]))
    return out


def shorten(message: str, keys: dict[str, str]) -> str:
    for short, name in keys.items():
        message = message.replace(short, name)
    return message[:150]


# -- the run ------------------------------------------------------------------------------


def schedule(
    kinds: list[str], start: float, interval: float, end: float
) -> list[tuple[float, str]]:
    out, k = [], 1
    while kinds and start + k * interval <= end - min(interval, 20.0):
        out.append((start + k * interval, kinds[(k - 1) % len(kinds)]))
        k += 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--fault-interval", type=float, default=60.0)
    ap.add_argument("--faults", default="all", help="comma list of " + ",".join(KINDS) +
                    ", or all, or none")  # fmt: skip
    ap.add_argument("--probe-interval", type=float, default=20.0, help="the daemons' (default 20)")
    ap.add_argument("--sample-every", type=float, default=5.0, help="RSS/CPU sampling (s)")
    args = ap.parse_args()
    if not 1 <= args.minutes <= 120:
        ap.error("--minutes: 1..120")
    if not 10 <= args.fault_interval <= 3600:
        ap.error("--fault-interval: 10..3600")
    if not 1 <= args.sample_every <= 60:
        ap.error("--sample-every: 1..60")
    faults_arg = args.faults.strip().lower()
    kinds = list(KINDS) if faults_arg == "all" else [] if faults_arg == "none" else \
        [k.strip() for k in faults_arg.split(",") if k.strip()]  # fmt: skip
    if bad := [k for k in kinds if k not in KINDS]:
        ap.error(f"--faults: unknown {bad}")
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    wall0 = time.monotonic()
    print(f"soak: {args.minutes:g} min, faults {kinds or 'none'} every {args.fault_interval:g} s,"
          f" probe interval {args.probe_interval:g} s; load {' '.join(load0)}", flush=True)  # fmt: skip

    with Lab() as lab:
        reg = lab.add_public_host("reg")
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED)
        away = lab.add_nat("away", RouterKind.PORT_RESTRICTED)
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("lab-a", lab.add_peer("a", home))
        c = mesh.add_peer("lab-c", lab.add_peer("c", home))
        b = mesh.add_peer("lab-b", lab.add_peer("b", away))
        peers = [a, b, c]
        pairs = [(a, b), (a, c), (b, c)]
        for x, y in pairs:
            mesh.link(x, y)
        daemon_opts = ("--probe-interval", f"{args.probe_interval:g}")
        mesh.start_registrar("--relay-ports", RELAY_PORTS)
        for p in peers:
            mesh.start_daemon(p, *daemon_opts)
        t_start = time.monotonic()
        deadline = t_start + 60.0
        for x, y in [*pairs, *((y, x) for x, y in pairs)]:
            if not mesh.wait_ping(x, y, max(0.5, deadline - time.monotonic())):
                print(mesh.logs())
                print(f"{x.name} cannot reach {y.name} within 60 s: no soak")
                return 1
        print(f"every pair pings after {time.monotonic() - t_start:.1f} s", flush=True)
        wg_b = next(s.proc.pid for s in lab.procs if s.argv == ("wireguard-go", "-f", b.wg.name))
        for p in peers:
            assert p.daemon is not None and runs_python(p.daemon.pid), "not the daemon's PID"
        assert mesh.registrar is not None and runs_python(mesh.registrar.pid)

        def daemon_pid(p: MeshPeer) -> Callable[[], int | None]:
            return lambda: None if p.daemon is None else p.daemon.pid

        roles = {f"daemon {p.name}": daemon_pid(p) for p in peers}
        roles["registrar"] = lambda: None if mesh.registrar is None else mesh.registrar.pid
        roles["wg-go lab-b"] = lambda: wg_b
        probe = Probe(peers, roles, args.sample_every)
        pingers = {}
        for x, y in [*pairs, *((y, x) for x, y in pairs)]:
            log = lab.workdir / f"ping-{x.name}-{y.name}.log"
            proc = x.host.spawn("ping", "-D", "-n", "-O", "-i", f"{PING_INTERVAL:g}", "-W",
                                f"{LATE:g}", y.tunnel_ip, log_path=log)  # fmt: skip
            pingers[(x.name, y.name)] = (proc, log)
        thread = threading.Thread(target=probe.run, daemon=True)
        thread.start()
        time.sleep(5.0)  # the pings run: the daemons' traffic watch sees busy paths
        t0 = time.time()
        t_end = t0 + args.minutes * 60
        plan = schedule(kinds, t0, args.fault_interval, t_end)
        turns: Counter[str] = Counter()
        faults: list[Fault] = []
        try:
            for at, kind in plan:
                time.sleep(max(0.0, min(at - time.time(), args.fault_interval + 1)))
                n = turns[kind]
                turns[kind] += 1
                fault = Fault(time.time(), kind, "")
                try:
                    if kind in ("flush", "rebind"):
                        nat = (home, away)[n % 2]
                        fault.target, fault.nat = f"NAT-{nat.name}", nat
                        nat.flush_conntrack() if kind == "flush" else nat.rebind()
                    elif kind == "registrar":
                        fault.target = "the registrar"
                        mesh.stop_registrar(kill=True)
                        mesh.start_registrar("--relay-ports", RELAY_PORTS)
                    else:
                        p = peers[n % 3]
                        fault.target = p.name
                        mesh.stop_daemon(p)
                        mesh.start_daemon(p, *daemon_opts)
                except (LabError, TimeoutError, OSError) as exc:
                    fault.error = repr(exc)
                fault.took = time.time() - fault.at
                faults.append(fault)
                print(f"  +{fault.at - t0:6.1f} s  {fault.label()}"
                      f"{'  FAILED: ' + fault.error if fault.error else ''}", flush=True)  # fmt: skip
            time.sleep(max(0.0, min(t_end - time.time(), args.minutes * 60)))
        finally:
            probe.stop.set()
            thread.join(5)
            for proc, _ in pingers.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(5)
        t_end = min(t_end, time.time())
        ping_texts = {k: log.read_text(errors="replace") for k, (_, log) in pingers.items()}
        logs = []
        for p in peers:
            assert p.log is not None
            logs += parse_log(p.name, p.log.read_text(errors="replace"))
        logs += parse_log("registrar", mesh.registrar_log.read_text(errors="replace"))
        keys = {p.wg.public_key[:8]: p.name for p in peers}
        behind = {nat.name: [p.name for p in peers if p.host.nat is nat] for nat in (home, away)}
        clash = {n for n, names in behind.items() if len(names) > 1}  # all listen on 51820
        reg_ip = str(reg.address)
        names = [p.name for p in peers]

    report(args, kinds, t0, t_end, faults, ping_texts, logs, keys, behind, clash, reg_ip, names,
           probe)  # fmt: skip
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at start {' '.join(load0)}, at end {' '.join(load1)}; wall time "
          f"{(time.monotonic() - wall0) / 60:.1f} min")  # fmt: skip
    return 0


def report(
    args: argparse.Namespace,
    kinds: list[str],
    t0: float,
    t_end: float,
    faults: list[Fault],
    ping_texts: dict[tuple[str, str], str],
    logs: list[tuple[float, str, str]],
    keys: dict[str, str],
    behind: dict[str, list[str]],
    clash: set[str],
    reg_ip: str,
    names: list[str],
    probe: Probe,
) -> None:
    series = {k: PingSeries.parse(f"{k[0]}->{k[1]}", t) for k, t in ping_texts.items()}
    span = t_end - t0
    print(f"\nmeasured {span / 60:.1f} min from the first ping window; {len(faults)} faults")
    print("\npings (every 0.2 s, both directions; answered = a reply within 1 s)")
    print(f"{'':22}{'sent':>8}{'answered':>10}{'share':>9}")
    pair_share: dict[str, float] = {}
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            tot = [0, 0]
            for d in ((x, y), (y, x)):
                s, ok = series[d].window(t0, t_end)
                tot[0] += s
                tot[1] += ok
                print(f"  {d[0] + ' -> ' + d[1]:20}{s:8}{ok:10}{100 * ok / max(1, s):8.2f}%")
            share = tot[1] / max(1, tot[0])
            pair_share[f"{x} <-> {y}"] = share
            print(f"  {x + ' <-> ' + y:20}{tot[0]:8}{tot[1]:10}{100 * share:8.2f}%")

    print("\nfaults (outage: first ping lost within 20 s of the fault to the next answered;")
    print("gaps under 1 s apart merged; the log lines are those around the outage)")
    worst_nat: list[tuple[str, float, float]] = []  # (what, outage, limit) of NAT faults
    by_kind: dict[str, list[float]] = defaultdict(list)  # the worst pair's outage per fault
    windows = [t0, *(f.at for f in faults), t_end]
    spontaneous = gaps(series, t0, windows[1], t_end, "before the first fault")
    for i, f in enumerate(faults):
        w1 = windows[i + 2]
        print(f"\n#{i + 1} +{f.at - t0:.1f} s: {f.label()} (took {f.took:.1f} s)"
              f"{'  FAILED: ' + f.error if f.error else ''}")  # fmt: skip
        latest = f.at + 3.0
        for j, x in enumerate(names):
            for y in names[j + 1 :]:
                parts, out = [], 0.0
                for d in ((x, y), (y, x)):
                    runs = series[d].outages(f.at - 0.05, min(w1, f.at + OUTAGE_START), t_end)
                    if runs:
                        start, stop, lost, back = runs[0]
                        out = max(out, stop - start)
                        latest = max(latest, stop)
                        parts.append(f"{d[0][-1]}->{d[1][-1]} {stop - start:.2f} s from "
                                     f"+{start - f.at:.2f} ({lost} lost"
                                     f"{'' if back else ', NOT RECOVERED by the end'})")  # fmt: skip
                    later = series[d].outages(f.at + OUTAGE_START, w1, t_end)
                    later = [r for r in later if not runs or r[0] > runs[0][1]]
                    spontaneous += [f"{d[0]}->{d[1]} {r[1] - r[0]:.2f} s at +{r[0] - t0:.1f} s "
                                    f"(after fault #{i + 1})" for r in later]  # fmt: skip
                if f.kind in ("flush", "rebind") and f.nat is not None:
                    crosses = (x in behind[f.nat.name]) != (y in behind[f.nat.name])
                    limit = TARGET_CLASH if crosses and f.nat.name in clash else TARGET_OUTAGE
                    worst_nat.append((f"#{i + 1} {x} <-> {y}", out, limit))
                print(f"  {x + ' <-> ' + y:18} {'; '.join(parts) if parts else 'no loss'}")
                by_kind[f.kind + (f" {f.target}" if f.nat else "")].append(out)
        lines = [(t, src, m) for t, src, m in sorted(logs) if f.at - 0.5 <= t <= min(w1, latest + 1.5)
                 and any(w in m for w in CAUSE_WORDS) and "counters" not in m]  # fmt: skip
        for t, src, m in lines[:20]:
            print(f"    {t - f.at:+6.2f} s {src:9} {shorten(m, keys)}")
        if len(lines) > 20:
            print(f"    ... {len(lines) - 20} more log lines")
    print("\noutages by fault kind (per fault and pair: the longer direction)")
    for kind, outs in sorted(by_kind.items()):
        hit = sorted(o for o in outs if o > 0)
        worst = (
            f"; worst {hit[-1]:.2f} s, median of those hit {hit[len(hit) // 2]:.2f} s"
            if hit
            else ""
        )
        print(f"  {kind:18} {len(outs):4} fault-pairs, {len(hit):3} with loss{worst}")
    if spontaneous:
        print("\ngaps not caused by a fault (or later than 20 s after one):")
        for g in spontaneous[:20]:
            print(f"  {g}")

    excess = endpoints(probe, logs, keys, t0, t_end, faults, behind, clash, reg_ip)
    slopes = resources(probe, t0, t_end, args.sample_every)

    print("\ntargets")
    worst_pair = min(pair_share, key=lambda k: pair_share[k])
    ok = pair_share[worst_pair] >= TARGET_SHARE
    print(f"  every pair >= 99 % answered (worst {worst_pair} {100 * pair_share[worst_pair]:.2f}"
          f" %): {'MET' if ok else 'MISSED'}")  # fmt: skip
    if worst_nat:
        over = [w for w in worst_nat if w[1] > w[2]]
        top = max(worst_nat, key=lambda w: w[1] / w[2])
        print(f"  NAT faults: no outage over 3 s (20 s through the clash NAT) (worst {top[0]} "
              f"{top[1]:.2f} s, limit {top[2]:.0f} s; {len(over)} of {len(worst_nat)} over): "
              f"{'MET' if not over else 'MISSED'}")  # fmt: skip
    else:
        print("  NAT faults: none injected: NOT JUDGED")
    print(f"  no endpoint change beyond those the faults allow ({excess} excess): "
          f"{'MET' if excess == 0 else 'MISSED'}")  # fmt: skip
    daemons = {r: s for r, s in slopes.items() if r.startswith("daemon")}
    shown = ", ".join(f"{r[7:]} {s:+.2f}" if s is not None else f"{r[7:]} n/a"
                      for r, s in daemons.items())  # fmt: skip
    judged = [s for s in daemons.values() if s is not None]
    if args.minutes < 60 or not judged:
        verdict = "NOT JUDGED (needs --minutes >= 60 and a daemon that lived through it)"
    else:
        verdict = "MET" if max(judged) < TARGET_RSS_SLOPE else "MISSED"
    print(f"  daemon RSS growth < 0.5 MB/h ({shown} MB/h): {verdict}")


def gaps(
    series: dict[tuple[str, str], PingSeries], w0: float, w1: float, end: float, why: str
) -> list[str]:
    out = []
    for d, s in series.items():
        for r in s.outages(w0, w1, end):
            out.append(f"{d[0]}->{d[1]} {r[1] - r[0]:.2f} s at +{r[0] - w0:.1f} s ({why})")
    return out


def endpoints(
    probe: Probe,
    logs: list[tuple[float, str, str]],
    keys: dict[str, str],
    t0: float,
    t_end: float,
    faults: list[Fault],
    behind: dict[str, list[str]],
    clash: set[str],
    reg_ip: str,
) -> int:
    """Print the endpoint changes against those the faults allow; return the excess."""
    changes = [c for c in probe.changes if t0 <= c[0] <= t_end]
    by_window: dict[int, list[tuple[float, str, str, str | None, str | None]]] = defaultdict(list)
    for ch in changes:
        w = max((i for i, f in enumerate(faults) if f.at <= ch[0]), default=-1)
        by_window[w].append(ch)
    allowed_total = excess = 0
    excess_lines: list[str] = []
    rebound: set[str] = set()
    for w, chs in sorted(by_window.items()):
        f = faults[w] if w >= 0 else None
        for earlier in faults[: w + 1] if w >= 0 else ():
            if earlier.kind == "rebind" and earlier.nat is not None:
                rebound.add(earlier.nat.name)  # its ports are pinned now: not preserved
        allowed: Counter[tuple[str, str]] = Counter()
        moves = f is not None and f.nat is not None and (
            f.kind == "rebind" or f.nat.name in clash
            or (f.kind == "flush" and f.nat.name in rebound)
        )  # fmt: skip
        if f is not None and f.nat is not None and moves:
            inside = behind[f.nat.name]
            for obs in {c[1] for c in chs} - set(inside):
                for remote in inside:
                    allowed[(obs, remote)] = 1
            if f.nat.name in clash:  # a pair moved to (or back from) the relay: both sides
                for obs in inside:
                    for remote in {c[2] for c in chs} - set(inside):
                        allowed[(obs, remote)] = 1
        seen: Counter[tuple[str, str]] = Counter((c[1], c[2]) for c in chs)
        for pair, n in seen.items():
            allowed_total += min(n, allowed[pair])
            extra = n - allowed[pair]
            if extra > 0:
                excess += extra
                for ch in [c for c in chs if (c[1], c[2]) == pair][-extra:]:
                    excess_lines.append(
                        f"  +{ch[0] - t0:7.1f} s {ch[1]}: {ch[2]} {ch[3]} -> {ch[4]} "
                        f"({kind_of(ch[3], ch[4], reg_ip)}; "
                        f"{'after #' + str(w + 1) + ' ' + f.kind if f else 'no fault'})"
                    )
    logged = 0
    for t, s, m in logs:
        if s != "registrar" and t0 <= t <= t_end and m.startswith("peer ") and "endpoint " in m:
            logged += 1
    print(f"\nendpoint changes (each interface read every 1 s): {len(changes)} seen, "
          f"{allowed_total} allowed by the faults, {excess} excess; "
          f"daemons logged {logged} endpoint sets")  # fmt: skip
    kinds = Counter(kind_of(c[3], c[4], reg_ip) for c in changes)
    if kinds:
        print("  by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    for line in excess_lines[:30]:
        print(line)
    if len(excess_lines) > 30:
        print(f"  ... {len(excess_lines) - 30} more")
    return excess


def kind_of(old: str | None, new: str | None, reg_ip: str) -> str:
    if old is None or new is None:
        return "set/cleared"
    oi, ni = old.rsplit(":", 1)[0], new.rsplit(":", 1)[0]
    if ni == reg_ip and oi != reg_ip:
        return "to relay"
    if oi == reg_ip and ni != reg_ip:
        return "relay to direct"
    return "new port" if oi == ni else "new address"


def resources(probe: Probe, t0: float, t_end: float, every: float) -> dict[str, float | None]:
    """Print the RSS/CPU table and the slopes; return the RSS slope (MB/h) of each role, None
    where no process of the role lived through the second half."""
    by_role: dict[str, list[Sample]] = defaultdict(list)
    for s in probe.samples:
        by_role[s.role].append(s)
    roles = list(by_role)
    times = sorted({round(s.t) for s in probe.samples if s.t >= t0})
    step = max(1, len(times) // 12)
    rows = times[::step] + ([times[-1]] if times and times[-1] not in times[::step] else [])
    print(
        f"\nRSS MB / CPU % since the previous row (every {every:g} s sampled; "
        "* a new process since the previous row)"
    )
    print(f"{'+min':>6}" + "".join(f"{r:>20}" for r in roles))
    prev: dict[str, Sample] = {}
    for t in rows:
        cells = []
        for r in roles:
            s = min(by_role[r], key=lambda x: abs(x.t - t))
            p = prev.get(r)
            if p is None or p.pid != s.pid or s.t <= p.t:
                mark = "" if p is None or p.pid == s.pid else "*"
                cells.append(f"{s.rss_mb:8.1f}{'':6}{mark:>6}")
            else:
                pct = 100 * (s.cpu_s - p.cpu_s) / (s.t - p.t)
                cells.append(f"{s.rss_mb:8.1f}{pct:11.2f} %")
            prev[r] = s
        print(f"{max(0.0, t - t0) / 60:6.1f}" + "".join(f"{c:>20}" for c in cells))
    slopes: dict[str, float | None] = {}
    half = t0 + (t_end - t0) / 2
    print("\nRSS slope over the second half (least squares), and CPU over the whole window")
    for r in roles:
        pts = [s for s in by_role[r] if s.t >= half]
        same = [s for s in pts if s.pid == pts[-1].pid] if pts else []
        whole = [s for s in by_role[r] if s.t >= t0 and same and s.pid == same[-1].pid]
        if len(same) >= 3 and same[-1].t - same[0].t >= 0.8 * (t_end - half):
            xs, ys = [(s.t - same[0].t) / 3600 for s in same], [s.rss_mb for s in same]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mx) ** 2 for x in xs
            )
            slopes[r] = slope
            text = f"{slope:+7.2f} MB/h ({same[0].rss_mb:.1f} -> {same[-1].rss_mb:.1f} MB)"
        else:
            slopes[r] = None
            text = "n/a (restarted in the second half)"
        cpu = ""
        if len(whole) >= 2:
            used = (whole[-1].cpu_s - whole[0].cpu_s) / (whole[-1].t - whole[0].t)
            cpu = f"; CPU {100 * used:.2f} %"
        print(f"  {r:16} {text}{cpu}")
    return slopes


if __name__ == "__main__":
    raise SystemExit(main())
