"""Mosquitto-style ACL files (`acl_file` in mosquitto.conf(5)) for the embedded broker.

File format, as Mosquitto 2.0 reads it (``src/security_default.c``)::

    # comment
    topic read $SYS/#            # before any `user` line: rules for anonymous clients
    user alice                   # starts alice's block (a repeated block adds to it)
    topic fleet/alice/#          # access defaults to readwrite
    topic deny fleet/alice/secret
    pattern write fleet/%c/#     # for every client: %c = client id, %u = username

Access is ``read``, ``write``, ``readwrite`` or ``deny``; the topic is the rest of the line and may
hold wildcards. Once an ACL file is in force, everything it does not grant is denied.

Semantics (where they differ from Mosquitto 2.0, the difference is stricter):

* A client's rules are its user block (the anonymous block if it has no username) plus every
  ``pattern`` line. A matching ``deny`` anywhere wins over every grant. (Mosquitto stops at the
  first grant of the user block, so there a pattern ``deny`` cannot override a user-block grant.)
* A pattern with ``%u`` does not apply to a client without username, as in Mosquitto.
* An empty client id or username, or one containing ``+``, ``#`` or ``/``, is never substituted: a
  grant pattern needing it does not apply, and a deny pattern needing it denies that client
  everything. (Mosquitto refuses ``+`` and ``#`` and then denies all pattern access.)
* Subscriptions: Mosquitto 2.0's ACL check allows every SUBSCRIBE ("FIXME - implement ACL
  subscription strings") and filters each delivered message by ``read`` access. We check ``read``
  per delivered message too (`can_read`), and additionally refuse a subscription when one of the
  client's deny rules matches the filter, its levels taken literally (`can_subscribe`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import ConfigError, TopicError
from fleet.topics import matches, validate_filter, validate_topic

__all__ = ["AclFile"]

READ = 1
WRITE = 2
DENY = 0
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": DENY}
_PLACEHOLDER = re.compile(r"%[cu]")
_UNSAFE = frozenset("+#/")


@dataclass(frozen=True, slots=True)
class _Rule:
    access: int  # READ | WRITE bits; DENY (0) for a deny rule
    topic: str  # a topic filter; for a pattern, with %c / %u still in it


def _acl_matches_filter(acl_topic: str, topic_filter: str) -> bool:
    """Whether ACL topic `acl_topic` matches the subscription filter `topic_filter` taken literally.

    The filter's levels are compared as plain text: a literal ACL level must equal the filter's level
    (so ACL ``a`` does not match filter level ``+``), ACL ``+`` matches any one level including ``+``
    but not a ``#`` (which stands for many levels), ACL ``#`` matches the rest. ACL wildcards at the
    first level never match ``$`` filters. So when this is true, the ACL topic matches every topic
    name the filter can match.
    """
    if topic_filter.startswith("$") and acl_topic[:1] in ("+", "#"):
        return False
    acl_levels = acl_topic.split("/")
    filter_levels = topic_filter.split("/")
    for index, level in enumerate(acl_levels):
        if level == "#":
            return True
        if index >= len(filter_levels):
            return False
        wanted = filter_levels[index]
        if level != wanted and (level != "+" or wanted == "#"):
            return False
    return len(acl_levels) == len(filter_levels)


def _safe(value: str | None) -> bool:
    return bool(value) and _UNSAFE.isdisjoint(value or "")


def _parse_rule(words: list[str]) -> _Rule:
    """`words` is what follows `topic`/`pattern`: [access] topic. ValueError says what is wrong."""
    if not words:
        raise ValueError("missing topic")
    if len(words) == 1:
        if words[0] in _ACCESS:
            raise ValueError(f"missing topic after access {words[0]!r}")
        access, topic = "readwrite", words[0]
    else:
        access, topic = words[0], words[1].strip()
        if access not in _ACCESS:
            raise ValueError(f"invalid access {access!r}: expected read, write, readwrite or deny")
    try:
        validate_filter(topic)
    except TopicError as exc:
        raise ValueError(f"invalid ACL topic: {exc}") from None
    return _Rule(_ACCESS[access], topic)


@dataclass(frozen=True, slots=True)
class AclFile:
    """The rules of one ACL file; ask it whether a client may publish, receive or subscribe."""

    path: Path
    anonymous: tuple[_Rule, ...] = field(repr=False)
    users: Mapping[str, tuple[_Rule, ...]] = field(repr=False)
    patterns: tuple[_Rule, ...] = field(repr=False)

    @classmethod
    def load(cls, path: Path) -> AclFile:
        """Read and check the whole file; raise ConfigError naming file:line for a bad line."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read ACL file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), f"not UTF-8 text: {exc.reason}") from exc

        anonymous: list[_Rule] = []
        users: dict[str, list[_Rule]] = {}
        patterns: list[_Rule] = []
        block = anonymous
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            keyword, _, rest = text.partition(" ")
            keyword, rest = keyword.strip(), rest.strip()
            where = f"{path}:{lineno}"
            if keyword == "user":
                if not rest:
                    raise ConfigError(where, "missing username after 'user'")
                block = users.setdefault(rest, [])
            elif keyword in ("topic", "pattern"):
                try:
                    rule = _parse_rule(rest.split(None, 1))
                except ValueError as exc:
                    raise ConfigError(where, f"{keyword}: {exc}") from None
                (block if keyword == "topic" else patterns).append(rule)
            else:
                raise ConfigError(where, f"unknown keyword {keyword!r}: expected user, topic or pattern")
        return cls(
            path,
            tuple(anonymous),
            {name: tuple(rules) for name, rules in users.items()},
            tuple(patterns),
        )

    def _rules_for(self, client_id: str, username: str | None) -> list[_Rule] | None:
        """The client's rules with patterns substituted; None if it must be denied everything."""
        rules = list(self.anonymous if username is None else self.users.get(username, ()))
        values = {"%c": client_id, "%u": username or ""}
        for pattern in self.patterns:
            needs = set(_PLACEHOLDER.findall(pattern.topic))
            if "%u" in needs and username is None:
                continue
            if ("%c" in needs and not _safe(client_id)) or ("%u" in needs and not _safe(username)):
                if pattern.access == DENY:
                    return None
                continue
            topic = _PLACEHOLDER.sub(lambda m: values[m.group()], pattern.topic)
            rules.append(_Rule(pattern.access, topic))
        return rules

    def _allowed(self, client_id: str, username: str | None, topic: str, access: int) -> bool:
        validate_topic(topic)
        rules = self._rules_for(client_id, username)
        if rules is None:
            return False
        granted = False
        for rule in rules:
            if matches(rule.topic, topic):
                if rule.access == DENY:
                    return False
                granted = granted or bool(rule.access & access)
        return granted

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        """Whether the client may publish to the topic name `topic` (write access, no deny)."""
        return self._allowed(client_id, username, topic, WRITE)

    def can_read(self, client_id: str, username: str | None, topic: str) -> bool:
        """Whether a message on `topic` may be delivered to the client (read access, no deny)."""
        return self._allowed(client_id, username, topic, READ)

    def can_subscribe(self, client_id: str, username: str | None, topic_filter: str) -> bool:
        """Whether the client may subscribe: yes unless one of its deny rules matches the filter.

        This only refuses subscriptions that could never deliver anything allowed; each message is
        still checked with `can_read`, which is what enforces read access.
        """
        validate_filter(topic_filter)
        rules = self._rules_for(client_id, username)
        if rules is None:
            return False
        return not any(
            rule.access == DENY and _acl_matches_filter(rule.topic, topic_filter) for rule in rules
        )
