"""The authorized-keys file: who may register, and what is published for them.

One peer per line, ``#`` starts a comment, fields separated by white space::

    # public key (base64)                         name     allowed IPs (comma-separated)
    xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=  alice    100.64.0.1/32,fd00::1/128
    TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=  bob

The allowed IPs published in TXT ``allowed=`` come only from this file, never from a peer.
Besides its tunnel address a peer may be given subnets (a LAN behind it; ``0.0.0.0/0`` only
when it is meant to carry the default route): mesh-mode daemons add them to its allowed IPs
(and, with ``--routes``, route them). A WireGuard allowed IP belongs to one peer of an
interface, so two peers whose networks overlap would steal each other's traffic: such a file is
refused, naming both lines. Errors name the file and line. The file is read again on SIGHUP
(a bad new file is logged and the old list kept).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from wgmesh.errors import ConfigError, DecodeError
from wgmesh.proto.keys import decode_key
from wgmesh.proto.registry import Admission, AdmittedPeer

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_LINES = 1_000_000


def parse_authorized_keys(text: str, origin: str = "authorized-keys") -> Admission:
    """Parse the file's text; raises ConfigError naming ``origin:line``."""
    peers: dict[bytes, AdmittedPeer] = {}
    lines: dict[bytes, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        if lineno > MAX_LINES:
            raise ConfigError(f"{origin}: more than {MAX_LINES} lines")
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{origin}:{lineno}"
        fields = line.split()
        if len(fields) > 3:
            raise ConfigError(
                f"{where}: expected 'KEY [NAME] [ALLOWED-IPS]', got {len(fields)} fields"
            )
        try:
            key = decode_key(fields[0])
        except DecodeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if key in peers:
            raise ConfigError(f"{where}: key {fields[0]} is listed twice")
        name = ""
        allowed: tuple[str, ...] = ()
        for value in fields[1:]:
            if "/" in value or ":" in value or value[0].isdigit():
                allowed = _allowed_ips(value, where)
            elif not name and NAME_RE.match(value):
                name = value
            else:
                raise ConfigError(f"{where}: {value!r} is neither a name nor a list of CIDRs")
        peers[key] = AdmittedPeer(key, name, allowed)
        lines[key] = lineno
    _refuse_overlaps(peers, lines, origin)
    return Admission(open=False, peers=peers)


Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _refuse_overlaps(
    peers: dict[bytes, AdmittedPeer], lines: dict[bytes, int], origin: str
) -> None:
    """ConfigError when networks of two different peers overlap: one sort and one sweep
    (networks nest or are disjoint, so each overlaps the widest one still open before it)."""
    nets: list[tuple[int, int, int, Net, bytes]] = []
    for key, peer in peers.items():
        for text in peer.allowed_ips:
            net = ipaddress.ip_network(text)
            first = int(net.network_address)
            nets.append((net.version, first, -(first + net.num_addresses - 1), net, key))
    nets.sort(key=lambda n: n[:3])
    open_: tuple[int, int, Net, bytes] | None = None  # version, last address, network, key
    for version, first, neg_last, net, key in nets:
        if open_ is not None and open_[0] == version and first <= open_[1]:
            if open_[3] != key:
                a, b = peers[open_[3]], peers[key]
                raise ConfigError(
                    f"{origin}:{lines[key]}: {net} of {b.name or 'this key'} overlaps {open_[2]} "
                    f"of {a.name or 'the key'} on line {lines[open_[3]]}: an allowed IP can "
                    "belong to one peer only (WireGuard would move it from one to the other)"
                )
            continue  # one peer's own networks may nest
        open_ = (version, -neg_last, net, key)


def _allowed_ips(value: str, where: str) -> tuple[str, ...]:
    out = []
    for part in value.split(","):
        try:
            out.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            raise ConfigError(
                f"{where}: {part!r} is not an IP network (like 100.64.0.1/32)"
            ) from None
    return tuple(out)


def load_admission(path: Path | None, open_registration: bool) -> Admission:
    """The admission policy from ``--authorized-keys FILE`` and/or ``--open``."""
    if path is None:
        if not open_registration:
            raise ConfigError(
                "say who may register: --authorized-keys FILE (one 'KEY [NAME] [ALLOWED-IPS]' "
                "per line), or --open to accept any key"
            )
        return Admission(open=True)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--authorized-keys {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--authorized-keys {path}: not UTF-8 text") from None
    admission = parse_authorized_keys(text, str(path))
    return Admission(open=open_registration, peers=admission.peers)
