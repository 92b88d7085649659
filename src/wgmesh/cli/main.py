"""The ``wgmesh`` command: parse arguments and dispatch to a subcommand module.

Subcommands live in their own modules (``wgmesh.cli.<name>``) and are imported only when run,
so ``wgmesh genkey`` does not pay for asyncio, dnspython or zeroconf.

Exit status (docs/cli.md): 0 success; 2 a usage or configuration error (argparse's own errors,
and every :class:`ConfigError`: raised before anything starts); 1 a failure at run time (any
other :class:`WgmeshError`, e.g. a port that cannot be bound or a missing interface). Errors are
one line on stderr, ``wgmesh COMMAND: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from wgmesh import __version__
from wgmesh.errors import ConfigError, WgmeshError

EXIT_FAILURE = 1
"""A failure at run time."""
EXIT_USAGE = 2
"""A usage or configuration error (argparse uses 2 too)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}; see '{self.prog} -h'\n")


def one_line(text: str) -> str:
    return " ".join(text.splitlines()).strip()


# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "registrar": ("wgmesh.cli.registrar", "run the registrar: STUN endpoint + DNS-SD server"),
    "daemon": ("wgmesh.cli.daemon", "keep this host's WireGuard peer endpoints current"),
    "peers": ("wgmesh.cli.peers", "show every peer: endpoint, where it came from, path"),
    "netcheck": ("wgmesh.cli.netcheck", "what NAT is this host behind (STUN tests, no daemon)"),
    "mesh": ("wgmesh.cli.mesh", "on the registrar's host: every peer and the matrix of pairs"),
    "genkey": ("wgmesh.cli.keys", "print a new private key (WireGuard format)"),
    "pubkey": ("wgmesh.cli.keys", "read a private key on stdin, print its public key"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="wgmesh",
        description="WireGuard peers behind NAT find each other and connect directly.",
        epilog="Run 'wgmesh COMMAND --help' for a command's options. Docs: docs/ in the source.",
    )
    parser.add_argument("--version", action="version", version=f"wgmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p, name)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        result: int = args._run(args)
    except ConfigError as exc:
        print(f"wgmesh {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except WgmeshError as exc:
        print(f"wgmesh {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
