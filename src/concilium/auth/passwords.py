"""Passwords (argon2id) and usernames (one canonical ASCII form, no look-alikes)."""

from __future__ import annotations

import asyncio
import re
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from concilium.config import AuthSettings
from concilium.errors import InvalidRequest

__all__ = ["Passwords", "normalize_username"]

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}[a-z0-9]$")
# The most common passwords of at least 12 characters (public breach corpora).
_COMMON = frozenset(
    {
        "123456789012",
        "1234567890123",
        "12345678910",
        "qwertyuiopas",
        "password1234",
        "passwordpassword",
        "iloveyou1234",
        "qwerty123456",
        "111111111111",
        "000000000000",
        "aaaaaaaaaaaa",
        "abcdefghijkl",
        "abc123abc123",
        "letmeinletmein",
        "adminadmin123",
        "administrator",
        "welcome12345",
        "changemechangeme",
        "concilium123",
        "motdepasse123",
        "azertyuiop12",
        "azertyuiopqs",
        "1q2w3e4r5t6y",
        "qazwsxedcrfv",
        "zaq12wsxcde3",
    }
)


def normalize_username(raw: str) -> str:
    """The stored form of a username, or InvalidRequest.

    NFKC then lower case; what remains must be plain ASCII letters, digits, '.', '_' or
    '-'. So a full-width "ALICE" and "alice" are the same account, and a name spelled with
    a Cyrillic "a" is refused rather than becoming a look-alike of someone else's.
    """
    if len(raw) > 64:
        raise InvalidRequest("username is longer than 64 characters")
    name = unicodedata.normalize("NFKC", raw).strip().lower()
    if not _USERNAME.fullmatch(name):
        raise InvalidRequest(
            "username must be 3-64 characters: ASCII letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


class Passwords:
    """Hashing is deliberately slow (~50 ms): it runs in a worker thread."""

    def __init__(self, settings: AuthSettings) -> None:
        self.min_length = settings.password_min_length
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the user does not exist, so timing tells nothing.
        self._dummy = self._hasher.hash("not a real password, only for timing")

    def check_policy(self, password: str, *, username: str = "") -> None:
        if len(password) > 1024:
            raise InvalidRequest("password is longer than 1024 characters")
        if len(password) < self.min_length:
            raise InvalidRequest(f"password must have at least {self.min_length} characters")
        folded = password.lower()
        if folded in _COMMON or len(set(folded)) < 5:
            raise InvalidRequest("password is too common or too repetitive")
        if username and username.lower() in folded:
            raise InvalidRequest("password must not contain the username")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        def run() -> bool:
            try:
                return self._hasher.verify(stored or self._dummy, password) and stored is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(run)

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
