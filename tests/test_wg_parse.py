"""Parsers of `wg show dump` and UAPI answers, and the fake WireGuard."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.errors import WireGuardError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key
from wgmesh.wg.control import PeerUpdate
from wgmesh.wg.fake import FakeWireGuard
from wgmesh.wg.uapi import format_set, parse_uapi
from wgmesh.wg.wgtool import parse_dump

K = encode_key(bytes(range(32)))
P = encode_key(bytes(range(1, 33)))
DUMP = (
    f"{K}\t{P}\t51820\toff\n"
    f"{P}\t(none)\t198.51.100.7:51820\t100.64.0.2/32,fd00::2/128\t1800000000\t10\t20\t25\n"
    f"{K}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)
UAPI = (
    f"private_key={bytes(range(32)).hex()}\nlisten_port=51820\n"
    f"public_key={bytes(range(1, 33)).hex()}\nendpoint=198.51.100.7:51820\n"
    "last_handshake_time_sec=1800000000\nlast_handshake_time_nsec=500000000\n"
    "tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=25\n"
    "allowed_ip=100.64.0.2/32\nallowed_ip=fd00::2/128\nprotocol_version=1\nerrno=0\n\n"
)


def test_parse_dump() -> None:
    d = parse_dump("wg0", DUMP)
    assert d.listen_port == 51820 and len(d.peers) == 2
    p = d.peers[0]
    assert p.endpoint == Endpoint.parse("198.51.100.7:51820")
    assert p.allowed_ips == ("100.64.0.2/32", "fd00::2/128")
    assert (p.latest_handshake, p.rx_bytes, p.tx_bytes, p.persistent_keepalive) == (
        1800000000,
        10,
        20,
        25,
    )
    assert d.peers[1].endpoint is None and d.peers[1].persistent_keepalive == 0


def test_parse_uapi_derives_the_public_key_and_drops_the_private() -> None:
    d = parse_uapi("wg0", UAPI)
    assert d.public_key is not None and d.public_key != bytes(range(32))
    (p,) = d.peers
    assert p.latest_handshake == 1800000000.5 and p.allowed_ips == ("100.64.0.2/32", "fd00::2/128")
    assert "private" not in repr(d)


def test_format_set_kicks_with_a_keepalive_toggle() -> None:
    key = bytes(range(32))
    text = format_set(
        [PeerUpdate(key, endpoint=Endpoint.parse("1.2.3.4:5"), handshake_now=True)], {}
    )
    assert text == (
        f"set=1\npublic_key={key.hex()}\nendpoint=1.2.3.4:5\n"
        "persistent_keepalive_interval=0\npersistent_keepalive_interval=25\n\n"
    )
    assert "private_key" not in format_set([PeerUpdate(key, remove=True)], {})


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=500))
def test_parsers_only_raise_wireguard_error(text: str) -> None:
    for parse in (parse_dump, parse_uapi):
        with contextlib.suppress(WireGuardError):
            parse("wg0", text)


def test_fake_records_updates_and_simulates_handshakes() -> None:
    fake = FakeWireGuard()
    key = bytes(range(32))
    fake.add_peer(key, ("100.64.0.2/32",))
    fake.apply([PeerUpdate(key, endpoint=Endpoint.parse("1.2.3.4:5"), handshake_now=True)])
    assert fake.kicks == [key] and fake.read().peers[0].persistent_keepalive == 25
    fake.handshake(key, 100.0, Endpoint.parse("5.6.7.8:9"))
    assert fake.read().peers[0].endpoint == Endpoint.parse("5.6.7.8:9")
