"""A virtual table: it formats only the rows on screen, so 10,000 rows cost what 40 do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

__all__ = ["Column", "VirtualTable"]


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int
    right: bool = False

    def cell(self, text: str) -> str:
        text = text[: self.width]
        return text.rjust(self.width) if self.right else text.ljust(self.width)


class VirtualTable(ScrollView, can_focus=True):
    """Rows are any items; `cells(item)` formats one row and `style(item)` styles it, on demand.

    The header stays on the first line. Up, down, page up, page down, home and end move the
    cursor; enter (or a click) posts `VirtualTable.Selected` with the item under the cursor.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-1_000_000_000)", "first", show=False),
        Binding("end", "move(1_000_000_000)", "last", show=False),
        Binding("enter", "select", "open", show=False),
    ]
    DEFAULT_CSS = """
    VirtualTable { height: 1fr; }
    """

    class Selected(Message):
        def __init__(self, table: VirtualTable, item: Any) -> None:
            super().__init__()
            self.table = table
            self.item = item

        @property
        def control(self) -> VirtualTable:
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        cells: Callable[[Any], Sequence[str]],
        style: Callable[[Any], str] | None = None,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self._cells = cells
        self._style = style
        self._items: Sequence[Any] = ()
        self._styles: dict[str, Style] = {}
        self.cursor = 0
        self._width = sum(column.width + 1 for column in self.columns)
        self.virtual_size = Size(self._width, 1)

    @property
    def items(self) -> Sequence[Any]:
        return self._items

    def set_items(self, items: Sequence[Any]) -> None:
        """Show `items`; the cursor keeps its row number (clamped), and only visible rows re-render."""
        self._items = items
        self.cursor = max(0, min(self.cursor, len(items) - 1))
        self.virtual_size = Size(self._width, len(items) + 1)
        self.refresh()

    def set_title(self, index: int, title: str) -> None:
        column = self.columns[index]
        self.columns[index] = Column(title, column.width, column.right)
        self.refresh()

    def _rich(self, style: str) -> Style:
        parsed = self._styles.get(style)
        if parsed is None:
            parsed = self._styles[style] = Style.parse(style)
        return parsed

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            style = base + self._rich("bold reverse")
            return self._strip([column.title for column in self.columns], style, scroll_x, width)
        index = scroll_y + y - 1
        if index >= len(self._items):
            return Strip.blank(width, base)
        item = self._items[index]
        style = base + self._rich(self._style(item)) if self._style is not None else base
        if index == self.cursor:
            style += self._rich("reverse" if self.has_focus else "underline")
        return self._strip(self._cells(item), style, scroll_x, width)

    def _strip(self, texts: Sequence[str], style: Style, scroll_x: int, width: int) -> Strip:
        # One segment per cell, so that an exported screenshot keeps the columns aligned.
        cells = [
            Segment(column.cell(text) + " ", style) for column, text in zip(self.columns, texts, strict=True)
        ]
        return Strip(cells, self._width).crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _show_cursor(self) -> None:
        rows = max(1, self.size.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False)
        self.refresh()

    def action_move(self, delta: int) -> None:
        self.cursor = max(0, min(self.cursor + delta, len(self._items) - 1))
        self._show_cursor()

    def action_page(self, pages: int) -> None:
        self.action_move(pages * max(1, self.size.height - 1))

    def action_select(self) -> None:
        if self._items:
            self.post_message(self.Selected(self, self._items[self.cursor]))

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            index = round(self.scroll_offset.y) + event.y - 1
            if index < len(self._items):
                self.cursor = index
                self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
