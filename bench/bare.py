"""The floor: a bare starlette + sse-starlette echo that persists nothing.

It answers `threads.create` and `threads.add_user_message` with the same ChatKit events as the
others (the thread, the user's message, the answer word by word, the title on the first
turn), built as plain dicts and written one event per `send`. Nothing is validated beyond
what the echo needs and nothing is stored but the thread ids it handed out: what is left is
the cost of HTTP, SSE and JSON in Python, which a durable server can approach but hardly beat
unless it sends several events per `send`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_TITLE_LENGTH = 40
_WORD = re.compile(r"\S+\s*")


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def app(*, word_delay: float, tokens: dict[str, str]) -> Starlette:
    # thread id -> (owner, title); lost on restart, which is the point.
    threads: dict[str, tuple[str, str | None]] = {}

    async def chatkit(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        user_id = tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user_id is None:
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        body = json.loads(await request.body())
        params = body.get("params", {})
        text = " ".join(
            part["text"] for part in params["input"]["content"] if part["type"] == "input_text"
        )
        if body["type"] == "threads.create":
            thread_id = f"thr_{uuid.uuid4().hex[:8]}"
            threads[thread_id] = (user_id, None)
            created = True
        elif body["type"] == "threads.add_user_message":
            thread_id = params["thread_id"]
            if threads.get(thread_id, ("", None))[0] != user_id:
                return JSONResponse({"error": {"code": "thread_not_found"}}, status_code=404)
            created = False
        else:
            return JSONResponse({"error": {"code": "not_supported"}}, status_code=400)
        return EventSourceResponse(turn(user_id, thread_id, text, created))

    async def turn(
        user_id: str, thread_id: str, text: str, created: bool
    ) -> AsyncIterator[dict[str, str]]:
        now = datetime.now().isoformat()
        thread: dict[str, Any] = {"id": thread_id, "created_at": now, "status": {"type": "active"}}
        if created:
            items = {"data": [], "has_more": False}
            yield {"data": _dumps({"type": "thread.created", "thread": {**thread, "items": items}})}
        user_item = {
            "id": f"msg_{uuid.uuid4().hex[:8]}",
            "thread_id": thread_id,
            "created_at": now,
            "type": "user_message",
            "content": [{"type": "input_text", "text": text}],
            "attachments": [],
            "inference_options": {},
        }
        yield {"data": _dumps({"type": "thread.item.done", "item": user_item})}
        item_id = f"msg_{uuid.uuid4().hex[:8]}"
        answer = {
            "id": item_id,
            "thread_id": thread_id,
            "created_at": datetime.now().isoformat(),
            "type": "assistant_message",
            "content": [],
        }
        yield {"data": _dumps({"type": "thread.item.added", "item": answer})}
        yield _update(
            item_id, "added", content={"annotations": [], "text": "", "type": "output_text"}
        )
        words: list[str] = []
        for word in _WORD.findall(text):
            if word_delay:
                await asyncio.sleep(word_delay)
            words.append(word)
            yield _update(item_id, "text_delta", delta=word)
        content = {"annotations": [], "text": "".join(words), "type": "output_text"}
        yield _update(item_id, "done", content=content)
        yield {
            "data": _dumps({"type": "thread.item.done", "item": {**answer, "content": [content]}})
        }
        owner, title = threads[thread_id]
        if title is None:
            threads[thread_id] = (owner, text[:_TITLE_LENGTH])
            thread["title"] = text[:_TITLE_LENGTH]
            thread["items"] = {"data": [], "has_more": False}
            yield {"data": _dumps({"type": "thread.updated", "thread": thread})}

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/chatkit", chatkit, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", healthz, methods=["GET"]),
        ]
    )


def _update(item_id: str, kind: str, **fields: Any) -> dict[str, str]:
    update = {"type": f"assistant_message.content_part.{kind}", "content_index": 0, **fields}
    return {"data": _dumps({"type": "thread.item.updated", "item_id": item_id, "update": update})}
