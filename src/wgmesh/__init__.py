"""wgmesh: WireGuard peers behind NAT find each other and connect directly.

Layout (see docs/architecture.md):

- ``wgmesh.proto``    sans-IO protocol core: codecs, state machines, zone answers. No IO, no clock.
- ``wgmesh.registry`` the registrar's asyncio adapters (STUN/control UDP, DNS UDP/TCP, SQLite).
- ``wgmesh.daemon``   the daemon's asyncio adapters (raw probe socket, control socket, resolver).
- ``wgmesh.wg``       the one small WireGuard-control interface and its backends.
- ``wgmesh.lab``      network-namespace NAT lab shared by tests, benchmarks and the demo.
- ``wgmesh.cli``      the ``wgmesh`` command.
"""

__version__ = "0.1.0"
