"""Config loading: TOML files validated by pydantic models, with errors that name file, field and reason."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from fleet.errors import ConfigError

__all__ = ["load_table", "load_toml", "untagged", "validated"]

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
    """Build `model` from `data`; the first error becomes ConfigError('where: field.path', reason).

    A model validator that blames one field raises ValueError('field: reason'), and the field joins
    the path: `groups[1].telemetry.temperature.min: must be less than max (30 >= 25)`.
    """
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
        elif error["type"] == "value_error":
            reason = reason.removeprefix("Value error, ")
            # A model validator names the field it blames as 'field: reason'.
            field, sep, rest = reason.partition(": ")
            if sep and field.isidentifier():
                path += f".{field}" if path else field
                reason = rest
        raise ConfigError(f"{where}: {path}" if path else where, reason) from None


def untagged(tag: str) -> Callable[[object, Callable[[object], object]], object]:
    """A wrap validator for a union told apart by the field `tag`, to use with `WrapValidator`.

    Pydantic puts the tag's value in error paths (`temperature.uniform.min`, pydantic#3947); this
    reports `temperature.min`, and blames a missing or unknown tag on the `tag` field itself.
    """

    def validate(value: object, handler: Callable[[object], object]) -> object:
        try:
            return handler(value)
        except ValidationError as exc:
            errors: list[InitErrorDetails] = []
            for error in exc.errors():
                if error["type"] == "union_tag_not_found":
                    errors.append({"type": "missing", "loc": (tag,), "input": error["input"]})
                elif error["type"] == "union_tag_invalid":
                    reason = PydanticCustomError(
                        f"unknown_{tag}", f"unknown {tag} '{{tag}}'; expected one of {{expected_tags}}",
                        error.get("ctx", {}),
                    )  # fmt: skip
                    errors.append({"type": reason, "loc": (tag,), "input": error["input"]})
                else:
                    details = InitErrorDetails(type=error["type"], loc=error["loc"][1:], input=error["input"])
                    if "ctx" in error:
                        details["ctx"] = error["ctx"]
                    errors.append(details)
            raise ValidationError.from_exception_data(exc.title, errors) from None

    return validate
