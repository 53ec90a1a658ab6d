"""What an operator reads: Prometheus metrics of one process (`GET /metrics`) and analytics
of every session in the database (`GET /stats`, `chatserver stats`).

The metrics stay off the hot path's back: a request bumps a counter and a histogram, a
committed batch of events one counter; the gauges of this process (open streams, running
turns) are read when scraped, and the session gauges come from the database at most once
per `cache_seconds`, however often Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from chatserver.reaper import ReapReport
from chatserver.server import ChatServer
from chatserver.statuses import SessionState
from chatserver.store.analytics import SessionStats

# A path no route matched: one label value, so scanners cannot blow up the series count.
UNMATCHED_ROUTE = "unmatched"


class Metrics:
    def __init__(
        self,
        server: ChatServer,
        open_streams: Callable[[], int],
        *,
        cache_seconds: float = 5.0,
    ) -> None:
        self._server = server
        self._cache = timedelta(seconds=cache_seconds)
        self._sessions_read_at: datetime | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "chatserver_http_requests",
            "HTTP responses started, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "chatserver_http_request_duration_seconds",
            "Seconds from a request's arrival to the start of its response (the headers, for "
            "a stream), by route template and method.",
            ["route", "method"],
            registry=registry,
        )
        self.events_appended = Counter(
            "chatserver_events_appended",
            "Events committed to thread event logs by this process.",
            registry=registry,
        )
        self.reaper_runs = Counter(
            "chatserver_reaper_runs",
            "Reaper passes of this process; `skipped`: another instance held the lock.",
            ["result"],
            registry=registry,
        )
        self.reaper_rows = Counter(
            "chatserver_reaper_rows",
            "Rows the reaper of this process handled, by what it did to them.",
            ["action"],
            registry=registry,
        )
        Gauge(
            "chatserver_streams_open",
            "SSE streams this process is serving now.",
            registry=registry,
        ).set_function(open_streams)
        Gauge(
            "chatserver_turns_running",
            "Turns this process is running now (not counting queued ones).",
            registry=registry,
        ).set_function(lambda: server.runs.running)
        self.sessions = Gauge(
            "chatserver_sessions",
            "Sessions in the database by state (every instance reports the same).",
            ["state"],
            registry=registry,
        )
        self.sessions_active = Gauge(
            "chatserver_sessions_active",
            "Live sessions in the database not yet past their expiry.",
            registry=registry,
        )
        for label in ("reaped", "skipped"):
            self.reaper_runs.labels(label)
        for action in ("expired", "cleaned_up", "thread_deleted"):
            self.reaper_rows.labels(action)

    def instrument(self, server: ChatServer) -> None:
        """Count the events `server` commits."""
        server.events.on_committed.append(lambda _thread, count: self.events_appended.inc(count))

    def record_pass(self, report: ReapReport) -> None:
        if not report.reaped:
            self.reaper_runs.labels("skipped").inc()
            return
        self.reaper_runs.labels("reaped").inc()
        self.reaper_rows.labels("expired").inc(report.expired)
        self.reaper_rows.labels("cleaned_up").inc(report.cleaned_up)
        self.reaper_rows.labels("thread_deleted").inc(report.threads_deleted)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """What a scrape gets and its content type (the format its Accept header prefers:
        Prometheus text 0.0.4 by default, OpenMetrics on request); the session gauges are
        at most `cache_seconds` old (by the server's clock)."""
        now = self._server.clock.now()
        if self._sessions_read_at is None or now - self._sessions_read_at >= self._cache:
            gauges = await self._server.store.session_gauges(now)
            for state in SessionState:
                self.sessions.labels(state.value).set(gauges.by_state.get(state.value, 0))
            self.sessions_active.set(gauges.active_now)
            self._sessions_read_at = now
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def stats_document(
    stats: SessionStats, *, generated_at: datetime, hours: int, policies: list[str]
) -> dict[str, Any]:
    """`/stats` and `chatserver stats --json`: every state and known policy listed, zero
    or not, so a client can rely on the keys."""
    durations = stats.durations
    return {
        "generated_at": generated_at.isoformat(),
        "window": {"hours": hours, "start": stats.window_start.isoformat()},
        "sessions": {
            "total": stats.total,
            "by_state": {state.value: stats.by_state.get(state.value, 0) for state in SessionState},
            "by_policy": {p: stats.by_policy.get(p, 0) for p in policies} | dict(stats.by_policy),
            "active_now": stats.active_now,
            "resumes": stats.resumes,
            "turns": stats.turns,
            "duration_seconds": {
                "ended_in_window": durations.count,
                "average": durations.average,
                "p50": durations.p50,
                "p95": durations.p95,
            },
        },
        "top_users": [
            {
                "user_id": user.user_id,
                "sessions": user.sessions,
                "turns": user.turns,
                "resumes": user.resumes,
            }
            for user in stats.top_users
        ],
        "hourly": [
            {
                "hour": hour.hour.isoformat(),
                "expired": hour.expired,
                "closed": hour.closed,
                "cleaned_up": hour.cleaned_up,
            }
            for hour in stats.hourly
        ],
    }
