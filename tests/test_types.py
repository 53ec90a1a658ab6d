import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import chatkit.types as ck
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from chatserver.types import (
    CHATKIT_EVENT_TYPES,
    STREAMING_REQUEST_TYPES,
    TERMINAL_RUN_EVENT_TYPES,
    AssistantMessageContent,
    AssistantMessageItem,
    ChatKitRequest,
    ErrorEvent,
    ExtensionEvent,
    Page,
    ResyncEvent,
    RunCancelledEvent,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    SessionSupersededEvent,
    StreamEvent,
    Thread,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadItemUpdate,
    dump_json,
    is_streaming,
    parse_request,
    parse_stream_event,
    parse_thread_item,
)

# Recorded traffic of the openai-chatkit reference server (copied from shared/, so the tests
# run wherever the repository is cloned).
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "chatkit-samples"

INVALID_REQUEST_SAMPLE = "14_invalid.type.request.json"

chatkit_request_adapter: TypeAdapter[Any] = TypeAdapter(ck.ChatKitReq)
chatkit_event_adapter: TypeAdapter[Any] = TypeAdapter(ck.ThreadStreamEvent)


def _samples(pattern: str) -> list[Path]:
    return sorted(SAMPLES.glob(pattern)) if SAMPLES.is_dir() else []


def _sse_payloads(path: Path) -> list[str]:
    payloads, data_lines = [], []
    for line in path.read_text().splitlines():
        if line.startswith("data:"):
            data_lines.append(line.removeprefix("data:").removeprefix(" "))
        elif not line and data_lines:
            payloads.append("\n".join(data_lines))
            data_lines = []
    if data_lines:
        payloads.append("\n".join(data_lines))
    return payloads


def _type_tags(union: Any) -> set[str]:
    # Accepts both `A | B` and `Annotated[A | B, Field(discriminator=...)]`.
    members = get_args(union)
    if len(members) == 2 and not isinstance(members[1], type):
        members = get_args(members[0])
    return {get_args(model.model_fields["type"].annotation)[0] for model in members}


def _assert_same_on_chatkit(ours: BaseModel, original: str, chatkit_type: Any) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(chatkit_type)
    redumped = dump_json(ours)
    assert json.loads(redumped) == json.loads(original)
    assert adapter.validate_json(redumped) == adapter.validate_json(original)


# --- Requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [p for p in _samples("*.request.json") if p.name != INVALID_REQUEST_SAMPLE],
    ids=lambda p: p.name,
)
def test_recorded_request_parses_and_streaming_matches_chatkit(path: Path) -> None:
    body = path.read_bytes()

    ours = parse_request(body)
    theirs = chatkit_request_adapter.validate_json(body)

    assert ours.type == theirs.type
    assert is_streaming(ours) == ck.is_streaming_req(theirs)


def test_recorded_unknown_request_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_request((SAMPLES / INVALID_REQUEST_SAMPLE).read_bytes())


def test_request_union_covers_every_chatkit_request_type() -> None:
    assert _type_tags(ChatKitRequest) == _type_tags(ck.ChatKitReq)
    assert _type_tags(ck.StreamingReq) == STREAMING_REQUEST_TYPES


def _add_user_message(**params: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "thread_id": "thr_1",
        "input": {
            "content": [{"type": "input_text", "text": "hi"}],
            "attachments": [],
            "inference_options": {},
        },
    }
    return {"type": "threads.add_user_message", "params": base | params}


@pytest.mark.parametrize(
    "request_body",
    [
        {"type": "items.list", "params": {"thread_id": "thr_1", "limit": "ten"}},
        {"type": "items.list", "params": {"thread_id": "thr_1", "limit": 0}},
        {"type": "items.list", "params": {"thread_id": "thr_1", "limit": 10_000}},
        {"type": "threads.list", "params": {"limit": 201}},
        {"type": "items.list", "params": {"thread_id": "thr_1", "order": "sideways"}},
        {"type": "items.list", "params": {"limit": 3}},
        {"type": "threads.get_by_id", "params": {}},
        {"type": "threads.update", "params": {"thread_id": "thr_1", "title": "x" * 501}},
        {"type": "threads.update", "params": {"thread_id": "thr_1", "title": 5}},
        {"type": "threads.delete", "params": {"thread_id": None}},
        {"type": "threads.retry_after_item", "params": {"thread_id": "thr_1"}},
        {"type": "threads.custom_action", "params": {"thread_id": "thr_1"}},
        {"type": "threads.list"},
        {"params": {"thread_id": "thr_1"}},
        {"type": "threads.create", "params": {"input": {"content": "hi"}}},
        {"type": "threads.create", "params": {"input": {"content": []}}},
        {"type": "threads.create", "params": {"input": {"content": [{"type": "picture"}]}}},
        _add_user_message(thread_id=None),
        {"type": "threads.add_user_message", "params": {"input": {"content": []}}},
        {"type": "attachments.delete", "params": "not-an-object"},
    ],
    ids=lambda body: json.dumps(body)[:80],
)
def test_request_with_wrong_or_missing_field_is_rejected(request_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_request(json.dumps(request_body))


def test_request_ignores_unknown_extra_fields_like_chatkit() -> None:
    body = _add_user_message(surprise=True) | {"extra": 1, "metadata": {"k": "v"}}

    request = parse_request(json.dumps(body))

    assert request.type == "threads.add_user_message"
    assert request.metadata == {"k": "v"}
    assert is_streaming(request)


def test_request_without_optional_params_gets_chatkit_defaults() -> None:
    request = parse_request('{"type": "items.list", "params": {"thread_id": "thr_1"}}')

    assert request.type == "items.list"
    assert request.params.limit is None
    assert request.params.order == "desc"
    assert request.params.after is None
    assert not is_streaming(request)


# --- Stream events ------------------------------------------------------------------------


@pytest.mark.parametrize("path", _samples("*.sse"), ids=lambda p: p.name)
def test_recorded_stream_events_round_trip_to_identical_chatkit_events(path: Path) -> None:
    payloads = _sse_payloads(path)
    assert payloads

    for payload in payloads:
        ours = parse_stream_event(payload)
        assert ours.type in CHATKIT_EVENT_TYPES
        _assert_same_on_chatkit(ours, payload, ck.ThreadStreamEvent)


def test_chatkit_event_types_match_chatkit_stream_event_union() -> None:
    assert _type_tags(ck.ThreadStreamEvent) == CHATKIT_EVENT_TYPES


def test_item_and_update_types_are_a_subset_of_chatkit() -> None:
    assert _type_tags(ThreadItem) <= _type_tags(ck.ThreadItem)
    assert _type_tags(ThreadItemUpdate) <= _type_tags(ck.ThreadItemUpdate)


EXTENSION_EVENTS: list[ExtensionEvent] = [
    RunStartedEvent(run_id="run_1"),
    RunCompletedEvent(run_id="run_1"),
    RunCancelledEvent(run_id="run_1", reason="user_stop"),
    RunCancelledEvent(run_id="run_1"),
    RunFailedEvent(run_id="run_1", error_code="respond_failed"),
    SessionSupersededEvent(session_id="ses_1"),
    ResyncEvent(reason="cursor_expired", earliest_seq=42),
    ResyncEvent(reason="cursor_expired"),
]


@pytest.mark.parametrize("event", EXTENSION_EVENTS, ids=lambda e: e.type)
def test_extension_event_round_trips_and_is_not_a_chatkit_type(event: ExtensionEvent) -> None:
    parsed = parse_stream_event(dump_json(event))

    assert parsed == event
    assert parsed.type not in CHATKIT_EVENT_TYPES
    assert TypeAdapter(ExtensionEvent).validate_json(dump_json(event)) == event


def test_extension_union_covers_all_extension_events_and_terminal_ones() -> None:
    extension_types = _type_tags(ExtensionEvent)

    assert {event.type for event in EXTENSION_EVENTS} == extension_types
    assert not extension_types & CHATKIT_EVENT_TYPES
    assert extension_types | CHATKIT_EVENT_TYPES == _type_tags(StreamEvent)
    assert TERMINAL_RUN_EVENT_TYPES <= extension_types


def test_error_event_with_our_code_is_a_valid_chatkit_error() -> None:
    ours = ErrorEvent(code="custom", error_code="thread_busy", message="Thread is busy.")

    wire = dump_json(ours)
    theirs = chatkit_event_adapter.validate_json(wire)

    assert isinstance(theirs, ck.ErrorEvent)
    assert theirs.code == "custom"
    assert theirs.message == "Thread is busy."
    assert json.loads(wire)["error_code"] == "thread_busy"


def test_error_event_rejects_codes_chatkit_would_reject() -> None:
    with pytest.raises(ValidationError):
        parse_stream_event('{"type": "error", "code": "thread_busy"}')


def test_incomplete_assistant_message_is_a_valid_chatkit_item() -> None:
    item = AssistantMessageItem(
        id="msg_1",
        thread_id="thr_1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC),
        content=[AssistantMessageContent(text="partial answ")],
        status="incomplete",
    )

    wire = dump_json(item)
    theirs = ck.AssistantMessageItem.model_validate_json(wire)
    done_event = chatkit_event_adapter.validate_json(dump_json(ThreadItemDoneEvent(item=item)))

    assert theirs.content[0].text == "partial answ"
    assert theirs.created_at == item.created_at
    assert done_event.item == theirs
    assert parse_thread_item(wire) == item


def test_dump_json_omits_unset_optionals_and_is_compact() -> None:
    wire = dump_json(Page[ThreadItem](data=[], has_more=False))

    assert wire == '{"data":[],"has_more":false}'


# --- Non-streaming responses --------------------------------------------------------------

RESPONSE_TYPES: dict[str, tuple[Any, Any]] = {
    "threads.get_by_id": (Thread, ck.Thread),
    "threads.update": (Thread, ck.Thread),
    "threads.list": (Page[Thread], ck.Page[ck.Thread]),
    "items.list": (Page[ThreadItem], ck.Page[ck.ThreadItem]),
}


def _thread_and_item_responses() -> list[tuple[Path, str]]:
    found = []
    for path in _samples("*.response.json"):
        step = path.name.removesuffix(".response.json")
        meta = json.loads((SAMPLES / f"{step}.response.meta.json").read_text())
        request_type = json.loads((SAMPLES / f"{step}.request.json").read_text())["type"]
        if meta["status"] == 200 and request_type in RESPONSE_TYPES:
            found.append((path, request_type))
    return found


@pytest.mark.parametrize(
    ("path", "request_type"), _thread_and_item_responses(), ids=lambda v: getattr(v, "name", v)
)
def test_recorded_thread_and_item_responses_round_trip_through_chatkit(
    path: Path, request_type: str
) -> None:
    ours_type, chatkit_type = RESPONSE_TYPES[request_type]
    original = path.read_text()

    ours = TypeAdapter(ours_type).validate_json(original)

    _assert_same_on_chatkit(ours, original, chatkit_type)


def test_every_kind_of_thread_and_item_response_is_covered_by_samples() -> None:
    assert {request_type for _, request_type in _thread_and_item_responses()} == set(RESPONSE_TYPES)
