"""WireGuard control: the small :class:`WireGuardControl` interface the daemon uses, with a
UAPI-socket backend (:mod:`wgmesh.wg.uapi`), a ``wg`` command backend (:mod:`wgmesh.wg.wgtool`)
and an in-memory fake for unit tests (:mod:`wgmesh.wg.fake`). The real backends block; callers
run them in a thread. See docs/architecture.md for the contract."""

from wgmesh.proto.device import DeviceState, PeerState, PeerUpdate
from wgmesh.wg.backends import open_control
from wgmesh.wg.control import WireGuardControl

__all__ = ["DeviceState", "PeerState", "PeerUpdate", "WireGuardControl", "open_control"]
