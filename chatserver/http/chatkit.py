"""`POST /chatkit`: ChatKit's envelope and request types.

Streaming requests answer `text/event-stream` with the events of their run; the rest answer
JSON in ChatKit's shapes. Everything that can refuse a request (body, session, thread, busy
thread, bad item) is checked before the 200, so a refusal is a real 4xx, never a cut stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatserver.config import DoubleTexting
from chatserver.errors import BadRequest, ErrorCode, ServiceUnavailable
from chatserver.http.bodies import read_body
from chatserver.http.errors import invalid_request
from chatserver.http.services import Services
from chatserver.http.sessions import requested_session_id, session_context
from chatserver.http.sse import SessionKey, parse_cursor, sse_response
from chatserver.http.validation import require_id, require_text
from chatserver.ids import IdKind
from chatserver.server import RunHandle, thread_metadata
from chatserver.sessions import RequestContext
from chatserver.types import (
    AttachmentsCreateRequest,
    AttachmentsDeleteRequest,
    ChatKitRequest,
    HiddenContextItem,
    InputTranscribeRequest,
    ItemsFeedbackRequest,
    ItemsListRequest,
    NonStreamingRequest,
    Page,
    StreamingRequest,
    Thread,
    ThreadItem,
    ThreadsAddClientToolOutputRequest,
    ThreadsAddStructuredInputRequest,
    ThreadsAddUserMessageRequest,
    ThreadsCreateRequest,
    ThreadsCustomActionRequest,
    ThreadsDeleteRequest,
    ThreadsGetByIdRequest,
    ThreadsListRequest,
    ThreadsRetryAfterItemRequest,
    ThreadsSyncCustomActionRequest,
    ThreadsUpdateRequest,
    dump_json,
    is_streaming,
    parse_request,
)

# ChatKit's own default page size when a request names no limit.
DEFAULT_PAGE_LIMIT = 20
THREAD_ITEM_LIMIT = 100
IDEMPOTENCY_HEADER = "Idempotency-Key"
SNAPSHOT_SEQ_HEADER = "X-Event-Seq"
_MAX_IDEMPOTENCY_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What a streaming request's headers ask of its run."""

    idempotency_key: str | None = None
    # The last event the client has (`Last-Event-ID` on a retried POST).
    cursor: int | None = None

    @classmethod
    def of(cls, request: Request) -> RunOptions:
        return cls(
            idempotency_key=_idempotency_key(request),
            cursor=parse_cursor(request.headers.get("last-event-id"), "Last-Event-ID"),
        )


def _json(model: BaseModel) -> Response:
    return Response(dump_json(model), media_type="application/json")


def _visible(page: Page[ThreadItem]) -> Page[ThreadItem]:
    # As ChatKit does: hidden context is for the model, never shown to the client.
    page.data = [item for item in page.data if not isinstance(item, HiddenContextItem)]
    return page


class ChatKitEndpoint:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._server = services.server

    async def handle(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        settings = self._services.settings
        body = await read_body(
            request,
            limit=settings.max_body_bytes,
            deadline_seconds=settings.body_read_timeout_seconds,
        )
        try:
            chatkit_request = parse_request(body)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        # Checked before anything is read or written: malformed ids are a 400, never a lookup.
        _check_request(chatkit_request)
        if is_streaming(chatkit_request):
            options = RunOptions.of(request)
            if self._services.streams.closing:
                raise ServiceUnavailable("the server is shutting down; retry shortly")
            handle, context = await self._start_run(chatkit_request, request, user_id, options)
            return self._run_stream(handle, context, options)
        # A read needs no session; a session it names is kept alive (and checked).
        session_id = requested_session_id(request)
        if session_id is not None:
            await session_context(self._services, request, user_id, session_id)
        return await self._answer(chatkit_request, user_id)

    async def _start_run(
        self, req: StreamingRequest, request: Request, user_id: str, options: RunOptions
    ) -> tuple[RunHandle, RequestContext]:
        """Accept the run, or raise: nothing is streamed before this returns. The request is
        checked (supported, its thread there) before the session is touched, so a refused
        request writes nothing."""
        key = options.idempotency_key
        match req:
            case ThreadsCreateRequest():
                context = await self._context(request, user_id, req)
                handle = await self._server.create_thread_and_start_turn(
                    context, req.params.input, idempotency_key=key, cursor=options.cursor
                )
            case ThreadsAddUserMessageRequest():
                await self._server.get_thread(user_id, req.params.thread_id)
                context = await self._context(request, user_id, req)
                handle = await self._server.start_turn(
                    context,
                    req.params.thread_id,
                    req.params.input,
                    idempotency_key=key,
                    double_texting=_double_texting(req.metadata),
                    cursor=options.cursor,
                )
            case ThreadsRetryAfterItemRequest():
                await self._server.get_thread(user_id, req.params.thread_id)
                context = await self._context(request, user_id, req)
                handle = await self._server.start_turn(
                    context,
                    req.params.thread_id,
                    None,
                    idempotency_key=key,
                    double_texting=_double_texting(req.metadata),
                    retry_after_item_id=req.params.item_id,
                    cursor=options.cursor,
                )
            case (
                ThreadsCustomActionRequest()
                | ThreadsAddClientToolOutputRequest()
                | ThreadsAddStructuredInputRequest()
            ):
                raise _not_supported(req.type)
            case _:
                assert_never(req)
        return handle, context

    async def _context(
        self, request: Request, user_id: str, req: StreamingRequest
    ) -> RequestContext:
        return await session_context(
            self._services,
            request,
            user_id,
            requested_session_id(request),
            request_metadata=req.metadata,
        )

    async def _answer(self, req: NonStreamingRequest, user_id: str) -> Response:
        server = self._server
        match req:
            case ThreadsGetByIdRequest():
                thread, seq = await server.load_thread(
                    user_id, req.params.thread_id, item_limit=THREAD_ITEM_LIMIT
                )
                response = _json(Thread.public(thread, _visible(thread.items)))
                # Follow `GET /threads/{id}/events?after=<this>` to stay current from here.
                response.headers[SNAPSHOT_SEQ_HEADER] = str(seq)
                return response
            case ThreadsListRequest():
                threads = await server.list_threads(
                    user_id,
                    limit=req.params.limit or DEFAULT_PAGE_LIMIT,
                    after=req.params.after,
                    order=req.params.order,
                )
                # ChatKit lists threads as Thread objects with an empty items page.
                page = Page[Thread](
                    data=[Thread.public(t) for t in threads.data],
                    has_more=threads.has_more,
                    after=threads.after,
                )
                return _json(page)
            case ItemsListRequest():
                items = await server.list_items(
                    user_id,
                    req.params.thread_id,
                    limit=req.params.limit or DEFAULT_PAGE_LIMIT,
                    after=req.params.after,
                    order=req.params.order,
                )
                return _json(_visible(items))
            case ThreadsUpdateRequest():
                row = await server.update_thread(
                    user_id, req.params.thread_id, title=req.params.title
                )
                return _json(Thread.public(thread_metadata(row)))
            case ThreadsDeleteRequest():
                await server.delete_thread(user_id, req.params.thread_id)
                return JSONResponse({})
            case (
                ThreadsSyncCustomActionRequest()
                | ItemsFeedbackRequest()
                | AttachmentsCreateRequest()
                | AttachmentsDeleteRequest()
                | InputTranscribeRequest()
            ):
                raise _not_supported(req.type)
            case _:
                assert_never(req)

    def _run_stream(
        self, handle: RunHandle, context: RequestContext, options: RunOptions
    ) -> Response:
        # A retried POST (same Idempotency-Key) resumes after what the client already has;
        # a stale cursor from an earlier run cannot reach before this run's first event.
        after = max(options.cursor or 0, handle.start_seq)
        stream = self._services.streams.open(
            self._server.stream_run(handle, after),
            session=SessionKey(context.user_id, context.session.id),
        )
        return sse_response(stream, self._services.settings.heartbeat_seconds)


def _check_request(req: ChatKitRequest) -> None:
    """Ids and stored text of the requests we serve (the rest are refused as unsupported)."""
    match req:
        case ThreadsAddUserMessageRequest() | ThreadsGetByIdRequest() | ThreadsDeleteRequest():
            require_id(IdKind.THREAD, req.params.thread_id, "thread_id")
        case ThreadsRetryAfterItemRequest():
            require_id(IdKind.THREAD, req.params.thread_id, "thread_id")
            require_id(IdKind.ITEM, req.params.item_id, "item_id")
        case ThreadsListRequest():
            if req.params.after is not None:
                require_id(IdKind.THREAD, req.params.after, "after")
        case ItemsListRequest():
            require_id(IdKind.THREAD, req.params.thread_id, "thread_id")
            if req.params.after is not None:
                require_id(IdKind.ITEM, req.params.after, "after")
        case ThreadsUpdateRequest():
            require_id(IdKind.THREAD, req.params.thread_id, "thread_id")
            require_text(req.params.title, "title")
        case (
            ThreadsCreateRequest()
            | ThreadsCustomActionRequest()
            | ThreadsAddClientToolOutputRequest()
            | ThreadsAddStructuredInputRequest()
            | ThreadsSyncCustomActionRequest()
            | ItemsFeedbackRequest()
            | AttachmentsCreateRequest()
            | AttachmentsDeleteRequest()
            | InputTranscribeRequest()
        ):
            pass
        case _:
            assert_never(req)


def _not_supported(request_type: str) -> BadRequest:
    return BadRequest(f"{request_type} is not supported by this server", ErrorCode.NOT_SUPPORTED)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= _MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            f"{IDEMPOTENCY_HEADER} must be 1 to {_MAX_IDEMPOTENCY_KEY_LENGTH} printable characters"
        )
    return key


def _double_texting(metadata: dict[str, object]) -> DoubleTexting | None:
    """Per-request override from `metadata.double_texting`; anything else means the default."""
    value = metadata.get("double_texting")
    if value == "queue":
        return "queue"
    if value == "reject":
        return "reject"
    if value == "interrupt":
        return "interrupt"
    return None
