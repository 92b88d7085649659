"""The error hierarchy, after h11: who is at fault decides the class.

- :class:`LocalProtocolError`: this program misused an API or was configured wrongly.
- :class:`RemoteProtocolError`: a remote party sent something we reject (garbage, a forgery,
  a replay). Network handlers catch only this family, count it and drop the packet.
- :class:`DecodeError`: the bytes do not parse (a kind of RemoteProtocolError).
- :class:`ConfigError`: a flag, file or value given by the operator is wrong; the message names it.
"""


class WgmeshError(Exception):
    """Base of every error wgmesh raises on purpose."""


class LocalProtocolError(WgmeshError):
    """We used an API wrongly (a bug or a misconfiguration on this side)."""


class RemoteProtocolError(WgmeshError):
    """A remote party sent something we reject."""


class DecodeError(RemoteProtocolError):
    """Bytes that do not parse as the format they claim to be."""


class ConfigError(WgmeshError):
    """Operator-supplied configuration is wrong; the message names the flag or file at fault."""


class WireGuardError(WgmeshError):
    """The WireGuard interface could not be read or changed."""


class InterfaceNotFound(WireGuardError):
    """The named interface does not exist, or is not a WireGuard interface."""
