"""(not yet built)"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del parser, name


def run(args: argparse.Namespace) -> int:
    del args
    print("not implemented yet")
    return 2
