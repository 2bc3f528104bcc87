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
    "credentials",
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
    "fleet.metrics",
    "fleet.html_report",
}
# The pure parts of `fleet stress`: values and arithmetic, like the core.
STRESS_PURE = {"accounting", "mqtt5", "scenario"}


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
            # fleet/mqtt, the protocol package, is core too (the test below holds it to that).
            core = module.removeprefix("fleet.") in CORE or module.startswith("fleet.mqtt")
            assert core, f"fleet/{name}.py imports {module}"


@pytest.mark.parametrize("path", _modules("fleet/mqtt"), ids=lambda p: p.name)
def test_the_mqtt_package_is_core_it_imports_only_the_standard_library_and_the_core(path: Path) -> None:
    """fleet/mqtt (the MQTT 5 codec) is part of the core: no I/O library, nothing outside the core."""
    for module in _imports(path):
        if module.startswith("fleet."):
            name = module.removeprefix("fleet.")
            assert name in CORE or name.split(".")[0] == "mqtt", f"fleet/mqtt/{path.name} imports {module}"
        else:
            assert module.split(".")[0] in sys.stdlib_module_names, f"fleet/mqtt/{path.name} imports {module}"


@pytest.mark.parametrize("path", _modules("broker"), ids=lambda p: p.name)
def test_the_broker_imports_neither_bridges_nor_the_simulator(path: Path) -> None:
    """broker/ never imports bridges/ or the simulator, and no longer needs amqtt."""
    for module in _imports(path):
        assert not module.startswith(("bridges", "amqtt", "fleet.stress")), f"{path.name} imports {module}"
        assert module not in SIMULATOR, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", _modules("bridges"), ids=lambda p: p.name)
def test_the_bridges_import_neither_the_broker_nor_the_simulator(path: Path) -> None:
    """bridges/ are ordinary MQTT clients: they never import broker/ or the simulator."""
    for module in _imports(path):
        assert not module.startswith(("broker", "fleet.stress")), f"{path.name} imports {module}"
        assert module not in SIMULATOR, f"{path.name} imports {module}"


def _top_level_imports(path: Path) -> set[str]:
    """What a module imports when it is loaded: imports in functions and under TYPE_CHECKING excluded."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


TEST_TOOLS = [*_modules("fleet/testing"), ROOT / "fleet" / "tail.py"]
LAZY = ("broker", "bridges", "aiomqtt", "grpc", "httpx", "httpx_sse", "websockets", "google", *SIMULATOR)


@pytest.mark.parametrize("path", TEST_TOOLS, ids=lambda p: p.name)
def test_the_test_tools_wire_broker_bridges_and_simulator_only_inside_functions(path: Path) -> None:
    """The pytest plugin and `fleet tail` wire broker, bridges and simulator as fleet/cli.py does: lazily,
    so that the plugin, which every pytest run of a project with mqtt-fleet loads, stays cheap."""
    for module in _top_level_imports(path):
        assert not module.startswith(LAZY), f"{path.name} imports {module} when it is loaded"


@pytest.mark.parametrize("name", sorted(STRESS_PURE))
def test_the_stress_account_and_scenarios_are_pure(name: str) -> None:
    """fleet/stress's accounting and scenarios import only the standard library, pydantic and the core."""
    allowed_roots = set(sys.stdlib_module_names) | {"pydantic", "pydantic_core"}
    for module in _imports(ROOT / "fleet" / "stress" / f"{name}.py"):
        if module.startswith("fleet.stress."):  # one pure part may use another
            assert module.removeprefix("fleet.stress.") in STRESS_PURE, (
                f"fleet/stress/{name}.py imports {module}"
            )
        elif module.startswith("fleet."):
            assert module.removeprefix("fleet.") in CORE, f"fleet/stress/{name}.py imports {module}"
        else:
            assert module.split(".")[0] in allowed_roots, f"fleet/stress/{name}.py imports {module}"


@pytest.mark.parametrize(
    "path",
    [*_modules("fleet/stress"), *_modules("fleet/watch"), ROOT / "fleet" / "command.py"],
    ids=lambda p: p.name,
)
def test_stress_and_the_tui_reach_the_broker_only_over_mqtt(path: Path) -> None:
    """fleet/stress, fleet/watch and `fleet cmd` never import broker/ or bridges/: they are clients of
    any broker."""
    for module in _imports(path):
        assert not module.startswith(("broker", "bridges")), f"{path.name} imports {module}"
