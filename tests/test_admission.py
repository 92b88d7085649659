"""The authorized-keys file parser: good lines, errors naming file:line, hostile text."""

from __future__ import annotations

import contextlib
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
