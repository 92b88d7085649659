"""`wgmesh netcheck` against the real `wgmesh registrar` on loopback (no NAT on the way)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.procs import WGMESH, free_port, registrar


def netcheck(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [*WGMESH, "netcheck", *args, "--json"], capture_output=True, text=True, timeout=30
    )
    assert out.stderr == "", out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, doc


def test_netcheck_against_the_real_registrar(tmp_path: Path) -> None:
    metrics = free_port()
    with registrar(tmp_path, ["--open", "--metrics", f"127.0.0.1:{metrics}"]) as r:
        started = time.monotonic()
        code, doc = netcheck("--registrar", f"127.0.0.1:{r.stun_port}")
        assert time.monotonic() - started < 5
        assert code == 0
        assert doc["schema"] == 1 and doc["reachable"] is True
        assert doc["registrar"] == f"127.0.0.1:{r.stun_port}"
        assert doc["alt_port"] == r.stun_port + 1
        assert doc["local"] == doc["mapped"] == f"127.0.0.1:{doc['port']['used']}"
        assert doc["port"]["ephemeral"] is True and doc["port"]["wireguard"] is None
        assert doc["nat"] == "none" and doc["mapping"] == "endpoint-independent"
        # the change-port answer came from the alternate port: the registrar's RFC 5780 path
        change = doc["tests"]["filtering-change-port"]
        assert change["outcome"] == "answered"
        assert change["origin"] == f"127.0.0.1:{r.stun_port + 1}"
        assert doc["filtering"] == "endpoint-independent or address-dependent"
        assert doc["hairpinning"] is True
        assert doc["tests"]["filtering-change-address"]["outcome"] == "refused"
        assert {"test": "filtering-change-address", "why": "error 420 no alternate address"} in (
            doc["not_run"]
        )
        assert doc["ipv4"]["reached"] is True and doc["ipv6"]["reached"] is None
        assert 0 < doc["rtt_ms"] < 1000
        assert doc["verdict"].startswith("no NAT: direct to every peer")
        text = subprocess.run(
            [*WGMESH, "netcheck", "--registrar", f"127.0.0.1:{r.stun_port}"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        assert "verdict      no NAT: direct to every peer" in text
        assert "not run      filtering-change-address: error 420 no alternate address" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
            exposed = resp.read().decode()
        line = next(ln for ln in exposed.splitlines()
                    if ln.startswith("wgmesh_registrar_change_requests_total "))  # fmt: skip
        assert int(line.split()[1]) >= 4  # two a run: change port, change address


def test_netcheck_with_no_alternate_port_says_what_it_could_not_test(tmp_path: Path) -> None:
    with registrar(tmp_path, ["--open", "--stun-alt-port", "0"]) as r:
        code, doc = netcheck("--registrar", f"127.0.0.1:{r.stun_port}", "--registrar-alt-port",
                             "0", "--timeout", "0.5")  # fmt: skip
        assert code == 0
        assert doc["mapping"] == "unknown" and doc["filtering"] == "unknown"
        why = {item["test"]: item["why"] for item in doc["not_run"]}
        assert why["mapping-alt-port"] == "the registrar has no alternate port"
        assert why["filtering-change-port"] == "error 420 no alternate port"
        assert doc["nat"] == "none"  # the mapping is our own address: that much is known
        assert doc["verdict"].startswith("no NAT (filtering not tested")


def test_netcheck_when_nothing_answers() -> None:
    code, doc = netcheck("--registrar", f"127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert code == 1 and doc["reachable"] is False
    assert doc["verdict"].startswith("the registrar did not answer at 127.0.0.1:")


def test_netcheck_usage_errors() -> None:
    out = subprocess.run([*WGMESH, "netcheck", "--registrar", "nonsense:x"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("wgmesh netcheck: error: --registrar: bad endpoint")
