"""Can this machine run the lab? Answers with the first missing piece, or None."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

TOOLS = ("ip", "nft", "wireguard-go", "wg", "conntrack", "ping")


def lab_missing() -> str | None:
    """Say what the lab lacks here (root, a tool, /dev/net/tun, netns), or None if it can run."""
    if os.geteuid() != 0:
        return "not running as root (network namespaces need it)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (scripts/setup.sh installs it)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (wireguard-go needs it)"
    probe = f"wgm-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None
