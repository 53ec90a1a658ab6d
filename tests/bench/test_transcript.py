"""The bench's transcript check and SSE framing: a broken stream must not pass as complete."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.client import SseEvent, _SseParser
from bench.transcript import DELTA, Expectation, check, echo_chunks

TEXT = "one two three"


def ours_turn(first_seq: int = 1, *, creates_thread: bool = True) -> list[dict[str, Any]]:
    """What our server streams for an echo of TEXT, as (payload) dicts in order."""
    item = {"id": "itm_a", "type": "assistant_message", "content": []}
    user = {
        "id": "itm_u",
        "type": "user_message",
        "content": [{"type": "input_text", "text": TEXT}],
    }
    events: list[dict[str, Any]] = [{"type": "run.started", "run_id": "run_1"}]
    if creates_thread:
        events.append({"type": "thread.created", "thread": {"id": "thr_1"}})
    events += [
        {"type": "thread.item.done", "item": user},
        {"type": "stream_options", "stream_options": {"allow_cancel": True}},
        {"type": "thread.item.added", "item": item},
        _update({"type": "assistant_message.content_part.added", "content_index": 0}),
        *(_update({"type": DELTA, "delta": chunk}) for chunk in echo_chunks(TEXT)),
        _update({"type": "assistant_message.content_part.done", "content_index": 0}),
        {
            "type": "thread.item.done",
            "item": {**item, "content": [{"type": "output_text", "text": TEXT}]},
        },
        {"type": "run.completed", "run_id": "run_1"},
    ]
    return events


def _update(update: dict[str, Any]) -> dict[str, Any]:
    return {"type": "thread.item.updated", "item_id": "itm_a", "update": update}


def sse(payloads: list[dict[str, Any]], first_seq: int | None = 1) -> list[SseEvent]:
    return [
        SseEvent(json.dumps(p), None if first_seq is None else str(first_seq + i), float(i))
        for i, p in enumerate(payloads)
    ]


def ours(first_seq: int | None = 1, creates_thread: bool = True) -> Expectation:
    return Expectation(TEXT, creates_thread, numbered=True, runs=True, first_seq=first_seq)


def test_a_complete_turn_passes_and_reports_its_thread_seq_and_first_delta() -> None:
    verdict = check(sse(ours_turn()), ours())

    assert verdict.problems == []
    assert verdict.thread_id == "thr_1"
    assert verdict.last_seq == 12
    assert verdict.first_delta_at == 6.0


def test_a_later_turn_must_continue_the_threads_seqs() -> None:
    events = sse(ours_turn(creates_thread=False), first_seq=12)

    assert check(events, ours(first_seq=12, creates_thread=False)).ok
    assert not check(events, ours(first_seq=13, creates_thread=False)).ok


def renumbered(events: list[SseEvent]) -> list[SseEvent]:
    """Dense ids again, so that only the defect under test is left."""
    return [SseEvent(e.data, str(i + 1), e.at) for i, e in enumerate(events)]


@pytest.mark.parametrize(
    ("name", "broken"),
    [
        ("missing delta", lambda e: e[:7] + e[8:]),
        ("deltas out of order", lambda e: [*e[:6], e[7], e[6], *e[8:]]),
        ("cut before the end", lambda e: e[:-1]),
        ("no user message", lambda e: e[:2] + e[3:]),
        ("answer never closed", lambda e: e[:10] + e[11:]),
        ("error event", lambda e: e[:-1] + sse([{"type": "error", "code": "x"}]) + e[-1:]),
        ("not JSON", lambda e: [*e[:4], SseEvent("{", "5", 4.0), *e[5:]]),
    ],
)
def test_a_broken_transcript_is_reported(name: str, broken: Any) -> None:
    events = renumbered(broken(sse(ours_turn())))

    verdict = check(events, ours())

    assert not verdict.ok, name


@pytest.mark.parametrize(
    "ids", [[1, 2, 4], [1, 2, 2], [2, 3, 4], [1, None, 3]], ids=["gap", "repeat", "late", "none"]
)
def test_seqs_that_are_not_dense_from_the_expected_one_are_reported(ids: list[int | None]) -> None:
    events = sse(ours_turn())
    events[:3] = [
        SseEvent(e.data, None if i is None else str(i), e.at)
        for e, i in zip(events[:3], ids, strict=True)
    ]

    verdict = check(events, ours())

    assert not verdict.ok


def test_unnumbered_servers_are_checked_without_seqs_or_runs() -> None:
    payloads = [p for p in ours_turn() if not p["type"].startswith("run.")]
    plain = Expectation(TEXT, creates_thread=True, numbered=False, runs=False)

    assert check(sse(payloads, first_seq=None), plain).ok
    assert not check(sse(payloads[:-1], first_seq=None), plain).ok


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_sse_framing_survives_any_chunk_boundary(newline: bytes) -> None:
    stream = newline.join(
        [b": ping", b"", b"id: 1", b'data: {"a":1}', b"", b"data: x", b"data: y", b"", b""]
    )
    for cut in range(1, len(stream)):
        out: list[SseEvent] = []
        parser = _SseParser(out)
        parser.feed(stream[:cut], 1.0)
        parser.feed(stream[cut:], 2.0)
        parser.end(3.0)

        assert [(e.id, e.data) for e in out] == [("1", '{"a":1}'), (None, "x\ny")], cut
