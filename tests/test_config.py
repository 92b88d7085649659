"""Every registrar and daemon option is checked before anything starts, from flags and from
``--config FILE`` alike: a bad value exits with status 2 and one line naming the flag or the
config key, what is wrong and what is accepted, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wgmesh.cli import daemon, registrar
from wgmesh.cli.main import build_parser, main
from wgmesh.cli.options import resolve
from wgmesh.proto.keys import encode_key

ROOT = Path(__file__).resolve().parent.parent
WG = [sys.executable, "-m", "wgmesh"]
KEY = encode_key(bytes(range(32)))
"""A valid key (any 32 bytes decode)."""


class Started(Exception):
    """Raised instead of starting: the options were accepted."""


@pytest.fixture(autouse=True)
def no_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in this file may start a registrar or daemon in-process."""

    def refuse(coro: Any, **kwargs: Any) -> None:
        coro.close()
        raise Started

    def no_control(*args: Any) -> None:
        raise Started

    monkeypatch.setattr(asyncio, "run", refuse)
    monkeypatch.setattr("wgmesh.wg.backends.open_control", no_control)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # no event loop policy installed


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, values: dict[str, Any]) -> Path:
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    return path


def wgmesh(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    except Started:
        code = 0
    return code, capsys.readouterr().err


def assert_config_error(code: int, err: str, command: str, where: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert err.startswith(f"wgmesh {command}: error: {where}"), err
    assert "Traceback" not in err
    assert "expected" in err, f"does not say what is accepted: {err!r}"


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    key = tmp_path / "registrar.key"
    key.write_text(KEY + "\n")
    akeys = tmp_path / "authorized_keys"
    akeys.write_text(f"{KEY} alice 100.64.0.1/32\n")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    plain = tmp_path / "plain-file"
    plain.write_text("")
    tsig = tmp_path / "xfr.key"
    tsig.write_text('key "xfr.mesh.test" {\n\talgorithm hmac-sha256;\n\tsecret '
                    '"d9NM5is+ktHzOPgemJzYquzcHtJML+IH1tvzNUGY8q8=";\n};\n')  # fmt: skip
    yield {"key": key, "akeys": akeys, "garbage": garbage, "plain": plain, "dir": tmp_path,
           "tsig": tsig}  # fmt: skip


def registrar_base(files: dict[str, Path]) -> dict[str, Any]:
    return {
        "zone": "mesh.test",
        "private-key-file": str(files["key"]),
        "open": True,
        "state-dir": str(files["dir"] / "state"),
        "listen": "127.0.0.1",
    }


DAEMON_BASE: dict[str, Any] = {
    "interface": "wg9",
    "registrar": "192.0.2.1",
    "registrar-key": KEY,
    "zone": "mesh.test",
    "backend": "wg",
}

# -- the values found wrong on the release before these checks --------------------------------


def test_the_reported_bad_values_exit_2_with_one_line(tmp_path: Path) -> None:
    """As a subprocess, end to end: the reported cases, each one line, status 2."""
    key = tmp_path / "r.key"
    key.write_text(KEY + "\n")
    base = ["registrar", "--private-key-file", str(key), "--open", "--state-dir", str(tmp_path)]
    ns_string = write_config(tmp_path / "registrar.toml", {"zone": "mesh.test",
                                                          "ns": "ns1.mesh.test"})  # fmt: skip
    wrong_type = write_config(tmp_path / "types.toml", {"zone": "mesh.test", "ttl": [5]})
    cases = [
        ([*base, "--config", str(ns_string)], f"config {ns_string}: ns: got the string"),
        ([*base, "--zone", "mesh.test", "--dns-port", "70000"], "--dns-port: 70000 is out of"),
        ([*base, "--zone", "a b"], "--zone: 'a b' has the character ' '"),
        ([*base, "--zone", "mesh.test", "--ttl", "-5"], "--ttl: -5 is out of range"),
        ([*base, "--config", str(wrong_type)], f"config {wrong_type}: ttl: got a list"),
    ]
    for argv, message in cases:
        out = subprocess.run([*WG, *argv], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"wgmesh registrar: error: {message}"), out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert "expected" in out.stderr


def test_ns_given_as_a_string_is_refused_and_as_a_list_accepted(files: dict[str, Path]) -> None:
    cfg = write_config(files["dir"] / "r.toml", {**registrar_base(files), "ns": "ns1.mesh.test"})
    args = build_parser().parse_args(["registrar", "--config", str(cfg)])
    with pytest.raises(Exception, match=r"write ns = \['ns1.mesh.test'\]"):
        registrar.settings_from(resolve(args, registrar.DEFAULTS, registrar.CHECKS))
    cfg = write_config(cfg, {**registrar_base(files), "ns": ["ns1.mesh.test", "ns2.other."]})
    args = build_parser().parse_args(["registrar", "--config", str(cfg)])
    settings = registrar.settings_from(resolve(args, registrar.DEFAULTS, registrar.CHECKS))
    assert settings.zone.ns == ("ns1.mesh.test.", "ns2.other.")


@pytest.mark.parametrize(
    ("command", "key", "suggestion"),
    [("daemon", "probe_intervl", "probe_interval"), ("daemon", "registrar-kee", "registrar-key"),
     ("registrar", "dns_prt", "dns_port"), ("registrar", "ns-adress", "ns-address")],
)  # fmt: skip
def test_unknown_key_is_named_with_a_suggestion(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, key: str, suggestion: str
) -> None:
    cfg = write_config(tmp_path / "c.toml", {key: 3})
    code, err = wgmesh(capsys, command, "--config", str(cfg))
    assert code == 2 and err.count("\n") == 1
    assert f"config {cfg}: unknown key {key!r}; did you mean {suggestion!r}?" in err


def test_unknown_key_far_from_any_lists_the_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", {"colour": "blue"})
    code, err = wgmesh(capsys, "registrar", "--config", str(cfg))
    assert code == 2 and "unknown key 'colour'; accepted keys: " in err and "dns_port" in err


def test_a_key_set_twice_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"dns_port": 53, "dns-port": 54})
    code, err = wgmesh(capsys, "registrar", "--config", str(cfg))
    assert_config_error(code, err, "registrar", f"config {cfg}: 'dns-port' is set twice")


def test_a_file_that_is_not_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("zone = \n")
    code, err = wgmesh(capsys, "registrar", "--config", str(cfg))
    assert code == 2 and err.count("\n") == 1 and "not valid TOML" in err
    code, err = wgmesh(capsys, "registrar", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "No such file or directory" in err


# -- table-driven: wrong type for every key, out of range for every number ---------------------

KINDS: dict[str, dict[str, str]] = {
    "registrar": {
        "zone": "str", "private_key_file": "str", "listen": "str", "stun_port": "int",
        "stun_alt_port": "int", "dns_port": "int", "state_dir": "str", "authorized_keys": "str",
        "open": "bool", "ns": "list", "ns_address": "list", "hostmaster": "str", "ttl": "int",
        "negative_ttl": "int", "expiry": "float", "rate": "float", "burst": "float",
        "max_peers": "int", "metrics": "str", "log_counters": "float", "verbose": "bool",
        "dns_rate": "float", "dns_burst": "float", "dns_slip": "int",
        "dns_tcp_per_source": "int", "dns_tcp_max": "int", "relay_ports": "str",
        "secondary": "list", "tsig_key": "str", "serial_interval": "float",
        "relay_mode": "str", "relay_address": "str", "relay_per_peer": "int",
        "relay_idle": "float", "relay_unbound": "float", "status_socket": "str",
        "update_primary": "str",
    },
    "daemon": {
        "interface": "str", "registrar": "str_or_list", "registrar_key": "str",
        "registrar_alt_port": "int", "zone": "str", "dns": "str", "mode": "str",
        "probe_interval": "float", "name": "str", "wait_interface": "bool",
        "status_socket": "str", "backend": "str", "keepalive": "int", "no_mdns": "bool",
        "mdns_interface": "list", "metrics": "str", "log_counters": "float", "verbose": "bool",
        "routes": "bool",
    },
}  # fmt: skip
WRONG_TYPES: dict[str, list[Any]] = {
    "str": [5, 1.5, True, ["x"], {"a": 1}],
    "int": ["53", 5.5, True, [1], {"a": 1}],
    "float": ["20", True, [1.0], {"a": 1}],
    "bool": ["true", 1, 0, [True]],
    "list": ["x", 5, True, {"a": "x"}],
    "str_or_list": [5, 1.5, True, [5], {"a": 1}],
}
RANGES: dict[str, dict[str, list[Any]]] = {
    "registrar": {
        "stun_port": [0, -1, 65536, 10**20], "stun_alt_port": [-1, 65536],
        "dns_port": [0, -1, 65536, 70000], "ttl": [-1, -5, 86401, 2**31],
        "negative_ttl": [-1, 86401], "expiry": [0, -1.5, 86401, math.nan, math.inf],
        "rate": [0, -1, 1e7, math.nan], "burst": [0, 0.5, -1, 1e7, math.inf],
        "max_peers": [0, -1, 10**9], "log_counters": [-1, 0.5, 86401, math.nan, math.inf],
        "dns_rate": [-1, 1e10, math.nan], "dns_burst": [0, -1, math.inf], "dns_slip": [-1, 101],
        "dns_tcp_per_source": [0, 70000], "dns_tcp_max": [0, -3], "relay_per_peer": [0, 2000],
        "relay_idle": [0, -1, math.nan],
        "relay_unbound": [0, -1, math.nan],
        "serial_interval": [-0.5, 3601, math.nan, math.inf],
    },
    "daemon": {
        "registrar_alt_port": [-1, 65536], "probe_interval": [0, -1, 3601, math.nan, -math.inf],
        "keepalive": [0, -1, 65536], "log_counters": [-0.5, 0.99, 1e9, math.nan],
    },
}  # fmt: skip
FORMATS: dict[str, dict[str, list[Any]]] = {
    "registrar": {
        "zone": ["a b", "", ".", "a..b", "-a.test", "a-.test", "a" * 64 + ".test", "é.test",
                 "x." * 85 + "test", "mesh.test/x"],
        "listen": ["localhost", "1.2.3.4.5", ""],
        "ns": [["a b"], ["ns1.mesh.test", "ns1.mesh.test"], ["b" * 64], ["ns2.mesh.test="],
               ["ns2.mesh.test=nope"], ["ns2.mesh.test=192.0.2.1,"],
               ["ns.other.example=192.0.2.1"]],
        "ns_address": [["1.2.3"], ["fe80::zz"], [""]],
        "hostmaster": ["me@example.com", "a b", ""],
        "private_key_file": ["", "{dir}/no-such-key", "{garbage}", "{dir}"],
        "authorized_keys": ["{dir}/no-such-file", "{garbage}", "{dir}"],
        "state_dir": ["", "{plain}"],
        "metrics": ["127.0.0.1", "localhost:9108", "::1:9108", "127.0.0.1:0",
                    "127.0.0.1:70000", "[::1]", "[::1]9108", ""],
        "relay_ports": ["40000", "40000-", "a-b", "500-600", "40000-40000", "40000-70000",
                        "3000-4000"],
        "relay_mode": ["on", "Kernel"],
        "relay_address": ["1.2.3", ""],
        "secondary": [["1.2.3"], ["ns2.example"], ["192.0.2.1:0"], ["192.0.2.1:70000"],
                      ["192.0.2.1", "192.0.2.1:53"], [""]],
        "tsig_key": ["", "{dir}/no-such-key", "{garbage}", "{dir}", "{key}"],
        "status_socket": ["", "/" + "s" * 120],
    },
    "daemon": {
        "interface": ["", "x" * 16, "a/b", "a b", "wg:0", "."],
        "registrar": ["1.2.3.4:0", "1.2.3.4:70000", "[2001:db8::1", "[2001:db8::1]:0",
                      "host..example", "1.2.3.4:x", "", ["192.0.2.1", "192.0.2.2:3478"],
                      ["::1", "[2001:db8::1]:3478"], [], [""]],
        "registrar_key": ["nope", "A" * 44, ""],
        "zone": ["a b", "a..b", ""],
        "dns": ["1.2.3.4:0", "ns.example", ""],
        "mode": ["foo", "Mesh"],
        "backend": ["foo"],
        "name": ["x" * 64, "tab\there", "line\n"],
        "status_socket": ["", "/" + "s" * 120],
        "mdns_interface": [["a b"], ["eth0", ""]],
        "metrics": ["9109", "127.0.0.1:x", "[::1]:9109:1", ""],
    },
}  # fmt: skip


def cases() -> Iterator[tuple[str, str, Any]]:
    for command, kinds in KINDS.items():
        for key, kind in kinds.items():
            for value in WRONG_TYPES[kind]:
                yield command, key, value
        for key, values in {**RANGES[command], **FORMATS[command]}.items():
            for value in values:
                yield command, key, value


def test_the_tables_cover_every_option() -> None:
    for command, module in (("registrar", registrar), ("daemon", daemon)):
        assert set(KINDS[command]) == set(module.DEFAULTS) == set(module.CHECKS)
        numbers = {k for k, kind in KINDS[command].items() if kind in ("int", "float")}
        assert numbers <= set(RANGES[command]), "a numeric option without range cases"


def fill(value: Any, files: dict[str, Path]) -> Any:
    if isinstance(value, str):
        return value.format(**{k: str(v) for k, v in files.items()})
    return value


@pytest.mark.parametrize(("command", "key", "value"), list(cases()), ids=repr)
def test_a_bad_config_value_is_named(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    command: str,
    key: str,
    value: Any,
) -> None:
    value = fill(value, files)
    base = registrar_base(files) if command == "registrar" else dict(DAEMON_BASE)
    base = {k.replace("-", "_"): v for k, v in base.items()}
    cfg = write_config(files["dir"] / f"{command}.toml", {**base, key: value})
    code, err = wgmesh(capsys, command, "--config", str(cfg))
    assert_config_error(code, err, command, f"config {cfg}: {key}")


FLAG_CASES: list[tuple[str, str, str]] = [
    (command, key, str(value))
    for command in ("registrar", "daemon")
    for key, values in {**RANGES[command], **FORMATS[command]}.items()
    for value in values
    if not isinstance(value, list) and value != ""
]


@pytest.mark.parametrize(("command", "key", "value"), FLAG_CASES, ids=repr)
def test_a_bad_flag_value_is_named(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], command: str, key: str, value: str
) -> None:
    """The same checks for flags; a flag overrides a valid value of the config file."""
    base = registrar_base(files) if command == "registrar" else dict(DAEMON_BASE)
    cfg = write_config(files["dir"] / f"{command}.toml", base)
    flag = "--" + key.replace("_", "-")
    code, err = wgmesh(capsys, command, "--config", str(cfg), f"{flag}={fill(value, files)}")
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    if "argument " in err:  # argparse's own: not a number, not a choice
        assert err.startswith(f"wgmesh {command}: error: argument {flag}: invalid"), err
    else:
        assert_config_error(code, err, command, f"{flag}: ")


@pytest.mark.parametrize(
    ("command", "argv", "where"),
    [("registrar", ["--stun-port", "5000", "--stun-alt-port", "5000"], "--stun-alt-port: 5000"),
     ("registrar", ["--stun-port", "65535"], "--stun-port: 65535 leaves no port"),
     ("registrar", ["--stun-port", "5000", "--dns-port", "5000"], "--dns-port: 5000 is also"),
     ("registrar", ["--stun-port", "5000", "--dns-port", "5001"], "--dns-port: 5001 is also"),
     ("registrar", ["--dns-port", "5353", "--metrics", "127.0.0.1:5353"],
      "--metrics: port 5353 is also the DNS server's TCP port (--dns-port)"),
     ("registrar", ["--dns-port", "5353", "--listen", "0.0.0.0", "--metrics", "127.0.0.1:5353"],
      "--metrics: port 5353 is also"),
     ("daemon", ["--registrar", "192.0.2.1:4000", "--registrar-alt-port", "4000"],
      "--registrar-alt-port: 4000"),
     ("daemon", ["--registrar", "192.0.2.1:65535"], "--registrar: port 65535 leaves no port")],
)  # fmt: skip
def test_ports_that_collide(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    command: str,
    argv: list[str],
    where: str,
) -> None:
    base = registrar_base(files) if command == "registrar" else dict(DAEMON_BASE)
    cfg = write_config(files["dir"] / "c.toml", base)
    code, err = wgmesh(capsys, command, "--config", str(cfg), *argv)
    assert_config_error(code, err, command, where)


def test_a_bad_file_value_is_reported_even_when_a_flag_overrides_it(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    cfg = write_config(files["dir"] / "r.toml", {**registrar_base(files), "dns-port": "53"})
    code, err = wgmesh(capsys, "registrar", "--config", str(cfg), "--dns-port", "5353")
    assert_config_error(code, err, "registrar", f"config {cfg}: dns-port: got the string '53'")


def test_argparse_usage_errors_are_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["registrar", "--dns-port", "abc"], ["daemon", "--mode", "x"],
                 ["registrar", "--no-such-flag"], ["nosuchcommand"]):  # fmt: skip
        code, err = wgmesh(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "error:" in err, err
        assert "-h'" in err


# -- what is valid still loads -----------------------------------------------------------------


def long_zone(length: int) -> str:
    """A zone name of ``length`` characters in labels of 50."""
    labels, left = [], length
    while left > 51:
        labels.append("z" * 50)
        left -= 51
    return ".".join([*labels, "z" * left])


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def uncommented(text: str) -> str:
    """The example with its commented-out settings (``# key = value``) switched on."""
    return re.sub(r"(?m)^# (?=[a-z-]+ = )", "", text)


def test_the_example_registrar_config_loads(files: dict[str, Path]) -> None:
    example = ROOT / "examples" / "registrar.toml"
    everything = files["dir"] / "everything.toml"
    everything.write_text(uncommented(example.read_text()))
    args = parse([
        "registrar", "--config", str(everything), "--private-key-file", str(files["key"]),
        "--authorized-keys", str(files["akeys"]), "--state-dir", str(files["dir"]),
        "--tsig-key", str(files["tsig"]),
    ])  # fmt: skip
    s = registrar.settings_from(resolve(args, registrar.DEFAULTS, registrar.CHECKS))
    assert s.zone.hostmaster == "hostmaster.mesh.example.com." and s.registry.max_peers == 10**6
    assert s.registry.max_watchers == 10**6  # one watcher per peer: a lower cap starves daemons
    args = parse([
        "registrar", "--config", str(example), "--private-key-file", str(files["key"]),
        "--authorized-keys", str(files["akeys"]), "--state-dir", str(files["dir"]),
    ])  # fmt: skip
    s = registrar.settings_from(resolve(args, registrar.DEFAULTS, registrar.CHECKS))
    assert s.zone.origin == "mesh.example.com." and s.zone.ns == ("ns1.mesh.example.com.",)
    assert s.zone.ns_addresses == ("203.0.113.10",) and s.zone.ttl == 5
    assert (s.stun_port, s.stun_alt_port, s.dns_port) == (3478, 3479, 53)
    assert s.registry.expiry == 50.0 and s.authorized_keys == files["akeys"]


def test_the_example_daemon_config_loads_once_its_key_is_filled_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (ROOT / "examples" / "daemon.toml").read_text()
    placeholder = next(ln for ln in text.splitlines() if ln.startswith("registrar-key"))
    as_shipped = tmp_path / "wg0.toml"
    as_shipped.write_text(text)
    code, err = wgmesh(capsys, "daemon", "--config", str(as_shipped))
    assert_config_error(code, err, "daemon", f"config {as_shipped}: registrar-key: 'REPLACE")
    filled = tmp_path / "filled.toml"
    filled.write_text(uncommented(text.replace(placeholder, f'registrar-key = "{KEY}"')))
    s = daemon.settings_from(
        resolve(parse(["daemon", "--config", str(filled)]), daemon.DEFAULTS, daemon.CHECKS)
    )
    assert (s.interface, s.zone, s.mode, s.probe_interval) == ("wg0", "mesh.example.com.",
                                                                 "endpoints", 20.0)  # fmt: skip
    assert s.registrar.port == 3478 and s.wait_interface is True
    assert s.dns is not None and s.dns.port == 53
    code, err = wgmesh(capsys, "daemon", "--config", str(filled))
    assert code == 0 and err == ""  # accepted: reached the start (stopped by no_start)


@pytest.mark.parametrize(
    "extra",
    [["--ttl", "0", "--negative-ttl", "86400"], ["--stun-alt-port", "0"],
     ["--zone", "Mesh_1.Example.COM."], ["--listen", "::"], ["--hostmaster", "ops.example.org"],
     ["--ns", "ns1.mesh.test", "--ns", "ns.other.example", "--ns-address", "2001:db8::53"],
     ["--expiry", "0.5", "--rate", "10000", "--burst", "1", "--max-peers", "1"],
     ["--zone", long_zone(170)],  # the longest zone
     ["--metrics", "127.0.0.1:9108", "--log-counters", "0"],
     ["--metrics", "[::1]:9108", "--log-counters", "86400"],
     ["--dns-port", "5353", "--metrics", "127.0.0.2:5353"]],  # another address: no clash
)  # fmt: skip
def test_valid_registrar_values_are_accepted(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], extra: list[str]
) -> None:
    cfg = write_config(files["dir"] / "r.toml", registrar_base(files))
    code, err = wgmesh(capsys, "registrar", "--config", str(cfg), *extra)
    assert code == 0 and err == "", err


@pytest.mark.parametrize(
    "extra",
    [["--registrar", "192.0.2.1:65535", "--registrar-alt-port", "0"],
     ["--dns", "[2001:db8::53]:5353"], ["--dns", "192.0.2.53"], ["--keepalive", "65535"],
     ["--probe-interval", "0.5"], ["--name", "bé" * 21], ["--mdns-interface", "eth0"],
     ["--interface", "x" * 15], ["--mode", "mesh", "--no-mdns", "--wait-interface"],
     ["--metrics", "[::1]:9109", "--log-counters", "0"], ["--log-counters", "1"]],
)  # fmt: skip
def test_valid_daemon_values_are_accepted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str]
) -> None:
    cfg = write_config(tmp_path / "d.toml", DAEMON_BASE)
    code, err = wgmesh(capsys, "daemon", "--config", str(cfg), *extra)
    assert code == 0 and err == "", err


def test_secondaries_and_the_tsig_key_reach_the_settings(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    from wgmesh.proto.endpoint import Endpoint

    cfg = write_config(files["dir"] / "r.toml", {**registrar_base(files),
                       "secondary": ["192.0.2.53", "[2001:db8::53]:5300"],
                       "tsig-key": str(files["tsig"]), "serial-interval": 0.5})  # fmt: skip
    s = registrar.settings_from(resolve(parse(["registrar", "--config", str(cfg)]),
                                        registrar.DEFAULTS, registrar.CHECKS))  # fmt: skip
    assert s.xfr.secondaries == (Endpoint.parse("192.0.2.53:53"),
                                 Endpoint.parse("[2001:db8::53]:5300"))  # fmt: skip
    assert s.xfr.key.name == "xfr.mesh.test." and s.zone.serial_interval == 0.5
    plain = write_config(files["dir"] / "p.toml", registrar_base(files))
    s = registrar.settings_from(resolve(parse(["registrar", "--config", str(plain),
                                               "--secondary", "127.0.0.1:5300"]),
                                        registrar.DEFAULTS, registrar.CHECKS))  # fmt: skip
    assert s.xfr.key is None and s.zone.serial_interval == 1.0
    assert (
        registrar.settings_from(
            resolve(
                parse(["registrar", "--config", str(plain)]), registrar.DEFAULTS, registrar.CHECKS
            )
        ).xfr
        is None
    )
    code, err = wgmesh(capsys, "registrar", "--config", str(plain), "--tsig-key",
                       str(files["tsig"]))  # fmt: skip
    assert_config_error(code, err, "registrar", "--tsig-key: nothing uses the key")
    code, err = wgmesh(capsys, "registrar", "--config", str(plain), "--secondary",
                       "192.0.2.1", "--secondary", "192.0.2.1:53")  # fmt: skip
    assert_config_error(code, err, "registrar", "--secondary: 192.0.2.1:53 is listed twice")
    code, err = wgmesh(capsys, "registrar", "--config", str(plain), "--secondary",
                       "192.0.2.1", "--tsig-key", str(files["key"]))  # fmt: skip
    assert_config_error(code, err, "registrar", f"--tsig-key: {files['key']}: not a key")


def test_a_zone_too_long_for_its_peer_names_is_refused(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    cfg = write_config(files["dir"] / "r.toml", registrar_base(files))
    code, err = wgmesh(capsys, "registrar", "--config", str(cfg), "--zone", long_zone(171))
    assert_config_error(code, err, "registrar", "--zone: ")
    assert "at most 170 characters" in err


def test_the_counter_options_reach_the_settings(files: dict[str, Path], tmp_path: Path) -> None:
    from wgmesh.proto.endpoint import Endpoint

    args = parse(["registrar", "--config", str(write_config(files["dir"] / "r.toml",
                                                           registrar_base(files)))])  # fmt: skip
    s = registrar.settings_from(resolve(args, registrar.DEFAULTS, registrar.CHECKS))
    assert s.metrics is None and s.log_counters == 60.0  # off, and a line a minute
    args = parse(["registrar", "--config", str(files["dir"] / "r.toml"),
                  "--metrics", "[::1]:9108", "--log-counters", "0"])  # fmt: skip
    s = registrar.settings_from(resolve(args, registrar.DEFAULTS, registrar.CHECKS))
    assert s.metrics == Endpoint.parse("[::1]:9108") and s.log_counters == 0.0
    cfg = write_config(tmp_path / "d.toml", {**DAEMON_BASE, "metrics": "127.0.0.1:9109",
                                             "log-counters": 30})  # fmt: skip
    d = daemon.settings_from(resolve(parse(["daemon", "--config", str(cfg)]), daemon.DEFAULTS,
                                     daemon.CHECKS))  # fmt: skip
    assert d.metrics == Endpoint.parse("127.0.0.1:9109") and d.log_counters == 30.0


# -- runtime failures exit with 1 --------------------------------------------------------------


def test_a_port_in_use_is_a_runtime_failure(tmp_path: Path) -> None:
    key = tmp_path / "r.key"
    key.write_text(KEY + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*WG, "registrar", "--zone", "mesh.test", "--private-key-file", str(key), "--open",
             "--listen", "127.0.0.1", "--stun-port", str(port), "--stun-alt-port", "0",
             "--dns-port", str(port + 1 if port < 65535 else port - 1),
             "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "error: cannot bind 127.0.0.1" in out.stderr and "Traceback" not in out.stderr


def test_a_metrics_port_in_use_is_a_runtime_failure(tmp_path: Path) -> None:
    from tests.procs import free_port

    key = tmp_path / "r.key"
    key.write_text(KEY + "\n")
    stun, dns = free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*WG, "registrar", "--zone", "mesh.test", "--private-key-file", str(key), "--open",
             "--listen", "127.0.0.1", "--stun-port", str(stun), "--dns-port", str(dns),
             "--state-dir", str(tmp_path / "state"), "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"error: cannot listen for HTTP on 127.0.0.1:{port} (TCP)" in out.stderr
    assert "Traceback" not in out.stderr


def test_ns_names_with_their_own_glue_reach_the_zone(files: dict[str, Path]) -> None:
    cfg = write_config(files["dir"] / "r.toml", {**registrar_base(files),
                       "ns": ["ns1.mesh.test", "ns2.mesh.test=192.0.2.53,2001:db8::53"],
                       "ns-address": ["203.0.113.10"]})  # fmt: skip
    s = registrar.settings_from(resolve(parse(["registrar", "--config", str(cfg)]),
                                        registrar.DEFAULTS, registrar.CHECKS))  # fmt: skip
    assert s.zone.ns == ("ns1.mesh.test.", "ns2.mesh.test.")
    assert s.zone.ns_glue == (("ns2.mesh.test.", ("192.0.2.53", "2001:db8::53")),)
    assert s.zone.ns_addresses == ("203.0.113.10",)


def test_the_default_listen_set_drops_ipv6_on_a_kernel_without_it(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ipv6.disable=1``: no AF_INET6 socket at all; the default (both wildcards) becomes
    IPv4 only so the registrar starts; a ``--listen ::`` given by hand is kept (its bind
    error is the answer)."""
    base = {k: v for k, v in registrar_base(files).items() if k != "listen"}
    cfg = write_config(files["dir"] / "r.toml", base)
    for ipv6, want in ((True, ("0.0.0.0", "::")), (False, ("0.0.0.0",))):
        monkeypatch.setattr(registrar, "has_ipv6", lambda ipv6=ipv6: ipv6)
        s = registrar.settings_from(resolve(parse(["registrar", "--config", str(cfg)]),
                                            registrar.DEFAULTS, registrar.CHECKS))  # fmt: skip
        assert s.listen == want, ipv6
    argv = ["registrar", "--config", str(cfg), "--listen", "::"]
    given = registrar.settings_from(resolve(parse(argv), registrar.DEFAULTS, registrar.CHECKS))
    assert given.listen == ("::",)
