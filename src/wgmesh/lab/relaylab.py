"""Lab helpers for the relay's kernel path (tests/test_relay_kernel.py, the update benchmark).

- :class:`RelaySockets`: UDP sockets bound on relay ports in the relay host, logging every
  datagram that reaches them (what the registrar's userspace part would see).
- :func:`send_from_port`: one datagram from a host's WireGuard port through a raw socket, the way
  the daemon sends (wgmesh.daemon.rawsend), so it gets WireGuard's own NAT mapping.
- :func:`learn_mapping`: a STUN-framed probe from the WireGuard port to a relay port, and the
  source it arrived from: the bound mapping, learnt as a bind teaches the registrar.
- :class:`KernelRelayProcess`: a :class:`wgmesh.registry.relaynft.KernelRelay` living in its
  own process inside the relay host's namespace (``python -m wgmesh.lab.relaylab serve``),
  driven over a Unix socket; killing it is a registrar crash.
- ``python -m wgmesh.lab.relaylab bench``: update times at 1, 100 and 5,000 pairs, in a lab.

Everything runs in lab namespaces; processes are the lab's (ended by PID at close).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wgmesh.lab.topology import Host, Lab
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair
from wgmesh.proto.stun import MAGIC_COOKIE

PY = sys.executable

# Binds every port given (0.0.0.0) and logs each datagram as "D <port> <ip:port> <hex>".
SOCKETS = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    sel.register(s, selectors.EVENT_READ, port)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, (ip, sport) = key.fileobj.recvfrom(4096)
        print(f"D {key.data} {ip}:{sport} {data.hex()}", flush=True)
"""

SEND = """
import sys
from wgmesh.daemon.rawsend import RawSender
from wgmesh.proto.endpoint import Endpoint
sender = RawSender(int(sys.argv[1]))
sender.send(Endpoint.parse(sys.argv[2]), bytes.fromhex(sys.argv[3]))
"""


def wait_until(what: str, check: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    """Poll ``check`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def stun_probe(transaction_id: bytes) -> bytes:
    """A STUN Binding request header (RFC 8489 section 5), as a relay bind is framed."""
    assert len(transaction_id) == 12
    return b"\x00\x01\x00\x00" + MAGIC_COOKIE.to_bytes(4, "big") + transaction_id


def wireguard_like(marker: bytes) -> bytes:
    """A datagram shaped like a WireGuard transport message (type 4, three zero bytes) whose
    receiver index is ``marker`` (4 bytes): wireguard-go drops it, an nft rule can count it."""
    assert len(marker) == 4
    return b"\x04\x00\x00\x00" + marker + bytes(24)


def send_from_port(host: Host, port: int, dst: Endpoint, payload: bytes) -> None:
    """One datagram from ``host``:``port`` (a raw socket: the port may be WireGuard's)."""
    host.run(PY, "-c", SEND, str(port), str(dst), payload.hex())


@dataclass(frozen=True, slots=True)
class Seen:
    """A datagram that reached a relay socket."""

    port: int
    source: Endpoint
    data: bytes


class RelaySockets:
    """Sockets on relay ports in the relay host, logging what reaches them."""

    def __init__(self, host: Host, ports: Sequence[int]) -> None:
        self.host = host
        self.log = host.lab.workdir / f"relay-sockets-{host.lab.next_index()}.log"
        host.spawn(PY, "-u", "-c", SOCKETS, *map(str, ports), log_path=self.log)
        wait_until("the relay sockets", lambda: "ready" in self._text(), 10)

    def _text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def seen(self) -> list[Seen]:
        out = []
        for line in self._text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "D":
                out.append(Seen(int(parts[1]), Endpoint.parse(parts[2]), bytes.fromhex(parts[3])))
        return out

    def wait_for(self, what: str, match: Callable[[Seen], bool], timeout: float = 5.0) -> Seen:
        found: list[Seen] = []

        def check() -> bool:
            found[:] = [s for s in self.seen() if match(s)]
            return bool(found)

        wait_until(what, check, timeout)
        return found[0]


def learn_mapping(
    peer: Host, wg_port: int, sockets: RelaySockets, relay: Endpoint, timeout: float = 5.0
) -> Endpoint:
    """Send a STUN-framed probe from ``peer``'s WireGuard port to the relay port and return the
    source it arrived from: the mapping the peer's NAT gives WireGuard toward that port."""
    txid = os.urandom(12)
    send_from_port(peer, wg_port, relay, stun_probe(txid))
    seen = sockets.wait_for(
        f"{peer.name}'s probe at {relay}",
        lambda s: s.port == relay.port and s.data.endswith(txid),
        timeout,
    )
    return seen.source


class PortWatch:
    """Named nft counters in ``host``'s input hook for UDP datagrams to ``port`` whose payload
    bytes 4..8 are a given marker (a STUN cookie, a :func:`wireguard_like` receiver index): how
    a test sees what reached the destination peer, whoever listens on the port."""

    TABLE = "wgmlab_watch"

    def __init__(self, host: Host, port: int, markers: dict[str, bytes]) -> None:
        self.host = host
        rules = "".join(
            f"udp dport {port} @th,96,32 0x{m.hex()} counter name {name}\n"
            for name, m in markers.items()
        )
        counters = "".join(f"counter {name} {{ }}\n" for name in markers)
        host.run("nft", "-f", "-", stdin=(
            f"table ip {self.TABLE} {{\n{counters}chain input {{\n"
            f"type filter hook input priority -10; policy accept;\n{rules}}}\n}}\n"))  # fmt: skip

    def count(self, name: str) -> int:
        out = self.host.run("nft", "-j", "list", "counter", "ip", self.TABLE, name).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no counter {name}")


# -- the adapter in its own process ---------------------------------------------------------


def pair_to_json(pair: RelayPair) -> list[list[object]]:
    return [[leg.port, str(leg.peer)] for leg in (pair.a, pair.b)]


def pair_from_json(value: Any) -> RelayPair:
    (pa, ea), (pb, eb) = value
    return RelayPair(RelayLeg(int(pa), Endpoint.parse(ea)), RelayLeg(int(pb), Endpoint.parse(eb)))


class KernelRelayProcess:
    """``python -m wgmesh.lab.relaylab serve`` in ``host``: one KernelRelay, driven over a Unix
    socket in the lab's directory. :meth:`kill` is SIGKILL (no stop(): the table stays)."""

    def __init__(self, host: Host, ports: range) -> None:
        self.host = host
        self.control = host.lab.workdir / f"relay-{host.lab.next_index()}.sock"
        self.proc = host.spawn(
            PY, "-m", "wgmesh.lab.relaylab", "serve", "--relay", str(host.address),
            "--ports", f"{ports[0]}-{ports[-1]}", "--control", str(self.control),
        )  # fmt: skip
        wait_until("the relay process", self.control.exists, 10)

    def call(self, op: str, pairs: Sequence[RelayPair] | None = None, timeout: float = 30) -> Any:
        """Run ``op`` (available, start, set, counters, stop, info) and return its result;
        ``start`` without pairs is ``KernelRelay.start()``, keeping a previous run's table."""
        request: dict[str, object] = {"op": op}
        if pairs is not None:
            request["pairs"] = [pair_to_json(p) for p in pairs]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.control))
            s.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(s.makefile().readline())
        if "error" in reply:
            raise RuntimeError(f"relay process: {op}: {reply['error']}")
        return reply["result"]

    def counters(self) -> dict[RelayPair, tuple[int, int]]:
        """Per pair, (packets from a, packets from b)."""
        return {pair_from_json(p): (a, b) for p, a, b in self.call("counters")}

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would."""
        self.proc.kill()
        self.proc.wait(5)


def _serve(relay: str, ports: range, control: Path) -> None:
    from wgmesh.registry.relaynft import KernelRelay

    kr = KernelRelay(relay, ports)

    def handle(req: dict[str, Any]) -> object:
        given = [pair_from_json(p) for p in req["pairs"]] if "pairs" in req else None
        pairs = given or []
        op = req["op"]
        if op == "available":
            return kr.available()
        if op == "start":
            kr.start(given)
            return None
        if op == "set":
            kr.set_pairs(pairs)
            return None
        if op == "counters":
            return [[pair_to_json(p), c.a.packets, c.b.packets] for p, c in kr.counters().items()]
        if op == "stop":
            kr.stop()
            return None
        if op == "info":
            return {"replacements": kr.replacements, "forwarding": str(kr.table.forwarding),
                    "enabled_ip_forward": kr.enabled_ip_forward}  # fmt: skip
        raise ValueError(f"unknown op {op!r}")

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = control.with_suffix(".tmp")
    server.bind(str(tmp))
    server.listen()
    tmp.rename(control)  # appears only once it accepts
    while True:
        conn, _ = server.accept()
        with conn:
            req = json.loads(conn.makefile().readline())
            try:
                reply: dict[str, object] = {"result": handle(req)}
            except Exception as exc:  # reported to the test, which fails with it
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")


# -- the update benchmark -------------------------------------------------------------------


def synthetic_pairs(n: int, first_port: int, salt: int = 0) -> list[RelayPair]:
    """``n`` pairs on ports ``first_port``.. with made-up TEST-NET mappings."""
    pairs = []
    for i in range(n):
        a = Endpoint.of(f"198.51.100.{1 + i % 250}", 1024 + (i * 7 + salt) % 60000)
        b = Endpoint.of(f"192.0.2.{1 + i % 250}", 1024 + (i * 13 + salt) % 60000)
        pairs.append(
            RelayPair(RelayLeg(first_port + 2 * i, a), RelayLeg(first_port + 2 * i + 1, b))
        )
    return pairs


def bench(sizes: Sequence[int], repeat: int = 5) -> list[dict[str, object]]:
    """Time the adapter's operations at each size, in a throwaway lab host."""
    rows: list[dict[str, object]] = []
    with Lab("wgmb") as lab:
        host = lab.add_public_host("relay")
        ports = f"20000-{20000 + 2 * max(sizes) + 1}"
        for n in sizes:
            out = host.run(PY, "-m", "wgmesh.lab.relaylab", "bench-here", "--relay",
                           str(host.address), "--ports", ports, "--pairs", str(n),
                           "--repeat", str(repeat), timeout=900)  # fmt: skip
            rows.append(json.loads(out.stdout))
    return rows


def _bench_here(relay: str, ports: range, n: int, repeat: int) -> dict[str, object]:
    """The timings (median of ``repeat`` runs, milliseconds), in this namespace."""
    from wgmesh.registry.relaynft import KernelRelay, render_replace

    def ms(f: Callable[[], object], setup: Callable[[], object] = lambda: None) -> float:
        times = []
        for _ in range(repeat):
            setup()
            t = time.perf_counter()
            f()
            times.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(times), 1)

    pairs = synthetic_pairs(n, ports[0])
    kr = KernelRelay(relay, ports)
    row: dict[str, object] = {"pairs": n}
    row["ruleset_bytes"] = len(render_replace(kr.table, pairs))
    row["start_ms"] = ms(lambda: kr.start(pairs), setup=kr.stop)

    def rebind_one() -> None:
        now = list(kr.pairs or ())
        p = now[0]
        moved = Endpoint.of(p.b.peer.ip, 1024 + (p.b.peer.port - 1023) % 60000)
        now[0] = RelayPair(p.a, RelayLeg(p.b.port, moved))
        kr.set_pairs(now)

    row["set_one_rebound_ms"] = ms(rebind_one)
    extra = RelayPair(
        RelayLeg(ports[-1] - 1, Endpoint.of("203.0.113.99", 40000)),
        RelayLeg(ports[-1], Endpoint.of("203.0.113.98", 40001)),
    )
    more = [*pairs, extra]
    row["set_one_added_ms"] = ms(lambda: kr.set_pairs(more), lambda: kr.set_pairs(pairs))
    row["set_one_removed_ms"] = ms(lambda: kr.set_pairs(pairs), lambda: kr.set_pairs(more))
    row["set_unchanged_ms"] = ms(lambda: kr.set_pairs(pairs))
    row["counters_ms"] = ms(kr.counters)
    row["restart_ms"] = ms(lambda: KernelRelay(relay, ports).start(pairs))

    def restart_keeping() -> None:  # what the registrar does: start(), restore, set_pairs
        again = KernelRelay(relay, ports)
        again.start()
        again.set_pairs(pairs)

    row["restart_keep_then_set_ms"] = ms(restart_keeping)
    assert kr.replacements == repeat, kr.replacements  # no update fell back to a replacement
    kr.stop()
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wgmesh.lab.relaylab")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="a KernelRelay behind a Unix socket (lab use)")
    serve.add_argument("--relay", required=True)
    serve.add_argument("--ports", required=True, help="LOW-HIGH")
    serve.add_argument("--control", required=True, type=Path)
    b = sub.add_parser("bench", help="update times of the kernel path (root; builds a lab)")
    b.add_argument("--sizes", default="1,100,5000")
    b.add_argument("--repeat", type=int, default=5)
    here = sub.add_parser("bench-here", help="(internal) the timings, in this namespace")
    here.add_argument("--relay", required=True)
    here.add_argument("--ports", required=True, help="LOW-HIGH")
    here.add_argument("--pairs", required=True, type=int)
    here.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.cmd in ("serve", "bench-here"):
        low, high = map(int, args.ports.split("-"))
        ports = range(low, high + 1)
        if args.cmd == "bench-here":
            print(json.dumps(_bench_here(args.relay, ports, args.pairs, args.repeat)))
        else:
            _serve(args.relay, ports, args.control)
        return 0
    for row in bench([int(s) for s in args.sizes.split(",")], args.repeat):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
