"""Async client for a running hitlflow stack: the CLI, the HTTP gateway and tests use it.

Commands go to the ``HITL_COMMANDS`` stream with an inbox in ``Hitl-Reply-To``; the client then
follows the thread's own events (``hitl.evt.*.*.<thread>``) until the thread settles, so what it
reports is the thread's state right after the command took effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from contracts import subjects
from contracts.commands import (
    CancelThread,
    CommandReply,
    ResumeThread,
    StartThread,
    TaskCommand,
)
from contracts.events import EventEnvelope
from contracts.limits import (
    MAX_ANSWER_BYTES,
    MAX_COMMAND_BYTES,
    MAX_PAGE_ITEMS,
    MAX_STATE_BYTES,
    check_bytes,
    check_size,
)
from contracts.queries import (
    ADMIN_REBUILD,
    Q_ANALYTICS,
    Q_AUDIT,
    AnalyticsQuery,
    AnalyticsReply,
    AuditEntry,
    AuditQuery,
    AuditReply,
    MineQuery,
    PendingCursor,
    PendingInteraction,
    PendingQuery,
    PendingReply,
    RebuildProgress,
    RebuildReply,
    RebuildRequest,
    ThreadQuery,
    ThreadReply,
    ThreadsCursor,
    ThreadsQuery,
    ThreadsReply,
    ThreadView,
    TimelineEvent,
    TimelineQuery,
    TimelineReply,
)
from contracts.workflow import WorkflowSpec
from projections.time_travel import ThreadAt, fold, resolve
from services.common.messaging import NatsAuth, connect

ENDINGS = {"ThreadCompleted": "completed", "ThreadFailed": "failed",
           "ThreadTimedOut": "timed_out", "ThreadCancelled": "cancelled"}


class StackUnavailableError(RuntimeError):
    """No hitlflow stack answers at the configured NATS URL."""


class NoOutcomeError(RuntimeError):
    """A command was stored but no service decided it in time."""


class QueryRefusedError(ValueError):
    """The projections refused a query (``code`` says why, e.g. ``invalid_query``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    """What a command did: the service's reply and the thread's state right after it."""

    reply: CommandReply
    status: str | None = None
    node: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    output: Any = None
    error: str | None = None
    events: list[EventEnvelope] = field(default_factory=list)
    #: The ``Hitl-Correlation-Id`` the command was sent with (find it in the services' logs).
    correlation_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.reply.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.reply.ok,
            "thread_id": self.reply.thread_id,
            "code": self.reply.code,
            "error": self.reply.error or self.error,
            "interaction_id": self.reply.interaction_id,
            "action": self.reply.action,
            "duplicate": self.reply.duplicate,
            "decided": self.reply.decided,
            "status": self.status,
            "node": self.node,
            "output": self.output,
            "pending": self.pending,
        }


class _ThreadWatch:
    """Collects one thread's events and tells when it has settled."""

    def __init__(self) -> None:
        self.events: list[EventEnvelope] = []
        self.queue: asyncio.Queue[EventEnvelope] = asyncio.Queue()

    async def on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            self.queue.put_nowait(EventEnvelope.model_validate_json(msg.data))

    async def seen(self, event_type: str, request_id: str | None, timeout: float) -> bool:
        """Wait until an event of ``event_type`` about ``request_id`` arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                env = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                return False
            self.events.append(env)
            if env.event_type == event_type and env.payload.get("request_id") == request_id:
                return True
        return False

    async def settle(self, outcome: Outcome, timeout: float,
                     after_interaction: str | None = None) -> bool:
        """Wait until the thread pauses (with every request opened) or ends, at most
        ``timeout`` seconds. Returns whether the command's effect was seen at all: the thread's
        first event after a start, its ThreadResumed for ``after_interaction`` after an
        answer. (A thread that resumed and is still running when the time is up has seen it.)"""
        waiting_for_resume = after_interaction is not None
        seen = False
        expected: set[str] = set()
        opened: dict[str, dict[str, Any]] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return seen
            try:
                env = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                return seen
            self.events.append(env)
            seen = seen or not waiting_for_resume
            p = env.payload
            if waiting_for_resume:
                if env.event_type == "ThreadResumed" and p["interaction_id"] == after_interaction:
                    waiting_for_resume = False
                    seen = True
                    outcome.status = "running"
                    if p.get("waiting_on", 0) > 0:
                        outcome.status = "paused"
                        outcome.node = p["node"]
                        return True
                continue
            if env.event_type == "ThreadPaused":
                outcome.status = "paused"
                outcome.node = p["node"]
                expected = {i["id"] for i in p["interactions"]}
            elif env.event_type == "InteractionRequested":
                opened[p["id"]] = p
            elif env.event_type in ENDINGS:
                outcome.status = ENDINGS[env.event_type]
                outcome.node = p.get("node")
                outcome.output = p.get("output")
                outcome.error = p.get("error")
                return True
            elif env.event_type == "NodeCompleted":
                outcome.status = "running"
            if expected and expected <= set(opened):
                outcome.pending = sorted((opened[i] for i in expected),
                                         key=lambda r: r.get("batch_index", 0))
                return True


#: The events that show a command took effect when it moves no thread: a task operation, or a
#: vote that did not decide its quorum.
REQUEST_EFFECTS = {"claim": "InteractionClaimed", "release": "InteractionReleased",
                   "delegate": "InteractionDelegated", "reassign": "InteractionReassigned",
                   "vote": "VoteCast"}


class HitlClient:
    def __init__(self, nats_url: str, *, reply_timeout: float = 15.0,
                 auth: NatsAuth | None = None, principal: str | None = None) -> None:
        self.nats_url = nats_url
        self.reply_timeout = reply_timeout
        self._auth: NatsAuth = auth or {"user": None, "password": None, "token": None}
        #: Who this client sends commands as: its NATS user when it has one (the server lets
        #: it publish only under that name), else ``principal``.
        self.principal = (self._auth.get("user") or principal or os.environ.get("USER")
                          or "anonymous")
        self._nc: Client | None = None

    async def __aenter__(self) -> HitlClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            self._nc = await connect(self.nats_url, name="hitlflow-client",
                                     reconnect_attempts=3, **self._auth)
        except Exception as error:
            raise StackUnavailableError(
                f"cannot reach NATS at {self.nats_url} ({error.__class__.__name__}); start the "
                "embedded stack with 'hitlflow up' or point HITLFLOW_NATS_URL at a running one"
            ) from error

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    @property
    def connected(self) -> bool:
        """Connected to NATS now (False before connect, after close, while reconnecting)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "client not connected"
        return self._nc

    # -- commands ---------------------------------------------------------------------------

    async def start(self, workflow: WorkflowSpec, state: dict[str, Any] | None = None, *,
                    thread_id: str | None = None, on_behalf_of: str | None = None,
                    principal: str | None = None, wait: bool = True) -> Outcome:
        """Start a thread. ``on_behalf_of``: the person a system acts for; ``principal``: whom
        the gateway authenticated (only the gateway's user may name one)."""
        check_size("the initial state", state or {}, MAX_STATE_BYTES)
        command = StartThread(thread_id=thread_id or f"thread_{uuid.uuid4().hex[:12]}",
                              workflow=workflow, state=state or {}, principal=principal,
                              on_behalf_of=on_behalf_of)
        return await self._send(subjects.start_subject(self.principal, command.thread_id),
                                command, command.thread_id, wait=wait)

    async def resume(self, thread_id: str, action: str, data: Any = None, *,
                     raw_data: str | None = None, request_id: str | None = None,
                     idempotency_key: str | None = None, shown: str | None = None,
                     on_behalf_of: str | None = None, groups: list[str] | None = None,
                     principal: str | None = None, wait: bool = True) -> Outcome:
        """Answer a request. ``shown`` is the version of the request the answer was given to
        (from its pending entry, notification or InteractionRequested); without it, the
        version open now is looked up and answered."""
        if raw_data is not None:
            check_bytes("the answer's data", len(raw_data.encode()), MAX_ANSWER_BYTES)
        else:
            check_size("the answer's data", data, MAX_ANSWER_BYTES)
        if shown is None:
            shown = await self._shown(thread_id, request_id)
        command = ResumeThread(thread_id=thread_id, action=action, data=data, raw_data=raw_data,
                               request_id=request_id,
                               idempotency_key=idempotency_key or uuid.uuid4().hex,
                               shown=shown, on_behalf_of=on_behalf_of, groups=groups,
                               principal=principal)
        return await self._send(subjects.resume_subject(self.principal, thread_id), command,
                                thread_id, wait=wait)

    async def task(self, thread_id: str, op: str, *, request_id: str | None = None,
                   to: list[str] | None = None, candidate_groups: list[str] | None = None,
                   idempotency_key: str | None = None, on_behalf_of: str | None = None,
                   groups: list[str] | None = None, principal: str | None = None) -> Outcome:
        """Claim, release, delegate (``to``: one person) or reassign (``to``,
        ``candidate_groups``) a request of the thread."""
        command = TaskCommand.model_validate({
            "thread_id": thread_id, "op": op, "request_id": request_id, "to": to or [],
            "candidate_groups": candidate_groups or [],
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
            "on_behalf_of": on_behalf_of, "groups": groups, "principal": principal})
        return await self._send(subjects.task_subject(self.principal, thread_id), command,
                                thread_id)

    async def cancel(self, thread_id: str, reason: str = "", *, on_behalf_of: str | None = None,
                     principal: str | None = None) -> Outcome:
        command = CancelThread(thread_id=thread_id, reason=reason, on_behalf_of=on_behalf_of,
                               principal=principal)
        return await self._send(subjects.cancel_subject(self.principal, thread_id), command,
                                thread_id)

    async def _shown(self, thread_id: str, request_id: str | None) -> str:
        """The ``shown`` of the open request an answer goes to (``-`` when none is open: the
        service then says why, as for any answer to a thread that does not wait)."""
        try:
            pending = await self.pending(thread_id, limit=MAX_PAGE_ITEMS)
        except (StackUnavailableError, QueryRefusedError):
            pending = []
        for item in pending:
            if request_id in (None, item.id):
                return item.shown or "-"
        return "-"

    async def publish_raw(self, subject: str, payload: bytes) -> CommandReply:
        """Send bytes as a command (for systems that build their own JSON); returns the reply."""
        check_bytes("the command", len(payload), MAX_COMMAND_BYTES)
        inbox = self.nc.new_inbox()
        replies = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.jetstream().publish(subject, payload,
                                              headers={subjects.REPLY_TO_HEADER: inbox})
            msg = await replies.next_msg(self.reply_timeout)
        except NatsTimeoutError as error:
            raise NoOutcomeError(f"no service answered {subject} in time") from error
        finally:
            with contextlib.suppress(Exception):
                await replies.unsubscribe()
        return CommandReply.model_validate_json(msg.data)

    async def _send(self, subject: str, command: Any, thread_id: str, *,
                    wait: bool = True) -> Outcome:
        try:
            payload = command.model_dump_json().encode()
        except PydanticSerializationError:
            check_size("the command", command.model_dump(mode="json"), MAX_COMMAND_BYTES)
            raise  # not a lone surrogate (which check_size names): a fault
        check_bytes("the command", len(payload), MAX_COMMAND_BYTES)
        correlation_id = uuid.uuid4().hex  # in every event the command causes, and the logs
        nc = self.nc
        watch = _ThreadWatch()
        events = await nc.subscribe(subjects.thread_events_subject(thread_id), cb=watch.on_msg)
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox, max_msgs=1)
        try:
            await nc.jetstream().publish(subject, payload,
                                         headers={subjects.REPLY_TO_HEADER: inbox,
                                                  subjects.CORRELATION_HEADER: correlation_id})
            try:
                msg = await replies.next_msg(self.reply_timeout)
            except NatsTimeoutError as error:
                raise NoOutcomeError(
                    f"the command was stored on {subject} but no service decided it within "
                    f"{self.reply_timeout:g}s; is the stack running ('hitlflow up')?"
                ) from error
            reply = CommandReply.model_validate_json(msg.data)
            outcome = Outcome(reply=reply, correlation_id=correlation_id)
            if reply.ok and not reply.duplicate and not reply.decided:
                effect = REQUEST_EFFECTS["vote" if reply.command == "resume" else
                                         reply.action or ""]
                if not await watch.seen(effect, reply.interaction_id, self.reply_timeout):
                    raise NoOutcomeError(_not_carried_out(reply, self.reply_timeout))
            elif reply.ok and wait and not reply.duplicate:
                settled = await watch.settle(outcome, self.reply_timeout,
                                             after_interaction=reply.interaction_id
                                             if reply.command == "resume" else None)
                if not settled:
                    raise NoOutcomeError(_not_carried_out(reply, self.reply_timeout))
            outcome.events = watch.events
            after: dict[str, int] = {}
            for env in watch.events:
                after[env.service] = max(after.get(env.service, 0), env.position)
            if reply.ok:
                # Read-your-writes: return once the thread_status view shows this change.
                # The command took effect either way: with no projections service to ask
                # (starting, or down), report what the thread's own events said.
                try:
                    view = await self.thread(thread_id, after=after)
                except StackUnavailableError:
                    view = None
                if view is not None and (outcome.status is None or reply.duplicate):
                    outcome.status = view.status
                    outcome.node = view.current_node
                    outcome.pending = [p.model_dump(mode="json") for p in view.pending]
            return outcome
        finally:
            with contextlib.suppress(Exception):
                await events.unsubscribe()
            with contextlib.suppress(Exception):
                await replies.unsubscribe()

    # -- queries ----------------------------------------------------------------------------

    async def _query(self, subject: str, body: dict[str, Any],
                     timeout: float | None = None) -> dict[str, Any]:
        try:
            msg = await self.nc.request(subject, json.dumps(body, default=str).encode(),
                                        timeout=timeout or self.reply_timeout)
        except (NoRespondersError, NatsTimeoutError) as error:
            raise StackUnavailableError(
                f"no projections service answers {subject} at {self.nats_url}; "
                "is the stack running ('hitlflow up')?"
            ) from error
        result: dict[str, Any] = json.loads(msg.data)
        return result

    async def thread(self, thread_id: str, *,
                     after: dict[str, int] | None = None) -> ThreadView | None:
        query = ThreadQuery(after=after or {})
        reply = ThreadReply.model_validate(
            await self._query(subjects.thread_query_subject(thread_id), query.model_dump()))
        return reply.thread

    async def threads(self, status: str | None = None, limit: int = 100,
                      graph_name: str | None = None) -> list[ThreadView]:
        """Up to ``limit`` threads, most recently updated first (fetched a page at a time)."""
        return [view async for view in self.iter_threads(status, limit, graph_name)]

    async def iter_threads(self, status: str | None = None, limit: int | None = None,
                           graph_name: str | None = None) -> AsyncIterator[ThreadView]:
        """Threads, most recently updated first, a page at a time (all when ``limit`` is None)."""
        left = limit
        after: ThreadsCursor | None = None
        while left is None or left > 0:
            page = MAX_PAGE_ITEMS if left is None else min(left, MAX_PAGE_ITEMS)
            try:
                query = ThreadsQuery.model_validate(
                    {"status": status, "limit": page, "graph_name": graph_name, "after": after})
            except ValidationError as error:
                where = ".".join(str(p) for p in error.errors()[0]["loc"])
                raise QueryRefusedError(f"invalid threads query: {where}: "
                                        f"{error.errors()[0]['msg']}", "invalid_query") from error
            reply = ThreadsReply.model_validate(
                await self._query(subjects.Q_THREADS, query.model_dump(mode="json")))
            _raise_for(reply.error)
            for view in reply.threads:
                yield view
            if left is not None:
                left -= len(reply.threads)
            if reply.next is None:
                return
            after = reply.next

    async def pending(self, thread_id: str | None = None,
                      limit: int = 100) -> list[PendingInteraction]:
        """Up to ``limit`` open requests (of one thread, or all), oldest first."""
        found: list[PendingInteraction] = []
        after: PendingCursor | None = None
        subject = subjects.pending_query_subject(thread_id)
        while len(found) < limit:
            query = PendingQuery(limit=min(limit - len(found), MAX_PAGE_ITEMS), after=after)
            reply = PendingReply.model_validate(
                await self._query(subject, query.model_dump(mode="json")))
            _raise_for(reply.error)
            found += reply.pending
            if reply.next is None:
                break
            after = reply.next
        return found

    async def mine(self, limit: int = 100, *, principal: str | None = None,
                   groups: list[str] | None = None) -> list[PendingInteraction]:
        """Up to ``limit`` open requests this client's principal may answer now, oldest first
        (``principal``/``groups``: whom the gateway authenticated, from its user only)."""
        found: list[PendingInteraction] = []
        after: PendingCursor | None = None
        subject = subjects.mine_query_subject(self.principal)
        while len(found) < limit:
            query = MineQuery(principal=principal, groups=groups,
                              limit=min(limit - len(found), MAX_PAGE_ITEMS), after=after)
            reply = PendingReply.model_validate(
                await self._query(subject, query.model_dump(mode="json")))
            _raise_for(reply.error)
            found += reply.pending
            if reply.next is None:
                break
            after = reply.next
        return found

    async def timeline(self, thread_id: str, *, after: dict[str, int] | None = None,
                       page: int = MAX_PAGE_ITEMS,
                       ) -> tuple[ThreadView | None, list[TimelineEvent]]:
        """A thread's status and every event of it, oldest first (None when unknown)."""
        events: list[TimelineEvent] = []
        query = TimelineQuery(after_positions=after or {}, limit=page)
        subject = subjects.timeline_query_subject(thread_id)
        while True:
            reply = TimelineReply.model_validate(
                await self._query(subject, query.model_dump(mode="json")))
            if reply.error is not None and reply.error.code == "not_found":
                return None, []
            _raise_for(reply.error)
            events += reply.events
            if reply.next is None:
                return reply.thread, events
            query = query.model_copy(update={"after": reply.next, "after_positions": {}})

    async def thread_at(self, thread_id: str, at: str | int) -> ThreadAt | None:
        """The thread as it stood after event ``at`` (an event number, 1 = the first, or a
        moment), computed from its events; None when the thread is unknown. An ``at`` that
        names no event raises :class:`~projections.time_travel.TimeTravelError`."""
        view, events = await self.timeline(thread_id)
        if view is None:
            return None
        return fold(thread_id, events, resolve(events, at, thread_id))

    async def audit(self, query: AuditQuery | None = None) -> AsyncIterator[AuditEntry]:
        """Every matching audit entry, oldest first, fetched a page at a time."""
        query = query or AuditQuery()
        while True:
            reply = AuditReply.model_validate(
                await self._query(Q_AUDIT, query.model_dump(mode="json")))
            _raise_for(reply.error)
            for entry in reply.entries:
                yield entry
            if reply.next is None:
                return
            query = query.model_copy(update={"after": reply.next})

    async def analytics(self, query: AnalyticsQuery | None = None) -> AnalyticsReply:
        body = (query or AnalyticsQuery()).model_dump(mode="json")
        reply = AnalyticsReply.model_validate(await self._query(Q_ANALYTICS, body))
        _raise_for(reply.error)
        return reply

    async def rebuild(self, views: list[str] | None = None, *, timeout: float = 3600.0,
                      on_progress: Callable[[RebuildProgress], None] | None = None,
                      ) -> RebuildReply:
        """Ask the projections service to rebuild views from the event stores (all: None);
        ``on_progress`` gets its progress messages while it runs."""
        subscription: Any = None
        progress_subject = None
        if on_progress is not None:
            progress_subject = self.nc.new_inbox()

            async def on_message(msg: Msg) -> None:
                with contextlib.suppress(ValidationError):
                    on_progress(RebuildProgress.model_validate_json(msg.data))

            subscription = await self.nc.subscribe(progress_subject, cb=on_message)
        try:
            body = RebuildRequest.model_validate(
                {"views": views or [], "progress_subject": progress_subject}
            ).model_dump(mode="json", exclude_none=True)
            reply = RebuildReply.model_validate(await self._query(ADMIN_REBUILD, body, timeout))
        finally:
            if subscription is not None:  # the progress sent before the reply is still shown
                with contextlib.suppress(Exception):
                    await subscription.drain()
        _raise_for(reply.error)
        return reply


def _not_carried_out(reply: CommandReply, timeout: float) -> str:
    """What to tell the sender of a command that was decided but whose effect on the thread
    was not seen within ``timeout``: it is not reported as done."""
    if reply.command == "resume":
        done = (f"the answer was accepted (request {reply.interaction_id}) but thread "
                f"{reply.thread_id!r} did not resume")
    else:
        done = f"the {reply.command} command was accepted but thread {reply.thread_id!r} did not"\
               " move"
    return (f"{done} within {timeout:g}s: its events have not arrived. It takes effect when "
            "the stack catches up; see 'hitlflow status' and 'hitlflow doctor'")


def _raise_for(error: Any) -> None:
    if error is not None:
        raise QueryRefusedError(error.error, error.code)
