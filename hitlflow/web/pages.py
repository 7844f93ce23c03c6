"""The web pages of the gateway (``/ui/``): the inbox, one page per request, the thread page,
the operator dashboard and the audit search.

Who a page is for comes from the same :class:`~hitlflow.gateway_auth.Authenticator` as the
API: the bearer token a person signs in with is kept in an HttpOnly, SameSite=Strict cookie
(so another site cannot make a browser send it). On a stack without authorization, pages are
from ``HITLFLOW_GATEWAY_USER``. Everything shown is read from the projections; every answer is
the CLI's resume command with the request's ``shown`` and an idempotency key made for the form
as it was rendered: a double click or a resent form answers once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from contracts.catalog import REFUSAL_CODES
from contracts.events import shown_digest
from contracts.limits import MAX_IDEMPOTENCY_KEY, MAX_PAGE_ITEMS
from contracts.queries import AnalyticsQuery, AuditQuery, PendingInteraction
from contracts.subjects import NOTIFY_ALL, InvalidThreadIdError, check_thread_id
from hitlflow.cli_common import describe_input_error
from hitlflow.cli_projections import AuditWriter, Format
from hitlflow.client import HitlClient, Outcome, QueryRefusedError
from hitlflow.gateway_auth import (
    Authenticator,
    Caller,
    InvalidHeaderError,
    NotAuthenticatedError,
    RequestForbiddenError,
)
from hitlflow.web import views
from projections.time_travel import TimeTravelError, fold, resolve
from services.common.clock import Clock, SystemClock
from services.common.logging import get_logger

log = get_logger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "hitlflow_session"
#: Most requests the inbox lists (the oldest beyond are counted, not shown).
MAX_INBOX = 1_000
#: Most audit entries one search page shows (the CSV export has them all).
MAX_AUDIT_ROWS = 500
#: Seconds between keep-alive comments on the live feed.
KEEPALIVE_SECONDS = 15.0
#: Events queued for one slow browser before it is told to reload whatever it shows.
FEED_QUEUE = 100

#: What each refusal means to the person who answered, before the service's own words.
REFUSAL_WORDS = {
    "already_answered": "Someone answered this request before you; the first answer stands.",
    "late": "This request timed out before your answer came.",
    "stale_view": "This request changed since this page was shown (it was escalated, "
                  "reassigned or delegated). Read it again below, then answer.",
    "forbidden": "You may not answer this request.",
    "claimed": "Someone else has claimed this request.",
    "not_claimed": "This request is not claimed.",
    "invalid_response": "The answer does not fit this request.",
    "not_waiting": "The thread no longer waits on this request.",
    "thread_ended": "The thread has ended; nothing waits for an answer.",
    "unknown_thread": "There is no such thread.",
    "too_large": "The answer is too large.",
    "already_voted": "You have voted on this request already.",
    "not_claimable": "A quorum request is answered by every voter; it cannot be claimed.",
}


#: An answer to a request that closed meanwhile: what closed it, in words.
CLOSED_WORDS = {"accepted": REFUSAL_WORDS["already_answered"], "timed_out": REFUSAL_WORDS["late"],
                "cancelled": "This request was cancelled before your answer came."}


class SignInRequiredError(Exception):
    """A page asked for without valid credentials: the browser goes to the sign-in page."""

    def __init__(self, next_path: str, reason: str) -> None:
        super().__init__(reason)
        self.next_path = next_path


class PageError(Exception):
    """A page that cannot be shown: its status and the sentence that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Feed:
    """The live feed behind ``/ui/events``: one NATS subscription (requests announced, and the
    interaction service's events) fanned out to every open page, started with the first page
    and stopped with the last."""

    def __init__(self) -> None:
        self.listeners: set[asyncio.Queue[str]] = set()
        self._subscriptions: list[Any] = []
        self._lock = asyncio.Lock()

    async def _on_message(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        kind = "InteractionRequested" if parts[1] == "notify" else parts[3]
        data = json.dumps({"thread_id": parts[-1], "event": kind})
        for queue in list(self.listeners):
            if queue.full():  # a page that does not keep up reloads what it shows once
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
            queue.put_nowait(data)

    async def listen(self, hitl: HitlClient) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(FEED_QUEUE)
        async with self._lock:
            if not self._subscriptions:
                self._subscriptions = [
                    await hitl.nc.subscribe(NOTIFY_ALL, cb=self._on_message),
                    await hitl.nc.subscribe("hitl.evt.interaction.>", cb=self._on_message)]
            self.listeners.add(queue)
        return queue

    async def leave(self, queue: asyncio.Queue[str]) -> None:
        async with self._lock:
            self.listeners.discard(queue)
            if not self.listeners:
                subscriptions, self._subscriptions = self._subscriptions, []
                for subscription in subscriptions:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(types=views.TYPES, json_text=views.json_text,
                                 seconds_text=views.seconds_text, rate_text=views.rate_text,
                                 as_text=views.as_text)
    return templates


TEMPLATES = _templates()


def install(app: FastAPI, clock: Clock | None = None) -> None:
    """Serve the pages on ``app`` (the gateway): routes, static files, sign-in."""
    app.state.web_clock = clock or SystemClock()
    app.state.feed = Feed()
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
    app.include_router(ROUTER)

    @app.exception_handler(SignInRequiredError)
    async def sign_in(request: Request, error: SignInRequiredError) -> Response:
        response = RedirectResponse(
            "/ui/login?" + urlencode({"next": error.next_path, "why": str(error)}), 303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    @app.exception_handler(PageError)
    async def page_error(request: Request, error: PageError) -> Response:
        return error_page(request, error.status, str(error))


ROUTER = APIRouter(prefix="/ui", include_in_schema=False)


def is_page(request: Request) -> bool:
    """A request for one of these pages (its failures are pages too)."""
    return request.url.path.startswith("/ui/")


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A page that says why what was asked for cannot be shown."""
    return _render(request, "error.html", {"message": message}, status)


# -- who is asking ------------------------------------------------------------------------------


def _hitl(request: Request) -> HitlClient:
    client: HitlClient = request.app.state.hitl
    return client


def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.web_clock
    return clock.now()


async def _caller(request: Request) -> Caller:
    """The signed-in person (the session cookie's token), else a bearer header, else, on a stack
    without authorization, the configured user; otherwise to the sign-in page."""
    authenticator: Authenticator = request.app.state.authenticator
    token = request.cookies.get(SESSION_COOKIE)
    authorization = f"Bearer {token}" if token else request.headers.get("authorization")
    try:
        return await authenticator.caller(authorization=authorization, api_key=None,
                                          on_behalf_of=None, on_behalf_groups=None)
    except NotAuthenticatedError as error:
        reason = "" if authorization is None else f"your sign-in was not accepted: {error}"
        raise SignInRequiredError(request.url.path, reason) from None
    except (RequestForbiddenError, InvalidHeaderError) as error:
        raise PageError(403, str(error)) from None


def _check_same_site(request: Request) -> None:
    """A form posted from another site is refused (the cookie is SameSite=Strict as well)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise PageError(403, "this form was sent from another site; open the page here and "
                             "send it again")


def _render(request: Request, template: str, context: dict[str, Any],
            status: int = 200) -> HTMLResponse:
    authenticator: Authenticator = request.app.state.authenticator
    base = {"signed_in": request.cookies.get(SESSION_COOKIE) is not None,
            "sign_in_needed": authenticator.directory.enabled}
    return TEMPLATES.TemplateResponse(request, template, {**base, **context},
                                      status_code=status)


def _thread_id(value: str) -> str:
    try:
        return check_thread_id(value)
    except InvalidThreadIdError as error:
        raise PageError(400, str(error)) from None


# -- sign-in ------------------------------------------------------------------------------------


def _safe_next(path: str | None) -> str:
    """Only a path of these pages (never another site) is a place to go after signing in."""
    if path and path.startswith("/ui/") and not path.startswith("//"):
        return path
    return "/ui/inbox"


@ROUTER.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/inbox", 303)


@ROUTER.get("/login")
async def login_page(request: Request, next: str | None = None,
                     why: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", {"next": _safe_next(next), "why": why or ""})


@ROUTER.post("/login")
async def login(request: Request) -> Response:
    _check_same_site(request)
    form = await request.form()
    token = str(form.get("token") or "").strip()
    target = _safe_next(str(form.get("next") or ""))
    authenticator: Authenticator = request.app.state.authenticator
    try:
        caller = await authenticator.caller(authorization=f"Bearer {token}", api_key=None,
                                            on_behalf_of=None, on_behalf_groups=None)
    except (NotAuthenticatedError, RequestForbiddenError) as error:
        return _render(request, "login.html", {"next": target, "why": str(error)}, 401)
    response = RedirectResponse(target, 303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/ui",
                        secure=request.url.scheme == "https")
    log.info("web_signed_in", principal=caller.principal)
    return response


@ROUTER.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


# -- the inbox ----------------------------------------------------------------------------------


async def _inbox(request: Request) -> dict[str, Any]:
    caller = await _caller(request)
    hitl = _hitl(request)
    wanted = views.InboxFilter.of(request.query_params)
    items = await hitl.mine(MAX_INBOX, principal=caller.person, groups=caller.groups)
    graphs = {view.thread_id: view.graph_name
              for view in await hitl.threads("paused", MAX_INBOX)}
    rows = views.inbox_rows(items, graphs, wanted, _now(request))
    return {"caller": caller, "rows": rows, "filter": wanted, "total": len(items),
            "graphs": sorted(set(graphs.values()))}


@ROUTER.get("/inbox")
async def inbox(request: Request) -> HTMLResponse:
    return _render(request, "inbox.html", await _inbox(request))


@ROUTER.get("/inbox/rows")
async def inbox_rows(request: Request) -> HTMLResponse:
    """The inbox's table alone: what the page fetches when the live feed says something
    changed."""
    return _render(request, "_rows.html", await _inbox(request))


@ROUTER.get("/events")
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: ``changed`` whenever a request is raised, answered, claimed or
    closed (no content: the page fetches what the signed-in person may see)."""
    await _caller(request)
    feed: Feed = request.app.state.feed
    queue = await feed.listen(_hitl(request))

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: changed\ndata: {data}\n\n"
        finally:
            await feed.leave(queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- one request --------------------------------------------------------------------------------


async def _open_request(hitl: HitlClient, thread_id: str,
                        request_id: str) -> PendingInteraction | None:
    return next((p for p in await hitl.pending(thread_id, MAX_PAGE_ITEMS) if p.id == request_id),
                None)


async def _closed_request(hitl: HitlClient, thread_id: str,
                          request_id: str) -> dict[str, Any] | None:
    """What became of a request no longer open: its audit entries (None: never raised)."""
    try:
        entries = [e async for e in hitl.audit(AuditQuery(thread_id=thread_id,
                                                           request_id=request_id))]
    except QueryRefusedError:
        return None
    if not entries:
        return None
    closing = next((e for e in reversed(entries) if e.event in (
        "accepted", "timed_out", "cancelled")), None)
    return {"entries": entries, "closing": closing, "first": entries[0]}


def _request_context(request: Request, caller: Caller, item: PendingInteraction,
                     form: dict[str, str] | None = None, error: dict[str, str] | None = None,
                     transcript: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    now = _now(request)
    left, overdue = views.countdown(item.deadline, now)
    original = views.as_text(item.context.get("original_content"))
    submitted = form or {}
    edited = submitted.get("edited", original)
    return {
        "caller": caller, "item": item, "form": submitted, "error": error,
        "form_key": uuid.uuid4().hex, "left": left, "overdue": overdue,
        "deadline": item.deadline.isoformat() if item.deadline else None,
        "digest": shown_digest(item.prompt, item.context, item.options),
        "version": item.shown.split(":", 1)[0],
        "fields": views.schema_fields(item.response_schema),
        "original": original, "edited": edited,
        "diff": views.diff_lines(original, edited) if item.interaction_type == "edit" else [],
        "transcript": transcript or [],
    }


async def _transcript(hitl: HitlClient, item: PendingInteraction) -> list[dict[str, Any]]:
    if item.interaction_type != "conversation":
        return []
    _, timeline = await hitl.timeline(item.thread_id)
    return views.transcript(timeline, item.node_name)


async def _show_request(request: Request, thread_id: str, request_id: str,
                        form: dict[str, str] | None = None,
                        error: dict[str, str] | None = None, status: int = 200,
                        notice: str | None = None) -> HTMLResponse:
    caller = await _caller(request)
    hitl = _hitl(request)
    item = await _open_request(hitl, thread_id, request_id)
    if item is None:
        closed = await _closed_request(hitl, thread_id, request_id)
        if closed is None:
            raise PageError(404, f"thread {thread_id!r} has no request {request_id!r}")
        if error and closed["closing"] is not None:  # say what became of the request itself
            error = {**error, "words": CLOSED_WORDS.get(closed["closing"].event, error["words"])}
        return _render(request, "closed.html", {"caller": caller, "thread_id": thread_id,
                                                "request_id": request_id, "error": error,
                                                **closed}, status if error else 200)
    context = _request_context(request, caller, item, form, error,
                               await _transcript(hitl, item))
    return _render(request, "request.html", {**context, "notice": notice}, status)


@ROUTER.get("/requests/{thread_id}/{request_id}")
async def request_page(request: Request, thread_id: str, request_id: str,
                       done: str | None = None) -> HTMLResponse:
    _thread_id(thread_id)
    notice = {"claim": "You claimed this request: only you may answer it now.",
              "release": "You released this request."}.get(done or "")
    return await _show_request(request, thread_id, request_id, notice=notice)


def _refusal(outcome: Outcome) -> dict[str, str]:
    code = outcome.reply.code or ""
    return {"code": code, "words": REFUSAL_WORDS.get(code, "The answer was not accepted."),
            "detail": outcome.reply.error or outcome.error or ""}


@ROUTER.post("/requests/{thread_id}/{request_id}")
async def answer(request: Request, thread_id: str, request_id: str) -> Response:
    """Send the form's answer; on success go to the thread (303), on a refusal show the page
    again with the reason in words (and the service's status: 409, 422, 403)."""
    _thread_id(thread_id)
    _check_same_site(request)
    caller = await _caller(request)
    try:
        caller.check_may("resume")
    except RequestForbiddenError as error:
        raise PageError(403, str(error)) from None
    hitl = _hitl(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    key = form.get("idempotency_key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise PageError(400, f"the form's idempotency key is longer than "
                             f"{MAX_IDEMPOTENCY_KEY} characters")
    item = await _open_request(hitl, thread_id, request_id)
    if item is None:  # answered, timed out, or this very form was sent before: the service says
        action, data = form.get("action", ""), None
    else:
        try:
            action, data = views.answer_from_form(item, form)
        except views.FormError as error:
            return await _show_request(request, thread_id, request_id, form, {
                "code": "invalid_response", "words": "The answer is not complete.",
                "detail": str(error)}, 422)
    try:
        outcome = await hitl.resume(thread_id, action or "(none)", data, request_id=request_id,
                                    shown=form.get("shown", ""), idempotency_key=key,
                                    **caller.assertion())
    except ValidationError as error:
        return await _show_request(request, thread_id, request_id, form, {
            "code": "invalid_command", "words": "The answer could not be sent.",
            "detail": describe_input_error(error)}, 422)
    if outcome.ok:
        done = ("again" if outcome.reply.duplicate else
                "answered" if outcome.reply.decided else "voted")
        return RedirectResponse(f"/ui/threads/{thread_id}?{done}={request_id}", 303)
    status = REFUSAL_CODES.get(outcome.reply.code or "", (409, ""))[0]
    log.info("web_answer_refused", thread_id=thread_id, interaction_id=request_id,
             code=outcome.reply.code, principal=caller.principal)
    return await _show_request(request, thread_id, request_id, form, _refusal(outcome), status)


@ROUTER.post("/requests/{thread_id}/{request_id}/{op}")
async def task(request: Request, thread_id: str, request_id: str, op: str) -> Response:
    """Claim or release the request."""
    _thread_id(thread_id)
    _check_same_site(request)
    if op not in ("claim", "release"):
        raise PageError(404, f"no such operation {op!r}: claim or release")
    caller = await _caller(request)
    try:
        caller.check_may("task")
    except RequestForbiddenError as error:
        raise PageError(403, str(error)) from None
    form = await request.form()
    outcome = await _hitl(request).task(
        thread_id, op, request_id=request_id,
        idempotency_key=str(form.get("idempotency_key") or "") or None, **caller.assertion())
    if outcome.ok:
        return RedirectResponse(f"/ui/requests/{thread_id}/{request_id}?done={op}", 303)
    status = REFUSAL_CODES.get(outcome.reply.code or "", (409, ""))[0]
    return await _show_request(request, thread_id, request_id, None, _refusal(outcome), status)


@ROUTER.post("/requests/{thread_id}/{request_id}/diff/preview")
async def diff_preview(request: Request, thread_id: str, request_id: str) -> HTMLResponse:
    """The edit page's diff of the text as edited so far (fetched as the person types)."""
    _thread_id(thread_id)
    await _caller(request)
    item = await _open_request(_hitl(request), thread_id, request_id)
    if item is None:
        raise PageError(404, "the request is no longer open")
    edited = str((await request.form()).get("edited") or "")[:views.MAX_DIFF_CHARS]
    edited = edited.replace("\r\n", "\n")
    original = views.as_text(item.context.get("original_content"))
    return _render(request, "_diff.html", {"diff": views.diff_lines(original, edited)})


# -- a thread -----------------------------------------------------------------------------------


@ROUTER.get("/threads/{thread_id}")
async def thread_page(request: Request, thread_id: str, at: int | None = None,
                      answered: str | None = None, again: str | None = None,
                      voted: str | None = None) -> HTMLResponse:
    """Status, requests, who answered what, and the timeline; ``?at=N`` shows the thread as
    it stood after event N (computed from the events)."""
    _thread_id(thread_id)
    caller = await _caller(request)
    hitl = _hitl(request)
    view, timeline = await hitl.timeline(thread_id)
    if view is None:
        raise PageError(404, f"no thread {thread_id!r} has started")
    then = None
    if at is not None:
        try:
            then = fold(thread_id, timeline, resolve(timeline, at, thread_id))
        except TimeTravelError as error:
            raise PageError(400, str(error)) from None
    answers = [e async for e in hitl.audit(AuditQuery(thread_id=thread_id))
               if e.event in ("accepted", "rejected", "timed_out", "cancelled")]
    notice = None
    if answered:
        notice = "Your answer was recorded."
    elif voted:
        notice = ("Your vote was recorded; the request stays open until enough votes decide "
                  "it.")
    elif again:
        notice = "This answer had been recorded already (the form was sent twice); it counts once."
    return _render(request, "thread.html", {
        "caller": caller, "view": view, "timeline": timeline, "then": then, "answers": answers,
        "notice": notice, "summary": views.event_summary, "milestones": views.MILESTONES,
        "request_url": views.request_url})


# -- operators ----------------------------------------------------------------------------------


@ROUTER.get("/dashboard")
async def dashboard(request: Request, days: float | None = None) -> HTMLResponse:
    """Totals, backlog, response times, rates and bottlenecks (the analytics view), and the
    oldest waiting requests."""
    caller = await _caller(request)
    hitl = _hitl(request)
    try:
        query = AnalyticsQuery(days=days) if days else AnalyticsQuery()
    except ValidationError as error:
        raise PageError(400, describe_input_error(error)) from None
    reply = await hitl.analytics(query)
    oldest = await hitl.pending(None, 10)
    now = _now(request)
    waiting = [(item, views.countdown(item.deadline, now)[0],
                views.span_since(item.created_at, now)) for item in oldest]
    return _render(request, "dashboard.html", {
        "caller": caller, "reply": reply, "board": views.dashboard(reply), "oldest": waiting,
        "days": days, "request_url": views.request_url})


#: The audit search's fields (AuditQuery's), as the form names them.
AUDIT_FIELDS = ("thread_id", "node_name", "responder", "action", "interaction_type", "event",
                "since", "until")


def _audit_query(request: Request, limit: int) -> tuple[AuditQuery, dict[str, str]]:
    given = {name: request.query_params[name].strip() for name in AUDIT_FIELDS
             if request.query_params.get(name, "").strip()}
    try:
        return AuditQuery.model_validate({**given, "limit": limit}), given
    except ValidationError as error:
        raise PageError(400, "the search does not fit: " + describe_input_error(error)) \
            from None


@ROUTER.get("/audit")
async def audit_page(request: Request) -> HTMLResponse:
    caller = await _caller(request)
    query, given = _audit_query(request, MAX_AUDIT_ROWS)
    entries = []
    async for entry in _hitl(request).audit(query):
        entries.append(entry)
        if len(entries) >= MAX_AUDIT_ROWS:
            break
    return _render(request, "audit.html", {
        "caller": caller, "entries": entries, "given": given,
        "more": len(entries) >= MAX_AUDIT_ROWS,
        "csv_url": "/ui/audit.csv" + ("?" + urlencode(given) if given else ""),
        "events": ("requested", "accepted", "rejected", "timed_out", "cancelled", "reminded",
                   "escalated", "claimed", "released", "delegated", "reassigned", "voted",
                   "refused")})


@ROUTER.get("/audit.csv")
async def audit_csv(request: Request) -> StreamingResponse:
    """Every entry the search matches, as CSV (the columns of ``hitlflow audit --format
    csv``), streamed a page at a time."""
    await _caller(request)
    query, _ = _audit_query(request, MAX_PAGE_ITEMS)
    hitl = _hitl(request)

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = AuditWriter(buffer, Format.csv)
        writer.begin()
        async for entry in hitl.audit(query):
            writer.write(entry)
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="hitlflow-audit.csv"'})
