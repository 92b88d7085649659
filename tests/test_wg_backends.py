"""Both WireGuard backends (UAPI socket and the wg command) against real wireguard-go in lab
namespaces: read, write, handshake_now without any traffic, counters, removal, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from wgmesh.errors import InterfaceNotFound
from wgmesh.lab.topology import Host, Lab
from wgmesh.lab.wireguard import WgIface
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key
from wgmesh.wg.control import PeerUpdate, WireGuardControl, open_control
from wgmesh.wg.uapi import Uapi
from wgmesh.wg.wgtool import WgCli

pytestmark = pytest.mark.netns


@pytest.fixture
def pair() -> Iterator[tuple[Host, WgIface, Host, WgIface]]:
    with Lab() as lab:
        a, b = lab.add_public_host("a"), lab.add_public_host("b")
        wa = a.start_wireguard(address="100.64.0.1/24", listen_port=51820)
        wb = b.start_wireguard(address="100.64.0.2/24", listen_port=51821)
        wb.add_peer(wa.public_key, "100.64.0.1/32")  # b knows a, without an endpoint
        yield a, wa, b, wb


@pytest.mark.parametrize("backend", [Uapi, WgCli], ids=["uapi", "wg"])
def test_backend_against_wireguard_go(
    pair: tuple[Host, WgIface, Host, WgIface], backend: type[Uapi] | type[WgCli]
) -> None:
    a, wa, b, wb = pair
    ctl: WireGuardControl = backend(wa.name)
    state = ctl.read()
    assert state.listen_port == 51820 and state.peers == ()
    assert state.public_key == decode_key(wa.public_key)
    kb = decode_key(wb.public_key)
    ctl.apply([PeerUpdate(kb, allowed_ips=("100.64.0.2/32",),
                          endpoint=Endpoint.of(str(b.address), 51821))])  # fmt: skip
    (p,) = ctl.read().peers
    assert p.public_key == kb and p.allowed_ips == ("100.64.0.2/32",)
    assert p.endpoint == Endpoint.of(str(b.address), 51821)
    assert p.latest_handshake == 0.0 and p.persistent_keepalive == 0
    # no traffic at all: handshake_now alone must make WireGuard shake hands
    ctl.apply([PeerUpdate(kb, handshake_now=True)])
    deadline = time.monotonic() + 5
    while ctl.read().peers[0].latest_handshake == 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    (p,) = ctl.read().peers
    assert p.latest_handshake > 0, "handshake_now did not start a handshake"
    assert p.persistent_keepalive == 25
    assert a.ping("100.64.0.2", count=2)
    (p,) = ctl.read().peers
    assert p.rx_bytes > 0 and p.tx_bytes > 0
    ctl.apply([PeerUpdate(kb, persistent_keepalive=0)])
    assert ctl.read().peers[0].persistent_keepalive == 0
    ctl.apply([PeerUpdate(kb, remove=True)])
    assert ctl.read().peers == ()


@pytest.mark.parametrize("backend", ["uapi", "wg"])
def test_missing_interface_is_named(backend: str) -> None:
    ctl = Uapi("wgnosuch0") if backend == "uapi" else WgCli("wgnosuch0")
    with pytest.raises(InterfaceNotFound, match="wgnosuch0"):
        ctl.read()


def test_auto_picks_uapi_for_wireguard_go(pair: tuple[Host, WgIface, Host, WgIface]) -> None:
    _, wa, _, _ = pair
    assert isinstance(open_control(wa.name), Uapi)
    assert isinstance(open_control(wa.name, "wg"), WgCli)
