"""The registrar's relay adapter: the core's allocations made real.

The relay's sans-IO control (wgmesh.proto.relayctl, inside the Registry) decides; this module
keeps the world in step with it whenever its ``version`` moves (:meth:`RelayService.sync`):

- a UDP socket on every allocated relay port (wgmesh.registry.relayudp), in every mode: the
  peers' RelayBinds arrive there and are fed to ``Registry.receive_relay``;
- the forwarding table: in ``userspace`` mode the sockets forward by the RouteTable; in
  ``kernel`` mode the nftables table (wgmesh.registry.relaynft) holds the pairs and the
  sockets only take binds (and count what reaches them unbound);
- the allocations in SQLite, so a restart keeps them (and, in kernel mode, the table keeps
  forwarding while the process is down: it is removed only at a clean stop).

Every ``poll`` seconds the traffic counters (per port in userspace, per leg in the kernel)
are read; a pair whose counters moved is touched, so the core's idle lifetime counts from its
last forwarded datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.registry import Outgoing, Registry
from wgmesh.proto.relayroute import RouteTable
from wgmesh.registry.relaynft import KernelRelay, KernelRelayError
from wgmesh.registry.relayudp import RelaySockets
from wgmesh.registry.store import Store

log = logging.getLogger("wgmesh.relay")


@dataclass(slots=True)
class RelayServiceStats:
    """What the adapter counts (the core and the sockets count the rest)."""

    syncs: int = 0
    sync_failures: int = 0
    bind_errors: int = 0
    """Relay ports that could not be bound (taken by something else)."""


class RelayService:
    """See the module docstring. ``mode`` is ``kernel``, ``userspace`` or ``auto``."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        address: str,
        mode: str,
        send: Callable[[list[Outgoing]], None],
        after: Callable[[], None],
        *,
        poll: float = 10.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.address = address
        self.requested = mode
        self.mode = "userspace"
        self._send = send
        self._after = after
        self.poll = poll
        self.table = RouteTable()
        self.sockets = RelaySockets(address, self.table, self._on_control, forward=True)
        self.kernel: KernelRelay | None = None
        self.stats = RelayServiceStats()
        self._seen = -1
        self._sync_task: asyncio.Task[None] | None = None
        self._again = False
        self._poll_task: asyncio.Task[None] | None = None
        self._last: dict[int, int] = {}  # port -> forwarded count at the last poll
        self._held: list[tuple[int, list[Outgoing]]] = []
        """Grants waiting for the kernel table, with the version that must be installed first
        (see _on_control)."""

    async def start(self) -> None:
        """Choose the forwarding path, restore the saved allocations and serve them."""
        ports = self.registry.relay.relay.config.ports
        if self.requested in ("kernel", "auto"):
            kernel = KernelRelay(ipaddress.IPv4Address(self.address), ports)
            why = await asyncio.to_thread(kernel.available)
            if why is None:
                await asyncio.to_thread(kernel.start)
                self.kernel, self.mode = kernel, "kernel"
            elif self.requested == "kernel":
                raise KernelRelayError(f"--relay-mode kernel: {why}")
            else:
                log.warning("relay: kernel path unavailable (%s); forwarding in userspace", why)
        self.sockets.forward = self.kernel is None
        saved = self.store.load_relay()
        self.registry.relay.relay.restore(saved)
        self.registry.relay.version += 1
        log.info(
            "relay on %s ports %d-%d, %s forwarding; %d allocations restored",
            self.address, ports.start, ports.stop - 1, self.mode, len(self.registry.relay.relay),
        )  # fmt: skip
        await self._sync()
        self._poll_task = asyncio.create_task(self._poll_loop())

    def changed(self) -> None:
        """The registry was fed something: log what the relay did, and sync if its state
        moved."""
        lines = self.registry.relay.log
        while lines:
            log.info("relay: %s", lines.popleft())
        if self.registry.relay.version == self._seen:
            return
        if self._sync_task is not None and not self._sync_task.done():
            self._again = True
            return
        self._sync_task = asyncio.get_running_loop().create_task(self._sync())

    async def _sync(self) -> None:
        while True:
            self._again = False
            ctl = self.registry.relay
            self._seen = ctl.version
            wanted = set(ctl.ports())
            for port in self.sockets.ports() - wanted:
                self.sockets.close(port)
                self._last.pop(port, None)
            for port in sorted(wanted - self.sockets.ports()):
                try:
                    await self.sockets.open(port)
                except OSError as exc:
                    self.stats.bind_errors += 1
                    log.warning("relay port %d: %s", port, exc.strerror)
            pairs = ctl.pairs()
            self.table.set_pairs(pairs)
            if self.kernel is not None:
                try:
                    await asyncio.to_thread(self.kernel.set_pairs, pairs)
                except KernelRelayError as exc:
                    self.stats.sync_failures += 1
                    log.error("relay: updating the kernel table: %s", exc)
            self.store.save_relay(list(ctl.relay))
            self.stats.syncs += 1
            ready = [out for need, out in self._held if need <= self._seen]
            self._held = [(need, out) for need, out in self._held if need > self._seen]
            for out in ready:  # the kernel forwards for these pairs now
                self._send(out)
            if not self._again and ctl.version == self._seen:
                return

    def _on_control(self, data: bytes, source: Endpoint, port: int) -> None:
        out = self.registry.receive_relay(data, source, port, time.time())
        if out and self.kernel is not None and self.registry.relay.version != self._seen:
            # a bind changed the pairs: tell the peers only once the kernel forwards for them
            # (an initiation sent on READY would otherwise reach the relay socket and be lost)
            self._held.append((self.registry.relay.version, out))
        elif out:
            self._send(out)
        self._after()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            now = time.time()
            moved: set[int] = set()
            if self.kernel is not None:
                try:
                    counters = await asyncio.to_thread(self.kernel.counters)
                except KernelRelayError as exc:
                    log.warning("relay: reading the kernel counters: %s", exc)
                    counters = {}
                for pair, c in counters.items():
                    for port, n in ((pair.a.port, c.a.packets), (pair.b.port, c.b.packets)):
                        if n != self._last.get(port):
                            self._last[port] = n
                            moved.add(port)
            else:
                for port in self.sockets.ports():
                    pc = self.sockets.counters(port)
                    if pc is not None and pc.forwarded != self._last.get(port):
                        self._last[port] = pc.forwarded
                        moved.add(port)
            for port in moved:
                self.registry.relay.touch(port, now)
            self.store.save_relay(list(self.registry.relay.relay))

    async def close(self, *, remove_kernel_table: bool = True) -> None:
        """Stop serving. The kernel table is removed (a clean stop); a crash leaves it, and
        the next start reconciles it."""
        for task in (self._poll_task, self._sync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.store.save_relay(list(self.registry.relay.relay))
        self.sockets.close_all()
        if self.kernel is not None and remove_kernel_table:
            try:
                await asyncio.to_thread(self.kernel.stop)
            except KernelRelayError as exc:
                log.error("relay: removing the kernel table: %s", exc)
