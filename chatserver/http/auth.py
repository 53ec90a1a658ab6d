"""Who is asking: the `authenticate(request) -> user_id` hook and its default.

The default serves both kinds of client: API clients send `Authorization: Bearer <token>`
(tokens from `Settings.bearer_tokens`); the browser widget gets an anonymous user id kept in a
signed, HttpOnly cookie, minted on its first request.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request

from chatserver.config import Settings
from chatserver.errors import Unauthorized
from chatserver.http.middleware import add_response_header

Authenticator = Callable[[Request], Awaitable[str]]

USER_COOKIE = "chatserver_user"
_COOKIE_MAX_AGE = 365 * 24 * 60 * 60
_SALT = "chatserver.user-cookie"


class DefaultAuthenticator:
    def __init__(self, settings: Settings) -> None:
        self._tokens = settings.bearer_token_users()
        self._signer = URLSafeSerializer(settings.secret_key.get_secret_value(), salt=_SALT)

    async def __call__(self, request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self._bearer_user(token.strip())
        # Any other scheme (say, Basic auth of a proxy in front) is not ours to judge.
        cookie = request.cookies.get(USER_COOKIE)
        if cookie is not None:
            try:
                user_id = self._signer.loads(cookie)
            except BadSignature:
                user_id = None
            if isinstance(user_id, str):
                return user_id
        # No identity yet, or a forged one: a fresh anonymous user, never someone else's.
        user_id = f"anon_{uuid.uuid4().hex}"
        add_response_header(request, "set-cookie", self._cookie(request, user_id))
        return user_id

    def _bearer_user(self, token: str) -> str:
        # Compare with every configured token in constant time: no early exit on a prefix.
        found = None
        for known, user_id in self._tokens.items():
            if secrets.compare_digest(known.encode(), token.encode()):
                found = user_id
        if found is None:
            raise Unauthorized("unknown bearer token")
        return found

    def _cookie(self, request: Request, user_id: str) -> str:
        value = self._signer.dumps(user_id)
        secure = "; Secure" if request.url.scheme == "https" else ""
        return (
            f"{USER_COOKIE}={value}; Max-Age={_COOKIE_MAX_AGE}; Path=/; HttpOnly; SameSite=Lax"
            f"{secure}"
        )
