"""WireGuard control through the ``wg`` command (wireguard-tools): works with kernel WireGuard
and with any userspace implementation.

Reads ``wg show IFACE dump``: the first line is the interface (private key, public key, listen
port, fwmark), then one line per peer (public key, preshared key, endpoint, allowed IPs, latest
handshake, rx, tx, persistent keepalive), tab-separated. The private key is dropped at once.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from wgmesh.errors import DecodeError, InterfaceNotFound, WireGuardError
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key, encode_key
from wgmesh.wg.control import DeviceState, PeerState, PeerUpdate, keepalive_for

TIMEOUT = 5.0


def parse_dump(name: str, text: str) -> DeviceState:
    """Parse ``wg show IFACE dump``; WireGuardError on anything malformed."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise WireGuardError("wg show dump: empty output")
    try:
        head = lines[0].split("\t")
        if len(head) != 4:
            raise WireGuardError("wg show dump: bad interface line")
        public_key = None if head[1] == "(none)" else decode_key(head[1])
        listen_port = int(head[2])
        peers = []
        for line in lines[1:]:
            f = line.split("\t")
            if len(f) != 8:
                raise WireGuardError("wg show dump: bad peer line")
            peers.append(
                PeerState(
                    public_key=decode_key(f[0]),
                    endpoint=None if f[2] == "(none)" else Endpoint.parse(f[2]),
                    allowed_ips=() if f[3] == "(none)" else tuple(f[3].split(",")),
                    latest_handshake=float(int(f[4])),
                    rx_bytes=int(f[5]),
                    tx_bytes=int(f[6]),
                    persistent_keepalive=0 if f[7] == "off" else int(f[7]),
                )
            )
    except (ValueError, DecodeError) as exc:
        raise WireGuardError(f"wg show dump: {exc}") from None
    return DeviceState(name, public_key, listen_port, tuple(peers))


class WgCli:
    """WireGuardControl through the ``wg`` command."""

    def __init__(self, interface: str, wg_binary: str = "wg") -> None:
        self.name = interface
        self.wg = wg_binary

    def _run(self, *args: str) -> str:
        try:
            r = subprocess.run(
                [self.wg, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise WireGuardError(f"{self.wg!r} not found: wireguard-tools is needed") from None
        except subprocess.TimeoutExpired:
            raise WireGuardError(f"'{self.wg} {' '.join(args[:2])}' timed out") from None
        if r.returncode != 0:
            err = r.stderr.strip()
            if "No such device" in err or "Unable to access interface" in err:
                raise InterfaceNotFound(f"no WireGuard interface {self.name!r} ({err})")
            raise WireGuardError(f"{self.wg} {args[0]} {self.name}: {err}")
        return r.stdout

    def read(self) -> DeviceState:
        return parse_dump(self.name, self._run("show", self.name, "dump"))

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        current: dict[bytes, int] = {}
        if any(u.handshake_now for u in updates):
            current = {p.public_key: p.persistent_keepalive for p in self.read().peers}
        for u in updates:
            key = encode_key(u.public_key)
            if u.remove:
                self._run("set", self.name, "peer", key, "remove")
                continue
            args: list[str] = []
            if u.endpoint is not None:
                args += ["endpoint", str(u.endpoint)]
            if u.allowed_ips is not None:
                args += ["allowed-ips", ",".join(u.allowed_ips)]
            keepalive = keepalive_for(u, current.get(u.public_key, 0))
            if u.handshake_now:
                # one `wg set` sends only the last value of a repeated key: two calls
                self._run("set", self.name, "peer", key, "persistent-keepalive", "0")
            if u.handshake_now or u.persistent_keepalive is not None:
                args += ["persistent-keepalive", str(keepalive)]
            if args or not u.handshake_now:
                self._run("set", self.name, "peer", key, *args)
