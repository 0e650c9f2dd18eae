"""The auth service: accounts (auth/accounts.py), sessions (auth/sessions.py) and API keys
(auth/keys.py) over one base (auth/base.py); credentials → Principal."""

from __future__ import annotations

from concilium.auth.accounts import Accounts
from concilium.auth.base import API_KEY_PREFIX
from concilium.auth.keys import ApiKeys, IssuedKey
from concilium.auth.principal import Principal
from concilium.auth.sessions import Login, Sessions

__all__ = ["AuthService", "IssuedKey", "Login"]


class AuthService(Accounts, Sessions, ApiKeys):
    async def principal_from_token(self, token: str, ip: str | None) -> Principal:
        """Who presents this bearer token: an API key (``{API_KEY_PREFIX}…``) or a
        session's access token. Refusals are audited and all look alike (401)."""
        if token.startswith(API_KEY_PREFIX):
            return await self._principal_from_key(token, ip)
        return await self._principal_from_session(token, ip)
