"""Options that come from flags or from a ``--config FILE`` (TOML, the same keys as the long
flags, with dashes or underscores). Flags win over the file; the file wins over defaults.

Each subcommand declares its options with defaults of ``None`` and passes the real defaults
here, so we can tell "not given" from "given as the default".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wgmesh.cli.validate import Check, flag_of, suggest
from wgmesh.errors import ConfigError, WgmeshError


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML file with the same keys as the long options (flags given override it)",
    )


def add_counter_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--metrics`` and ``--log-counters``, the same for the registrar and the daemon
    (checked by ``validate.listen_endpoint`` and ``validate.seconds_or_off``)."""
    parser.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help=f"serve the counters as Prometheus text at http://ADDR:PORT/metrics, e.g. {example} "
        "or [::1]:PORT (default: off; no authentication, so bind to localhost)",
    )
    parser.add_argument(
        "--log-counters",
        type=float,
        metavar="SECONDS",
        help="every SECONDS, log one line with the counters that changed (default 60; 0: off)",
    )


class RuntimeFailure(WgmeshError):
    """Something failed after the configuration was accepted (a port taken, a missing
    interface, no permission): exit status 1, where configuration errors exit with 2."""


class Options(dict[str, Any]):
    """The merged options, keyed by option name, and where each value came from: ``where[name]``
    is the flag (``--dns-port``; also for defaults) or the file and key (``config FILE: key``)."""

    def __init__(self, values: Mapping[str, Any], where: Mapping[str, str]) -> None:
        super().__init__(values)
        self.where = dict(where)


def where_of(values: Mapping[str, Any], name: str) -> str:
    """Where ``values[name]`` came from, for an error message."""
    where = values.where if isinstance(values, Options) else {}
    return where.get(name) or flag_of(name)


def resolve(
    args: argparse.Namespace,
    defaults: Mapping[str, Any],
    checks: Mapping[str, Check] | None = None,
) -> Options:
    """Merge flags, the config file and defaults into one dict keyed by option name.

    With ``checks``, every value in the file is checked (also one a flag overrides), so a
    broken file is reported whatever the command line says; the values that take effect are
    checked again when the settings are built (:func:`check_values`).
    """
    file_values: dict[str, Any] = {}
    file_where: dict[str, str] = {}
    file_keys: dict[str, str] = {}
    path: Path | None = getattr(args, "config", None)
    if path is not None:
        import tomllib  # only with --config: every start of the daemon would pay for it

        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {path}: not UTF-8 text; expected a TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in defaults:
                raise ConfigError(f"config {path}: unknown key {key!r}; {suggest(key, defaults)}")
            if name in file_values:
                raise ConfigError(
                    f"config {path}: {key!r} is set twice (as {file_keys[name]!r} and {key!r}); "
                    "expected each key once"
                )
            where = f"config {path}: {key}"
            file_values[name] = checks[name](value, where) if checks else value
            file_where[name], file_keys[name] = where, key
    out: dict[str, Any] = {}
    where_out: dict[str, str] = {}
    for name, default in defaults.items():
        flag = getattr(args, name, None)
        if flag is not None and flag != [] and flag is not False:
            out[name], where_out[name] = flag, flag_of(name)
        elif name in file_values:
            out[name], where_out[name] = file_values[name], file_where[name]
        else:
            out[name], where_out[name] = default, flag_of(name)
    return Options(out, where_out)


def check_values(values: Mapping[str, Any], checks: Mapping[str, Check]) -> dict[str, Any]:
    """``values`` with every value that is not None checked and normalized (ints, floats)."""
    out = dict(values)
    for name, check in checks.items():
        if out.get(name) is not None:
            out[name] = check(out[name], where_of(values, name))
    return out


def read_key_file(path: Any, option: str) -> bytes:
    """Read a WireGuard-format private key file; errors name the option (or config key) and
    the file."""
    from wgmesh.errors import DecodeError
    from wgmesh.proto.keys import decode_key

    if path is None:
        raise ConfigError(f"{option} FILE is required")
    p = Path(path)
    expected = "expected a file holding a WireGuard private key (wgmesh genkey > FILE)"
    try:
        text = p.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"{option}: {p}: {exc.strerror}; {expected}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{option}: {p}: not ASCII base64; {expected}") from None
    try:
        return decode_key(text)
    except DecodeError as exc:
        raise ConfigError(f"{option}: {p}: {exc}; {expected}") from None


def setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
