"""Snapshots of the TUI's screens (pytest-textual-snapshot) on the deterministic fleet and fixed clock.

After an intended change of the screens: `.venv/bin/pytest tests/watch/test_snapshots.py --snapshot-update`,
then review the SVG files in tests/watch/__snapshots__/ before committing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.watch.data import demo_app, settle

SIZE = (120, 36)
Compare = Callable[..., bool]


def keys(*pressed: str) -> Callable[[Pilot[None]], Any]:
    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press(*pressed)
        await settle(pilot)

    return run_before


SCREENS = {
    "devices": ((), SIZE),
    "devices_sorted_by_loss_filtered": (("7", "slash", "v", "a", "n", "enter"), SIZE),
    "devices_80x24_sorted_by_will": (("9",), (80, 24)),
    "devices_200_wide": ((), (200, 30)),
    "topics": (("t", "down", "down", "enter"), SIZE),
    "events": (("l",), SIZE),
    "device_detail": (("slash", *"thermo-0002", "enter", "enter"), SIZE),
    "help": (("question_mark",), SIZE),
    "topic_detail": (("t", "down", "right", "down", "enter"), SIZE),
    "topic_detail_80x24": (("t", "down", "right", "down", "enter"), (80, 24)),
    "publish": (("t", "down", "P", *"{}"), SIZE),
}


@pytest.fixture(autouse=True)
def colors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded screens have colours: a NO_COLOR in the environment must not change them."""
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.mark.parametrize(("pressed", "size"), SCREENS.values(), ids=SCREENS.keys())
def test_screen(snap_compare: Compare, pressed: tuple[str, ...], size: tuple[int, int]) -> None:
    """The screen looks as recorded: the header, the view, and the footer with its keys."""
    assert snap_compare(demo_app(), terminal_size=size, run_before=keys(*pressed))
