"""Recorded ChatKit traffic replayed against our server: every request is accepted, every answer
parses with ChatKit's types, and where the reference cut a stream we answer a real 404."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from http_harness import (
    CHATKIT_SHAPES,
    SAMPLES,
    Event,
    LiveServer,
    SseReader,
    thread_id_of,
    validate_event,
)

from chatserver.ids import IdKind, new_id

_SAMPLE_ID = re.compile(r"^(thr|msg)_[0-9a-f]{8}$")
_DISCONNECT_AFTER_DELTAS = 5


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _rewrite(item, ids) for key, item in value.items()}
    if isinstance(value, list):
        return [_rewrite(item, ids) for item in value]
    if isinstance(value, str) and (value in ids or _SAMPLE_ID.match(value)):
        return ids[value]
    return value


def _learn_ids(recorded: Any, ours: Any, ids: dict[str, str]) -> None:
    """Walk a recorded answer and ours side by side: their ids map to ours by position."""
    if isinstance(recorded, dict) and isinstance(ours, dict):
        for key, item in recorded.items():
            if key in ours:
                _learn_ids(item, ours[key], ids)
    elif isinstance(recorded, list) and isinstance(ours, list):
        for theirs, mine in zip(recorded, ours, strict=False):
            _learn_ids(theirs, mine, ids)
    elif isinstance(recorded, str) and _SAMPLE_ID.match(recorded) and isinstance(ours, str):
        ids.setdefault(recorded, ours)


def _recorded_events(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data:")]


def _shape(events: list[dict[str, Any]]) -> list[str]:
    """ChatKit event types in order, repeated deltas collapsed, our extension events left out."""
    shape: list[str] = []
    for event in events:
        kind = event["type"]
        if kind.startswith("run."):
            continue
        if kind == "thread.item.updated":
            kind += ":" + event["update"]["type"].rsplit(".", 1)[-1]
        if not shape or shape[-1] != kind:
            shape.append(kind)
    return shape


async def _replay_stream(
    live: LiveServer, step: str, body: dict[str, Any], ids: dict[str, str]
) -> list[Event]:
    client = live.client()
    dropped: list[str] = []
    if body["type"] == "threads.retry_after_item":
        params = body["params"]
        dropped = await live.store.item_ids_after(params["thread_id"], params["item_id"])
    async with client.stream("POST", "/chatkit", json=body) as response:
        assert response.status_code == 200, (step, await response.aread())
        reader = SseReader(response)
        if "disconnect" in step:
            events = []
            deltas = 0
            while deltas < _DISCONNECT_AFTER_DELTAS:
                event = await anext(reader)
                events.append(event)
                deltas += event.data.count("text_delta")
            return events
        events = await reader.rest()
    for event in events:
        validate_event(event)
    recorded = SAMPLES / f"{step}.response.sse"
    if body["type"] == "threads.create":
        ids[thread_id_of_recorded(recorded)] = thread_id_of(events)
    ours = [e.payload for e in events]
    if step.startswith("08_"):
        # Unlike the reference, which deletes silently, a retry tells every client which
        # items it drops: all those after the retried message.
        removed = [e["item_id"] for e in ours if e["type"] == "thread.item.removed"]
        assert removed and removed == dropped, step
        ours = [e for e in ours if e["type"] != "thread.item.removed"]
    if step.startswith(("02_", "08_")):
        # Same echo behaviour as the reference: the same ChatKit events in the same order.
        assert _shape(ours) == _shape(_recorded_events(recorded)), step
    return events


def thread_id_of_recorded(path: Path) -> str:
    created = next(e for e in _recorded_events(path) if e["type"] == "thread.created")
    return str(created["thread"]["id"])


async def test_recorded_requests_are_accepted_and_answers_parse(live: LiveServer) -> None:
    live.chat.word_delay = 0.005
    client = live.client()
    # The reference's "missing thread" is a well-formed id of no thread here (a malformed
    # one is a 400 invalid_id before any lookup).
    ids: dict[str, str] = {"thr_missing": new_id(IdKind.THREAD)}

    for path in sorted(SAMPLES.glob("*.request.json")):
        step = path.name.removesuffix(".request.json")
        body = _rewrite(json.loads(path.read_text()), ids)
        if step.startswith("15_"):
            # The reference answered 200 and cut the connection; we refuse before streaming.
            missing = await client.post("/chatkit", json=body)
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "thread_not_found"
            continue
        if body["type"] in (
            "threads.create",
            "threads.add_user_message",
            "threads.retry_after_item",
        ):
            await _replay_stream(live, step, body, ids)
            continue

        answer = await client.post("/chatkit", json=body)

        meta = json.loads((SAMPLES / f"{step}.response.meta.json").read_text())
        assert answer.status_code == meta["status"], (step, answer.text)
        if answer.status_code != 200:
            assert set(answer.json()["error"]) == {"code", "message"}
            continue
        recorded = json.loads((SAMPLES / f"{step}.response.json").read_text())
        shape = CHATKIT_SHAPES.get(body["type"])
        if shape is None:
            assert answer.json() == recorded == {}
            continue
        shape.validate_json(answer.content)
        mine = answer.json()
        assert set(mine) == set(recorded), step
        _learn_ids(recorded, mine, ids)
