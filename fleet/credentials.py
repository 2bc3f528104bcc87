"""Who an MQTT client is to its broker, and how it checks the broker's certificate.

The settings are mosquitto_sub's: `-u/--username`, `-P/--password`, `--cafile`, `--cert`/`--key`
and `--insecure`, plus a password file (its first line) so that passwords stay out of the shell
history. Every client of a broker takes them: the simulated devices, `fleet tail`, `fleet watch`,
`fleet stress`'s observer and the pytest plugin.

A fleet config may template a device's user name, password, password file and certificate paths
with `{device}` and `{group}`; `for_device` fills them in. A password never shows in `repr`, and
`redact` takes it out of a URL before the URL is shown anywhere.

Against our bridges (ws://, http://, grpc:// and their TLS forms), `token` is the access token
(`fleet token add`), sent as `Authorization: Bearer` (gRPC: `authorization` metadata); the TLS
settings are the same. It never shows in `repr` either.
"""

from __future__ import annotations

import dataclasses
import ssl
import string
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError

__all__ = ["TEMPLATE_FIELDS", "Credentials", "check_template", "redact", "split_url"]

TEMPLATE_FIELDS = frozenset({"device", "group"})
_TEMPLATED = ("username", "password", "password_file", "cert", "key")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A client's MQTT user name and password (or password file), its TLS settings, and a bridge's
    access token."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    cafile: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password: give a password or a password file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("password: a password needs a user name (-u) [MQTT-3.1.2-22]")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert: a client certificate (--cert) and its key (--key) go together")

    @property
    def tls(self) -> bool:
        """Whether any TLS setting was given (which a plain mqtt:// or ws:// URL cannot use)."""
        return self.cafile is not None or self.cert is not None or self.insecure

    def _templates(self) -> dict[str, str | Path]:
        return {name: value for name in _TEMPLATED if (value := getattr(self, name)) is not None}

    def override(self, other: Credentials) -> Credentials:
        """These credentials with every field that `other` sets taken from `other`."""
        changes = {
            f.name: getattr(other, f.name) for f in dataclasses.fields(other) if getattr(other, f.name)
        }
        if "password" in changes:
            changes.setdefault("password_file", None)
        if "password_file" in changes:
            changes.setdefault("password", None)
        return dataclasses.replace(self, **changes)

    def shared(self) -> Credentials:
        """These credentials without their templated fields: for clients that are not a device."""
        drop: dict[str, Any] = {name: None for name, value in self._templates().items() if _per_device(value)}
        if "username" in drop:
            drop.update(password=None, password_file=None)
        if "cert" in drop or "key" in drop:
            drop.update(cert=None, key=None)
        return dataclasses.replace(self, **drop)

    def for_device(self, device: str, group: str) -> Credentials:
        """The credentials of one device: `{device}` and `{group}` filled in (other braces, as in a
        password given on the command line, are kept as they are)."""
        values = {
            name: str(value).replace("{device}", device).replace("{group}", group)
            for name, value in self._templates().items()
        }
        paths: dict[str, Any] = {
            name: Path(values[name]) for name in ("password_file", "cert", "key") if name in values
        }
        return dataclasses.replace(self, **(values | paths))

    def bearer(self) -> dict[str, str]:
        """The HTTP header that carries `token` to a bridge; none without one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def read_password(self) -> bytes | None:
        """The password, or the first line of the password file; ConfigError names an unreadable file."""
        if self.password_file is None:
            return None if self.password is None else self.password.encode()
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                str(self.password_file), f"cannot read the password file: {exc.strerror}"
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(str(self.password_file), f"not UTF-8 text: {exc.reason}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise ConfigError(str(self.password_file), "the first line, the password, is empty")
        return lines[0].encode()

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: the system's CAs or `cafile`, the client certificate if any, and
        no verification of the broker with `insecure`. ConfigError names a file that cannot be used."""
        try:
            context = ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{self.cafile}", f"cannot load the CA file (--cafile): {_reason(exc)}"
            ) from None
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.cert}",
                    f"cannot load the client certificate (--cert) and key (--key): {_reason(exc)}",
                ) from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror  # ssl.SSLError has a reason, OSError a strerror
    return str(reason or exc)


def _per_device(value: str | Path) -> bool:
    return any(token in str(value) for token in ("{device}", "{group}"))


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_template(name: str, template: str) -> None:
    """ValueError('name: reason') unless `template` uses only `{device}` and `{group}`."""
    try:
        unknown = sorted(_placeholders(template) - TEMPLATE_FIELDS)
    except ValueError as exc:
        raise ValueError(f"{name}: bad template {template!r}: {exc}") from None
    if unknown:
        raise ValueError(f"{name}: unknown placeholder {{{unknown[0]}}}; use {{device}} or {{group}}")


def split_url(url: str) -> tuple[str, Credentials]:
    """`url` without a `user:password@` part, and the user name and password it carried.

    Percent-escapes in them are decoded (`p%40ss` is `p@ss`). Errors never repeat the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, Credentials()
    authority, slash, tail = rest.partition("/")
    userinfo, at, address = authority.rpartition("@")
    if not at:
        return url, Credentials()
    username, colon, password = userinfo.partition(":")
    if not username:
        raise ValueError(f"{redact(url)}: the URL has a password but no user name before '@'")
    return f"{scheme}{sep}{address}{slash}{tail}", Credentials(
        username=urllib.parse.unquote(username), password=urllib.parse.unquote(password) if colon else None
    )


def redact(url: str) -> str:
    """`url` with its `user:password@` part, if any, shown as `***@`."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    _, at, address = authority.rpartition("@")
    return f"{scheme}{sep}***@{address}{slash}{tail}" if sep and at else url
