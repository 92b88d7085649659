"""The example files operators copy: the systemd unit keeps its hardening and grants only what
the registrar needs (port 53, and the relay's own nftables table)."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def service(name: str) -> dict[str, str]:
    """The [Service] section's settings (the last of a repeated key wins, as in systemd)."""
    out: dict[str, str] = {}
    section = ""
    for raw in (EXAMPLES / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_the_registrar_unit_grants_only_port_53_and_the_relays_nftables_table() -> None:
    s = service("wgmesh-registrar.service")
    wanted = {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert set(s["AmbientCapabilities"].split()) == wanted
    assert set(s["CapabilityBoundingSet"].split()) == wanted
    assert set(s["RestrictAddressFamilies"].split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"
    }  # fmt: skip
    hardening = {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                 "ProtectHome": "yes", "PrivateTmp": "yes", "StateDirectory": "wgmesh"}  # fmt: skip
    assert {k: s.get(k) for k in hardening} == hardening
    assert s["ExecStart"].split()[1:3] == ["registrar", "--config"]
