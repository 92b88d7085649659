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

from wgmesh.errors import ConfigError


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML file with the same keys as the long options (flags given override it)",
    )


def resolve(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge flags, the config file and defaults into one dict keyed by option name."""
    file_values: dict[str, Any] = {}
    path: Path | None = getattr(args, "config", None)
    if path is not None:
        import tomllib  # only with --config: every start of the daemon would pay for it

        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--config {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in defaults:
                known = ", ".join(sorted(k.replace("_", "-") for k in defaults))
                raise ConfigError(f"--config {path}: unknown key {key!r} (known: {known})")
            file_values[name] = value
    out: dict[str, Any] = {}
    for name, default in defaults.items():
        flag = getattr(args, name, None)
        if flag is not None and flag != [] and flag is not False:
            out[name] = flag
        elif name in file_values:
            out[name] = file_values[name]
        else:
            out[name] = default
    return out


def read_key_file(path: Any, option: str) -> bytes:
    """Read a WireGuard-format private key file; errors name the option and file."""
    from wgmesh.errors import DecodeError
    from wgmesh.proto.keys import decode_key

    if path is None:
        raise ConfigError(f"{option} FILE is required")
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"{option} {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {p}: not a WireGuard key (ASCII base64)") from None
    try:
        return decode_key(text)
    except DecodeError as exc:
        raise ConfigError(f"{option} {p}: {exc}") from None


def setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
