"""Prefixed, time-sortable, collision-safe ids (ULID layout: 48-bit ms time + 80 random bits).

Sortable ids let items and threads page by id alone; ids made in one process within the same
millisecond stay strictly increasing, so "created later" always means "greater id".
"""

from __future__ import annotations

import os
import re
import threading
import time
from enum import StrEnum

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_BITS = 80
_ID_BODY = re.compile(r"[0-9a-hjkmnp-tv-z]{26}")


class IdKind(StrEnum):
    SESSION = "ses"
    THREAD = "thr"
    ITEM = "itm"
    RUN = "run"


class _Monotonic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        millis = time.time_ns() // 1_000_000
        value = (millis << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
        with self._lock:
            if value <= self._last:
                value = self._last + 1
            self._last = value
        return value


_generator = _Monotonic()


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(kind: IdKind) -> str:
    return f"{kind}_{_encode(_generator.next())}"


# Client-chosen session ids (the widget makes one per browser) need not be ours, but must be
# safe to log, to put in a header and to use as a lock key.
# fullmatch, not match with `$`: `$` also matches before a trailing newline.
_CLIENT_SESSION_ID = re.compile(r"ses_[A-Za-z0-9_-]{8,64}")


def is_valid_id(kind: IdKind, value: str) -> bool:
    if kind is IdKind.SESSION:
        return bool(_CLIENT_SESSION_ID.fullmatch(value))
    prefix, sep, body = value.partition("_")
    return sep == "_" and prefix == kind and bool(_ID_BODY.fullmatch(body))
