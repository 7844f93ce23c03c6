"""HTTP gateway: the same commands and queries as the CLI, for responders and systems on HTTP.

    hitlflow serve gateway --port 8080

Every write goes through the command streams exactly as the CLI's do (nothing here touches a
store); refusals come back with the service's stable ``code`` and a message naming what was
expected, and the HTTP status says what kind of refusal it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.catalog import REFUSAL_CODES
from contracts.limits import MAX_COMMAND_BYTES, TooLargeError
from contracts.subjects import InvalidThreadIdError, check_thread_id
from hitlflow import asyncapi
from hitlflow.cli_common import describe_input_error
from hitlflow.client import (
    HitlClient,
    NoOutcomeError,
    Outcome,
    QueryRefusedError,
    StackUnavailableError,
)
from hitlflow.settings import Settings
from projections.time_travel import TimeTravelError
from services.common.metrics import REGISTRY
from services.workflow.definition import WorkflowError, parse_workflow

#: Most items one list request returns (fetched from the projections a page at a time).
MAX_HTTP_LIST = 10_000

#: HTTP status for each refusal code (contracts/catalog.py says what each means).
STATUS_OF_CODE = {code: status for code, (status, _) in REFUSAL_CODES.items()}


class BodyTooLargeError(Exception):
    """A request body over MAX_COMMAND_BYTES."""


class LimitBody:
    """ASGI middleware: a request body larger than ``limit`` bytes is refused with 413 before
    it is read whole (by its Content-Length, or while it streams in)."""

    def __init__(self, app: Any, limit: int = MAX_COMMAND_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        seen = 0
        started = False

        async def counting() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLargeError
            return message

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except BodyTooLargeError:
            if not started:
                await self._refuse(send, seen)

    async def _refuse(self, send: Any, size: int) -> None:
        body = json.dumps({"code": "too_large", "error": str(
            TooLargeError("the request body", size, self.limit))}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csv: str = Field(description="The workflow CSV text (the guide's columns).")
    graph: str | None = Field(default=None, description="Graph name when the CSV holds several.")
    state: dict[str, Any] = Field(default_factory=dict)
    thread_id: str | None = None


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = ""


def _outcome_response(outcome: Outcome, ok_status: int = 200) -> JSONResponse:
    body = outcome.as_dict()
    if outcome.ok:
        return JSONResponse(body, status_code=ok_status)
    return JSONResponse(body, status_code=STATUS_OF_CODE.get(outcome.reply.code or "", 409))


def _thread_id(value: str) -> str:
    try:
        return check_thread_id(value)
    except InvalidThreadIdError as error:
        raise HTTPException(400, str(error)) from error


def _answer_errors(app: FastAPI) -> None:
    """Each kind of failure as an HTTP status with a JSON body that says why."""

    @app.exception_handler(StackUnavailableError)
    async def unavailable(request: Request, error: StackUnavailableError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(QueryRefusedError)
    async def refused_query(request: Request, error: QueryRefusedError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(TooLargeError)
    async def too_large(request: Request, error: TooLargeError) -> JSONResponse:
        return JSONResponse({"code": "too_large", "error": str(error)}, status_code=413)

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, error: ValidationError) -> JSONResponse:
        return JSONResponse({"code": "invalid_command", "error": describe_input_error(error)},
                            status_code=422)

    @app.exception_handler(NoOutcomeError)
    async def no_outcome(request: Request, error: NoOutcomeError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=504)


def _serve_health(app: FastAPI, holder: dict[str, HitlClient]) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when connected to NATS (the gateway reads and writes nothing else)."""
        connected = "client" in holder and holder["client"].nc.is_connected
        return JSONResponse({"status": "ready" if connected else "not ready",
                             "checks": {"nats": {"ok": connected}}},
                            status_code=200 if connected else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """This process's Prometheus metrics."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _serve_contract(app: FastAPI) -> None:
    @app.get("/asyncapi")
    async def asyncapi_document() -> JSONResponse:
        """The NATS contract as an AsyncAPI 3 document (``hitlflow contract --format
        asyncapi``)."""
        return JSONResponse(asyncapi.render_document())

    @app.get("/asyncapi.html", response_class=HTMLResponse)
    async def asyncapi_page() -> HTMLResponse:
        """The same document as one HTML page."""
        return HTMLResponse(asyncapi.render_html())


async def _thread_at(hitl: HitlClient, thread_id: str, at: str) -> dict[str, Any]:
    """``GET /threads/T?at=N``: the thread after event N (or at a moment), from its events."""
    try:
        then = await hitl.thread_at(thread_id, at)
    except TimeTravelError as error:
        raise HTTPException(400, str(error)) from error
    if then is None:
        raise HTTPException(404, f"unknown thread {thread_id!r}")
    return then.model_dump(mode="json", exclude={"schema_version"})


def create_app(settings: Settings, client: HitlClient | None = None) -> FastAPI:
    holder: dict[str, HitlClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hitl = client or HitlClient(settings.resolved_nats_url(),
                                    reply_timeout=settings.reply_timeout,
                                    auth=settings.nats_auth(),
                                    principal=settings.principal)
        await hitl.connect()
        holder["client"] = hitl
        try:
            yield
        finally:
            await hitl.close()

    app = FastAPI(title="hitlflow", version="0.1.0", lifespan=lifespan,
                  description="Start threads, answer their requests, read their status.")
    app.add_middleware(LimitBody)

    _answer_errors(app)

    def hitl() -> HitlClient:
        return holder["client"]

    _serve_health(app, holder)
    _serve_contract(app)

    @app.post("/threads", status_code=201)
    async def start(body: StartBody) -> JSONResponse:
        """Start a thread; answers once it pauses or ends, with what it waits for."""
        try:
            workflow = parse_workflow(body.csv, body.graph, source="request body")
        except WorkflowError as error:
            raise HTTPException(400, {"error": "invalid workflow",
                                      "problems": [str(p) for p in error.problems]}) from error
        if body.thread_id is not None:
            _thread_id(body.thread_id)
        outcome = await hitl().start(workflow, body.state, thread_id=body.thread_id)
        return _outcome_response(outcome, 201)

    @app.post("/threads/{thread_id}/resume")
    async def resume(
        thread_id: str,
        request: Request,
        idempotency_key: str | None = Header(default=None),
    ) -> JSONResponse:
        """Answer a request: ``{"action": "approve", "data": {...}, "request_id": "...",
        "shown": "..."}`` (``shown``: the version of the request answered, from its pending
        entry; without it, the one open now). An ``Idempotency-Key`` header (or body field)
        makes it safe to send again. A body that is not JSON is refused and kept in the
        audit."""
        _thread_id(thread_id)
        raw = (await request.body()).decode("utf-8", errors="replace")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            if body is None:
                outcome = await hitl().resume(thread_id, "(unparsed)", raw_data=raw,
                                              idempotency_key=idempotency_key)
                return _outcome_response(outcome)
            raise HTTPException(422, "expected a JSON object with 'action' (a string) and "
                                     "optional 'data' (an object), 'request_id', 'shown'")
        outcome = await hitl().resume(
            thread_id, body["action"], body.get("data"),
            request_id=body.get("request_id"),
            idempotency_key=body.get("idempotency_key") or idempotency_key,
            shown=body.get("shown"),
        )
        return _outcome_response(outcome)

    @app.post("/threads/{thread_id}/cancel")
    async def cancel(thread_id: str, body: CancelBody) -> JSONResponse:
        _thread_id(thread_id)
        return _outcome_response(await hitl().cancel(thread_id, body.reason))

    @app.get("/threads/{thread_id}")
    async def thread(thread_id: str, at: str | None = Query(
            default=None, description="The thread as it stood after this event: its number "
            "in the timeline (1 = the first) or a moment (ISO 8601).")) -> dict[str, Any]:
        _thread_id(thread_id)
        if at is not None:
            return await _thread_at(hitl(), thread_id, at)
        view = await hitl().thread(thread_id)
        if view is None:
            raise HTTPException(404, f"unknown thread {thread_id!r}")
        return view.model_dump(mode="json")

    @app.get("/threads")
    async def threads(status: str | None = None,
                      limit: int = Query(default=100, ge=1, le=MAX_HTTP_LIST),
                      ) -> list[dict[str, Any]]:
        return [t.model_dump(mode="json") for t in await hitl().threads(status, limit)]

    @app.get("/pending")
    async def pending(thread_id: str | None = None,
                      limit: int = Query(default=100, ge=1, le=MAX_HTTP_LIST),
                      ) -> list[dict[str, Any]]:
        if thread_id is not None:
            _thread_id(thread_id)
        return [p.model_dump(mode="json") for p in await hitl().pending(thread_id, limit)]

    return app
