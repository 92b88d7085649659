"""Choosing a WireGuard control backend for an interface (``--backend``)."""

from __future__ import annotations

from wgmesh.errors import ConfigError
from wgmesh.wg.control import BACKENDS, UAPI_DIR, WireGuardControl
from wgmesh.wg.uapi import Uapi
from wgmesh.wg.wgtool import WgCli


def open_control(interface: str, backend: str = "auto") -> WireGuardControl:
    """``uapi`` (the socket wireguard-go and boringtun serve), ``wg`` (the wg command: kernel or
    any userspace), or ``auto``: the UAPI socket if there is one, else the wg command.

    Raises ConfigError for an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown WireGuard backend {backend!r} (auto, uapi, wg)")
    if backend == "uapi" or (backend == "auto" and (UAPI_DIR / f"{interface}.sock").exists()):
        return Uapi(interface)
    return WgCli(interface)
