"""Keys in WireGuard's format: ``wgmesh genkey`` and ``wgmesh pubkey`` behave like ``wg genkey``
and ``wg pubkey``, so the registrar needs no wireguard-tools.

  wgmesh genkey > registrar.key
  wgmesh pubkey < registrar.key
"""

from __future__ import annotations

import argparse
import os
import sys

from wgmesh.cli.options import RuntimeFailure
from wgmesh.errors import DecodeError
from wgmesh.proto.keys import clamp_private_key, decode_key, encode_key, public_key


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del parser, name


def run(args: argparse.Namespace) -> int:
    if args.command == "genkey":
        sys.stdout.write(encode_key(clamp_private_key(os.urandom(32))) + "\n")
        return 0
    try:
        private = decode_key(sys.stdin.read())
    except DecodeError as exc:
        # exit status 1 like `wg pubkey`: the input is wrong, not the command line
        raise RuntimeFailure(f"stdin: {exc}") from None
    sys.stdout.write(encode_key(public_key(private)) + "\n")
    return 0
