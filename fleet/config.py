"""Config loading: TOML files validated by pydantic models, with errors that name file, field and reason."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleet.errors import ConfigError

__all__ = ["load_table", "load_toml", "validated"]

M = TypeVar("M", bound=BaseModel)


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, or raise ConfigError naming the file and the syntax error."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None


def load_table(path: Path, name: str) -> Mapping[str, Any]:
    """The table `name` of a TOML file (empty when absent); other top-level keys are ignored."""
    table = load_toml(path).get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name}", f"must be a table, not {type(table).__name__}")
    return table


def validated(model: type[M], data: Mapping[str, Any], *, where: str, prefix: str = "") -> M:
    """Build `model` from `data`; the first error becomes ConfigError('where: field.path', reason)."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join([prefix] if prefix else [])
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        reason = error["msg"]
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        raise ConfigError(f"{where}: {path}" if path else where, reason) from None
