"""Show the whole mesh as the running registrar sees it: every registered peer, and the matrix
of pairs (direct, relay or none, as each daemon reports its path to each peer, with the reason
when it is not direct). Run it on the registrar's host, as the registrar's user (or root): it
reads the registrar's unix socket (mode 0600).

  wgmesh mesh
  wgmesh mesh --status-socket /var/lib/wgmesh/registrar.sock --json   # schema in docs/cli.md
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wgmesh.cli.options import RuntimeFailure

DEFAULT_SOCKET = Path("/var/lib/wgmesh/registrar.sock")
SHORT = {"direct": "direct", "relay": "relay", "none": "none"}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    a = parser.add_argument
    a("--status-socket", metavar="PATH", type=Path, default=DEFAULT_SOCKET,
      help=f"the registrar's socket (default {DEFAULT_SOCKET})")  # fmt: skip
    a("--json", action="store_true", help="print the registrar's snapshot as JSON")


def read_snapshot(path: Path) -> dict[str, Any]:
    """The snapshot from the registrar's socket; RuntimeFailure when it cannot be read."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            chunks = []
            for _ in range(16384):  # at most 1 GiB; a snapshot is far smaller
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot read the registrar at {path}: {exc.strerror or exc} (run this on the "
            "registrar's host as its user or root; --status-socket names another socket)"
        ) from None
    try:
        doc: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise RuntimeFailure(f"{path}: not a registrar's snapshot") from None
    return doc


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(doc: dict[str, Any]) -> str:
    """The snapshot for people: the peers, the matrix, then why each pair is not direct."""
    peers = doc["peers"]
    shown = f"{doc['total']} peers" + (
        f" ({doc['total'] - doc['shown']} not shown)" if doc["total"] > doc["shown"] else ""
    )
    lines = [f"zone {doc['zone']}  serial {doc['serial']}  {shown}"]
    names = {p["key"]: (p["name"] or p["short"]) for p in peers}
    rows = [("NAME", "KEY", "NAT", "LAST SEEN", "CANDIDATES")]
    rows += [(names[p["key"]], p["short"], p["nat"], _age(p["age"]), " ".join(p["candidates"]))
             for p in peers]  # fmt: skip
    lines += _table(rows)
    paths = {(r["from"], r["to"]): r for r in doc["paths"]}
    if not paths:
        lines.append("no path reports yet (daemons send them as they run)")
        return "\n".join(lines)
    keys = [p["key"] for p in peers]
    matrix = [("FROM \\ TO", *(names[k] for k in keys))]
    for a in keys:
        cells = []
        for b in keys:
            r = paths.get((a, b))
            cells.append("." if a == b else ("-" if r is None else SHORT.get(r["path"], "?")))
        matrix.append((names[a], *cells))
    lines += ["", *_table(matrix)]
    why = [f"  {names[r['from']]} -> {names[r['to']]}: {r['path']}, {r['reason']} "
           f"(handshake {_age(r['handshake_age'])})"
           for r in doc["paths"] if r["path"] != "direct" or r["reason"]]  # fmt: skip
    if why:
        lines += ["not direct:", *why]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    doc = read_snapshot(args.status_socket)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(doc))
    return 0
