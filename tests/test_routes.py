"""``--routes``: the decision (wgmesh.proto.routes) on plain values, and the kernel adapter in
a namespace of its own (a veth stands in for WireGuard: routes do not care)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgmesh.proto.routes import MAX_ROUTES, ROUTE_PROTO, plan_routes

N = ipaddress.ip_network


def test_subnets_outside_the_tunnel_range_are_routed_and_nothing_else() -> None:
    plan = plan_routes(
        ["100.64.0.2/32", "10.2.0.0/24", "0.0.0.0/0", "::/0", "fd00:2::/64", "100.64.0.0/16"],
        own=["100.64.0.1/24", "fd00::1/64"],
        ours=[N("10.9.0.0/24")],
    )
    assert plan.add == (N("10.2.0.0/24"), N("fd00:2::/64"))
    assert plan.remove == (N("10.9.0.0/24"),)  # ours, no longer wanted
    assert [str(n) for n, _ in plan.skipped] == ["0.0.0.0/0", "::/0"]


def test_a_prefix_someone_else_routes_is_left_alone() -> None:
    plan = plan_routes(["10.2.0.0/24"], own=["100.64.0.1/24"], ours=[], others=[N("10.2.0.0/24")])
    assert plan.add == () and plan.remove == ()
    assert "someone else" in plan.skipped[0][1]


def test_routes_are_capped() -> None:
    many = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(MAX_ROUTES + 10)]
    plan = plan_routes(many, own=[], ours=[])
    assert len(plan.add) == MAX_ROUTES and len(plan.skipped) == 10


nets = st.tuples(st.integers(0, 255), st.integers(8, 32)).map(
    lambda t: N(f"10.{t[0]}.0.0/{t[1]}", strict=False)
)


@given(st.lists(nets, max_size=12), st.lists(nets, max_size=6), st.lists(nets, max_size=6))
def test_only_our_routes_are_removed_and_wanted_ones_kept(
    wanted: list[ipaddress.IPv4Network],
    ours: list[ipaddress.IPv4Network],
    others: list[ipaddress.IPv4Network],
) -> None:
    own = ["10.0.0.1/16"]
    plan = plan_routes([str(n) for n in wanted], own, ours, others)
    own_net = N("10.0.0.0/16")
    for n in plan.add:
        assert n in wanted and n not in ours and n not in others and not n.overlaps(own_net)
    assert set(plan.remove) <= set(ours)
    after = (set(ours) - set(plan.remove)) | set(plan.add)
    routable = {n for n in wanted if not n.overlaps(own_net) and n not in others}
    assert after == routable


@pytest.mark.netns
def test_the_adapter_changes_only_its_own_routes() -> None:
    ns = f"wgmrt-{uuid.uuid4().hex[:8]}"
    sh = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            "ip link add wgx type veth peer name wgy", "ip link set wgy up",
            "ip link set wgx up", "ip addr add 100.64.0.1/24 dev wgx",
            "ip link add other type veth peer name otherb", "ip link set otherb up",
            "ip link set other up",
            "ip route add 10.7.0.0/24 dev other",  # someone else's
            "ip route add 10.8.0.0/24 dev wgx",  # someone else's, on our interface
        ):  # fmt: skip
            subprocess.run([*sh, *cmd.split()], check=True)
        code = (
            "import json, sys; from wgmesh.daemon.routes import KernelRoutes; "
            "k = KernelRoutes('wgx'); "
            "p = k.sync(json.loads(sys.argv[1])); print(json.dumps([[str(n) for n in p.add], "
            "[str(n) for n in p.remove]]))"
        )

        def sync(allowed: list[str]) -> list[list[str]]:
            out = subprocess.run([*sh, sys.executable, "-c", code, json.dumps(allowed)],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            result: list[list[str]] = json.loads(out.stdout)
            return result

        def routes() -> set[str]:
            out = subprocess.run([*sh, "ip", "-4", "route", "show", "table", "main"],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            return {" ".join(line.split()) for line in out.stdout.splitlines()}

        assert sync(["100.64.0.2/32", "10.2.0.0/24", "10.7.0.0/24"]) == [["10.2.0.0/24"], []]
        assert f"10.2.0.0/24 dev wgx proto {ROUTE_PROTO} scope link" in routes(), routes()
        assert sync(["10.2.0.0/24"]) == [[], []]  # idempotent
        assert sync([]) == [[], ["10.2.0.0/24"]]  # withdrawn: removed
        left = routes()
        assert not any(r.startswith("10.2.0.0/24") for r in left), left
        assert (
            "10.7.0.0/24 dev other scope link" in left and "10.8.0.0/24 dev wgx scope link" in left
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
