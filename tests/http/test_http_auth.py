"""Identity: bearer tokens or a signed anonymous cookie, never a key anyone knows, never a
cookie that names a bearer user; a lifetime that slides with use; rotation ends them all."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from http_harness import LiveServer, create_thread, eventually, request, stream
from itsdangerous import URLSafeSerializer

from chatserver.clock import ManualClock
from chatserver.http.auth import USER_COOKIE, AnonymousCookies
from chatserver.store import models

KEY = "k" * 40
HOUR = 3600


async def as_visitor(
    live: LiveServer, cookie: str | None, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """One request from a browser holding `cookie` (or none), outside any cookie jar."""
    headers = {} if cookie is None else {"Cookie": f"{USER_COOKIE}={cookie}"}
    async with httpx.AsyncClient(base_url=live.url, headers=headers, timeout=10) as client:
        return await client.request(method, path, **kwargs)


def issued_cookie(response: httpx.Response) -> str | None:
    header = response.headers.get("set-cookie")
    if header is None:
        return None
    name, _, rest = header.partition("=")
    assert name == USER_COOKIE
    return rest.split(";", 1)[0]


async def stored_secrets(live: LiveServer) -> list[tuple[str, str]]:
    table = models.server_secrets
    async with live.store.read() as conn:
        return [tuple(row) for row in await conn.execute(sa.select(table.c.name, table.c.value))]


async def alice_has_a_thread(live: LiveServer) -> None:
    await stream(live.client("alice"), create_thread("alice's secret"))


async def threads_seen_with(live: LiveServer, cookie: str) -> tuple[list[Any], str | None]:
    answer = await as_visitor(live, cookie, "POST", "/chatkit", json=request("threads.list"))
    assert answer.status_code == 200, answer.text
    return answer.json()["data"], issued_cookie(answer)


# -- the signing key -----------------------------------------------------------------------


async def test_a_cookie_forged_with_the_former_default_key_reads_no_ones_threads(
    live: LiveServer,
) -> None:
    await alice_has_a_thread(live)
    forged = URLSafeSerializer("change-me-in-production", salt="chatserver.user-cookie")

    threads, fresh = await threads_seen_with(live, forged.dumps("alice"))

    assert threads == []
    assert fresh is not None


async def test_no_cookie_can_name_a_bearer_user_whatever_key_signed_it(start_server: Any) -> None:
    live: LiveServer = await start_server(secret_key=KEY)
    await alice_has_a_thread(live)
    forgeries = [
        URLSafeSerializer(KEY, salt="chatserver.user-cookie").dumps("alice"),
        AnonymousCookies(KEY, live.clock, HOUR).issue("alice"),
        AnonymousCookies(KEY, live.clock, HOUR).issue("anon_" + "0" * 32),
        AnonymousCookies("another key of forty characters........", live.clock, HOUR).issue(
            "0" * 32
        ),
    ]

    seen = [await threads_seen_with(live, forged) for forged in forgeries]

    assert [threads for threads, _ in seen] == [[]] * len(forgeries)
    assert all(fresh is not None for _, fresh in seen)


async def test_without_a_configured_key_instances_generate_one_shared_key_and_say_so(
    start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chatserver.http.auth")

    first, second = await asyncio.gather(start_server(), start_server())

    secrets = await stored_secrets(first)
    assert [name for name, _ in secrets] == ["cookie_signing_key"]
    assert len(secrets[0][1]) >= 32
    generated = [r for r in caplog.records if "generated a random cookie signing key" in r.message]
    assert len(generated) == 1
    created = await as_visitor(first, None, "POST", "/sessions", json={})
    session_url = f"/sessions/{created.json()['id']}"
    elsewhere = await as_visitor(second, issued_cookie(created), "GET", session_url)
    assert elsewhere.status_code == 200
    assert "set-cookie" not in elsewhere.headers


async def test_a_configured_key_signs_the_cookies_and_nothing_is_stored(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(secret_key=KEY)

    created = await as_visitor(live, None, "POST", "/sessions", json={})

    cookie = issued_cookie(created)
    assert cookie is not None
    assert AnonymousCookies(KEY, live.clock, HOUR).read(cookie) is not None
    assert await stored_secrets(live) == []


# -- Authorization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer tok-alice tok-bob",
        "Bearer nobody",
        "tok-alice",
        "Token tok-alice",
        "",
    ],
)
async def test_an_authorization_that_is_not_a_known_bearer_token_is_401(
    live: LiveServer, authorization: str
) -> None:
    answer = await as_visitor(
        live,
        None,
        "POST",
        "/chatkit",
        json=request("threads.list"),
        headers={"Authorization": authorization},
    )

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "set-cookie" not in answer.headers
    async with live.store.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(models.sessions)) == 0


async def test_a_known_bearer_token_in_any_case_of_its_scheme_is_its_user(
    live: LiveServer,
) -> None:
    await alice_has_a_thread(live)

    answer = await as_visitor(
        live,
        None,
        "POST",
        "/chatkit",
        json=request("threads.list"),
        headers={"Authorization": "bearer tok-alice"},
    )

    assert len(answer.json()["data"]) == 1
    assert "set-cookie" not in answer.headers


# -- lifetime, renewal, rotation -----------------------------------------------------------


async def test_the_anonymous_cookie_expires_unless_used_and_is_renewed_when_used(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(anonymous_cookie_seconds=HOUR)
    created = await as_visitor(
        live, None, "POST", "/sessions", json={"metadata": {"timeout_policy": "persistent"}}
    )
    first = issued_cookie(created)
    session_url = f"/sessions/{created.json()['id']}"

    async def visit(cookie: str | None) -> tuple[int, str | None]:
        answer = await as_visitor(live, cookie, "GET", session_url)
        return answer.status_code, issued_cookie(answer)

    live.clock.advance(HOUR / 4 - 1)
    assert await visit(first) == (200, None)  # young: not re-issued
    live.clock.advance(1)
    status, renewed = await visit(first)
    assert (status, renewed is not None, renewed != first) == (200, True, True)

    live.clock.advance(HOUR * 3 / 4 + 1)  # the first cookie is now older than its lifetime
    status, fresh = await visit(first)
    assert (status, fresh is not None) == (404, True)
    status, renewed_again = await visit(renewed)
    assert (status, renewed_again is not None) == (200, True)

    live.clock.advance(HOUR + 1)  # unused for longer than its lifetime
    status, fresh = await visit(renewed_again)
    assert (status, fresh is not None) == (404, True)
    assert await visit(fresh) == (404, None)  # a new user, not the old one back


def test_a_cookie_from_an_instance_whose_clock_runs_ahead_is_fresh() -> None:
    ahead, behind = ManualClock(), ManualClock()
    ahead.advance(5)

    cookie = AnonymousCookies(KEY, ahead, HOUR).issue("0" * 32)

    assert AnonymousCookies(KEY, behind, HOUR).read(cookie) == ("0" * 32, 0)
    behind.advance(5 + HOUR)
    assert AnonymousCookies(KEY, behind, HOUR).read(cookie) == ("0" * 32, HOUR)
    behind.advance(1)
    assert AnonymousCookies(KEY, behind, HOUR).read(cookie) is None


def rotate_secret(database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    return subprocess.run(
        [sys.executable, "-m", "chatserver", "rotate-secret", "--database-url", database_url],
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_rotate_secret_ends_every_anonymous_identity_on_every_instance(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(secret_refresh_seconds=0.05)
    other: LiveServer = await start_server(secret_refresh_seconds=0.05)
    created = await as_visitor(live, None, "POST", "/sessions", json={})
    cookie = issued_cookie(created)
    session_url = f"/sessions/{created.json()['id']}"
    [(_, old_key)] = await stored_secrets(live)

    rotated = await asyncio.to_thread(rotate_secret, live.settings.database_url)

    assert rotated.returncode == 0, rotated.stderr
    assert "rotated the cookie signing key" in rotated.stdout
    [(_, new_key)] = await stored_secrets(live)
    assert new_key != old_key
    for instance in (live, other):

        async def forgotten(instance: LiveServer = instance) -> bool:
            answer = await as_visitor(instance, cookie, "GET", session_url)
            return answer.status_code == 404

        await eventually(forgotten)
    created = await as_visitor(live, None, "POST", "/sessions", json={})
    mine = f"/sessions/{created.json()['id']}"
    again = await as_visitor(other, issued_cookie(created), "GET", mine)
    assert again.status_code == 200


def test_rotate_secret_refuses_when_the_key_is_configured(tmp_path: Path) -> None:
    refused = rotate_secret(
        f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", CHATSERVER_SECRET_KEY=KEY
    )

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    assert "CHATSERVER_SECRET_KEY" in refused.stderr
