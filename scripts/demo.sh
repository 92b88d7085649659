#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: a registrar and two NATed peers connect for real
# inside network namespaces on this machine, then everything is torn down. Debian 12, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
VENV=${WGMESH_VENV:-/opt/wgmesh-venv}
exec "$VENV/bin/python" -m wgmesh.lab.demo
