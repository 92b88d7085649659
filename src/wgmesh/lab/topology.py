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

IPv6 is opt-in per node (``ipv6=`` on ``add_public_host``, ``add_nat``, ``add_peer``): the inet
router (2001:db8::1 on its loopback, fe80::1 on every link) routes 2001:db8::/32 with one /128
per public address and one /64 per NAT LAN, via the NAT's WAN address 2001:db8:ffff::N. NAT
routers do no NAT66: LAN hosts have global addresses in 2001:db8:N::/64 behind the router's
stateful firewall (``wgmesh.lab.nat.ruleset6``). Hop limits count as TTLs do on IPv4. A host is
IPv4-only, dual-stack, or IPv6-only (no IPv4 address or route at all). DAD is off in the
namespaces that carry IPv6, so addresses are usable at once.

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
from typing import Literal

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

INET_GW6 = ipaddress.IPv6Address("2001:db8::1")
"""The internet router's IPv6 address (on its loopback)."""
INET_LL = ipaddress.IPv6Address("fe80::1")
"""The internet router's link-local address on every link: the IPv6 default route of every
public node (a global address on its loopback would not answer neighbour solicitations)."""
DOC_NET6 = ipaddress.IPv6Network("2001:db8::/32")
"""The only IPv6 addresses the lab hands out (RFC 3849)."""
PUBLIC_NET6 = ipaddress.IPv6Network("2001:db8::/64")
"""Where public hosts' IPv6 addresses live (NAT WANs are in 2001:db8:ffff::/64, LANs in
2001:db8:N::/64)."""

Address = ipaddress.IPv4Address
Address6 = ipaddress.IPv6Address
IPv6Mode = bool | Literal["only"]
"""False: IPv4 only; True: dual-stack; "only": IPv6 only (no IPv4 address nor route)."""


class Host:
    """One network namespace with an address: a public host or a host on a NAT's LAN."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        netns: str,
        address: Address | None,
        nat: Nat | None,
        address6: Address6 | None = None,
    ) -> None:
        if address is None and address6 is None:
            raise ValueError(f"host {name!r} needs an address")
        self.lab = lab
        self.name = name
        self.netns = netns
        self._address = address
        self.address6 = address6
        """Its own global IPv6 address (public, or in its NAT's LAN /64: no NAT66), None for an
        IPv4-only host."""
        self.nat = nat
        """The NAT it is behind, None for a public host."""
        self.wireguards: list[WgIface] = []

    def __repr__(self) -> str:
        v4 = f"{self._address}, public={self.public_ip}" if self._address is not None else "-"
        v6 = f", {self.address6}" if self.address6 is not None else ""
        return f"Host({self.name!r}, {v4}{v6})"

    @property
    def address(self) -> Address:
        """Its own IPv4 address (public, or on its NAT's LAN); LabError on an IPv6-only host."""
        if self._address is None:
            raise LabError(f"{self.name} is IPv6-only: it has no IPv4 address (see address6)")
        return self._address

    @property
    def address4(self) -> Address | None:
        """Its own IPv4 address, None for an IPv6-only host."""
        return self._address

    @property
    def addresses(self) -> tuple[Address | Address6, ...]:
        """Its own addresses, IPv4 first."""
        return tuple(a for a in (self._address, self.address6) if a is not None)

    @property
    def lan_address(self) -> Address | None:
        """Its IPv4 address on its NAT's LAN, None for a public or IPv6-only host."""
        return self._address if self.nat is not None else None

    @property
    def public_ip(self) -> Address:
        """The IPv4 address the internet sees: the NAT's WAN address, or its own; LabError on
        an IPv6-only host."""
        if self._address is None:
            raise LabError(f"{self.name} is IPv6-only: it has no public IPv4 address")
        return self.nat.wan_ip if self.nat is not None else self._address

    @property
    def public_ip6(self) -> Address6 | None:
        """The IPv6 address the internet sees: its own (routers do no NAT66), or None."""
        return self.address6

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

    def ping(
        self, address: object, count: int = 1, timeout: float = 1.0, hop_limit: int | None = None
    ) -> bool:
        """True if at least one of ``count`` pings (0.2 s apart) is answered within
        ``timeout`` seconds. IPv6 addresses are pinged with ``ping -6``; ``hop_limit`` sets the
        TTL / hop limit (``ping -t``)."""
        return self.ping_run(address, count, timeout, hop_limit).returncode == 0

    def ping_run(
        self, address: object, count: int = 1, timeout: float = 1.0, hop_limit: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """:meth:`ping`'s ``ping`` run itself, whose output names the router that sent an ICMP
        error (``From 2001:db8::1 icmp_seq=1 Time exceeded``)."""
        family = ["-6"] if _is_ipv6(address) else []
        hops = ["-t", str(hop_limit)] if hop_limit is not None else []
        return self.run(
            "ping", *family, *hops, "-n", "-c", str(count), "-i", "0.2", "-W", f"{timeout:g}",
            str(address), check=False, timeout=count * (timeout + 0.5) + 5,
        )  # fmt: skip


def _is_ipv6(address: object) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        return True
    try:
        return isinstance(ipaddress.ip_address(str(address)), ipaddress.IPv6Address)
    except ValueError:
        return False  # a name: let ping choose


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
        self._public6 = {"host": 10, "peer": 50}
        self._inet6 = False
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

    def _netns(self, name: str, ipv6: bool = False) -> str:
        if self._closed:
            raise LabError("the lab is closed")
        ns = f"{self.prefix}-{name}"
        add_netns(ns)
        self.namespaces.append(ns)
        if ipv6:
            _no_dad(ns)
        return ns

    def _enable_inet6(self) -> None:
        """Make the inet router an IPv6 router too, on first use: labs without IPv6 stay as
        they were."""
        if self._inet6:
            return
        _no_dad(self.inet)
        sysctl(self.inet, "net.ipv6.conf.all.forwarding", "1")
        run(["ip", "-n", self.inet, "-6", "addr", "add", f"{INET_GW6}/128", "dev", "lo",
             "nodad"])  # fmt: skip
        self._inet6 = True

    def _attach(self, ns: str, address: Address | None, address6: Address6 | None = None) -> str:
        """Link ``ns`` to the inet router: its eth0 gets ``address``/32 and/or ``address6``/128,
        routes on-link (IPv6: default via the router's fe80::1). Returns the router's end."""
        link = f"v{self.next_index()}"
        if address6 is not None:
            self._enable_inet6()
        veth(ns, WAN_IF, self.inet, link)
        if address is not None:
            run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", WAN_IF])
        if address6 is not None:
            run(["ip", "-n", ns, "-6", "addr", "add", f"{address6}/128", "dev", WAN_IF, "nodad"])
            run(["ip", "-n", self.inet, "-6", "addr", "add", f"{INET_LL}/64", "dev", link,
                 "nodad"])  # fmt: skip
        run(["ip", "-n", ns, "link", "set", WAN_IF, "up"])
        if address is not None:
            run(["ip", "-n", ns, "route", "add", str(INET_GW), "dev", WAN_IF])
            run(["ip", "-n", ns, "route", "add", "default", "via", str(INET_GW),
                 "dev", WAN_IF, "onlink"])  # fmt: skip
        if address6 is not None:
            run(["ip", "-n", ns, "-6", "route", "add", "default", "via", str(INET_LL),
                 "dev", WAN_IF])  # fmt: skip
        run(["ip", "-n", self.inet, "link", "set", link, "up"])
        if address is not None:
            run(["ip", "-n", self.inet, "route", "add", f"{address}/32", "dev", link])
        if address6 is not None:
            run(["ip", "-n", self.inet, "-6", "route", "add", f"{address6}/128", "dev", link])
        return link

    def _public_address(self, address: str | None, pool: str) -> Address:
        used = {h.address4 for h in self.hosts} | {n.wan_ip for n in self.nats} | {INET_GW}
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

    def _used6(self) -> set[Address6]:
        used = {h.address6 for h in self.hosts} | {n.wan_ip6 for n in self.nats}
        return {a for a in used if a is not None} | {INET_GW6}

    def _public_address6(self, address6: str | None, pool: str) -> Address6:
        used = self._used6()
        if address6 is None:
            # 2001:db8::10 up for hosts, ::50 up for peers: the IPv4 pools' numbers, as hex digits
            while (candidate := Address6(f"2001:db8::{self._public6[pool]}")) in used:
                self._public6[pool] += 1
            self._public6[pool] += 1
            if self._public6[pool] > 9999:
                raise LabError("out of public IPv6 addresses")
            return candidate
        chosen = Address6(address6)
        if chosen not in PUBLIC_NET6:
            raise ValueError(f"{chosen} is not in {PUBLIC_NET6} (the lab's public IPv6 hosts)")
        if chosen in used:
            raise ValueError(f"{chosen} is already used in this lab")
        return chosen

    def _public_node(
        self, name: str, address: str | None, ipv6: IPv6Mode, address6: str | None, pool: str
    ) -> Host:
        _check_mode(ipv6, address, address6)
        chosen = None if ipv6 == "only" else self._public_address(address, pool)
        chosen6 = self._public_address6(address6, pool) if ipv6 else None
        ns = self._netns(name, ipv6=chosen6 is not None)
        self._attach(ns, chosen, chosen6)
        host = Host(self, name, ns, chosen, None, chosen6)
        self.hosts.append(host)
        return host

    def add_public_host(
        self,
        name: str,
        address: str | None = None,
        ipv6: IPv6Mode = False,
        address6: str | None = None,
    ) -> Host:
        """A host with a public address (default 203.0.113.10 up), e.g. the registrar.

        ``ipv6``: False (IPv4 only), True (dual-stack) or ``"only"`` (no IPv4 at all); its IPv6
        address is ``address6`` or 2001:db8::10 up."""
        return self._public_node(name, address, ipv6, address6, "host")

    def add_nat(
        self, name: str, kind: RouterKind, forward_port: int | None = None, ipv6: bool = False
    ) -> Nat:
        """A NAT router of ``kind``: WAN 198.51.100.(10+N), empty LAN 10.N.0.0/24 behind it.
        PORT_FORWARD forwards UDP ``forward_port`` to the first host added to its LAN.

        ``ipv6``: it also routes IPv6, without NAT66: WAN 2001:db8:ffff::N, LAN 2001:db8:N::/64,
        behind a home router's stateful firewall (``wgmesh.lab.nat.ruleset6``; PORT_FORWARD
        opens the same port to the first host, OPEN filters nothing)."""
        if kind == RouterKind.NONE:
            raise ValueError("RouterKind.NONE has no router: use add_peer(name, None)")
        if kind == RouterKind.PORT_FORWARD and forward_port is None:
            raise ValueError("PORT_FORWARD needs forward_port")
        index = len(self.nats) + 1
        if index > 240:
            raise LabError("too many NATs")
        ns = self._netns(name, ipv6=ipv6)
        sysctl(ns, "net.ipv4.ip_forward", "1")
        for family in ("iptables", "ip6tables") if ipv6 else ("iptables",):
            bridge_nf = Path(f"/proc/sys/net/bridge/bridge-nf-call-{family}")
            if bridge_nf.exists():  # br_netfilter is global; its switch is per namespace
                with contextlib.suppress(LabError):
                    sysctl(ns, f"net.bridge.bridge-nf-call-{family}", "0")
        nat = Nat(name, kind, ns, f"198.51.100.{10 + index}", index, forward_port, ipv6)
        if ipv6:
            sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        link = self._attach(ns, nat.wan_ip, nat.wan_ip6)
        run(["ip", "-n", ns, "link", "add", LAN_IF, "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"{nat.gateway}/24", "dev", LAN_IF])
        if ipv6:
            run(["ip", "-n", ns, "-6", "addr", "add", f"{nat.gateway6}/64", "dev", LAN_IF,
                 "nodad"])  # fmt: skip
        run(["ip", "-n", ns, "link", "set", LAN_IF, "up"])
        if ipv6:  # the ISP routes the delegated prefix to the router's WAN address
            run(["ip", "-n", self.inet, "-6", "route", "add", str(nat.lan_subnet6),
                 "via", str(nat.wan_ip6), "dev", link])  # fmt: skip
        nat.apply_rules()
        self.nats.append(nat)
        return nat

    def add_peer(
        self,
        name: str,
        nat: Nat | None = None,
        address: str | None = None,
        ipv6: IPv6Mode | None = None,
        address6: str | None = None,
    ) -> Host:
        """A host behind ``nat`` on its LAN (default 10.N.0.10 up, default route via the NAT), or
        a public host (default 203.0.113.50 up) when ``nat`` is None.

        ``ipv6``: False (IPv4 only), True (dual-stack) or ``"only"`` (IPv6 only: no IPv4
        address nor route); None, the default, is dual-stack behind a NAT with IPv6 and IPv4-only
        otherwise. Behind a NAT the IPv6 address mirrors the IPv4 one (10.N.0.X:
        2001:db8:N::X), public peers get 2001:db8::50 up; ``address6`` chooses another."""
        if nat is None:
            return self._public_node(name, address, ipv6 or False, address6, "peer")
        mode: IPv6Mode = nat.ipv6 if ipv6 is None else ipv6
        _check_mode(mode, address, address6)
        if mode and not nat.ipv6:
            raise ValueError(f"{nat.name} has no IPv6: add_nat(..., ipv6=True)")
        if address is None:
            chosen = nat.next_lan_address()
        else:
            chosen = Address(address)
            if chosen not in nat.lan_subnet:
                raise ValueError(f"{chosen} is not in {nat.name}'s LAN {nat.lan_subnet}")
        chosen6 = None
        if mode and nat.lan_subnet6 is not None:
            chosen6 = nat.lan_address6(chosen) if address6 is None else Address6(address6)
            if chosen6 not in nat.lan_subnet6 or chosen6 == nat.gateway6:
                raise ValueError(f"{chosen6} is not a host in {nat.name}'s {nat.lan_subnet6}")
            if chosen6 in self._used6():
                raise ValueError(f"{chosen6} is already used in this lab")
        chosen4 = None if mode == "only" else chosen
        ns = self._netns(name, ipv6=chosen6 is not None)
        link = f"l{self.next_index()}"
        veth(ns, "eth0", nat.netns, link)
        run(["ip", "-n", nat.netns, "link", "set", link, "master", LAN_IF, "up"])
        if chosen4 is not None:
            run(["ip", "-n", ns, "addr", "add", f"{chosen4}/24", "dev", "eth0"])
        if chosen6 is not None:
            run(["ip", "-n", ns, "-6", "addr", "add", f"{chosen6}/64", "dev", "eth0", "nodad"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if chosen4 is not None:
            run(["ip", "-n", ns, "route", "add", "default", "via", str(nat.gateway)])
        if chosen6 is not None:
            run(["ip", "-n", ns, "-6", "route", "add", "default", "via", str(nat.gateway6)])
        host = Host(self, name, ns, chosen4, nat, chosen6)
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


def _check_mode(ipv6: object, address: str | None, address6: str | None) -> None:
    """Reject contradictory address requests before anything is built."""
    if ipv6 not in (False, True, "only"):
        raise ValueError(f"ipv6 must be False, True or 'only', not {ipv6!r}")
    if ipv6 == "only" and address is not None:
        raise ValueError(f"an IPv6-only host has no IPv4 address (got {address})")
    if not ipv6 and address6 is not None:
        raise ValueError(f"address6 {address6} needs ipv6=True or 'only'")
    if address6 is not None and Address6(address6) not in DOC_NET6:
        raise ValueError(f"{address6} is not in {DOC_NET6} (RFC 3849)")


def _no_dad(ns: str) -> None:
    """No duplicate address detection in ``ns``: addresses (link-local ones too) are usable at
    once instead of after about a second, and nothing in a lab can be a duplicate."""
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")


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
