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

Safety: every namespace and interface name carries a random run id; veth pairs are created
directly inside the namespaces (``ip -n A link add ... netns B``), so nothing is ever created in,
linked to or changed in the root namespace; processes are ended by PID; ``close`` (also on an
exception, via ``with``) removes every namespace and UAPI socket the run made.
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
import uuid
from enum import StrEnum
from pathlib import Path
from typing import IO

from wgmesh.lab.wireguard import WgIface, start_wireguard

INET_GW = "203.0.113.1"


class NatKind(StrEnum):
    """Kinds of NAT router the lab builds (docs/lab.md has the nft rules)."""

    PORT_RESTRICTED = "port-restricted"
    """Port-preserving masquerade + stateful firewall: a typical home router."""
    SYMMETRIC = "symmetric"
    """Masquerade ``fully-random`` (a new port per destination) + the same firewall."""
    NONE = "none"
    """No NAT: the peer has a public address (use ``add_peer(name, None)``)."""
    PORT_FORWARD = "port-forward"
    """Port-restricted plus a DNAT port forward of the WireGuard port to the first peer."""
    OPEN = "open"
    """Masquerade with no firewall at all."""


class LabError(RuntimeError):
    """A lab command failed."""


def _run(
    argv: list[str], timeout: float = 10.0, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


class Host:
    """One network namespace with an address."""

    def __init__(self, lab: Lab, name: str, netns: str, address: str, nat: Nat | None) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.address = ipaddress.ip_address(address)
        self.nat = nat
        self.wireguards: list[WgIface] = []

    @property
    def public_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address the internet sees: the NAT's WAN address, or our own."""
        return self.nat.wan_ip if self.nat is not None else self.address

    def run(
        self, *argv: str, check: bool = True, timeout: float = 10.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace."""
        return _run(["ip", "netns", "exec", self.netns, *argv], timeout, check, stdin)

    def spawn(
        self, *argv: str, env: dict[str, str] | None = None, log_path: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process here; the lab ends it by PID at close."""
        log_path = log_path or self.lab.workdir / f"{self.name}-{len(self.lab.procs)}.log"
        log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed by the lab
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.lab.procs.append((proc, log))
        return proc

    def start_wireguard(
        self,
        iface: str | None = None,
        listen_port: int = 51820,
        address: str = "100.64.0.1/24",
        private_key: str | None = None,
    ) -> WgIface:
        """wireguard-go in this namespace with a private key, listen port and tunnel address."""
        name = iface or f"wg{self.lab.run_id[:6]}{self.lab.next_index()}"
        wg = start_wireguard(self, name, listen_port, address, private_key)
        self.wireguards.append(wg)
        return wg

    def ping(self, address: object, count: int = 1, timeout: float = 1.0) -> bool:
        """True if ``count`` pings get at least one answer."""
        r = self.run(
            "ping",
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            f"{timeout:g}",
            str(address),
            check=False,
            timeout=count * (timeout + 0.5) + 5,
        )
        return r.returncode == 0


class Nat:
    """A NAT router namespace: WAN on the internet, a bridged LAN behind it."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        kind: NatKind,
        netns: str,
        wan_ip: str,
        subnet: int,
        forward_port: int | None,
    ) -> None:
        self.lab = lab
        self.name = name
        self.kind = kind
        self.netns = netns
        self.wan_ip = ipaddress.ip_address(wan_ip)
        self.lan_prefix = f"10.{subnet}.0"
        self.lan_subnet = f"{self.lan_prefix}.0/24"
        self.gateway = f"{self.lan_prefix}.1"
        self.forward_port = forward_port
        self.hosts = 0
        self._range = 0

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.netns, *argv], check=check)

    def ruleset(self, port_range: str = "") -> str:
        """The nft ruleset for this NAT's kind."""
        random = " fully-random" if self.kind == NatKind.SYMMETRIC else ""
        to = f" to :{port_range}" if port_range else ""
        firewall = self.kind != NatKind.OPEN
        forward_target = f"{self.lan_prefix}.10"
        dnat = ""
        if self.kind == NatKind.PORT_FORWARD and self.forward_port:
            dnat = (
                f'iifname "eth0" udp dport {self.forward_port} '
                f"dnat to {forward_target}:{self.forward_port}"
            )
        return f"""
table ip wgmlab {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {dnat}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        {'oifname "eth0" meta l4proto { tcp, udp } masquerade' + to + random if to else ""}
        oifname "eth0" masquerade{random}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "eth0" ct state established,related accept
        {'iifname "eth0" ct status dnat accept' if dnat else ""}
        {'iifname "eth0" drop' if firewall else ""}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "eth0" ct state established,related accept
        {'iifname "eth0" drop' if firewall else ""}
    }}
}}
"""

    def apply_rules(self, port_range: str = "") -> None:
        self.run("nft", "flush", "ruleset")
        _run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"], stdin=self.ruleset(port_range))

    def flush_conntrack(self) -> None:
        """Forget every flow (as a router reboot or timeout would)."""
        self.run("conntrack", "-F", check=False)

    def rebind(self) -> None:
        """Change the public mapping of every flow: the masquerade moves to another port range
        and conntrack is flushed, so the next packet of any flow leaves from a new port."""
        self._range += 1
        base = 20000 + 10000 * (self._range % 2)
        self.apply_rules(f"{base}-{base + 9999}")
        self.flush_conntrack()

    def conntrack_entries(self) -> str:
        return self.run("conntrack", "-L", check=False).stdout


class Lab:
    """A whole lab; use as a context manager. See the module docstring."""

    def __init__(self, name_prefix: str = "wgm") -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"{name_prefix}-{self.run_id}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.namespaces: list[str] = []
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self.hosts: list[Host] = []
        self.nats: list[Nat] = []
        self._index = 0
        self._closed = False
        atexit.register(self.close)
        try:
            self.inet = self._netns("inet")
            self._sysctl(self.inet, "net.ipv4.ip_forward", "1")
            _run(["ip", "-n", self.inet, "addr", "add", f"{INET_GW}/32", "dev", "lo"])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_index(self) -> int:
        self._index += 1
        return self._index

    # -- building ---------------------------------------------------------------------------

    def _netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    @staticmethod
    def _sysctl(ns: str, key: str, value: str) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"])

    def _veth(self, ns: str, peer_ns: str, prefix: str) -> str:
        """``eth0`` in ``ns`` paired with a new link in ``peer_ns``, created directly inside
        both namespaces (never in the root namespace); returns the peer side's name."""
        link = f"{prefix}{self.next_index()}"
        _run(f"ip -n {ns} link add eth0 type veth peer name {link} netns {peer_ns}".split())
        return link

    def _attach(self, ns: str, address: str) -> None:
        """Link ``ns`` to the inet router: its eth0 gets ``address``/32, routes on-link."""
        link = self._veth(ns, self.inet, "v")
        _run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", INET_GW, "dev", "eth0"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", INET_GW, "dev", "eth0", "onlink"])
        _run(["ip", "-n", self.inet, "link", "set", link, "up"])
        _run(["ip", "-n", self.inet, "route", "add", f"{address}/32", "dev", link])

    def add_public_host(self, name: str, address: str | None = None) -> Host:
        """A host with a public address on the internet (e.g. the registrar)."""
        address = address or f"203.0.113.{10 + len(self.hosts)}"
        ns = self._netns(name)
        self._attach(ns, address)
        host = Host(self, name, ns, address, None)
        self.hosts.append(host)
        return host

    def add_nat(self, name: str, kind: NatKind, forward_port: int | None = None) -> Nat:
        """A NAT router of the given kind with an empty LAN 10.N.0.0/24."""
        if kind == NatKind.NONE:
            raise ValueError("NatKind.NONE has no router: add_peer(name, None)")
        index = len(self.nats) + 1
        ns = self._netns(name)
        self._sysctl(ns, "net.ipv4.ip_forward", "1")
        with contextlib.suppress(LabError):  # only present when br_netfilter is loaded
            self._sysctl(ns, "net.bridge.bridge-nf-call-iptables", "0")
        wan = f"198.51.100.{10 + index}"
        self._attach(ns, wan)
        nat = Nat(self, name, kind, ns, wan, index, forward_port)
        _run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", ns, "addr", "add", f"{nat.gateway}/24", "dev", "br0"])
        _run(["ip", "-n", ns, "link", "set", "br0", "up"])
        nat.apply_rules()
        self.nats.append(nat)
        return nat

    def add_peer(self, name: str, nat: Nat | None = None, address: str | None = None) -> Host:
        """A host behind ``nat`` on its LAN, or with a public address when ``nat`` is None."""
        if nat is None:
            return self.add_public_host(name, address or f"203.0.113.{50 + len(self.hosts)}")
        ns = self._netns(name)
        address = address or f"{nat.lan_prefix}.{10 + nat.hosts}"
        nat.hosts += 1
        link = self._veth(ns, nat.netns, "l")
        _run(["ip", "-n", nat.netns, "link", "set", link, "master", "br0", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", nat.gateway])
        host = Host(self, name, ns, address, nat)
        self.hosts.append(host)
        return host

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """End our processes by PID, delete our namespaces and sockets. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc, log in self.procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(3)
            log.close()
        for host in self.hosts:
            for wg in host.wireguards:
                with contextlib.suppress(FileNotFoundError):
                    Path(f"/var/run/wireguard/{wg.name}.sock").unlink()
        for ns in reversed(self.namespaces):
            _run(["ip", "netns", "del", ns], check=False)
        if not os.environ.get("WGMESH_LAB_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


def stale_namespaces(prefix: str = "wgm-") -> list[str]:
    """Lab namespaces left behind by runs that died (for manual clean-up)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
