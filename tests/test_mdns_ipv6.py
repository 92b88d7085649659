"""mDNS over IPv6 (issue 16): LAN peers announce and find each other's IPv6 addresses.

Units of what an announcement's addresses become (no link-local: see wgmesh.daemon.mdns), then
:class:`~wgmesh.daemon.mdns.LanDiscovery` itself run in lab namespaces on one LAN behind a
router that routes IPv6: two dual-stack hosts see each other's IPv4 and IPv6 addresses, and
two IPv6-only hosts, which have no IPv4 multicast at all, find each other over ff02::fb. Last,
two dual-stack daemons behind one NAT report each other's IPv6 address as an mDNS find.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from zeroconf import IPVersion

from tests.test_e2e import FAST
from wgmesh.daemon.mdns import MAX_ADDRESSES, _transport, lan_endpoints
from wgmesh.lab.mesh import PYTHON, Mesh
from wgmesh.lab.topology import Host, IPv6Mode, Lab, RouterKind
from wgmesh.proto.endpoint import Endpoint

# -- units --------------------------------------------------------------------------------------


def test_announced_addresses_become_endpoints_of_both_families_ipv4_first() -> None:
    eps = lan_endpoints(["2001:db8:1::11", "10.1.0.11", "fd00::11"], 51821)
    assert eps == (
        Endpoint.of("10.1.0.11", 51821),
        Endpoint.of("2001:db8:1::11", 51821),
        Endpoint.of("fd00::11", 51821),
    )
    assert {e.family for e in eps} == {4, 6}


def test_unreachable_addresses_are_left_out() -> None:
    """Link-local (with or without a zone), loopback, multicast, unspecified, and garbage."""
    eps = lan_endpoints(
        ["fe80::1", "fe80::2%3", "169.254.1.1", "::1", "127.0.0.1", "ff02::fb", "::",
         "0.0.0.0", "not an address", "2001:db8:1::11"],
        51820,
    )  # fmt: skip
    assert eps == (Endpoint.of("2001:db8:1::11", 51820),)


def test_an_ipv4_mapped_address_is_ipv4_and_duplicates_count_once() -> None:
    eps = lan_endpoints(["::ffff:10.1.0.11", "10.1.0.11"], 51820)
    assert eps == (Endpoint.of("10.1.0.11", 51820),)


def test_at_most_max_addresses_of_each_family() -> None:
    v4 = [f"10.1.0.{i}" for i in range(1, 20)]
    v6 = [f"2001:db8:1::{i:x}" for i in range(1, 20)]
    eps = lan_endpoints(v6 + v4, 51820)
    assert [e.family for e in eps] == [4] * MAX_ADDRESSES + [6] * MAX_ADDRESSES


def test_transport_follows_the_families_we_have() -> None:
    """An IPv4-only host keeps IPv4 multicast only, as before IPv6."""
    assert _transport(["10.1.0.10"]) == IPVersion.V4Only
    assert _transport(["10.1.0.10", "2001:db8:1::10"]) == IPVersion.All
    assert _transport(["2001:db8:1::10"]) == IPVersion.V6Only


# -- LanDiscovery in lab namespaces -------------------------------------------------------------

PROBE = """
import asyncio, json, os, sys
from wgmesh.daemon.mdns import LanDiscovery

async def main() -> None:
    want = bytes.fromhex(sys.argv[2])
    found = asyncio.Event()
    def on_peer(key, endpoints):
        print(json.dumps({"key": key.hex(), "endpoints": [str(e) for e in endpoints]}), flush=True)
        if key == want:
            found.set()
    lan = LanDiscovery(bytes.fromhex(sys.argv[1]), 51820, "wgnone", on_peer)
    await lan.start()
    try:
        await asyncio.wait_for(found.wait(), 20)
        await asyncio.sleep(1.0)  # answer the other side's queries a little longer
    finally:
        await lan.close()

asyncio.run(main())
"""


def _discover(lab: Lab, hosts: list[Host]) -> list[dict[str, list[str]]]:
    """Run LanDiscovery on each host, each waiting for the next one's key; what each saw,
    key (hex) -> endpoints."""
    keys = [os.urandom(32) for _ in hosts]
    procs, logs = [], []
    for i, host in enumerate(hosts):
        log = lab.workdir / f"mdns-{host.name}.log"
        logs.append(log)
        want = keys[(i + 1) % len(keys)]
        procs.append(host.spawn(PYTHON, "-c", PROBE, keys[i].hex(), want.hex(), log_path=log))
    for p in procs:
        p.wait(30)
    seen: list[dict[str, list[str]]] = []
    for i, log in enumerate(logs):
        text = log.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert procs[i].returncode == 0, text
        seen.append({r["key"]: r["endpoints"] for r in rows})
    assert [set(s) for s in seen] == [{keys[(i + 1) % len(keys)].hex()} for i in range(len(hosts))]
    return seen


def _lan_pair(lab: Lab, ipv6: IPv6Mode) -> list[Host]:
    home = lab.add_nat("home", RouterKind.PORT_RESTRICTED, ipv6=True)
    return [lab.add_peer("a", home, ipv6=ipv6), lab.add_peer("b", home, ipv6=ipv6)]


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_dual_stack_lan_hosts_see_each_others_ipv6_address() -> None:
    with Lab() as lab:
        a, b = _lan_pair(lab, True)
        seen_by_a, seen_by_b = (next(iter(s.values())) for s in _discover(lab, [a, b]))
        assert seen_by_a == [f"{b.address4}:51820", f"[{b.address6}]:51820"]
        assert seen_by_b == [f"{a.address4}:51820", f"[{a.address6}]:51820"]


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_ipv6_only_lan_hosts_find_each_other_over_ipv6_multicast() -> None:
    with Lab() as lab:
        a, b = _lan_pair(lab, "only")
        seen_by_a, seen_by_b = (next(iter(s.values())) for s in _discover(lab, [a, b]))
        assert seen_by_a == [f"[{b.address6}]:51820"]
        assert seen_by_b == [f"[{a.address6}]:51820"]


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_dual_stack_daemons_on_one_lan_find_each_others_ipv6_address_over_mdns() -> None:
    """The daemon's own mDNS: a's log names b's IPv6 address among b's LAN endpoints, and
    the pair connects (directly, over b's LAN addresses)."""
    with Lab() as lab:
        reg = lab.add_public_host("reg", ipv6=True)
        home = lab.add_nat("home", RouterKind.PORT_RESTRICTED, ipv6=True)
        mesh = Mesh(lab, reg)
        a = mesh.add_peer("a", lab.add_peer("a", home, ipv6=True))
        b = mesh.add_peer("b", lab.add_peer("b", home, ipv6=True), listen_port=51821)
        mesh.link(a, b)
        mesh.start_registrar()
        try:
            mesh.start_daemon(a, *FAST)
            mesh.start_daemon(b, *FAST)
            assert mesh.wait_ping(a, b, 30.0) and mesh.wait_ping(b, a, 5.0)
            want = f"mDNS: peer {b.wg.public_key[:8]} on the LAN at "
            line = ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not line:
                assert a.log is not None
                line = next((x for x in a.log.read_text().splitlines() if want in x), "")
                time.sleep(0.2)
            assert f"{b.host.address4}:51821" in line and f"[{b.host.address6}]:51821" in line
            row = mesh.peer_row(a, b)
            assert row["path"] == "direct", row
            assert row["endpoint"] in (f"{b.host.address4}:51821", f"[{b.host.address6}]:51821")
        except BaseException:
            print(mesh.logs())
            raise
