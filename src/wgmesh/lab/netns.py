"""Lab plumbing: commands inside network namespaces, the processes a run starts, and the clean-up
of runs that died.

A lab run is named ``<prefix>-<run id>`` (run id: 8 hex digits); each of its namespaces is
``<prefix>-<run id>-<name>`` and each of its WireGuard interfaces ``wg<run id><n>``. Before the
first namespace exists the run writes a record (owner PID and that process's start time) to
``RUN_DIR``; :func:`cleanup_stale` uses it to tell a dead run from a live one, so it never touches
a run whose owner is still alive, nor namespaces it has no record for.

Nothing here creates anything in the root namespace: veth pairs are made directly between two
lab namespaces, sysctls are written with ``ip netns exec``. Processes are ended by PID only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from wgmesh.wg.control import UAPI_DIR  # wireguard-go's sockets, shared by every namespace

RUN_DIR = Path("/run/wgmesh-lab/runs")
"""One JSON record per live (or crashed) lab run."""
STATUS_DIR = Path("/run/wgmesh-lab")
"""Where lab daemons put their status sockets (``wgmesh.lab.mesh``)."""

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """A lab command failed (the message has the command, its exit code and stderr)."""


def run(
    argv: list[str], *, timeout: float = 10.0, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; raise :class:`LabError` on a non-zero exit if ``check``."""
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def in_netns(netns: str, *argv: str) -> list[str]:
    """The argv that runs ``argv`` inside ``netns``."""
    return ["ip", "netns", "exec", netns, *argv]


def add_netns(name: str) -> None:
    """Create a namespace with its loopback up."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def sysctl(netns: str, key: str, value: str) -> None:
    """Write a sysctl inside ``netns`` (never in the root namespace)."""
    run(in_netns(netns, "sysctl", "-qw", f"{key}={value}"))


def veth(netns: str, name: str, peer_netns: str, peer_name: str) -> None:
    """A veth pair created directly between two lab namespaces: ``name`` in ``netns``,
    ``peer_name`` in ``peer_netns``. Neither end ever exists in the root namespace."""
    run(["ip", "-n", netns, "link", "add", name, "type", "veth",
         "peer", "name", peer_name, "netns", peer_netns])  # fmt: skip


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Spawned:
    """A process a lab started, and its log."""

    proc: subprocess.Popen[bytes]
    """The process itself (``ip netns exec`` execs the command: the PID is the real one)."""
    argv: tuple[str, ...]
    """The command, as given."""
    log: IO[bytes]
    """Its stdout and stderr, closed when the process is ended."""
    log_path: Path
    """Where the log is, to show on a test failure."""


def spawn(netns: str, argv: tuple[str, ...], env: dict[str, str] | None, log_path: Path) -> Spawned:
    """Start ``argv`` in ``netns``, output to ``log_path``.

    The child gets SIGTERM if the thread that started it dies (PR_SET_PDEATHSIG), so a lab whose
    owner is SIGKILLed leaves no processes behind; call this from a thread that outlives the lab.
    """
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
    try:
        proc = subprocess.Popen(
            in_netns(netns, *argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the lab is driven from one thread
        )
    except BaseException:
        log.close()
        raise
    return Spawned(proc, argv, log, log_path)


def stop(procs: list[Spawned], grace: float = 3.0) -> None:
    """SIGTERM every process, SIGKILL those still alive after ``grace`` seconds; all by PID."""
    for s in procs:
        if s.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for s in procs:
        try:
            s.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                s.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(3)
        s.log.close()


# -- run records and stale clean-up ---------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22); None if the
    process is gone or a zombie. With the PID it identifies a process even after PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Who owns a lab run; written before the run creates anything."""

    run: str
    """``<prefix>-<run id>``: every namespace of the run starts with it plus ``-``."""
    run_id: str
    """The 8 hex digits; WireGuard interfaces are ``wg<run id><n>``."""
    owner_pid: int
    """The process that built the lab."""
    owner_start: int
    """That process's start time (clock ticks), to survive PID reuse."""
    workdir: str
    """The run's temporary directory (logs, keys)."""

    def path(self, run_dir: Path = RUN_DIR) -> Path:
        return run_dir / f"{self.run}.json"

    def write(self, run_dir: Path = RUN_DIR) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path(run_dir).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def owner_alive(self) -> bool:
        return process_start_time(self.owner_pid) == self.owner_start


def new_record(run: str, run_id: str, workdir: Path) -> RunRecord:
    """The record of a run owned by this process."""
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None
    return RunRecord(run, run_id, me, start, str(workdir))


def lab_namespaces(prefix: str) -> list[str]:
    """Every namespace named ``<prefix>-<8 hex>-<name>``, whatever run made it."""
    out = run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [ns for ns in names if _run_of(ns, prefix) is not None]


def _run_of(netns: str, prefix: str) -> str | None:
    """``<prefix>-<run id>`` if ``netns`` is named like a lab namespace with that prefix."""
    head = f"{prefix}-"
    if not netns.startswith(head):
        return None
    rest = netns[len(head) :]
    run_id, dash, name = rest[:8], rest[8:9], rest[9:]
    if dash != "-" or not name or any(c not in "0123456789abcdef" for c in run_id):
        return None
    return head + run_id


def stale_namespaces(prefix: str = "wgm", run_dir: Path = RUN_DIR) -> list[str]:
    """Namespaces of runs whose owner is dead (runs with no record are not listed)."""
    stale = []
    for ns in lab_namespaces(prefix):
        run_name = _run_of(ns, prefix)
        assert run_name is not None
        record = RunRecord.load(run_dir / f"{run_name}.json")
        if record is not None and not record.owner_alive():
            stale.append(ns)
    return stale


def cleanup_stale(prefix: str = "wgm", run_dir: Path = RUN_DIR) -> list[str]:
    """Remove what runs with this prefix left behind when their owner died; return the namespaces
    removed.

    For each dead run: its processes still inside its namespaces are ended by PID, its
    namespaces deleted, its UAPI and status sockets and its record removed. Runs whose owner is
    alive, and namespaces without a record (made by some other tool), are never touched.
    """
    removed: list[str] = []
    runs: dict[str, RunRecord] = {}
    for ns in stale_namespaces(prefix, run_dir):
        run_name = _run_of(ns, prefix)
        assert run_name is not None
        record = RunRecord.load(run_dir / f"{run_name}.json")
        assert record is not None
        runs[run_name] = record
        pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for pid in (int(p) for p in pids if p.isdigit()):
            _end_pid(pid)
        run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    # records of dead runs whose namespaces are already gone
    if run_dir.is_dir():
        for path in run_dir.glob(f"{prefix}-*.json"):
            record = RunRecord.load(path)
            if record is not None and not record.owner_alive():
                runs.setdefault(record.run, record)
    for record in runs.values():
        for directory in (UAPI_DIR, STATUS_DIR):
            for sock in directory.glob(f"wg{record.run_id}*.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()
        with contextlib.suppress(OSError):
            record.path(run_dir).unlink()
    return removed


def _end_pid(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s, one process of a dead run, by PID."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process_start_time(pid) is None:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
