"""Shared keys wrapped for the registrar's database, so a restart does not cost an X25519 per peer.

A registered peer's shared key (X25519 of the registrar's private key and the peer's public key,
``crypto_box_beforenm``) is kept in its row, so that no refresh pays the key agreement. It used to
be dropped on a restart; a registrar restored with a million peers then had to agree a million
keys again, at most ``RegistryConfig.agreement_limit`` (2,000/s) of them, while the peers'
expiry (50 s) withdrew most of the rest before their turn.

So the database keeps each shared key *wrapped*: XORed with a pad that only the registrar's
private key gives, followed by a tag that says whether the unwrapped key is the one that was
stored::

    wrapped = shared XOR BLAKE2b(peer key; key=K, person "wgmesh-kw-pad")[0:32]
              || BLAKE2b(peer key || shared; key=K, person "wgmesh-kw-tag")[0:8]
    K       = BLAKE2b(registrar private key; person "wgmesh-kw-key")[0:32]

The database alone reveals nothing about the keys (the pad is a PRF output of a secret it does
not hold); with the private key, the shared keys can be computed anyway, so storing them wrapped
adds nothing to what a leak of the state directory and the key file together gives away. A key
that does not unwrap (the database was copied to a registrar with another private key, or a row
was damaged) is dropped, and the peer's next message pays its key agreement as a first contact:
never a wrong key, which would lock the peer out.
"""

from __future__ import annotations

import hashlib
import hmac

KEY_LEN = 32
TAG_LEN = 8
WRAPPED_LEN = KEY_LEN + TAG_LEN


class KeyWrap:
    """Wraps and unwraps shared keys with a secret derived from the registrar's private key."""

    def __init__(self, private_key: bytes) -> None:
        self._key = hashlib.blake2b(private_key, digest_size=32, person=b"wgmesh-kw-key").digest()

    def _pad(self, peer: bytes) -> bytes:
        return hashlib.blake2b(peer, digest_size=KEY_LEN, key=self._key,
                               person=b"wgmesh-kw-pad").digest()  # fmt: skip

    def _tag(self, peer: bytes, shared: bytes) -> bytes:
        return hashlib.blake2b(peer + shared, digest_size=TAG_LEN, key=self._key,
                               person=b"wgmesh-kw-tag").digest()  # fmt: skip

    def wrap(self, peer: bytes, shared: bytes) -> bytes:
        """``shared`` (32 bytes) as it is stored for ``peer``'s row."""
        if len(shared) != KEY_LEN:
            raise ValueError("a shared key is 32 bytes")
        pad = int.from_bytes(self._pad(peer), "little")
        masked = (int.from_bytes(shared, "little") ^ pad).to_bytes(KEY_LEN, "little")
        return masked + self._tag(peer, shared)

    def unwrap(self, peer: bytes, wrapped: bytes | None) -> bytes | None:
        """The shared key stored for ``peer``, or None when there is none or it does not
        unwrap (another private key, a damaged row)."""
        if wrapped is None or len(wrapped) != WRAPPED_LEN:
            return None
        pad = int.from_bytes(self._pad(peer), "little")
        masked = int.from_bytes(wrapped[:KEY_LEN], "little")
        shared = (masked ^ pad).to_bytes(KEY_LEN, "little")
        if not hmac.compare_digest(self._tag(peer, shared), wrapped[KEY_LEN:]):
            return None
        return shared
