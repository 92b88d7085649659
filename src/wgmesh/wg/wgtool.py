"""WireGuard control through the ``wg`` command (wireguard-tools): works with kernel WireGuard
and with any userspace implementation.

Reads ``wg show IFACE dump``: the first line is the interface (private key, public key, listen
port, fwmark), then one line per peer (public key, preshared key, endpoint, allowed IPs, latest
handshake, rx, tx, persistent keepalive), tab-separated. The private key (and any preshared key)
is never parsed and is dropped with the output.

Writes with ``wg set IFACE peer KEY ...``: a whole batch of updates in one call (split only if
the argument list grows large), since wg sends one request with a section per ``peer``. A kick
(``handshake_now``) is a ``peer KEY persistent-keepalive 0`` section followed by the peer's main
section ending with ``persistent-keepalive N``; the two must be separate sections because wg
keeps only the last value of an option repeated within one section (see wgmesh.wg.control).

A renewed peer (``PeerUpdate.renew``) gets a run of its own: ``peer KEY remove`` and a second
``peer KEY`` section with what the dump read just before gave (:func:`renew_arguments`: endpoint,
allowed IPs, keepalive, and its preshared key written to wg's stdin, never on the command line),
then the update's own sections.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace

from wgmesh.errors import DecodeError, InterfaceNotFound, WireGuardError
from wgmesh.proto.device import DeviceState, PeerState, PeerUpdate, keepalive_for, renewals
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import decode_key, encode_key
from wgmesh.wg.control import parse_uint

TIMEOUT = 5.0
"""Default seconds any one ``wg`` run may take."""
MAX_ARGS_CHARS = 64 * 1024
"""Characters of ``wg set`` arguments per run (far below the kernel's ARG_MAX)."""
_NOT_FOUND = ("No such device", "not supported", "No such file")
"""wg's errno texts for a missing or non-WireGuard interface (the kernel says ENODEV or
EOPNOTSUPP; without the kernel module and with no UAPI socket, EPROTONOSUPPORT)."""


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
        listen_port = parse_uint(head[2], 0xFFFF)
        del head  # holds the private key
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
                    latest_handshake=float(parse_uint(f[4])),
                    rx_bytes=parse_uint(f[5]),
                    tx_bytes=parse_uint(f[6]),
                    persistent_keepalive=0 if f[7] == "off" else parse_uint(f[7], 0xFFFF),
                )
            )
    except (ValueError, DecodeError) as exc:
        raise WireGuardError(f"wg show dump: {exc}") from None
    return DeviceState(name, public_key, listen_port, tuple(peers))


def renew_arguments(text: str, update: PeerUpdate) -> tuple[list[str], str | None]:
    """From ``wg show IFACE dump`` output, the ``wg set`` arguments that remove the peer of
    ``update`` and add it back as it is, and its preshared key for wg's stdin (None when it has
    none); WireGuardError when the dump is malformed or has no such peer. The section that adds
    it back already has the update's endpoint, and keepalive 0 when the update sets one or
    kicks: the kernel sends the keepalive a new peer's 0 -> N brings at the end of that section,
    before the update's own sections run, so it must not fire toward the old endpoint."""
    wanted = encode_key(update.public_key)
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        if len(f) != 8 or f[0] != wanted:
            continue
        args = ["peer", wanted, "remove", "peer", wanted]
        psk = None if f[1] == "(none)" else f[1]
        if psk is not None:
            args += ["preshared-key", "/dev/stdin"]
        endpoint = None if f[2] == "(none)" else f[2]
        if update.endpoint is not None:
            endpoint = str(update.endpoint)
        if endpoint is not None:
            args += ["endpoint", endpoint]
        if f[3] != "(none)":
            args += ["allowed-ips", f[3]]
        later = update.handshake_now or update.persistent_keepalive is not None
        args += ["persistent-keepalive", "0" if later or f[7] == "off" else f[7]]
        return args, psk
    raise WireGuardError(f"wg show dump: no peer {wanted} to renew")


def set_arguments(updates: Sequence[PeerUpdate], current: dict[bytes, int]) -> list[list[str]]:
    """The arguments after ``wg set IFACE`` for each run that ``updates`` need, in order;
    ``current`` maps keys to their keepalive now. A kick's two sections stay in one run."""
    runs: list[list[str]] = [[]]
    run_size = 0
    for u in updates:
        key = encode_key(u.public_key)
        args = ["peer", key]
        if u.remove:
            args.append("remove")
        else:
            if u.handshake_now:
                args += ["persistent-keepalive", "0", "peer", key]
            if u.endpoint is not None:
                args += ["endpoint", str(u.endpoint)]
            if u.allowed_ips is not None:
                args += ["allowed-ips", ",".join(u.allowed_ips)]
            if u.handshake_now or u.persistent_keepalive is not None:
                args += [
                    "persistent-keepalive",
                    str(keepalive_for(u, current.get(u.public_key, 0))),
                ]
        size = sum(map(len, args))
        if runs[-1] and run_size + size > MAX_ARGS_CHARS:
            runs.append([])
            run_size = 0
        runs[-1] += args
        run_size += size
    return [run for run in runs if run]


class WgCli:
    """WireGuardControl through the ``wg`` command."""

    def __init__(self, interface: str, wg_binary: str = "wg", timeout: float = TIMEOUT) -> None:
        self.name = interface
        self.wg = wg_binary
        self.timeout = timeout

    def _run(self, *args: str, secret: str | None = None) -> str:
        """Run ``wg ARGS`` (with ``secret`` on its stdin); its stdout, or InterfaceNotFound /
        WireGuardError."""
        verb = f"wg {args[0]}"
        try:
            r = subprocess.run(
                [self.wg, *args],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                **({"stdin": subprocess.DEVNULL} if secret is None else {"input": secret + "\n"}),
            )
        except FileNotFoundError:
            raise WireGuardError(
                f"{self.wg!r} not found: wireguard-tools is needed (or use the UAPI backend)"
            ) from None
        except subprocess.TimeoutExpired:
            raise WireGuardError(
                f"'{verb} {self.name}' took more than {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise WireGuardError(f"cannot run {self.wg!r}: {exc}") from None
        if r.returncode != 0:
            err = " ".join(r.stderr.split())[:300] or f"exit status {r.returncode}"
            if err.startswith("Unable to") and any(s in err for s in _NOT_FOUND):
                raise InterfaceNotFound(f"no WireGuard interface {self.name!r} ({verb}: {err})")
            raise WireGuardError(f"{verb} {self.name}: {err}")
        return r.stdout

    def read(self) -> DeviceState:
        return parse_dump(self.name, self._run("show", self.name, "dump"))

    def apply(self, updates: Sequence[PeerUpdate]) -> None:
        """In order: runs of plain updates, and one run per renewed peer."""
        current: dict[bytes, int] = {}
        text = ""
        if any(u.renew or (u.handshake_now and u.persistent_keepalive is None) for u in updates):
            text = self._run("show", self.name, "dump")
            peers = parse_dump(self.name, text).peers
            current = {p.public_key: p.persistent_keepalive for p in peers}
            updates = renewals(updates, peers, time.time())
        plain: list[PeerUpdate] = []
        for u in [*updates, None]:
            if u is not None and not u.renew:
                plain.append(u)
                continue
            for args in set_arguments(plain, current):
                self._run("set", self.name, *args)
            plain = []
            if u is not None:
                renew, psk = renew_arguments(text, u)
                (rest,) = set_arguments([replace(u, renew=False)], current) or [[]]
                self._run("set", self.name, *renew, *rest, secret=psk)
                del psk
        del text  # it holds the private key, and the preshared keys
