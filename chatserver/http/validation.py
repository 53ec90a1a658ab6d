"""What the HTTP edge refuses before anything reaches the database.

Ids (thread, item, session, run; and the cursors that are ids) must have our format: a
malformed one is 400 `invalid_id`, whatever the endpoint, never a lookup that answers 404 on
one backend and fails on another (PostgreSQL cannot even compare a text holding NUL).

Titles and session metadata may not hold the NUL character (U+0000): PostgreSQL's text and
JSONB cannot store it, escaped or not, so it is refused (400 `invalid_request`) on every
backend alike rather than stored on one and lost on the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatserver.errors import BadRequest, ErrorCode
from chatserver.ids import IdKind, is_valid_id

_NUL = "\x00"


def require_id(kind: IdKind, value: str, name: str) -> str:
    if not is_valid_id(kind, value):
        raise BadRequest(f"{name} {value!r} is not a valid {kind}_ id", ErrorCode.INVALID_ID)
    return value


def require_text(value: str, name: str) -> str:
    if _NUL in value:
        raise BadRequest(f"{name} must not contain the NUL character (U+0000)")
    return value


def require_storable(metadata: Mapping[str, Any], name: str = "metadata") -> None:
    """Every key and string value of a JSON document, at any depth, is free of NUL."""
    pending: list[tuple[str, Any]] = [(name, metadata)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            require_text(value, where)
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                require_text(key, f"the keys of {where}")
                pending.append((f"{where}.{key}", inner))
        elif isinstance(value, list):
            pending.extend((f"{where}[{index}]", inner) for index, inner in enumerate(value))
