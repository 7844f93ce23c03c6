"""HTTP gateway: the same commands and queries as the CLI, for responders and systems on HTTP.

    hitlflow serve gateway --port 8080

Every request is authenticated first (:mod:`hitlflow.gateway_auth`: a bearer token for people,
an API key for systems); the gateway then publishes as its own NATS user and asserts whom it
authenticated, and the services decide what that principal may do. Every write goes through the
command streams exactly as the CLI's do (nothing here touches a store); refusals come back with
the service's stable ``code`` and a message naming what was expected, and the HTTP status says
what kind of refusal it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.catalog import REFUSAL_CODES
from contracts.limits import MAX_COMMAND_BYTES, NotTextError, TooLargeError
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
from hitlflow.gateway_auth import (
    Authenticator,
    AuthUnavailableError,
    Caller,
    InvalidHeaderError,
    NotAuthenticatedError,
    RequestForbiddenError,
    gateway_settings,
)
from hitlflow.settings import Settings
from hitlflow.web import pages as web
from projections.time_travel import TimeTravelError
from services.common.identity import Directory
from services.common.logging import get_logger
from services.common.metrics import REGISTRY
from services.workflow.definition import WorkflowError, parse_workflow

log = get_logger(__name__)

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


class ResumeBody(BaseModel):
    """An answer to a request of the thread."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(description="e.g. approve, reject, edit, choose, respond, end.")
    data: Any = Field(default=None, description="A JSON object: the answer's fields.")
    request_id: str | None = Field(default=None,
                                   description="Which request, when the thread waits on several.")
    shown: str = Field(description="The version of the request answered: the `shown` of its "
                                   "entry in `GET /pending` (or of the thread's `pending`). An "
                                   "answer to an earlier version (escalated, delegated, "
                                   "reassigned since) is refused `stale_view` (409).")
    idempotency_key: str | None = Field(
        default=None, description="The same key again gets the first outcome (or send the "
                                  "`Idempotency-Key` header).")


class TaskBody(BaseModel):
    """Which request, and for delegate/reassign to whom."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None,
                                   description="Which request, when the thread waits on several.")
    to: list[str] | str | None = Field(
        default=None, description="delegate: the one person who takes it over; reassign: the "
                                  "people it is for from now on.")
    candidate_groups: list[str] = Field(default_factory=list,
                                        description="reassign: the groups it is for.")
    idempotency_key: str | None = None


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = ""


class ErrorBody(BaseModel):
    code: str | None = Field(default=None, description="`unauthenticated`, `forbidden`, or the "
                                                       "service's refusal code.")
    error: str = Field(description="What was wrong, and what was expected.")


#: Every route but the probes, /metrics and the documents answers these when the
#: credentials do not do.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid credentials: none, malformed, forged, "
          "expired, unsigned, or for another issuer or audience (`code`: `unauthenticated`; "
          "the `WWW-Authenticate` header says so too)."},
    403: {"model": ErrorBody, "description": "The caller may not do this (`code`: `forbidden`): "
          "the request is for others, claimed by someone else, or only a system may act for "
          "someone."},
}
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    409: {"model": ErrorBody, "description": "Refused by the state of the thread or request "
          "(`stale_view`, `claimed`, `already_answered`, `not_waiting`, ...)."},
    422: {"model": ErrorBody, "description": "The answer or command does not fit (the `code` "
          "and `error` say how)."},
}

DESCRIPTION = """Start threads, answer their requests, claim and hand them on, read their status.

**Authentication.** Every route but the probes (`/healthz`, `/readyz`), `/metrics` and
the documents needs one of:

- `Authorization: Bearer <JWT>` for a person: signed (HS256) with the stack's own key
  (`hitlflow token NAME --group G` makes one), or by your identity provider (RS256/ES256…,
  keys at `HITLFLOW_AUTH_JWKS_URL`). Checked: signature, `exp`, `iss`
  (`HITLFLOW_AUTH_ISSUER`), `aud` (`HITLFLOW_AUTH_AUDIENCE`). The principal is the `sub`
  claim (`HITLFLOW_AUTH_PRINCIPAL_CLAIM`), the groups the `groups` claim
  (`HITLFLOW_AUTH_GROUPS_CLAIM`; missing: no groups).
- `X-API-Key: <key>` for a system (`hitlflow users add NAME --role system --api-key`). A
  system may act for a person: `X-On-Behalf-Of: alice` and `X-On-Behalf-Groups: finance`
  (the audit keeps both names).

Without valid credentials: 401 with `WWW-Authenticate`. On a stack without authorization,
requests without credentials are from `HITLFLOW_GATEWAY_USER`.

**Answers are bound to what was shown**: send the request's `shown` back with the answer."""


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


def _refused(request: Request, status: int, code: str, error: Exception,
             headers: dict[str, str] | None = None) -> JSONResponse:
    """A request refused before it reached the stack: said to the caller, and logged with the
    thread it addressed (nothing was sent, so nothing is in the thread's audit)."""
    log.warning("http_request_refused", status=status, code=code, reason=str(error),
                method=request.method, path=request.url.path,
                thread_id=request.path_params.get("thread_id"),
                client=request.client.host if request.client else None)
    return JSONResponse({"code": code, "error": str(error)}, status_code=status,
                        headers=headers)


def _error(request: Request, status: int, body: dict[str, Any]) -> Response:
    """A failure as JSON for the API, as a page that says it for the web pages."""
    if web.is_page(request):
        return web.error_page(request, status, str(body.get("error") or ""))
    return JSONResponse(body, status_code=status)


def _answer_errors(app: FastAPI) -> None:
    """Each kind of failure as an HTTP status with a JSON body that says why."""

    @app.exception_handler(NotAuthenticatedError)
    async def unauthenticated(request: Request, error: NotAuthenticatedError) -> JSONResponse:
        return _refused(request, 401, "unauthenticated", error,
                        {"WWW-Authenticate": error.challenge})

    @app.exception_handler(RequestForbiddenError)
    async def forbidden(request: Request, error: RequestForbiddenError) -> JSONResponse:
        return _refused(request, 403, "forbidden", error)

    @app.exception_handler(InvalidHeaderError)
    async def bad_header(request: Request, error: InvalidHeaderError) -> JSONResponse:
        return _refused(request, 400, "invalid_command", error)

    @app.exception_handler(AuthUnavailableError)
    async def auth_unavailable(request: Request, error: AuthUnavailableError) -> Response:
        log.error("credentials_not_checkable", reason=str(error))
        return _error(request, 503, {"error": f"credentials cannot be checked now: {error}"})

    @app.exception_handler(StackUnavailableError)
    async def unavailable(request: Request, error: StackUnavailableError) -> Response:
        return _error(request, 503, {"error": str(error)})

    @app.exception_handler(QueryRefusedError)
    async def refused_query(request: Request, error: QueryRefusedError) -> Response:
        return _error(request, STATUS_OF_CODE.get(error.code, 400),
                      {"code": error.code, "error": str(error)})

    @app.exception_handler(TooLargeError)
    async def too_large(request: Request, error: TooLargeError) -> Response:
        return _error(request, 413, {"code": "too_large", "error": str(error)})

    @app.exception_handler(NotTextError)
    async def not_text(request: Request, error: NotTextError) -> Response:
        return _error(request, 422, {"code": error.code, "error": str(error)})

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, error: ValidationError) -> JSONResponse:
        return JSONResponse({"code": "invalid_command", "error": describe_input_error(error)},
                            status_code=422)

    @app.exception_handler(NoOutcomeError)
    async def no_outcome(request: Request, error: NoOutcomeError) -> Response:
        return _error(request, 504, {"error": str(error)})

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> Response:
        log.error("http_request_failed", method=request.method, path=request.url.path,
                  error=repr(error))
        return _error(request, 500, {"error": "the gateway failed to handle the request (a "
                                              "fault, logged); nothing was sent"})


#: Shown in the OpenAPI document (/docs): the two ways to authenticate.
BEARER = HTTPBearer(auto_error=False, scheme_name="token", bearerFormat="JWT",
                    description="A person's token: `hitlflow token NAME`, or your identity "
                                "provider's (HITLFLOW_AUTH_JWKS_URL).")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                       description="A system's key: `hitlflow users add NAME --role system "
                                   "--api-key`.")


def _client(request: Request) -> HitlClient:
    client: HitlClient = request.app.state.hitl
    return client


async def caller_of(
    request: Request,
    _token: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    _key: Annotated[str | None, Security(API_KEY)],
    on_behalf_of: Annotated[str | None, Header(
        alias="X-On-Behalf-Of", description="A system (API key) acting for this person.")]
    = None,
    on_behalf_groups: Annotated[str | None, Header(
        alias="X-On-Behalf-Groups", description="With X-On-Behalf-Of: the person's groups, "
                                                "comma separated.")] = None,
) -> Caller:
    """Whom the request is from (every route but the probes, /metrics and the documents
    depends on it)."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.caller(
        authorization=request.headers.get("authorization"),
        api_key=request.headers.get("x-api-key"),
        on_behalf_of=on_behalf_of, on_behalf_groups=on_behalf_groups)


Who = Annotated[Caller, Depends(caller_of)]
Hitl = Annotated[HitlClient, Depends(_client)]


def _serve_health(app: FastAPI) -> None:
    """Probes and metrics: no credentials (they show no thread's content)."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready when connected to NATS (the gateway reads and writes nothing else)."""
        hitl: HitlClient | None = getattr(request.app.state, "hitl", None)
        connected = hitl is not None and hitl.connected
        return JSONResponse({"status": "ready" if connected else "not ready",
                             "checks": {"nats": {"ok": connected}}},
                            status_code=200 if connected else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """This process's Prometheus metrics."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _serve_contract(app: FastAPI) -> None:
    """The NATS contract, public like the OpenAPI document at /docs."""

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
    """The gateway's app; raises :class:`~hitlflow.settings.SettingsError` when it could not
    check credentials (no key for tokens, not on NATS as the gateway user)."""
    settings = gateway_settings(settings)
    authenticator = Authenticator(settings, Directory(settings.identity_file))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hitl = client or HitlClient(settings.resolved_nats_url(),
                                    reply_timeout=settings.reply_timeout,
                                    auth=settings.nats_auth(),
                                    principal=settings.principal)
        await hitl.connect()
        app.state.hitl = hitl
        log.info("gateway_started", nats_user=hitl.principal, tokens=authenticator.mode,
                 authorization=authenticator.directory.enabled,
                 gateway_user=settings.gateway_user)
        try:
            yield
        finally:
            await hitl.close()

    app = FastAPI(title="hitlflow", version="0.1.0", lifespan=lifespan, description=DESCRIPTION)
    app.state.authenticator = authenticator
    app.add_middleware(LimitBody)
    _answer_errors(app)

    _serve_health(app)
    _serve_contract(app)

    _command_routes(app)
    _task_routes(app)
    _query_routes(app)
    web.install(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        """People who open the gateway's address find the inbox."""
        return RedirectResponse("/ui/inbox", 303)

    return app


def _command_routes(app: FastAPI) -> None:
    @app.post("/threads", status_code=201, responses=COMMAND_RESPONSES)
    async def start(body: StartBody, caller: Who, hitl: Hitl) -> JSONResponse:
        """Start a thread; answers once it pauses or ends, with what it waits for. Systems
        and operators may start threads (responders answer them)."""
        caller.check_may("start")
        try:
            workflow = parse_workflow(body.csv, body.graph, source="request body")
        except WorkflowError as error:
            raise HTTPException(400, {"error": "invalid workflow",
                                      "problems": [str(p) for p in error.problems]}) from error
        if body.thread_id is not None:
            _thread_id(body.thread_id)
        outcome = await hitl.start(workflow, body.state, thread_id=body.thread_id,
                                   principal=caller.principal,
                                   on_behalf_of=caller.on_behalf_of)
        return _outcome_response(outcome, 201)

    @app.post("/threads/{thread_id}/resume", responses=COMMAND_RESPONSES, openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": ResumeBody.model_json_schema()}}}})
    async def resume(
        thread_id: str,
        request: Request,
        caller: Who,
        hitl: Hitl,
        idempotency_key: str | None = Header(default=None),
    ) -> JSONResponse:
        """Answer a request: ``{"action": "approve", "data": {...}, "shown": "...",
        "request_id": "..."}``. ``shown`` is the version of the request answered (from its
        entry in ``GET /pending``): an answer to an earlier one is refused ``stale_view``.
        The audit records the authenticated principal (and, for a system acting for someone,
        that person). An ``Idempotency-Key`` header (or body field) makes it safe to send
        again. A body that is not JSON is refused and kept in the audit."""
        _thread_id(thread_id)
        caller.check_may("resume")
        raw = (await request.body()).decode("utf-8", errors="replace")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            outcome = await hitl.resume(thread_id, "(unparsed)", raw_data=raw,
                                        idempotency_key=idempotency_key, **caller.assertion())
            return _outcome_response(outcome)
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            raise HTTPException(422, "expected a JSON object with 'action' (a string), 'shown' "
                                     "and optional 'data' (an object), 'request_id'")
        if "shown" not in body:
            return JSONResponse({"code": "invalid_command", "error": (
                "expected 'shown': the version of the request you answer, as its entry in "
                "GET /pending (or the thread's 'pending') gives it; an answer to another "
                "version is refused stale_view")}, status_code=422)
        answer = ResumeBody.model_validate(body)
        outcome = await hitl.resume(
            thread_id, answer.action, answer.data, request_id=answer.request_id,
            idempotency_key=answer.idempotency_key or idempotency_key, shown=answer.shown,
            **caller.assertion())
        return _outcome_response(outcome)

    @app.post("/threads/{thread_id}/cancel", responses=COMMAND_RESPONSES)
    async def cancel(thread_id: str, body: CancelBody, caller: Who, hitl: Hitl) -> JSONResponse:
        _thread_id(thread_id)
        caller.check_may("cancel")
        return _outcome_response(await hitl.cancel(
            thread_id, body.reason, principal=caller.principal,
            on_behalf_of=caller.on_behalf_of))


def _task_routes(app: FastAPI) -> None:
    def route(op: str) -> Callable[..., Awaitable[JSONResponse]]:
        async def task(thread_id: str, caller: Who, hitl: Hitl, body: TaskBody | None = None,
                       idempotency_key: str | None = Header(default=None)) -> JSONResponse:
            _thread_id(thread_id)
            caller.check_may("task")
            body = body or TaskBody()
            to = [body.to] if isinstance(body.to, str) else list(body.to or [])
            if op in ("claim", "release") and (to or body.candidate_groups):
                raise HTTPException(422, f"{op} takes no 'to' or 'candidate_groups'")
            if op == "delegate" and (len(to) != 1 or body.candidate_groups):
                raise HTTPException(422, "delegate needs 'to': the one person who takes the "
                                         "request over (and no 'candidate_groups')")
            outcome = await hitl.task(
                thread_id, op, request_id=body.request_id, to=to,
                candidate_groups=body.candidate_groups,
                idempotency_key=body.idempotency_key or idempotency_key, **caller.assertion())
            return _outcome_response(outcome)

        return task

    for op, summary in (
        ("claim", "Claim a request: only you may answer it until you release it"),
        ("release", "Give up a claim (an operator may release anyone's)"),
        ("delegate", "Hand a request you may answer to one person (`to`), who becomes its "
                     "claimant"),
        ("reassign", "Change who a request is for (`to`, `candidate_groups`): operators"),
    ):
        app.post(f"/threads/{{thread_id}}/{op}", name=op, summary=summary,
                 responses=COMMAND_RESPONSES)(route(op))


def _query_routes(app: FastAPI) -> None:
    @app.get("/threads/{thread_id}", responses=AUTH_RESPONSES)
    async def thread(thread_id: str, caller: Who, hitl: Hitl, at: str | None = Query(
            default=None, description="The thread as it stood after this event: its number "
            "in the timeline (1 = the first) or a moment (ISO 8601).")) -> dict[str, Any]:
        _thread_id(thread_id)
        if at is not None:
            return await _thread_at(hitl, thread_id, at)
        view = await hitl.thread(thread_id)
        if view is None:
            raise HTTPException(404, f"unknown thread {thread_id!r}")
        return view.model_dump(mode="json")

    @app.get("/threads", responses=AUTH_RESPONSES)
    async def threads(caller: Who, hitl: Hitl, status: str | None = None,
                      limit: int = Query(default=100, ge=1, le=MAX_HTTP_LIST),
                      ) -> list[dict[str, Any]]:
        return [t.model_dump(mode="json") for t in await hitl.threads(status, limit)]

    @app.get("/pending", responses=AUTH_RESPONSES)
    async def pending(caller: Who, hitl: Hitl, thread_id: str | None = None,
                      mine: bool = Query(default=False, description=(
                          "Only what the caller may answer now: claimed by them, or unclaimed "
                          "and for them, one of their groups, or anyone.")),
                      limit: int = Query(default=100, ge=1, le=MAX_HTTP_LIST),
                      ) -> list[dict[str, Any]]:
        """Open requests, oldest first (each with the ``shown`` to send back with an
        answer)."""
        if mine:
            if thread_id is not None:
                raise HTTPException(400, "mine=true lists across threads: leave out thread_id")
            items = await hitl.mine(limit, principal=caller.person, groups=caller.groups)
            return [p.model_dump(mode="json") for p in items]
        if thread_id is not None:
            _thread_id(thread_id)
        return [p.model_dump(mode="json") for p in await hitl.pending(thread_id, limit)]
