"""The subscription tree: routes a topic to its subscribers without looking at unrelated filters.

A lookup costs time proportional to the topic's depth and the filters that actually match it, not
to the number of subscriptions (amqtt 0.12.1 scans every filter). The broker routes publishes with
it, and the bridges route events to their consumers.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SubscriptionTree"]

K = TypeVar("K", bound=Hashable)


class _Node(Generic[K]):
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.subscribers: dict[K, int] = {}


class SubscriptionTree(Generic[K]):
    """Maps topic filters to {subscriber: granted QoS}; `match` merges overlaps at the highest QoS."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[K] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """The number of (filter, subscriber) pairs."""
        return self._count

    def add(self, topic_filter: str, subscriber: K, qos: int) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if subscriber not in node.subscribers:
            self._count += 1
        node.subscribers[subscriber] = qos

    def remove(self, topic_filter: str, subscriber: K) -> bool:
        """Remove one subscription; prune empty branches. Return whether it existed."""
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(subscriber, None) is None:
            return False
        self._count -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.subscribers or child.children:
                break
            del parent.children[level]
        return True

    def match(self, topic: str) -> dict[K, int]:
        """Every subscriber whose filters match `topic`, with the highest QoS granted among them."""
        levels = topic.split("/")
        depth = len(levels)
        result: dict[K, int] = {}
        # Wildcards at the first level never match '$' topics [MQTT-4.7.2-1].
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[K], int]] = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            children = node.children
            wild = not (dollar and index == 0)
            if wild:
                hash_node = children.get("#")
                if hash_node is not None:
                    _merge(result, hash_node.subscribers)
            if index == depth:
                _merge(result, node.subscribers)
                continue
            child = children.get(levels[index])
            if child is not None:
                stack.append((child, index + 1))
            if wild:
                plus = children.get("+")
                if plus is not None:
                    stack.append((plus, index + 1))
        return result


def _merge(result: dict[K, int], subscribers: dict[K, int]) -> None:
    for subscriber, qos in subscribers.items():
        if result.get(subscriber, -1) < qos:
            result[subscriber] = qos
