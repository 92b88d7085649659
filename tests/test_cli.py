"""The command line: --help answers, errors name the flag or file, config files merge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wgmesh.cli.main import main

WG = [sys.executable, "-m", "wgmesh"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WG, *args], capture_output=True, text=True, timeout=30)


def test_help_lists_commands() -> None:
    out = run("--help").stdout
    for cmd in ("registrar", "daemon", "peers", "genkey", "pubkey"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["registrar", "daemon", "peers", "genkey"])
def test_every_option_has_help(cmd: str) -> None:
    import argparse

    from wgmesh.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[cmd]
    assert p.description, f"{cmd} --help has no description"
    for action in p._actions:
        assert action.help, f"{cmd}: option {action.option_strings} has no help"
    assert run(cmd, "--help").returncode == 0


@pytest.mark.parametrize("cmd", ["registrar", "daemon"])
def test_metrics_flags_are_offered(cmd: str) -> None:
    out = run(cmd, "--help").stdout
    assert "--metrics ADDR:PORT" in out and "--log-counters SECONDS" in out


def test_genkey_pubkey_match_wireguard_format() -> None:
    key = run("genkey").stdout
    assert len(key.strip()) == 44
    pub = subprocess.run([*WG, "pubkey"], input=key, capture_output=True, text=True).stdout
    assert len(pub.strip()) == 44 and pub != key


def test_pubkey_rejects_garbage_with_a_clear_error() -> None:
    """Exit status 1, as `wg pubkey` has: the input is wrong, not the command line."""
    out = subprocess.run([*WG, "pubkey"], input="nope", capture_output=True, text=True)
    assert out.returncode == 1 and "stdin: a WireGuard key" in out.stderr


def test_registrar_errors_name_the_flag(tmp_path: Path) -> None:
    assert main(["registrar", "--open"]) == 2  # a configuration error: exit status 2
    out = run("registrar", "--zone", "z.test", "--open", "--private-key-file", str(tmp_path / "x"))
    assert out.returncode == 2 and "--private-key-file" in out.stderr and "x" in out.stderr


def test_config_file_merges_and_flags_win(tmp_path: Path) -> None:
    import argparse

    from wgmesh.cli.options import resolve
    from wgmesh.cli.registrar import DEFAULTS

    cfg = tmp_path / "r.toml"
    cfg.write_text('zone = "from.file"\nstun-port = 4000\nopen = true\n')
    args = argparse.Namespace(config=cfg, zone=None, stun_port=5000)
    values = resolve(args, DEFAULTS)
    assert values["zone"] == "from.file" and values["stun_port"] == 5000 and values["open"] is True


def test_config_file_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text("zonee = 'x'\n")
    out = run("registrar", "--config", str(cfg))
    assert out.returncode == 2 and "unknown key 'zonee'" in out.stderr
    assert "did you mean 'zone'?" in out.stderr


def test_daemon_errors_name_the_flag() -> None:
    out = run("daemon", "--interface", "wg9")
    assert out.returncode == 2 and "--registrar is required" in out.stderr
    out = run(
        "daemon", "-i", "wg9", "--registrar", "1.2.3.4", "--registrar-key", "nope", "--zone", "z"
    )
    assert out.returncode == 2 and "--registrar-key" in out.stderr


def test_daemon_on_a_missing_interface_exits_with_its_name() -> None:
    """A runtime failure, not a configuration error: exit status 1."""
    key = run("genkey").stdout.strip()
    out = run("daemon", "-i", "wgnosuch9", "--registrar", "192.0.2.1", "--registrar-key",
              key, "--zone", "mesh.test", "--backend", "wg")  # fmt: skip
    assert out.returncode == 1 and "no WireGuard interface 'wgnosuch9'" in out.stderr


@pytest.mark.parametrize(
    ("name", "ok"),
    [("office-1", True), ("b" * 63, True), ("bé" * 21, True), ("b" * 64, False),
     ("é" * 32, False), ("tab\there", False), ("line\n", False), ("\x7f", False)],
)  # fmt: skip
def test_daemon_name_follows_the_register_codec_rule(name: str, ok: bool) -> None:
    """--name is checked at startup with the rule the sealed Register enforces (printable,
    at most 63 bytes of UTF-8), so a bad name fails with a clear message, not at the first probe."""
    from wgmesh.cli.daemon import DEFAULTS, settings_from
    from wgmesh.errors import ConfigError, LocalProtocolError
    from wgmesh.proto import sealed

    values = dict(DEFAULTS, interface="wg9", registrar="192.0.2.1", zone="mesh.test",
                  registrar_key="A" * 43 + "=", name=name)  # fmt: skip
    register = sealed.Register(0, 1, name, (), "wgmesh/0", False)
    if ok:
        assert settings_from(values).name == name
        sealed.encode_payload(register, bytes(12))
    else:
        with pytest.raises(ConfigError, match=r"--name: .*printable text of at most 63 bytes"):
            settings_from(values)
        with pytest.raises(LocalProtocolError):
            sealed.encode_payload(register, bytes(12))


def test_daemon_bad_name_exits_with_a_clear_error() -> None:
    key = run("genkey").stdout.strip()
    out = run("daemon", "-i", "wg9", "--registrar", "192.0.2.1", "--registrar-key", key,
              "--zone", "mesh.test", "--name", "x" * 64)  # fmt: skip
    assert out.returncode == 2 and "--name" in out.stderr and "63 bytes" in out.stderr
