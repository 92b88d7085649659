#!/usr/bin/env bash
# Install what wgmesh and its tests need on Debian 12, as root: Debian packages, then a
# virtualenv at $WGMESH_VENV (default /opt/wgmesh-venv) with wgmesh in it.
#   bash scripts/setup.sh          everything the test suite uses (the servers it runs against:
#                                  coturn, avahi, chromium, knot, nsd, bind9, zonemaster, dnsviz)
#   bash scripts/setup.sh --demo   only what the demo needs (the lab and wgmesh)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WGMESH_VENV:-/opt/wgmesh-venv}
DEMO_PACKAGES=(python3 python3-venv python3-dev gcc iproute2 wireguard-go wireguard-tools nftables
  conntrack iputils-ping dnsutils procps)
TEST_PACKAGES=(coturn stun-client avahi-utils avahi-daemon dbus-daemon chromium knot knot-dnsutils
  nsd bind9 zonemaster-cli dnsviz)
case "${1:-}" in
  --demo) APT_PACKAGES=("${DEMO_PACKAGES[@]}") ;;
  "") APT_PACKAGES=("${DEMO_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *) echo "usage: bash scripts/setup.sh [--demo]" >&2; exit 2 ;;
esac
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # The servers among them (knot, nsd, bind9, coturn, avahi) are started by the tests and
  # benchmarks themselves, in their own namespaces: keep the packages from starting them as
  # system services on port 53 and friends (policy-rc.d, exit 101: "action forbidden").
  policy=/usr/sbin/policy-rc.d
  ours=no
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && ours=yes
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || status=$?
  if [ "$ours" = yes ]; then rm -f "$policy"; fi
  [ "$status" -eq 0 ] || exit "$status"
fi
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[test,fast]"
echo "setup: done ($("$VENV/bin/wgmesh" --version))"
