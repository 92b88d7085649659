"""Shared fixtures.

The network-namespace tests (marker ``netns``) need root, ``ip netns``, nftables, /dev/net/tun and
wireguard-go. Under CI (CI=true) a missing piece fails the run loudly; only on a developer's
machine do these tests skip, and the skip reason says what is missing.
"""

from __future__ import annotations

import os

import pytest

from wgmesh.lab.preflight import lab_missing


@pytest.fixture(scope="session")
def lab_ready() -> None:
    """Gate for tests that build network namespaces."""
    reason = lab_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the network tests, but the lab is unavailable: {reason}")
    pytest.skip(f"lab unavailable on this machine: {reason}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test marked ``netns`` depends on the lab gate."""
    for item in items:
        if item.get_closest_marker("netns") is not None and isinstance(item, pytest.Function):
            item.fixturenames.insert(0, "lab_ready")
