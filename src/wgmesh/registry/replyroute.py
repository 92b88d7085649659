"""Where the registrar's own sends leave from: the socket and local address each peer last
reached it on (:class:`ReplyRoutes`), and sending from a chosen local address."""

from __future__ import annotations

from collections import OrderedDict

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.peerrow import pack_endpoint
from wgmesh.registry.udpbatch import BatchedUdp, UdpEndpoint


class ReplyRoutes:
    """For each peer address, the STUN socket and local address its last answered datagram came
    in on: what the registrar sends there by itself (Pushes to a watcher's control socket,
    Repunches, relay grants) leaves by the same socket from the same address, the only way
    through the peer's NAT (which maps and filters by our address and port too).

    A least-recently-noted table of at most ``cap`` entries (the registrar sizes it from the
    registry's peer cap); a full table forgets its oldest entry (``evicted`` counts them), whose
    address then gets the primary socket of its family until it talks to us again (a daemon's
    next Watch or registration, seconds away).

    It holds an entry per watcher, so each is kept small: the peer's address packed (7 bytes
    for IPv4) rather than its ``Endpoint`` and address objects, and one shared tuple per
    (socket, local address) pair, of which a registrar has a handful (at most
    :data:`MAX_SHARED` are shared; any more are kept per entry). About 145 B an entry, against
    320-360 with the objects the datagram came with.
    """

    MAX_SHARED = 1024

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"ReplyRoutes cap {cap}: expected at least 1")
        self.cap = cap
        self.evicted = 0
        self._table: OrderedDict[bytes, tuple[UdpEndpoint, bytes]] = OrderedDict()
        self._shared: dict[tuple[UdpEndpoint, bytes], tuple[UdpEndpoint, bytes]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def note(self, peer: Endpoint, endpoint: UdpEndpoint, local: bytes) -> None:
        """``peer``'s datagram came in on ``endpoint``, sent to the packed address ``local``."""
        table = self._table
        key = pack_endpoint(peer)
        route = (endpoint, local)
        shared = self._shared.get(route)
        if shared is None:
            shared = route
            if len(self._shared) < self.MAX_SHARED:
                self._shared[route] = route
        table[key] = shared
        table.move_to_end(key)
        if len(table) > self.cap:
            table.popitem(last=False)
            self.evicted += 1

    def route(self, peer: Endpoint) -> tuple[UdpEndpoint, bytes] | None:
        """The socket and local address ``peer`` last came in on, if it is still known."""
        return self._table.get(pack_endpoint(peer))


def send_from(endpoint: UdpEndpoint, data: bytes, addr: tuple[str, int], local: bytes) -> None:
    """Send ``data`` to ``addr`` by ``endpoint``, from the packed address ``local`` where the
    endpoint can set the source (a batched wildcard socket), else from its own address."""
    if isinstance(endpoint, BatchedUdp):
        endpoint.sendto(data, addr, local)
    else:
        endpoint.sendto(data, addr)


def _local_of(endpoint: UdpEndpoint | None) -> bytes:
    """The local address of the datagram ``endpoint``'s handler is handling (b"": unknown)."""
    return endpoint.current_local() if isinstance(endpoint, BatchedUdp) else b""
