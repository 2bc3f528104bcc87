"""Write the README's screenshot of `fleet watch`, on the deterministic test fleet.

Run it as `.venv/bin/python -m tests.watch.screenshot docs/watch.svg`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.watch.data import demo_app, settle


async def screenshot() -> str:
    """The devices view sorted by rate, as SVG."""
    app = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("6")
        await settle(pilot)
        return app.export_screenshot(title="fleet watch")


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(asyncio.run(screenshot()))
