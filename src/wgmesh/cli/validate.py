"""Checks of the registrar's and the daemon's options, from flags and from ``--config FILE``.

Every option has a :data:`Check`: a function ``check(value, where)`` that returns the value
(numbers as ``int`` or ``float``, lists as lists) or raises :class:`ConfigError` with one line::

    WHERE: WHAT IS WRONG; expected WHAT IS ACCEPTED

``WHERE`` is the flag (``--dns-port``) or the file and key (``config registrar.toml: dns_port``,
``config registrar.toml: ns[1]`` for an item of a list). Types are named as TOML names them,
since that is where a wrong type can come from (flags arrive as strings or argparse's numbers).

The checks are static (they look only at the value); reading key files and the like happens
when the settings are built, for the values that take effect.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from wgmesh.errors import ConfigError, DecodeError

Check = Callable[[Any, str], Any]

MAX_TTL = 86_400
"""Largest TTL accepted (a day; the records change within seconds, so more is a mistake)."""
MAX_SECONDS = 86_400.0
"""Largest expiry accepted, in seconds."""
MAX_PROBE_INTERVAL = 3_600.0
"""Largest probe interval: NATs forget idle UDP mappings within minutes."""
PEER_NAME_OVERHEAD = len(f"{'x' * 9}.{'a' * 56}._wireguard._udp.")
"""What the longest name published under the zone adds to it: a candidate's target label
(``ipv68``; 9 characters leave room), the key's 56-character label and the service labels."""
MAX_ZONE = 253 - PEER_NAME_OVERHEAD
"""Longest zone whose peer names still fit in 253 characters."""
IFNAMSIZ = 16
SUN_PATH = 108
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
DNS_NAME = "a DNS name: letters, digits, '-' and '_', labels of 1..63 characters, 253 in all"


def fail(where: str, problem: str, expected: str) -> NoReturn:
    raise ConfigError(f"{where}: {problem}; expected {expected}")


def shown(value: Any) -> str:
    """A value as a message shows it: repr (control characters escaped), cut to 60."""
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def describe(value: Any) -> str:
    """What a value is, in TOML's words: 'the string "x"', 'the integer 5', 'a table'."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {shown(value)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # TOML dates and times


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def integer(lo: int, hi: int, what: str = "", zero: str = "") -> Check:
    """An integer lo..hi; ``zero``: what 0 means when lo is 0 (said in the message)."""
    expected = f"{what} {lo}..{hi}" if what else f"an integer {lo}..{hi}"
    if zero:
        expected = f"{what} 1..{hi}, or 0 {zero}"

    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(where, f"got {describe(value)}", expected)
        if not lo <= value <= hi:
            fail(where, f"{value} is out of range", expected)
        return value

    return check


def port(zero: str = "") -> Check:
    return integer(0 if zero else 1, 65535, "a port", zero)


def positive(hi: float, what: str = "seconds") -> Check:
    """A number (integer or float) > 0 and <= hi."""
    expected = f"a number of {what} > 0 and <= {hi:g}"

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(where, f"got {describe(value)}", expected)
        number = float(value)
        if not math.isfinite(number):
            fail(where, f"{value} is not a finite number", expected)
        if not 0 < number <= hi:
            fail(where, f"{value:g} is out of range", expected)
        return number

    return check


def number(lo: float, hi: float, what: str) -> Check:
    """A number (integer or float) lo..hi, both included."""
    expected = f"{what} {lo:g}..{hi:g}"

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(where, f"got {describe(value)}", expected)
        n = float(value)
        if not math.isfinite(n) or not lo <= n <= hi:
            fail(where, f"{value:g} is out of range", expected)
        return n

    return check


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        fail(where, f"got {describe(value)}", "true or false")
    return value


def string(value: Any, where: str, expected: str) -> str:
    if not isinstance(value, str):
        fail(where, f"got {describe(value)}", expected)
    return value


def choice(*options: str) -> Check:
    expected = "one of " + ", ".join(options)

    def check(value: Any, where: str) -> str:
        text = string(value, where, expected)
        if text not in options:
            fail(where, f"{shown(text)} is not a choice", expected)
        return text

    return check


def name_problem(text: str) -> str | None:
    """Why ``text`` is not a DNS name we accept (a trailing dot is allowed), or None."""
    name = text[:-1] if text.endswith(".") else text
    if not name:
        return "is empty" if not text else "is the root"
    if not name.isascii():
        return "has non-ASCII characters (write a name in its xn-- form)"
    if len(name) > 253:
        return f"is {len(name)} characters long"
    for label in name.split("."):
        if not label:
            return "has an empty label"
        if len(label) > 63:
            return f"has a label of {len(label)} characters"
        bad = next((c for c in label if c not in LABEL_CHARS), None)
        if bad is not None:
            return f"has the character {bad!r}"
        if label[0] == "-" or label[-1] == "-":
            return f"has the label {label!r}, which starts or ends with '-'"
    return None


def dns_name(value: Any, where: str) -> str:
    text = string(value, where, DNS_NAME)
    problem = name_problem(text)
    if problem is not None:
        fail(where, f"{shown(text)} {problem}", DNS_NAME)
    return text


def zone_name(value: Any, where: str) -> str:
    text = dns_name(value, where)
    if len(text.rstrip(".")) > MAX_ZONE:
        fail(
            where,
            f"{shown(text)} is {len(text.rstrip('.'))} characters long, too long for the peer "
            f"names under it",
            f"a zone of at most {MAX_ZONE} characters",
        )
    return text


def hostmaster(value: Any, where: str) -> str:
    text = string(value, where, DNS_NAME)
    if "@" in text:
        user, _, domain = text.partition("@")
        example = "" if "." in user else f" ({user}.{domain})"
        fail(where, f"{shown(text)} is a mail address", f"a DNS name, the @ as a dot{example}")
    return dns_name(text, where)


IP_EXPECTED = "an IP address such as 203.0.113.10 or 2001:db8::1"


NS_EXPECTED = "a DNS name, or NAME=ADDRESS[,ADDRESS] for a name inside the zone with its glue"


def ns_entry(value: Any, where: str) -> str:
    """``NAME`` or ``NAME=ADDRESS[,ADDRESS...]`` (the glue of an NS name inside the zone)."""
    text = string(value, where, NS_EXPECTED)
    name, eq, addresses = text.partition("=")
    problem = name_problem(name)
    if problem is not None:
        fail(where, f"{shown(name)} {problem}", NS_EXPECTED)
    if eq:
        parts = addresses.split(",")
        if not addresses or len(parts) > 8:
            fail(where, f"{shown(text)} gives {len(parts) if addresses else 0} addresses",
                 "1 to 8 addresses after NAME=")  # fmt: skip
        for part in parts:
            try:
                ipaddress.ip_address(part)
            except ValueError:
                fail(where, f"{shown(part)} in {shown(text)} is not an IP address", NS_EXPECTED)
    return text


def ip_address(value: Any, where: str) -> str:
    text = string(value, where, IP_EXPECTED)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        fail(where, f"{shown(text)} is not an IP address", IP_EXPECTED)
    return text


def endpoint(default_port: int, ipv4_only: bool = False) -> Check:
    """``IP[:PORT]`` (``[IPv6]:PORT`` for IPv6), port 1..65535, default ``default_port``."""
    from wgmesh.proto.endpoint import Endpoint

    expected = (
        f"an IPv4 address, with :PORT (1..65535) if not {default_port}"
        if ipv4_only
        else f"an IP address, with :PORT (1..65535) if not {default_port} ([IPv6]:PORT)"
    )

    def check(value: Any, where: str) -> str:
        text = string(value, where, expected)
        try:
            ep = Endpoint.parse(text, default_port=default_port)
        except DecodeError as exc:
            fail(where, str(exc), expected)
        if not 1 <= ep.port <= 65535:
            fail(where, f"port {ep.port} is out of range", expected)
        if ipv4_only and ep.family != 4:
            fail(where, f"{shown(text)} is IPv6 (only IPv4 registrars are supported)", expected)
        return text

    return check


LISTEN_EXPECTED = "an address and port to listen on, IP:PORT or [IPv6]:PORT (127.0.0.1:9108)"


def listen_endpoint(value: Any, where: str) -> str:
    """``IP:PORT`` or ``[IPv6]:PORT``, the port given (1..65535)."""
    from wgmesh.proto.endpoint import Endpoint

    text = string(value, where, LISTEN_EXPECTED)
    try:
        ep = Endpoint.parse(text)
    except DecodeError as exc:
        fail(where, str(exc), LISTEN_EXPECTED)
    if ep.port == 0:
        fail(where, "port 0 is out of range", LISTEN_EXPECTED)
    return text


def seconds_or_off(lo: float, hi: float) -> Check:
    """A number of seconds lo..hi, or 0: off."""
    expected = f"a number of seconds {lo:g}..{hi:g}, or 0 to turn it off"

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(where, f"got {describe(value)}", expected)
        n = float(value)
        if not math.isfinite(n) or not (n == 0 or lo <= n <= hi):
            fail(where, f"{value:g} is out of range", expected)
        return n

    return check


def port_range(value: Any, where: str) -> tuple[int, int]:
    """A UDP port range ``LOW-HIGH`` (1024..65535, at least two ports)."""
    expected = "a port range LOW-HIGH of at least two ports within 1024-65535, e.g. 40000-40999"
    if isinstance(value, tuple) and len(value) == 2:  # checked already (checks are idempotent)
        value = f"{value[0]}-{value[1]}"
    if not isinstance(value, str):
        fail(where, f"got {describe(value)}", expected)
    low, sep, high = value.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        fail(where, f"{shown(value)} is not LOW-HIGH", expected)
    lo, hi = int(low), int(high)
    if not 1024 <= lo < hi <= 65535:
        fail(where, f"{value} is out of range", expected)
    return lo, hi


KEY_EXPECTED = "a WireGuard public key: 44 characters of base64 (wgmesh pubkey < registrar.key)"


def public_key(value: Any, where: str) -> str:
    from wgmesh.proto.keys import decode_key

    text = string(value, where, KEY_EXPECTED)
    try:
        decode_key(text)
    except DecodeError as exc:
        fail(where, f"{shown(text)} is not a key ({exc})", KEY_EXPECTED)
    return text


def path(value: Any, where: str) -> str:
    expected = "a file name"
    text = string(value, where, expected)
    if not text or "\0" in text:
        fail(where, f"{shown(text)} is not a usable file name", expected)
    return text


def socket_path(value: Any, where: str) -> str:
    text = path(value, where)
    if len(os.fsencode(text)) >= SUN_PATH:
        fail(
            where,
            f"{shown(text)} is {len(os.fsencode(text))} bytes long",
            f"a unix socket path of at most {SUN_PATH - 1} bytes",
        )
    return text


IFNAME = f"an interface name: 1..{IFNAMSIZ - 1} bytes, no '/', ':' or spaces"


def interface(value: Any, where: str) -> str:
    text = string(value, where, IFNAME)
    # the rule of Linux's dev_valid_name()
    raw = text.encode()
    if (
        not raw
        or len(raw) >= IFNAMSIZ
        or text in (".", "..")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in text)
    ):
        fail(where, f"{shown(text)} is not a valid interface name", IFNAME)
    return text


def peer_name(value: Any, where: str) -> str:
    """The rule the sealed Register codec enforces."""
    from wgmesh.proto.sealed import MAX_NAME

    expected = f"printable text of at most {MAX_NAME} bytes (UTF-8)"
    text = string(value, where, expected)
    if not text.isprintable() or len(text.encode()) > MAX_NAME:
        fail(where, f"{shown(text)} is not allowed", expected)
    return text


def list_of(item: Check, what: str) -> Check:
    """A list (TOML array; a repeated flag) whose items each pass ``item``."""

    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, str):
                key = where.rsplit(": ", 1)[-1]
                hint = f" (write {key} = [{value!r}])" if not where.startswith("--") else ""
            fail(where, f"got {describe(value)}{hint}", f"a list of {what}")
        from_file = not where.startswith("--")
        return [item(v, f"{where}[{i}]" if from_file else where) for i, v in enumerate(value)]

    return check


def suggest(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close known key, in the spelling (dashes or underscores)
    of the key given; else the list of known keys."""
    import difflib

    names = sorted(known)
    dashed = "-" in key
    spelled = {(n.replace("_", "-") if dashed else n): n for n in names}
    close = difflib.get_close_matches(key, list(spelled), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "accepted keys: " + ", ".join(spelled)
