"""What every turn's transcript must be: complete, in order, and (ours) densely numbered.

Checked after the timed window, so the check costs the measurement nothing. A turn is
complete when its stream ended cleanly, the user's message came back saved, and the
assistant's answer arrived as `content_part.added`, one text delta per word in order,
`content_part.done` and `thread.item.done` with the whole text. Our server also brackets a
turn with `run.started` / `run.completed` and numbers its events: the ids of one thread run
1, 2, 3, ... across its turns, with no gap and no repeat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.client import SseEvent

_WORD = re.compile(r"\S+\s*")
DELTA = "assistant_message.content_part.text_delta"


def echo_chunks(text: str) -> list[str]:
    """The deltas an echo of `text` streams: one per word, with the spaces after it."""
    return _WORD.findall(text)


@dataclass(frozen=True, slots=True)
class Expectation:
    text: str
    creates_thread: bool
    # Our server: SSE ids are the thread's seq, and runs are bracketed by run.* events.
    numbered: bool
    runs: bool
    # The seq the turn's first event must carry (the thread's last seq + 1), when known.
    first_seq: int | None = None


@dataclass(slots=True)
class Verdict:
    problems: list[str] = field(default_factory=list)
    thread_id: str | None = None
    last_seq: int | None = None
    first_delta_at: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check(events: Sequence[SseEvent], expected: Expectation) -> Verdict:
    verdict = Verdict()
    problems = verdict.problems
    try:
        payloads: list[dict[str, Any]] = [json.loads(e.data) for e in events]
    except ValueError as exc:
        problems.append(f"an event is not JSON: {exc}")
        return verdict
    types = [p.get("type") for p in payloads]
    if expected.numbered:
        _check_seqs(events, expected, verdict)
    if expected.runs:
        if not types or types[0] != "run.started":
            problems.append(f"first event is {types[:1]}, not run.started")
        if not types or types[-1] != "run.completed":
            problems.append(f"last event is {types[-1:]}, not run.completed")
    errors = [p for p in payloads if p.get("type") == "error" or p.get("type") == "run.failed"]
    if errors:
        problems.append(f"error events: {errors[:2]}")

    created = [p for p in payloads if p.get("type") == "thread.created"]
    if expected.creates_thread:
        if len(created) != 1:
            problems.append(f"{len(created)} thread.created events in a threads.create turn")
        else:
            verdict.thread_id = created[0]["thread"]["id"]
    elif created:
        problems.append("thread.created in a turn on an existing thread")

    done = [p["item"] for p in payloads if p.get("type") == "thread.item.done"]
    users = [i for i in done if i.get("type") == "user_message"]
    if len(users) != 1 or _text(users[0], "input_text") != expected.text:
        problems.append("the user's message did not come back saved, once, as sent")
    _check_answer(payloads, events, expected, verdict)
    return verdict


def _check_seqs(events: Sequence[SseEvent], expected: Expectation, verdict: Verdict) -> None:
    try:
        seqs = [int(e.id) if e.id is not None else None for e in events]
    except ValueError:
        verdict.problems.append("an event id is not a seq")
        return
    if any(s is None for s in seqs):
        verdict.problems.append("an event without an id")
        return
    numbers = [s for s in seqs if s is not None]
    if not numbers:
        return
    start = expected.first_seq if expected.first_seq is not None else numbers[0]
    if numbers != list(range(start, start + len(numbers))):
        verdict.problems.append(f"seqs not dense from {start}: {_gaps(numbers, start)}")
    verdict.last_seq = numbers[-1]


def _gaps(numbers: list[int], start: int) -> str:
    for index, seq in enumerate(numbers):
        if seq != start + index:
            return f"event {index} has seq {seq}, expected {start + index}"
    return "?"


def _check_answer(
    payloads: list[dict[str, Any]],
    events: Sequence[SseEvent],
    expected: Expectation,
    verdict: Verdict,
) -> None:
    problems = verdict.problems
    added = [
        (i, p["item"])
        for i, p in enumerate(payloads)
        if p.get("type") == "thread.item.added" and p["item"].get("type") == "assistant_message"
    ]
    if len(added) != 1:
        problems.append(f"{len(added)} assistant messages added, expected 1")
        return
    start, item = added[0]
    item_id = item["id"]
    updates = [
        (i, p["update"])
        for i, p in enumerate(payloads)
        if p.get("type") == "thread.item.updated" and p.get("item_id") == item_id
    ]
    kinds = [u.get("type") for _, u in updates]
    deltas = [(i, u) for i, u in updates if u.get("type") == DELTA]
    words = echo_chunks(expected.text)
    if [u.get("delta") for _, u in deltas] != words:
        problems.append(f"{len(deltas)} deltas do not spell the {len(words)} words in order")
    if deltas:
        verdict.first_delta_at = events[deltas[0][0]].at
    if kinds[:1] != ["assistant_message.content_part.added"]:
        problems.append("the answer's first update is not content_part.added")
    if kinds[-1:] != ["assistant_message.content_part.done"]:
        problems.append("the answer's last update is not content_part.done")
    finals = [
        (i, p["item"])
        for i, p in enumerate(payloads)
        if p.get("type") == "thread.item.done" and p["item"].get("id") == item_id
    ]
    if len(finals) != 1:
        problems.append(f"the answer was closed {len(finals)} times")
        return
    end, final = finals[0]
    if _text(final, "output_text") != expected.text:
        problems.append("the saved answer is not the whole echo")
    if not start < min((i for i, _ in updates), default=start + 1) or (
        updates and updates[-1][0] > end
    ):
        problems.append("the answer's updates are not between its added and done events")


def _text(item: dict[str, Any], part_type: str) -> str:
    return "".join(
        part.get("text", "") for part in item.get("content", []) if part.get("type") == part_type
    )
