"""What every endpoint needs, built once per app by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from chatserver.config import Settings
from chatserver.http.auth import Authenticator
from chatserver.http.sse import StreamRegistry
from chatserver.metrics import Metrics
from chatserver.reaper import Reaper
from chatserver.server import ChatServer


@dataclass(frozen=True, slots=True)
class Services:
    server: ChatServer
    settings: Settings
    authenticate: Authenticator
    streams: StreamRegistry
    metrics: Metrics
    reaper: Reaper
