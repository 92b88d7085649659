"""TSIG keys (RFC 8945) from BIND's key-file format, as ``tsig-keygen`` writes it, sans-IO::

    key "xfr.mesh.example.com" {
            algorithm hmac-sha256;
            secret "2lQ7w...=";
    };

One ``key`` statement per file; comments (``#``, ``//``, ``/* */``) and any layout of white
space are allowed, the key name may be quoted or not, and the algorithm is one of the HMAC-SHA
family (RFC 8945 section 6: HMAC-SHA256 is the one to use; HMAC-MD5 and GSS-TSIG are refused).
Errors are :class:`~wgmesh.errors.ConfigError` with one line saying what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.tsig

from wgmesh.errors import ConfigError

ALGORITHMS = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
"""Accepted algorithms by their key-file names."""
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*|#[^\n]*", re.S)
_KEY = re.compile(r'\s*key\s+(?:"([^"]*)"|([^\s{;"]+))\s*\{(.*?)\}\s*;\s*', re.S | re.IGNORECASE)
_FIELD = re.compile(r'\s*(\w+)\s+(?:"([^"]*)"|([^\s;"]+))\s*;', re.S)


@dataclass(frozen=True, slots=True)
class TsigKey:
    """One shared TSIG key."""

    name: str
    """The key's name, absolute and lowercase (``xfr.mesh.example.com.``)."""
    algorithm: str
    """Its algorithm by the key-file name (``hmac-sha256``)."""
    secret: bytes
    """The shared secret."""

    def dns_key(self) -> dns.tsig.Key:
        """The key as dnspython signs and verifies with."""
        return dns.tsig.Key(self.name, self.secret, ALGORITHMS[self.algorithm])


def parse_key_file(text: str) -> TsigKey:
    """The one key of a BIND key file; ConfigError saying what is wrong otherwise."""
    body = _COMMENTS.sub(" ", text)
    if not body.strip():
        raise ConfigError("no key statement")
    if len(re.findall(r"(?:^|;)\s*key\s", body, re.IGNORECASE)) > 1:
        raise ConfigError("more than one key statement (give one key per file)")
    m = _KEY.fullmatch(body)
    if m is None:
        raise ConfigError('not a key statement: key "NAME" { algorithm ...; secret "..."; };')
    name_text = m.group(1) if m.group(1) is not None else m.group(2)
    fields: dict[str, str] = {}
    rest = m.group(3)
    pos = 0
    while rest[pos:].strip():
        f = _FIELD.match(rest, pos)
        if f is None:
            raise ConfigError(f"cannot read {rest[pos:].strip()[:30]!r} in the key statement")
        word = f.group(1).lower()
        if word in fields:
            raise ConfigError(f"{word} is given twice")
        fields[word] = f.group(2) if f.group(2) is not None else f.group(3)
        pos = f.end()
    unknown = sorted(set(fields) - {"algorithm", "secret"})
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} in the key statement")
    algorithm = fields.get("algorithm", "").lower()
    if not algorithm:
        raise ConfigError("the key has no algorithm")
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"algorithm {algorithm!r} is not supported (one of {', '.join(ALGORITHMS)})"
        )
    if "secret" not in fields:
        raise ConfigError("the key has no secret")
    try:
        secret = base64.b64decode(fields["secret"], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the secret is not base64") from None
    if len(secret) < 16:
        raise ConfigError(f"the secret is {len(secret)} bytes; expected at least 16")
    try:
        name = dns.name.from_text(name_text).to_text().lower()
    except dns.exception.DNSException as exc:
        raise ConfigError(f"the key name {name_text!r} is not a DNS name ({exc})") from None
    if name == ".":
        raise ConfigError("the key has no name")
    return TsigKey(name, algorithm, secret)
