"""Retained messages, stored by topic and looked up by filter for each new subscription."""

from __future__ import annotations

from collections.abc import Iterator

from broker.message import Message

__all__ = ["RetainedStore"]


class _Node:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.message: Message | None = None


class RetainedStore:
    """The last retained message per topic [MQTT-3.3.1-5]; an empty payload clears it [MQTT-3.3.1-10]."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def store(self, message: Message) -> None:
        levels = message.topic.split("/")
        if not message.payload:
            self._clear(levels)
            return
        node = self._root
        for level in levels:
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.message is None:
            self._count += 1
        node.message = message

    def _clear(self, levels: list[str]) -> None:
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in levels:
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        if node.message is None:
            return
        node.message = None
        self._count -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.message is not None or child.children:
                break
            del parent.children[level]

    def matching(self, topic_filter: str) -> Iterator[Message]:
        """The retained messages whose topics match a valid `topic_filter`."""
        levels = topic_filter.split("/")
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            if index == len(levels):
                if node.message is not None:
                    yield node.message
                continue
            level = levels[index]
            if level == "#":
                yield from _subtree(node, skip_dollar=index == 0)
            elif level == "+":
                for name, child in node.children.items():
                    if not (index == 0 and name.startswith("$")):
                        stack.append((child, index + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, index + 1))


def _subtree(node: _Node, *, skip_dollar: bool) -> Iterator[Message]:
    # 'a/#' also matches 'a' itself [MQTT-4.7.1-2].
    if node.message is not None and not skip_dollar:
        yield node.message
    stack = [child for name, child in node.children.items() if not (skip_dollar and name.startswith("$"))]
    while stack:
        current = stack.pop()
        if current.message is not None:
            yield current.message
        stack.extend(current.children.values())
