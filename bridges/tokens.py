"""The bridges' access tokens: who may subscribe to what, and publish where.

A tokens file is TOML, one `[[token]]` table per token:

    [[token]]
    name = "dashboard"
    sha256 = "9f86d0…"                       # SHA-256 of the token, in hex; the token itself is not kept
    subscribe = ["fleet/#"]                   # filters it may subscribe to (or within)
    publish = ["fleet/{device}/cmd"]          # topics it may publish to

A token is 256 random bits (`new_token`), so one SHA-256 is enough to store it: there is nothing to
guess, and a slow password hash on every request would cost the bridges' throughput. A presented
token is hashed once and compared with every stored hash in constant time (`hmac.compare_digest`).

A subscribe right is a topic filter: a requested filter is allowed when every topic it matches is
matched by one of the token's filters (`fleet/+/status` is within `fleet/#`). A publish pattern is a
topic filter in which a whole level may also be a named placeholder such as `{device}`, which stands
for any one level, as `+` does. A token with no rights may do nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError, TopicError
from fleet.topics import matches, validate_filter, validate_topic

__all__ = ["Grant", "Tokens", "append_token", "covers", "hash_token", "new_token", "publish_filter"]

_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset({"name", "sha256", "subscribe", "publish"})


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 of `token`, in hex: what a tokens file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def publish_filter(pattern: str) -> str:
    """`pattern` as a topic filter: each `{name}` level becomes `+`; raises TopicError when invalid."""
    levels = pattern.split("/")
    for level in levels:
        if ("{" in level or "}" in level) and not _PLACEHOLDER.fullmatch(level):
            raise TopicError(
                f"publish pattern {pattern!r}: a placeholder such as {{device}} must be a whole level"
            )
    topic_filter = "/".join("+" if _PLACEHOLDER.fullmatch(level) else level for level in levels)
    validate_filter(topic_filter)
    return topic_filter


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic that filter `requested` matches is matched by filter `allowed`."""
    have, want = allowed.split("/"), requested.split("/")
    for index, level in enumerate(have):
        if level == "#":
            # '#' at the top matches no $-topic; a request for one is not within it.
            return not (index == 0 and want[0].startswith("$"))
        if index >= len(want):
            return False
        asked = want[index]
        if asked == "#":
            return False
        if level == "+":
            if index == 0 and asked.startswith("$"):
                return False
            continue
        if level != asked:  # a literal level covers only itself, not '+'
            return False
    return len(have) == len(want)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one client may do: its token's name, the filters it may subscribe within, the topics
    (as filters) it may publish to. `Grant.everything()` is the grant of a bridge without tokens."""

    name: str
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]

    @classmethod
    def everything(cls) -> Grant:
        return cls("anonymous", ("#", "$SYS/#"), ("#",))

    def check_subscribe(self, filters: Iterable[str]) -> None:
        """Raise PermissionError naming the first filter this grant may not subscribe to."""
        for topic_filter in filters:
            if not any(covers(allowed, topic_filter) for allowed in self.subscribe):
                raise PermissionError(
                    f"token {self.name!r} may not subscribe to {topic_filter!r}; "
                    f"it may subscribe to: {', '.join(self.subscribe) or 'nothing'}"
                )

    def check_publish(self, topic: str) -> None:
        """Raise PermissionError unless this grant may publish to `topic`."""
        validate_topic(topic)
        if not any(matches(allowed, topic) for allowed in self.publish):
            raise PermissionError(
                f"token {self.name!r} may not publish to {topic!r}; "
                f"it may publish to: {', '.join(self.publish) or 'nothing'}"
            )


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    grant: Grant


class Tokens:
    """The tokens of a tokens file; `grant(token)` is what a presented token may do, or None."""

    def __init__(self, path: Path, entries: tuple[_Entry, ...]) -> None:
        self.path = path
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.grant.name for entry in self._entries)

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read and check a tokens file; ConfigError names the file, the token and field, and why."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the tokens file: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), f"not UTF-8 text: {exc}") from None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
        unknown = sorted(set(document) - {"token"})
        if unknown:
            raise ConfigError(
                f"{path}: {unknown[0]}", "unknown table: a tokens file has only [[token]] tables"
            )
        tables = document.get("token", [])
        if not isinstance(tables, list):
            raise ConfigError(f"{path}: token", "must be [[token]] tables")
        entries: list[_Entry] = []
        names: set[str] = set()
        for index, table in enumerate(tables, 1):
            entry = _entry(path, index, table)
            if entry.grant.name in names:
                raise ConfigError(f"{path}: token {index}: name", f"{entry.grant.name!r} is used twice")
            names.add(entry.grant.name)
            entries.append(entry)
        return cls(path, tuple(entries))

    def grant(self, token: str) -> Grant | None:
        """The grant of `token`, or None for an unknown one. Every stored hash is compared, each in
        constant time, so the time taken says nothing about which (if any) matched."""
        digest = hashlib.sha256(token.encode()).digest()
        found: Grant | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.grant
        return found


def _entry(path: Path, index: int, table: Any) -> _Entry:
    where = f"{path}: token {index}"
    if not isinstance(table, dict):
        raise ConfigError(where, "must be a [[token]] table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name", f"1 to 64 letters, digits or . _ @ -, got {name!r}")
    where = f"{path}: token {index} ({name})"
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}", f"unknown field; expected {', '.join(sorted(_FIELDS))}")
    digest = table.get("sha256")
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise ConfigError(
            f"{where}: sha256", f"64 lowercase hex digits (the token's SHA-256), got {digest!r}"
        )
    rights: dict[str, tuple[str, ...]] = {}
    for field in ("subscribe", "publish"):
        value = table.get(field, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: {field}", "must be a list of strings")
        try:
            check = validate_filter if field == "subscribe" else publish_filter
            rights[field] = tuple(check(item) for item in value)
        except TopicError as exc:
            raise ConfigError(f"{where}: {field}", str(exc)) from None
    return _Entry(bytes.fromhex(digest), Grant(name, rights["subscribe"], rights["publish"]))


def append_token(path: Path, name: str, subscribe: tuple[str, ...], publish: tuple[str, ...]) -> str:
    """Add a token named `name` to the tokens file at `path` (made if missing); return the token,
    which is stored only as its hash. ConfigError for a bad file, name or right."""
    existing = Tokens.load(path) if path.exists() else None
    token = new_token()
    block = (
        "\n[[token]]\n"
        f"name = {json.dumps(name)}\n"
        f'sha256 = "{hash_token(token)}"\n'
        f"subscribe = {json.dumps(list(subscribe), ensure_ascii=False)}\n"
        f"publish = {json.dumps(list(publish), ensure_ascii=False)}\n"
    )
    # Checked as it will be read, before the file is touched.
    probe = tomllib.loads(block)["token"][0]
    _entry(path, len(existing or ()) + 1, probe)
    if existing is not None and name in existing.names:
        raise ConfigError(f"{path}: name", f"a token named {name!r} exists already")
    try:
        # A new file is made readable by its owner only, from the start.
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot write the tokens file: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "a", encoding="utf-8") as file:
        if existing is None:
            file.write("# mqtt-fleet bridge tokens: `fleet token add` appends; only hashes are kept.\n")
        file.write(block)
    return token
