"""The import rules of ARCHITECTURE.md hold: the core does no I/O, broker and bridges stay apart."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {
    "errors",
    "topics",
    "packets",
    "routing",
    "config",
    "endpoint",
    "schema",
    "generators",
    "device",
    "report",
}
SIMULATOR = {
    "fleet.simulator",
    "fleet.transport",
    "fleet.websocket_link",
    "fleet.aiomqtt_link",
    "fleet.workers",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "proto/mqtt_fleet" not in p.as_posix())


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_modules_import_only_the_standard_library_pydantic_and_the_core(name: str) -> None:
    """fleet's core (values, topics, codec, config) imports no I/O library and nothing outside the core."""
    allowed_roots = set(sys.stdlib_module_names) | {"pydantic", "pydantic_core", "fleet"}
    for module in _imports(ROOT / "fleet" / f"{name}.py"):
        assert module.split(".")[0] in allowed_roots, f"fleet/{name}.py imports {module}"
        if module.startswith("fleet."):
            assert module.removeprefix("fleet.") in CORE, f"fleet/{name}.py imports {module}"


@pytest.mark.parametrize("path", _modules("broker"), ids=lambda p: p.name)
def test_the_broker_imports_neither_bridges_nor_the_simulator(path: Path) -> None:
    """broker/ never imports bridges/ or the simulator, and no longer needs amqtt."""
    for module in _imports(path):
        assert not module.startswith(("bridges", "amqtt")), f"{path.name} imports {module}"
        assert module not in SIMULATOR, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", _modules("bridges"), ids=lambda p: p.name)
def test_the_bridges_import_neither_the_broker_nor_the_simulator(path: Path) -> None:
    """bridges/ are ordinary MQTT clients: they never import broker/ or the simulator."""
    for module in _imports(path):
        assert not module.startswith("broker"), f"{path.name} imports {module}"
        assert module not in SIMULATOR, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", _modules("fleet/watch"), ids=lambda p: p.name)
def test_the_tui_is_an_ordinary_client_of_any_broker(path: Path) -> None:
    """fleet/watch/ never imports broker/ or bridges/: it reaches a broker only over MQTT."""
    for module in _imports(path):
        assert not module.startswith(("broker", "bridges")), f"{path.name} imports {module}"
