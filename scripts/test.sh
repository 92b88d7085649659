#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: lint, types, unit, loopback and the
# network-namespace end-to-end tests. Run as root on Debian 12. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WGMESH_VENV:-/opt/wgmesh-venv}
echo "== ruff"; "$VENV/bin/ruff" check src tests bench; "$VENV/bin/ruff" format --check src tests bench
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/python" -m pytest "$@"
