"""Signed access tokens (JWT, HS256 with a key id) and opaque secrets stored as hashes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from concilium.config import Settings

__all__ = ["AccessClaims", "SigningKeys", "hash_secret", "new_secret", "secrets_dir"]

ALGORITHM = "HS256"
ISSUER = "concilium"


def secrets_dir(settings: Settings) -> Path:
    return settings.data_dir / "secrets"


def write_private(path: Path, content: str) -> None:
    """Create or replace a file only its owner can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.replace(tmp, path)


def new_secret(prefix: str, nbytes: int = 32) -> str:
    return prefix + secrets.token_urlsafe(nbytes)


def hash_secret(value: str) -> str:
    """Refresh tokens and API keys carry 256 random bits: a plain SHA-256 is enough to store
    them (no dictionary to attack), and fast enough to check on every request."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    session_id: str
    expires_at: float


class SigningKeys:
    """The current signing key and the older ones that still verify (rotation by ``kid``)."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        self.keys = keys
        self.current = current

    @classmethod
    def load(cls, settings: Settings) -> SigningKeys:
        secret = settings.auth.jwt_secret
        if secret is not None:
            raw = secret.get_secret_value().encode()
            kid = hashlib.sha256(raw).hexdigest()[:12]
            return cls({kid: raw}, kid)
        path = secrets_dir(settings) / "jwt-keys.json"
        if not path.exists():
            cls._add_key(path, {})
        data = json.loads(path.read_text())
        keys = {kid: base64.b64decode(value) for kid, value in data["keys"].items()}
        return cls(keys, data["current"])

    @staticmethod
    def _add_key(path: Path, data: dict[str, Any]) -> str:
        kid = secrets.token_hex(6)
        keys = dict(data.get("keys", {}))
        keys[kid] = base64.b64encode(secrets.token_bytes(32)).decode()
        write_private(path, json.dumps({"current": kid, "keys": keys}, indent=2))
        return kid

    @classmethod
    def rotate(cls, settings: Settings, keep: int = 3) -> str:
        """Add a new current key; keep the last ``keep`` keys so live tokens still verify."""
        if settings.auth.jwt_secret is not None:
            raise ValueError("keys come from auth.jwt_secret: change that setting to rotate")
        path = secrets_dir(settings) / "jwt-keys.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        kid = cls._add_key(path, data)
        data = json.loads(path.read_text())
        kids = list(data["keys"])[-keep:]
        write_private(
            path, json.dumps({"current": kid, "keys": {k: data["keys"][k] for k in kids}}, indent=2)
        )
        return kid

    def issue(self, user_id: str, session_id: str, ttl_seconds: int) -> tuple[str, int]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user_id,
            "sid": session_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": secrets.token_hex(8),
            "typ": "access",
        }
        token = jwt.encode(
            claims, self.keys[self.current], algorithm=ALGORITHM, headers={"kid": self.current}
        )
        return token, now + ttl_seconds

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid token, or None (expired, tampered, unknown key, other alg…)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "sid", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != "access" or not isinstance(claims.get("sid"), str):
            return None
        return AccessClaims(str(claims["sub"]), claims["sid"], float(claims["exp"]))
