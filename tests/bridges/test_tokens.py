"""The bridges' tokens file: `fleet token add` stores only a token's SHA-256 with its rights, and a
bad file is named with its token, field and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridges.tokens import Tokens, hash_token
from fleet.cli import cli
from fleet.errors import ConfigError
from tests.bridges.conftest import add_token


def test_token_add_prints_a_256_bit_token_once_and_stores_only_its_sha256(tmp_path: Path) -> None:
    """`fleet token add` prints a fresh 256-bit token; the file keeps its SHA-256 and rights, not it."""
    path = tmp_path / "tokens.toml"
    first = add_token(path, "ops", "--subscribe", "fleet/#", "--publish", "fleet/{device}/cmd")
    second = add_token(path, "ci")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first), first  # 32 bytes, URL-safe base64
    assert first != second
    text = path.read_text()
    assert first not in text
    assert second not in text
    assert hash_token(first) in text
    tokens = Tokens.load(path)
    assert tokens.names == ("ops", "ci")
    grant = tokens.grant(first)
    assert grant is not None
    assert grant.subscribe == ("fleet/#",)
    assert grant.publish == ("fleet/+/cmd",)
    assert tokens.grant(first + "x") is None
    assert path.stat().st_mode & 0o077 == 0, "a tokens file is readable by its owner only"


def test_token_add_refuses_a_name_twice_and_a_bad_right(tmp_path: Path) -> None:
    """A second token of the same name, or a right that is not a filter, is refused and the file kept."""
    path = tmp_path / "tokens.toml"
    add_token(path, "ops")
    before = path.read_text()
    twice = CliRunner().invoke(cli, ["token", "add", "ops", "--tokens-file", str(path)])
    assert twice.exit_code == 1
    assert "'ops' exists already" in twice.output
    bad = CliRunner().invoke(
        cli, ["token", "add", "x", "--tokens-file", str(path), "--publish", "a/dev{x}/cmd"]
    )
    assert bad.exit_code == 1
    assert "publish" in bad.output
    assert "whole level" in bad.output
    assert path.read_text() == before


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("[[token]\n", "tokens.toml", "line 1"),
        ('[[token]]\nname = "a"\nsha256 = "abc"\n', "token 1 (a): sha256", "64 lowercase hex digits"),
        (
            f'[[token]]\nname = "a"\nsha256 = "{"0" * 64}"\nsubscribe = "fleet/#"\n',
            "token 1 (a): subscribe",
            "list",
        ),
        (f'[[token]]\nname = "a"\nsha256 = "{"0" * 64}"\npublish = ["a/#/b"]\n', "token 1 (a): publish", "#"),
        (f'[[token]]\nname = "a"\nsha256 = "{"0" * 64}"\nread = []\n', "token 1 (a): read", "unknown field"),
    ],
)
def test_a_bad_tokens_file_is_named_with_its_field_and_reason(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    """A mistake in a tokens file is a ConfigError naming the file, the token and field (or line), why."""
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Tokens.load(path)
    message = str(caught.value)
    assert str(path) in message, message
    assert where in message, message
    assert reason in message, message
