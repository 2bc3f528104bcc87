"""The pytest plugin of mqtt-fleet, loaded through the `pytest11` entry point (`-p no:mqtt-fleet`
turns it off).

Its fixtures (`fleet.testing.fixtures`) are async and need pytest-asyncio, which the `testing`
extra installs: `pip install 'mqtt-fleet[testing]'`. Without it they are not registered, so that
installing mqtt-fleet never breaks anyone's pytest. Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib.util

import pytest

__all__ = ["pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("pytest_asyncio") is not None:
        config.pluginmanager.import_plugin("fleet.testing.fixtures")
