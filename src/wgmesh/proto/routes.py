"""Which kernel routes ``wgmesh daemon --routes`` keeps on the WireGuard interface: sans-IO.

In mesh mode the registrar vouches for each member's allowed IPs (the authorized-keys file:
its tunnel address and any subnets behind it, e.g. a LAN). WireGuard then accepts traffic from
those subnets and sends traffic for them to that peer, but the kernel sends it to the interface
only with a route. With ``--routes`` the daemon keeps one route per such prefix on the
interface, and only these:

- prefixes overlapping the interface's own address ranges are left out (the interface's
  address already routes its tunnel network, and a more specific route inside it would be
  redundant or would shadow a neighbour);
- a default route (``0.0.0.0/0``, ``::/0``) is never added: it would also carry the daemon's own
  probes to the registrar and the tunnel's outer packets into the tunnel; that needs policy
  routing (wg-quick's fwmark table), which is the operator's to set up;
- routes are tagged with their own routing protocol number (:data:`ROUTE_PROTO`), so a
  restarted daemon finds the ones it added and never touches routes it did not add; a prefix
  someone else already routes is not added again (``skipped`` says so).

:func:`plan_routes` is the whole decision: what is wanted, from the interface's peers and
addresses, against what is installed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

ROUTE_PROTO = 87
"""The routing protocol number on our routes (``ip route ... proto 87``; not in
/etc/iproute2/rt_protos): how the daemon tells its routes from everyone else's."""

MAX_ROUTES = 4096
"""Most routes kept on one interface (the admission file could list many subnets)."""


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What to change."""

    add: tuple[Net, ...] = ()
    remove: tuple[Net, ...] = ()
    skipped: tuple[tuple[Net, str], ...] = ()
    """Prefixes of peers that are not routed, with why (for the log, once per change)."""


def plan_routes(
    allowed_ips: Iterable[str],
    own: Iterable[str],
    ours: Iterable[Net],
    others: Iterable[Net] = (),
) -> RoutePlan:
    """The routes to add and remove.

    ``allowed_ips``: the allowed IPs of the interface's peers the daemon manages (mesh
    members); ``own``: the interface's addresses with their prefix length (``100.64.0.1/24``);
    ``ours``: the routes with :data:`ROUTE_PROTO` installed on the interface now; ``others``:
    routes to the same prefixes that we did not add (on any interface).
    """
    own_nets = [ipaddress.ip_interface(a).network for a in own]
    taken = set(others)
    wanted: dict[Net, None] = {}
    skipped: list[tuple[Net, str]] = []
    for text in allowed_ips:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # the planner only passes what WireGuard accepted
        if net.prefixlen == 0:
            skipped.append((net, "a default route needs policy routing (not added)"))
        elif any(net.version == o.version and net.overlaps(o) for o in own_nets):
            continue  # the tunnel's own range: routed by the interface address
        elif net in taken:
            skipped.append((net, "already routed by someone else (left alone)"))
        elif len(wanted) >= MAX_ROUTES:
            skipped.append((net, f"more than {MAX_ROUTES} routes"))
        else:
            wanted[net] = None
    current = set(ours)
    add = tuple(n for n in wanted if n not in current)
    remove = tuple(sorted((n for n in current if n not in wanted), key=_order))
    return RoutePlan(add, remove, tuple(skipped))


def _order(net: Net) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)
