#!/usr/bin/env bash
# DNS conformance of the registrar's zone (issue 15): Zonemaster and DNSViz against the real
# registrar and one Knot secondary transferring the zone from it with TSIG.
#
#   sudo PYTHON=/path/to/venv/bin/python bench/dns_conformance.sh [OUTDIR]
#
# Everything runs in a network namespace of its own (wgmc-PID: loopback only, never linked to
# the root namespace), on port 53 at documentation addresses:
#   192.0.2.1  2001:db8::1   the registrar, ns1.mesh.test (in-zone, with glue)
#   192.0.2.2  2001:db8::2   a Knot secondary, ns2.example.net (transfers with TSIG, NOTIFY)
#   192.0.2.53 2001:db8::53  a Knot "root" (ns.root.test): the root zone delegating mesh.test
#                            to both, example.net, and the reverse zones of 192.0.2.0/24 and
#                            2001:db8::/32, so that nothing the tools ask for needs the Internet
# Three peers register (tests/procs.py's Client; one with a LAN candidate, one with a LAN and an
# IPv6 candidate), then:
#   zonemaster-cli, undelegated (--ns for the registrar and the secondary) and delegated (through
#     the lab's root, --hints), level WARNING and above;
#   dnsviz probe -A -E (authoritative, EDNS checks; the lab's root as the root servers), then
#     dnsviz grok -l warning and dnsviz print.
# Output in OUTDIR (default: a new /tmp/dns-conformance.XXXXXX); the summary at the end lists
# every ERROR/WARNING, each either expected in the lab (with the reason) or not. Exit status 0
# when nothing unexpected was reported. See docs/dns-conformance.md.
#
# Bounded: every step runs under `timeout`, every wait loop has a fixed number of rounds; the
# processes started here are ended by their PID and the namespace deleted on exit.
set -euo pipefail

if [[ $(id -u) != 0 ]]; then
    echo "needs root (ip netns, port 53)" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-${WGMESH_VENV:-/opt/wgmesh-venv}/bin/python}
if ! "$PYTHON" -c "import wgmesh" 2>/dev/null; then
    echo "$PYTHON cannot import wgmesh: set PYTHON to the project's virtualenv python" >&2
    exit 2
fi
missing=()
command -v zonemaster-cli >/dev/null || missing+=(zonemaster-cli)
command -v dnsviz >/dev/null || missing+=(dnsviz)
command -v knotd >/dev/null || missing+=(knot)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
if ((${#missing[@]})); then
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

OUT=${1:-$(mktemp -d /tmp/dns-conformance.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/wgmc.XXXXXX)
NETNS=wgmc-$$
ZONE=mesh.test
SECRET=$(head -c 32 /dev/urandom | base64)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$NETNS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

inns() { ip netns exec "$NETNS" "$@"; }
log() { printf '== %s\n' "$*"; }

# -- the namespace ---------------------------------------------------------------------------
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
for a in 192.0.2.1 192.0.2.2 192.0.2.53; do
    ip -n "$NETNS" addr add "$a/32" dev lo
done
for a in 2001:db8::1 2001:db8::2 2001:db8::53; do
    ip -n "$NETNS" addr add "$a/128" dev lo nodad
done

# -- the lab's root, example.net and reverse zones (Knot) ------------------------------------
mkdir -p "$WORK/root/db" "$WORK/root/zones" "$WORK/knot/db" "$WORK/knot/zones" "$WORK/state"
SOA="ns.root.test. hostmaster.root.test. 1 3600 600 1209600 300"
rev() { "$PYTHON" -c "import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1]).reverse_pointer)" "$1"; }
cat >"$WORK/root/zones/root.zone" <<EOF
.                3600 IN SOA  $SOA
.                3600 IN NS   ns.root.test.
ns.root.test.    3600 IN A    192.0.2.53
ns.root.test.    3600 IN AAAA 2001:db8::53
$ZONE.        3600 IN NS   ns1.$ZONE.
$ZONE.        3600 IN NS   ns2.example.net.
ns1.$ZONE.    3600 IN A    192.0.2.1
ns1.$ZONE.    3600 IN AAAA 2001:db8::1
EOF
cat >"$WORK/root/zones/example.net.zone" <<EOF
example.net.     3600 IN SOA  $SOA
example.net.     3600 IN NS   ns.root.test.
ns2.example.net. 3600 IN A    192.0.2.2
ns2.example.net. 3600 IN AAAA 2001:db8::2
EOF
cat >"$WORK/root/zones/rev4.zone" <<EOF
2.0.192.in-addr.arpa. 3600 IN SOA $SOA
2.0.192.in-addr.arpa. 3600 IN NS  ns.root.test.
$(rev 192.0.2.1).  3600 IN PTR ns1.$ZONE.
$(rev 192.0.2.2).  3600 IN PTR ns2.example.net.
$(rev 192.0.2.53). 3600 IN PTR ns.root.test.
EOF
cat >"$WORK/root/zones/rev6.zone" <<EOF
8.b.d.0.1.0.0.2.ip6.arpa. 3600 IN SOA $SOA
8.b.d.0.1.0.0.2.ip6.arpa. 3600 IN NS  ns.root.test.
$(rev 2001:db8::1).  3600 IN PTR ns1.$ZONE.
$(rev 2001:db8::2).  3600 IN PTR ns2.example.net.
$(rev 2001:db8::53). 3600 IN PTR ns.root.test.
EOF
cat >"$WORK/root/knot.conf" <<EOF
server:
    rundir: "$WORK/root"
    listen: [ 192.0.2.53@53, 2001:db8::53@53 ]
log:
  - target: stderr
    any: info
database:
    storage: "$WORK/root/db"
template:
  - id: default
    storage: "$WORK/root/zones"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: .
    file: root.zone
  - domain: example.net
    file: example.net.zone
  - domain: 2.0.192.in-addr.arpa
    file: rev4.zone
  - domain: 8.b.d.0.1.0.0.2.ip6.arpa
    file: rev6.zone
EOF
cat >"$WORK/root.hints" <<EOF
.             3600000 IN NS   ns.root.test.
ns.root.test. 3600000 IN A    192.0.2.53
ns.root.test. 3600000 IN AAAA 2001:db8::53
EOF

# -- the registrar and its Knot secondary ----------------------------------------------------
printf 'key "xfr.%s" { algorithm hmac-sha256; secret "%s"; };\n' "$ZONE" "$SECRET" >"$WORK/xfr.key"
"$PYTHON" -m wgmesh genkey >"$WORK/registrar.key"
chmod 600 "$WORK/registrar.key" "$WORK/xfr.key"
cat >"$WORK/knot/knot.conf" <<EOF
server:
    rundir: "$WORK/knot"
    listen: [ 192.0.2.2@53, 2001:db8::2@53 ]
log:
  - target: stderr
    any: info
database:
    storage: "$WORK/knot/db"
key:
  - id: xfr.$ZONE
    algorithm: hmac-sha256
    secret: $SECRET
remote:
  - id: registrar
    address: 192.0.2.1@53
    via: 192.0.2.2
    key: xfr.$ZONE
acl:
  - id: notify_from_registrar
    address: 192.0.2.1
    key: xfr.$ZONE
    action: notify
template:
  - id: default
    storage: "$WORK/knot/zones"
    zonefile-sync: -1
zone:
  - domain: $ZONE
    master: registrar
    acl: notify_from_registrar
EOF

serial() { # the SOA serial server $1 answers for $2 (empty if none)
    inns dig +norec +time=1 +tries=1 @"$1" "$2" SOA +short 2>/dev/null |
        awk '$3 ~ /^[0-9]+$/ { print $3; exit }' || true # (dig prints its errors on stdout)
}
wait_serial() { # until server $1 answers a serial for $2 (equal to $3 if given); 10 s at most
    local s
    for _ in $(seq 100); do
        s=$(serial "$1" "$2")
        if [[ -n $s && (-z ${3:-} || $s == "${3:-}") ]]; then
            echo "$s"
            return 0
        fi
        sleep 0.1
    done
    echo "no ${3:+serial $3 }answer from $1 for $2" >&2
    return 1
}

log "starting the lab's root (192.0.2.53), the registrar (192.0.2.1) and Knot (192.0.2.2)"
ip netns exec "$NETNS" knotd -c "$WORK/root/knot.conf" >"$OUT/knot-root.log" 2>&1 &
PIDS+=($!)
wait_serial 192.0.2.53 . >/dev/null
(cd "$REPO" && exec ip netns exec "$NETNS" "$PYTHON" -m wgmesh registrar --zone "$ZONE" \
    --private-key-file "$WORK/registrar.key" --state-dir "$WORK/state" --open \
    --listen 192.0.2.1 --listen 2001:db8::1 --listen 127.0.0.1 --dns-port 53 \
    --ns "ns1.$ZONE" --ns ns2.example.net --ns-address 192.0.2.1 --ns-address 2001:db8::1 \
    --secondary 192.0.2.2 --tsig-key "$WORK/xfr.key") >"$OUT/registrar.log" 2>&1 &
PIDS+=($!)
wait_serial 192.0.2.1 "$ZONE" >/dev/null
ip netns exec "$NETNS" knotd -c "$WORK/knot/knot.conf" >"$OUT/knot-secondary.log" 2>&1 &
PIDS+=($!)
wait_serial 192.0.2.2 "$ZONE" >/dev/null

log "registering three peers"
(cd "$REPO" && PYTHONPATH="$REPO" timeout 60 ip netns exec "$NETNS" "$PYTHON" - "$WORK/registrar.key") <<'EOF'
import sys
from pathlib import Path

from nacl.public import PrivateKey

from tests.procs import Client
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key

private = PrivateKey(decode_key(Path(sys.argv[1]).read_text().strip()))
registrar = Endpoint.parse("127.0.0.1:3478")
extra = [Endpoint.parse("198.51.100.11:51820"), Endpoint.parse("[2001:db8:1::2]:51820")]
for i in range(3):
    client = Client(bytes(private.public_key))
    client.register(registrar, name=f"peer{i}", addresses=tuple(extra[:i]))
    client.close()
EOF
sleep 1.5 # the registrar's serial interval (1 s): the three registrations under one serial
WANT=$(wait_serial 192.0.2.1 "$ZONE")
wait_serial 192.0.2.2 "$ZONE" "$WANT" >/dev/null
log "zone at serial $WANT on both; the zone as the secondary transferred it:"
inns dig +nocmd +nostats +nocomments -b 192.0.2.2 -y "hmac-sha256:xfr.$ZONE:$SECRET" \
    @192.0.2.1 "$ZONE" AXFR | grep -v TSIG | tee "$OUT/zone.txt"
# the peer with two other candidates: its SRV, TXT and A, its alternates' SRVs, their addresses
ALT=$(awk '$1 ~ /^_alt\./ { n[$1]++ } END { for (a in n) if (n[a] == 2) print a }' "$OUT/zone.txt")
PEER=${ALT#_alt.}

# -- Zonemaster ------------------------------------------------------------------------------
ZM=(zonemaster-cli --no-progress --level WARNING --show-testcase --show-module --count
    --hints "$WORK/root.hints")
log "zonemaster-cli, undelegated: ${ZM[*]} --ns ... $ZONE"
inns timeout 600 "${ZM[@]}" --ns "ns1.$ZONE/192.0.2.1" --ns "ns1.$ZONE/2001:db8::1" \
    --ns ns2.example.net/192.0.2.2 --ns ns2.example.net/2001:db8::2 "$ZONE" \
    2>&1 | tee "$OUT/zonemaster-undelegated.txt"
log "zonemaster-cli, delegated (the lab's root): ${ZM[*]} $ZONE"
inns timeout 600 "${ZM[@]}" "$ZONE" 2>&1 | tee "$OUT/zonemaster-delegated.txt"

# -- DNSViz ----------------------------------------------------------------------------------
ROOT=".:ns.root.test=192.0.2.53,ns.root.test=[2001:db8::53]"
NAMES=("$ZONE" "ns1.$ZONE" "_wireguard._udp.$ZONE" "$PEER" "$ALT" "lan1.$PEER" "lan2.$PEER")
TYPES=SOA,NS,A,AAAA,SRV,TXT,PTR,MX
log "dnsviz probe -A -E -R $TYPES -x '$ROOT' ${NAMES[*]}"
inns timeout 600 dnsviz probe -A -E -R "$TYPES" -x "$ROOT" -o "$OUT/dnsviz-probe.json" \
    "${NAMES[@]}" 2>&1 | tee "$OUT/dnsviz-probe.log"
timeout 300 dnsviz grok -l warning -r "$OUT/dnsviz-probe.json" -o "$OUT/dnsviz-grok.json"
timeout 300 dnsviz print -r "$OUT/dnsviz-probe.json" -o "$OUT/dnsviz-print.txt"
cat "$OUT/dnsviz-print.txt"

# -- summary ---------------------------------------------------------------------------------
log "summary (ERROR and WARNING; expected: the lab's documentation addresses)"
"$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
EXPECTED = {  # Zonemaster test case -> why the lab causes it
    "ADDRESS01": "the lab's name servers are at documentation addresses (RFC 5737, RFC 3849)",
}
unexpected = 0
for run in ("undelegated", "delegated"):
    for line in (out / f"zonemaster-{run}.txt").read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+(CRITICAL|ERROR|WARNING)\s+(\S+)\s+(\S+)\s+(.*)", line)
        if m:
            level, module, case, text = m.groups()
            why = EXPECTED.get(case)
            unexpected += why is None
            print(f"zonemaster {run}: {level} {case}: {text}")
            print(f"    {'expected: ' + why if why else 'UNEXPECTED'}")


def walk(node: object, path: str) -> None:
    global unexpected
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("errors", "warnings") and isinstance(value, list):
                for item in value:
                    unexpected += 1
                    text = item.get("description", item) if isinstance(item, dict) else item
                    code = item.get("code", "") if isinstance(item, dict) else ""
                    print(f"dnsviz {key[:-1].upper()} {code} at {path}: {text}\n    UNEXPECTED")
            else:
                walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(value, f"{path}[{i}]")


walk(json.loads((out / "dnsviz-grok.json").read_text() or "{}"), "")  # empty: nothing to say
print(f"unexpected: {unexpected}")
sys.exit(1 if unexpected else 0)
EOF
