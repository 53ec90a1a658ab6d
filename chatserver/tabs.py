"""Multi-tab strategies: how the tabs of one client share the session they name.

The client names one session for all its tabs (the widget keeps one per browser) and each
tab by a random tab id. The named session's metadata `tab_strategy` decides:

- `shared` (default): every tab runs in the named session. One expiry, kept alive by any
  tab; one count of turns and resumes; closing it ends it for every tab.
- `active_tab_wins`: as `shared`, and a tab that opens the thread's event stream ends the
  older tab's stream with `session.superseded` (the HTTP layer's stream registry).
- `per_tab`: each tab runs in a session of its own, made for it on its first request and
  found again from the same (user, named session, tab id) on every later one, so a reloaded
  tab keeps it. A tab session starts with the named session's metadata (policy included)
  plus `tab_of` and `tab_id`; from then on it has its own expiry, counts and state: an idle
  tab expires while a busy one lives on, closing one tab's session leaves the others alone,
  turns count per tab, and `respond()` sees the tab's session in `context.session`. The
  named session is still touched by every request of every tab: it stays the browser's,
  and closing it (or its expiry) ends every tab at their next request.

Threads belong to the user, not to a session, so every tab sees the same conversations.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

from chatserver.errors import BadRequest
from chatserver.sessions import RequestContext, Session, SessionManager

TabStrategy = Literal["shared", "per_tab", "active_tab_wins"]
TAB_STRATEGIES: tuple[str, ...] = get_args(TabStrategy)

# A tab session's metadata names its named session and its tab.
TAB_OF_KEY = "tab_of"
TAB_ID_KEY = "tab_id"

_TAB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def tab_strategy(session: Session) -> TabStrategy:
    value = session.metadata.get("tab_strategy")
    return cast(TabStrategy, value) if value in TAB_STRATEGIES else "shared"


def check_tab_strategy(metadata: Mapping[str, Any]) -> None:
    strategy = metadata.get("tab_strategy")
    if strategy is not None and strategy not in TAB_STRATEGIES:
        raise BadRequest(
            f"unknown tab_strategy {strategy!r}; known strategies: {', '.join(TAB_STRATEGIES)}"
        )


def check_tab_id(tab_id: str) -> str:
    if not _TAB_ID.fullmatch(tab_id):
        raise BadRequest("a tab id is 1 to 64 characters among A-Z, a-z, 0-9, '_' and '-'")
    return tab_id


def tab_session_id(user_id: str, session_id: str, tab_id: str) -> str:
    """The same for the same user, named session and tab; unguessable from the tab id alone,
    and never one the user could name for another of their tabs by accident."""
    digest = hashlib.sha256("\x00".join((user_id, session_id, tab_id)).encode()).digest()
    return "ses_tab" + base64.urlsafe_b64encode(digest[:24]).decode()


async def tab_context(
    sessions: SessionManager, named: RequestContext, tab_id: str | None
) -> RequestContext:
    """The context a request of tab `tab_id` runs in, given the context of the session it
    named: the tab's own session under `per_tab`, the named one otherwise (or without a tab
    id). Raises as `SessionManager.context` does when the tab's session has ended."""
    if tab_id is None or tab_strategy(named.session) != "per_tab":
        return named
    inherited = {k: v for k, v in named.session.metadata.items() if k != "tab_strategy"}
    return await sessions.context(
        named.user_id,
        tab_session_id(named.user_id, named.session.id, tab_id),
        {**inherited, TAB_OF_KEY: named.session.id, TAB_ID_KEY: tab_id},
        request_metadata=named.metadata,
    )
