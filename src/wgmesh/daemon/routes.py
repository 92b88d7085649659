"""``--routes``: keep the kernel routes of the mesh members' subnets on the WireGuard interface.

The decision is wgmesh.proto.routes.plan_routes; this module reads the interface's addresses
and the main table with ``ip -j`` and changes only routes tagged ``proto 87`` on the interface
(iproute2: the daemon needs CAP_NET_ADMIN, as for WireGuard itself). It runs after a plan
changed the interface's peers, never on a timer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

from wgmesh.errors import ConfigError
from wgmesh.proto.routes import ROUTE_PROTO, Net, RoutePlan, plan_routes

log = logging.getLogger("wgmesh.routes")


def _ip(*argv: str) -> Any:
    try:
        out = subprocess.run(
            ["ip", "-j", *argv], capture_output=True, text=True, timeout=10, check=True
        )
    except FileNotFoundError:
        raise ConfigError("--routes needs iproute2's ip command") from None
    return json.loads(out.stdout or "[]")


class KernelRoutes:
    """The routes of one interface; see the module docstring."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._last: tuple[Net, ...] | None = None
        self._skipped_logged: set[tuple[Net, str]] = set()
        self.counters = {"added": 0, "removed": 0, "failed": 0}

    def own_addresses(self) -> list[str]:
        out = []
        for link in _ip("addr", "show", "dev", self.interface):
            for a in link.get("addr_info", ()):
                if a.get("local") and a.get("prefixlen") is not None:
                    out.append(f"{a['local']}/{a['prefixlen']}")
        return out

    def installed(self, wanted: Iterable[Net]) -> tuple[list[Net], list[Net]]:
        """(ours: proto 87 on the interface; others: routes to a wanted prefix we did not add)."""
        want = set(wanted)
        ours: list[Net] = []
        others: list[Net] = []
        for family in ("-4", "-6"):
            for r in _ip(family, "route", "show", "table", "main"):
                dst = r.get("dst")
                if not dst:
                    continue
                try:
                    net = ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst)
                except ValueError:
                    continue
                mine = r.get("dev") == self.interface and _proto(r.get("protocol")) == ROUTE_PROTO
                if mine:
                    ours.append(net)
                elif net in want:
                    others.append(net)
        return ours, others

    def sync(self, allowed_ips: Sequence[str]) -> RoutePlan:
        """Add and remove routes so that exactly the members' routable prefixes are ours."""
        nets = [ipaddress.ip_network(a, strict=False) for a in allowed_ips]
        ours, others = self.installed(nets)
        plan = plan_routes(allowed_ips, self.own_addresses(), ours, others)
        for net in plan.add:
            self._change("replace", net, "added")
        for net in plan.remove:
            self._change("del", net, "removed")
        for item in plan.skipped:
            if item not in self._skipped_logged and len(self._skipped_logged) < 1024:
                self._skipped_logged.add(item)
                log.warning("route %s: %s", item[0], item[1])
        return plan

    def clear(self) -> None:
        """Remove every route we added (``--routes`` daemon stopping)."""
        ours, _ = self.installed(())
        for net in ours:
            self._change("del", net, "removed")

    def _change(self, verb: str, net: Net, counter: str) -> None:
        argv = ["ip", f"-{net.version}", "route", verb, str(net), "dev", self.interface,
                "proto", str(ROUTE_PROTO)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode == 0:
            self.counters[counter] += 1
            log.info("route %s %s dev %s", "to" if verb == "replace" else "removed:", net,
                     self.interface)  # fmt: skip
        else:
            self.counters["failed"] += 1
            log.warning("route %s %s dev %s failed: %s", verb, net, self.interface,
                        done.stderr.strip())  # fmt: skip


def _proto(value: object) -> int | None:
    """``ip -j`` prints a known protocol by name and others as a number (string or int)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
