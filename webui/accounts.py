"""User accounts for the page (``--auth-file FILE``): names and salted password hashes.

The file is JSON, written by ``python -m webui users ...`` (:mod:`webui.users_cli`)::

    {"version": 1, "users": {"alice": {"password": "$scrypt$ln=17,r=8,p=1$<salt>$<hash>",
                                       "created": "2026-12-06T20:15:00+00:00"}}}

Passwords are hashed with scrypt (RFC 7914, ``hashlib.scrypt``) at the parameters the
OWASP Password Storage Cheat Sheet gives as the minimum for scrypt: N = 2**17 (``ln=17``),
r = 8, p = 1, with a random 16-byte salt and a 32-byte key.  One hash takes 128 MiB of
memory (128 * r * N bytes) and, measured on the 2-core CI machine (AMD EPYC), 0.61 s at
load average 1.8 and 1.0 s at load average 11 (the server lets two run at once:
:class:`webui.signin.Accounts`).  A hash is stored as a PHC string (the
format of the Password Hashing Competition, as passlib writes scrypt), which names its
own parameters: a file written with other parameters still verifies.

The file is replaced crash-safe (a temporary file in the same folder, fsync, ``os.replace``,
fsync of the folder) and is mode 0600: it is readable by its owner only.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

#: OWASP Password Storage Cheat Sheet, "scrypt": N=2^17 (log2 17), r=8, p=1.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 17, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
#: NIST SP 800-63B, 5.1.1.1: memorised secrets of at least 8 characters, at most 64 required to be allowed.
MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS = 8, 256
#: A user name: letters (any script), digits, ``. _ @ -``; 1 to 64 characters.
NAME_PATTERN = re.compile(r"^[\w.@-]{1,64}$")
FILE_VERSION = 1
#: Checked against when the name is unknown, so that costs one hash too (a fixed salt; matches nothing).
UNKNOWN_USER_HASH = f"$scrypt$ln={SCRYPT_LOG2_N},r={SCRYPT_R},p={SCRYPT_P}${'A' * 22}${'A' * 43}"
_PHC = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


class AccountError(ValueError):
    """Bad input for the accounts (a name, a password, an unknown or existing user)."""


class AuthFileError(RuntimeError):
    """The auth file cannot be read or is not an auth file (the message names the fix)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, dklen=length,
                          maxmem=256 * r * (1 << log2_n) + (1 << 20))


def hash_password(password: str, log2_n: int = SCRYPT_LOG2_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``password`` hashed with scrypt and a fresh random salt, as a PHC string
    ``$scrypt$ln=17,r=8,p=1$<salt>$<key>`` (base64 without padding). Lower ``log2_n`` only for tests."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, log2_n, r, p, KEY_BYTES)
    return f"$scrypt$ln={log2_n},r={r},p={p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` hashes to ``stored`` (a :func:`hash_password` string); the keys are
    compared in constant time (``hmac.compare_digest``). A malformed ``stored`` verifies nothing."""
    match = _PHC.match(stored or "")
    if not match:
        return False
    log2_n, r, p = (int(g) for g in match.groups()[:3])
    if not (1 <= log2_n <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
        return False
    expected = _unb64(match.group(5))
    return hmac.compare_digest(_scrypt(password, _unb64(match.group(4)), log2_n, r, p, len(expected)), expected)


def check_name(name: str) -> str:
    """``name`` if it is a valid user name (:data:`NAME_PATTERN`), else :class:`AccountError`."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise AccountError(f"invalid user name {name!r}: use 1 to 64 letters, digits or . _ @ -")
    return name


def check_password(password: str) -> str:
    """``password`` if it is long enough (:data:`MIN_PASSWORD_CHARS`), else :class:`AccountError`."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password is too short: use at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"the password is too long: use at most {MAX_PASSWORD_CHARS} characters")
    return password


@dataclass
class User:
    """One account: ``name``, ``password`` (a PHC scrypt string), ``created`` (ISO 8601 UTC)."""

    name: str
    password: str
    created: str = ""


class AuthFile:
    """The users of one auth file. Read with :meth:`load`, changed in memory, written with :meth:`save`.

    Args:
        path: the JSON file (need not exist yet; :meth:`load` of a missing file is empty).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.users: dict[str, User] = {}

    @classmethod
    def load(cls, path: str | Path, missing_ok: bool = True) -> "AuthFile":
        """Read ``path``.

        Raises:
            AuthFileError: it is missing (unless ``missing_ok``), unreadable, or not an auth file.
        """
        accounts = cls(path)
        try:
            data = json.loads(accounts.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if missing_ok:
                return accounts
            raise AuthFileError(f"{path} does not exist: create it with "
                                f"'python -m webui users add NAME --auth-file {path}'") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AuthFileError(f"{path} is not a readable auth file ({exc}): write it with "
                                "'python -m webui users add NAME --auth-file FILE'") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict) or data.get("version") != FILE_VERSION:
            raise AuthFileError(f"{path} is not an auth file of version {FILE_VERSION} (no 'users' object): "
                                "write it with 'python -m webui users add NAME --auth-file FILE'")
        for name, entry in users.items():
            if not NAME_PATTERN.match(name) or not isinstance(entry, dict) or not _PHC.match(entry.get("password", "")):
                raise AuthFileError(f"{path}: the entry of user {name!r} is malformed: remove it with "
                                    f"'python -m webui users remove' and add it again")
            accounts.users[name] = User(name, entry["password"], entry.get("created", ""))
        return accounts

    def add(self, name: str, password: str, **hash_params) -> None:
        """Add user ``name`` with ``password`` (hashed here).

        Raises:
            AccountError: an invalid name or password, or the user exists already.
        """
        check_name(name)
        if name in self.users:
            raise AccountError(f"user {name!r} exists already: change the password with "
                               f"'python -m webui users passwd {name}'")
        self.users[name] = User(name, hash_password(check_password(password), **hash_params),
                                datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def set_password(self, name: str, password: str, **hash_params) -> None:
        """Give user ``name`` a new password (which ends the user's sign-in sessions).

        Raises:
            AccountError: no such user, or an invalid password.
        """
        self._existing(name).password = hash_password(check_password(password), **hash_params)

    def remove(self, name: str) -> None:
        """Remove user ``name`` (their conversations stay in the store, under their name).

        Raises:
            AccountError: no such user.
        """
        self.users.pop(self._existing(name).name)

    def verify(self, name: str, password: str) -> bool:
        """Whether ``name`` exists and ``password`` is theirs. An unknown name costs one hash too,
        so the time taken does not tell which of the two was wrong."""
        user = self.users.get(name) if isinstance(name, str) else None
        if user is None:
            verify_password(password, UNKNOWN_USER_HASH)
            return False
        return verify_password(password, user.password)

    def save(self) -> None:
        """Write the file crash-safe: temporary file (mode 0600) in the same folder, fsync,
        ``os.replace``, fsync of the folder. A crash leaves the old file or the new one, never half of one."""
        from rag.persistence import fsync_dir

        data = {"version": FILE_VERSION, "users": {u.name: {"password": u.password, "created": u.created}
                                                   for u in sorted(self.users.values(), key=lambda u: u.name)}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)

    def _existing(self, name: str) -> User:
        if name not in self.users:
            raise AccountError(f"no user {name!r} in {self.path}: see 'python -m webui users list --auth-file "
                               f"{self.path}'")
        return self.users[name]
