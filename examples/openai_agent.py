"""An agent on any OpenAI-compatible model, with one tool: what time it is anywhere.

Run it (from the repository root, after `pip install -e .`) against OpenAI:

    CHATSERVER_OPENAI_API_KEY=sk-... .venv/bin/python examples/openai_agent.py

or against a model of your own, e.g. Ollama (`ollama pull llama3.2` first):

    CHATSERVER_OPENAI_BASE_URL=http://localhost:11434/v1 CHATSERVER_OPENAI_MODEL=llama3.2 \
      .venv/bin/python examples/openai_agent.py

then ask it on http://127.0.0.1:8000:

    curl -N -H 'Authorization: Bearer demo' http://127.0.0.1:8000/chatkit -d \
      '{"type":"threads.create","params":{"input":{"content":[{"type":"input_text",
        "text":"What time is it in Tokyo?"}]}}}'

The answer streams in; the tool call shows as a workflow item. The database is SQLite in
./openai_agent.db. Every CHATSERVER_* setting applies (see .env.example).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import uvicorn
from starlette.applications import Starlette

from chatserver import (
    Clock,
    OpenAIChatServer,
    RequestContext,
    Settings,
    Store,
    ToolError,
    create_app,
    tool,
)


@tool
async def current_time(context: RequestContext, timezone: str) -> str:
    """The current date and time in an IANA time zone, such as Europe/Paris or Asia/Tokyo."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"{timezone!r} is not an IANA time zone name") from None
    return context.clock.now().astimezone(zone).isoformat(timespec="minutes")


class TimeAgent(OpenAIChatServer):
    system_prompt = (
        "You are a concise assistant. For any question about the date or time somewhere, "
        "call current_time with that place's IANA time zone."
    )
    tools = (current_time,)


def build_app(settings: Settings, *, clock: Clock | None = None) -> Starlette:
    return create_app(TimeAgent(Store(settings.database_url), settings, clock=clock), migrate=True)


def main() -> None:
    settings = Settings(
        database_url="sqlite+aiosqlite:///./openai_agent.db", bearer_tokens="demo:demo-user"
    )
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
