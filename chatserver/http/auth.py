"""Who is asking: the `authenticate(request) -> user_id` hook and its default.

The default serves both kinds of client. API clients send `Authorization: Bearer <token>`
(tokens from `Settings.bearer_tokens`); any other `Authorization` is refused (401), never
taken for an anonymous user. The browser widget, sending none, is an anonymous user kept in a
signed, HttpOnly cookie minted on its first request.

Anonymous users have a namespace of their own: the cookie carries a random token and the user
is `anon_<token>`, where the token must be exactly what we mint, and no configured user id may
start with `anon_`; so no cookie, whatever key signed it, can name a bearer user.

The cookie's key is `Settings.secret_key`, or else one generated on first start and kept in
the database for every instance (`chatserver rotate-secret` replaces it; instances re-read it
every `secret_refresh_seconds`). The cookie lives `anonymous_cookie_seconds` and is renewed
when used after a quarter of that; rotating the key ends every anonymous identity at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from contextlib import suppress

from itsdangerous import BadSignature, TimestampSigner
from starlette.requests import Request

from chatserver.clock import Clock
from chatserver.config import ANONYMOUS_PREFIX, Settings
from chatserver.errors import Unauthorized
from chatserver.http.middleware import add_response_header
from chatserver.store import Store
from chatserver.store import secrets as stored_secrets

logger = logging.getLogger(__name__)

Authenticator = Callable[[Request], Awaitable[str]]

USER_COOKIE = "chatserver_user"
_SALT = "chatserver.anonymous-user"
_TOKEN = re.compile(r"[0-9a-f]{32}")
# A cookie used after this share of its lifetime is issued again, fresh.
_RENEW_AFTER = 0.25


def new_secret_key() -> str:
    return secrets.token_urlsafe(48)


class _ClockSigner(TimestampSigner):
    """itsdangerous reads the system time; ours comes from the server's clock."""

    def __init__(self, key: str, clock: Clock) -> None:
        super().__init__(key, salt=_SALT, digest_method=hashlib.sha256)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock.now().timestamp())


class AnonymousCookies:
    """Issues and reads the anonymous-user cookie's value: `<token>.<timestamp>.<signature>`."""

    def __init__(self, key: str, clock: Clock, lifetime_seconds: int) -> None:
        self._signer = _ClockSigner(key, clock)
        self._lifetime = lifetime_seconds

    def issue(self, token: str) -> str:
        return self._signer.sign(token).decode("ascii")

    def read(self, value: str) -> tuple[str, int] | None:
        """The token and the cookie's age in seconds; None if forged, malformed or expired."""
        try:
            payload, signed_at = self._signer.unsign(value, return_timestamp=True)
        except BadSignature:
            return None
        token = payload.decode("ascii", "replace")
        if not _TOKEN.fullmatch(token):
            return None
        # Instances' clocks differ a little: a cookie from a second ahead is fresh, not invalid.
        age = max(0, self._signer.get_timestamp() - int(signed_at.timestamp()))
        if age > self._lifetime:
            return None
        return token, age


class DefaultAuthenticator:
    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self._tokens = settings.bearer_token_users()
        self._configured_key = settings.secret_key
        self._store = store
        self._clock = clock
        self._lifetime = settings.anonymous_cookie_seconds
        self._refresh_seconds = settings.secret_refresh_seconds
        self._key: str | None = None
        self._cookies: AnonymousCookies | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the cookie key (generating the shared one if there is none yet); before serving."""
        if self._configured_key is not None:
            self._use(self._configured_key.get_secret_value())
            return
        key, created = await stored_secrets.get_or_create(
            self._store, stored_secrets.COOKIE_KEY, new_secret_key(), self._clock.now()
        )
        if created:
            logger.warning(
                "no secret_key configured: generated a random cookie signing key and stored it "
                "in the database, where every instance finds it"
            )
        self._use(key)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="cookie-key-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def refresh(self) -> None:
        """Pick up a key rotated by `chatserver rotate-secret` (on any instance)."""
        key = await stored_secrets.get(self._store, stored_secrets.COOKIE_KEY)
        if key is not None and key != self._key:
            logger.warning("the cookie signing key was rotated: earlier anonymous cookies end")
            self._use(key)

    async def __call__(self, request: Request) -> str:
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return self._bearer_user(authorization)
        cookies = self._cookies
        if cookies is None:
            raise RuntimeError("DefaultAuthenticator.start() was not awaited")
        value = request.cookies.get(USER_COOKIE)
        found = cookies.read(value) if value is not None else None
        if found is None:
            # No identity yet, a forged or an expired one: a fresh user, never someone else.
            token = secrets.token_hex(16)
            self._set_cookie(request, cookies.issue(token))
        else:
            token, age = found
            if age >= self._lifetime * _RENEW_AFTER:
                self._set_cookie(request, cookies.issue(token))
        return ANONYMOUS_PREFIX + token

    def _use(self, key: str) -> None:
        self._key = key
        self._cookies = AnonymousCookies(key, self._clock, self._lifetime)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                logger.exception(
                    "could not re-read the cookie signing key; keeping the current one"
                )

    def _bearer_user(self, authorization: str) -> str:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be `Bearer <token>`")
        # Compare with every configured token in constant time: no early exit on a prefix.
        found = None
        for known, user_id in self._tokens.items():
            if secrets.compare_digest(known.encode(), token.encode()):
                found = user_id
        if found is None:
            raise Unauthorized("unknown bearer token")
        return found

    def _set_cookie(self, request: Request, value: str) -> None:
        secure = "; Secure" if request.url.scheme == "https" else ""
        add_response_header(
            request,
            "set-cookie",
            f"{USER_COOKIE}={value}; Max-Age={self._lifetime}; Path=/; HttpOnly; SameSite=Lax"
            f"{secure}",
        )
