"""The sans-IO rule: nothing under wgmesh.proto imports IO or clock modules, nor the adapter
packages (the core depends on nobody; the adapters depend on it)."""

from __future__ import annotations

import ast
from pathlib import Path

import wgmesh.proto

BANNED = {
    "asyncio",
    "socket",
    "selectors",
    "subprocess",
    "time",
    "threading",
    "zeroconf",
    "sqlite3",
    "signal",
    "urllib",
    "http",
    "ssl",
    "dns.asyncquery",
    "dns.query",
    "dns.resolver",
    "dns.asyncresolver",
    "os",
    "random",
    "secrets",
    "datetime",
    "wgmesh.wg",
    "wgmesh.daemon",
    "wgmesh.registry",
    "wgmesh.cli",
    "wgmesh.lab",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_proto_has_no_io_imports() -> None:
    root = Path(wgmesh.proto.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) >= 2
    offenders = []
    for path in files:
        for name in _imports(path):
            if any(name == b or name.startswith(b + ".") for b in BANNED):
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_the_check_sees_adapter_imports(tmp_path: Path) -> None:
    """The rule is enforced, not described: an import of an adapter package is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from wgmesh.wg.control import DeviceState\nimport wgmesh.daemon.service\n")
    names = _imports(bad)
    assert {n for n in names if any(n == b or n.startswith(b + ".") for b in BANNED)} >= {
        "wgmesh.wg.control",
        "wgmesh.daemon.service",
    }
