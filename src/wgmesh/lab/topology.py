"""The NAT lab: network namespaces as hosts, nftables NAT routers, an "internet" router.

::

    public host 203.0.113.x/32 --+
    public peer 203.0.113.x/32 --+-- [inet router 203.0.113.1] --+-- [NAT: eth0 198.51.100.x/32]
                                                                |      br0 10.N.0.1/24
                                                                |      +-- peer 10.N.0.10
                                                                |      +-- peer 10.N.0.11
                                                                +-- [NAT ...]

Every public node hangs off the inet router on its own veth with a /32 and on-link routes, so a
packet crossing from one NAT to another takes two router hops: a TTL-2 packet sent by a peer
leaves its own NAT but dies at the inet router before reaching the far NAT (the daemon's
NAT-priming trick relies on this, as it would on a real internet path).

Safety: every namespace and WireGuard interface name carries a random run id; veth pairs are
created directly inside the namespaces, so nothing is created in, linked to or changed in the root
namespace; processes are ended by PID; ``close`` (on leaving ``with``, also on an exception; at
interpreter exit; on SIGTERM/SIGHUP) removes every namespace and UAPI socket the run made.
``cleanup_stale`` removes what a SIGKILLed run left.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from types import FrameType

from wgmesh.lab.nat import LAN_IF, WAN_IF, Nat, RouterKind
from wgmesh.lab.netns import (
    RUN_DIR,
    LabError,
    Spawned,
    add_netns,
    cleanup_stale,
    in_netns,
    new_record,
    run,
    spawn,
    stale_namespaces,
    stop,
    sysctl,
    veth,
)
from wgmesh.lab.wireguard import WgIface, start_wireguard

__all__ = ["Host", "Lab", "LabError", "Nat", "RouterKind", "cleanup_stale", "stale_namespaces"]

INET_GW = ipaddress.IPv4Address("203.0.113.1")
"""The internet router's address (on its loopback)."""
TEST_NETS = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
"""The only "public" addresses the lab hands out (RFC 5737)."""

Address = ipaddress.IPv4Address


class Host:
    """One network namespace with an address: a public host or a host on a NAT's LAN."""

    def __init__(self, lab: Lab, name: str, netns: str, address: Address, nat: Nat | None) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.address = address
        """Its own IP (public, or on its NAT's LAN)."""
        self.nat = nat
        """The NAT it is behind, None for a public host."""
        self.wireguards: list[WgIface] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address}, public={self.public_ip})"

    @property
    def lan_address(self) -> Address | None:
        """Its address on its NAT's LAN, None for a public host."""
        return self.address if self.nat is not None else None

    @property
    def public_ip(self) -> Address:
        """The address the internet sees: the NAT's WAN address, or its own."""
        return self.nat.wan_ip if self.nat is not None else self.address

    def run(
        self, *argv: str, check: bool = True, timeout: float = 10.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside this host's namespace (``ip netns exec``)."""
        return run(in_netns(self.netns, *argv), timeout=timeout, check=check, stdin=stdin)

    def spawn(
        self, *argv: str, env: dict[str, str] | None = None, log_path: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process here, stdout and stderr to ``log_path`` (default: a file
        in the lab's directory). The lab ends it by PID at close (SIGTERM, SIGKILL after 3 s)."""
        return self.lab.spawn(self, argv, env, log_path)

    def start_wireguard(
        self,
        iface: str | None = None,
        listen_port: int = 51820,
        address: str | None = None,
        private_key: str | None = None,
    ) -> WgIface:
        """wireguard-go here with a private key (generated if None), listen port and tunnel
        address (default ``100.64.0.N/24``, N counting the lab's interfaces from 1)."""
        n = self.lab.next_wireguard()
        name = iface or f"wg{self.lab.run_id}{n}"
        wg = start_wireguard(self, name, listen_port, address or f"100.64.0.{n}/24", private_key)
        self.wireguards.append(wg)
        return wg

    def ping(self, address: object, count: int = 1, timeout: float = 1.0) -> bool:
        """True if at least one of ``count`` pings (0.2 s apart) is answered within
        ``timeout`` seconds."""
        r = self.run(
            "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{timeout:g}", str(address),
            check=False, timeout=count * (timeout + 0.5) + 5,
        )  # fmt: skip
        return r.returncode == 0


class Lab:
    """A whole lab; use it as a context manager. See the module docstring."""

    def __init__(self, name_prefix: str = "wgm", run_dir: Path = RUN_DIR) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"{name_prefix}-{self.run_id}"
        """Every namespace of this run is ``<prefix>-<name>``."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        """Logs of every process, keys; removed at close unless WGMESH_LAB_KEEP is set."""
        self.namespaces: list[str] = []
        self.procs: list[Spawned] = []
        self.hosts: list[Host] = []
        self.nats: list[Nat] = []
        self._index = 0
        self._wireguards = 0
        self._public = {"host": 10, "peer": 50}
        self._closed = False
        self._record = new_record(self.prefix, self.run_id, self.workdir)
        self._run_dir = run_dir
        _track(self)
        try:
            self._record.write(run_dir)
            self.inet = self._netns("inet")
            """The internet router's namespace."""
            sysctl(self.inet, "net.ipv4.ip_forward", "1")
            run(["ip", "-n", self.inet, "addr", "add", f"{INET_GW}/32", "dev", "lo"])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_index(self) -> int:
        """A number unique in this run (interface names, link names)."""
        self._index += 1
        return self._index

    def next_wireguard(self) -> int:
        """The number of the next WireGuard interface of this run, from 1."""
        self._wireguards += 1
        return self._wireguards

    # -- building ---------------------------------------------------------------------------

    def _netns(self, name: str) -> str:
        if self._closed:
            raise LabError("the lab is closed")
        ns = f"{self.prefix}-{name}"
        add_netns(ns)
        self.namespaces.append(ns)
        return ns

    def _attach(self, ns: str, address: Address) -> None:
        """Link ``ns`` to the inet router: its eth0 gets ``address``/32, routes on-link."""
        link = f"v{self.next_index()}"
        veth(ns, WAN_IF, self.inet, link)
        run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", WAN_IF])
        run(["ip", "-n", ns, "link", "set", WAN_IF, "up"])
        run(["ip", "-n", ns, "route", "add", str(INET_GW), "dev", WAN_IF])
        run(["ip", "-n", ns, "route", "add", "default", "via", str(INET_GW),
             "dev", WAN_IF, "onlink"])  # fmt: skip
        run(["ip", "-n", self.inet, "link", "set", link, "up"])
        run(["ip", "-n", self.inet, "route", "add", f"{address}/32", "dev", link])

    def _public_address(self, address: str | None, pool: str) -> Address:
        used = {h.address for h in self.hosts} | {n.wan_ip for n in self.nats} | {INET_GW}
        if address is None:
            while (candidate := Address(f"203.0.113.{self._public[pool]}")) in used:
                self._public[pool] += 1
            self._public[pool] += 1
            if self._public[pool] > 255:
                raise LabError("out of public addresses in 203.0.113.0/24")
            return candidate
        chosen = Address(address)
        if not any(chosen in net for net in TEST_NETS):
            raise ValueError(f"{chosen} is not a TEST-NET address (RFC 5737)")
        if chosen in used:
            raise ValueError(f"{chosen} is already used in this lab")
        return chosen

    def add_public_host(self, name: str, address: str | None = None) -> Host:
        """A host with a public address (default 203.0.113.10 up), e.g. the registrar."""
        chosen = self._public_address(address, "host")
        ns = self._netns(name)
        self._attach(ns, chosen)
        host = Host(self, name, ns, chosen, None)
        self.hosts.append(host)
        return host

    def add_nat(self, name: str, kind: RouterKind, forward_port: int | None = None) -> Nat:
        """A NAT router of ``kind``: WAN 198.51.100.(10+N), empty LAN 10.N.0.0/24 behind it.
        PORT_FORWARD forwards UDP ``forward_port`` to the first host added to its LAN."""
        if kind == RouterKind.NONE:
            raise ValueError("RouterKind.NONE has no router: use add_peer(name, None)")
        if kind == RouterKind.PORT_FORWARD and forward_port is None:
            raise ValueError("PORT_FORWARD needs forward_port")
        index = len(self.nats) + 1
        if index > 240:
            raise LabError("too many NATs")
        ns = self._netns(name)
        sysctl(ns, "net.ipv4.ip_forward", "1")
        bridge_nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if bridge_nf.exists():  # br_netfilter is global; its switch is per namespace
            with contextlib.suppress(LabError):
                sysctl(ns, "net.bridge.bridge-nf-call-iptables", "0")
        nat = Nat(name, kind, ns, f"198.51.100.{10 + index}", index, forward_port)
        self._attach(ns, nat.wan_ip)
        run(["ip", "-n", ns, "link", "add", LAN_IF, "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"{nat.gateway}/24", "dev", LAN_IF])
        run(["ip", "-n", ns, "link", "set", LAN_IF, "up"])
        nat.apply_rules()
        self.nats.append(nat)
        return nat

    def add_peer(self, name: str, nat: Nat | None = None, address: str | None = None) -> Host:
        """A host behind ``nat`` on its LAN (default 10.N.0.10 up, default route via the NAT), or
        a public host (default 203.0.113.50 up) when ``nat`` is None."""
        if nat is None:
            chosen = self._public_address(address, "peer")
            ns = self._netns(name)
            self._attach(ns, chosen)
            host = Host(self, name, ns, chosen, None)
            self.hosts.append(host)
            return host
        if address is None:
            chosen = nat.next_lan_address()
        else:
            chosen = Address(address)
            if chosen not in nat.lan_subnet:
                raise ValueError(f"{chosen} is not in {nat.name}'s LAN {nat.lan_subnet}")
        ns = self._netns(name)
        link = f"l{self.next_index()}"
        veth(ns, "eth0", nat.netns, link)
        run(["ip", "-n", nat.netns, "link", "set", link, "master", LAN_IF, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{chosen}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", str(nat.gateway)])
        host = Host(self, name, ns, chosen, nat)
        self.hosts.append(host)
        return host

    def spawn(
        self,
        host: Host,
        argv: tuple[str, ...],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a tracked process in ``host`` (see :meth:`Host.spawn`)."""
        if self._closed:
            raise LabError("the lab is closed")
        log_path = log_path or self.workdir / f"{host.name}-{len(self.procs)}.log"
        spawned = spawn(host.netns, argv, env, log_path)
        self.procs.append(spawned)
        return spawned.proc

    def logs(self, limit: int = 20000) -> str:
        """The tail of every spawned process's log, for a failing test's report."""
        parts = []
        for s in self.procs:
            try:
                text = s.log_path.read_text(errors="replace")[-limit:]
            except OSError as e:
                text = f"({e})"
            parts.append(f"--- {' '.join(s.argv)}\n{text}")
        return "\n".join(parts)

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """End our processes by PID, delete our namespaces, sockets, record and (unless
        WGMESH_LAB_KEEP is set) the work directory. Safe to call twice, and from a handler."""
        if self._closed:
            return
        self._closed = True
        try:
            stop(self.procs)
        finally:
            for host in self.hosts:
                for wg in host.wireguards:
                    with contextlib.suppress(OSError):
                        wg.uapi_socket.unlink()
            for ns in reversed(self.namespaces):
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    run(["ip", "netns", "del", ns], check=False)
            with contextlib.suppress(OSError):
                self._record.path(self._run_dir).unlink()
            if not os.environ.get("WGMESH_LAB_KEEP"):
                shutil.rmtree(self.workdir, ignore_errors=True)
            _untrack(self)


# -- closing labs at interpreter exit and on SIGTERM/SIGHUP ---------------------------------

_LIVE: list[Lab] = []
_HANDLED: set[int] = set()
"""Signals we installed ``_on_signal`` for, and 0 once the atexit hook is registered."""


def _track(lab: Lab) -> None:
    if 0 not in _HANDLED:
        atexit.register(_close_all)
        _HANDLED.add(0)  # 0: the atexit hook
    _LIVE.append(lab)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # only where nobody else handles the signal: the default would kill us without cleanup
        if sig not in _HANDLED and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)
            _HANDLED.add(sig)


def _untrack(lab: Lab) -> None:
    with contextlib.suppress(ValueError):
        _LIVE.remove(lab)


def _close_all() -> None:
    for lab in list(_LIVE):
        with contextlib.suppress(Exception):
            lab.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Tear the labs down, then die of the signal as if we had not caught it."""
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
