"""A virtual table: it formats only the rows on screen, so 10,000 rows cost what 40 do, and it
repaints only the lines that changed, so a refresh where little happened costs next to nothing.
Its columns share the width of the screen; the cursor stays on its item when the rows re-sort."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

__all__ = ["Column", "VirtualTable"]


@dataclass(frozen=True, slots=True)
class Column:
    """A column at least `width` wide; `grow` is its share of the width the screen has to spare."""

    title: str
    width: int
    right: bool = False
    grow: int = 1

    def cell(self, text: str, width: int) -> str:
        text = text[:width]
        return text.rjust(width) if self.right else text.ljust(width)


Row = tuple[tuple[str, ...], str, bool]  # the cells, the style, and whether the cursor is on it


def fit(columns: Sequence[Column], width: int) -> list[int]:
    """Each column's width: at least its own, and what `width` has to spare shared by `grow`."""
    widths = [column.width for column in columns]
    spare = width - sum(w + 1 for w in widths)
    shares = sum(column.grow for column in columns)
    if spare <= 0 or shares == 0:
        return widths
    given = [spare * column.grow // shares for column in columns]
    for index in range(spare - sum(given)):  # the remainder, one each from the first that grow
        given[[i for i, column in enumerate(columns) if column.grow][index % shares]] += 1
    return [w + g for w, g in zip(widths, given, strict=True)]


class VirtualTable(ScrollView, can_focus=True):
    """Rows are any items; `cells(item)` formats one row and `style(item)` styles it, on demand.

    The header stays on the first line. Up, down, page up, page down, home and end move the
    cursor; enter (or a click) posts `VirtualTable.Selected` with the item under the cursor.
    With `key`, the cursor follows its item (by `key(item)`) when `set_items` re-orders the rows.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-1_000_000_000)", "first", show=False),
        Binding("end", "move(1_000_000_000)", "last", show=False),
        Binding("enter", "select", "open", show=False),
        Binding("right", "sideways(True)", "expand", show=False),
        Binding("left", "sideways(False)", "collapse", show=False),
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

    class Sideways(Message):
        """Right (expand) or left (collapse) on the item under the cursor."""

        def __init__(self, table: VirtualTable, item: Any, right: bool) -> None:
            super().__init__()
            self.table = table
            self.item = item
            self.right = right

        @property
        def control(self) -> VirtualTable:
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        cells: Callable[[Any], Sequence[str]],
        style: Callable[[Any], str] | None = None,
        *,
        key: Callable[[Any], Hashable] | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self._cells = cells
        self._style = style
        self._key = key
        self._items: Sequence[Any] = ()
        self._styles: dict[str, Style] = {}
        self.cursor = 0
        self.widths = [column.width for column in self.columns]
        self._width = sum(w + 1 for w in self.widths)
        self.virtual_size = Size(self._width, 1)
        # The rows on screen as last painted, by item index: a refresh repaints only what differs.
        self._shown: dict[int, Row] = {}
        self._base = Style()

    @property
    def items(self) -> Sequence[Any]:
        return self._items

    def set_items(self, items: Sequence[Any]) -> None:
        """Show `items`: the cursor stays on its item (with `key`) or its row number, and only the
        lines on screen whose row changed are repainted."""
        key, old = self._key, self._items
        if key is not None and 0 <= self.cursor < len(old) and len(items):
            wanted = key(old[self.cursor])
            if self.cursor >= len(items) or key(items[self.cursor]) != wanted:
                self.cursor = next((i for i, item in enumerate(items) if key(item) == wanted), self.cursor)
                self._show_cursor()
        self._items = items
        self.cursor = max(0, min(self.cursor, len(items) - 1))
        size = Size(self._width, len(items) + 1)
        if size != self.virtual_size:
            self.virtual_size = size
            self._shown.clear()
            self.refresh()
            return
        top = round(self.scroll_offset.y)
        shown, self._shown = self._shown, {}
        for index in range(top, min(len(items), top + max(0, self.size.height - 1))):
            row = self._row(index)
            if shown.get(index) != row:
                self.refresh_line(index + 1)

    def set_title(self, index: int, title: str) -> None:
        self.columns[index] = replace(self.columns[index], title=title)
        self.refresh()

    def _row(self, index: int) -> Row:
        row = self._shown.get(index)
        if row is None:
            item = self._items[index]
            style = self._style(item) if self._style is not None else ""
            row = self._shown[index] = (tuple(self._cells(item)), style, index == self.cursor)
        return row

    def on_resize(self) -> None:
        # Keep room for the vertical scrollbar, which comes and goes with the number of rows.
        self.widths = fit(self.columns, self.size.width - self.styles.scrollbar_size_vertical)
        self._width = sum(w + 1 for w in self.widths)
        self.virtual_size = Size(self._width, len(self._items) + 1)
        self._shown.clear()

    def _rich(self, style: str) -> Style:
        parsed = self._styles.get(style)
        if parsed is None:
            parsed = self._styles[style] = Style.parse(style)
        return parsed

    def render_lines(self, crop: Region) -> list[Strip]:
        # The widget's style is the same for every line: look it up once per paint, not per line.
        self._base = self.rich_style
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self._base
        if y == 0:
            style = base + self._rich("bold reverse")
            return self._strip([column.title for column in self.columns], style, scroll_x, width)
        index = scroll_y + y - 1
        if index >= len(self._items):
            return Strip.blank(width, base)
        texts, row_style, cursor = self._row(index)
        style = base + self._rich(row_style) if row_style else base
        if cursor:
            style += self._rich("reverse" if self.has_focus else "underline")
        return self._strip(texts, style, scroll_x, width)

    def _strip(self, texts: Sequence[str], style: Style, scroll_x: int, width: int) -> Strip:
        # One segment per cell, so that an exported screenshot keeps the columns aligned.
        cells = [
            Segment(column.cell(text, w) + " ", style)
            for column, w, text in zip(self.columns, self.widths, texts, strict=True)
        ]
        return Strip(cells, self._width).crop_extend(scroll_x, scroll_x + width, self._base)

    def _show_cursor(self) -> None:
        rows = max(1, self.size.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False)
        self.refresh()

    def action_move(self, delta: int) -> None:
        self._move_to(self.cursor + delta)

    def _move_to(self, index: int) -> None:
        self._shown.pop(self.cursor, None)
        self.cursor = max(0, min(index, len(self._items) - 1))
        self._shown.pop(self.cursor, None)
        self._show_cursor()

    def action_page(self, pages: int) -> None:
        self.action_move(pages * max(1, self.size.height - 1))

    def action_select(self) -> None:
        if self._items:
            self.post_message(self.Selected(self, self._items[self.cursor]))

    def action_sideways(self, right: bool) -> None:
        if self._items:
            self.post_message(self.Sideways(self, self._items[self.cursor], right))

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            index = round(self.scroll_offset.y) + event.y - 1
            if index < len(self._items):
                self._move_to(index)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
