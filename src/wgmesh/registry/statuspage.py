"""The registrar's status page, served beside ``/metrics`` on the metrics listener
(``--metrics ADDR:PORT``; docs/operations.md, "Status page"): read-only, plain HTML, a small
script and a style sheet, no framework.

Routes (:func:`routes`):

- ``/`` and ``/status``: the page, rendered on the server with the current snapshot (so it
  shows the peers without JavaScript too);
- ``/status.json``: the snapshot (:func:`wgmesh.proto.meshview.snapshot`), which the script
  fetches every 2 s and redraws the page from;
- ``/status.js``, ``/status.css``.

:func:`serve_socket` serves the same snapshot on a unix socket (mode 0600: the registrar's
user only) for ``wgmesh mesh`` on the registrar's host: each connection gets one JSON
document and is closed.

Peer names (and everything else a peer reports) are attacker-influenced text: the server
escapes every value it puts into HTML (``html.escape``, quotes too), and the script only ever
sets ``textContent`` and class names it picked itself, never HTML. Every answer carries
``Content-Security-Policy`` (only this origin's own script and style; no inline script, no
frames, no forms), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wgmesh.metricshttp import Response, Route

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
)
PATHS = ("direct", "relay", "none")
"""The path words a cell may show (anything else is shown as unknown)."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s} s ago" if s < 120 else (f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago")


def _peer_rows(snap: dict[str, Any]) -> str:
    rows = []
    for p in snap["peers"]:
        cells = (
            f'<td class="name">{_e(p["name"] or "-")}</td>',
            f'<td class="key" title="{_e(p["key"])}">{_e(p["short"])}</td>',
            f'<td class="nat nat-{_e(p["nat"])}">{_e(p["nat"])}</td>',
            f'<td class="seen">{_e(_age(p["age"]))}</td>',
            f'<td class="candidates">{"<br>".join(_e(c) for c in p["candidates"]) or "-"}</td>',
            f'<td class="allowed">{_e(", ".join(p["allowed_ips"]) or "-")}</td>',
        )
        rows.append(f'<tr data-key="{_e(p["key"])}">{"".join(cells)}</tr>')
    if not rows:
        rows.append('<tr><td colspan="6" class="empty">no peers registered</td></tr>')
    return "\n".join(rows)


def _matrix(snap: dict[str, Any]) -> str:
    paths = {(p["from"], p["to"]): p for p in snap["paths"]}
    if not paths:
        return '<p id="matrix-empty">No path reports yet (daemons send them as they run).</p>'
    peers = snap["peers"]
    head = "".join(f'<th scope="col" title="{_e(p["key"])}">{_e(p["name"] or p["short"])}</th>'
                   for p in peers)  # fmt: skip
    rows = []
    for a in peers:
        cells = []
        for b in peers:
            if a["key"] == b["key"]:
                cells.append('<td class="self"></td>')
                continue
            r = paths.get((a["key"], b["key"]))
            word = r["path"] if r is not None and r["path"] in PATHS else "unknown"
            title = "" if r is None else f"{r['reason']} (handshake {_age(r['handshake_age'])})"
            text = word if r is not None else "-"
            cells.append(f'<td class="path path-{word}" title="{_e(title)}">{_e(text)}</td>')
        name = _e(a["name"] or a["short"])
        rows.append(f'<tr><th scope="row">{name}</th>{"".join(cells)}</tr>')
    return (
        '<table id="matrix"><thead><tr><th>from \\ to</th>' + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )  # fmt: skip


def render_page(snap: dict[str, Any]) -> str:
    """The whole page for ``snap``, every value escaped."""
    more = snap["total"] - snap["shown"]
    summary = f"zone {snap['zone']} · serial {snap['serial']} · {snap['total']} peers"
    if more > 0:
        summary += f" ({more} not shown)"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wgmesh registrar</title>
<link rel="stylesheet" href="/status.css">
</head>
<body>
<header>
<h1>wgmesh registrar</h1>
<p id="summary">{_e(summary)}</p>
<p id="updated">rendered by the server</p>
</header>
<section>
<h2>Peers</h2>
<table id="peers">
<thead><tr><th>Name</th><th>Key</th><th>NAT</th><th>Last seen</th><th>Candidates</th>
<th>Allowed IPs</th></tr></thead>
<tbody>
{_peer_rows(snap)}
</tbody>
</table>
</section>
<section>
<h2>Paths between peers</h2>
<div id="matrix-box">{_matrix(snap)}</div>
<p class="legend"><span class="path path-direct">direct</span>
<span class="path path-relay">relay</span> <span class="path path-none">none</span>
<span class="path path-unknown">- not reported</span> (a row is what that peer reports)</p>
</section>
<script src="/status.js"></script>
</body>
</html>
"""


SCRIPT = r"""'use strict';
// Redraws the page from /status.json every 2 s. Only textContent and our own class names are
// ever set: names and addresses come from peers and are never treated as HTML.
(function () {
  const PATHS = ['direct', 'relay', 'none'];
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function age(s) {
    if (s === null || s === undefined) return 'never';
    s = Math.floor(s);
    if (s < 120) return s + ' s ago';
    if (s < 7200) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ago';
  }
  function peers(snap) {
    const body = document.querySelector('#peers tbody');
    const rows = [];
    for (const p of snap.peers) {
      const tr = el('tr');
      tr.dataset.key = p.key;
      tr.append(el('td', p.name || '-', 'name'));
      const key = el('td', p.short, 'key');
      key.title = p.key;
      tr.append(key);
      const nat = ['none', 'cone', 'symmetric'].includes(p.nat) ? p.nat : 'unknown';
      tr.append(el('td', p.nat, 'nat nat-' + nat));
      tr.append(el('td', age(p.age), 'seen'));
      const cand = el('td', null, 'candidates');
      p.candidates.forEach(function (c, i) {
        if (i) cand.append(el('br'));
        cand.append(document.createTextNode(c));
      });
      if (!p.candidates.length) cand.textContent = '-';
      tr.append(cand);
      tr.append(el('td', p.allowed_ips.join(', ') || '-', 'allowed'));
      rows.push(tr);
    }
    if (!rows.length) {
      const tr = el('tr');
      const td = el('td', 'no peers registered', 'empty');
      td.colSpan = 6;
      tr.append(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }
  function matrix(snap) {
    const box = document.getElementById('matrix-box');
    if (!snap.paths.length) {
      box.replaceChildren(el('p', 'No path reports yet (daemons send them as they run).'));
      box.firstChild.id = 'matrix-empty';
      return;
    }
    const paths = new Map();
    for (const r of snap.paths) paths.set(r.from + ' ' + r.to, r);
    const table = el('table');
    table.id = 'matrix';
    const head = el('tr');
    head.append(el('th', 'from \\ to'));
    for (const b of snap.peers) {
      const th = el('th', b.name || b.short);
      th.scope = 'col';
      th.title = b.key;
      head.append(th);
    }
    const thead = el('thead');
    thead.append(head);
    const tbody = el('tbody');
    for (const a of snap.peers) {
      const tr = el('tr');
      const th = el('th', a.name || a.short);
      th.scope = 'row';
      tr.append(th);
      for (const b of snap.peers) {
        if (a.key === b.key) { tr.append(el('td', null, 'self')); continue; }
        const r = paths.get(a.key + ' ' + b.key);
        const word = r && PATHS.includes(r.path) ? r.path : 'unknown';
        const td = el('td', r ? word : '-', 'path path-' + word);
        if (r) td.title = r.reason + ' (handshake ' + age(r.handshake_age) + ')';
        tr.append(td);
      }
      tbody.append(tr);
    }
    table.append(thead, tbody);
    box.replaceChildren(table);
  }
  function draw(snap) {
    let summary = 'zone ' + snap.zone + ' · serial ' + snap.serial + ' · ' + snap.total;
    summary += ' peers';
    if (snap.total > snap.shown) summary += ' (' + (snap.total - snap.shown) + ' not shown)';
    document.getElementById('summary').textContent = summary;
    peers(snap);
    matrix(snap);
    document.getElementById('updated').textContent =
      'live: updated ' + new Date(snap.now * 1000).toLocaleTimeString();
  }
  function refresh() {
    fetch('/status.json', {cache: 'no-store'})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(draw)
      .catch(function (e) {
        document.getElementById('updated').textContent = 'not updated: ' + e.message;
      });
  }
  refresh();
  setInterval(refresh, 2000);
})();
"""

STYLE = """body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0; } h2 { font-size: 1.1em; margin-top: 1.5em; }
#summary, #updated { color: #555; margin: .2em 0; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; }
td.key { font-family: monospace; } td.candidates { font-family: monospace; font-size: .9em; }
td.empty { color: #777; font-style: italic; }
.nat-symmetric { color: #a33; } .nat-cone { color: #265; } .nat-none { color: #236; }
#matrix td.path { text-align: center; min-width: 4em; }
#matrix td.self { background: #eee; }
.path-direct { background: #c8efc8; } .path-relay { background: #f6e3a6; }
.path-none { background: #f3b8b8; } .path-unknown { background: #fafafa; color: #888; }
.legend span { display: inline-block; padding: 0 .5em; border: 1px solid #ccc; }
"""


def routes(collect: Callable[[], dict[str, Any]]) -> dict[str, Route]:
    """The status page's routes; ``collect()`` gives the current snapshot."""

    def page() -> Response:
        body = render_page(collect()).encode()
        return Response(200, body, "text/html; charset=utf-8", HEADERS)

    def data() -> Response:
        body = json.dumps(collect(), separators=(",", ":")).encode()
        return Response(200, body, "application/json", HEADERS)

    def script() -> Response:
        return Response(200, SCRIPT.encode(), "text/javascript; charset=utf-8", HEADERS)

    def style() -> Response:
        return Response(200, STYLE.encode(), "text/css; charset=utf-8", HEADERS)

    return {"/": page, "/status": page, "/status.json": data, "/status.js": script,
            "/status.css": style}  # fmt: skip


async def serve_socket(path: Path, collect: Callable[[], dict[str, Any]]) -> asyncio.AbstractServer:
    """Listen on the unix socket ``path`` (a stale one is replaced; mode 0600) and write
    ``collect()`` as JSON to each connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        del reader
        try:
            writer.write(json.dumps(collect()).encode() + b"\n")
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await writer.drain()
        finally:
            writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_socket(path)
    server = await asyncio.start_unix_server(handle, path=str(path))
    os.chmod(path, 0o600)
    return server


def remove_socket(path: Path) -> None:
    """Remove the socket file (gone already: fine)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
