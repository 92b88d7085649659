"""The ``wgmesh`` command: parse arguments and dispatch to a subcommand module.

Subcommands live in their own modules (``wgmesh.cli.<name>``) and are imported only when run,
so ``wgmesh genkey`` does not pay for asyncio, dnspython or zeroconf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from wgmesh import __version__
from wgmesh.errors import WgmeshError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "registrar": ("wgmesh.cli.registrar", "run the registrar: STUN endpoint + DNS-SD server"),
    "daemon": ("wgmesh.cli.daemon", "keep this host's WireGuard peer endpoints current"),
    "peers": ("wgmesh.cli.peers", "show every peer: endpoint, where it came from, path"),
    "genkey": ("wgmesh.cli.keys", "print a new private key (WireGuard format)"),
    "pubkey": ("wgmesh.cli.keys", "read a private key on stdin, print its public key"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wgmesh",
        description="WireGuard peers behind NAT find each other and connect directly.",
        epilog="Run 'wgmesh COMMAND --help' for a command's options. Docs: docs/ in the source.",
    )
    parser.add_argument("--version", action="version", version=f"wgmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
        return 2
    try:
        result: int = args._run(args)
    except WgmeshError as exc:
        print(f"wgmesh {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
