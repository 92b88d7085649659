"""Zonemaster and DNSViz against the registrar and a Knot secondary, offline: runs
bench/dns_conformance.sh (its own namespace, a stand-in root; docs/dns-conformance.md), which
exits 1 on any ERROR or WARNING the offline lab does not explain."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "dns_conformance.sh"


def test_zonemaster_and_dnsviz_find_nothing_the_lab_does_not_explain() -> None:
    for tool in ("zonemaster-cli", "dnsviz", "knotd"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (scripts/setup.sh installs it)")
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=540,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert out.stdout.rstrip().endswith("unexpected: 0"), out.stdout[-3000:]
