"""Password files for the embedded broker, in the format of Mosquitto's `mosquitto_passwd`.

One ``username:hash`` per line; blank lines and ``#`` comments are ignored. Two hash forms are read,
exactly as Mosquitto 2.0 reads them (``src/security_default.c``, ``src/password_mosq.c``):

* ``$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512 (the Mosquitto 2.x default, 101 iterations);
* ``$6$<salt>$<hash>``: SHA-512 of the password bytes followed by the salt bytes (Mosquitto 1.x).

Salt and hash are standard base64 of 12 and 64 bytes. We write ``$7$`` only, so files made here and
files made by ``mosquitto_passwd`` can be used by either broker.

The Mosquitto broker skips comments and blank lines, but ``mosquitto_passwd`` 2.0.11 calls them
"Corrupt password file" and then leaves only the user it was adding: `set_password` never writes
them itself, and keeps those a person wrote.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import ConfigError

__all__ = ["PasswordFile", "hash_password", "set_password"]

DEFAULT_ITERATIONS = 101  # PW_DEFAULT_ITERATIONS in Mosquitto's password_mosq.h
SALT_BYTES = 12  # SALT_LEN
HASH_BYTES = 64  # SHA-512 digest size


@dataclass(frozen=True, slots=True)
class _Hash:
    """One decoded password hash: `iterations` is None for the one-round `$6$` form."""

    iterations: int | None
    salt: bytes
    digest: bytes

    def compute(self, password: bytes) -> bytes:
        if self.iterations is None:
            return hashlib.sha512(password + self.salt).digest()
        return hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations, HASH_BYTES)


# Hashed for unknown users so that a miss costs about as much time as a hit.
_DUMMY = _Hash(DEFAULT_ITERATIONS, bytes(SALT_BYTES), bytes(HASH_BYTES))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Return the `$7$` (PBKDF2-HMAC-SHA512) hash field for `password`, with a fresh random salt."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    salt = os.urandom(SALT_BYTES)
    digest = _Hash(iterations, salt, b"").compute(password.encode("utf-8"))
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def _decode(field_text: str, size: int, what: str) -> bytes:
    try:
        data = base64.b64decode(field_text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise ValueError(f"{what} is not valid base64") from None
    if len(data) != size:
        raise ValueError(f"{what} is {len(data)} bytes, expected {size}")
    return data


def _parse_hash(text: str) -> _Hash:
    """Decode one hash field; ValueError says what is wrong with it."""
    if not text.startswith("$"):
        raise ValueError("password is not hashed: run `fleet passwd`")
    parts = text.split("$")[1:]
    if parts[0] == "7":
        if len(parts) != 4:
            raise ValueError("a $7$ hash must be $7$<iterations>$<salt>$<hash>")
        if not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) < 1:
            raise ValueError(f"iterations {parts[1]!r} must be a positive integer")
        iterations: int | None = int(parts[1])
        salt, digest = parts[2], parts[3]
    elif parts[0] == "6":
        if len(parts) != 3:
            raise ValueError("a $6$ hash must be $6$<salt>$<hash>")
        iterations, salt, digest = None, parts[1], parts[2]
    else:
        raise ValueError(f"unsupported hash type ${parts[0]}$: expected $7$ or $6$")
    return _Hash(iterations, _decode(salt, SALT_BYTES, "salt"), _decode(digest, HASH_BYTES, "hash"))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read password file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text: {exc.reason}") from exc


def _parse_line(path: Path, lineno: int, line: str) -> tuple[str, _Hash] | None:
    """(username, hash) of one line, None for a blank or comment line; ConfigError if malformed."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    username, colon, hash_text = text.partition(":")
    username, hash_text = username.strip(), hash_text.strip()
    where = f"{path}:{lineno}"
    if not colon:
        raise ConfigError(where, "expected username:hash")
    if not username:
        raise ConfigError(where, "empty username")
    if not hash_text:
        raise ConfigError(where, f"user {username!r} has no password hash")
    try:
        return username, _parse_hash(hash_text)
    except ValueError as exc:
        raise ConfigError(where, f"user {username!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class PasswordFile:
    """The users of one password file and their hashes; `verify` checks a CONNECT's credentials."""

    path: Path
    users: Mapping[str, _Hash] = field(repr=False)

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        """Read and check the whole file; raise ConfigError naming file:line for a bad line."""
        users: dict[str, _Hash] = {}
        first_seen: dict[str, int] = {}
        for lineno, line in enumerate(_read_lines(path), start=1):
            entry = _parse_line(path, lineno, line)
            if entry is None:
                continue
            username, hashed = entry
            if username in users:
                raise ConfigError(
                    f"{path}:{lineno}", f"user {username!r} already defined on line {first_seen[username]}"
                )
            users[username] = hashed
            first_seen[username] = lineno
        return cls(path, users)

    def verify(self, username: str, password: str | bytes | None) -> bool:
        """Whether `password` is right for `username`; False for unknown users and missing passwords."""
        hashed = self.users.get(username)
        secret = password.encode("utf-8") if isinstance(password, str) else password
        if hashed is None or secret is None:
            _DUMMY.compute(secret or b"")
            return False
        return hmac.compare_digest(hashed.compute(secret), hashed.digest)


def _check_username(path: Path, username: str) -> None:
    # mosquitto_passwd's rules (no ':', no control characters), plus what would not read back the same.
    if not username or username != username.strip() or username.startswith("#"):
        raise ConfigError(
            str(path), f"username {username!r} must be non-empty, not start with '#', nor have outer spaces"
        )
    if ":" in username or any(ord(ch) < 32 or ord(ch) == 127 for ch in username):
        raise ConfigError(str(path), f"username {username!r} must not contain ':' or control characters")


def set_password(path: Path, username: str, password: str) -> None:
    """Add `username` to the password file at `path`, or replace its hash, keeping every other line.

    The file is created with mode 0o600 if missing, and rewritten atomically (keeping its mode) if not.
    """
    _check_username(path, username)
    new_line = f"{username}:{hash_password(password)}"
    lines = _read_lines(path) if path.exists() else []
    replaced = False
    for index, line in enumerate(lines):
        entry = _parse_line(path, index + 1, line)  # also refuses to rewrite a malformed file
        if entry is not None and entry[0] == username:
            lines[index] = new_line
            replaced = True
    if not replaced:
        lines.append(new_line)

    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o600
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write("".join(f"{line}\n" for line in lines))
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
