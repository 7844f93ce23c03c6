"""Wiring of the projections service: the events consumer, the views database, the query
responders (``hitl.q.*``) and the rebuild request.

The consumer resumes from the stream sequence recorded with the views (not from the durable
consumer's own acknowledgements), so after a crash the events of an interrupted batch are
applied again before any later event, and a batch whose database write fails is retried in
place: a view never sees an event before the ones that came earlier in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from faststream import Path as SubjectPart
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from contracts import subjects
from contracts.events import EventEnvelope
from contracts.queries import (
    ADMIN_REBUILD,
    Q_ANALYTICS,
    Q_AUDIT,
    AnalyticsQuery,
    AnalyticsReply,
    AuditQuery,
    AuditReply,
    PendingQuery,
    PendingReply,
    QueryError,
    RebuildReply,
    RebuildRequest,
    ThreadQuery,
    ThreadReply,
    ThreadsQuery,
    ThreadsReply,
    TimelineQuery,
    TimelineReply,
)
from hitlflow.settings import Settings
from projections import analytics, audit_trail, thread_status
from projections.db import ViewDatabase, open_view_database
from projections.projector import Projector, UnknownViewError, select_views
from projections.rebuild import RebuildResult, rebuild_from_stores
from services.common.clock import Clock, SystemClock
from services.common.consumer import (
    PoisonMessageError,
    PullConsumer,
    Subscription,
    decode_envelope,
)
from services.common.logging import get_logger
from services.common.messaging import check_server, ensure_streams, make_broker
from services.common.runtime import cancel_and_wait

log = get_logger(__name__)

DURABLE = "projections"
QUEUE = "projections"
#: Longest a read-your-writes query waits for the view to catch up.
CATCH_UP_TIMEOUT = 5.0
#: Longest pause between two attempts at a batch the database refused.
MAX_RETRY_DELAY = 5.0

Applied = Callable[[Sequence[EventEnvelope], float], None]


def _other_thread(reply: type[BaseModel], subject_thread: str,
                  body_thread: str | None) -> dict[str, Any]:
    """The reply to a query whose body names another thread than its subject."""
    return reply.model_validate({"error": QueryError(
        error=f"invalid query: it names thread {body_thread!r} but was sent for thread "
              f"{subject_thread!r}; a query about one thread is answered for the thread its "
              "subject names", code="invalid_query")}).model_dump(mode="json")


def _invalid(reply: type[BaseModel], error: ValidationError, **fields: Any) -> dict[str, Any]:
    """The reply to a query that breaks its model: which field, and what was expected."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}"
                         for e in error.errors()[:5])
    return reply.model_validate({
        **fields, "error": QueryError(error=f"invalid query: {problems}", code="invalid_query"),
    }).model_dump(mode="json")


class ProjectionsRuntime:
    def __init__(self, settings: Settings, *, nats_url: str | None = None,
                 data_dir: Path | None = None, clock: Clock | None = None,
                 batch_size: int = 256, on_applied: Applied | None = None) -> None:
        self.settings = settings
        self.nats_url = nats_url or settings.resolved_nats_url()
        self.data_dir = data_dir
        self.clock = clock or SystemClock()
        self.batch_size = batch_size
        #: Called after each committed batch with its events and the commit time (epoch s).
        self.on_applied = on_applied
        self.db: ViewDatabase = open_view_database(settings, data_dir)
        self.projector = Projector(self.db)
        self.broker: NatsBroker | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied = asyncio.Condition()
        self._apply_lock = asyncio.Lock()

    async def start(self) -> None:
        stale = self.projector.stale()
        if stale:
            log.info("views_schema_changed", views=stale)
            await self.rebuild(stale)
        broker = make_broker(self.nats_url, name="hitlflow-projections",
                             user=self.settings.nats_user, password=self.settings.nats_password,
                             token=self.settings.nats_token)
        self.broker = broker
        self._register(broker)
        await broker.connect()
        check_server(broker.connection, self.nats_url)
        js = broker.connection.jetstream()
        await ensure_streams(js, self.settings.stream_replicas)
        await broker.start()
        self._task = asyncio.create_task(self._consume(js), name=DURABLE)
        log.info("service_started", service="projections", nats_url=self.nats_url,
                 views_database=self.db.name)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
            self.broker = None
        async with self._apply_lock:  # a batch or rebuild in a worker thread finishes first
            await asyncio.to_thread(self.db.close)

    # -- consuming ----------------------------------------------------------------------------

    async def _consume(self, js: JetStreamContext) -> None:
        applied_seq = await asyncio.to_thread(self.db.consumer_position, DURABLE)
        config = ConsumerConfig(
            durable_name=DURABLE, filter_subject=subjects.EVENTS_ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if applied_seq else DeliverPolicy.ALL,
            opt_start_seq=applied_seq + 1 if applied_seq else None,
            ack_policy=AckPolicy.ALL, ack_wait=60, max_deliver=-1,
            max_ack_pending=max(1000, self.batch_size * 4),
        )
        # Start where the views are, whatever the consumer acknowledged before a crash.
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(subjects.EVENTS_STREAM, DURABLE)
        await js.add_consumer(subjects.EVENTS_STREAM, config=config)
        consumer = PullConsumer(js, Subscription(subjects.EVENTS_ALL, subjects.EVENTS_STREAM,
                                                 DURABLE),
                                batch_size=self.batch_size, handle_messages=self.apply_batch)
        await consumer.run()

    async def apply_batch(self, messages: list[Msg]) -> None:
        """Apply a fetched batch; retried in place until the database takes it."""
        if not messages:
            return
        async with self._apply_lock:
            envelopes: list[EventEnvelope] = []
            for msg in messages:
                try:
                    envelopes.append(decode_envelope(msg.data))
                except PoisonMessageError as error:
                    log.error("event_rejected", consumer=DURABLE, subject=msg.subject,
                              reason=str(error))
                    await self._dead_letter(msg, str(error))
            last_seq = int(messages[-1].metadata.sequence.stream)
            delay = 0.1
            while True:
                try:
                    await asyncio.to_thread(self.projector.apply, envelopes, consumer=DURABLE,
                                            stream_seq=last_seq)
                    break
                except Exception as error:
                    log.warning("projection_retry", error=repr(error), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
            committed = time.time()
        with contextlib.suppress(Exception):  # unacknowledged is fine: the views know
            await messages[-1].ack()
        if self.on_applied is not None:
            self.on_applied(envelopes, committed)
        async with self._applied:
            self._applied.notify_all()

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        if self.broker is None:
            return
        with contextlib.suppress(Exception):
            await self.broker.connection.publish(
                f"hitl.dlq.{DURABLE}", msg.data,
                headers={"Hitl-Error": reason[:500], "Hitl-Subject": msg.subject})

    async def caught_up(self, after: dict[str, int], timeout: float = CATCH_UP_TIMEOUT) -> bool:
        """Wait until the thread_status view has applied ``after`` (service → position)."""

        def reached() -> bool:
            return all(self.db.position(thread_status.NAME, service) >= position
                       for service, position in after.items())

        if not after:
            return True
        async with self._applied:
            try:
                await asyncio.wait_for(self._applied.wait_for(reached), timeout)
            except TimeoutError:
                return False
        return True

    # -- rebuilding ---------------------------------------------------------------------------

    async def rebuild(self, names: Sequence[str] = ()) -> RebuildResult:
        """Drop the views named (all when none) and replay every event store into them."""
        select_views(names)  # unknown names are refused before anything waits
        async with self._apply_lock:  # live batches wait; queries go on reading the old view
            result = await asyncio.to_thread(self._rebuild, names)
        async with self._applied:
            self._applied.notify_all()
        return result

    def _rebuild(self, names: Sequence[str]) -> RebuildResult:
        return rebuild_from_stores(self.db, self.projector, self.settings, names, self.data_dir)

    # -- queries ------------------------------------------------------------------------------

    def _register(self, broker: NatsBroker) -> None:
        db = self.db

        @broker.subscriber(f"{subjects.Q_THREAD}.{{thread_id}}", queue=QUEUE)
        async def on_thread(body: dict[str, Any], thread_id: str = SubjectPart()) -> dict[str, Any]:
            try:
                query = ThreadQuery.model_validate(body)
            except ValidationError as error:
                return _invalid(ThreadReply, error)
            if query.thread_id not in (None, thread_id):
                return _other_thread(ThreadReply, thread_id, query.thread_id)
            await self.caught_up(query.after)
            view = await asyncio.to_thread(thread_status.thread, db, thread_id)
            if view is None:
                return ThreadReply(error=QueryError(
                    error=f"unknown thread {thread_id!r}")).model_dump(mode="json")
            return ThreadReply(thread=view).model_dump(mode="json")

        self._register_lists_and_reports(broker)

    def _register_lists_and_reports(self, broker: NatsBroker) -> None:
        db = self.db

        @broker.subscriber(subjects.Q_THREADS, queue=QUEUE)
        async def on_threads(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = ThreadsQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(ThreadsReply, error)
            views, following = await asyncio.to_thread(
                thread_status.threads, db, query.status, query.graph_name, query.limit,
                query.after)
            return ThreadsReply(threads=views, next=following).model_dump(mode="json")

        async def pending(query: PendingQuery) -> dict[str, Any]:
            items, following = await asyncio.to_thread(
                thread_status.pending_page, db, query.thread_id, query.limit, query.after)
            return PendingReply(pending=items, next=following).model_dump(mode="json")

        @broker.subscriber(subjects.Q_PENDING, queue=QUEUE)
        async def on_pending(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = PendingQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(PendingReply, error)
            return await pending(query)

        @broker.subscriber(f"{subjects.Q_PENDING}.{{thread_id}}", queue=QUEUE)
        async def on_thread_pending(body: dict[str, Any],
                                    thread_id: str = SubjectPart()) -> dict[str, Any]:
            try:
                query = PendingQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(PendingReply, error)
            if query.thread_id not in (None, thread_id):
                return _other_thread(PendingReply, thread_id, query.thread_id)
            return await pending(query.model_copy(update={"thread_id": thread_id}))

        @broker.subscriber(f"{subjects.Q_TIMELINE}.{{thread_id}}", queue=QUEUE)
        async def on_timeline(body: dict[str, Any],
                              thread_id: str = SubjectPart()) -> dict[str, Any]:
            try:
                query = TimelineQuery.model_validate(body)
            except ValidationError as error:
                return _invalid(TimelineReply, error)
            if query.thread_id not in (None, thread_id):
                return _other_thread(TimelineReply, thread_id, query.thread_id)
            await self.caught_up(query.after_positions)

            def read() -> TimelineReply:
                view = thread_status.thread(db, thread_id)
                if view is None:
                    return TimelineReply(error=QueryError(
                        error=f"unknown thread {thread_id!r}"))
                events, following = thread_status.timeline(db, thread_id, query.after,
                                                           query.limit)
                return TimelineReply(thread=view, events=events, next=following)

            return (await asyncio.to_thread(read)).model_dump(mode="json")

        @broker.subscriber(Q_AUDIT, queue=QUEUE)
        async def on_audit(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = AuditQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(AuditReply, error)
            entries, following = await asyncio.to_thread(audit_trail.entries, db, query)
            return AuditReply(entries=entries, next=following).model_dump(mode="json")

        @broker.subscriber(Q_ANALYTICS, queue=QUEUE)
        async def on_analytics(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = AnalyticsQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(AnalyticsReply, error)
            reply = await asyncio.to_thread(analytics.report, db, query, self.clock.now())
            return reply.model_dump(mode="json")

        @broker.subscriber(ADMIN_REBUILD, queue=QUEUE)
        async def on_rebuild(body: dict[str, Any]) -> dict[str, Any]:
            try:
                request = RebuildRequest.model_validate(body or {})
                result = await self.rebuild(request.views)
            except ValidationError as error:
                return _invalid(RebuildReply, error, ok=False)
            except UnknownViewError as error:
                return RebuildReply(ok=False, error=QueryError(
                    error=str(error), code="invalid_query")).model_dump(mode="json")
            except Exception as error:
                log.error("rebuild_failed", error=repr(error))
                return RebuildReply(ok=False, error=QueryError(
                    error=f"rebuild failed: {error}", code="rebuild_failed")).model_dump(
                        mode="json")
            return RebuildReply(
                ok=True, views=result.views, read=result.read, events=result.events,
                seconds=round(result.seconds, 3), events_per_second=round(result.rate, 1),
            ).model_dump(mode="json")


def build(settings: Settings, *, nats_url: str | None = None, data_dir: Path | None = None,
          clock: Clock | None = None) -> ProjectionsRuntime:
    return ProjectionsRuntime(settings, nats_url=nats_url, data_dir=data_dir, clock=clock)
