"""The states a session, thread, run or item can be in: one enum each, stored as its value."""

from __future__ import annotations

from enum import StrEnum


class SessionState(StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    RESUMED = "resumed"
    EXPIRED = "expired"
    CLOSED = "closed"
    CLEANED_UP = "cleaned_up"


LIVE_SESSION_STATES = frozenset({SessionState.CREATED, SessionState.ACTIVE, SessionState.RESUMED})
# Ended, data still there: the cleanup strategy decides when they become tombstones.
ENDED_SESSION_STATES = frozenset({SessionState.EXPIRED, SessionState.CLOSED})


class EndReason(StrEnum):
    """Why a session ended; its tombstone keeps it."""

    EXPIRED = "expired"
    CLOSED = "closed"


class ThreadStatus(StrEnum):
    IDLE = "idle"
    # A run holds the thread (`threads.active_run_id`).
    RUNNING = "running"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


OPEN_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class ItemStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
