"""The authorized-keys file parser: good lines, errors naming file:line, hostile text."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.errors import ConfigError
from wgmesh.proto.keys import encode_key
from wgmesh.registry.admission import load_admission, parse_authorized_keys

K1 = encode_key(bytes(range(32)))
K2 = encode_key(bytes(range(1, 33)))


def test_lines_with_names_and_allowed_ips() -> None:
    adm = parse_authorized_keys(
        f"# comment\n\n{K1}  alice  100.64.0.1/32,fd00::1/128  # trailing\n{K2}\n"
        f"{encode_key(bytes(32))} 10.0.0.0/8\n"
    )
    assert not adm.open
    a = adm.peers[bytes(range(32))]
    assert a.name == "alice" and a.allowed_ips == ("100.64.0.1/32", "fd00::1/128")
    b = adm.peers[bytes(range(1, 33))]
    assert b.name == "" and b.allowed_ips == ()
    assert adm.peers[bytes(32)].allowed_ips == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("notakey\n", "f:1: a WireGuard key is 44 characters"),
        (f"{K1}\n{K1}\n", "f:2: key"),
        (f"{K1} alice 100.64.0.300/32\n", "f:1: '100.64.0.300/32' is not an IP network"),
        (f"{K1} a b c d\n", "f:1: expected 'KEY [NAME] [ALLOWED-IPS]', got 5 fields"),
        (f"{K1} bad!name\n", "f:1: 'bad!name' is neither a name nor a list of CIDRs"),
    ],
)
def test_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_authorized_keys(text, "f")
    assert str(exc.value).startswith(message)


def test_neither_file_nor_open_refuses() -> None:
    with pytest.raises(ConfigError, match="--authorized-keys FILE"):
        load_admission(None, False)
    assert load_admission(None, True).open


def test_missing_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--authorized-keys .*nope"):
        load_admission(tmp_path / "nope", False)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_authorized_keys(text)


KEYS = [encode_key(bytes([i]) * 32) for i in range(1, 6)]


def test_overlapping_subnets_of_two_peers_are_refused_naming_both_lines() -> None:
    text = (
        f"{KEYS[0]} alice 100.64.0.1/32,10.1.0.0/24\n"
        f"{KEYS[1]} bob 100.64.0.2/32\n"
        f"{KEYS[2]} carol 100.64.0.3/32,10.1.0.128/25\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_authorized_keys(text, "keys")
    assert str(err.value).startswith("keys:3: 10.1.0.128/25 of carol overlaps 10.1.0.0/24 of "
                                     "alice on line 1"), err.value  # fmt: skip
    # one peer's own networks may nest, and disjoint ones are fine
    ok = f"{KEYS[0]} alice 100.64.0.1/32,10.1.0.0/24,10.1.0.0/25\n{KEYS[1]} bob 10.1.1.0/24\n"
    assert len(parse_authorized_keys(ok).peers) == 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 255), st.integers(20, 32)).map(
                lambda t: ipaddress.ip_network(f"10.0.{t[0]}.0/{t[1]}", strict=False)
            ),
            min_size=0,
            max_size=4,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_overlaps_are_found_exactly_when_two_peers_share_an_address(
    nets: list[list[ipaddress.IPv4Network]],
) -> None:
    text = "".join(
        f"{KEYS[i]} {','.join(map(str, group))}\n" if group else f"{KEYS[i]}\n"
        for i, group in enumerate(nets)
    )
    clash = any(
        a.overlaps(b)
        for i, ga in enumerate(nets)
        for j, gb in enumerate(nets)
        if i < j
        for a in ga
        for b in gb
    )
    if clash:
        with pytest.raises(ConfigError, match="overlaps"):
            parse_authorized_keys(text)
    else:
        assert len(parse_authorized_keys(text).peers) == len(nets)
